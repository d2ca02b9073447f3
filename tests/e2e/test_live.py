"""Live streams against real processes: a run's changes and a job's log over SSE and one
WebSocket, resumed with Last-Event-ID after a drop and across a gateway restart, and logs
still served once the live stream is gone (from the archive)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import nats
import psycopg
import pytest
import websockets

from domain.messages import LOGS_STREAM
from ledgerci import sse
from tests.support.api import Api
from tests.support.cluster import LedgerCluster
from tests.support.git_repo import GitRepo

pytestmark = pytest.mark.e2e

LINES = 100_000
BIG_LOG = f"""\
jobs:
  - name: count
    run: seq 1 {LINES}
  - name: after
    run: echo done
"""
SLOW = """\
jobs:
  - name: slow
    run: |
      for i in 1 2 3 4 5 6; do echo "tick $i"; sleep 0.5; done
  - name: second
    run: echo "second job"
"""


def tenant_repo(admin: Api, tmp_path: Path, workflow: str, name: str) -> tuple[Api, str, str]:
    tenant_id, token = admin.tenant(name)
    repo = GitRepo(tmp_path / name)
    commit = repo.commit({".ledgerci.yml": workflow})
    repository_id = admin.repository(tenant_id, repo.clone_url, f"{name}-repo")
    return Api(admin.url, token), repository_id, commit


def push(api: Api, repository_id: str, commit: str) -> str:
    pushed = api.push(repository_id, commit)
    assert pushed.status_code == 202, pushed.text
    return pushed.json()["run_id"]


def archived_logs(cluster: LedgerCluster) -> int:
    with psycopg.connect(cluster.env["LEDGERCI_DATABASE_URL"]) as connection:
        return connection.execute("SELECT count(*) FROM lci_job_logs").fetchone()[0]


def first_job(api: Api, run_id: str) -> str:
    """The first job's id, once the run is planned."""
    return api.wait_run(run_id, until=lambda run: bool(run["jobs"]))["jobs"][0]["id"]


def versions(messages: list[sse.SseMessage]) -> list[int]:
    return [int(m.id) for m in messages if m.event != "end"]


def log_text(messages: list[sse.SseMessage]) -> str:
    return "".join(json.loads(m.data)["text"] for m in messages if m.event == "log")


def test_run_stream_sends_every_change_in_order_and_resumes_without_gaps(tmp_path: Path, admin: Api) -> None:
    api, repository_id, commit = tenant_repo(admin, tmp_path, SLOW, "watcher")
    run_id = push(api, repository_id, commit)
    path = f"/api/v1/runs/{run_id}/stream"

    live = sse.follow(api.http, path)
    first = [next(live) for _ in range(3)]
    assert first[0].event == "run" and json.loads(first[0].data)["event"] is None
    live.close()  # the client drops; it comes back with the last id it saw
    rest = list(sse.follow(api.http, path, last_id=first[-1].id))

    received = first + rest
    assert received[-1].event == "end" and received[-1].data == "succeeded"
    # Consecutive versions, each once: the first message is the state then, every later one a change.
    assert versions(received) == list(range(versions(received)[0], versions(received)[-1] + 1))
    history = admin.events(run_id)
    assert versions(received)[-1] == history[-1]["version"]
    by_version = {e["version"]: e["type"] for e in history}
    for message in received[1:-1]:
        change = json.loads(message.data)
        assert message.event == change["event"]["type"] == by_version[int(message.id)]
        assert change["run"]["id"] == run_id
    final = json.loads(received[-2].data)["run"]
    assert [job["status"] for job in final["jobs"]] == ["succeeded", "succeeded"]
    # A client that saw nothing asks from version 0 and gets the whole history as changes.
    replayed = list(sse.follow(api.http, path, last_id="0"))
    assert [m.event for m in replayed[:-1]] == [e["type"] for e in history]


