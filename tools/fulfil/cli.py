"""``fulfil``: the project's command-line tool for operators (topics, stock, traces, dead letters, replay).

Every command has ``--help``; failures exit non-zero with a one-line reason.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from aiokafka.errors import KafkaConnectionError
from rich.console import Console

from shared import topics as topic_names
from shared.kafka import unreachable
from tools.fulfil.reconcile import reconcile_cmd
from tools.fulfil.settings import tool_settings

app = typer.Typer(help="Operate the fulfilment platform.", no_args_is_help=True, pretty_exceptions_enable=False)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
stock_app = typer.Typer(help="Inventory stock.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter topics: list, show, redrive, purge.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(stock_app, name="stock")
app.add_typer(dlq_app, name="dlq")
app.command("reconcile")(reconcile_cmd)
console = Console()
err = Console(stderr=True)

REPO = Path(__file__).resolve().parents[2]
AUDIT_LOG = Path(os.environ.get("FULFIL_AUDIT_LOG") or REPO / ".local" / "logs" / "audit.log")
# Connections come from one settings class (tools.fulfil.settings: the services' variables, KAFKA_SECURITY_PROTOCOL,
# KAFKA_SASL_*, KAFKA_SSL_CAFILE, MONGODB_URL, ORDER_URL...); an option given on the command line overrides it.
Bootstrap = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)"),
]
OrderUrl = Annotated[str | None, typer.Option("--order-url", help="order API (default: ORDER_URL)")]
InventoryUrl = Annotated[str | None, typer.Option("--inventory-url", help="inventory API (default: INVENTORY_URL)")]
JaegerUrl = Annotated[str | None, typer.Option("--jaeger-url", help="Jaeger query API (default: JAEGER_QUERY_URL)")]


def api_headers() -> dict[str, str]:
    """The API key for the services' HTTP APIs, from FULFIL_API_KEY (none on the local stack)."""
    key = tool_settings().fulfil_api_key
    return {"X-API-Key": key.get_secret_value()} if key else {}


def fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def topic_plan(path: Path, *, cluster: bool = False) -> list[dict[str, Any]]:
    """The topics the file declares, DLQs included, each with partitions, replication factor and config; with
    ``cluster``, the file's ``cluster`` section (replication and its guarantees) over its defaults."""
    spec = yaml.safe_load(path.read_text())
    defaults = spec.get("defaults", {})
    if cluster:
        override = spec.get("cluster") or {}
        if not override:
            raise ValueError(f"{path} has no cluster section")
        defaults = {
            **defaults,
            **{k: v for k, v in override.items() if k != "config"},
            "config": {**defaults.get("config", {}), **override.get("config", {})},
        }
    dlq = spec.get("dead_letter", {})
    plan = []
    for t in spec["topics"]:
        base = {
            "name": t["name"],
            "partitions": int(t.get("partitions", defaults.get("partitions", 3))),
            "replication_factor": int(t.get("replication_factor", defaults.get("replication_factor", 1))),
            "config": {**defaults.get("config", {}), **t.get("config", {})},
        }
        plan.append(base)
        plan.append(
            {
                **base,
                "name": base["name"] + dlq.get("suffix", topic_names.DLQ_SUFFIX),
                "config": {**base["config"], **dlq.get("config", {})},
            }
        )
    return plan


@topics_app.command("apply")
def topics_apply(
    bootstrap: Bootstrap = None,
    file: Annotated[Path, typer.Option(help="declarative topic file")] = REPO / "deploy" / "topics.yaml",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print what would change, change nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster/--no-cluster", help="a cluster of three brokers: the file's cluster section (RF 3, min ISR 2)"
        ),
    ] = False,
) -> None:
    """Create or update every topic (DLQs included) from the declarative file: only the settings it names are
    changed, the others are kept, and durability (min.insync.replicas, retention, replication) is never lowered."""
    from tools.fulfil import ops

    try:
        plan = topic_plan(file, cluster=cluster)
    except ValueError as e:
        fail(str(e))
        return
    try:
        changes = asyncio.run(ops.plan_topics(bootstrap, plan))
    except Exception as e:
        fail(f"could not read topics on {bootstrap}: {type(e).__name__}: {e}")
        return
    for line in changes.lines():
        console.print(("[dim](dry run)[/dim] " if dry_run else "") + line, markup=not line.startswith("configure"))
    for note in changes.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"{len(plan)} topics declared; {'nothing to change' if changes.empty else 'changes above'}")
    if dry_run or changes.empty:
        return
    confirm(yes, f"Apply these {len(changes.lines())} change(s) on {bootstrap}?")
    try:
        asyncio.run(ops.apply_topics(bootstrap, changes))
    except Exception as e:
        fail(f"could not apply topics on {bootstrap}: {type(e).__name__}: {e}")


