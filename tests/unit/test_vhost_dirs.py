"""Vhost names are not file names.  Each store lives in a directory named
by a readable prefix and a digest of the name (with the name in a file inside); deleted
stores wait outside that namespace; legacy (quoted-name) directories are adopted."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import quote

from node.runtime.stores import VhostStores

NAMES = ["/", "orders.deleted-1", "..", ".", "a/b", "注文" * 40, "x.deleted-0123abcd"]


def test_directory_names_cannot_collide_escape_or_overflow(tmp_path: Path) -> None:
    stores = VhostStores(str(tmp_path), sync=False)
    paths = {name: stores.path(name) for name in NAMES}
    assert len(set(paths.values())) == len(NAMES)
    for name, path in paths.items():
        assert os.path.dirname(path) == stores.base, name  # inside the namespace, one level
        leaf = os.path.basename(path)
        assert leaf not in ("", ".", "..") and "/" not in leaf
        assert len(leaf.encode()) <= 100, name
        assert ".deleted-" not in leaf, name  # never mistaken for a tombstone


def test_stores_survive_tombstone_cleanup_and_can_be_deleted(tmp_path: Path) -> None:
    async def main() -> None:
        stores = VhostStores(str(tmp_path), sync=False)
        for name in NAMES:
            store = stores.open(name)
            store.put("q", 1, b"kept")
            await store.flush()
            with open(os.path.join(stores.path(name), "vhost.name"), encoding="utf-8") as f:
                assert f.read() == name
        await stores.close_all()
        stores = VhostStores(str(tmp_path), sync=False)
        stores.remove_tombstones()  # a restart
        for name in NAMES:
            assert stores.open(name).read_range("q", 0, 10)[0][1] == b"kept", name
        for name in NAMES:
            stores.close(name, delete_data=True)
        await asyncio.gather(*stores._pending_closes)
        assert os.listdir(stores.base) == []
        assert os.path.isdir(tmp_path / "vhosts")  # the data directory itself is intact
    asyncio.run(main())


def test_legacy_directories_are_adopted(tmp_path: Path) -> None:
    async def main() -> None:
        legacy = tmp_path / "vhosts" / (quote("orders.deleted-1", safe=""))
        stores = VhostStores(str(tmp_path), sync=False)
        os.makedirs(stores.base, exist_ok=True)
        # a store as the quoted-name layout left it
        from storage.store import MessageStore
        old = MessageStore(str(legacy), sync=False)
        old.start(asyncio.get_running_loop())
        old.put("q", 1, b"old")
        await old.flush()
        await old.close()
        (tmp_path / "vhosts" / "gone.deleted-0a1b2c3d").mkdir()  # a legacy tombstone
        stores.adopt_legacy(["orders.deleted-1"])
        stores.remove_tombstones()
        assert not legacy.exists()
        assert not (tmp_path / "vhosts" / "gone.deleted-0a1b2c3d").exists()
        assert stores.open("orders.deleted-1").read_range("q", 0, 1)[0][1] == b"old"
        await stores.close_all()
    asyncio.run(main())


def test_stores_of_vhosts_the_definitions_lost_are_removed_at_start(tmp_path: Path) -> None:
    """A vhost deleted while this node was down (or whose delete it replayed from its own
    Raft log before serving) leaves a store nobody closes; created again under the same
    name, the vhost must not find the old messages."""
    async def main() -> None:
        stores = VhostStores(str(tmp_path), sync=False)
        for name in ("kept", "gone"):
            s = stores.open(name)
            s.put("q", 1, b"old")
            await s.flush()
        await stores.close_all()
        os.makedirs(os.path.join(stores.base, "not-a-store"))  # no name file: left alone
        stores.remove_unknown(["kept", "never-opened"])
        assert sorted(os.listdir(stores.base)) == sorted(
            [os.path.basename(stores.path("kept")), "not-a-store"])
        assert not os.path.exists(stores.graveyard)
        assert stores.open("kept").read_range("q", 0, 1)[0][1] == b"old"
        assert stores.open("gone").read_range("q", 0, 1) == []
        await stores.close_all()
    asyncio.run(main())


def test_orphaned_messages_are_those_of_queue_keys_no_queue_has(tmp_path: Path) -> None:
    from node.queues.queue import store_key
    async def main() -> None:
        stores = VhostStores(str(tmp_path), sync=False)
        s = stores.open("v")
        old, new = store_key("q", "aa"), store_key("q", "bb")
        for key in (old, new, "legacy"):
            s.put(key, 1, b"m")
        await s.flush()
        stores.drop_orphaned_messages("v", {new})
        await s.flush()
        assert s.queues() == {new}
        await stores.close_all()
    asyncio.run(main())
    long = "é" * 127  # 254 bytes: no room for the suffix
    key = store_key(long, "cc")
    assert len(key.encode()) <= 255 and key != store_key(long, "dd")
    assert store_key("q", "") == "q"  # declared before ids: stored under the bare name


def test_forgetting_a_copy_never_there_spares_the_store_opened_right_after(
        tmp_path: Path) -> None:
    """A node that holds no copy of '/' forgets it (a Raft event), and the next event makes
    it a replica, in the same loop turn: the new store's files must outlive the first
    forget's background cleanup (it once removed the vhost's live directory, and the store
    wrote on into deleted files: the copy was gone at the next start, and each commit's
    free-space check raised a disk alarm that never cleared)."""
    async def main() -> None:
        stores = VhostStores(str(tmp_path), sync=False)
        stores.close("/", delete_data=True)  # no directory yet
        store = stores.open("/")
        await asyncio.gather(*stores._pending_closes)
        assert os.path.isdir(stores.path("/"))
        store.put("q", 1, b"kept")
        await store.flush()
        assert not store.space.short
        assert stores.space(50_000_000)[1] is False
        await stores.close_all()
        again = VhostStores(str(tmp_path), sync=False)
        assert again.open("/").read_range("q", 0, 10)[0][1] == b"kept"
        await again.close_all()
    asyncio.run(main())
