"""The vhost stores on this node's disk: one LMDB `MessageStore` per vhost under
`data_dir/vhosts/<readable prefix>-<digest of the name>/` (the name itself in a `vhost.name`
file inside, as RabbitMQ keeps a `.vhost` file in its hashed directories), opened and closed
by name, and the cleanup of deleted ones.

A vhost name is not a file name: quoting it once let `orders.deleted-1` look like a
tombstone (its messages were removed at the next start), put `..` in the data directory
itself, and let a long CJK name overflow the file-name limit so the node could not start.
Deleted stores now wait in `data_dir/vhosts-deleted/`, outside the stores' namespace.
`adopt_legacy` moves stores of the old quoted-name layout to their new place.

Which vhosts get a store is the caller's decision (today: the vhosts this node owns); this
class only keeps the stores it was asked to open.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Collection, ItemsView
from urllib.parse import quote

import lmdb

from cluster import shards
from storage.reserve import Reserve
from storage.space import DEFAULT_RESERVE_BYTES, RESERVE_FILE
from storage.store import MessageStore

log = logging.getLogger("warren.broker")

NAME_FILE = "vhost.name"
_READABLE = re.compile(r"[^A-Za-z0-9_-]+")
_LEGACY_TOMBSTONE = re.compile(r"\.deleted-[0-9a-f]{8}$")


def store_dir_name(vhost: str) -> str:
    """A directory name that depends on the whole name (digest) and shows its start: no
    two vhosts share one, none is `.`/`..`, contains a separator or exceeds 80 bytes."""
    prefix = _READABLE.sub("_", vhost).strip("_")[:40] or "vhost"
    return f"{prefix}-{hashlib.sha256(vhost.encode()).hexdigest()[:32]}"


class VhostStores:
    def __init__(self, data_dir: str, sync: bool,
                 reserve_bytes: int = DEFAULT_RESERVE_BYTES) -> None:
        self.base = os.path.join(data_dir, "vhosts")
        self.graveyard = os.path.join(data_dir, "vhosts-deleted")
        self.sync = sync
        # the stores' one reserve: released by the first store that meets a full disk
        self.reserve = Reserve(os.path.join(data_dir, RESERVE_FILE), reserve_bytes)
        # called on the loop when a store's commit finds the disk full (the disk alarm)
        self.on_space_short: Callable[[], None] | None = None
        self._stores: dict[str, MessageStore] = {}
        # closes run in the background; the tasks are kept so they are not collected early
        self._pending_closes: list[asyncio.Task] = []

    def path(self, vhost: str) -> str:
        return os.path.join(self.base, store_dir_name(vhost))

    def adopt_legacy(self, vhosts: Collection[str]) -> None:
        """Move stores of the quoted-name layout (of earlier releases) to their place; run at
        start, before `remove_tombstones`, with every vhost the definitions have."""
        for vhost in vhosts:
            old = os.path.join(self.base, quote(vhost, safe="") or "%00")
            new = self.path(vhost)
            try:
                if old != new and os.path.isdir(old) and not os.path.exists(new):
                    os.rename(old, new)
                    self._write_name(new, vhost)
                    log.info("%s: store moved from %s to %s", shards.label(vhost), old, new)
            except OSError as e:  # e.g. a name too long to ever have had a directory
                log.debug("%s: no legacy store adopted: %s", shards.label(vhost), e)

    @staticmethod
    def _write_name(path: str, vhost: str) -> None:
        with open(os.path.join(path, NAME_FILE), "w", encoding="utf-8") as f:
            f.write(vhost)

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
            if not os.path.exists(os.path.join(path, NAME_FILE)):
                self._write_name(path, vhost)
            store = MessageStore(path, sync=self.sync, reserve=self.reserve)
            loop = asyncio.get_running_loop()
            store.space.on_short = lambda: loop.call_soon_threadsafe(self._space_short)
            store.start(loop)
            self._stores[vhost] = store
        return store

    def _space_short(self) -> None:
        if self.on_space_short is not None:
            self.on_space_short()

    def space(self, limit: int) -> tuple[int, bool]:
        """For the disk alarm: the bytes free inside the open stores' files (LMDB does not
        give consumed space back to the disk) net of what the reserve lacks, and whether a
        store found the disk full since it last had ``limit`` bytes to spare."""
        spare, short = -self.reserve.owed, False
        for store in list(self._stores.values()):
            try:
                spare += store.space.refresh(limit)
            except lmdb.Error:
                continue  # closed meanwhile
            short = short or store.space.short
        return spare, short

    def close(self, vhost: str, delete_data: bool) -> None:
        """Close the vhost's store (if open) in the background; with `delete_data`, also
        remove its files, even when no store is open (a vhost this node used to run)."""
        store = self._stores.pop(vhost, None)
        path = self.path(vhost)
        tomb: str | None = None
        if delete_data and os.path.isdir(path):
            # out of the way at once: a vhost of the same name may be created in this very
            # loop turn, and must not find (or later lose) the old files
            os.makedirs(self.graveyard, exist_ok=True)
            tomb = os.path.join(self.graveyard, f"{os.path.basename(path)}-{os.urandom(4).hex()}")
            os.rename(path, tomb)

        async def close() -> None:
            if store is not None:
                await store.close()
            # only ever the tomb: the vhost's own path may hold a store opened since (a
            # replica role given back in the next Raft event), whose files it would delete
            if tomb is not None:
                shutil.rmtree(tomb, ignore_errors=True)
        self._pending_closes.append(asyncio.ensure_future(close()))

    async def close_all(self) -> None:
        """At shutdown: close every open store (and wait for it)."""
        stores, self._stores = self._stores, {}
        for store in stores.values():
            await store.close()

    def remove_tombstones(self) -> None:
        """Stores of deleted vhosts whose removal a crash interrupted (and tombstones of the
        old layout, once `adopt_legacy` has moved every live store out of their way)."""
        if os.path.isdir(self.graveyard):
            shutil.rmtree(self.graveyard, ignore_errors=True)
        if not os.path.isdir(self.base):
            return
        for entry in os.listdir(self.base):
            if _LEGACY_TOMBSTONE.search(entry):
                shutil.rmtree(os.path.join(self.base, entry), ignore_errors=True)

    def remove_unknown(self, vhosts: Collection[str]) -> None:
        """At start, with every vhost the definitions have: the stores of other vhosts
        belong to vhosts deleted while this node was down (or whose delete it replayed from
        its Raft log before serving), and a vhost created again under the same name must
        not find their messages or their replication position."""
        if not os.path.isdir(self.base):
            return
        wanted = set(vhosts)
        for entry in os.listdir(self.base):
            path = os.path.join(self.base, entry)
            try:
                with open(os.path.join(path, NAME_FILE), encoding="utf-8") as f:
                    vhost = f.read()
            except OSError:
                continue  # not a store of this layout (adopt_legacy's business)
            if vhost in wanted or entry != store_dir_name(vhost):
                continue
            log.info("%s no longer exists: removing its store %s", shards.label(vhost), path)
            os.makedirs(self.graveyard, exist_ok=True)
            os.rename(path, os.path.join(self.graveyard, f"{entry}-{os.urandom(4).hex()}"))
        if os.path.isdir(self.graveyard):
            shutil.rmtree(self.graveyard, ignore_errors=True)

    def drop_orphaned_messages(self, vhost: str, keys: Collection[str]) -> None:
        """Messages of queues that no longer exist (deleted while no owner applied the
        delete to this copy, exclusive or transient queues of a node that crashed, a delete
        whose store cleanup did not commit) would sit in LMDB forever, or be found by a
        queue declared again under the same key.  `keys`: the store keys of the queues the
        vhost has now (VirtualHost.store_keys)."""
        store = self._stores.get(vhost)
        if store is None:
            return
        for key in store.queues() - set(keys):
            name, _, declaration = key.partition("\x00")
            log.info("dropping stored messages of queue '%s'%s in vhost '%s': the queue no "
                     "longer exists", name, f" (declaration {declaration})" if declaration
                     else "", vhost)
            store.delete_queue(key)