def confirm(yes: bool, question: str) -> None:
    """Ask before changing a live system, unless --yes; without a terminal to ask, refuse rather than guess."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question} -- no terminal to ask: pass --yes to go ahead")
    if not typer.confirm(question):
        fail("aborted")


@stock_app.command("seed")
def stock_seed(
    inventory_url: InventoryUrl = None,
    file: Annotated[Path, typer.Option(help="catalogue file")] = REPO / "deploy" / "catalogue.yaml",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would change, change nothing")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """(Re-)seed the documented catalogue through the inventory API, as an ERP sync would: each SKU's units on hand
    (units held by open orders included, so re-seeding never adds what they hold). Shows the change and asks."""
    inventory_url = inventory_url or tool_settings().inventory_url
    catalogue = yaml.safe_load(file.read_text())
    headers = api_headers()
    try:
        with httpx.Client(base_url=inventory_url, timeout=10, headers=headers) as http:
            changes = []
            for sku, wanted in catalogue.items():
                r = http.get(f"/stock/{sku}")
                if r.status_code not in (200, 404):
                    r.raise_for_status()
                now_on_hand = int(r.json()["available"]) + int(r.json()["reserved"]) if r.status_code == 200 else None
                if now_on_hand != int(wanted):
                    changes.append((sku, now_on_hand, int(wanted)))
                    was = "new" if now_on_hand is None else f"{now_on_hand} on hand"
                    console.print(f"{'(dry run) ' if dry_run else ''}{sku:16} {was} -> {int(wanted)} on hand")
            if not changes:
                console.print(f"the stock at {inventory_url} already matches {file.name}")
                return
            if dry_run:
                return
            confirm(yes, f"Set the stock of {len(changes)} SKU(s) at {inventory_url}?")
            for sku, _, wanted in changes:
                r = http.put(f"/stock/{sku}", json={"on_hand": wanted})
                r.raise_for_status()
                level = r.json()
                console.print(f"{sku:16} available={level['available']:>7} reserved={level['reserved']}")
    except httpx.HTTPError as e:
        fail(f"could not seed stock through {inventory_url}: {e}")


def fetch_trace(jaeger_url: str, trace_id: str) -> dict[str, Any]:
    r = httpx.get(f"{jaeger_url}/api/traces/{trace_id}", timeout=10)
    if r.status_code == 404 or not r.json().get("data"):
        raise LookupError(f"trace {trace_id} not found in Jaeger at {jaeger_url}")
    r.raise_for_status()
    data: dict[str, Any] = r.json()["data"][0]
    return data


def waterfall(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """Spans in start order with service, operation, offset and duration in ms, and whether they failed."""
    procs = {k: v["serviceName"] for k, v in trace["processes"].items()}
    spans = sorted(trace["spans"], key=lambda s: s["startTime"])
    t0 = spans[0]["startTime"] if spans else 0
    rows = []
    for span in spans:
        tags = {t["key"]: t["value"] for t in span.get("tags", [])}
        rows.append(
            {
                "service": procs.get(span["processID"], "?"),
                "operation": span["operationName"],
                "start_ms": (span["startTime"] - t0) / 1000,
                "duration_ms": span["duration"] / 1000,
                "error": bool(tags.get("error")) or tags.get("otel.status_code") == "ERROR",
                "order_id": tags.get("order.id"),
            }
        )
    return rows


@app.command("trace")
def trace_cmd(
    order_id: Annotated[str, typer.Argument(help="the order whose trace to show")],
    order_url: OrderUrl = None,
    jaeger_url: JaegerUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Show an order's trace from Jaeger as a waterfall in the terminal, with the Jaeger UI link."""
    settings = tool_settings()
    order_url, jaeger_url = order_url or settings.order_url, jaeger_url or settings.jaeger_query_url
    from rich.table import Table

    try:
        r = httpx.get(f"{order_url}/orders/{order_id}", timeout=10, headers=api_headers())
        if r.status_code == 404:
            fail(f"unknown order {order_id}")
        r.raise_for_status()
        trace_id = r.json().get("trace_id")
        if not trace_id:
            fail(f"order {order_id} has no trace id (it was not sampled)")
        rows = waterfall(fetch_trace(jaeger_url, trace_id))
    except (httpx.HTTPError, LookupError) as e:
        fail(str(e))
        return
    link = f"{jaeger_url}/trace/{trace_id}"
    if as_json:
        console.print_json(data={"order_id": order_id, "trace_id": trace_id, "link": link, "spans": rows})
        return
    total = max((row["start_ms"] + row["duration_ms"] for row in rows), default=1.0) or 1.0
    table = Table(title=f"order {order_id} — trace {trace_id}")
    for col in ("service", "operation", "start", "duration", ""):
        table.add_column(col, justify="right" if col in ("start", "duration") else "left")
    width = 40
    for row in rows:
        lead = int(row["start_ms"] / total * width)
        bar = " " * lead + "█" * max(1, int(row["duration_ms"] / total * width))
        table.add_row(
            row["service"],
            row["operation"] + (" [red]ERROR[/red]" if row["error"] else ""),
            f"{row['start_ms']:.1f} ms",
            f"{row['duration_ms']:.1f} ms",
            f"[cyan]{bar}[/cyan]",
        )
    console.print(table)
    services = sorted({row["service"] for row in rows})
    console.print(f"{len(rows)} spans across {len(services)} services: {', '.join(services)}")
    console.print(f"Jaeger UI: {link}")


