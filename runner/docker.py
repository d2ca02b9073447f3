"""The Docker executor: each attempt runs in a container of its own, hardened by default.

docker-py is synchronous, so every engine call runs in a worker thread; the output is
followed in a thread of its own that hands each chunk to the async sink as it comes.

What a job gets, unless the runner's settings say otherwise: not privileged, every
capability dropped, `no-new-privileges`, an unprivileged uid, a pid limit, memory with no
extra swap and CPUs from the job's `resources` within the runner's caps, a read-only root
filesystem with a tmpfs `/tmp`, no network (see `DockerSettings.network`), and never the
Docker socket. Its checkout is bind-mounted at the same path as on the runner, so `HOME`
and the working directory the agent sets mean the same inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from requests.exceptions import RequestException

from domain.workflow import memory_bytes
from runner.executor import Execution, Outcome, OutputSink

log = logging.getLogger(__name__)

LABEL_PREFIX = "ledgerci."
RUNNER_LABEL = f"{LABEL_PREFIX}runner"
OUT_OF_MEMORY = "out of memory"
PullPolicy = Literal["if-not-present", "never", "always"]
PULL_POLICIES: tuple[PullPolicy, ...] = ("if-not-present", "never", "always")
_NUMERIC_USER = re.compile(r"(\d+)(?::(\d+))?")
# Who a job runs as when the runner is root: `nobody`, which every image may use by number
# even without a passwd entry.
_UNPRIVILEGED = "65534:65534"


@dataclass(frozen=True)
class DockerSettings:
    pull: PullPolicy = "if-not-present"
    """`if-not-present` pulls an image the engine lacks; `never` fails the job instead (tests,
    air-gapped machines); `always` pulls before every job."""
    network: str = "none"
    """`none`: the job has its own loopback only, so nothing on the runner's host (its
    PostgreSQL, NATS, the engine) or its network is reachable. Otherwise the name of a Docker
    network the pool's operator has fenced off. An `internal` bridge alone is not: its gateway
    address is the host itself, and a service listening on all interfaces answers there."""
    user: str = ""
    """The uid[:gid] a job runs as; empty: 65534 when the runner is root, else the runner's own
    uid, so that the job can write its workspace either way."""
    default_image: str = "debian:bookworm-slim"
    """The image of a job whose workflow names none."""
    pids_limit: int = 512
    max_cpus: float = 2.0
    """A job's `resources.cpus` is capped at this (and at the engine's CPUs); it is also the
    default."""
    max_memory: str = "2g"
    """A job's `resources.memory` is capped at this; it is also the default."""
    read_only: bool = True
    """A read-only root filesystem; `/tmp` and the workspace stay writable."""


class JobCannotStart(Exception):
    """Infrastructure, not the job: no such image, the engine refused the container."""


