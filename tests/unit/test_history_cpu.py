"""The pure parts of ``fulfil history`` (copying an order's documents under a new id) and of the CPU accounting the
bench and history print."""

from __future__ import annotations

from datetime import UTC, datetime

from tools.drills import cpu, history


def test_a_copied_document_names_the_new_order_everywhere_and_keeps_the_rest() -> None:
    at = datetime(2026, 11, 26, tzinfo=UTC)
    doc = {
        "_id": "BENCH-1-0000007@000000000002",
        "key": "BENCH-1-0000007",
        "v": 2,
        "state": {"order_id": "BENCH-1-0000007", "lines": [{"sku": "BENCH-0001", "quantity": 3}]},
        "outbox": [{"key": "BENCH-1-0000007", "event_type": "OrderAccepted"}],
        "updated_at": at,
    }

    copy = history._renamed(doc, "BENCH-1-0000007", "HIST-x-0000001")

    assert copy["_id"] == "HIST-x-0000001@000000000002"
    assert copy["key"] == copy["state"]["order_id"] == copy["outbox"][0]["key"] == "HIST-x-0000001"
    assert copy["state"]["lines"] == [{"sku": "BENCH-0001", "quantity": 3}]
    assert copy["v"] == 2
    assert copy["updated_at"] is at
    assert doc["_id"] == "BENCH-1-0000007@000000000002"  # the template is left as it was


def test_the_order_of_a_document_is_read_from_every_id_shape() -> None:
    assert history._order_of("SHOP1-9") == "SHOP1-9"  # a head or a booking
    assert history._order_of("SHOP1-9@000000000004") == "SHOP1-9"  # a version
    assert history._order_of("SHOP1-9:capture") == "SHOP1-9"  # a ledger line


def test_replicas_count_with_their_service_and_infrastructure_keeps_its_name() -> None:
    assert cpu.component("order-2") == "order"
    assert cpu.component("notify") == "notify"
    assert cpu.component("smtp-sink") == "smtp-sink"
    assert cpu.component("ferretdb") == "ferretdb"


def test_usage_is_percent_of_a_core_over_the_wall_time_and_skips_restarted_processes() -> None:
    before = cpu.Snapshot(at=100.0, seconds={("order", 1): 10.0, ("order-2", 2): 5.0, ("kafka", 3): 1.0})
    after = cpu.Snapshot(
        at=110.0, seconds={("order", 1): 14.0, ("order-2", 2): 6.0, ("kafka", 3): 3.5, ("payment", 9): 50.0}
    )

    used = cpu.usage(before, after)

    assert used == {"order": 50.0, "kafka": 25.0}  # 4 s + 1 s of 10 s; payment started in between: not counted
    assert cpu.per_order_ms(used, orders_per_s=25) == {"order": 20.0, "kafka": 10.0}
    assert cpu.per_order_ms(used, orders_per_s=0) == {}
