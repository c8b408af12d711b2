"""``fulfil dlq``: dead-lettered records listed, shown, redriven and purged, every change audited."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import typer
from rich.table import Table

from tools.fulfil.term import Bootstrap, DryRun, Json, OrderOpt, Yes, console, err, fail, run, show, when
from tools.ops import audit

app = typer.Typer(name="dlq", help="Dead-letter topics: list, show, redrive, purge.", no_args_is_help=True)


Since = Annotated[str | None, typer.Option("--since", help="ISO time or age (10m, 2h, 7d)")]
TopicOpt = Annotated[str | None, typer.Option("--topic", help="original topic (or its .dlq)")]
ErrorOpt = Annotated[str | None, typer.Option("--error", help="only this error class, e.g. InvalidJson")]


def _select_dead_letters(
    bootstrap: str | None,
    ids: list[str] | None,
    topic: str | None,
    since: str | None,
    order_id: str | None,
    error: str | None,
) -> list[Any]:
    # imported here: aiokafka, faststream and pymongo cost ~2 s of CPU at start-up of every fulfil command
    from tools.ops import topic_log

    with console.status("reading dead-letter topics ..."):
        return list(
            run(
                topic_log.dead_letters(
                    bootstrap,
                    topic=topic,
                    since=when(since),
                    order_id=order_id,
                    error=error,
                    ids=set(ids or []) or None,
                )
            )
        )


def _required_selection(
    verb: str,
    bootstrap: str | None,
    ids: list[str] | None,
    topic: str | None,
    since: str | None,
    order_id: str | None,
    error: str | None,
) -> list[Any]:
    """The dead letters a changing command acts on: an explicit selection is required, and must match something."""
    if not (ids or topic or since or order_id or error):
        fail(f"select what to {verb}: record ids, or --topic/--since/--order-id/--error")
    records = _select_dead_letters(bootstrap, ids, topic, since, order_id, error)
    if not records:
        fail("no dead-lettered record matches")
    return records


@app.command("list")
def dlq_list(
    bootstrap: Bootstrap = None,
    topic: TopicOpt = None,
    since: Since = None,
    order_id: OrderOpt = None,
    error: ErrorOpt = None,
    as_json: Json = False,
) -> None:
    """List dead-lettered records: where they came from and why."""
    # imported here: pydantic and the event contracts cost ~0.4 s of CPU at start-up of every fulfil command
    from shared.events.storefront import redact_card_numbers

    records = _select_dead_letters(bootstrap, None, topic, since, order_id, error)
    if as_json:
        summaries = [r.summary() for r in records]
        console.print_json(
            data=[s | {"order_id": redact_card_numbers(s["order_id"]) if s["order_id"] else None} for s in summaries]
        )
        return
    table = Table(title=f"{len(records)} dead-lettered record(s)")
    for col in ("id", "at", "order", "event", "service", "error", "attempts", "reason"):
        table.add_column(col, overflow="fold")
    for r in records:
        sm = r.summary()
        table.add_row(
            sm["id"],
            sm["dead_lettered_at"][:19],
            redact_card_numbers(sm["order_id"] or "-"),
            sm["event_type"] or "-",
            sm["service"],
            sm["error_class"],
            sm["attempts"],
            sm["error_message"][:80],
        )
    show(table)


@app.command("show")
def dlq_show(
    record_id: Annotated[str, typer.Argument(help="TOPIC.dlq:PARTITION:OFFSET as `dlq list` shows it")],
    bootstrap: Bootstrap = None,
    unmask: Annotated[
        bool, typer.Option("--unmask", help="show personal data unmasked (written to the audit log: who, when)")
    ] = False,
    as_json: Json = False,
) -> None:
    """Show one dead-lettered record in full: headers, value and failure details, personal data masked."""
    # imported here: aiokafka, faststream and pymongo cost ~2 s of CPU at start-up of every fulfil command
    from tools.ops import topic_log

    topic = record_id.split(":", 1)[0]
    found = _select_dead_letters(bootstrap, [record_id], topic, None, None, None)
    if not found:
        fail(f"no dead-lettered record {record_id}")
    full = found[0].full()
    if unmask:
        entry = audit.write("dlq show --unmask", audit.AUDIT_LOG, record=record_id)
        err.print(f"[yellow]unmasked[/yellow] view of {record_id} logged for {entry['user']} at {entry['at']}")
    else:
        full = topic_log.masked_dead_letter(full)
    if as_json:
        console.print_json(data=full)
        return
    for key, value in full.items():
        if key not in ("headers", "value"):
            console.print(f"[bold]{key:20}[/bold] {value}")
    console.print("[bold]headers[/bold]")
    for k, v in full["headers"].items():
        console.print(f"  {k}: {v}")
    console.print("[bold]value[/bold]" + ("" if unmask else " (personal data masked; --unmask to see it)"))
    console.print(full["value"], markup=False, highlight=False)


RecordIds = Annotated[list[str] | None, typer.Argument(help="record ids; or select with the options")]


def _change_dead_letters(question: str, yes: bool, change: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Ask unless --yes, then redrive or purge through ``ops``, which writes the audit line the console's do.

    The line names the operator as ``dlq show --unmask`` and ``forget`` do: FULFIL_OPERATOR, else the OS user.
    """
    if not yes and not typer.confirm(question):
        fail("aborted")
    return int(run(change()))


