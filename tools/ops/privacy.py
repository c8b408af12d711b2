"""Personal data: erasing a customer from every service's documents (``fulfil forget``), and the tombstones that
make a restore re-apply revocations and erasures."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReplaceOne

from shared import keys
from tools.ops.audit import operator

ERASED = "[erased]"
# Where each service keeps personal data per order (database, collection); each has <collection>_versions too.
PERSONAL_STORES = (
    ("fulfil_order", "orders"),
    ("fulfil_payment", "payments"),
    ("fulfil_shipping", "shipments"),
    ("fulfil_notify", "contacts"),
)
FORGET_SETTLED_AFTER = timedelta(minutes=10)  # a terminal order's last mails and late facts have come by then


def _erase_order_value(value: str) -> str:
    data = json.loads(value)
    if isinstance(data.get("customer"), dict):
        # Erased values still fit the contract, so an erased event can be read (and re-published) like any other.
        data["customer"] = {
            **data["customer"],
            "id": "erased",
            "name": ERASED,
            "email": "erased@erased.invalid",
            "phone": None,
        }
    if isinstance(data.get("payment"), dict):
        data["payment"] = {**data["payment"], "token": ERASED}
    address = (data.get("shipping") or {}).get("address")
    if isinstance(address, dict):
        data["shipping"]["address"] = {
            **address,
            **dict.fromkeys(("recipient", "line1", "city", "postal_code"), ERASED),
            "line2": None,
        }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def erase_document(collection: str, doc: dict[str, Any]) -> dict[str, Any]:
    """The document with every personal field of its service replaced (pure; the same shape, still valid)."""
    doc = copy.deepcopy(doc)
    state = dict(doc.get("state") or {})
    if collection == "orders":
        doc["outbox"] = [
            {**r, "value": _erase_order_value(r["value"])} if r.get("event_type") == "OrderAccepted" else r
            for r in doc.get("outbox", [])
        ]
        state["history"] = [
            {**h, "detail": {**h.get("detail", {}), "customer_reason": ERASED}}
            if "customer_reason" in (h.get("detail") or {})
            else h
            for h in state.get("history", [])
        ]
    elif collection == "payments":
        if state.get("token"):
            state["token"] = ERASED
    elif collection == "shipments":
        if isinstance(state.get("address"), dict):
            state["address"] = {
                **state["address"],
                **dict.fromkeys(("recipient", "line1", "city", "postal_code"), ERASED),
                "line2": None,
            }
    elif collection == "contacts":
        state["email"] = ""
        state["name"] = ""
        state["deliveries"] = {k: {**d, "mail": None} for k, d in (state.get("deliveries") or {}).items()}
    doc["state"] = state
    return doc


ORDER_DATABASE = "fulfil_order"  # where the orders are, whose first version names their customer


def _customer_of(first_version: dict[str, Any]) -> str | None:
    """The customer id in the ``OrderAccepted`` of an order's first version (its placement), if any."""
    for record in first_version.get("outbox") or []:
        if record.get("event_type") != "OrderAccepted":
            continue
        try:
            customer = json.loads(record.get("value", "")).get("customer") or {}
        except (ValueError, AttributeError):
            return None
        return str(customer["id"]) if isinstance(customer, dict) and customer.get("id") else None
    return None


def orders_of_customers(db: Any, customer_ids: Iterable[str]) -> dict[str, list[str]]:
    """Per customer, the orders they placed. The customer is in the ``OrderAccepted`` of the placement's outbox:
    version 1 of each order's document, found in ``orders_versions`` -- not from the head copies, which trail their
    versions and may be missing altogether (a head write lost in a crash), so every order is found. One scan of the
    versions (``v: 1``) for any number of customers: a rare operator command."""
    wanted = {c: set[str]() for c in customer_ids}
    if not wanted:
        return {}
    projection = {"key": 1, "outbox.event_type": 1, "outbox.value": 1}
    for doc in db["orders_versions"].find({"v": 1}, projection):
        values = [r.get("value", "") for r in doc.get("outbox") or []]
        if not any(c in v for c in wanted for v in values):  # a cheap test before parsing the JSON
            continue
        customer = _customer_of(doc)
        if customer in wanted:
            wanted[customer].add(str(doc.get("key") or str(doc["_id"]).rsplit("@", 1)[0]))
    return {c: sorted(found) for c, found in wanted.items()}


