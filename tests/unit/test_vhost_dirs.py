"""Issue 11 item 3: vhost names are not file names.  Each store lives in a directory named
by a readable prefix and a digest of the name (with the name in a file inside); deleted
stores wait outside that namespace; legacy (quoted-name) directories are adopted."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import quote

from node.vhost_stores import VhostStores

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
