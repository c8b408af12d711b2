"""The backup archive's rules without a server: read order, manifest checks, damage detection, erasures to redo."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tools.ops.backup import FORMAT, MANIFEST, Archive, BackupError, forgotten_since, offsets_summary, read_order


def write_archive(path: Path, manifest: dict[str, Any] | None, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        files = ({MANIFEST: json.dumps(manifest).encode()} if manifest is not None else {}) | members
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def manifest_for(member: str, data: bytes) -> dict[str, Any]:
    import hashlib

    entry = {"documents": 1, "member": member, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return {
        "format": FORMAT,
        "created_at": "2026-11-26T00:00:00+00:00",
        "databases": {"fulfil_order": {"orders": {**entry, "indexes": []}}},
        "offsets": {"order": {"storefront.orders": {"0": 5, "1": None}}},
    }


def test_a_service_s_own_documents_are_read_before_what_its_steps_write_after_them_and_timers_last() -> None:
    names = ["timers", "gateway_ledger", "payments_versions", "payments", "sandbox_faults"]

    assert read_order(names) == ["payments", "payments_versions", "sandbox_faults", "gateway_ledger", "timers"]
    assert read_order(["carrier_bookings", "shipments", "shipments_versions"])[-1] == "carrier_bookings"


def test_a_missing_file_a_non_archive_and_an_archive_without_manifest_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no such file"):
        Archive.open(tmp_path / "nothing.tar.gz")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a gzip file")
    with pytest.raises(BackupError, match=r"not a readable \.tar\.gz"):
        Archive.open(junk)
    with pytest.raises(BackupError, match=r"no manifest\.json in it"):
        Archive.open(write_archive(tmp_path / "bare.tar.gz", None, {"x.bson": b""}))


def test_an_archive_of_another_format_is_refused(tmp_path: Path) -> None:
    manifest = manifest_for("fulfil_order/orders.bson", b"") | {"format": "fulfil-backup/99"}

    with pytest.raises(BackupError, match=r"format 'fulfil-backup/99', this tool reads 'fulfil-backup/1'"):
        Archive.open(write_archive(tmp_path / "future.tar.gz", manifest, {}))


def test_a_damaged_member_and_a_missing_member_are_found_before_anything_is_changed(tmp_path: Path) -> None:
    member, data = "fulfil_order/orders.bson", b"\x05\x00\x00\x00\x00"
    good = Archive.open(write_archive(tmp_path / "good.tar.gz", manifest_for(member, data), {member: data}))
    damaged = Archive.open(write_archive(tmp_path / "bad.tar.gz", manifest_for(member, data), {member: b"\x00" * 5}))
    missing = Archive.open(write_archive(tmp_path / "gone.tar.gz", manifest_for(member, data), {}))

    assert good.verify() == len(data)
    with pytest.raises(BackupError, match=r"fulfil_order/orders\.bson is damaged"):
        damaged.verify()
    with pytest.raises(BackupError, match=r"missing: fulfil_order/orders\.bson"):
        missing.verify()
    assert good.offsets == {"order": {"storefront.orders": {0: 5, 1: None}}}


def test_offsets_summary_counts_partitions_never_consumed_and_the_lag_at_backup_time() -> None:
    offsets: dict[str, dict[str, dict[int, int | None]]] = {"order": {"t": {0: 5, 1: None}}}

    assert offsets_summary(offsets, {"t": {0: 7, 1: 3}}) == {"order": {"partitions": 2, "without_offset": 1, "lag": 5}}


def test_customers_erased_after_the_backup_are_listed_for_erasing_again(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    entries = [
        {"at": "2026-11-25T23:00:00+00:00", "action": "forget", "customer_id": "c-before"},
        {"at": "2026-11-26T01:00:00+00:00", "action": "forget", "customer_id": "c-after"},
        {"at": "2026-11-26T01:05:00+00:00", "action": "dlq show --unmask", "record": "x"},
    ]
    log.write_text("\n".join(json.dumps(e) for e in entries) + "\nnot json\n")

    assert forgotten_since(log, datetime(2026, 11, 26, tzinfo=UTC)) == ["c-after"]
    assert forgotten_since(tmp_path / "none.log", datetime(2026, 11, 26, tzinfo=UTC)) == []
