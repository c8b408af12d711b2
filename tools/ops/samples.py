"""Sample orders: the one place a storefront order is built for the benchmark, the chaos drill and the tests.

Each caller keeps its own mix (the benchmark's shares, the drill's kinds, the tests' fixed sample) and draws its own
random numbers; what is built here is the order's shape, so a change to the storefront contract is made once.
The sandbox's special inputs (``docs/events.md``, *Sandbox behaviour*) are named here for the same reason.
"""

from __future__ import annotations

from typing import Any

OK_TOKEN = "tok_ok"  # noqa: S105 (sandbox payment tokens, not secrets)
DECLINE_TOKEN = "tok_decline"  # noqa: S105
REVIEW_TOKEN = "tok_review"  # noqa: S105 (held in payment review, PAYMENT_REVIEW_HOLD_SECONDS)
SOLD_OUT_SKU = "SKU-SOLD-OUT"
UNDELIVERABLE_POSTAL_CODE = "000000"
BOUNCE_DOMAIN = "bounce.test"


def order_line(sku: str, quantity: int, unit_price: str) -> dict[str, Any]:
    """One order line as the contract spells it (the price a decimal string)."""
    return {"sku": sku, "quantity": quantity, "unit_price": unit_price}


def order_request(
    order_id: str,
    *,
    lines: list[dict[str, Any]],
    customer_id: str,
    name: str,
    email: str,
    phone: str | None = None,
    currency: str = "CNY",
    method: str = "alipay",
    token: str = OK_TOKEN,
    option: str = "next_day",
    scheduled_date: str | None = None,
    line1: str = "1 Zhongguancun St",
    city: str = "Beijing",
    postal_code: str = "100080",
    country: str = "CN",
) -> dict[str, Any]:
    """An order as a storefront sends it (the body of ``POST /orders``), shipped to the customer by name."""
    return {
        "order_id": order_id,
        "customer": {"id": customer_id, "name": name, "email": email, "phone": phone},
        "lines": lines,
        "currency": currency,
        "payment": {"method": method, "token": token},
        "shipping": {
            "option": option,
            "scheduled_date": scheduled_date,
            "address": {
                "recipient": name,
                "line1": line1,
                "city": city,
                "postal_code": postal_code,
                "country": country,
            },
        },
    }


def order_placed(request: dict[str, Any], *, event_id: str, occurred_at: str) -> dict[str, Any]:
    """``request`` as the ``OrderPlaced`` a storefront publishes to ``storefront.orders``."""
    return {"event_type": "OrderPlaced", "event_id": event_id, "occurred_at": occurred_at, **request}
