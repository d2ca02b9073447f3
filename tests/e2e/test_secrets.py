"""Secrets, end to end: they reach only the jobs of their repository (or tenant) that list them,
and their plain text is nowhere else: not in an API answer, an event, a read model, a NATS
message (every one, watched on `>` while the test runs, and every stream's stored messages), a
job's log, a service's log or the NATS store on disk.

Every service is its own process on PostgreSQL and a nats-server; the runner has no secret key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from nats.js.errors import NotFoundError
from psycopg import sql

from tests.support.api import Api
from tests.support.cluster import LedgerCluster
from tests.support.git_repo import GitRepo

pytestmark = pytest.mark.e2e


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def check(variable: str, value: str, says: str) -> str:
    """A line of shell that prints `says` when $variable holds `value`: the script carries only
    a digest, since the script itself is recorded in the run's events."""
    return f'[ "$(printf %s "${variable}" | sha256sum | cut -c1-64)" = "{digest(value)}" ] && echo {says}'


def forms(value: str) -> list[bytes]:
    """The value as it could appear anywhere: as is, in hex, and base64-encoded (standard or
    URL-safe) at each of the three alignments it can have inside a longer encoded text."""
    raw = value.encode()
    found = [raw, raw.hex().encode()]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            # Only whole groups of three of the value's own bytes: the first group also holds
            # what precedes the value, the last one may hold what follows it.
            found.append(encode(b"\0" * pad + raw)[4 if pad else 0: -4])
    return found


class Wiretap:
    """Every message on the NATS server, `>`, from a thread of its own (the test blocks)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages: list[bytes] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    def __enter__(self) -> Wiretap:
        self._thread.start()
        assert self._ready.wait(10), "the wiretap did not connect"
        return self

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _listen(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        nc = await nats.connect(self.url)

        async def heard(message: Any) -> None:
            headers = "".join(f"{k}:{v}\n" for k, v in (message.headers or {}).items()).encode()
            self.messages.append(message.subject.encode() + b"\n" + headers + message.data)

        await nc.subscribe(">", cb=heard, pending_msgs_limit=10_000_000,
                           pending_bytes_limit=1 << 30)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.flush()
        await nc.drain()


async def stored_stream_messages(url: str) -> list[bytes]:
    """Every message still stored in every JetStream stream (work queues keep only unacked ones)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    found: list[bytes] = []
    try:
        for stream in await js.streams_info():
            if not stream.state.messages:
                continue
            for seq in range(stream.state.first_seq, stream.state.last_seq + 1):
                try:
                    message = await js.get_msg(stream.config.name, seq=seq)
                except NotFoundError:
                    continue  # acked from a work queue, or deleted
                headers = "".join(f"{k}:{v}\n" for k, v in (message.headers or {}).items()).encode()
                found.append(message.subject.encode() + b"\n" + headers + (message.data or b""))
    finally:
        await nc.close()
    return found


def database_values(database_url: str) -> Iterator[tuple[str, bytes]]:
    """Every value of every row of every table (events, snapshots, read models, tracking)."""
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'"
        ).fetchall()
        assert any(name.endswith("events") for _, name in tables), tables
        for schema, table in tables:
            for row in conn.execute(sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema),
                                                                         sql.Identifier(table))):
                for value in row:
                    data = bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
                    yield f"{schema}.{table}", data


def files_under(*directories: Path) -> Iterator[tuple[str, bytes]]:
    for directory in directories:
        for path in directory.rglob("*"):
            if path.is_file():
                yield str(path), path.read_bytes()


def leaks(values: list[str], places: Iterator[tuple[str, bytes]] | list[tuple[str, bytes]]) -> list[str]:
    every = [(value, form) for value in values for form in forms(value)]
    return [f"{value!r} in {where}" for where, data in places for value, form in every if form in data]


def finished(api: Api, repository_id: str, commit: str) -> dict[str, Any]:
    pushed = api.push(repository_id, commit)
    assert pushed.status_code == 202, pushed.text
    return api.wait_run(pushed.json()["run_id"])


