"""The admission decision (commands.fair_share), driven by a simulated pool of runner slots.

The simulation feeds FairShare what the event store would: queued attempts, starts at the
moment of release, ends after each job's duration. The same properties are checked against
real processes in tests/e2e/test_admission.py."""

from __future__ import annotations

import heapq
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from commands.fair_share import FairShare
from domain.workflow import priority_rank

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class Pool:
    """`slots` runner slots of the default pool, each running one attempt at a time."""

    def __init__(self, share: FairShare, slots: int, duration: dict[str, float] | None = None) -> None:
        self.share = share
        self.slots = slots
        self.duration = duration or {}
        self.now = 0.0
        self.running: list[tuple[float, int, str, int]] = []  # (ends at, order, job id, attempt)
        self.started: list[tuple[float, str]] = []  # (when, tenant)
        self.finished: list[tuple[float, str]] = []
        self.busy_seconds: dict[str, float] = defaultdict(float)
        self._jobs = 0

    def queue(self, tenant_id: str, count: int) -> None:
        for _ in range(count):
            self._jobs += 1
            run_id = job_id = f"{tenant_id}-{self._jobs}"
            self.share.route(run_id, tenant_id, {job_id: "default"})
            self.share.queued(run_id, job_id, 1)

    def fill(self) -> None:
        free = self.slots - self.share.occupied_in("default")
        for item in self.share.release("default", free):
            at = EPOCH + timedelta(seconds=self.now)
            self.share.started(item.job_id, item.attempt, at)
            self.started.append((self.now, item.tenant_id))
            ends = self.now + self.duration.get(item.tenant_id, 1.0)
            heapq.heappush(self.running, (ends, len(self.started), item.job_id, item.attempt))

    def step(self, until: float | None = None) -> bool:
        """Fill the free slots, then let the next attempt end. False when nothing runs."""
        self.fill()
        if not self.running or (until is not None and self.running[0][0] > until):
            return False
        ends, _, job_id, attempt = heapq.heappop(self.running)
        tenant_id = self.share.attempts[(job_id, attempt)].tenant_id
        self.now = ends
        self.share.ended(job_id, attempt, EPOCH + timedelta(seconds=ends))
        self.finished.append((ends, tenant_id))
        self.busy_seconds[tenant_id] += self.duration.get(tenant_id, 1.0)
        return True

    def run_out(self) -> None:
        while self.step():
            pass


def tenants(share: FairShare, **weights: int) -> None:
    for tenant_id, weight in weights.items():
        share.set_tenant(tenant_id, weight=weight, max_concurrent_jobs=100)


def test_light_tenants_start_at_once_and_finish_long_before_a_heavy_backlog() -> None:
    share = FairShare()
    tenants(share, a=1, b=1, c=1, d=1)
    pool = Pool(share, slots=4)
    pool.queue("a", 200)
    for light in "bcd":
        pool.queue(light, 5)

    pool.run_out()

    a_starts = [when for when, tenant in pool.started if tenant == "a"]
    for light in "bcd":
        first = min(when for when, tenant in pool.started if tenant == light)
        assert first < a_starts[9], light
    light_done = max(when for when, tenant in pool.finished if tenant != "a")
    a_done = max(when for when, tenant in pool.finished if tenant == "a")
    assert light_done <= 6 and a_done >= 50


def test_shares_of_runner_time_follow_the_weights_with_fewer_slots_than_weight() -> None:
    share = FairShare()
    tenants(share, one=1, two=2, four=4)
    pool = Pool(share, slots=4, duration={"one": 1.0, "two": 1.0, "four": 1.0})
    for tenant_id in ("one", "two", "four"):
        pool.queue(tenant_id, 1000)

    while pool.step(until=200.0):
        pass

    total = sum(pool.busy_seconds.values())
    for tenant_id, weight in (("one", 1), ("two", 2), ("four", 4)):
        assert abs(pool.busy_seconds[tenant_id] / total - weight / 7) <= 0.1 * weight / 7, pool.busy_seconds


def test_runner_time_not_job_count_is_what_is_shared() -> None:
    """A tenant whose jobs take 4 times as long gets a quarter of the jobs started, not half."""
    share = FairShare()
    tenants(share, slow=1, fast=1)
    pool = Pool(share, slots=2, duration={"slow": 4.0, "fast": 1.0})
    pool.queue("slow", 500)
    pool.queue("fast", 500)

    while pool.step(until=300.0):
        pass

    assert abs(pool.busy_seconds["slow"] / pool.busy_seconds["fast"] - 1.0) < 0.1, pool.busy_seconds


def test_a_tenant_never_has_more_than_its_quota_released_or_running() -> None:
    share = FairShare()
    share.set_tenant("capped", weight=4, max_concurrent_jobs=2)
    share.set_tenant("other", weight=1, max_concurrent_jobs=100)
    pool = Pool(share, slots=8)
    pool.queue("capped", 50)
    pool.queue("other", 10)

    most = 0
    while pool.step():
        most = max(most, share.tenants["capped"].occupied)
    assert most == 2
    # The slots the capped tenant could not use went to the other tenant, not left idle.
    assert max(when for when, tenant in pool.finished if tenant == "other") <= 2.0


