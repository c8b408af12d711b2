"""Notification rules: what each mail says, the claim (with its lease) taken before a mail goes out, what its
answer records, the take-over of a claim left by a crash, and the mail's stable Message-ID."""

from __future__ import annotations

import typing
from datetime import datetime, timedelta

import pytest
from pydantic import ValidationError

from services.notify import domain
from services.notify.domain import CLAIM_LEASE, Contact, Delivery, SendCall, SendResult
from shared.events.notify import NotificationFailed, NotificationSent
from shared.events.order import CancellationReason, OrderCancelled
from tests.unit.factories import AT, ORDER_ID, TRACKING_NUMBER, cause, order_cancelled, order_completed

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
def test_cancellation_mail_gives_the_reason_in_words(reason: CancellationReason, human: str) -> None:
    kind, mail = domain.compose(CONTACT, order_cancelled(reason))

    assert kind == "order_cancelled"
    assert "cancelled" in mail.subject
    assert ORDER_ID in mail.subject
    assert human in mail.body
    assert reason not in mail.body


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


def test_an_unknown_contact_gets_no_mail_claimed() -> None:
    contact, events = domain.notify(None, order_completed(tracking_number=TRACKING_NUMBER), at=AT, claimant="me")
    assert contact.deliveries == {}
    assert events == []


def test_an_outcome_without_a_delivery_is_claimed_by_the_claimant() -> None:
    contact, events = domain.notify(CONTACT, order_completed(tracking_number=TRACKING_NUMBER), at=AT, claimant="me")
    assert contact.deliveries["order_completed"].status == "SENDING"
    assert contact.deliveries["order_completed"].claim_id == "me"
    assert events == []


@pytest.mark.parametrize("status", ["SENDING", "SENT", "FAILED"])
def test_an_outcome_with_any_delivery_is_left_as_it_is(status: str) -> None:
    before = contact_with(status)
    contact, events = domain.notify(before, order_completed(tracking_number=TRACKING_NUMBER), at=AT, claimant="me")
    assert contact == before
    assert events == []


def test_a_settled_outcome_does_not_settle_the_other_kind() -> None:
    contact, _ = domain.notify(contact_with("SENT"), order_cancelled("timeout"), at=AT, claimant="me")
    assert contact.deliveries["order_cancelled"].status == "SENDING"


def test_claim_then_record_sent_settles_the_outcome_with_the_same_message_id() -> None:
    event = order_completed(tracking_number=TRACKING_NUMBER)
    kind, mail = domain.compose(CONTACT, event)

    claimed = domain.claim(CONTACT, kind, mail, AT)
    sent, events = domain.record_sent(claimed, event, kind, mail, AT)

    assert domain.pending(claimed) is not None
    assert domain.pending(sent) is None
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


# --- the claim, its lease, and what the answer records -----------------------------------------------------

ME, OTHER = "claimant-me", "claimant-other"
COMPLETED = SendCall(kind="order_completed", claimant=ME, lease_until=AT + CLAIM_LEASE)


def claimed(by: str = ME) -> Contact:
    contact, events = domain.notify(CONTACT, order_completed(), at=AT, claimant=by)
    assert events == []
    return contact


def test_an_outcome_claims_its_mail_for_this_process_under_a_lease() -> None:
    event = order_completed()
    _, mail = domain.compose(CONTACT, event)

    contact, events = domain.notify(CONTACT, event, at=AT, claimant=ME)

    assert events == []  # nothing is announced before the mail has gone out
    delivery = contact.deliveries["order_completed"]
    assert (delivery.status, delivery.claim_id) == ("SENDING", ME)
    assert delivery.lease_until == AT + CLAIM_LEASE
    assert delivery.mail == mail  # whoever finishes the claim sends exactly this mail
    assert domain.pending(contact) == COMPLETED


