"""The evidence ``fulfil verify`` checks, gathered read-only from a running system: the topics (from the beginning,
without a consumer group), the order API, the payment ledger, the carriers' records, the SMTP sink and the stock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import yaml
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from shared import topics
from shared.settings import ServiceSettings
from tools.ops import topic_log
from tools.ops.paths import REPO
from tools.ops.settings import api_headers, tool_settings
from tools.ops.verify import (
    CARRIERS,
    DEFAULT_DEADLINE,
    Evidence,
    Fact,
    Report,
    analyse,
    fact_of,
    in_scope,
    mail_order,
    narrow,
)


async def gather(
    *,
    kafka: ServiceSettings | str | None,
    mongodb_url: str,
    order_url: str,
    inventory_url: str,
    smtp_api_url: str,
    payment_url: str = "http://127.0.0.1:8081",
    sim_url: str | None = None,
    since: datetime | None = None,
    prefix: str | None = None,
    deadline: timedelta = DEFAULT_DEADLINE,
    headers: Mapping[str, str] | None = None,
) -> Evidence:
    """Collect the evidence for the orders in scope from a running system (read-only); ``sim_url``: the carrier
    simulator whose parcels are the carriers' record (None: not asked)."""

    facts = await _facts(kafka, since=since, prefix=prefix)
    known = {f.order_id for f in facts}
    notes: list[str] = []
    ledger, bookings, sandbox_unread = await _from_store(mongodb_url, since=since, prefix=prefix, notes=notes)
    async with httpx.AsyncClient(timeout=15, headers=dict(headers or {})) as http:
        mails = await _mails(http, smtp_api_url, since=since, prefix=prefix, known=known)
        at_sim, sim_unread = None, False
        if sim_url is not None:
            at_sim, sim_notes, sim_unread = await read_carriers(http, sim_url, prefix=prefix, since=since, known=known)
            notes.extend(sim_notes)
        if at_sim is not None:
            bookings = [*(bookings or []), *at_sim]
        bookings_partial = bookings is not None and (sim_unread or sandbox_unread)
        if bookings_partial:
            notes.append("a carrier's record is missing: orders no record knows are judged from shipping.events")
        wanted = known | {str(d["order_id"]) for d in ledger} | {str(mail_order(m)) for m in mails}
        wanted |= {str(b.get("order_id")) for b in bookings or []}
        orders = await _order_views(http, order_url, wanted)
        at_cashier = sorted({f.order_id for f in facts if f.event_type == "PaymentActionRequired"})
        providers = await _provider_views(http, payment_url, at_cashier, notes=notes)
        stock, holds = await _stock(http, inventory_url, _skus(facts), notes=notes)
    return Evidence(
        facts=facts,
        orders=orders,
        ledger=ledger,
        bookings=bookings,
        mails=mails,
        stock=stock,
        now=datetime.now(UTC),
        deadline=deadline,
        complete=since is None and prefix is None,
        notes=notes,
        providers=providers,
        bookings_partial=bookings_partial,
        holds=holds,
    )


async def _facts(kafka: ServiceSettings | str | None, *, since: datetime | None, prefix: str | None) -> list[Fact]:
    """The facts on the topics about the orders in scope."""
    # Read from a little before `since`, so an order placed in range but answered late is seen whole.
    start = since - timedelta(minutes=10) if since is not None else None
    raw: list[Fact] = []
    async for rec in topic_log.scan(kafka, topics.MAIN_TOPICS, since=start):
        if (
            rec.key is not None
            and in_scope(rec.key, prefix)
            and (f := fact_of(rec.topic, rec.key, rec.value, rec.timestamp))
        ):
            raw.append(f)
    return narrow(raw, since=since, prefix=prefix)


