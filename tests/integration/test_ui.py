"""The web UI in a real headless browser (Debian's chromium driven by Playwright): log in,
declare a queue, publish a message to it, get the message back, and see the live pages."""

from __future__ import annotations

import os
import re

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("WARREN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no chromium at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, node):
    context = browser.new_context()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(10_000)
    pg.goto(node.http_url + "/")
    yield pg
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def login(page, user: str = "guest", password: str = "guest") -> None:
    page.fill("#login-username", user)
    page.fill("#login-password", password)
    page.click("#login-submit")


def test_login_rejects_a_wrong_password(page):
    login(page, "guest", "wrong")
    playwright_api.expect(page.locator("#login-error")).to_have_text("Login failed")
    assert page.locator("#nav").is_hidden()


def test_declare_publish_and_get_a_message(page):
    login(page)
    playwright_api.expect(page.locator("#who")).to_contain_text("guest")
    playwright_api.expect(page.locator("#totals")).to_contain_text("Queues")
    playwright_api.expect(page.locator("#chart-rates")).to_be_visible()

    page.click("text=Queues")
    page.fill("#declare-queue-name", "ui-queue")
    page.select_option("#declare-queue-durable", "true")
    page.click("#declare-queue-submit")
    playwright_api.expect(page.locator("#declare-queue-status")).to_have_text(
        "Queue ui-queue declared")
    playwright_api.expect(page.locator("#queues-table")).to_contain_text("ui-queue")

    page.click("#queues-table >> text=ui-queue")
    playwright_api.expect(page.locator("#page h1")).to_have_text("Queue ui-queue in /")
    page.fill("#publish-payload", "hello from the browser")
    page.click("#publish-submit")
    playwright_api.expect(page.locator("#publish-status")).to_have_text("Message published.")

    page.select_option("#get-ackmode", "ack_requeue_false")
    page.click("#get-submit")
    playwright_api.expect(page.locator("#get-results .payload")).to_have_text(
        "hello from the browser")
    playwright_api.expect(page.locator("#get-status")).to_have_text("1 message(s)")

    page.click("#get-submit")  # acked, so the queue is empty now
    playwright_api.expect(page.locator("#get-status")).to_have_text("Queue is empty")

    page.once("dialog", lambda d: d.accept())
    page.click("#delete-queue")
    page.wait_for_url(re.compile(r"#/queues$"))


def test_every_page_renders(page, node):
    login(page)
    playwright_api.expect(page.locator("#who")).to_contain_text("guest")
    for nav, marker in (("Connections", "#connections-table"), ("Channels", "#channels-table"),
                        ("Exchanges", "#exchanges-table"), ("Virtual hosts", "#vhosts-table"),
                        ("Users", "#users-table"), ("Policies", "#policies-table"),
                        ("Nodes", "#nodes-table"), ("Overview", "#totals")):
        page.click(f"#nav >> text={nav}")
        playwright_api.expect(page.locator(marker)).to_be_visible()
    playwright_api.expect(page.locator("#nodes-table")).to_have_count(0)
    page.click("#nav >> text=Nodes")
    playwright_api.expect(page.locator("#nodes-table")).to_contain_text(node.name)
    page.click("#nav >> text=Exchanges")
    playwright_api.expect(page.locator("#exchanges-table")).to_contain_text("amq.topic")
