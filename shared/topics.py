"""Every topic name, once. Public ones are the storefront contract; keep them exactly."""

from __future__ import annotations

STOREFRONT_ORDERS = "storefront.orders"
ORDER_EVENTS = "order.events"
PAYMENT_EVENTS = "payment.events"
INVENTORY_EVENTS = "inventory.events"
SHIPPING_EVENTS = "shipping.events"
NOTIFY_EVENTS = "notify.events"
# The payment service's own: provider notifications it verified, read back by its consumers (not for others).
PAYMENT_NOTIFICATIONS = "payment.notifications"
# The shipping service's own: carriers' route pushes it verified, read back by its consumers (not for others).
SHIPPING_NOTIFICATIONS = "shipping.notifications"

MAIN_TOPICS = (
    STOREFRONT_ORDERS,
    ORDER_EVENTS,
    PAYMENT_EVENTS,
    INVENTORY_EVENTS,
    SHIPPING_EVENTS,
    NOTIFY_EVENTS,
    PAYMENT_NOTIFICATIONS,
    SHIPPING_NOTIFICATIONS,
)
# Which topics each service's consumer group reads (the contract's topic table, docs/events.md).
CONSUMER_GROUPS: dict[str, tuple[str, ...]] = {
    "order": (STOREFRONT_ORDERS, PAYMENT_EVENTS, INVENTORY_EVENTS, SHIPPING_EVENTS, NOTIFY_EVENTS),
    "payment": (ORDER_EVENTS, SHIPPING_EVENTS, PAYMENT_NOTIFICATIONS),
    "inventory": (ORDER_EVENTS, PAYMENT_EVENTS),
    "shipping": (ORDER_EVENTS, INVENTORY_EVENTS, SHIPPING_NOTIFICATIONS),
    "notify": (ORDER_EVENTS,),
}
DLQ_SUFFIX = ".dlq"


def dlq(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


ALL_TOPICS = MAIN_TOPICS + tuple(dlq(t) for t in MAIN_TOPICS)
