"""Redrive and purge of dead letters leave one audit trail, whether an operator used ``fulfil dlq`` or the console.

Kafka is replaced by fakes of the ``tools.ops.topic_log`` functions that read and write it; the audit log is a
file per test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from shared import topics
from tools.console.app import create_app
from tools.console.settings import ConsoleSettings
from tools.console.state import Console
from tools.fulfil import cli
from tools.ops import audit, topic_log

KEY = "unit-test-operator-key-0123"
OPERATOR = "alice"
DLQ = topics.dlq(topics.PAYMENT_EVENTS)


def letter(offset: int, order_id: str) -> topic_log.DeadLetter:
    headers = {"x-dlq-original-topic": topics.PAYMENT_EVENTS, "x-dlq-error-class": "InvalidJson"}
    return topic_log.DeadLetter(topic_log.Rec(DLQ, 0, offset, 1_764_057_600_000, order_id, b"{}", headers))


@dataclass
class FakeKafka:
    """What ``topic_log`` would read from and write to Kafka: two dead letters, and a record of every change."""

    letters: list[topic_log.DeadLetter] = field(default_factory=lambda: [letter(5, "A-1"), letter(6, "A-2")])
    republished: list[tuple[str, topic_log.Rec, str]] = field(default_factory=list)
    deleted: list[dict[TopicPartition, int]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # what purge_plan says must stay

    async def dead_letters(
        self, kafka: topic_log.Kafka, *, ids: set[str] | None = None, **_: Any
    ) -> list[topic_log.DeadLetter]:
        return [d for d in self.letters if ids is None or d.id in ids]

    async def republish(self, kafka: topic_log.Kafka, items: list[tuple[str, topic_log.Rec, str]]) -> int:
        self.republished.extend(items)
        return len(items)

    async def purge_plan(
        self, kafka: topic_log.Kafka, selected: list[topic_log.DeadLetter]
    ) -> tuple[dict[TopicPartition, int], list[str]]:
        gone = [d.rec.offset for d in selected if d.id not in self.kept]
        return ({TopicPartition(DLQ, 0): max(gone) + 1} if gone else {}), [d.id for d in selected if d.id in self.kept]

    async def delete_before(self, kafka: topic_log.Kafka, plan: dict[TopicPartition, int]) -> None:
        self.deleted.append(plan)


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> FakeKafka:
    fake = FakeKafka()
    for name in ("dead_letters", "republish", "purge_plan", "delete_before"):
        monkeypatch.setattr(topic_log, name, getattr(fake, name))
    return fake


@pytest.fixture
def audit_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "audit.log"
    monkeypatch.setattr(audit, "AUDIT_LOG", path)
    monkeypatch.setenv("FULFIL_OPERATOR", OPERATOR)
    return path


@pytest.fixture
def console_client(audit_log: Path) -> Iterator[TestClient]:
    console = Console(ConsoleSettings(api_keys=SecretStr(KEY), audit_log=audit_log))
    with TestClient(create_app(console.settings, console=console, tail=False)) as client:
        client.headers["X-API-Key"] = KEY
        yield client


def entries(audit_log: Path) -> list[dict[str, Any]]:
    if not audit_log.exists():
        return []
    return [json.loads(line) for line in audit_log.read_text(encoding="utf-8").splitlines()]


def fulfil(*args: str, answer: str | None = None) -> str:
    result = CliRunner().invoke(cli.app, list(args), input=answer)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_redrive_writes_who_redrove_which_records_to_the_audit_log(kafka: FakeKafka, audit_log: Path) -> None:
    first = kafka.letters[0]

    output = fulfil("dlq", "redrive", first.id, "--yes")

    assert "redriven: 1" in output
    assert [(to, rec.id) for to, rec, _ in kafka.republished] == [(topics.PAYMENT_EVENTS, first.id)]
    [entry] = entries(audit_log)
    assert (entry["action"], entry["user"], entry["via"], entry["records"]) == (
        "dlq redrive",
        OPERATOR,
        "cli",
        [first.id],
    )


def test_cli_purge_audits_what_was_deleted_and_what_had_to_stay(kafka: FakeKafka, audit_log: Path) -> None:
    first, second = kafka.letters
    kafka.kept = [second.id]

    output = fulfil("dlq", "purge", first.id, second.id, "--yes")

    assert "purged: 1" in output
    assert kafka.deleted == [{TopicPartition(DLQ, 0): first.rec.offset + 1}]
    [entry] = entries(audit_log)
    assert (entry["action"], entry["user"], entry["via"]) == ("dlq purge", OPERATOR, "cli")
    assert (entry["records"], entry["kept"]) == ([first.id], [second.id])


def test_a_dry_run_or_a_declined_question_changes_and_audits_nothing(kafka: FakeKafka, audit_log: Path) -> None:
    ids = [d.id for d in kafka.letters]

    fulfil("dlq", "redrive", *ids, "--dry-run")
    fulfil("dlq", "purge", *ids, "--dry-run")
    declined = CliRunner().invoke(cli.app, ["dlq", "redrive", *ids], input="n\n")

    assert declined.exit_code == 1
    assert (kafka.republished, kafka.deleted) == ([], [])
    assert entries(audit_log) == []


@pytest.mark.parametrize("action", ["redrive", "purge"])
def test_the_console_and_the_cli_write_the_same_audit_line(
    action: str, kafka: FakeKafka, audit_log: Path, console_client: TestClient
) -> None:
    ids = [d.id for d in kafka.letters]

    r = console_client.post(f"/dead-letters/{action}", data={"ids": ids, "confirm": "yes"}, follow_redirects=False)
    assert r.status_code == 303
    fulfil("dlq", action, *ids, "--yes")

    by_console, by_cli = entries(audit_log)
    assert by_console.pop("via") == "console"
    assert by_console.pop("key_id")
    assert by_cli.pop("via") == "cli"
    for entry in (by_console, by_cli):
        entry.pop("at")
    assert by_console == by_cli  # action, user, host, records (and what was kept) alike