def test_a_secret_reaches_only_the_jobs_that_list_it_and_its_text_is_nowhere_else(
    tmp_path: Path, cluster: LedgerCluster, admin: Api, postgres_url: str, fresh_nats_server: Any,
) -> None:
    token_value = f"deploy-token-{uuid.uuid4().hex}"
    tenant_value = f"tenant-wide-{uuid.uuid4().hex}"
    repo_shared = f"repository-own-{uuid.uuid4().hex}"
    secrets = [token_value, tenant_value, repo_shared]
    answers: list[tuple[str, bytes]] = []  # every API answer of the test, searched at the end

    def answer(response: Any) -> Any:
        answers.append((f"{response.request.method} {response.request.url}", response.content))
        return response

    alpha, alpha_token = admin.tenant()
    beta, beta_token = admin.tenant()
    alpha_api, beta_api = Api(admin.url, alpha_token), Api(admin.url, beta_token)
    repos = {name: GitRepo(tmp_path / name) for name in ("web", "sibling", "elsewhere")}
    web = admin.repository(alpha, repos["web"].clone_url)
    sibling = admin.repository(alpha, repos["sibling"].clone_url)
    elsewhere = admin.repository(beta, repos["elsewhere"].clone_url)

    with Wiretap(fresh_nats_server.url) as wiretap:
        # A repository's secret with the API; the tenant's with the command line, from stdin.
        for name, value in (("DEPLOY_TOKEN", token_value), ("SHARED", repo_shared)):
            put = answer(alpha_api.http.put(f"/api/v1/repositories/{web}/secrets/{name}", json={"value": value}))
            assert put.status_code == 200, put.text
            assert put.json() | {"name": name, "scope": "repository", "owner_id": web} == put.json()
        cli = subprocess.run(
            [sys.executable, "-m", "ledgerci.cli", "secret", "set", "SHARED", "--tenant", alpha,
             "--url", admin.url, "--token", alpha_token],
            input=tenant_value + "\n", capture_output=True, text=True, timeout=30,
        )
        assert cli.returncode == 0 and f"secret SHARED of tenant {alpha} set" in cli.stdout, cli.stderr
        answers.append(("ledgerci secret set", (cli.stdout + cli.stderr).encode()))

        web_run = finished(alpha_api, web, repos["web"].commit({".ledgerci.yml": f"""jobs:
  - name: uses
    secrets: [DEPLOY_TOKEN, SHARED]
    run: |
      {check("DEPLOY_TOKEN", token_value, "deploy-token-arrived")}
      {check("SHARED", repo_shared, "the-repositorys-own-wins")}
      echo "printed: $DEPLOY_TOKEN"
  - name: does-not-list
    run: |
      [ -z "${{DEPLOY_TOKEN+set}}" ] && [ -z "${{SHARED+set}}" ] && echo no-secret-here
"""}))
        sibling_run = finished(alpha_api, sibling, repos["sibling"].commit({".ledgerci.yml": f"""jobs:
  - name: tenant-secret
    secrets: [SHARED]
    run: |
      {check("SHARED", tenant_value, "the-tenants-value")}
  - name: another-repositorys-secret
    secrets: [DEPLOY_TOKEN]
    run: echo it should not run
"""}))
        elsewhere_run = finished(beta_api, elsewhere, repos["elsewhere"].commit({".ledgerci.yml": """jobs:
  - name: another-tenants-secret
    secrets: [SHARED]
    run: echo it should not run
"""}))

        # The jobs that list a secret have it; the repository's wins over the tenant's.
        assert web_run["status"] == "succeeded", web_run
        uses, does_not_list = (answer(alpha_api.http.get(f"/api/v1/jobs/{job['id']}/log")).text
                               for job in web_run["jobs"])
        assert "deploy-token-arrived" in uses and "the-repositorys-own-wins" in uses
        assert "printed: ***" in uses  # masked in the log
        assert "no-secret-here" in does_not_list
        # A sibling repository of the tenant has the tenant's secret, not the repository's.
        tenant_secret, other_repositorys = sibling_run["jobs"]
        assert sibling_run["status"] == "failed" and tenant_secret["status"] == "succeeded"
        assert "the-tenants-value" in answer(alpha_api.http.get(f"/api/v1/jobs/{tenant_secret['id']}/log")).text
        missing = f"secret DEPLOY_TOKEN not set for repository {sibling} or tenant {alpha}"
        assert other_repositorys["status"] == "failed" and other_repositorys["error"] == missing
        log = answer(alpha_api.http.get(f"/api/v1/jobs/{other_repositorys['id']}/log")).text
        assert missing in log and "it should not run" not in log
        # Another tenant's job asking for the same name gets nothing of alpha's.
        assert elsewhere_run["jobs"][0]["error"] == f"secret SHARED not set for repository {elsewhere} or tenant {beta}"

        # Another tenant can neither set, list nor delete alpha's secrets: 404, as if absent.
        for path in (f"/api/v1/repositories/{web}/secrets", f"/api/v1/tenants/{alpha}/secrets"):
            assert answer(beta_api.http.put(f"{path}/SHARED", json={"value": "overwritten"})).status_code == 404
            assert answer(beta_api.http.get(path)).status_code == 404
            assert answer(beta_api.http.delete(f"{path}/SHARED")).status_code == 404
        listed = answer(alpha_api.http.get(f"/api/v1/repositories/{web}/secrets")).json()["secrets"]
        assert [(s["name"], s["scope"]) for s in listed] == [("DEPLOY_TOKEN", "repository"), ("SHARED", "repository")]
        assert all(set(s) == {"name", "scope", "owner_id", "set_at", "set_by"} for s in listed)  # never a value
        tenant_listed = answer(alpha_api.http.get(f"/api/v1/tenants/{alpha}/secrets")).json()["secrets"]
        assert [s["name"] for s in tenant_listed] == ["SHARED"]

        # Every other answer there is about these runs.
        for run in (web_run, sibling_run, elsewhere_run):
            answer(admin.http.get(f"/api/v1/runs/{run['id']}"))
            answer(admin.http.get(f"/api/v1/runs/{run['id']}/events"))
        answer(admin.http.get("/api/v1/runs"))
        answer(admin.http.get("/metrics"))

    # Nowhere in plain text (nor hex, nor base64): API answers, the database (events, snapshots,
    # read models), every NATS message seen and every one still stored, services' logs and
    # files, and the NATS server's store on disk.
    stored = asyncio.run(stored_stream_messages(fresh_nats_server.url))
    assert leaks([token_value], [("a control", b"x" + base64.b64encode(b"{" + token_value.encode()))])
    assert len(wiretap.messages) > 100 and stored
    assert leaks(secrets, answers) == []
    assert leaks(secrets, database_values(postgres_url)) == []
    assert leaks(secrets, [("NATS message", message) for message in wiretap.messages]) == []
    assert leaks(secrets, [("a stream's stored message", message) for message in stored]) == []
    assert leaks(secrets, files_under(cluster.base_dir, fresh_nats_server.directory)) == []
    # The searches do find what is there: the digest of a value, in the script the events
    # record, and the ciphertext that SecretSet events carry, in the events table and on NATS.
    events = b"".join(data for where, data in database_values(postgres_url) if where.endswith("events"))
    assert digest(token_value).encode() in events and b"SecretSet" in events and b'"ciphertext":"v1.' in events
    assert any(message.startswith(b"ledgerci.events.Repository.") and message.split(b"\n")[0].endswith(b".SecretSet")
               and b'"ciphertext":"v1.' in message for message in wiretap.messages)
    # The claim's reply carried the sealed values, and only that.
    assert any(b'"secrets":"' in message for message in wiretap.messages)