def test_a_fresh_claim_leaves_room_for_a_whole_send_and_the_clocks_disagreeing() -> None:
    assert domain.SEND_TIMEOUT > 2 * domain.SMTP_TIMEOUT  # connect and greeting, then the mail's commands
    assert CLAIM_LEASE > domain.SEND_TIMEOUT + domain.CLOCK_MARGIN
    assert domain.MAX_HOLD > CLAIM_LEASE


def test_an_outcome_already_claimed_or_settled_is_not_claimed_again() -> None:
    first = claimed(by=OTHER)

    again, events = domain.notify(first, order_completed(), at=AT + timedelta(hours=1), claimant=ME)

    assert (again, events) == (first, [])


def test_a_contact_without_an_address_gets_no_mail() -> None:
    contact, events = domain.notify(None, order_cancelled("timeout"), at=AT, claimant=ME)

    assert events == []
    assert contact.deliveries == {}
    assert domain.pending(contact) is None


def test_a_sandbox_bounce_address_is_recorded_failed_without_a_claim() -> None:
    bouncing = Contact(email="anyone@bounce.test", name="x")

    contact, events = domain.notify(bouncing, order_cancelled("timeout"), at=AT, claimant=ME)

    assert contact.deliveries["order_cancelled"].status == "FAILED"
    assert [type(e) for e in events] == [NotificationFailed]
    assert domain.pending(contact) is None


def test_nothing_is_pending_for_an_unknown_contact_or_settled_deliveries() -> None:
    assert domain.pending(None) is None
    assert domain.pending(contact_with("SENT")) is None
    assert domain.pending(contact_with("FAILED")) is None


def test_the_lease_runs_until_its_end_and_not_a_moment_longer() -> None:
    contact = claimed(by=OTHER)
    call = SendCall(kind="order_completed", claimant=OTHER, lease_until=AT + CLAIM_LEASE)

    assert domain.lease_running(contact, call, AT + CLAIM_LEASE - timedelta(milliseconds=1))
    assert not domain.lease_running(contact, call, AT + CLAIM_LEASE)


def test_a_claim_without_a_lease_is_not_running() -> None:
    call = SendCall(kind="order_completed", claimant="")

    assert not domain.lease_running(contact_with("SENDING"), call, AT)


def record(contact: Contact, call: SendCall, result: SendResult, *, claimant: str = ME) -> domain.Decision:
    return domain.record(contact, call, result, cause(), at=AT + timedelta(seconds=1), claimant=claimant)


def test_a_mail_sent_settles_the_outcome_and_announces_its_message_id() -> None:
    contact, events = record(claimed(), COMPLETED, SendResult(outcome="sent"))

    delivery = contact.deliveries["order_completed"]
    assert delivery.status == "SENT"
    assert delivery.message_id == domain.message_id(ORDER_ID, "order_completed")
    assert len(events) == 1
    sent = events[0]
    assert isinstance(sent, NotificationSent)
    assert (sent.kind, sent.message_id) == ("order_completed", delivery.message_id)
    assert domain.pending(contact) is None


def test_a_mail_refused_for_good_is_recorded_failed_with_the_error() -> None:
    contact, events = record(claimed(), COMPLETED, SendResult(outcome="failed", error="recipient refused (550)"))

    assert contact.deliveries["order_completed"].status == "FAILED"
    assert len(events) == 1
    failed = events[0]
    assert isinstance(failed, NotificationFailed)
    assert failed.error == "recipient refused (550)"
    assert domain.pending(contact) is None


def test_a_stale_claim_is_taken_over_with_a_fresh_lease_and_the_same_mail() -> None:
    stale = claimed(by=OTHER)
    theirs = domain.pending(stale)
    assert theirs is not None
    taken_at = AT + timedelta(seconds=1)

    contact, events = record(stale, theirs, SendResult(outcome="take_over"), claimant=ME)

    assert events == []
    delivery = contact.deliveries["order_completed"]
    assert (delivery.status, delivery.claim_id, delivery.lease_until) == ("SENDING", ME, taken_at + CLAIM_LEASE)
    assert delivery.at == taken_at  # a new claimant: its hold starts now
    assert delivery.mail == stale.deliveries["order_completed"].mail
    assert domain.pending(contact) == COMPLETED.model_copy(update={"lease_until": taken_at + CLAIM_LEASE})


