"""The vhost stores on this node's disk: one LMDB `MessageStore` per vhost under
`data_dir/vhosts/<quoted name>/`, opened and closed by name, and the cleanup of deleted ones.

Which vhosts get a store is the caller's decision (today: the vhosts this node owns); this
class only keeps the stores it was asked to open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Collection, ItemsView
from urllib.parse import quote

from storage.store import MessageStore

log = logging.getLogger("warren.broker")


class VhostStores:
    def __init__(self, data_dir: str, sync: bool) -> None:
        self.base = os.path.join(data_dir, "vhosts")
        self.sync = sync
        self._stores: dict[str, MessageStore] = {}
        # closes run in the background; the tasks are kept so they are not collected early
        self._pending_closes: list[asyncio.Task] = []

    def path(self, vhost: str) -> str:
        return os.path.join(self.base, quote(vhost, safe="") or "%00")

    def get(self, vhost: str) -> MessageStore | None:
        return self._stores.get(vhost)

    def items(self) -> ItemsView[str, MessageStore]:
        """The open stores by vhost name (owned and replica alike)."""
        return self._stores.items()

    def open(self, vhost: str) -> MessageStore:
        """The vhost's store, opened (and created on disk) if it is not open yet."""
        store = self._stores.get(vhost)
        if store is None:
            path = self.path(vhost)
            os.makedirs(path, exist_ok=True)
            store = MessageStore(path, sync=self.sync)
            store.start(asyncio.get_running_loop())
            self._stores[vhost] = store
        return store

    def close(self, vhost: str, delete_data: bool) -> None:
        """Close the vhost's store (if open) in the background; with `delete_data`, also
        remove its files, even when no store is open (a vhost this node used to run)."""
        store = self._stores.pop(vhost, None)
        path = self.path(vhost)
        if delete_data and os.path.isdir(path):
            # out of the way at once: a vhost of the same name may be created in this very
            # loop turn, and must not find (or later lose) the old files
            tomb = f"{path}.deleted-{os.urandom(4).hex()}"
            os.rename(path, tomb)
            path = tomb

        async def close() -> None:
            if store is not None:
                await store.close()
            if delete_data:
                shutil.rmtree(path, ignore_errors=True)
        self._pending_closes.append(asyncio.ensure_future(close()))

    async def close_all(self) -> None:
        """At shutdown: close every open store (and wait for it)."""
        stores, self._stores = self._stores, {}
        for store in stores.values():
            await store.close()

    def remove_tombstones(self) -> None:
        """Stores of deleted vhosts whose removal a crash interrupted."""
        if not os.path.isdir(self.base):
            return
        for entry in os.listdir(self.base):
            if ".deleted-" in entry:
                shutil.rmtree(os.path.join(self.base, entry), ignore_errors=True)

    def drop_orphaned_messages(self, vhost: str, queues: Collection[str]) -> None:
        """Messages of queues that no longer exist (exclusive durable queues of a node that
        crashed, a delete whose store cleanup did not commit) would sit in LMDB forever."""
        store = self._stores.get(vhost)
        if store is None:
            return
        for name in store.queues() - set(queues):
            log.info("dropping stored messages of queue '%s' in vhost '%s': the queue no "
                     "longer exists", name, vhost)
            store.delete_queue(name)