# ------------------------------------------------------------------ incident tooling (dead letters, replay)

Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="show what would change, change nothing")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]
Since = Annotated[str | None, typer.Option("--since", help="ISO time or age (10m, 2h, 7d)")]
OrderOpt = Annotated[str | None, typer.Option("--order-id", help="only this order")]
TopicOpt = Annotated[str | None, typer.Option("--topic", help="original topic (or its .dlq)")]
ErrorOpt = Annotated[str | None, typer.Option("--error", help="only this error class, e.g. InvalidJson")]


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except (ValueError, LookupError) as e:
        fail(str(e))
    except KafkaConnectionError as e:  # a refused login or certificate, or no broker: say where and what to check
        fail(unreachable(tool_settings(), e))
    except Exception as e:  # a broker that does not answer, a refused request: one line, non-zero exit
        fail(f"{type(e).__name__}: {e}")
    return None


def _time(text: str | None) -> Any:
    from tools.fulfil import ops

    if text is None:
        return None
    try:
        return ops.parse_time(text)
    except ValueError as e:
        fail(str(e))
    return None


def _select_dead_letters(
    bootstrap: str | None,
    ids: list[str] | None,
    topic: str | None,
    since: str | None,
    order_id: str | None,
    error: str | None,
) -> list[Any]:
    from tools.fulfil import ops

    with console.status("reading dead-letter topics ..."):
        return list(
            _run(
                ops.dead_letters(
                    bootstrap,
                    topic=topic,
                    since=_time(since),
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


@dlq_app.command("list")
def dlq_list(
    bootstrap: Bootstrap = None,
    topic: TopicOpt = None,
    since: Since = None,
    order_id: OrderOpt = None,
    error: ErrorOpt = None,
    as_json: Json = False,
) -> None:
    """List dead-lettered records: where they came from and why."""
    from rich.table import Table

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
    console.print(table)


@dlq_app.command("show")
def dlq_show(
    record_id: Annotated[str, typer.Argument(help="TOPIC.dlq:PARTITION:OFFSET as `dlq list` shows it")],
    bootstrap: Bootstrap = None,
    unmask: Annotated[
        bool, typer.Option("--unmask", help="show personal data unmasked (written to the audit log: who, when)")
    ] = False,
    as_json: Json = False,
) -> None:
    """Show one dead-lettered record in full: headers, value and failure details, personal data masked."""
    from tools.fulfil import ops

    topic = record_id.split(":", 1)[0]
    found = _select_dead_letters(bootstrap, [record_id], topic, None, None, None)
    if not found:
        fail(f"no dead-lettered record {record_id}")
    full = found[0].full()
    if unmask:
        entry = ops.audit("dlq show --unmask", AUDIT_LOG, record=record_id)
        err.print(f"[yellow]unmasked[/yellow] view of {record_id} logged for {entry['user']} at {entry['at']}")
    else:
        full = ops.masked_dead_letter(full)
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
    return int(_run(change()))


@dlq_app.command("redrive")
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
    from tools.fulfil import ops

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
        lambda: ops.redrive(bootstrap, records, audit_log=AUDIT_LOG, via="cli"),
    )
    if not as_json:
        console.print(f"redriven: {sent}")


@dlq_app.command("purge")
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
    from tools.fulfil import ops

    records = _required_selection("purge", bootstrap, ids, topic, since, order_id, error)
    plan, kept = _run(ops.purge_plan(bootstrap, records))
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
        lambda: ops.purge(bootstrap, records, plan, kept, audit_log=AUDIT_LOG, via="cli"),
    )
    console.print(f"purged: {purged}")


@app.command("replay")
def replay(
    topic: Annotated[str, typer.Argument(help="the topic to replay")],
    from_: Annotated[str, typer.Option("--from", help="ISO time, 'earliest' or an age (10m, 2h)")],
    to: Annotated[str | None, typer.Option("--to", help="end of the range (with --republish)")] = None,
    group: Annotated[str | None, typer.Option("--group", help="consumer group to rewind")] = None,
    republish_: Annotated[bool, typer.Option("--republish", help="re-publish records instead of rewinding")] = False,
    order_id: OrderOpt = None,
    bootstrap: Bootstrap = None,
    dry_run: DryRun = False,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Replay a topic: rewind a consumer group to a time (the group must be stopped), or re-publish a time
    range (optionally one order) while everything runs. Safe: consumers deduplicate on event_id."""
    from rich.progress import Progress

    from tools.fulfil import ops

    since, until = _time(from_), _time(to)
    if republish_:
        picked: list[Any] = []
        skipped = 0

        async def collect() -> None:
            nonlocal skipped
            with Progress(console=err, transient=True) as bar:
                task = bar.add_task(f"reading {topic}", total=None)
                async for rec in ops.scan(
                    bootstrap,
                    [topic],
                    since=since,
                    until=until,
                    key=order_id,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                ):
                    if ops.decodable(topic, rec.value):
                        picked.append(rec)
                    else:
                        skipped += 1  # a poison record stays where it is: it would only be dead-lettered again

        _run(collect())
        summary = {
            "topic": topic,
            "mode": "republish",
            "records": len(picked),
            "skipped_undecodable": skipped,
            "dry_run": dry_run,
        }
        if as_json:
            console.print_json(data=summary)
        else:
            console.print(
                f"{'(dry run) ' if dry_run else ''}re-publish {len(picked)} record(s) of {topic}"
                f"{f' for order {order_id}' if order_id else ''}; {skipped} undecodable skipped"
            )
        if dry_run or not picked:
            return
        if not yes and not typer.confirm(f"Re-publish {len(picked)} record(s) to {topic}?"):
            fail("aborted")
        _run(ops.republish(bootstrap, [(topic, rec, "republish") for rec in picked]))
        return
    if group is None:
        fail("say which consumer group to rewind (--group), or use --republish")
        return
    if to is not None or order_id is not None:
        fail("--to and --order-id need --republish: a rewind re-reads everything from --from onwards")
    moves = _run(ops.plan_rewind(bootstrap, topic=topic, group=group, since=since))
    members = _run(ops.group_members(bootstrap, group))
    rows = [
        {"partition": m.partition, "current": m.current, "target": m.target, "reread": m.records_to_reread}
        for m in moves
    ]
    if as_json:
        console.print_json(
            data={"topic": topic, "group": group, "dry_run": dry_run, "live_members": members, "partitions": rows}
        )
    else:
        for r in rows:
            console.print(
                f"{'(dry run) ' if dry_run else ''}{topic}:{r['partition']} group {group}: "
                f"offset {r['current']} -> {r['target']} ({r['reread']} record(s) to re-read)"
            )
    if dry_run:
        if members and not as_json:
            console.print(
                f"[yellow]note:[/yellow] group {group} has live members ({', '.join(members)}); "
                "stop them before rewinding, or use --republish"
            )
        return
    if members:
        fail(
            f"group {group} has {len(members)} live member(s) ({', '.join(members)}): stop that service first "
            f"(make services-down, or scale it to zero), or replay without stopping with --republish"
        )
    if not yes and not typer.confirm(f"Rewind group {group} on {topic}?"):
        fail("aborted")
    _run(ops.rewind(bootstrap, topic=topic, group=group, moves=moves))
    console.print("rewound; the group re-reads from there when its service starts")


@app.command("order")
def order_timeline(
    order_id: Annotated[str, typer.Argument(help="the order to inspect")],
    bootstrap: Bootstrap = None,
    order_url: OrderUrl = None,
    jaeger_url: JaegerUrl = None,
    as_json: Json = False,
) -> None:
    """The saga's timeline: every event for the order across topics, with causation chain, status and trace."""
    settings = tool_settings(bootstrap)
    order_url, jaeger_url = order_url or settings.order_url, jaeger_url or settings.jaeger_query_url
    from rich.table import Table

    from tools.fulfil import ops

    async def collect() -> list[Any]:
        return [r async for r in ops.scan(settings, topic_names.ALL_TOPICS, key=order_id)]

    with console.status(f"scanning topics for {order_id} ..."):
        records = _run(collect())
    try:
        r = httpx.get(f"{order_url}/orders/{order_id}", timeout=10, headers=api_headers())
        order = r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        order = None
    if not records and order is None:
        fail(f"nothing known about order {order_id}")
    events = ops.timeline(records)
    trace_id = (order or {}).get("trace_id")
    out = {
        "order_id": order_id,
        "status": (order or {}).get("status"),
        "reason": (order or {}).get("reason"),
        "stage": (order or {}).get("stage"),
        "trace_id": trace_id,
        "trace_link": f"{jaeger_url}/trace/{trace_id}" if trace_id else None,
        "events": events,
    }
    if as_json:
        console.print_json(data=out)
        return
    reason = f" ({out['reason']})" if out["reason"] else ""
    table = Table(title=f"order {order_id}: {out['status']}{reason}")
    for col in ("time", "topic", "p:offset", "event", "caused by", "note"):
        table.add_column(col, overflow="fold")
    for e in events:
        cause = e["caused_by"]
        note = "DLQ: " + (e["why"] or "") if e["dead_letter"] else ("replayed" if e["replayed"] else "")
        table.add_row(
            e["at"][11:23], e["topic"], f"{e['partition']}:{e['offset']}", e["event_type"], cause or "-", note
        )
    console.print(table)
    console.print(f"status: {out['status']}  stage: {out['stage']}  reason: {out['reason']}")
    console.print(f"trace: {out['trace_link'] or '(not sampled)'}")


@app.command("stuck")
def stuck(
    older_than: Annotated[str, typer.Option("--older-than", help="age: 90s, 10m, 2h")] = "10m",
    order_url: OrderUrl = None,
    as_json: Json = False,
) -> None:
    """Orders not finished after the given age, with their last step and age."""
    order_url = order_url or tool_settings().order_url
    from rich.table import Table

    from tools.fulfil import ops

    try:
        seconds = (ops.parse_time("0s") - ops.parse_time(older_than)).total_seconds()
        r = httpx.get(
            f"{order_url}/orders",
            params={"older_than_seconds": max(seconds, 0)},
            timeout=10,
            headers=api_headers(),
        )
        r.raise_for_status()
    except (ValueError, httpx.HTTPError) as e:
        fail(str(e))
        return
    orders = r.json()["orders"]
    if as_json:
        console.print_json(data=orders)
        return
    table = Table(title=f"{len(orders)} order(s) not finished after {older_than}")
    for col in ("order", "stage", "last step", "last step at", "age"):
        table.add_column(col)
    for o in orders:
        table.add_row(
            o["order_id"],
            o["stage"] or "-",
            o["last_step"] or "-",
            (o["last_step_at"] or "")[:19],
            f"{o['age_seconds']:.0f}s",
        )
    console.print(table)


@app.command("bench")
def bench(
    orders: Annotated[int | None, typer.Option(min=1, max=1_000_000, help="fixed run: this many orders")] = None,
    rate: Annotated[float | None, typer.Option(min=0.1, max=10_000, help="fixed run: orders per second")] = None,
    duration: Annotated[float | None, typer.Option(min=1, max=3600, help="fixed run: seconds of placing")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="about 10 s at a low rate, no search (CI)")] = False,
    seed: Annotated[int, typer.Option(help="seed of the order mix (same seed, same orders)")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="where the JSON and PNG go [.local/bench]")] = None,
    streams: Annotated[
        int, typer.Option(min=0, max=20_000, help="fixed run twice: without, then with N order streams open")
    ] = 0,
    inventory_url: InventoryUrl = None,
    order_url: OrderUrl = None,
    bootstrap: Bootstrap = None,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Open-loop load on the running system: the highest rate it sustains, latency, and the broker ceiling.

    By default the rate is stepped up until the saga no longer keeps up, the best rate is held for 60 s and the
    latency is measured at half of it; --rate/--duration/--orders make one fixed-rate run instead.
    """
    import time

    from tools.fulfil import bench as benchmark

    settings = tool_settings(bootstrap).model_copy(update={"service_name": "fulfil-bench"})
    common: dict[str, Any] = {
        "seed": seed,
        "out_dir": out or REPO / ".local" / "bench",
        "inventory_url": inventory_url or settings.inventory_url,
        "order_url": order_url or settings.order_url,
        "streams": streams,
    }
    if streams and not (orders or rate or duration or smoke):
        rate, duration = 10.0, 10.0  # streams idle on orders in a 20 s payment review: a short phase each
    if smoke:
        plan = benchmark.Plan.smoke(**common)
    elif orders or rate or duration:
        per_s = rate or (orders / duration if orders and duration else 10.0)
        plan = benchmark.Plan.fixed(rate=per_s, seconds=duration or (orders / per_s if orders else 60.0), **common)
    else:
        plan = benchmark.Plan.search(**common)
    what = (
        f"{plan.rate:g} orders/s for {plan.seconds:g} s"
        if plan.mode != "search"
        else f"up to {max(plan.steps):g} orders/s"
    )
    if not yes and not typer.confirm(
        f"This places {what} on the running system and sets the stock of {plan.catalogue_size + 1} BENCH SKUs. Go on?"
    ):
        fail("aborted")
    screen = err if as_json else console
    with screen.status("bench: starting") as status:
        last = [0.0]

        def progress(line: str) -> None:
            if screen.is_terminal:
                status.update(f"bench: {line}")
            elif time.monotonic() - last[0] >= 5:  # a log, not a terminal: a line every 5 s
                last[0] = time.monotonic()
                screen.print(f"bench: {line}", markup=False, highlight=False)

        result = _run(benchmark.run(plan, settings, progress=progress))
    if result is None:
        return
    if as_json:
        print(benchmark.to_json(result))
        return
    (console if console.is_terminal else Console(width=120)).print(benchmark.summary_table(result))
    console.print(f"result {result['json']}\nchart  {result['chart']}")


# ------------------------------------------------------------------ KPIs


@app.command("kpi")
def kpi_cmd(
    since: Annotated[str, typer.Option("--since", help="ISO time or age (15m, 1h, 7d)")] = "1h",
    until: Annotated[str | None, typer.Option("--until", help="ISO time or age (default: now)")] = None,
    bucket: Annotated[str, typer.Option("--bucket", help="time series per minute, hour or day")] = "hour",
    order_prefix: Annotated[str | None, typer.Option("--order-prefix", help="only orders whose id starts so")] = None,
    bootstrap: Bootstrap = None,
    as_json: Json = False,
) -> None:
    """The shop's KPIs, read from the topics: GMV, orders, AOV, payment success, cancellations by reason, fulfilment
    time p50/p95, per payment method, shipping option and carrier, and a time series (definitions: docs/runbook.md)."""
    from rich.table import Table

    from tools.fulfil import kpi, ops

    if bucket not in kpi.STEP:
        fail(f"--bucket is one of {', '.join(kpi.STEP)}, not {bucket!r}")
    start, end = _time(since), _time(until) or ops.parse_time("0s")
    if start >= end:
        fail(f"--since {since} is not before --until {until or 'now'}")
    settings = tool_settings(bootstrap)
    with console.status("reading the topics ..."):
        book: kpi.KpiBook = _run(kpi.read_kpis(settings, start, until=end, order_prefix=order_prefix))
    try:
        report = book.report(since=start, until=end, bucket=bucket)  # type: ignore[arg-type]  # checked above
    except ValueError as e:
        fail(str(e))
        return
    if as_json:
        print(report.model_dump_json(indent=2))
        return

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1%}"

    def secs(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f} s"

    def money(x: Any) -> str:
        return "-" if x is None else f"¥{x:,.2f}"

    def reasons(counts: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"

    out = console if console.is_terminal else Console(width=130)  # a log or a pipe: wide enough for the splits
    scope = f" (orders {order_prefix}*)" if order_prefix else ""
    summary = Table(title=f"KPIs {start:%Y-%m-%d %H:%M:%S} - {end:%Y-%m-%d %H:%M:%S} UTC{scope}")
    summary.add_column("KPI")
    summary.add_column("value", justify="right")
    for name, value in (
        ("GMV (accepted orders, CNY)", money(report.gmv)),
        (
            "orders placed / accepted / rejected",
            f"{report.orders_placed} / {report.orders_accepted} / {report.orders_rejected}",
        ),
        ("orders completed / cancelled", f"{report.orders_completed} / {report.orders_cancelled}"),
        ("AOV", money(report.aov)),
        (
            "payment success (authorised / attempted)",
            f"{pct(report.payment_success_rate)} ({report.payments_authorized}/{report.payments_attempted})",
        ),
        ("cancellation rate (of ended sagas)", pct(report.cancellation_rate)),
        ("cancellations by reason", reasons(report.cancellations_by_reason)),
        ("rejections by reason", reasons(report.rejections_by_reason)),
        (
            "captured / refunded / net",
            f"{money(report.captured)} / {money(report.refunded)} / {money(report.net_revenue)}",
        ),
        ("fulfilment p50 / p95", f"{secs(report.fulfilment_p50_seconds)} / {secs(report.fulfilment_p95_seconds)}"),
        (
            "orders delivered / delivery p50 / p95",
            f"{report.orders_delivered} / {kpi.span(report.delivery_p50_seconds)}"
            f" / {kpi.span(report.delivery_p95_seconds)}",
        ),
    ):
        summary.add_row(name, value)
    if report.orders_other_currency:
        summary.add_row("orders in another currency (not in money figures)", str(report.orders_other_currency))
    out.print(summary)
    for title, split in (
        ("payment method", report.by_payment_method),
        ("shipping option", report.by_shipping_option),
        ("carrier", report.by_carrier),
    ):
        table = Table(title=f"per {title}")
        for col in (
            title,
            "placed",
            "accepted",
            "GMV",
            "AOV",
            "pay success",
            "completed",
            "cancelled",
            "cancel rate",
            "p50",
            "p95",
            "delivered",
            "delivery p50",
            "delivery p95",
        ):
            table.add_column(col, justify="left" if col == title else "right")
        for name, f in split.items():
            table.add_row(
                name,
                str(f.orders_placed),
                str(f.orders_accepted),
                money(f.gmv),
                money(f.aov),
                pct(f.payment_success_rate),
                str(f.orders_completed),
                str(f.orders_cancelled),
                pct(f.cancellation_rate),
                secs(f.fulfilment_p50_seconds),
                secs(f.fulfilment_p95_seconds),
                str(f.orders_delivered),
                kpi.span(f.delivery_p50_seconds),
                kpi.span(f.delivery_p95_seconds),
            )
        out.print(table)
    busy = [
        p for p in report.series if p.orders_placed or p.orders_accepted or p.orders_completed or p.orders_cancelled
    ]
    series = Table(title=f"per {bucket} ({len(report.series) - len(busy)} empty {bucket}s not shown)")
    for col in (bucket, "placed", "accepted", "completed", "cancelled", "GMV"):
        series.add_column(col, justify="left" if col == bucket else "right")
    for p in busy:
        series.add_row(
            f"{p.start:%Y-%m-%d %H:%M}",
            str(p.orders_placed),
            str(p.orders_accepted),
            str(p.orders_completed),
            str(p.orders_cancelled),
            money(p.gmv),
        )
    out.print(series)


# ------------------------------------------------------------------ API keys and personal data

keys_app = typer.Typer(help="API keys of storefronts and operators (stored hashed).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
MongoUrl = Annotated[str | None, typer.Option("--mongodb-url", help="the store (default: MONGODB_URL)")]
KeysDb = Annotated[str, typer.Option("--database", envvar="API_KEYS_DATABASE", help="where api_keys lives")]


def _mongo(url: str | None) -> Any:
    from pymongo import MongoClient

    return MongoClient(url or tool_settings().mongodb_url, tz_aware=True, serverSelectionTimeoutMS=5000)


@keys_app.command("create")
def keys_create(
    storefront: Annotated[str, typer.Option("--storefront", help="the storefront the key belongs to")],
    role: Annotated[str, typer.Option("--role", help="storefront (its own orders) or operator (everything)")] = (
        "storefront"
    ),
    mongodb_url: MongoUrl = None,
    database: KeysDb = "fulfil_order",
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Issue a key; the token is printed once and only its SHA-256 is stored."""
    import getpass

    from shared import keys
    from shared.events.storefront import StorefrontId
    from tools.fulfil import ops

    if role not in ("storefront", "operator"):
        fail("--role is storefront or operator")
    try:
        from pydantic import TypeAdapter

        TypeAdapter(StorefrontId).validate_python(storefront)
    except ValueError:
        fail("--storefront: 1-64 of A-Z a-z 0-9 . _ -")
    confirm(yes, f"Create a {role} key for storefront {storefront} in {database}.api_keys?")
    token = keys.new_token()
    doc = keys.key_document(
        token=token,
        storefront_id=storefront,
        role="operator" if role == "operator" else "storefront",
        created_by=getpass.getuser(),
    )
    try:
        _mongo(mongodb_url)[database][keys.COLLECTION].insert_one(doc)
    except Exception as e:
        fail(f"could not store the key: {type(e).__name__}: {e}")
    # Who issued which key when: its public id, never the token or its hash.
    ops.audit("keys create", AUDIT_LOG, key_id=doc["key_id"], storefront=storefront, role=role, database=database)
    if as_json:
        console.print_json(data={"key_id": doc["key_id"], "storefront": storefront, "role": role, "token": token})
        return
    console.print(f"key {doc['key_id']} for {storefront} ({role}). The token, shown this once:")
    print(token)


@keys_app.command("list")
def keys_list(
    mongodb_url: MongoUrl = None,
    database: KeysDb = "fulfil_order",
    as_json: Json = False,
) -> None:
    """Every issued key: id, storefront, role, when and by whom, revoked or not (never the token)."""
    from rich.table import Table

    from shared import keys

    try:
        docs = list(_mongo(mongodb_url)[database][keys.COLLECTION].find({}, {"_id": 0}).sort("created_at", 1))
    except Exception as e:
        fail(f"could not read the keys: {type(e).__name__}: {e}")
        return
    rows = [
        {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in d.items()}
        | {"status": "revoked" if d.get("revoked_at") else "active"}
        for d in docs
    ]
    if as_json:
        console.print_json(data=rows)
        return
    cols = ("key_id", "storefront_id", "role", "hint", "created_at", "created_by", "status")
    table = Table(title=f"{len(rows)} key(s)")
    for col in cols:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r.get(c) or "-")[:25] for c in cols))
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id as `keys list` shows it")],
    mongodb_url: MongoUrl = None,
    database: KeysDb = "fulfil_order",
    yes: Yes = False,
) -> None:
    """Revoke a key: refused from then on (within the services' key cache, 10 s). The revocation is also recorded
    as a tombstone that `fulfil restore` re-applies, so restoring an older backup cannot bring the key back."""
    from datetime import UTC, datetime

    from shared import keys
    from tools.fulfil import ops

    client = _mongo(mongodb_url)
    coll = client[database][keys.COLLECTION]
    doc = coll.find_one({"key_id": key_id})
    if doc is None:
        fail(f"no key {key_id}")
        return
    storefront = str(doc.get("storefront_id"))

    def tombstone(at: datetime) -> None:
        try:
            ops.record_revocation(client, key_id=key_id, storefront_id=storefront, at=at, keys_database=database)
        except Exception as e:
            fail(f"{key_id} is revoked, but its tombstone was not written ({type(e).__name__}: {e}): run it again")

    if doc.get("revoked_at"):
        tombstone(doc["revoked_at"])  # an earlier run whose tombstone failed: write it now (idempotent)
        console.print(f"{key_id} was revoked at {doc['revoked_at']}")
        return
    confirm(yes, f"Revoke {key_id} of {storefront} ({doc['role']})?")
    at = datetime.now(UTC)
    coll.update_one({"_id": doc["_id"]}, {"$set": {"revoked_at": at}})
    ops.audit("keys revoke", AUDIT_LOG, key_id=key_id, storefront=storefront, role=doc.get("role"), database=database)
    tombstone(at)
    console.print(f"revoked {key_id}")


