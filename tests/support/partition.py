"""Network partitions for tests, made with iptables (this machine has no `tc netem`).

- `Partition.around()`: a process started through `wrap` runs under a group id of its own
  (`setpriv --regid`; the user stays root, so it reads its files as before). `cut()` drops
  every packet a socket of that group sends, loopback included; since TCP needs the process's
  ACKs, nothing reaches it either: it is cut off from everything (NATS, the store, its jobs'
  network). `around(port=N)` cuts only its connections to the server on local port N (the
  gateway from NATS, say, while HTTP and the store still reach it).
- `Partition.from_peers(own_port, peer_ports)`: one node of a cluster (a nats-server started
  through `wrap`) cut off from its peers while its clients still reach it. `cut()` drops what
  the node sends from its cluster port and to its peers' cluster ports, so every route to or
  from it stops (TCP needs its ACKs both ways); its client connections are untouched.
- `Partition.toward(pid, port)`: one direction only. `cut()` drops what the server on `port`
  sends to `pid`'s connections: no reply comes back. What the process sends still leaves it at
  first, but with no ACK coming back TCP soon resends only its oldest unacknowledged segment,
  so later messages may not leave at all: a test may not count on them arriving.

`heal()` removes the rules, and TCP's retransmissions carry on where they stopped. Needs root
and iptables (CI runs as root; docker.io brings iptables).
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


class Partition:
    def __init__(self, rules: list[list[str]], gid: int | None = None) -> None:
        self.rules = rules
        self.gid = gid
        self.is_cut = False

    @classmethod
    @contextmanager
    def around(cls, port: int | None = None) -> Iterator[Partition]:
        """Around whatever is started through `wrap` (only its traffic to local `port`, if
        given); healed on the way out, whatever happened."""
        gid = _unused_gid()
        only = ["-p", "tcp", "--dport", str(port)] if port else []
        rule = ["OUTPUT", "-m", "owner", "--gid-owner", str(gid), *only, "-j", "DROP"]
        with cls._healed(cls([rule], gid)) as made:
            yield made

    @classmethod
    @contextmanager
    def from_peers(cls, own_port: int, peer_ports: list[int]) -> Iterator[Partition]:
        """Around a cluster node started through `wrap`: its routes cut, its clients kept."""
        gid = _unused_gid()
        owned = ["OUTPUT", "-m", "owner", "--gid-owner", str(gid), "-p", "tcp"]
        rules = [[*owned, "--sport", str(own_port), "-j", "DROP"]]
        rules += [[*owned, "--dport", str(port), "-j", "DROP"] for port in peer_ports]
        with cls._healed(cls(rules, gid)) as made:
            yield made

    @classmethod
    @contextmanager
    def toward(cls, pid: int, port: int) -> Iterator[Partition]:
        """Between the server on local `port` and process `pid`: its replies dropped."""
        local_ports = connections_of(pid, port)
        assert local_ports, f"process {pid} has no connection to port {port}"
        rules = [["OUTPUT", "-p", "tcp", "--sport", str(port), "--dport", str(local), "-j", "DROP"]
                 for local in local_ports]
        with cls._healed(cls(rules)) as made:
            yield made

    @staticmethod
    @contextmanager
    def _healed(partition: Partition) -> Iterator[Partition]:
        try:
            yield partition
        finally:
            if partition.is_cut:
                partition.heal()

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run inside the partition (and so are the processes it starts)."""
        assert self.gid is not None, "only a partition made with around() wraps a command"
        return ["setpriv", f"--regid={self.gid}", "--clear-groups", "--", *argv]

    def cut(self) -> None:
        for rule in self.rules:
            _iptables("-I", *rule)
        self.is_cut = True

    def heal(self) -> None:
        for rule in self.rules:
            _iptables("-D", *rule)
        self.is_cut = False


def _unused_gid() -> int:
    return random.randint(61000, 64999)  # a group no one else uses


def connections_of(pid: int, port: int) -> list[int]:
    """The local ports of `pid`'s established TCP connections to `port` on this machine."""
    listing = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{port} )"],
                             check=True, capture_output=True, text=True).stdout
    # Columns: Recv-Q Send-Q Local:Port Peer:Port Process (users:(("python",pid=N,fd=M)))
    return [int(line.split()[2].rsplit(":", 1)[1]) for line in listing.splitlines() if f"pid={pid}," in line]


def _iptables(*args: str) -> None:
    # -w: wait for the xtables lock rather than fail when Docker holds it.
    subprocess.run(["iptables", "-w", *args], check=True, capture_output=True)
