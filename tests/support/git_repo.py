"""Local git repositories with a workflow file, for tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

_IDENTITY = ["-c", "user.name=ledgerci-test", "-c", "user.email=test@ledgerci.invalid"]


class GitRepo:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._git("init", "-q", "-b", "main")

    @property
    def clone_url(self) -> str:
        return f"file://{self.path}"

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        self._git("add", "-A")
        self._git("commit", "-q", "--allow-empty", "-m", message)
        return self._git("rev-parse", "HEAD").strip()

    def _git(self, *args: str) -> str:
        done = subprocess.run(["git", "-C", str(self.path), *_IDENTITY, *args], check=True,
                              capture_output=True, text=True)
        return done.stdout
