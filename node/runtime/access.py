"""Access control: may a user open a vhost, does a permission regex allow an operation.
(Password hashes and regex matching themselves are in node/auth.py.)"""

from __future__ import annotations

from node.amqp import errors
from node.auth import matches
from node.runtime.state import Runtime


class AccessControl:
    """Reads the permissions the definitions mirror keeps; resets the channels' permission
    caches and closes a revoked user's connections."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # `guest` may log in from loopback only, as in RabbitMQ (loopback_users)
        self.loopback_only_guest = True

    def can_access_vhost(self, user: str, vhost: str) -> bool:
        return user in self.runtime.permissions.get(vhost, {})

    def permitted(self, user: str, vhost: str, perm: str, name: str) -> bool:
        p = self.runtime.permissions.get(vhost, {}).get(user)
        return p is not None and matches(p.get(perm, ""), name)

    def forget_permission_caches(self) -> None:
        """Channels cache what they were allowed; a permission change must be seen at once."""
        for conn in self.runtime.connections:
            for ch in conn.channels.values():
                ch._allowed.clear()

    def close_user_connections(self, user: str, why: str, vhost: str | None = None) -> None:
        """A revoked user keeps nothing: their open connections (also those forwarded to
        us) are closed with 320, as RabbitMQ does, and must log in again."""
        for conn in list(self.runtime.connections):
            if conn.user == user and (vhost is None or (
                    conn.vhost is not None and conn.vhost.name == vhost)):
                conn.force_close(errors.CONNECTION_FORCED, why)
