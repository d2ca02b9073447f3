"""What every PostgreSQL session of a service starts with: the operator's options first, then
the settings that end a lost client's session (commands/postgres_store.py)."""

from __future__ import annotations

import pytest

from commands.postgres_store import SESSION_OPTIONS_KEY, lost_client_options, session_options
from commands.store import eventsourcing_env

URL = "postgresql://ci@db:5432/ledgerci"


def test_the_lost_client_settings_alone_when_the_operator_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGOPTIONS", raising=False)
    assert session_options(URL) == lost_client_options()
    assert "-c tcp_user_timeout=8000" in lost_client_options()
    assert session_options(URL, drop_lost_clients=False) == ""


def test_the_urls_options_then_ours_and_pgoptions_when_the_url_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=5s")
    with_options = f"{URL}?options=-c%20search_path%3Dci"
    assert session_options(with_options) == f"-c search_path=ci {lost_client_options()}"
    assert session_options(URL) == f"-c statement_timeout=5s {lost_client_options()}"
    assert session_options(with_options, drop_lost_clients=False) == "-c search_path=ci"


def test_the_event_store_gets_them_and_sqlite_has_none(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGOPTIONS", raising=False)
    assert eventsourcing_env(URL)[SESSION_OPTIONS_KEY] == lost_client_options()
    assert eventsourcing_env(URL, drop_lost_clients=False)[SESSION_OPTIONS_KEY] == ""
    assert SESSION_OPTIONS_KEY not in eventsourcing_env(f"sqlite:///{tmp_path / 'l.db'}")