@app.command("forget")
def forget(
    customer_id: Annotated[str, typer.Argument(help="the storefront's customer id (customer.id of its orders)")],
    mongodb_url: MongoUrl = None,
    settled_after: Annotated[
        str, typer.Option("--settled-after", help="leave orders that finished less than this long ago")
    ] = "10m",
    dry_run: DryRun = False,
    yes: Yes = False,
    as_json: Json = False,
) -> None:
    """Erase a customer's personal data (name, e-mail, phone, address, payment token, mails) from every service's
    documents. Orders still in flight are left and listed: run it again once they have finished."""
    from tools.fulfil import ops

    client = _mongo(mongodb_url)
    with console.status(f"looking for the orders of customer {customer_id} ..."):
        try:
            plan = ops.plan_forget(
                client, customer_id, settled_after=ops.parse_time("0s") - ops.parse_time(settled_after)
            )
        except Exception as e:
            fail(f"could not read the stores: {type(e).__name__}: {e}")
            return
    summary = plan.summary()
    if as_json:
        console.print_json(data={**summary, "dry_run": dry_run})
    else:
        console.print(f"customer {customer_id}: {len(plan.order_ids)} finished order(s) to erase")
        for target, n in summary["documents"].items():
            console.print(f"{'(dry run) ' if dry_run else ''}erase personal fields in {n} document(s) of {target}")
        for oid, why in plan.skipped.items():
            console.print(f"[yellow]left[/yellow] {oid}: {why}")
    if dry_run or not plan.documents:
        if not plan.documents and not as_json:
            console.print("nothing to erase")
        return
    confirm(yes, f"Erase the personal data of customer {customer_id} ({len(plan.order_ids)} order(s))? No undo.")
    from datetime import UTC, datetime

    at = datetime.now(UTC)
    # The tombstone first: if the erasure stops part-way, a restore still knows to erase the customer again.
    ops.record_erasure(client, customer_id=customer_id, orders=plan.order_ids, at=at)
    written = ops.apply_forget(client, plan)
    ops.audit("forget", AUDIT_LOG, customer_id=customer_id, orders=plan.order_ids, documents=written)
    if not as_json:
        console.print(f"erased: {written} document(s); Kafka keeps its copies until retention (7 days, DLQs 30)")


from tools.fulfil import backup, chaos, history, verify  # noqa: E402  (commands in their own modules, which use the helpers above)

verify.register(app)
chaos.register(app)
backup.register(app)
history.register(app)

if __name__ == "__main__":
    app()
