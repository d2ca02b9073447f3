"""Child processes of `ledgerci dev` that must not outlive it."""

from __future__ import annotations

import ctypes
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def dies_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A `preexec_fn`: Linux sends the child `sig` when its parent dies, even by SIGKILL."""

    def arrange() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

    return arrange
