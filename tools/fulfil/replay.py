"""``fulfil replay``: a topic replayed by rewinding a stopped consumer group or re-publishing a time range."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer
from rich.progress import Progress

from tools.fulfil.term import Bootstrap, DryRun, Json, OrderOpt, Yes, console, err, fail, run, when

app = typer.Typer()


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

    since, until = when(from_), when(to)
    if republish_:
        _republish(
            topic, since, until, order_id=order_id, bootstrap=bootstrap, dry_run=dry_run, yes=yes, as_json=as_json
        )
        return
    if group is None:
        fail("say which consumer group to rewind (--group), or use --republish")
    if to is not None or order_id is not None:
        fail("--to and --order-id need --republish: a rewind re-reads everything from --from onwards")
    _rewind(topic, group, since, bootstrap=bootstrap, dry_run=dry_run, yes=yes, as_json=as_json)


def _republish(
    topic: str,
    since: datetime,
    until: datetime | None,
    *,
    order_id: str | None,
    bootstrap: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Re-publish the topic's records in the range (one order's, with an order id), once asked."""
    # imported here: aiokafka, faststream and pymongo cost ~2 s of CPU at start-up of every fulfil command
    from tools.ops import topic_log

    picked, skipped = _decodable_records(topic, since, until, order_id=order_id, bootstrap=bootstrap)
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
    run(topic_log.republish(bootstrap, [(topic, rec, "republish") for rec in picked]))


def _decodable_records(
    topic: str, since: datetime, until: datetime | None, *, order_id: str | None, bootstrap: str | None
) -> tuple[list[Any], int]:
    """The records in the range that a consumer can decode, and how many it could not (left where they are)."""
    # imported here: aiokafka, faststream and pymongo cost ~2 s of CPU at start-up of every fulfil command
    from tools.ops import topic_log

    picked: list[Any] = []
    skipped = 0

    async def collect() -> None:
        nonlocal skipped
        with Progress(console=err, transient=True) as bar:
            task = bar.add_task(f"reading {topic}", total=None)
            async for rec in topic_log.scan(
                bootstrap,
                [topic],
                since=since,
                until=until,
                key=order_id,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            ):
                if topic_log.decodable(topic, rec.value):
                    picked.append(rec)
                else:
                    skipped += 1  # a poison record stays where it is: it would only be dead-lettered again

    run(collect())
    return picked, skipped


def _rewind(
    topic: str, group: str, since: datetime, *, bootstrap: str | None, dry_run: bool, yes: bool, as_json: bool
) -> None:
    """Rewind a stopped consumer group on the topic to a time, once asked; a group with live members is refused."""
    # imported here: aiokafka, faststream and pymongo cost ~2 s of CPU at start-up of every fulfil command
    from tools.ops import topic_log

    moves = run(topic_log.plan_rewind(bootstrap, topic=topic, group=group, since=since))
    members = run(topic_log.group_members(bootstrap, group))
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
    run(topic_log.rewind(bootstrap, topic=topic, group=group, moves=moves))
    console.print("rewound; the group re-reads from there when its service starts")
