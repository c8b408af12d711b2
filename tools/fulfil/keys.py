"""``fulfil keys``: API keys of storefronts and operators, issued, listed and revoked."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from tools.fulfil import term
from tools.fulfil.term import Json, MongoUrl, Yes, confirm, console, fail, show
from tools.ops import audit

app = typer.Typer(name="keys", help="API keys of storefronts and operators (stored hashed).", no_args_is_help=True)

KeysDb = Annotated[str, typer.Option("--database", envvar="API_KEYS_DATABASE", help="where api_keys lives")]


@app.command("create")
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
    # imported here: fastapi, pydantic and the event contracts cost ~0.9 s of CPU at start-up of every fulfil command
    from pydantic import TypeAdapter

    from shared import keys
    from shared.events.storefront import StorefrontId

    if role not in ("storefront", "operator"):
        fail("--role is storefront or operator")
    try:
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
        term.mongo(mongodb_url)[database][keys.COLLECTION].insert_one(doc)
    except Exception as e:
        fail(f"could not store the key: {type(e).__name__}: {e}")
    # Who issued which key when: its public id, never the token or its hash.
    audit.write(
        "keys create", audit.AUDIT_LOG, key_id=doc["key_id"], storefront=storefront, role=role, database=database
    )
    if as_json:
        console.print_json(data={"key_id": doc["key_id"], "storefront": storefront, "role": role, "token": token})
        return
    console.print(f"key {doc['key_id']} for {storefront} ({role}). The token, shown this once:")
    print(token)


@app.command("list")
def keys_list(
    mongodb_url: MongoUrl = None,
    database: KeysDb = "fulfil_order",
    as_json: Json = False,
) -> None:
    """Every issued key: id, storefront, role, when and by whom, revoked or not (never the token)."""
    # imported here: fastapi costs ~0.7 s of CPU at start-up of every fulfil command
    from shared import keys

    try:
        docs = list(term.mongo(mongodb_url)[database][keys.COLLECTION].find({}, {"_id": 0}).sort("created_at", 1))
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
    show(table)


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id as `keys list` shows it")],
    mongodb_url: MongoUrl = None,
    database: KeysDb = "fulfil_order",
    yes: Yes = False,
) -> None:
    """Revoke a key: refused from then on (within the services' key cache, 10 s). The revocation is also recorded
    as a tombstone that `fulfil restore` re-applies, so restoring an older backup cannot bring the key back."""
    # imported here: pymongo and fastapi cost ~1 s of CPU at start-up of every fulfil command
    from shared import keys
    from tools.ops import privacy

    client = term.mongo(mongodb_url)
    coll = client[database][keys.COLLECTION]
    doc = coll.find_one({"key_id": key_id})
    if doc is None:
        fail(f"no key {key_id}")
        return
    storefront = str(doc.get("storefront_id"))

    def tombstone(at: datetime) -> None:
        try:
            privacy.record_revocation(client, key_id=key_id, storefront_id=storefront, at=at, keys_database=database)
        except Exception as e:
            fail(f"{key_id} is revoked, but its tombstone was not written ({type(e).__name__}: {e}): run it again")

    if doc.get("revoked_at"):
        tombstone(doc["revoked_at"])  # an earlier run whose tombstone failed: write it now (idempotent)
        console.print(f"{key_id} was revoked at {doc['revoked_at']}")
        return
    confirm(yes, f"Revoke {key_id} of {storefront} ({doc['role']})?")
    at = datetime.now(UTC)
    coll.update_one({"_id": doc["_id"]}, {"$set": {"revoked_at": at}})
    audit.write(
        "keys revoke", audit.AUDIT_LOG, key_id=key_id, storefront=storefront, role=doc.get("role"), database=database
    )
    tombstone(at)
    console.print(f"revoked {key_id}")
