"""The bench's order ids never look like a card number (the order service would refuse every order of the run)."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.events.storefront import contains_card_number
from tools.drills.bench.plan import new_run_id

AT = datetime(2026, 12, 5, 16, 34, 58, tzinfo=UTC)


def test_a_run_whose_random_part_is_all_digits_still_gives_order_ids_the_order_service_takes() -> None:
    # The run that failed: 1205163458 then 2703, 14 digits in a row, Luhn-valid.
    assert contains_card_number("BENCH-12051634582703-0000001")

    run = new_run_id(AT, "2703")

    assert run == "1205T1634582703"
    assert not any(contains_card_number(f"BENCH-{run}-{n:07d}") for n in range(1, 2000))


def test_no_all_digit_suffix_makes_a_card_number() -> None:
    runs = [new_run_id(AT, f"{n:04d}") for n in range(10_000)]
    assert not [r for r in runs if contains_card_number(f"BENCH-{r}-0000001")]
    assert len(new_run_id()) == len("1205T163458") + 4
