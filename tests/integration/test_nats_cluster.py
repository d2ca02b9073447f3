"""A 3-node JetStream cluster (``nats_cluster``) loses its stream leader mid-publish.

A replicated (R3) stream keeps every acknowledged message and, thanks to ``Nats-Msg-Id``
deduplication, no message twice, when the publisher retries each unacknowledged publish
with the same id until a new leader acknowledges it; the killed node catches up after
restarting. Timings are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import PubAck, StreamConfig
from nats.js.client import JetStreamContext

from tests.support.processes import NatsCluster

pytestmark = pytest.mark.integration

T = TypeVar("T")

STREAM = "CLUSTERTEST"
SUBJECT = "clustertest.events"
TOTAL = 200
KILL_AFTER = 50
#: A single publish must be acknowledged within this long, retries included.
PUBLISH_DEADLINE = 60.0
CATCH_UP_DEADLINE = 60.0

#: What a JetStream publish raises while the stream has no leader (election), while the
#: client reconnects to another node, or while the cluster is briefly unavailable.
RETRYABLE = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


def msg_id(i: int) -> str:
    return f"msg-{i:04d}"


class Publisher:
    """Publishes with a fixed ``Nats-Msg-Id`` until acked; remembers failures."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.failures: list[tuple[float, str]] = []  # (monotonic time, exception type)

    async def publish(self, i: int) -> PubAck:
        deadline = time.monotonic() + PUBLISH_DEADLINE
        while True:
            try:
                return await self.js.publish(
                    SUBJECT, f"payload {i}".encode(), timeout=1.0, headers={"Nats-Msg-Id": msg_id(i)}
                )
            except RETRYABLE as exc:
                self.failures.append((time.monotonic(), type(exc).__name__))
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


async def wait_for(what: str, check: Callable[[], Awaitable[T]], deadline: float, interval: float = 0.2) -> T:
    """Await ``check()`` until it returns a truthy value; return that."""
    last: T | None = None
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    pytest.fail(f"{what} not within {deadline}s (last: {last!r})")


async def connect(
    servers: list[str], *, in_order: bool = False, events: list[tuple[float, str]] | None = None
) -> nats.NATS:
    """A client that reconnects fast and forever; connection events go into ``events``
    (instead of nats-py's default ERROR log of the expected EOF when its node is killed)."""
    log = events if events is not None else []

    async def error_cb(exc: Exception) -> None:
        log.append((time.monotonic(), f"error {type(exc).__name__}"))

    async def disconnected_cb() -> None:
        log.append((time.monotonic(), "disconnected"))

    async def reconnected_cb() -> None:
        log.append((time.monotonic(), "reconnected"))

    return await nats.connect(
        servers=servers,
        dont_randomize=in_order,
        connect_timeout=2,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
    )


async def stream_leader(js: JetStreamContext) -> str:
    info = await js.stream_info(STREAM)
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader


