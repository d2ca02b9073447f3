"""The runner's log pipeline against a real nats-server: output batched by size and time,
secrets masked (plain and base64, also split across writes), the log capped with a line saying
so, and a job whose log publish fails goes on."""

from __future__ import annotations

import asyncio
import base64

import nats
import pytest

from commands.streams import ensure_streams
from domain.messages import log_chunk_msg_id, logs_subject
from gateway.logs import read_live_log
from runner.logs import MAX_CHUNK_BYTES, LogStream, truncation_notice

SECRET = "hunter2-the-password"


async def _stream(nats_url: str, job_id: str, max_bytes: int = 16 * 1024 * 1024,
                  secrets: tuple[str, ...] = ()) -> tuple[nats.NATS, LogStream]:
    nc = await nats.connect(nats_url)
    await ensure_streams(nc.jetstream())
    return nc, LogStream(nc.jetstream(), job_id, 1, secrets=secrets, max_bytes=max_bytes)


def test_output_is_batched_by_size_and_time(fresh_nats_server) -> None:
    async def scenario() -> tuple[int, bytes]:
        nc, logs = await _stream(fresh_nats_server.url, "batched")
        for line in range(2000):  # many small writes in a burst: a few chunks, not 2000 messages
            await logs.write(f"line {line}\n".encode())
        await logs.write(b"x" * (MAX_CHUNK_BYTES * 2))
        await logs.close()
        content = await read_live_log(nc.jetstream(), "batched", 1)
        await nc.close()
        return logs.sequence, content

    chunks, content = asyncio.run(scenario())
    assert content == "".join(f"line {n}\n" for n in range(2000)).encode() + b"x" * (MAX_CHUNK_BYTES * 2)
    assert chunks <= 6


def test_secrets_are_masked_plain_base64_and_split_across_writes(fresh_nats_server) -> None:
    encoded = base64.b64encode(SECRET.encode())

    async def scenario() -> bytes:
        nc, logs = await _stream(fresh_nats_server.url, "masked", secrets=(SECRET,))
        await logs.write(f"plain {SECRET}\n".encode())
        await logs.write(b"encoded " + encoded + b"\n")
        half = len(SECRET) // 2
        await logs.write(f"split {SECRET[:half]}".encode())
        await asyncio.sleep(0.2)  # the first half sits through a timed flush
        await logs.write(f"{SECRET[half:]} end\n".encode())
        await logs.close()
        content = await read_live_log(nc.jetstream(), "masked", 1)
        await nc.close()
        return content

    content = asyncio.run(scenario())
    assert SECRET.encode() not in content and encoded not in content
    assert SECRET[: len(SECRET) // 2].encode() not in content
    assert content == b"plain ***\nencoded ***\nsplit *** end\n"


def test_a_log_is_cut_at_its_cap_with_a_line_saying_so(fresh_nats_server) -> None:
    async def scenario() -> tuple[bytes, int]:
        nc, logs = await _stream(fresh_nats_server.url, "capped", max_bytes=4096)
        for _ in range(10):
            await logs.write(b"y" * 1000)
        await logs.close()
        content = await read_live_log(nc.jetstream(), "capped", 1)
        await nc.close()
        return content, logs.bytes_dropped

    content, dropped = asyncio.run(scenario())
    assert content == b"y" * 4096 + truncation_notice(4096)
    assert dropped == 10_000 - 4096


def test_a_failed_chunk_publish_does_not_stop_the_job(fresh_nats_server) -> None:
    async def scenario() -> LogStream:
        nc, logs = await _stream(fresh_nats_server.url, "lossy")
        await logs.write(b"before\n")
        await logs.flush()
        fresh_nats_server.kill()  # NATS is gone: publishing fails, the job's writes do not
        await logs.write(b"during\n")
        await asyncio.wait_for(logs.close(), timeout=30)  # the job ends: its log does not hold it up
        await nc.close()
        return logs

    logs = asyncio.run(scenario())
    assert logs.bytes_taken == len(b"before\nduring\n")  # every write of the job was taken
    assert logs.bytes_sent == len(b"before\n")  # only the chunk published before the kill reached the stream
    assert logs.sequence == 2  # the lost chunk kept its number: the gap is visible to a reader


@pytest.fixture(autouse=True)
def _quiet_nats_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("CRITICAL", logger="nats")


def test_a_live_log_reads_whole_when_empty_one_chunk_many_or_with_a_chunk_lost(fresh_nats_server) -> None:
    """read_live_log asks for the last chunk first: none is an empty log, chunk 1 the whole log,
    anything else is read through a consumer (in order, past a chunk whose publish failed)."""

    async def scenario() -> list[bytes]:
        nc = await nats.connect(fresh_nats_server.url)
        js = nc.jetstream()
        await ensure_streams(js)

        async def publish(job_id: str, number: int, data: bytes) -> None:
            await js.publish(logs_subject(job_id, 1), data,
                             headers={"Nats-Msg-Id": log_chunk_msg_id(job_id, 1, number)})

        await publish("one", 1, b"all of it\n")
        for number in (1, 2, 3):
            await publish("three", number, f"chunk {number}\n".encode())
        for number in (1, 3):  # chunk 2 was lost on its way: the gap stays, the rest is read
            await publish("gap", number, f"chunk {number}\n".encode())
        read = [await read_live_log(js, job_id, 1) for job_id in ("none", "one", "three", "gap")]
        await nc.close()
        return read

    assert asyncio.run(scenario()) == [b"", b"all of it\n", b"chunk 1\nchunk 2\nchunk 3\n", b"chunk 1\nchunk 3\n"]