async def _from_store(
    mongodb_url: str, *, since: datetime | None, prefix: str | None, notes: list[str]
) -> tuple[list[dict[str, Any]], list[Mapping[str, Any]] | None, bool]:
    """The payment gateway's ledger and the carrier bookings the shipping service keeps (None: it keeps none), for
    the orders in scope; and whether those bookings could not be read (said in ``notes``)."""
    # Timeouts: a store that hangs on one database must not hang verify (FerretDB can, under a stuck writer).
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongodb_url, serverSelectionTimeoutMS=5000, socketTimeoutMS=20000, tz_aware=True
    )
    unread = False
    try:
        ledger = [
            d
            async for d in mongo["fulfil_payment"]["gateway_ledger"].find({})
            if in_scope(str(d.get("order_id", "")), prefix) and _after(d.get("at"), since)
        ]
        bookings: list[Mapping[str, Any]] | None = None
        try:
            if "carrier_bookings" in await mongo["fulfil_shipping"].list_collection_names():
                bookings = [
                    {**d, "order_id": str(d["_id"])}
                    async for d in mongo["fulfil_shipping"]["carrier_bookings"].find({})
                    if in_scope(str(d["_id"]), prefix) and _after(d.get("at"), since)
                ]
        except PyMongoError as e:
            notes.append(f"carrier bookings unreadable: {type(e).__name__}")
            unread = True
    finally:
        await mongo.close()
    return ledger, bookings, unread


async def _mails(
    http: httpx.AsyncClient, smtp_api_url: str, *, since: datetime | None, prefix: str | None, known: set[str]
) -> list[Any]:
    """The SMTP sink's mails about the orders in scope."""
    r = await http.get(f"{smtp_api_url}/api/v1/messages", params={"limit": 100000})
    r.raise_for_status()
    return [
        m
        for m in r.json().get("messages", [])
        if (oid := mail_order(m)) is not None and in_scope(oid, prefix) and (oid in known or _mail_after(m, since))
    ]


async def _order_views(
    http: httpx.AsyncClient, order_url: str, order_ids: set[str]
) -> dict[str, dict[str, Any] | None]:
    """The order API's view of each order (None: unknown there)."""
    gate = asyncio.Semaphore(32)

    async def view(order_id: str) -> tuple[str, dict[str, Any] | None]:
        async with gate:
            resp = await http.get(f"{order_url}/orders/{order_id}")
        if resp.status_code == 404:
            return order_id, None
        resp.raise_for_status()
        return order_id, resp.json()

    return dict(await asyncio.gather(*(view(oid) for oid in sorted(order_ids))))


async def _provider_views(
    http: httpx.AsyncClient, payment_url: str, order_ids: list[str], *, notes: list[str]
) -> dict[str, dict[str, Any]]:
    """The provider's record beside ours for each order paid at a cashier; none when the payment API does not
    answer (said in ``notes``)."""
    gate = asyncio.Semaphore(32)

    async def provider_view(order_id: str) -> tuple[str, dict[str, Any] | None]:
        async with gate:
            resp = await http.get(f"{payment_url}/payments/{order_id}/provider")
        return order_id, resp.json() if resp.status_code == 200 else None

    try:
        seen = dict(await asyncio.gather(*(provider_view(oid) for oid in order_ids)))
    except httpx.HTTPError as e:
        notes.append(f"provider side not checked: payment API at {payment_url} did not answer ({e!r})")
        return {}
    return {oid: view for oid, view in seen.items() if view is not None}


def _skus(facts: list[Fact]) -> set[str]:
    """The catalogue's SKUs and every SKU an order in scope names."""
    catalogue = yaml.safe_load((REPO / "deploy" / "catalogue.yaml").read_text()) or {}
    return set(catalogue) | {str(ln["sku"]) for f in facts for ln in (f.data.get("lines") or [])}