def test_an_attempt_a_former_leader_released_counts_against_the_quota() -> None:
    share = FairShare()
    share.set_tenant("t", weight=1, max_concurrent_jobs=2)
    share.route("r", "t", {"j1": "default", "j2": "default", "j3": "default"})
    for job_id in ("j1", "j2", "j3"):
        share.queued("r", job_id, 1)
    assert share.released_elsewhere("j1", 1)
    assert not share.released_elsewhere("gone", 1)  # a message for an attempt that ended already

    chosen = share.release("default", 10)

    assert [item.job_id for item in chosen] == ["j2"]
    share.started("j1", 1, EPOCH)
    assert share.release("default", 10) == []
    share.ended("j1", 1, EPOCH + timedelta(seconds=3))
    assert [item.job_id for item in share.release("default", 10)] == ["j3"]


def test_an_idle_tenant_does_not_bank_credit() -> None:
    """A tenant that comes back after a long idle spell shares with the busy tenant from then
    on; it does not take every slot until it has caught up with the other's whole history."""
    share = FairShare()
    tenants(share, busy=1, back=1)
    pool = Pool(share, slots=2)
    pool.queue("busy", 400)
    while pool.step(until=100.0):
        pass
    pool.queue("back", 100)
    since = len(pool.started)

    while pool.step(until=120.0):
        pass

    later = [tenant for _, tenant in pool.started[since:]]
    assert 0.4 <= later.count("back") / len(later) <= 0.6, later


def test_within_a_tenant_the_oldest_goes_first_and_a_cancelled_attempt_leaves_the_queue() -> None:
    share = FairShare()
    tenants(share, t=1)
    share.route("r", "t", {"a": "default", "b": "default", "c": "default"})
    for job_id in ("a", "b", "c"):
        share.queued("r", job_id, 1)
    share.ended("b", 1, EPOCH)  # cancelled while it waited

    assert [item.job_id for item in share.release("default", 3)] == ["a", "c"]
    assert share.pools_with_queued() == []


def test_within_a_tenant_a_higher_tier_goes_first_and_oldest_first_within_a_tier() -> None:
    share = FairShare()
    tenants(share, t=1)
    high, normal, low = (priority_rank(p) for p in ("high", "normal", "low"))
    ranks = {"n1": normal, "l1": low, "n2": normal, "h1": high, "l2": low, "h2": high}
    share.route("r", "t", dict.fromkeys(ranks, "default"), ranks)
    for job_id in ranks:
        share.queued("r", job_id, 1)
    share.ended("h1", 1, EPOCH)  # cancelled while it waited

    assert [item.job_id for item in share.release("default", 1)] == ["h2"]
    assert [item.job_id for item in share.release("default", 9)] == ["n1", "n2", "l1", "l2"]


def test_priority_never_moves_a_job_ahead_of_another_tenants_share() -> None:
    """Tenant b's high-priority jobs order b's own queue; a and b still alternate."""
    share = FairShare()
    tenants(share, a=1, b=1)
    pool = Pool(share, slots=1)
    pool.queue("a", 6)
    for n in range(6):
        share.route(f"b-high-{n}", "b", {f"b-high-{n}": "default"}, {f"b-high-{n}": priority_rank("high")})
        share.queued(f"b-high-{n}", f"b-high-{n}", 1)
    pool.run_out()

    order = [tenant for _, tenant in pool.started]
    assert order.count("a") == order.count("b") == 6
    assert all(order[i] != order[i + 1] for i in range(len(order) - 1)), order


def test_each_pool_fills_only_its_own_slots() -> None:
    share = FairShare()
    tenants(share, t=1)
    share.route("r", "t", {"cpu": "default", "gpu": "gpu"})
    share.queued("r", "cpu", 1)
    share.queued("r", "gpu", 1)

    assert [item.job_id for item in share.release("gpu", 1)] == ["gpu"]
    assert share.occupied_in("gpu") == 1 and share.occupied_in("default") == 0
    assert share.release("gpu", 1) == []


def test_a_released_attempt_is_due_again_only_after_the_reoffer_delay_and_then_goes_to_the_back() -> None:
    now = [0.0]
    share = FairShare(clock=lambda: now[0])
    share.set_tenant("t", weight=1, max_concurrent_jobs=10)
    share.route("r", "t", {f"j{n}": "default" for n in range(3)})
    for n in range(3):
        share.queued("r", f"j{n}", 1)
        share.release("default", 1)
        now[0] += 1.0  # released at 0, 1 and 2
    share.started("j1", 1, EPOCH)  # started: never due

    now[0] = 10.5
    assert [item.job_id for item in share.due_for_reoffer(10.0)] == ["j0"]
    assert share.due_for_reoffer(10.0) == []
    now[0] = 20.6
    assert [item.job_id for item in share.due_for_reoffer(10.0)] == ["j2", "j0"]  # j0 was offered last
