"""Console logins: the browser holds a random session id, never the operator's key.

A login stores a session in the store: its id hashed (a copy of the collection lets no one in), the hash of the key
it was opened with, a CSRF token and an expiry. Each request with the cookie finds the session and resolves that key
again, so a revoked key ends its sessions within the key cache's TTL. Logout deletes the session: a copied cookie is
worthless from then on. The session id is not an API key; the services and the console's API do not take it in
``X-API-Key``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from shared.keys import hash_token

COLLECTION = "console_sessions"
LIFETIME = timedelta(hours=12)
MAX_TOKEN = 256


class SessionCollection(Protocol):
    async def find_one(self, filter: Any, /) -> Any: ...
    async def insert_one(self, document: Any, /) -> Any: ...
    async def delete_one(self, filter: Any, /) -> Any: ...
    async def delete_many(self, filter: Any, /) -> Any: ...


@dataclass(frozen=True)
class Session:
    key_digest: str  # the hash of the operator key the session was opened with
    csrf: str  # what every state-changing form of this session must carry back
    expires_at: datetime


class Sessions:
    """Open, find and end console sessions (see the module docstring)."""

    def __init__(self, collection: SessionCollection, *, lifetime: timedelta = LIFETIME) -> None:
        self.collection = collection
        self.lifetime = lifetime

    async def open(self, key_digest: str) -> tuple[str, Session]:
        """A new session for the key hashed ``key_digest``: the id for the cookie, and the session."""
        now = datetime.now(UTC)
        await self.collection.delete_many({"expires_at": {"$lt": now}})  # logins that were never logged out
        token = secrets.token_urlsafe(32)
        session = Session(key_digest=key_digest, csrf=secrets.token_urlsafe(32), expires_at=now + self.lifetime)
        await self.collection.insert_one(
            {
                "_id": hash_token(token),
                "key": key_digest,
                "csrf": session.csrf,
                "created_at": now,
                "expires_at": session.expires_at,
            }
        )
        return token, session

    async def find(self, token: str) -> Session | None:
        """The live session a cookie names, or None (unknown, ended or expired)."""
        if not token or len(token) > MAX_TOKEN:
            return None
        doc = await self.collection.find_one({"_id": hash_token(token)})
        if doc is None:
            return None
        expires_at = doc["expires_at"]
        if expires_at.tzinfo is None:  # a store that hands back naive UTC datetimes
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= datetime.now(UTC):
            await self.collection.delete_one({"_id": doc["_id"]})
            return None
        return Session(key_digest=doc["key"], csrf=doc["csrf"], expires_at=expires_at)

    async def end(self, token: str) -> None:
        """Logout: the session is gone, whoever holds a copy of its cookie."""
        if token and len(token) <= MAX_TOKEN:
            await self.collection.delete_one({"_id": hash_token(token)})