async def _stock(
    http: httpx.AsyncClient, inventory_url: str, skus: set[str], *, notes: list[str]
) -> tuple[dict[str, Mapping[str, Any]], dict[str, Mapping[str, int]] | None]:
    """Each SKU's stock level and the units each order holds of it (holds None: not all readable); when the
    inventory API does not answer, what was read so far (said in ``notes``)."""
    stock: dict[str, Mapping[str, Any]] = {}
    holds: dict[str, Mapping[str, int]] | None = {}
    for sku in sorted(skus):
        try:
            resp = await http.get(f"{inventory_url}/stock/{sku}")
            if resp.status_code == 200:
                stock[sku] = resp.json()
                held = await http.get(f"{inventory_url}/stock/{sku}/holds")
                if held.status_code == 200 and holds is not None:
                    holds[sku] = held.json()
                else:
                    holds = None
        except httpx.HTTPError as e:
            notes.append(f"stock not checked: inventory API at {inventory_url} did not answer ({e!r})")
            holds = None
            break
    return stock, holds


def _time(text: Any) -> datetime | None:
    try:
        at = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def sim_bookings(carrier: str, listing: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The carrier simulator's parcels (``GET /control/parcels/{carrier}``) as the carriers' record: ``created``
    is a booking, ``cancelled`` a call-back; with the parcel's milestone and when it was delivered."""
    out = []
    for p in listing.get("parcels") or []:
        delivered = [_time(r.get("at")) for r in p.get("routes") or [] if r.get("milestone") == "DELIVERED"]
        status = str(p.get("status"))
        out.append(
            {
                "order_id": str(p.get("order_id")),
                "carrier": carrier,
                "status": {"created": "booked", "cancelled": "cancelled"}.get(status, status),
                "tracking_number": str(p.get("waybill")),
                "milestone": p.get("milestone"),
                "delivered_at": next((at for at in delivered if at is not None), None),
                "at": _time(p.get("created_at")),
            }
        )
    return out


async def read_carriers(
    http: Any, sim_url: str, *, prefix: str | None, since: datetime | None, known: set[str]
) -> tuple[list[dict[str, Any]] | None, list[str], bool]:
    """Every carrier's parcels at the simulator, for the orders in scope: (the parcels, or None when no carrier's
    were read; notes; whether a carrier's record could not be read). Never raises: a simulator that is not there
    is a note."""

    found: list[dict[str, Any]] | None = None
    notes: list[str] = []
    for carrier in CARRIERS:
        try:
            resp = await http.get(f"{sim_url}/control/parcels/{carrier}")
        except httpx.HTTPError as e:
            notes.append(f"carrier simulator at {sim_url} did not answer ({e!r}): its parcels not read")
            return found, notes, True
        if resp.status_code == 404:
            notes.append(f"the carrier simulator has no {carrier} carrier")
            continue
        if resp.status_code != 200:
            notes.append(f"the carrier simulator's {carrier} parcels not read: HTTP {resp.status_code}")
            return found, notes, True
        found = found or []
        found.extend(
            b
            for b in sim_bookings(carrier, resp.json())
            if in_scope(b["order_id"], prefix) and (b["order_id"] in known or _after(b["at"], since))
        )
    return found, notes, False


def _after(at: Any, since: datetime | None) -> bool:
    if since is None or not isinstance(at, datetime):
        return True
    return (at if at.tzinfo else at.replace(tzinfo=UTC)) >= since


def _mail_after(mail: Mapping[str, Any], since: datetime | None) -> bool:
    if since is None:
        return True
    try:
        return parsedate_to_datetime(str(mail.get("Created", ""))) >= since
    except (TypeError, ValueError):
        return True


def endpoints() -> dict[str, Any]:
    """Where the evidence is: the tools' settings (the environment's, else the local stack's defaults)."""
    settings = tool_settings()
    return {
        "kafka": settings,
        "mongodb_url": settings.mongodb_url,
        "order_url": settings.order_url,
        "inventory_url": settings.inventory_url,
        "payment_url": settings.payment_url.rstrip("/"),
        "sim_url": settings.provider_sim_url.rstrip("/"),
        "smtp_api_url": settings.smtp_api_url.rstrip("/"),
    }


async def run(
    *, since: datetime | None = None, prefix: str | None = None, deadline: timedelta = DEFAULT_DEADLINE
) -> Report:
    """Gather the evidence from the running system and analyse it."""
    evidence = await gather(**endpoints(), since=since, prefix=prefix, deadline=deadline, headers=api_headers())
    return analyse(evidence)