def test_a_log_of_100000_lines_arrives_complete_and_in_order_and_resumes_mid_way(
        tmp_path: Path, admin: Api) -> None:
    api, repository_id, commit = tenant_repo(admin, tmp_path, BIG_LOG, "counter")
    run_id = push(api, repository_id, commit)
    job_id = first_job(api, run_id)
    path = f"/api/v1/jobs/{job_id}/log/stream"

    stream = sse.follow(api.http, path)
    head = [next(stream) for _ in range(5)]
    stream.close()
    tail = list(sse.follow(api.http, path, last_id=head[-1].id))

    expected = "".join(f"{n}\n" for n in range(1, LINES + 1))
    assert log_text(head + tail) == expected
    assert json.loads(tail[-1].data) == {"status": "succeeded", "exit_code": 0, "error": None}
    # Offsets in the ids count bytes: the polling endpoint agrees with them.
    offset = int(head[-1].id.split("-")[1])
    assert api.http.get(f"/api/v1/jobs/{job_id}/log", params={"offset": offset}).text == expected[offset:]


def test_a_log_is_streamed_while_the_job_runs(tmp_path: Path, admin: Api) -> None:
    api, repository_id, commit = tenant_repo(admin, tmp_path, SLOW, "tail")
    run_id = push(api, repository_id, commit)
    job_id = first_job(api, run_id)
    seen_while_running = []
    for message in sse.follow(api.http, f"/api/v1/jobs/{job_id}/log/stream"):
        if message.event == "log" and "tick 1" in message.data:
            seen_while_running.append(api.run(run_id)["jobs"][0]["status"])
        if message.event == "end":
            assert json.loads(message.data)["status"] == "succeeded"
    assert seen_while_running == ["running"]


def test_streams_resume_across_a_gateway_restart(tmp_path: Path, cluster: LedgerCluster, admin: Api) -> None:
    api, repository_id, commit = tenant_repo(admin, tmp_path, SLOW, "restart")
    run_id = push(api, repository_id, commit)
    job_id = first_job(api, run_id)
    received: dict[str, list[sse.SseMessage]] = {"run": [], "log": []}

    def read(kind: str, path: str) -> None:
        received[kind].extend(sse.follow(api.http, path))

    readers = [threading.Thread(target=read, args=("run", f"/api/v1/runs/{run_id}/stream")),
               threading.Thread(target=read, args=("log", f"/api/v1/jobs/{job_id}/log/stream"))]
    for reader in readers:
        reader.start()
    while not any("tick 2" in m.data for m in list(received["log"])):
        time.sleep(0.05)
    # SIGTERM: the gateway ends its streams at once with a retry hint, instead of hanging on them.
    assert cluster.stop("gateway") < 3.0
    cluster.start("gateway")
    cluster.wait_ready("gateway")
    for reader in readers:
        reader.join(timeout=60)
        assert not reader.is_alive()

    assert log_text(received["log"]) == "".join(f"tick {i}\n" for i in range(1, 7))
    run_versions = versions(received["run"])
    assert run_versions == list(range(run_versions[0], run_versions[-1] + 1))
    assert received["run"][-1].data == "succeeded"


