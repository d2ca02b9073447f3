"""Who calls a command: the admin, or one tenant (whose own things are all it may see)."""

from __future__ import annotations

from typing import NamedTuple


class Principal(NamedTuple):
    """Who calls: the admin (tenant_id None) or one tenant."""

    name: str
    tenant_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None

    def can_see(self, tenant_id: str) -> bool:
        return self.tenant_id is None or self.tenant_id == tenant_id
