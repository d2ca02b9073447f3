"""What a repository's clone URL may be: something git clones from the services' machines.

Checked when the repository is registered, so a mistake is answered then, not at the first
push (the planner's fetch would fail the run with git's message)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from domain.errors import InvalidCloneUrlError

SCHEMES = ("https", "http", "ssh", "git", "file")
# git's scp-like form, `user@host:path/repo.git` (no scheme, a colon before the first slash).
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^/].*$|^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:/.+$")


def check_clone_url(url: str) -> None:
    """Refuse a URL git would not clone the same way from every service: a relative path, a
    scheme git does not fetch over, a URL without a host. Says what to write instead."""
    if _SCP_LIKE.match(url):
        return
    parts = urlsplit(url)
    if not parts.scheme:
        raise InvalidCloneUrlError(
            f"clone_url {url!r} has no scheme; write https://host/path, ssh://host/path, user@host:path, "
            "or file:///absolute/path for a repository on the ledgerci machine")
    if parts.scheme not in SCHEMES:
        raise InvalidCloneUrlError(f"clone_url scheme {parts.scheme!r} is not one of {', '.join(SCHEMES)}")
    if parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise InvalidCloneUrlError(
                f"clone_url {url!r} is not an absolute path; write file:///absolute/path (three slashes)")
        return
    if not parts.hostname:
        raise InvalidCloneUrlError(f"clone_url {url!r} names no host")


def local_path(url: str) -> str | None:
    """The path of a file:// URL, else None."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "file" else None
