"""How tokens are compared: no answer time that grows with a matching prefix (pure: no process)."""

from __future__ import annotations

import hashlib
import hmac
from uuid import uuid5

import pytest
from litestar.exceptions import NotAuthorizedException

import gateway.auth
from commands.app import utc_now
from commands.registry import Registry
from domain.ids import LEDGERCI_NAMESPACE, token_aggregate_id
from domain.registry import Token
from gateway.auth import ADMIN, Authenticator


class TenantTokens:
    """The registry, as the authenticator sees it: which tenant a token belongs to."""

    def __init__(self, known: dict[str, str]) -> None:
        self.known = known
        self.asked: list[str] = []

    def tenant_of_token(self, token: str) -> str | None:
        self.asked.append(token)
        return self.known.get(token)


async def test_the_admin_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch):
    compared: list[tuple[bytes, bytes]] = []
    constant_time = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(gateway.auth.hmac, "compare_digest", compare_digest)
    ledger = TenantTokens({"lci_tenant": "acme"})
    authenticator = Authenticator(ledger, "s3cret-admin-token")  # type: ignore[arg-type]

    assert await authenticator.principal("Bearer s3cret-admin-token") == ADMIN
    assert compared == [(b"s3cret-admin-token", b"s3cret-admin-token")] and ledger.asked == []
    for wrong in ("s3cret-admin-tokem", "s3cret", "s3cret-admin-token-and-more"):
        compared.clear()
        with pytest.raises(NotAuthorizedException):
            await authenticator.principal(f"Bearer {wrong}")
        assert compared == [(wrong.encode(), b"s3cret-admin-token")], wrong  # every candidate, the same way
    tenant = await authenticator.principal("Bearer lci_tenant")
    assert tenant.tenant_id == "acme"


def test_a_tenant_token_is_found_by_the_digest_of_all_of_it():
    """Not compared with stored tokens at all: the SHA-256 of the whole token names the stream that
    holds it, so one keyed read finds it or not, and a prefix in common changes nothing."""
    loaded: list[tuple[object, type]] = []

    class Store:
        def load(self, aggregate_id: object, kind: type) -> None:
            loaded.append((aggregate_id, kind))

    assert Registry(Store(), utc_now).tenant_of_token("lci_abcdef") is None  # type: ignore[arg-type]

    digest = hashlib.sha256(b"lci_abcdef").hexdigest()
    assert loaded == [(uuid5(LEDGERCI_NAMESPACE, f"token\n{digest}"), Token)]
    assert token_aggregate_id("lci_abcdeX") != token_aggregate_id("lci_abcdef")
