"""The provider simulator's cashier in a real browser: a customer opens the pay URL the order API gave (Alipay's
signed page.pay URL), presses Pay, is sent back to the shop's return URL, and the order completes -- or presses
Abandon, and nothing is paid."""

from __future__ import annotations

import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.conftest import screenshot
from tests.e2e.conftest import System, new_order_id, order_body

pytestmark = pytest.mark.e2e
RETURN_URL = "http://127.0.0.1:8070/health?back=1"  # any page that answers: the shop's "thank you" page


async def _pay_url(system: System, channel: str) -> tuple[str, str]:
    oid = new_order_id("WEB")
    body = order_body(oid)
    body["payment"] = {"method": "alipay", "channel": channel, "return_url": RETURN_URL}
    r = await system.http.post("http://127.0.0.1:8080/orders", json=body, headers={"Idempotency-Key": oid})
    assert r.status_code == 202, r.text
    order = await system.wait_for(oid, until=lambda o: o.get("payment_action") is not None, timeout=20)
    return oid, str(order["payment_action"]["pay_url"])


def _wait_for_url(browser: WebDriver, prefix: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not browser.current_url.startswith(prefix):
        assert time.monotonic() < deadline, f"browser stayed on {browser.current_url}"
        time.sleep(0.1)


async def test_a_customer_pays_on_the_cashier_page_and_the_order_completes(browser: WebDriver, system: System) -> None:
    oid, pay_url = await _pay_url(system, "page")

    browser.get(pay_url)
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "79.80" in page
    screenshot(browser, "cashier-alipay")
    browser.find_element(By.ID, "pay").click()
    _wait_for_url(browser, RETURN_URL.split("?")[0])

    # Back at the shop with Alipay's signed return parameters -- which prove nothing: the notification decides.
    assert f"out_trade_no={oid}" in browser.current_url
    order = await system.wait_for(oid, status="COMPLETED", timeout=30)
    assert any(h["event_type"] == "PaymentAuthorized" for h in order["history"])


async def test_a_customer_who_abandons_the_cashier_is_not_charged(browser: WebDriver, system: System) -> None:
    oid, pay_url = await _pay_url(system, "wap")

    browser.get(pay_url)
    browser.find_element(By.ID, "abandon").click()
    time.sleep(2)

    order = await system.order(oid)
    assert order is not None
    assert (order["status"], order["stage"]) == ("PENDING", "AWAITING_PAYMENT")
    assert not any(h["event_type"] == "PaymentAuthorized" for h in order["history"])
    r = await system.http.post(f"http://127.0.0.1:8080/orders/{oid}/cancel")
    assert r.status_code == 202
    await system.wait_for(oid, status="CANCELLED", timeout=20)