def test_a_renewed_claim_has_a_fresh_lease_and_keeps_when_it_was_first_taken() -> None:
    renewed_at = AT + timedelta(seconds=1)

    contact, events = record(claimed(), COMPLETED, SendResult(outcome="take_over"))

    assert events == []
    delivery = contact.deliveries["order_completed"]
    assert (delivery.claim_id, delivery.lease_until, delivery.at) == (ME, renewed_at + CLAIM_LEASE, AT)


def test_a_take_over_decided_on_an_older_claim_of_the_same_process_changes_nothing() -> None:
    # Another process read our first claim (from its cache) and saw it lapse; we had renewed it meanwhile.
    first = claimed(by=OTHER)
    lapsed = domain.pending(first)
    assert lapsed is not None
    renewed, _ = record(first, lapsed, SendResult(outcome="take_over"), claimant=OTHER)

    contact, events = record(renewed, lapsed, SendResult(outcome="take_over"), claimant=ME)

    assert (contact, events) == (renewed, [])


# --- when a claim may be sent: the send must end a clock margin before the lease does -----------------------

START_BY = AT + CLAIM_LEASE - domain.CLOCK_MARGIN - domain.SEND_TIMEOUT


def step(contact: Contact, at: datetime, *, claimant: str = ME) -> str:
    call = domain.pending(contact)
    assert call is not None
    return domain.next_step(contact, call, at=at, claimant=claimant)


def test_a_send_may_start_until_a_whole_send_and_the_clock_margin_remain_of_the_lease() -> None:
    assert domain.start_by(COMPLETED) == START_BY
    assert step(claimed(), AT) == "send"
    assert step(claimed(), START_BY) == "send"


def test_an_own_claim_too_old_to_start_a_send_is_claimed_anew_first() -> None:
    assert step(claimed(), START_BY + timedelta(milliseconds=1)) == "claim"


def test_an_own_claim_is_renewed_for_max_hold_then_left_to_lapse_so_others_may_take_it() -> None:
    held_long = claimed().model_copy(deep=True)
    held_long.deliveries["order_completed"].at = AT - domain.MAX_HOLD  # first claimed that long ago, renewed since

    assert step(held_long, START_BY + timedelta(seconds=1)) == "wait"
    assert step(held_long, AT + CLAIM_LEASE) == "claim"  # lapsed: open to every process, this one included


def test_another_process_claim_is_waited_for_while_its_lease_runs_then_taken_over() -> None:
    theirs = claimed(by=OTHER)

    assert step(theirs, AT) == "wait"
    assert step(theirs, AT + CLAIM_LEASE - timedelta(milliseconds=1)) == "wait"
    assert step(theirs, AT + CLAIM_LEASE) == "claim"


def test_an_answer_for_a_claim_taken_over_meanwhile_changes_nothing() -> None:
    taken_over = claimed(by=OTHER)  # another process took the claim after ours ran out

    contact, events = record(taken_over, COMPLETED, SendResult(outcome="sent"))

    assert (contact, events) == (taken_over, [])


def test_an_answer_recorded_twice_is_recorded_once() -> None:
    sent, _ = record(claimed(), COMPLETED, SendResult(outcome="sent"))

    contact, events = record(sent, COMPLETED, SendResult(outcome="sent"))

    assert (contact, events) == (sent, [])


def test_every_cancellation_reason_of_the_contract_has_its_wording_for_the_customer() -> None:
    assert set(typing.get_args(CancellationReason)) == set(domain.CANCEL_REASONS)


def test_an_unknown_cancellation_reason_is_refused_by_the_contract() -> None:
    with pytest.raises(ValidationError):
        OrderCancelled.model_validate(
            {**order_cancelled("timeout").model_dump(mode="json"), "reason": "warehouse_flooded"}
        )
