"""Git refs as a workflow's `on.branches` filter reads them (docs/workflow.md "Branch filters"),
and as a push's run is keyed by them (a tag's push is a run of its own)."""

from __future__ import annotations

import re


def ref_matches(branches: list[str] | None, ref: str | None) -> bool:
    """Whether a push to `ref` passes an `on.branches` filter.

    Branches match by name (`refs/heads/` stripped) or by full ref; any other ref, such as a
    tag, only by full ref, so `release/*` never starts a run for the tag `refs/tags/release/1`.
    """
    if branches is None or not ref:
        return True
    names = [ref]
    if ref.startswith("refs/heads/"):
        names.append(ref.removeprefix("refs/heads/"))
    return any(re.fullmatch(_glob(p), name) for p in branches for name in names)


def _glob(pattern: str) -> str:
    # fnmatch lets `*` cross `/`; for branch names `release/*` must not match `release/a/b`.
    wildcards = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    parts = re.split(r"(\*\*|\*|\?)", pattern)
    return "".join(wildcards.get(part, re.escape(part)) for part in parts)


def tag_of(ref: str | None) -> str | None:
    """The ref if it names a tag (`refs/tags/...`), the part of a push that keys its run."""
    return ref if ref is not None and ref.startswith("refs/tags/") else None
