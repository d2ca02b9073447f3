"""The command line against a real gateway (every service its own process, PostgreSQL, a real
nats-server): what a user types, what it prints, and its exit code. One shared cluster serves the
module; each test makes a tenant of its own."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_faults import wait_for
from tests.support.api import Api
from tests.support.cluster import ADMIN_TOKEN, LedgerCluster
from tests.support.git_repo import GitRepo
from tests.support.processes import without_ledgerci_settings

FAILS = """\
jobs:
  - name: build
    run: echo building
  - name: test
    run: |
      echo "attempt $LEDGERCI_ATTEMPT"
      sleep 30
    timeout: 2s
    retries: 1
  - name: cleanup
    when: always
    run: echo cleaning
"""
WAITS = """\
jobs:
  - name: wait
    run: sleep 60
"""
PASSES = """\
jobs:
  - name: only
    run: echo fine
"""


class Cli:
    """`ledgerci …` as a user runs it: from an empty directory, told only LEDGERCI_URL and LEDGERCI_TOKEN."""

    def __init__(self, url: str, token: str, cwd: Path) -> None:
        self.env = {**without_ledgerci_settings(), "LEDGERCI_URL": url, "LEDGERCI_TOKEN": token}
        self.cwd = cwd

    def __call__(self, *args: str, timeout: float = 120, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ledgerci.cli", *args], env=self.env, cwd=self.cwd,
                              capture_output=True, text=True, timeout=timeout, input=stdin)


@pytest.fixture
def tenant(shared_cluster: LedgerCluster, tmp_path: Path) -> tuple[Cli, Cli, str]:
    """(the tenant's CLI, the admin's CLI, the tenant's id), both run from a directory of their own."""
    admin = Api(shared_cluster.url, ADMIN_TOKEN)
    tenant_id, token = admin.tenant(f"t-{uuid.uuid4().hex[:8]}")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return Cli(shared_cluster.url, token, cwd), Cli(shared_cluster.url, ADMIN_TOKEN, cwd), tenant_id


def _repo(cli: Cli, tenant_id: str, tmp_path: Path, workflow: str, message: str = "Make it so") -> tuple[str, str]:
    repo = GitRepo(tmp_path / f"repo-{uuid.uuid4().hex[:6]}")
    commit = repo.commit({".ledgerci.yml": workflow}, message=message)
    repository_id = f"r-{uuid.uuid4().hex[:8]}"
    added = cli("repo", "add", repository_id, "--tenant", tenant_id, "--clone-url", repo.clone_url)
    assert added.returncode == 0, added.stderr
    return repository_id, commit


def _push(cli: Cli, repository_id: str, commit: str) -> str:
    pushed = cli("push", "--repo", repository_id, "--commit", commit, "--ref", "refs/heads/main")
    assert pushed.returncode == 0, pushed.stderr
    return pushed.stdout.split()[0]


def test_watch_exits_by_how_the_run_ended_and_earlier_attempts_logs_can_be_read(tenant, tmp_path: Path) -> None:
    cli, _, tenant_id = tenant
    repository_id, commit = _repo(cli, tenant_id, tmp_path, FAILS, message="Break the tests\n\nOn purpose.")
    run_id = _push(cli, repository_id, commit)
    watched = cli("run", run_id, "--watch")
    assert watched.returncode == 3, watched.stdout + watched.stderr  # failed
    shown = cli("run", run_id)
    assert shown.returncode == 3
    assert "Break the tests  (ledgerci-test <test@ledgerci.invalid>)" in shown.stdout
    assert shown.stdout.splitlines()[6].split() == ["JOB", "STATUS", "ATTEMPT", "EXIT", "ID", "ERROR"]
    test_job = next(line.split() for line in shown.stdout.splitlines() if line.startswith("test "))
    assert test_job[:4] == ["test", "failed", "2", "-"]  # timed out twice: retried once
    job_id = test_job[4]
    for attempt, closing in (("1", "attempt 1 abandoned"), ("2", "job failed")):
        log = cli("logs", job_id, "--attempt", attempt)
        assert (log.returncode, log.stdout) == (0, f"attempt {attempt}\n\nledgerci: timed out\n")
        assert log.stderr.strip() == closing  # the closing line, beside the output: of the attempt shown
    first = cli("logs", "-f", job_id, "--attempt", "1")
    assert first.stderr.strip() == "attempt 1 abandoned · timed out"
    followed = cli("logs", "-f", job_id)
    assert followed.stdout.startswith("attempt 2\n") and followed.stderr.strip().startswith("job failed · timed out")
    missing = cli("logs", job_id, "--attempt", "3")
    assert missing.returncode == 1 and "has no attempt 3" in missing.stderr
    listed = cli("runs", "--repo", repository_id)
    header, row = listed.stdout.splitlines()[:2]
    assert header.split() == ["RUN", "STATUS", "TENANT", "REPOSITORY", "REF", "COMMIT", "CREATED", "SUBJECT"]
    assert row.split()[:6] == [run_id, "failed", tenant_id, repository_id, "main", commit[:12]]
    assert row.endswith("Break the tests")


def test_a_cancelled_run_exits_4_and_cancelling_a_finished_one_says_nothing_was_cancelled(
        tenant, tmp_path: Path) -> None:
    cli, _, tenant_id = tenant
    repository_id, commit = _repo(cli, tenant_id, tmp_path, WAITS)
    run_id = _push(cli, repository_id, commit)
    Api(cli.env["LEDGERCI_URL"], cli.env["LEDGERCI_TOKEN"]).wait_run(run_id, until=lambda r: r["status"] == "running")
    watch = subprocess.Popen([sys.executable, "-m", "ledgerci.cli", "run", run_id, "--watch"], env=cli.env,
                             cwd=cli.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watch.stdout.readline() == f"run {run_id}  running\n"  # following it now
        cancelled = cli("cancel", run_id)
        assert (cancelled.returncode, cancelled.stdout.strip()) == (0, f"run {run_id}: cancelled")
        assert watch.wait(timeout=60) == 4  # `run --watch && deploy` does not deploy
    finally:
        watch.kill()
    again = cli("cancel", run_id)
    assert again.returncode == 0 and "already ended (cancelled)" in again.stdout
    done_repository, done_commit = _repo(cli, tenant_id, tmp_path, PASSES)
    done = _push(cli, done_repository, done_commit)
    assert cli("run", done, "--watch").returncode == 0
    refused = cli("cancel", done)
    assert refused.returncode == 1
    assert refused.stdout.strip() == f"run {done} had already ended (succeeded): nothing was cancelled"


def test_every_refusal_names_the_field_and_why(tenant, tmp_path: Path) -> None:
    cli, admin, tenant_id = tenant
    repository_id, _ = _repo(cli, tenant_id, tmp_path, PASSES)
    head = cli("push", "--repo", repository_id, "--commit", "HEAD")
    assert head.returncode == 1 and "give all 40 hex digits" in head.stderr
    bad_name = admin("tenant", "create", "Bad Name!")
    assert bad_name.returncode == 1
    assert bad_name.stderr.splitlines()[0] == "ledgerci: 422: Validation failed for POST /api/v1/tenants"
    assert bad_name.stderr.splitlines()[1].startswith("  body id: Expected `str` matching regex")
    status = cli("runs", "--status", "bogus")
    assert status.returncode == 2 and "choose from 'queued', 'running'" in status.stderr
    not_uuid = admin("tenant", "revoke-token", tenant_id, "not-a-uuid")
    assert not_uuid.returncode == 1 and "not a token id" in not_uuid.stderr
    # The gateway says the same to a client that skips the CLI's checks.
    raw = Api(admin.env["LEDGERCI_URL"], ADMIN_TOKEN).http.delete(f"/api/v1/tenants/{tenant_id}/tokens/not-a-uuid")
    assert raw.status_code == 404 and "a token id is a UUID" in raw.json()["detail"]
    relative = cli("repo", "add", "rel", "--tenant", tenant_id, "--clone-url", "../web.git")
    assert relative.returncode == 1 and "has no scheme" in relative.stderr
    gone = cli("repo", "add", "gone", "--tenant", tenant_id, "--clone-url", f"file://{tmp_path}/nothing-here")
    assert gone.returncode == 1 and "no directory" in gone.stderr
    both = cli("run", str(uuid.uuid4()), "--watch", "--as-of", "2")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr  # a usage error
    streamed = cli("run", str(uuid.uuid4()), "--watch")  # a refused stream says why as the others do
    assert streamed.returncode == 1 and streamed.stderr.startswith("ledgerci: 404: run ") and "{" not in streamed.stderr
    help_text = cli("push", "--help").stdout
    assert "40-hex commit SHA" in help_text and "on.branches" in help_text
    assert "--json" not in cli("logs", "--help").stdout  # accepted and ignored before: gone


def test_filters_that_match_nothing_say_so_and_history_says_it_is_history(tenant, tmp_path: Path) -> None:
    cli, _, tenant_id = tenant
    repository_id, commit = _repo(cli, tenant_id, tmp_path, FAILS)
    run_id = _push(cli, repository_id, commit)
    cli("run", run_id, "--watch")
    by_name = cli("events", run_id, "--job", "build")
    assert by_name.returncode == 0
    lines = by_name.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "AT", "TYPE", "ACTOR", "JOB", "ATTEMPT"]
    assert [line.split()[2] for line in lines[1:]] == ["JobQueued", "JobStarted", "JobSucceeded"]
    assert len({line.index(line.split()[2]) for line in lines[1:]}) == 1  # the columns line up
    assert "has no job 'nosuch' (its jobs: build, test, cleanup)" in cli("events", run_id, "--job", "nosuch").stderr
    bogus = cli("events", run_id, "--type", "Bogus")
    assert bogus.returncode == 1 and "422: type 'Bogus' is not an event type; one of: " in bogus.stderr
    nosuch = cli("runs", "--repo", "nosuch")
    assert nosuch.returncode == 1 and "404: repository 'nosuch' not found" in nosuch.stderr
    past = cli("run", run_id, "--as-of", "999")
    assert past.returncode == 1 and f"run {run_id} has no version 999 (its versions are 1 to" in past.stderr
    then = cli("run", run_id, "--as-of", "2")
    assert "  history    as of version 2 (now " in then.stdout and "the run as it was then" in then.stdout


def test_repositories_and_tenants_are_listed_shown_and_deleted(tenant, shared_cluster: LedgerCluster,
                                                               tmp_path: Path) -> None:
    cli, admin, tenant_id = tenant
    repository_id, commit = _repo(cli, tenant_id, tmp_path, PASSES)
    run_id = _push(cli, repository_id, commit)
    assert cli("run", run_id, "--watch").returncode == 0
    listed = cli("repo", "list")
    assert listed.stdout.splitlines()[0].split() == ["REPOSITORY", "TENANT", "CLONE", "URL", "REGISTERED"]
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == [repository_id]  # its own only
    assert repository_id in admin("repo", "list").stdout
    assert f"repository {repository_id} has: tenant {tenant_id}" in cli("repo", "show", repository_id).stdout
    tenants = admin("tenant", "list")
    assert tenants.returncode == 0 and tenant_id in tenants.stdout
    assert cli("tenant", "list").returncode == 1  # the admin's
    assert "runner pools: any" in admin("tenant", "show", tenant_id).stdout
    pooled = admin("tenant", "update", tenant_id, "--pools", "default, gpu")
    assert pooled.returncode == 0 and "runner pools: default, gpu" in pooled.stdout, pooled.stderr
    assert "runner pools: default, gpu" in admin("tenant", "show", tenant_id).stdout
    other, _ = Api(shared_cluster.url, ADMIN_TOKEN).tenant(f"o-{uuid.uuid4().hex[:8]}")
    assert "404" in admin("repo", "show", "nosuch").stderr
    deleted = cli("repo", "delete", repository_id)
    assert deleted.returncode == 0 and "its runs stay" in deleted.stdout
    assert "404: repository" in cli("push", "--repo", repository_id, "--commit", commit).stderr
    assert cli("run", run_id).returncode == 0  # the history stays readable
    assert cli("runs", "--repo", repository_id).stdout.count(run_id) == 1
    rerun = cli("rerun", run_id)
    assert rerun.returncode == 1 and "409" in rerun.stderr and "was deleted" in rerun.stderr
    assert repository_id not in cli("repo", "list").stdout
    reused = cli("repo", "add", repository_id, "--tenant", tenant_id, "--clone-url", f"file://{tmp_path}")
    assert reused.returncode == 1 and "409" in reused.stderr and "not reused" in reused.stderr
    assert other in admin("tenant", "list").stdout


def test_audit_verify_asks_the_gateway_from_any_directory(tenant, tmp_path: Path) -> None:
    cli, admin, tenant_id = tenant
    repository_id, commit = _repo(cli, tenant_id, tmp_path, PASSES)
    run_id = _push(cli, repository_id, commit)
    cli("run", run_id, "--watch")
    verified = cli("audit", "verify", run_id)
    assert verified.returncode == 0, verified.stderr
    assert "events checked" in verified.stdout and "every chain intact" in verified.stdout
    assert not (cli.cwd / ".ledgerci").exists()  # it created no store where it ran
    assert cli("audit", "verify", "--all").returncode == 1  # every stream: the admin's
    assert admin("audit", "verify", "--all").returncode == 0
    store = cli("audit", "verify", run_id, "--store")  # no database here: said in a line
    assert store.returncode == 1 and "no event store at" in store.stderr and len(store.stderr.splitlines()) == 1
    assert not (cli.cwd / ".ledgerci").exists()
    rebuild = cli("projections", "rebuild", "--verify")  # the same for the other tool that reads the store
    assert rebuild.returncode == 1 and "no event store at" in rebuild.stderr
    assert not (cli.cwd / ".ledgerci").exists()


def test_version_and_schema(tenant) -> None:
    cli, admin, _ = tenant
    assert cli("--version").stdout.startswith("ledgerci ")
    api = Api(admin.env["LEDGERCI_URL"], ADMIN_TOKEN)
    schema = api.http.get("/schema")
    assert schema.headers["content-type"].startswith("application/vnd.oai.openapi+json")
    assert schema.json() == api.http.get("/schema/openapi.json").json()
    assert "/api/v1/repositories" in schema.json()["paths"]


def test_webhooks_and_status_targets_from_the_command_line(tenant, tmp_path: Path) -> None:
    cli, _, tenant_id = tenant
    repository_id, commit = _repo(cli, tenant_id, tmp_path, PASSES)
    made = cli("webhooks", "create", "https://hooks.example.invalid/ci", "--tenant", tenant_id,
               "--events", "run.succeeded, job.*", "--repo", repository_id)
    assert made.returncode == 0, made.stderr
    subscription = made.stdout.split()[1]
    assert "signing secret (shown once): whsec_" in made.stdout
    assert "run.succeeded, job.started, job.succeeded, job.failed, job.cancelled" in made.stdout
    listed = cli("webhooks", "list", "--tenant", tenant_id)
    assert listed.stdout.splitlines()[0].split() == ["WEBHOOK", "URL", "EVENTS", "REPOSITORY", "BRANCH"]
    assert subscription in listed.stdout and "whsec_" not in listed.stdout
    refused = cli("webhooks", "create", "https://x.example/", "--tenant", tenant_id, "--events", "run.exploded")
    assert refused.returncode == 1 and "422" in refused.stderr and "run.exploded" in refused.stderr

    assert cli("run", _push(cli, repository_id, commit), "--watch").returncode == 0
    log = cli("webhooks", "deliveries", subscription, "--tenant", tenant_id)
    assert log.returncode == 0 and log.stdout.splitlines()[0].split()[:3] == ["DELIVERY", "EVENT", "RUN"]
    # The name never resolves: each delivery waits for its next try, with the reason shown.
    wait_for(lambda: "error: ConnectError" in cli("webhooks", "deliveries", subscription, "--tenant",
                                                  tenant_id).stdout, 30, "a delivery to be tried")
    delivery = cli("webhooks", "deliveries", subscription, "--tenant", tenant_id).stdout.splitlines()[1].split()[0]
    shown = cli("webhooks", "delivery", subscription, delivery, "--tenant", tenant_id)
    assert shown.returncode == 0 and f"delivery {delivery}: " in shown.stdout and '"event"' in shown.stdout
    again = cli("webhooks", "redeliver", subscription, delivery, "--tenant", tenant_id)
    assert again.returncode == 0 and "will be sent again" in again.stdout
    assert cli("webhooks", "delete", subscription, "--tenant", tenant_id).returncode == 0
    assert "has no webhooks" in cli("webhooks", "list", "--tenant", tenant_id).stdout

    target = cli("repo", "status-target", repository_id, "--kind", "gitea", "--api-url",
                 "https://gitea.example/api/v1", "--project", "org/app", stdin="host-token-1234\n")
    assert target.returncode == 0, target.stderr
    assert "sends commit statuses to gitea https://gitea.example/api/v1 for org/app" in target.stdout
    assert "host-token-1234" not in target.stdout
    half = cli("repo", "status-target", repository_id, "--kind", "gitea")
    assert half.returncode != 0 and "--api-url, --project needed" in half.stderr
    removed = cli("repo", "status-target", repository_id, "--remove")
    assert removed.returncode == 0 and "sends no commit statuses now" in removed.stdout


def test_artifacts_are_listed_and_downloaded_checked(tenant, tmp_path: Path) -> None:
    cli, _, tenant_id = tenant
    workflow = ("jobs:\n  - name: build\n    run: mkdir -p dist && echo built > dist/app.txt\n"
                "    artifacts:\n      paths: [dist/]\n")
    repository_id, commit = _repo(cli, tenant_id, tmp_path, workflow)
    run_id = _push(cli, repository_id, commit)
    assert cli("run", run_id, "--watch").returncode == 0
    listed = cli("artifacts", run_id)
    assert listed.stdout.splitlines()[0].split() == ["ARTIFACT", "SIZE", "SHA256", "EXPIRES"]
    assert listed.stdout.splitlines()[1].split()[:2] == ["build/dist/app.txt", "6"]
    fetched = cli("artifacts", run_id, "--download", str(tmp_path / "got"))
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "got" / "build" / "dist" / "app.txt").read_text() == "built\n"
    plain_repository, plain_commit = _repo(cli, tenant_id, tmp_path, PASSES)
    plain = _push(cli, plain_repository, plain_commit)
    assert cli("run", plain, "--watch").returncode == 0
    assert f"run {plain} has no artifacts" in cli("artifacts", plain).stdout
    assert "404" in cli("artifacts", "00000000-0000-0000-0000-000000000000").stderr
