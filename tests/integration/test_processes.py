"""The test helpers themselves: real servers that start, crash, restart and keep their data."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import nats.errors
import psycopg
import pytest

from tests.support import processes
from tests.support.processes import (
    MIN_NATS_VERSION,
    NatsServer,
    PostgresServer,
    find_nats_server_binary,
    free_port,
    nats_server_version,
    pid_alive,
)

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- PostgreSQL


def test_committed_row_survives_postgres_crash(fresh_postgres_server: PostgresServer) -> None:
    server = fresh_postgres_server
    assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/ledgerci"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE survivors (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO survivors VALUES (1, 'committed before the crash')")

    survivor = psycopg.connect(server.url)  # a client connected when the crash happens
    postmaster = server.postmaster_pid()
    assert postmaster is not None
    assert postmaster == server.pid

    server.kill()

    assert not pid_alive(postmaster)
    assert not server.is_running()
    assert (server.data_dir / "postmaster.pid").exists()  # stale, as after a real crash
    with pytest.raises(psycopg.OperationalError):
        survivor.execute("SELECT 1")
    survivor.close()

    server.start()  # crash recovery
    with psycopg.connect(server.url) as conn:
        rows = conn.execute("SELECT id, name FROM survivors").fetchall()
    assert rows == [(1, "committed before the crash")]
    assert "database system was interrupted" in server.log_tail(20_000)

    # A clean stop and start keeps the data too, on the same port.
    server.stop()
    assert not server.is_running()
    assert not (server.data_dir / "postmaster.pid").exists()
    server.start()
    with psycopg.connect(server.url) as conn:
        assert conn.execute("SELECT count(*) FROM survivors").fetchone() == (1,)


def test_postgres_url_is_a_database_of_its_own(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    assert postgres_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/")
    with psycopg.connect(postgres_url) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
    assert name is not None
    assert name[0].startswith("test_")
    assert postgres_url.endswith("/" + name[0])
    with psycopg.connect(postgres_server.url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("ledgerci",)


# --------------------------------------------------------------------------- NATS


def test_nats_binary_is_the_wheel_one_not_the_system_one() -> None:
    binary = find_nats_server_binary()
    assert binary == Path(sys.executable).parent / "nats-server"
    version = nats_server_version(binary)
    assert version is not None
    assert version >= MIN_NATS_VERSION


async def test_jetstream_dedupes_and_keeps_acked_message_across_kill(
    fresh_nats_server: NatsServer,
) -> None:
    server = fresh_nats_server
    assert server.url == f"nats://127.0.0.1:{server.port}"

    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(name="PROBE", subjects=["probe.>"])
    first = await js.publish("probe.one", b"payload", headers={"Nats-Msg-Id": "x"})
    second = await js.publish("probe.one", b"payload", headers={"Nats-Msg-Id": "x"})
    assert not first.duplicate
    assert second.duplicate is True
    assert second.seq == first.seq
    await nc.close()

    pid = server.pid
    assert pid is not None
    server.kill()
    assert not pid_alive(pid)
    assert not server.is_running()

    server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("PROBE")
        assert info.state.messages == 1
        msg = await js.get_msg("PROBE", first.seq)
        assert msg.data == b"payload"
        assert msg.headers is not None
        assert msg.headers["Nats-Msg-Id"] == "x"
        # The dedupe window survived the crash as well.
        again = await js.publish("probe.one", b"payload", headers={"Nats-Msg-Id": "x"})
        assert again.duplicate is True
    finally:
        await nc.close()


async def test_paused_nats_server_answers_nothing_until_resumed(
    fresh_nats_server: NatsServer,
) -> None:
    server = fresh_nats_server
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="FROZEN", subjects=["frozen.>"])
        server.pause()
        assert server.paused
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish("frozen.a", b"1", timeout=0.5)
        server.resume()
        ack = await js.publish("frozen.a", b"2", timeout=5)
        assert ack.stream == "FROZEN"
    finally:
        await nc.close()

    # stop() is a clean shutdown (SIGTERM); a paused server is resumed first.
    server.pause()
    pid = server.pid
    assert pid is not None
    server.stop()
    assert not pid_alive(pid)


async def test_session_nats_server_has_jetstream(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().account_info()
        assert info is not None
    finally:
        await nc.close()
    assert nats_server.store_dir.is_dir()
    assert "sync_interval: always" in nats_server.config_path.read_text()


def test_server_processes_run_in_their_own_process_group(
    nats_server: NatsServer, postgres_server: PostgresServer
) -> None:
    # Ctrl-C on the test run must not reach the servers before the fixtures stop them.
    for pid in (nats_server.pid, postgres_server.pid):
        assert pid is not None
        assert os.getpgid(pid) != os.getpgid(0)


# --------------------------------------------------------------------------- ports


def test_free_ports_are_outside_the_ephemeral_range() -> None:
    low, high = processes._ephemeral_port_range()
    for _ in range(20):
        port = free_port()
        assert not low <= port <= high


@pytest.fixture
def occupied_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something else is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _first_port_taken(taken: int) -> Callable[[], int]:
    """A port picker whose first choice is `taken`, then free ports."""
    ports = iter([taken])
    return lambda: next(ports, None) or processes.free_port()


def test_create_moves_to_another_port_if_its_port_is_taken(occupied_port: int, ledgerci_servers_dir: Path) -> None:
    pg = PostgresServer.create(ledgerci_servers_dir, pick_port=_first_port_taken(occupied_port))
    try:
        assert pg.port != occupied_port
        assert "address already in use" in pg.log_tail(20_000).lower()
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("ledgerci",)
    finally:
        pg.destroy()

    ns = NatsServer.create(ledgerci_servers_dir, pick_port=_first_port_taken(occupied_port))
    try:
        assert ns.port != occupied_port
        assert f"127.0.0.1:{ns.port}" in ns.config_path.read_text()
        assert ns.url == f"nats://127.0.0.1:{ns.port}"
    finally:
        ns.destroy()