@app.command("redrive")
def dlq_redrive(
    ids: RecordIds = None,
    bootstrap: Bootstrap = None,
    topic: TopicOpt = None,
    since: Since = None,
    order_id: OrderOpt = None,
    error: ErrorOpt = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Re-publish selected dead letters to their original topic (original key and headers, plus a replay
    marker). Safe to repeat: consumers deduplicate on event_id."""
    # imported here: aiokafka, faststream and pymongo cost ~2 s of CPU at start-up of every fulfil command
    from tools.ops import topic_log

    records = _required_selection("redrive", bootstrap, ids, topic, since, order_id, error)
    if as_json:
        console.print_json(
            data={
                "dry_run": dry_run,
                "redrive": [{"id": r.id, "to": r.original_topic, "order_id": r.rec.key} for r in records],
            }
        )
    else:
        for r in records:
            console.print(f"{'(dry run) ' if dry_run else ''}{r.id} -> {r.original_topic} (order {r.rec.key})")
    if dry_run:
        return
    sent = _change_dead_letters(
        f"Redrive {len(records)} record(s)?",
        yes,
        lambda: topic_log.redrive(bootstrap, records, audit_log=audit.AUDIT_LOG, via="cli"),
    )
    if not as_json:
        console.print(f"redriven: {sent}")


@app.command("purge")
def dlq_purge(
    ids: RecordIds = None,
    bootstrap: Bootstrap = None,
    topic: TopicOpt = None,
    since: Since = None,
    order_id: OrderOpt = None,
    error: ErrorOpt = None,
    dry_run: DryRun = False,
    yes: Yes = False,
) -> None:
    """Delete selected dead letters for good, after confirmation. Kafka deletes only the head of a partition,
    so a selected record behind an unselected one is kept and reported."""
    # imported here: aiokafka, faststream and pymongo cost ~2 s of CPU at start-up of every fulfil command
    from tools.ops import topic_log

    records = _required_selection("purge", bootstrap, ids, topic, since, order_id, error)
    plan, kept = run(topic_log.purge_plan(bootstrap, records))
    removable = sum(1 for r in records if r.id not in kept)
    for tp, before in plan.items():
        console.print(f"{'(dry run) ' if dry_run else ''}{tp.topic}:{tp.partition}: delete offsets < {before}")
    for rid in kept:
        console.print(f"[yellow]kept[/yellow] {rid}: an unselected record precedes it in its partition")
    if dry_run or not plan:
        console.print(f"{removable} record(s) would be purged" if dry_run else "nothing can be purged")
        return
    purged = _change_dead_letters(
        f"Permanently delete {removable} dead-lettered record(s)?",
        yes,
        lambda: topic_log.purge(bootstrap, records, plan, kept, audit_log=audit.AUDIT_LOG, via="cli"),
    )
    console.print(f"purged: {purged}")