def test_secrets_that_cannot_be_masked_or_named_as_variables_are_refused(admin: Api, tmp_path: Path) -> None:
    tenant, token = admin.tenant()
    repository = admin.repository(tenant, GitRepo(tmp_path / "r").clone_url)
    api = Api(admin.url, token)
    short = api.http.put(f"/api/v1/repositories/{repository}/secrets/TOKEN", json={"value": "abc"})
    assert short.status_code == 422 and "length >= 4" in short.text, short.text
    for name in ("1ST", "has-dash", "A" * 129):
        assert api.http.put(f"/api/v1/repositories/{repository}/secrets/{name}",
                            json={"value": "long enough"}).status_code == 422, name
    assert api.http.put("/api/v1/repositories/nope/secrets/TOKEN", json={"value": "long enough"}).status_code == 404
    assert api.http.put(f"/api/v1/repositories/{repository}/secrets/TOKEN", json={"value": "x" * 16385}).status_code \
        == 422
    # Deleting is idempotent; listing shows the names only.
    assert api.http.put(f"/api/v1/repositories/{repository}/secrets/TOKEN", json={"value": "abcd"}).status_code == 200
    assert api.http.delete(f"/api/v1/repositories/{repository}/secrets/TOKEN").status_code == 204
    assert api.http.delete(f"/api/v1/repositories/{repository}/secrets/TOKEN").status_code == 204
    assert api.http.get(f"/api/v1/repositories/{repository}/secrets").json() == {"secrets": []}
    # The admin may manage any tenant's secrets too.
    assert admin.http.put(f"/api/v1/tenants/{tenant}/secrets/TOKEN", json={"value": "abcd"}).status_code == 200
