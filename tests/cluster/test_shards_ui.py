"""The web UI of a sharded vhost on a real three-node cluster, in a headless browser: each
shard's owner, epoch and copies, a move under way, a rebalance, and each queue's node and
shard in the queues list."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.test_shard_moves import make_vhost, owners, placement

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = os.environ.get("WARREN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no chromium at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture
def page(cluster: Cluster):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                    headless=True)
        pg = browser.new_context().new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.set_default_timeout(15_000)
        yield pg
        browser.close()
        assert not errors, f"JavaScript errors: {errors}"


def open_ui(page, node) -> None:
    page.goto(node.http_url + "/")
    page.fill("#login-username", "guest")
    page.fill("#login-password", "guest")
    page.click("#login-submit")
    expect(page.locator("#who")).to_contain_text("guest")


def cell(page, row: int, column: int):
    return page.locator(f"#shards-table tbody tr:nth-child({row + 1}) td:nth-child({column})")


def test_a_sharded_vhost_page_shows_its_shards_a_move_and_a_rebalance(cluster: Cluster, page):
    make_vhost(cluster, "ui", 3, 1)
    placed = owners(cluster, cluster.nodes[0], "ui")
    # the move below waits for a paused target: neither the Raft leader (the move's entries
    # must commit) nor the node serving the page and the API (n1 here)
    cluster.wait_until(lambda: cluster.leader(cluster.nodes[0]) is not None,
                       what="a Raft leader")
    leader = cluster.leader(cluster.nodes[0])
    assert leader is not None
    target = next(n for n in cluster.nodes if n.name not in (placed[2], leader.name))
    n1 = next(n for n in cluster.nodes if n is not target)
    open_ui(page, n1)
    for k in range(3):
        code, body = cluster.http(n1, "PUT", f"/api/queues/ui/uq{k}", {
            "durable": True, "arguments": {"x-queue-leader-locator": "balanced"}})
        assert code == 201, body

    page.click("#nav >> text=Virtual hosts")
    expect(page.locator("#vhosts-table")).to_contain_text("ui")
    page.click("#vhosts-table >> text=ui")
    expect(page.locator("#page h1")).to_have_text("Virtual host ui")
    expect(page.locator("#shards-table tbody tr")).to_have_count(3)
    for k, owner in enumerate(placed):
        expect(cell(page, k, 1)).to_have_text(str(k))
        expect(cell(page, k, 2)).to_have_text(owner)
        expect(cell(page, k, 3)).to_have_text("1")  # epoch
        expect(cell(page, k, 7)).to_have_text("yes")  # available

    # a move that waits for its target (paused: it cannot connect) shows on the page
    answer: dict = {}

    def move() -> None:
        answer["reply"] = cluster.http(n1, "POST", "/api/cluster/vhosts/ui/move",
                                       {"node": target.name, "shard": 2, "timeout": 30},
                                       timeout=90)
    target.pause()
    mover = threading.Thread(target=move)
    try:
        mover.start()
        # (a refresh of the page waits for the paused node's figures for a while)
        expect(cell(page, 2, 8)).to_have_text(
            f"to {target.name}: waiting for it to connect to the owner", timeout=30_000)
    finally:
        target.resume()
    mover.join(120)
    code, body = answer["reply"]
    assert code == 200 and body["owner"] == target.name, body
    expect(cell(page, 2, 2)).to_have_text(target.name, timeout=30_000)
    expect(cell(page, 2, 3)).to_have_text("2")
    expect(cell(page, 2, 8)).to_have_text("")

    # the queues list says where each queue lives
    page.click("#nav >> text=Queues")
    now = owners(cluster, n1, "ui")
    for k in range(3):
        row = page.locator("#queues-table tbody tr", has_text=f"uq{k}")
        expect(row.locator("td:nth-child(7)")).to_have_text(now[k], timeout=30_000)  # node
        expect(row.locator("td:nth-child(8)")).to_have_text(str(k))  # shard

    # a rebalance from the page: the shards end spread, and the page says what moved
    page.goto(n1.http_url + "/#/vhost/ui")
    page.click("#rebalance")
    expect(page.locator("#vhost-note")).to_have_class(re.compile(r"\bok\b"), timeout=60_000)
    spread = owners(cluster, n1, "ui")
    counts = Counter(spread)
    assert max(counts.values()) - min(counts.get(n.name, 0) for n in cluster.nodes) <= 1
    moved = [(k, a, b) for k, (a, b) in enumerate(zip(now, spread, strict=True)) if a != b]
    expected = "; ".join(f"shard {k}: {a} → {b}" for k, a, b in moved) or \
        "nothing to move: the shards are spread already"
    expect(page.locator("#vhost-note")).to_have_text(expected)
    assert [s["owner"] for s in placement(cluster, n1, "ui")["shards"]] == spread