def customer_order_ids(db: Any, customer_id: str) -> list[str]:
    """The orders a customer placed (see :func:`orders_of_customers`)."""
    return orders_of_customers(db, [customer_id])[customer_id]


def versions_of(coll: Any, key: str) -> list[dict[str, Any]]:
    """Every stored version of ``key`` (``<key>@<v>``, numbered from 1 up), each read by its ``_id``."""
    out: list[dict[str, Any]] = []
    while (doc := coll.find_one({"_id": f"{key}@{len(out) + 1:012d}"})) is not None:
        out.append(doc)
    return out


def newest_of(head: dict[str, Any] | None, versions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest state of a document: its last version, or its head copy when that is as new (a head only ever
    trails its versions; it may also be missing)."""
    candidates = [d for d in (head, versions[-1] if versions else None) if d is not None]
    return max(candidates, key=lambda d: int(d.get("v") or 0)) if candidates else None


@dataclass
class ForgetPlan:
    customer_id: str
    order_ids: list[str]
    skipped: dict[str, str]  # order -> why it is left for now
    documents: dict[str, list[dict[str, Any]]]  # "db.collection" -> documents to rewrite (erased)

    def summary(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "orders": self.order_ids,
            "skipped": self.skipped,
            "documents": {k: len(v) for k, v in self.documents.items()},
        }


def plan_forget(
    client: Any,
    customer_id: str,
    *,
    now: datetime | None = None,
    settled_after: timedelta = FORGET_SETTLED_AFTER,
    order_ids: list[str] | None = None,
) -> ForgetPlan:
    """Find every document holding the customer's personal data; orders still in flight are left for later.

    An order's state is its newest version, not its head copy (which may trail, or be missing after a crash).
    ``order_ids``: the customer's orders when already looked up (:func:`orders_of_customers`)."""
    at = now or datetime.now(UTC)
    order_db = client[ORDER_DATABASE]
    if order_ids is None:
        order_ids = customer_order_ids(order_db, customer_id)
    skipped: dict[str, str] = {}
    ready: list[str] = []
    order_versions: dict[str, list[dict[str, Any]]] = {}
    for oid in order_ids:
        versions = order_versions[oid] = versions_of(order_db["orders_versions"], oid)
        newest = newest_of(order_db["orders"].find_one({"_id": oid}), versions) or {}
        state = newest.get("state") or {}
        terminal_at = state.get("terminal_at")
        if state.get("status") not in ("COMPLETED", "CANCELLED", "REJECTED") or not terminal_at:
            skipped[oid] = "still in flight: erase it once it has finished"
            continue
        ended = datetime.fromisoformat(str(terminal_at).replace("Z", "+00:00"))
        if at - ended < settled_after:
            skipped[oid] = f"finished less than {settled_after} ago: its last mails may still be going out"
            continue
        ready.append(oid)
    documents: dict[str, list[dict[str, Any]]] = {}
    for db_name, coll_name in PERSONAL_STORES:
        heads, versions = client[db_name][coll_name], client[db_name][f"{coll_name}_versions"]
        changed: list[dict[str, Any]] = []
        changed_versions: list[dict[str, Any]] = []
        for oid in ready:
            head = heads.find_one({"_id": oid})
            for doc in [head] if head is not None else []:
                erased = erase_document(coll_name, doc)
                if erased != doc:
                    changed.append(erased)
            is_orders = (db_name, coll_name) == (ORDER_DATABASE, "orders")
            mine = order_versions[oid] if is_orders else versions_of(versions, oid)
            for doc in mine:
                erased = erase_document(coll_name, doc)
                if erased != doc:
                    changed_versions.append(erased)
        if changed:
            documents[f"{db_name}.{coll_name}"] = changed
        if changed_versions:
            documents[f"{db_name}.{coll_name}_versions"] = changed_versions
    return ForgetPlan(customer_id, ready, skipped, documents)


def apply_forget(client: Any, plan: ForgetPlan) -> int:
    """Write the erased documents back by ``_id`` (in batches of 50); returns how many were rewritten."""
    written = 0
    for target, docs in plan.documents.items():
        db_name, coll_name = target.split(".", 1)
        for i in range(0, len(docs), 50):
            batch = docs[i : i + 50]
            client[db_name][coll_name].bulk_write([ReplaceOne({"_id": d["_id"]}, d) for d in batch], ordered=False)
            written += len(batch)
    return written


# ------------------------------------------------------------------ tombstones: revocations and erasures, durably

# A restore brings back what the backup held: keys revoked since are active again, customers erased since are back.
# So `keys revoke` and `forget` also record what they did here, in a database no backup holds and no restore drops
# (`fulfil restore` re-applies these after the documents are back); the audit log is a local file and may be gone.
TOMBSTONE_DATABASE = "fulfil_tombstones"
TOMBSTONES = "tombstones"
# A backup older than the topics' retention (7 days) cannot be restored (`fulfil restore` refuses it), and any
# backup that can be holds every older revocation and erasure already: tombstones are kept that long, with a margin.
TOMBSTONE_KEEP = timedelta(days=8)


def record_revocation(client: Any, *, key_id: str, storefront_id: str, at: datetime, keys_database: str) -> None:
    """A key was revoked (``_id`` = ``revoke:<key_id>``: one per key; never the key or its hash)."""
    doc = {
        "_id": f"revoke:{key_id}",
        "kind": "revoke",
        "key_id": key_id,
        "storefront_id": storefront_id,
        "keys_database": keys_database,
        "at": at,
        "by": operator(),
    }
    _record(client, doc)


def _record(client: Any, doc: dict[str, Any]) -> None:
    coll = client[TOMBSTONE_DATABASE][TOMBSTONES]
    coll.replace_one({"_id": doc["_id"]}, doc, upsert=True)
    coll.delete_many({"at": {"$lt": doc["at"] - TOMBSTONE_KEEP}})  # the customer ids they hold go with them


def record_erasure(client: Any, *, customer_id: str, orders: list[str], at: datetime) -> None:
    """A customer was erased (``_id`` = ``forget:<customer>``; a later run replaces it, with its own time)."""
    doc: dict[str, Any] = {"_id": f"forget:{customer_id}", "kind": "forget", "customer_id": customer_id}
    doc |= {"orders": orders, "at": at, "by": operator()}
    _record(client, doc)


def tombstones(client: Any) -> list[dict[str, Any]]:
    """Every recorded revocation and erasure, oldest first."""
    found = list(client[TOMBSTONE_DATABASE][TOMBSTONES].find({}))
    return sorted(found, key=lambda d: _aware(d.get("at")))


def _aware(at: Any) -> datetime:
    if not isinstance(at, datetime):
        return datetime(1970, 1, 1, tzinfo=UTC)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def revoke_again(client: Any, revocations: Iterable[dict[str, Any]], *, keys_database: str) -> list[str]:
    """Set ``revoked_at`` again on each revoked key a restore made active again (in the database the revocation
    names, else ``keys_database``); returns the key ids it changed."""
    changed: list[str] = []
    for tomb in revocations:
        key_id = str(tomb["key_id"])
        coll = client[str(tomb.get("keys_database") or keys_database)][keys.COLLECTION]
        doc = coll.find_one({"key_id": key_id})
        if doc is not None and not doc.get("revoked_at"):
            coll.update_one({"_id": doc["_id"]}, {"$set": {"revoked_at": tomb.get("at") or datetime.now(UTC)}})
            changed.append(key_id)
    return changed
