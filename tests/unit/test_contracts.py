"""The storefront contract as every consumer decodes it, and what a log line may show of a customer."""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from shared import topics
from shared.events import UndecodableMessage, decode
from shared.events.storefront import OrderPlaced
from shared.logging import mask_personal_data
from tests.unit.factories import ORDER_ID, order_placed_data, to_json

CARD_NUMBER = "4111111111111111"


def undecodable(data: dict[str, Any]) -> UndecodableMessage:
    with pytest.raises(UndecodableMessage) as caught:
        decode(topics.STOREFRONT_ORDERS, to_json(data))
    return caught.value


def with_line(**changes: Any) -> dict[str, Any]:
    line = {"sku": "SKU-RED-MUG", "quantity": 2, "unit_price": "39.90", **changes}
    return order_placed_data(lines=[line])


def failing_fields(error: UndecodableMessage) -> list[list[str | int]]:
    return [e["loc"] for e in error.errors]


def test_sample_order_placed_decodes_with_decimal_prices_and_the_full_order() -> None:
    event = decode(topics.STOREFRONT_ORDERS, to_json(order_placed_data()))

    assert isinstance(event, OrderPlaced)
    assert event.order_id == ORDER_ID
    assert event.lines[0].unit_price == Decimal("39.90")
    assert event.lines[0].quantity == 2
    assert event.customer.email == "xm@example.com"
    assert event.shipping.option == "next_day"
    assert event.shipping.address.city == "北京"


def test_scheduled_option_with_a_date_decodes() -> None:
    shipping = order_placed_data()["shipping"] | {"option": "scheduled", "scheduled_date": "2026-12-03"}

    event = decode(topics.STOREFRONT_ORDERS, to_json(order_placed_data(shipping=shipping)))

    assert isinstance(event, OrderPlaced)
    assert event.shipping.scheduled_date == date(2026, 12, 3)


def test_unit_price_as_a_json_number_is_rejected() -> None:
    error = undecodable(with_line(unit_price=39.9))

    assert error.kind == "SchemaViolation"
    assert error.order_id == ORDER_ID
    assert failing_fields(error) == [["lines", 0, "unit_price"]]


def test_unit_price_with_three_decimal_places_is_rejected() -> None:
    error = undecodable(with_line(unit_price="39.901"))

    assert failing_fields(error) == [["lines", 0, "unit_price"]]


@pytest.mark.parametrize("quantity", [0, 1001])
def test_quantity_outside_1_to_1000_is_rejected(quantity: int) -> None:
    error = undecodable(with_line(quantity=quantity))

    assert failing_fields(error) == [["lines", 0, "quantity"]]


@pytest.mark.parametrize("quantity", [1, 1000])
def test_quantity_at_the_bounds_is_accepted(quantity: int) -> None:
    event = decode(topics.STOREFRONT_ORDERS, to_json(with_line(quantity=quantity)))

    assert isinstance(event, OrderPlaced)
    assert event.lines[0].quantity == quantity


def test_order_without_lines_is_rejected() -> None:
    error = undecodable(order_placed_data(lines=[]))

    assert failing_fields(error) == [["lines"]]


def test_lowercase_currency_is_rejected() -> None:
    error = undecodable(order_placed_data(currency="cny"))

    assert failing_fields(error) == [["currency"]]


def test_scheduled_option_without_a_scheduled_date_is_rejected() -> None:
    shipping = order_placed_data()["shipping"] | {"option": "scheduled", "scheduled_date": None}

    error = undecodable(order_placed_data(shipping=shipping))

    assert failing_fields(error) == [["shipping"]]
    assert "scheduled_date" in str(error)


def test_card_number_as_payment_token_is_rejected_without_echoing_the_number() -> None:
    error = undecodable(order_placed_data(payment={"method": "card", "token": CARD_NUMBER}))

    assert error.kind == "SchemaViolation"
    assert failing_fields(error) == [["payment"]]
    assert CARD_NUMBER not in str(error)
    assert CARD_NUMBER not in repr(error.errors)


def test_card_number_with_spaces_as_payment_token_is_rejected() -> None:
    error = undecodable(order_placed_data(payment={"method": "card", "token": "4111 1111 1111 1111"}))

    assert failing_fields(error) == [["payment"]]


def test_non_json_bytes_are_undecodable_as_invalid_json() -> None:
    with pytest.raises(UndecodableMessage) as caught:
        decode(topics.STOREFRONT_ORDERS, b"not json {")

    assert caught.value.kind == "InvalidJson"


def test_json_that_is_not_an_object_is_undecodable_as_invalid_json() -> None:
    with pytest.raises(UndecodableMessage) as caught:
        decode(topics.STOREFRONT_ORDERS, b"[1, 2]")

    assert caught.value.kind == "InvalidJson"


def test_unknown_event_type_is_undecodable_and_keeps_the_order_id() -> None:
    error = undecodable(order_placed_data(event_type="OrderTeleported"))

    assert error.kind == "UnknownEventType"
    assert error.order_id == ORDER_ID
    assert "OrderTeleported" in str(error)


def test_event_of_another_topic_is_an_unknown_event_type_here() -> None:
    with pytest.raises(UndecodableMessage) as caught:
        decode(topics.PAYMENT_EVENTS, to_json(order_placed_data()))

    assert caught.value.kind == "UnknownEventType"


# --- mask_personal_data --------------------------------------------------------------------------------------


def masked(**fields: Any) -> MutableMapping[str, Any]:
    return mask_personal_data(None, "info", dict(fields))


def test_email_is_masked_to_first_letter_and_domain() -> None:
    assert masked(email="xm@example.com")["email"] == "x***@example.com"


def test_email_inside_free_text_is_masked() -> None:
    assert masked(event="mail to xm@example.com bounced")["event"] == "mail to x***@example.com bounced"


def test_phone_keeps_only_its_last_four_digits() -> None:
    assert masked(phone="+86 138-0000-1234")["phone"] == "***1234"


@pytest.mark.parametrize("key", ["name", "recipient", "line1"])
def test_names_and_address_lines_keep_only_their_first_character(key: str) -> None:
    value = masked(**{key: "王小明 中关村大街1号"})[key]

    assert value == "王***"


def test_card_number_in_free_text_is_removed() -> None:
    text = masked(event=f"charge failed for card {CARD_NUMBER} today")["event"]

    assert CARD_NUMBER not in text
    assert "[card number removed]" in text


def test_card_number_with_spaces_in_free_text_is_removed() -> None:
    text = masked(event="card 4111 1111 1111 1111 declined")["event"]

    assert "4111 1111 1111 1111" not in text
    assert "[card number removed]" in text


def test_payment_token_is_redacted_entirely() -> None:
    assert masked(token="tok_visa_ok")["token"] == "[redacted]"


def test_nested_customer_data_is_masked_and_harmless_values_are_kept() -> None:
    out = masked(customer={"name": "王小明", "email": "xm@example.com", "phone": "+8613800000000"}, quantity=2)

    assert out["customer"] == {"name": "王***", "email": "x***@example.com", "phone": "***0000"}
    assert out["quantity"] == 2


def test_order_id_and_plain_text_are_left_readable() -> None:
    out = masked(order_id=ORDER_ID, event="order accepted")

    assert out == {"order_id": ORDER_ID, "event": "order accepted"}
