"""``fulfil backup`` and ``fulfil restore``: every service's database and the consumer groups' offsets, archived
and put back (tools.ops.backup)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shared import topics
from tools.fulfil import term
from tools.fulfil.term import confirm, console, err, fail, run
from tools.ops import audit

if TYPE_CHECKING:
    from tools.ops import backup as backups
    from tools.ops.settings import ToolSettings

app = typer.Typer()


# An option given overrides the settings (its help, unlike the other commands', names the default in brackets).
Bootstrap = Annotated[
    str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers [default: KAFKA_BOOTSTRAP_SERVERS]")
]
MongoUrl = Annotated[str | None, typer.Option("--mongodb-url", help="the store [default: MONGODB_URL]")]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@app.command("backup")
def backup(
    out: Annotated[Path | None, typer.Option("--out", help="archive file or folder [.local/backups/]")] = None,
    mongodb_url: MongoUrl = None,
    bootstrap: Bootstrap = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Back up every service's database (all collections, exact BSON) and the consumer groups' committed offsets
    into one .tar.gz with a manifest; safe while the services run."""
    # imported here: pymongo, aiokafka and faststream cost ~2.3 s of CPU at start-up of every fulfil command
    from tools.ops import backup as backups
    from tools.ops.settings import tool_settings

    settings = tool_settings(bootstrap)
    mongodb_url = mongodb_url or settings.mongodb_url
    at = datetime.now(UTC)
    target = backups.default_path(at) if out is None else (out / backups.default_path(at).name if out.is_dir() else out)
    if target.exists():
        fail(f"{target} exists: a backup is never overwritten")
    try:
        with console.status(f"backing up to {target} ..."):
            manifest = backups.take_backup(
                client=term.mongo(mongodb_url), mongodb_url=mongodb_url, kafka=settings, out=target
            )
    except Exception as e:
        fail(f"backup failed, nothing written: {type(e).__name__}: {e}")
        return
    archive = backups.Archive(target, manifest, manifest["databases"])
    offsets = archive.offsets
    ends = {t: {int(p): int(e) for p, e in ps.items()} for t, ps in manifest["ends_at_backup"].items()}
    documents = sum(e["documents"] for colls in archive.databases.values() for e in colls.values())
    collections = sum(len(colls) for colls in archive.databases.values())
    summary = {
        "path": str(target),
        "bytes": target.stat().st_size,
        "created_at": manifest["created_at"],
        "documents": documents,
        "collections": collections,
        "counts": {f"{d}.{c}": e["documents"] for d, colls in archive.databases.items() for c, e in colls.items()},
        "offsets": backups.offsets_summary(offsets, ends),
    }
    if as_json:
        console.print_json(data=summary)
        return
    for name, n in summary["counts"].items():
        console.print(f"{name:40} {n:>9} document(s)")
    for group, row in summary["offsets"].items():
        console.print(
            f"group {group:10} offsets of {row['partitions']} partition(s) ({row['without_offset']} never consumed);"
            f" {row['lag']} record(s) not yet consumed at backup time"
        )
    console.print(
        f"wrote {target}: {documents} document(s) in {collections} collection(s), {_size(summary['bytes'])}, "
        f"offsets as of {manifest['created_at']}"
    )


