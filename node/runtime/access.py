"""Access control: may a user open a vhost, does a permission regex allow an operation.
(Password hashes and regex matching themselves are in node/auth.py.)

AccessControl is a mixin of `Broker`. It reads `permissions` (vhost -> user -> record, kept
by the definitions mirror) and `connections` (to reset their channels' permission caches,
and to close a revoked user's connections).
"""

from __future__ import annotations

from typing import Any

from node import errors
from node.auth import matches


class AccessControl:
    permissions: dict[str, dict[str, dict]]
    connections: set[Any]

    def can_access_vhost(self, user: str, vhost: str) -> bool:
        return user in self.permissions.get(vhost, {})

    def permitted(self, user: str, vhost: str, perm: str, name: str) -> bool:
        p = self.permissions.get(vhost, {}).get(user)
        return p is not None and matches(p.get(perm, ""), name)

    def _forget_permission_caches(self) -> None:
        """Channels cache what they were allowed; a permission change must be seen at once."""
        for conn in self.connections:
            for ch in conn.channels.values():
                ch._allowed.clear()

    def close_user_connections(self, user: str, why: str, vhost: str | None = None) -> None:
        """A revoked user keeps nothing: their open connections (also those forwarded to
        us) are closed with 320, as RabbitMQ does, and must log in again."""
        for conn in list(self.connections):
            if conn.user == user and (vhost is None or (
                    conn.vhost is not None and conn.vhost.name == vhost)):
                conn.force_close(errors.CONNECTION_FORCED, why)
