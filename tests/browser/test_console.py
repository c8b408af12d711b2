"""The ops console in a real headless Chromium, against the running stack and console (``make up``).

Each test loads pages as an operator would, checks what they show, and saves a screenshot under
``.local/test-output/console/``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import MongoClient
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from shared import keys, topics
from tests.browser.conftest import log_in, screenshot
from tests.e2e.conftest import System, new_order_id, placed
from tools.console.settings import ConsoleSettings
from tools.ops import topic_log

pytestmark = pytest.mark.e2e


def wait(driver: WebDriver, seconds: float = 90) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, seconds, poll_frequency=0.25)


def text_of(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def test_pages_need_an_operator_key_and_refuse_a_storefront_key(
    browser: WebDriver, console_url: str, operator_key: str, system: System
) -> None:
    browser.delete_all_cookies()
    browser.get(f"{console_url}/dead-letters")
    wait(browser, 10).until(ec.url_contains("/login"))
    assert browser.find_element(By.ID, "key").get_attribute("type") == "password"

    log_in(browser, console_url, "fk_not-a-key-anyone-issued")
    assert text_of(browser, "#login-error") == "unknown key"

    token = keys.new_token()
    doc = keys.key_document(token=token, storefront_id="browser-test", role="storefront", created_by="tests")
    mongo: MongoClient[dict[str, Any]] = MongoClient(system.endpoints.mongodb_url)
    try:
        mongo["fulfil_order"][keys.COLLECTION].insert_one(doc)
        log_in(browser, console_url, token)
        assert "/login" in browser.current_url  # not let in
        assert "operator key" in text_of(browser, "#error-detail")
        assert "403" in browser.title
        screenshot(browser, "storefront-key-refused")
    finally:
        mongo["fulfil_order"][keys.COLLECTION].delete_one({"_id": doc["_id"]})
        mongo.close()

    log_in(browser, console_url, operator_key, then="/dead-letters")
    wait(browser, 10).until(ec.presence_of_element_located((By.ID, "dead-letters")))


async def test_a_placed_order_moves_on_the_board_and_its_page_shows_timeline_and_waterfall(
    browser: WebDriver, console_url: str, operator_key: str, system: System
) -> None:
    log_in(browser, console_url, operator_key)
    wait(browser).until(ec.presence_of_element_located((By.ID, "recent-orders")))
    browser.execute_script("window.__sameDocument = 'yes';")  # gone if the page reloads
    for chart in ("stages", "throughput", "lag", "dead_letters"):
        wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#chart-{chart} .main-svg")))
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#kpi-gmv")))
    for tile in ("#kpi-delivered", "#kpi-delivery-p50", "#kpi-delivery-p95"):
        assert browser.find_element(By.CSS_SELECTOR, tile).text, f"{tile} is empty"

    order_id = new_order_id("CONSOLE")
    await system.send(placed(order_id), key=order_id)
    row = f"#recent-orders tr[data-order='{order_id}']"
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    wait(browser).until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, row), "COMPLETED"))
    assert browser.execute_script("return window.__sameDocument") == "yes", "the board reloaded the page"
    assert int(text_of(browser, "#tile-completed .v")) >= 1
    screenshot(browser, "board")

    browser.find_element(By.CSS_SELECTOR, f"{row} a").click()
    wait(browser).until(ec.url_contains(f"/orders/{order_id}"))
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "order-stage"), "COMPLETED"))
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "timeline"), "OrderCompleted"))
    timeline = text_of(browser, "#timeline")
    for event_type in ("OrderPlaced", "OrderAccepted", "PaymentAuthorized", "StockReserved", "ShipmentScheduled"):
        assert event_type in timeline
    accepted = browser.find_element(By.CSS_SELECTOR, "#timeline tr[data-event='OrderAccepted']").text
    assert "OrderPlaced" in accepted  # caused by the placement: the causation chain is drawn
    history = text_of(browser, "#status-history")
    assert history.index("ACCEPTED") < history.index("COMPLETED")
    # The trace reaches Jaeger in batches; the page polls until its waterfall can be drawn.
    wait(browser, 60).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#chart-waterfall .main-svg")))
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart-waterfall .bars path")
    assert len(bars) >= 5, f"waterfall has {len(bars)} span bars"
    assert "order" in text_of(browser, "#chart-waterfall")  # the order service's spans are labelled
    screenshot(browser, "order")

    # The parcel: the carrier simulator moves it on and pushes its route; the page follows it without a reload.
    browser.execute_script("window.__sameOrderPage = 'yes';")
    wait(browser, 120).until(ec.text_to_be_present_in_element((By.ID, "parcel-status"), "DELIVERED"))
    assert browser.execute_script("return window.__sameOrderPage") == "yes", "the order page reloaded"
    steps = browser.find_elements(By.CSS_SELECTOR, "#parcel-steps tr[data-milestone]")
    milestones = [tr.get_attribute("data-milestone") for tr in steps]
    assert {"PICKED_UP", "DELIVERED"} <= set(milestones), milestones
    assert milestones[-1] == "DELIVERED"  # by the carrier's time
    assert "SF Express" in text_of(browser, "#parcel")  # next_day, the sample order's option
    assert "delivered 20" in text_of(browser, "#parcel")
    screenshot(browser, "order-parcel")


async def test_a_dead_letter_is_shown_masked_and_redriven_through_the_page(
    browser: WebDriver, console_url: str, operator_key: str, system: System
) -> None:
    key = new_order_id("CONSOLE-DLQ")
    email = f"jane.doe.{uuid.uuid4().hex[:6]}@example.com"
    poison = {
        "event_type": "OrderShipped",  # unknown on storefront.orders: dead-lettered at once
        "event_id": str(uuid.uuid4()),
        "order_id": key,
        "occurred_at": "2026-11-25T08:00:00Z",
        "customer": {"email": email},
    }
    await system.send(poison, key=key)
    letters: list[topic_log.DeadLetter] = []
    deadline = time.monotonic() + 30
    while not letters and time.monotonic() < deadline:
        letters = await topic_log.dead_letters(system.endpoints.kafka, topic=topics.STOREFRONT_ORDERS, order_id=key)
        await asyncio.sleep(0.5)
    assert len(letters) == 1, f"the poison record for {key} was not dead-lettered"
    record_id = letters[0].id

    log_in(browser, console_url, operator_key, then=f"/dead-letters?order_id={key}")
    row = f"#dead-letters tr[data-id='{record_id}']"
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    assert "UnknownEventType" in text_of(browser, row)
    assert email not in browser.page_source, "personal data shown unmasked"
    screenshot(browser, "dead-letters")

    # Purge asks first; cancelling it deletes nothing.
    browser.find_element(By.CSS_SELECTOR, f"{row} input[type=checkbox]").click()
    browser.find_element(By.ID, "purge").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "confirm-title"), "Purge 1 dead letter"))
    browser.find_element(By.ID, "cancel").click()
    wait(browser).until(ec.presence_of_element_located((By.ID, "dead-letters")))
    assert len(await topic_log.dead_letters(system.endpoints.kafka, order_id=key)) == 1

    browser.get(f"{console_url}/dead-letters?order_id={key}")
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    browser.find_element(By.CSS_SELECTOR, f"{row} input[type=checkbox]").click()
    browser.find_element(By.ID, "redrive").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "confirm-title"), "Redrive 1 dead letter"))
    assert topics.STOREFRONT_ORDERS in text_of(browser, "#confirm-rows")
    screenshot(browser, "redrive-confirm")
    asked_at = datetime.now(UTC)
    browser.find_element(By.ID, "confirm").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "done"), "redriven: 1"))
    screenshot(browser, "redrive-done")

    replays = [
        rec
        async for rec in topic_log.scan(system.endpoints.kafka, [topics.STOREFRONT_ORDERS], since=asked_at, key=key)
        if rec.headers.get("x-replay") == "redrive"
    ]
    assert len(replays) == 1, f"expected one redriven copy of {record_id} on {topics.STOREFRONT_ORDERS}"
    assert replays[0].headers["x-replay-source"] == record_id
    audit = [json.loads(line) for line in ConsoleSettings().audit_log.read_text().splitlines() if line.strip()]
    mine = [e for e in audit if e["action"] == "dlq redrive" and e.get("records") == [record_id]]
    assert len(mine) == 1, f"no audit entry for the redrive of {record_id}"
    assert mine[0]["via"] == "console"