def test_one_websocket_follows_several_runs_and_logs(tmp_path: Path, admin: Api) -> None:
    api, repository_id, commit = tenant_repo(admin, tmp_path, SLOW, "socket")
    other_commit = GitRepo(tmp_path / "socket").commit({".ledgerci.yml": SLOW.replace("second job", "again")})
    runs = [push(api, repository_id, commit), push(api, repository_id, other_commit)]
    job_id = first_job(api, runs[0])
    _, foreign_token = admin.tenant("stranger")

    async def follow() -> dict[str, list[dict]]:
        frames: dict[str, list[dict]] = {}
        url = api.url.replace("http://", "ws://") + "/api/v1/ws"
        async with websockets.connect(url) as socket:
            await socket.send(json.dumps({"token": api.http.headers["authorization"].split()[1]}))
            for run_id in runs:
                await socket.send(json.dumps({"subscribe": "run", "id": run_id}))
            await socket.send(json.dumps({"subscribe": "log", "id": job_id}))
            ended = 0
            while ended < 3:
                frame = json.loads(await asyncio.wait_for(socket.recv(), timeout=60))
                frames.setdefault(frame["stream"], []).append(frame)
                ended += frame.get("event") == "end"
        async with websockets.connect(url) as socket:  # another tenant learns nothing
            await socket.send(json.dumps({"token": foreign_token}))
            await socket.send(json.dumps({"subscribe": "run", "id": runs[0]}))
            frames["foreign"] = [json.loads(await asyncio.wait_for(socket.recv(), timeout=10))]
        return frames

    frames = asyncio.run(follow())
    for run_id in runs:
        run_frames = frames[f"run:{run_id}"]
        assert run_frames[-1]["event"] == "end" and run_frames[-1]["data"] == "succeeded"
        ids = [int(f["id"]) for f in run_frames if f["event"] != "end"]
        assert ids == list(range(ids[0], ids[-1] + 1))
    log = "".join(json.loads(f["data"])["text"] for f in frames[f"log:{job_id}"] if f["event"] == "log")
    assert log == "".join(f"tick {i}\n" for i in range(1, 7))
    assert frames["foreign"] == [{"stream": f"run:{runs[0]}", "error": f"run {runs[0]} not found"}]


def test_finished_logs_are_served_from_the_archive_once_the_live_stream_is_gone(
        tmp_path: Path, cluster: LedgerCluster, admin: Api) -> None:
    api, repository_id, commit = tenant_repo(admin, tmp_path, SLOW, "archived")
    run = api.wait_run(push(api, repository_id, commit))
    job_id = run["jobs"][0]["id"]
    expected = "".join(f"tick {i}\n" for i in range(1, 7))
    assert api.log(job_id) == expected

    async def purge_live_logs() -> None:
        nc = await nats.connect(cluster.env["LEDGERCI_NATS_URL"])
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + 30
            while True:  # the archiver runs moments after the job's end event
                if await asyncio.to_thread(archived_logs, cluster) >= 2 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            await js.purge_stream(LOGS_STREAM)
            assert (await js.stream_info(LOGS_STREAM)).state.messages == 0
        finally:
            await nc.close()

    asyncio.run(purge_live_logs())
    assert api.log(job_id) == expected
    streamed = list(sse.follow(api.http, f"/api/v1/jobs/{job_id}/log/stream"))
    assert log_text(streamed) == expected
    assert msgspec.json.decode(streamed[-1].data)["status"] == "succeeded"


def test_the_cli_follows_a_log_and_a_run_live(tmp_path: Path, admin: Api) -> None:
    api, repository_id, commit = tenant_repo(admin, tmp_path, SLOW, "terminal")
    run_id = push(api, repository_id, commit)
    job_id = first_job(api, run_id)
    env = {**os.environ, "LEDGERCI_URL": api.url, "LEDGERCI_TOKEN": api.http.headers["authorization"].split()[1]}
    cli = [sys.executable, "-m", "ledgerci.cli"]
    watch = subprocess.Popen([*cli, "run", run_id, "--watch"], env=env, stdout=subprocess.PIPE, text=True)
    logs = subprocess.Popen([*cli, "logs", "-f", job_id], env=env, stdout=subprocess.PIPE, text=True)
    first_line = logs.stdout.readline()
    # Printed while the run goes on (the read model may still say queued for a moment under load).
    assert first_line == "tick 1\n" and api.run(run_id)["status"] in ("queued", "running")
    # Read on through the same buffered pipe: `communicate` reads the file descriptor and would
    # miss lines that readline() above already pulled into the buffer with the first (a slow
    # start gets several at once).
    rest = logs.stdout.read()
    assert logs.wait(timeout=60) == 0
    assert first_line + rest == "".join(f"tick {i}\n" for i in range(1, 7))
    watched, _ = watch.communicate(timeout=60)
    assert watch.returncode == 0
    assert "JobStarted" in watched and "JobSucceeded" in watched and "job second succeeded" in watched
    assert f"run {run_id}  succeeded" in watched
