"""What a run shows of its commit: the subject line and the author, read from the commit object."""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_SUBJECT = 200
MAX_AUTHOR = 200
# Control characters (a NUL once stopped a projector) and the `<email> 1700000000 +0000` tail.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AUTHOR = re.compile(rb"^author (.*?) <([^>]*)> \d+ [+-]\d{4}$", re.MULTILINE)


class CommitSummary(NamedTuple):
    subject: str
    author: str  # "Name <email>"


def summarize_commit(content: bytes) -> CommitSummary:
    """From a raw commit object: its first message line and its author, as clean, bounded text."""
    headers, _, message = content.partition(b"\n\n")
    subject = next((line for line in message.splitlines() if line.strip()), b"")
    found = _AUTHOR.search(headers)
    author = f"{_text(found.group(1))} <{_text(found.group(2))}>" if found else ""
    return CommitSummary(subject=_text(subject)[:MAX_SUBJECT], author=author[:MAX_AUTHOR])


def _text(raw: bytes) -> str:
    return _CONTROL.sub(" ", raw.decode("utf-8", errors="replace")).strip()
