"""A local cache of repository mirrors: fetch a commit once, read files and check it out fast.

A leaf library (it imports nothing of ours): the planner reads `.ledgerci.yml` through it and
the runner checks commits out through it, so both share one implementation.
"""

from gitcache.commits import CommitSummary
from gitcache.mirror import CommitNotFoundError, GitError, GitMirrors

__all__ = ["CommitNotFoundError", "CommitSummary", "GitError", "GitMirrors"]