@app.command("restore")
def restore(
    path: Annotated[Path, typer.Argument(help="a backup archive written by `fulfil backup`")],
    mongodb_url: MongoUrl = None,
    bootstrap: Bootstrap = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check the archive and show the plan, change nothing")] = (
        False
    ),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Replace every service database with a backup and rewind every consumer group to the backup's offsets, so the
    services, once started, re-consume everything since. The services must be stopped."""

    # imported here: pydantic-settings costs ~0.4 s of CPU at start-up of every fulfil command
    from tools.ops.settings import tool_settings

    kafka = tool_settings(bootstrap)
    plan = _read_plan(path, kafka=kafka, mongodb_url=mongodb_url or kafka.mongodb_url)
    _print_plan(plan, dry_run=dry_run, as_json=as_json)
    if dry_run:
        if plan.members and not as_json:
            console.print(f"[yellow]note:[/yellow] live members in {', '.join(sorted(plan.members))}: {_STOP_THEM}")
        return
    _go_ahead(plan, yes=yes)
    written, again = _restore(plan, kafka=kafka)
    if not as_json:
        _print_restored(plan, written, again)


_STOP_THEM = (
    "stop the services first (`.venv/bin/python deploy/local/stack.py services-down`, or scale them to zero): "
    "a running consumer would act on half-restored documents and commit over the rewound offsets"
)


@dataclass
class _Plan:
    """What a restore would change, read before anything is changed."""

    archive: backups.Archive
    checked: int  # bytes of the archive whose checksums match
    client: Any  # the store it replaces the databases of
    now_counts: dict[str, dict[str, int]]  # documents per collection in the store now
    moves: list[backups.Move]
    problems: list[str]  # why the backup cannot be brought up to date from Kafka
    members: dict[str, list[str]]  # consumer groups with live members
    tombs: backups.Tombstones

    @property
    def rereads(self) -> dict[str, int]:
        """Records each consumer group re-consumes once it starts."""
        out: dict[str, int] = {}
        for m in self.moves:
            out[m.group] = out.get(m.group, 0) + m.reread
        return out

    def as_dict(self, *, dry_run: bool) -> dict[str, Any]:
        return {
            "archive": str(self.archive.path),
            "created_at": self.archive.manifest["created_at"],
            "checked_bytes": self.checked,
            "dry_run": dry_run,
            "databases": {
                db: {
                    "now": self.now_counts.get(db, {}),
                    "backup": {c: e["documents"] for c, e in colls.items()},
                }
                for db, colls in self.archive.databases.items()
            },
            "offsets": [
                {
                    "group": m.group,
                    "topic": m.topic,
                    "partition": m.partition,
                    "current": m.current,
                    "target": m.target,
                    "reread": m.reread,
                }
                for m in self.moves
            ],
            "reread_per_group": self.rereads,
            "problems": self.problems,
            "backups.live_members": self.members,
            "forgotten_since_backup": self.tombs.erased_since,
            "revocations_to_reapply": [str(t["key_id"]) for t in self.tombs.revocations],
        }


def _read_plan(path: Path, *, kafka: ToolSettings, mongodb_url: str) -> _Plan:
    """The archive, every member checked against its checksum, against the store, the consumer groups and the
    tombstones as they are now. An archive with a database that is no service's is refused."""
    # imported here: pymongo, aiokafka and faststream cost ~2.3 s of CPU at start-up of every fulfil command
    from tools.ops import backup as backups

    try:
        archive = backups.Archive.open(path)
        with console.status(f"checking {path} ..."):
            checked = archive.verify()
    except backups.BackupError as e:
        fail(str(e))
    if strangers := sorted(set(archive.databases) - set(backups.DATABASES)):
        fail(f"{path} holds database(s) that are no service's: {', '.join(strangers)}; nothing changed")
    client = term.mongo(mongodb_url)
    try:
        now_counts = backups.current_counts(client, archive.databases)
    except Exception as e:
        fail(f"could not read the store at {backups.hosts(mongodb_url)}: {type(e).__name__}: {e}")
    moves, problems = run(backups.plan_offsets(kafka, archive.offsets))
    members: dict[str, list[str]] = run(backups.live_members(kafka))
    try:
        tombs = backups.Tombstones.read(client, since=archive.created_at, audit_log=audit.AUDIT_LOG)
    except Exception as e:
        fail(f"could not read the tombstones (revocations, erasures) in the store: {type(e).__name__}: {e}")
    return _Plan(archive, checked, client, now_counts, moves, problems, members, tombs)


def _print_plan(plan: _Plan, *, dry_run: bool, as_json: bool) -> None:
    """The plan as JSON or as lines; why it cannot be done, and what is revoked and erased again, either way."""
    summary = plan.as_dict(dry_run=dry_run)
    dry = "(dry run) " if dry_run else ""
    if as_json:
        console.print_json(data=summary)
    else:
        console.print(
            f"backup {summary['archive']} of {summary['created_at']}: every member's checksum matches "
            f"({_size(plan.checked)})"
        )
        for db, counts in summary["databases"].items():
            now_n, back_n = sum(counts["now"].values()), sum(counts["backup"].values())
            detail = ", ".join(f"{c} {n}" for c, n in counts["backup"].items())
            console.print(f"{dry}replace {db}: {now_n} document(s) now -> {back_n} from the backup ({detail})")
        _print_moves(plan.moves, dry)
        for group, n in plan.rereads.items():
            console.print(f"{dry}group {group}: {n} record(s) to re-consume once it starts")
    for problem in plan.problems:
        err.print(f"[red]cannot restore:[/red] {problem}")
    if not as_json and plan.tombs.revocations:
        console.print(
            f"{dry}revoke again, where the backup has them active: {len(plan.tombs.revocations)} revoked key(s)"
        )
    if (erased := plan.tombs.erased_since) and not as_json:
        console.print(
            f"{dry}erase again {len(erased)} customer(s) erased since the backup: {', '.join(erased)}. Once the "
            "services have caught up, run `fulfil forget` again for them: replayed records bring back orders "
            "placed since the backup, and orders in flight in the backup finish only then"
        )


