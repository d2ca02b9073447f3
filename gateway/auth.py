"""Bearer tokens: the admin token from settings, or a tenant token known by its digest."""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from commands.principal import Principal
from commands.registry import Registry
from domain.ids import token_aggregate_id
from gateway.blocking import blocking

ADMIN = Principal(name="admin", tenant_id=None)


class Authenticator:
    def __init__(self, registry: Registry, admin_token: str) -> None:
        self.registry = registry
        self.admin_token = admin_token

    async def principal(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException("a bearer token is required (Authorization: Bearer ...)")
        if self.admin_token and hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return ADMIN
        tenant_id = await blocking(self.registry.tenant_of_token, token)
        if tenant_id is None:
            raise NotAuthorizedException("invalid or revoked token")
        # The actor recorded in events: the tenant, and which of its tokens (an auditor finds
        # who issued it in that token's own history).
        return Principal(name=f"tenant:{tenant_id} token:{token_aggregate_id(token)}", tenant_id=tenant_id)


def make_guard(authenticator: Authenticator):
    """Every route needs a token unless it is marked `opt={"public": True}` (health, and the
    git host's webhook deliveries, which gateway/webhooks.py checks by their signature)."""

    async def require_token(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
        if handler.opt.get("public"):
            return
        principal = await authenticator.principal(connection.headers.get("authorization"))
        connection.state.principal = principal

    return require_token


def require_admin(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    if not connection.state.principal.is_admin:
        raise PermissionDeniedException("this needs the admin token")
