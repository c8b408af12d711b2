"""Notification rules: what each mail says, when an outcome counts as sent, and the mail's stable Message-ID."""

from __future__ import annotations

import pytest

from services.notify import domain
from services.notify.domain import Contact, Delivery
from tests.unit.factories import AT, ORDER_ID, TRACKING_NUMBER, order_cancelled, order_completed

CONTACT = Contact(email="xm@example.com", name="王小明")


def test_completion_mail_names_the_order_carrier_tracking_number_and_date() -> None:
    kind, mail = domain.compose(CONTACT, order_completed(tracking_number="SF999888777666"))

    assert kind == "order_completed"
    assert mail.to == "xm@example.com"
    assert ORDER_ID in mail.subject
    assert "SF999888777666" in mail.body
    assert "SF Express" in mail.body
    assert "2026-11-26" in mail.body
    assert "79.80 CNY" in mail.body


@pytest.mark.parametrize(
    ("reason", "human"),
    [
        ("payment_declined", "your payment was declined"),
        ("out_of_stock", "an item in your order is out of stock"),
        ("shipping_failed", "the carrier could not deliver to your address"),
        ("timeout", "we could not complete it in time"),
        ("customer_request", "you asked us to cancel it"),
    ],
)
def test_cancellation_mail_gives_the_reason_in_words(reason: str, human: str) -> None:
    kind, mail = domain.compose(CONTACT, order_cancelled(reason))

    assert kind == "order_cancelled"
    assert "cancelled" in mail.subject
    assert ORDER_ID in mail.subject
    assert human in mail.body
    assert reason not in mail.body


def test_cancellation_mail_for_an_unknown_reason_falls_back_to_the_reason_itself() -> None:
    _, mail = domain.compose(CONTACT, order_cancelled("warehouse_flooded"))

    assert "warehouse_flooded" in mail.body


def test_mail_message_id_is_the_one_for_its_order_and_kind() -> None:
    _, mail = domain.compose(CONTACT, order_completed())

    assert mail.message_id == domain.message_id(ORDER_ID, "order_completed")


def test_message_id_is_the_same_for_the_same_order_and_kind() -> None:
    assert domain.message_id(ORDER_ID, "order_completed") == domain.message_id(ORDER_ID, "order_completed")


def test_message_id_differs_between_kinds_and_between_orders() -> None:
    ids = {
        domain.message_id(ORDER_ID, "order_completed"),
        domain.message_id(ORDER_ID, "order_cancelled"),
        domain.message_id("SHOP1-000124", "order_completed"),
    }

    assert len(ids) == 3


def test_message_id_is_a_valid_angle_bracketed_address() -> None:
    mid = domain.message_id(ORDER_ID, "order_completed")

    assert mid.startswith("<")
    assert mid.endswith("@fulfil.local>")
    assert mid.count("@") == 1


def contact_with(status: str) -> Contact:
    delivery = Delivery.model_validate({"status": status, "message_id": "<m@fulfil.local>", "at": AT})
    return CONTACT.model_copy(update={"deliveries": {"order_completed": delivery}})


def test_nothing_is_sent_for_an_unknown_contact() -> None:
    assert not domain.already_sent(None, "order_completed")


def test_an_outcome_without_a_delivery_is_not_sent() -> None:
    assert not domain.already_sent(CONTACT, "order_completed")


def test_an_interrupted_sending_is_not_settled_so_it_is_tried_again() -> None:
    assert not domain.already_sent(contact_with("SENDING"), "order_completed")


@pytest.mark.parametrize("status", ["SENT", "FAILED"])
def test_a_sent_or_failed_delivery_settles_the_outcome(status: str) -> None:
    assert domain.already_sent(contact_with(status), "order_completed")


def test_a_settled_outcome_does_not_settle_the_other_kind() -> None:
    assert not domain.already_sent(contact_with("SENT"), "order_cancelled")


def test_claim_then_record_sent_settles_the_outcome_with_the_same_message_id() -> None:
    event = order_completed(tracking_number=TRACKING_NUMBER)
    kind, mail = domain.compose(CONTACT, event)

    claimed = domain.claim(CONTACT, kind, mail, AT)
    sent, events = domain.record_sent(claimed, event, kind, mail, AT)

    assert not domain.already_sent(claimed, kind)
    assert domain.already_sent(sent, kind)
    assert sent.deliveries[kind].message_id == mail.message_id
    assert [e.event_type for e in events] == ["NotificationSent"]


@pytest.mark.parametrize(
    ("email", "bounces"),
    [
        ("anyone@bounce.test", True),
        ("Anyone@BOUNCE.TEST", True),
        ("xm@example.com", False),
        ("anyone@notbounce.test", False),
        ("bounce.test@example.com", False),
    ],
)
def test_sandbox_bounce_is_any_address_at_bounce_test(email: str, bounces: bool) -> None:
    assert domain.is_sandbox_bounce(email) is bounces