def _print_moves(moves: list[backups.Move], dry: str) -> None:
    """Each group's offsets on each topic it reads: now -> the backup's, partition by partition."""
    for group in topics.CONSUMER_GROUPS:
        for topic in topics.CONSUMER_GROUPS[group]:
            mine = [m for m in moves if m.group == group and m.topic == topic]
            if not mine:
                continue
            now_s = "/".join("-" if m.current is None else str(m.current) for m in mine)
            target_s = "/".join(str(m.target) for m in mine)
            console.print(
                f"{dry}group {group:10} {topic:18} offsets {now_s} -> {target_s} "
                f"({sum(m.reread for m in mine)} to re-consume)"
            )


def _go_ahead(plan: _Plan, *, yes: bool) -> None:
    """Refuse a plan that cannot be done, or services that run; else ask."""
    if plan.problems:
        fail("the backup cannot be brought up to date from Kafka (above); nothing changed")
    if plan.members:
        live = "; ".join(f"{g}: {', '.join(ms)}" for g, ms in sorted(plan.members.items()))
        fail(f"consumer groups have live members ({live}): {_STOP_THEM}")
    created_at = plan.archive.manifest["created_at"]
    confirm(yes, f"Replace {len(plan.archive.databases)} database(s) with the backup of {created_at}? No undo.")


def _restore(plan: _Plan, *, kafka: ToolSettings) -> tuple[dict[str, int], backups.Reapplied]:
    """Unless a service started meanwhile: write the databases back, set the offsets and re-apply the tombstones,
    between audit lines; the documents written per collection and what was revoked and erased again."""
    # imported here: pymongo, aiokafka and faststream cost ~2.3 s of CPU at start-up of every fulfil command
    from tools.ops import backup as backups

    if late := run(backups.live_members(kafka)):
        fail(f"a service started meanwhile ({', '.join(sorted(late))}): {_STOP_THEM}")
    details = {
        "archive": str(plan.archive.path),
        "created_at": plan.archive.manifest["created_at"],
        "reread_per_group": plan.rereads,
    }
    audit.write("restore started", audit.AUDIT_LOG, **details)
    try:
        written = plan.archive.restore_into(plan.client)
        asyncio.run(backups.set_offsets(kafka, plan.moves))
        # What was revoked or erased after the backup is revoked and erased again before any service starts.
        again = backups.reapply(plan.client, plan.tombs, keys_database=kafka.api_keys_database)
    except Exception as e:
        audit.write("restore failed", audit.AUDIT_LOG, **details, error=f"{type(e).__name__}: {e}")
        fail(f"restore failed part-way ({type(e).__name__}: {e}): run it again before starting the services")
    audit.write(
        "restore",
        audit.AUDIT_LOG,
        **details,
        documents=sum(written.values()),
        revoked_again=again.revoked,
        erased_again=again.erased,
        left_in_flight={c: sorted(orders) for c, orders in again.left.items()},
    )
    return written, again


def _print_restored(plan: _Plan, written: dict[str, int], again: backups.Reapplied) -> None:
    console.print(
        f"restored {sum(written.values())} document(s) in {len(written)} collection(s); "
        f"{len(plan.moves)} partition offset(s) set. Start the services without re-seeding the stock: "
        "`FULFIL_SKIP_SEED=1 .venv/bin/python deploy/local/stack.py services-up`"
    )
    if again.revoked:
        console.print(f"revoked again (active in the backup): {', '.join(again.revoked)}")
    for customer, n in again.erased.items():
        console.print(f"erased again: customer {customer}, {n} document(s)")
    for customer, orders in again.left.items():
        console.print(
            f"[yellow]left[/yellow] customer {customer}: {len(orders)} order(s) in flight in the backup; "
            "`fulfil forget` them once the services have caught up"
        )
