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

    def many_commits(self, files: dict[str, str], count: int) -> list[str]:
        """`count` commits on main, each of the same files (and a line that makes it unique),
        written by one `git fast-import`: thousands in a second, for load tests."""
        stream = []
        for n in range(count):
            contents = {**files, "n": f"{n}\n"}
            stream.append(f"commit refs/heads/main\nmark :{n + 1}\n"
                          f"committer ledgerci-test <test@ledgerci.invalid> {1_700_000_000 + n} +0000\n"
                          f"data 7\nload {n % 10}\n")
            if n == 0 and self._has_head():
                stream.append("from refs/heads/main^0\n")
            for name, text in contents.items():
                data = text.encode()
                stream.append(f"M 100644 inline {name}\ndata {len(data)}\n{text}\n")
        marks = self.path / ".git" / "fast-import-marks"
        subprocess.run(["git", "-C", str(self.path), "fast-import", "--quiet", f"--export-marks={marks}"],
                       input="".join(stream), check=True, capture_output=True, text=True)
        by_mark = dict(line.split() for line in marks.read_text().splitlines())
        self._git("reset", "-q", "--hard", "main")
        return [by_mark[f":{n + 1}"] for n in range(count)]

    def _has_head(self) -> bool:
        return subprocess.run(["git", "-C", str(self.path), "rev-parse", "-q", "--verify", "main"],
                              capture_output=True).returncode == 0
