"""Network partitions for tests, made with iptables' owner match (this machine has no
`tc netem`).

A process started through `Partition.wrap` runs under a group id of its own (`setpriv
--regid`, the user stays root so it reads its files as before). `cut()` drops every packet a
socket of that group sends, loopback included; since TCP needs the process's ACKs, nothing
reaches it either, so the process is cut off from everything: NATS, the store, its jobs'
network. `heal()` removes the rule and TCP's retransmissions carry on where they stopped.
Needs root and iptables (CI runs as root; docker.io brings iptables).
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


class Partition:
    def __init__(self, gid: int) -> None:
        self.gid = gid
        self.rule = ["OUTPUT", "-m", "owner", "--gid-owner", str(gid), "-j", "DROP"]
        self.is_cut = False

    @classmethod
    @contextmanager
    def new(cls) -> Iterator[Partition]:
        """A partition of a group no one else uses; healed on the way out, whatever happened."""
        partition = cls(random.randint(61000, 64999))
        try:
            yield partition
        finally:
            if partition.is_cut:
                partition.heal()

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run inside the partition (and so are the processes it starts)."""
        return ["setpriv", f"--regid={self.gid}", "--clear-groups", "--", *argv]

    def cut(self) -> None:
        _iptables("-I", *self.rule)
        self.is_cut = True

    def heal(self) -> None:
        _iptables("-D", *self.rule)
        self.is_cut = False


def _iptables(*args: str) -> None:
    # -w: wait for the xtables lock rather than fail when Docker holds it.
    subprocess.run(["iptables", "-w", *args], check=True, capture_output=True)