@pytest.mark.parametrize("client_on_leader", [True, False], ids=["client-on-killed-leader", "client-on-survivor"])
async def test_r3_stream_keeps_every_message_once_when_its_leader_is_killed(
    nats_cluster: NatsCluster, client_on_leader: bool
) -> None:
    cluster = nats_cluster
    setup = await connect(cluster.urls)
    try:
        setup_js = setup.jetstream(timeout=5)
        await setup_js.add_stream(
            StreamConfig(name=STREAM, subjects=[SUBJECT], num_replicas=3, duplicate_window=300)
        )
        leader_url = cluster.node(await stream_leader(setup_js)).url
    finally:
        await setup.close()
    # All three URLs, in an order that puts the client on the stream leader (which is
    # killed below, so the client must reconnect) or on another node.
    others = [url for url in cluster.urls if url != leader_url]
    servers = [leader_url, *others] if client_on_leader else [*others, leader_url]
    events: list[tuple[float, str]] = []
    nc = await connect(servers, in_order=True, events=events)
    try:
        js = nc.jetstream(timeout=5)
        publisher = Publisher(js)
        acks: dict[str, PubAck] = {}
        killed: int | None = None
        killed_at = 0.0
        recovered_at: float | None = None
        connected_to = ""

        for i in range(TOTAL):
            if i == KILL_AFTER:
                killed = cluster.node_index(await stream_leader(js))
                connected_to = nc.connected_url.geturl() if nc.connected_url else "?"
                await asyncio.to_thread(cluster.kill, killed)
                killed_at = time.monotonic()
            ack = await publisher.publish(i)
            if killed is not None and recovered_at is None:
                recovered_at = time.monotonic()
            assert ack.stream == STREAM
            acks[msg_id(i)] = ack
        assert killed is not None and recovered_at is not None
        killed_name = cluster.nodes[killed].server_name

        outage = recovered_at - killed_at
        kill_failures = [name for t, name in publisher.failures if t >= killed_at]
        print(
            f"\nkilled stream leader {killed_name} (client was on "
            f"{cluster.nodes[cluster.urls.index(connected_to)].server_name}); first publish "
            f"acked {outage:.2f}s later after {len(kill_failures)} failed attempts "
            f"({sorted(set(kill_failures))}); failures before the kill: "
            f"{len(publisher.failures) - len(kill_failures)}; client events after the kill: "
            f"{[(round(t - killed_at, 2), what) for t, what in events if t >= killed_at]}"
        )

        # Every message exactly once: 200 messages, 200 distinct ids, seqs 1..200, and each
        # ack (a retried publish acked as a duplicate gets the original's seq) points at
        # the message with its id.
        info = await js.stream_info(STREAM)
        assert info.state.messages == TOTAL
        assert info.cluster is not None and info.cluster.leader != killed_name
        ids_by_seq = {}
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(STREAM, seq)
            assert msg.headers is not None
            ids_by_seq[seq] = msg.headers["Nats-Msg-Id"]
        assert len(ids_by_seq) == TOTAL
        assert sorted(ids_by_seq.values()) == [msg_id(i) for i in range(TOTAL)]
        assert {ack.seq: mid for mid, ack in acks.items()} == ids_by_seq

        # The killed node, restarted on its old store, catches up: its own replica (its
        # /jsz, not the leader's stream_info) holds all 200, and the leader lists it current.
        restart_at = time.monotonic()
        await asyncio.to_thread(cluster.start_node, killed)
        await asyncio.to_thread(cluster.wait_healthy, 30)
        node = cluster.nodes[killed]

        async def local_state_complete() -> dict | None:
            state = await asyncio.to_thread(node.stream_state, STREAM)
            if state and state.get("messages") == TOTAL and state.get("last_seq") == TOTAL:
                return state
            return None

        async def replica_current() -> bool:
            try:
                info = await js.stream_info(STREAM)
            except RETRYABLE:
                return False
            replicas = {peer.name: peer for peer in (info.cluster.replicas or [])} if info.cluster else {}
            peer = replicas.get(killed_name)
            return bool(peer is not None and peer.current)

        await wait_for(f"{killed_name}'s {STREAM} at {TOTAL} messages", local_state_complete, CATCH_UP_DEADLINE)
        caught_up = time.monotonic() - restart_at
        await wait_for(f"{killed_name} listed as a current replica", replica_current, CATCH_UP_DEADLINE)
        print(f"{killed_name} restarted and caught up in {caught_up:.2f}s")
        if client_on_leader:
            assert connected_to == cluster.nodes[killed].url
        else:
            assert connected_to != cluster.nodes[killed].url
    finally:
        await nc.close()


async def test_cluster_nodes_have_own_ports_names_and_routes(nats_cluster: NatsCluster) -> None:
    cluster = nats_cluster
    assert [node.server_name for node in cluster.nodes] == ["n0", "n1", "n2"]
    assert cluster.url == ",".join(cluster.urls)
    assert cluster.urls == [f"nats://127.0.0.1:{node.port}" for node in cluster.nodes]
    ports = [p for node in cluster.nodes for p in (node.port, node.monitor_port, node.cluster_port)]
    assert len(set(ports)) == len(ports) == 9
    assert len({node.store_dir for node in cluster.nodes}) == 3
    for node in cluster.nodes:
        config = node.config_path.read_text()
        assert f"server_name: {node.server_name}" in config
        assert f"name: {node.cluster_name}" in config
        assert node.cluster_name == cluster.nodes[0].cluster_name and node.cluster_name.startswith("ledgerci-test-")
        assert "sync_interval: always" in config
        for other in cluster.nodes:
            route = f"nats-route://127.0.0.1:{other.cluster_port}"
            assert (route in config) == (other is not node)
        jsz = node.jsz()
        assert jsz["meta_cluster"]["cluster_size"] == 3
    leader = cluster.meta_leader()
    assert leader in cluster.server_names

    # A client given the comma-separated URL, as LEDGERCI_NATS_URL holds it, reaches JetStream.
    nc = await nats.connect(servers=cluster.url.split(","))
    try:
        account = await nc.jetstream().account_info()
        assert account.streams == 0
    finally:
        await nc.close()