class DockerExecutor:
    name = "docker"

    def __init__(self, settings: DockerSettings, *, runner_id: str,
                 client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self.runner_id = runner_id
        self.client = client or docker.from_env()
        self._engine_cpus: float | None = None

    async def remove_leftovers(self) -> int:
        """Remove the containers a previous life of this runner (same runner id) left behind
        when it died: their attempts were lost with it, and run again elsewhere."""
        return await asyncio.to_thread(self._remove_leftovers)

    def _remove_leftovers(self) -> int:
        # The low-level listing: the high-level one inspects each container again, and fails
        # on one removed in between.
        leftovers = self.client.api.containers(all=True, filters={"label": f"{RUNNER_LABEL}={self.runner_id}"})
        for found in leftovers:
            log.warning("removing container %s left behind by runner %s (labels %s)", found["Names"],
                        self.runner_id, found["Labels"])
            _remove(self.client, found["Id"])
        return len(leftovers)

    async def run(self, execution: Execution, output: OutputSink) -> Outcome:
        # Named before it exists, so that it can be removed by name even if the timeout or a
        # cancel comes while the engine is still creating it.
        name = f"ledgerci-{execution.labels.get('job', 'job')[:8]}-{secrets.token_hex(4)}"
        try:
            # The timeout is the job's whole deadline: pulling and creating count, as the
            # checkout does in the agent.
            async with asyncio.timeout(execution.timeout_seconds):
                try:
                    container = await asyncio.to_thread(self._create, execution, name)
                except JobCannotStart as failed:
                    return Outcome(exit_code=None, error=str(failed))
                await asyncio.to_thread(container.start)
                await _follow(container, output)
                status = await asyncio.to_thread(container.wait)
            state = await asyncio.to_thread(_state, container)
            exit_code = int(status.get("StatusCode", state.get("ExitCode", -1)))
            if state.get("OOMKilled") and exit_code != 0:
                # A job failure, not the system's: the job asked for more than its limit. (A
                # script that survived one of its processes being killed, and passed, passed.)
                return Outcome(exit_code=exit_code, error=OUT_OF_MEMORY)
            return Outcome(exit_code=exit_code)
        except TimeoutError:
            return Outcome(exit_code=None, error="timed out", timed_out=True)
        except (DockerException, RequestException) as failed:  # the engine refused, or went away
            return Outcome(exit_code=None, error=f"could not run the container: {_explain(failed)}")
        finally:
            # Timed out, cancelled (a cancel, a lost lease, the runner stopping) or done: the
            # container goes, killed if it still runs. Shielded so a second cancel cannot
            # leave it behind.
            await asyncio.shield(asyncio.to_thread(_remove, self.client, name))

    # ----- in worker threads ------------------------------------------------------------------

    def _create(self, execution: Execution, name: str) -> Container:
        image = execution.image or self.settings.default_image
        self._ensure_image(image)
        user = self._user()
        _give_workspace(execution.workdir, user)
        memory = self._memory(execution)
        labels = {f"{LABEL_PREFIX}{key}": value for key, value in execution.labels.items()}
        labels[RUNNER_LABEL] = self.runner_id
        try:
            return self.client.containers.create(
                image,
                ["sh", "-e", "-c", execution.script],
                name=name,
                labels=labels,
                environment=_environment(execution),
                working_dir=str(execution.workdir),
                volumes={
                    str(execution.workdir): {"bind": str(execution.workdir), "mode": "rw"},
                    **{str(objects): {"bind": str(objects), "mode": "ro"} for objects in _borrowed_objects(execution)},
                },
                user=user,
                init=True,  # a real PID 1: reaps what the script leaves, passes signals on
                privileged=False,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=self.settings.read_only,
                tmpfs={"/tmp": f"rw,nosuid,nodev,size={memory},mode=1777"},
                pids_limit=self.settings.pids_limit,
                mem_limit=memory,
                memswap_limit=memory,  # equal to the memory: no swap on top of it
                nano_cpus=int(self._cpus(execution) * 1e9),
                network_mode=self.settings.network,
                ipc_mode="private",
                stdin_open=False,
                tty=False,
            )
        except DockerException as failed:
            raise JobCannotStart(f"could not create the container: {_explain(failed)}") from None

    def _ensure_image(self, image: str) -> None:
        policy = self.settings.pull
        if policy != "always":
            try:
                self.client.images.get(image)
                return
            except ImageNotFound:
                if policy == "never":
                    raise JobCannotStart(f"image {image} is not on this runner, and its pull policy is never") from None
            except DockerException as failed:
                raise JobCannotStart(f"could not look up image {image}: {_explain(failed)}") from None
        try:
            self.client.images.pull(image)
        except DockerException as failed:
            raise JobCannotStart(f"could not pull image {image}: {_explain(failed)}") from None

    def _user(self) -> str:
        if self.settings.user:
            return self.settings.user
        return _UNPRIVILEGED if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"

    def _memory(self, execution: Execution) -> int:
        cap = memory_bytes(self.settings.max_memory)
        asked = execution.resources.memory_bytes if execution.resources else None
        return min(asked or cap, cap)

    def _cpus(self, execution: Execution) -> float:
        if self._engine_cpus is None:
            # The engine refuses more CPUs than it has.
            self._engine_cpus = float(self.client.info().get("NCPU") or os.cpu_count() or 1)
        cap = min(self.settings.max_cpus, self._engine_cpus)
        asked = execution.resources.cpus if execution.resources else None
        return max(min(asked or cap, cap), 0.01)



async def _follow(container: Container, output: OutputSink) -> None:
    """Hand the container's output to the sink as it comes. The stream is read in a thread of
    its own, not the loop's pool: it lasts as long as the job. The thread waits for the sink
    to take each chunk, so a slow sink slows the reading instead of filling memory."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    # Set once nobody waits (the job ended, timed out or was cancelled): output that is still
    # read until the container is gone must not reach a log the agent has closed.
    abandoned = threading.Event()

    def settle(error: BaseException | None) -> None:
        if finished.done():
            return  # the job was cancelled or timed out meanwhile
        if error is None:
            finished.set_result(None)
        else:
            finished.set_exception(error)

    def pump() -> None:
        error: BaseException | None = None
        try:
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                if abandoned.is_set():
                    break
                asyncio.run_coroutine_threadsafe(output(chunk), loop).result()
        except BaseException as failed:  # handed to the awaiting task, which decides
            error = failed
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=pump, name=f"docker-logs-{container.short_id}", daemon=True).start()
    try:
        await finished
    finally:
        abandoned.set()


def _environment(execution: Execution) -> dict[str, str]:
    environment = dict(execution.env)
    if environment.get("PATH") == os.environ.get("PATH"):
        # The runner's own PATH describes the runner's machine: the image's applies.
        del environment["PATH"]
    return environment


def _state(container: Container) -> dict[str, Any]:
    container.reload()
    return container.attrs.get("State", {})


def _remove(client: docker.DockerClient, container_id: str) -> None:
    try:
        client.api.remove_container(container_id, force=True)  # force: SIGKILL first if it still runs
    except NotFound:
        pass  # already gone
    except (DockerException, RequestException) as failed:
        # Left behind for now: it carries this runner's label, so its next start removes it.
        if "already in progress" not in str(failed):
            log.warning("could not remove container %s: %s", container_id, failed)


def _borrowed_objects(execution: Execution) -> list[Path]:
    """The checkout borrows its git objects from the runner's mirror of the same repository
    (`alternates`): without them `git log` in the job fails. That one mirror's objects, read
    only, and no other repository's."""
    alternates = execution.workdir / ".git" / "objects" / "info" / "alternates"
    if not alternates.is_file():
        return []
    return [Path(line) for line in alternates.read_text().splitlines() if line.startswith("/") and Path(line).is_dir()]


def _give_workspace(workdir: Path, user: str) -> None:
    """The checkout belongs to the runner; the job's uid must be able to write it (build
    outputs, caches). A runner that is root hands it over; otherwise the job runs as the
    runner's own uid (see `DockerSettings.user`) and owns it already."""
    match = _NUMERIC_USER.fullmatch(user)
    if os.getuid() != 0 or match is None:
        return
    uid, gid = int(match[1]), int(match[2] or match[1])
    for root, directories, files in os.walk(workdir):
        for name in (*directories, *files):
            os.lchown(os.path.join(root, name), uid, gid)
    os.lchown(workdir, uid, gid)


def _explain(failed: DockerException | RequestException) -> str:
    if isinstance(failed, APIError) and failed.explanation:
        return str(failed.explanation)
    return str(failed)
