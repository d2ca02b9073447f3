"""Who leads admission: one holder of the lock at a time, and a leader whose lock connection
broke finds out before its next release (a real PostgreSQL; a real file lock)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from commands.leadership import ADMISSION_LOCK_ID, FileLeadership, LeadershipLostError, PostgresLeadership
from ledgerci.services.scheduler import admission_leadership
from ledgerci.settings import Settings

pytestmark = pytest.mark.integration


async def acquired_within(leadership, seconds: float) -> bool:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return await leadership.acquire(stop)


async def test_one_postgres_leader_and_a_standby_that_takes_over_when_its_connection_dies(postgres_url: str) -> None:
    leader, standby = PostgresLeadership(postgres_url), PostgresLeadership(postgres_url)
    try:
        assert await acquired_within(leader, 0.5)
        assert not await acquired_within(standby, 1.5)
        leader.confirm()

        # The leader's session is killed (its host lost, a network cut): the lock goes with it.
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks "
                          "WHERE locktype = 'advisory' AND objid = %s AND granted", (ADMISSION_LOCK_ID,))
        with pytest.raises(LeadershipLostError):
            leader.confirm()
        assert await acquired_within(standby, 3.0)
    finally:
        leader.release()
        standby.release()


async def test_one_file_lock_leader_and_a_standby_that_takes_over_when_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "ledgerci.admission.lock"
    leader, standby = FileLeadership(path), FileLeadership(path)
    assert await acquired_within(leader, 0.5)
    assert not await acquired_within(standby, 1.5)
    leader.release()  # as the kernel does when the process dies
    assert await acquired_within(standby, 3.0)
    standby.release()


async def test_a_silent_leader_loses_the_lock_after_its_session_seconds(postgres_url: str) -> None:
    """LEDGERCI_LEADER_SESSION_SECONDS reaches PostgreSQL: a leader that says nothing (paused,
    or cut off from the store) loses its session, and the lock, that many seconds later."""
    leader, standby = PostgresLeadership(postgres_url, session_seconds=3), PostgresLeadership(postgres_url)
    try:
        assert await acquired_within(leader, 0.5)
        assert not await acquired_within(standby, 1.5)
        assert await acquired_within(standby, 5.0)  # about 3 s after the leader's last word
        with pytest.raises(LeadershipLostError):
            leader.confirm()
    finally:
        leader.release()
        standby.release()


def test_a_leader_session_too_short_for_the_idle_check_is_refused_at_start(postgres_url: str) -> None:
    settings = replace(Settings.from_env(), database_url=postgres_url, leader_session_seconds=11,
                       idle_check_seconds=2)
    with pytest.raises(SystemExit, match="LEDGERCI_LEADER_SESSION_SECONDS is 11: make it at least 12 "):
        admission_leadership(settings)
    assert isinstance(admission_leadership(replace(settings, leader_session_seconds=12)), PostgresLeadership)
    with pytest.raises(SystemExit, match=r"is 5\.9: make it at least 6 "):  # a short idle check: the takeover's pings
        admission_leadership(replace(settings, leader_session_seconds=5.9, idle_check_seconds=0.3))
