"""API keys: who is calling the HTTP APIs, checked before a request's body is read.

Two kinds of key:

* **static operator keys** from ``API_KEYS`` (the environment), compared in constant time;
* **issued keys** (``fulfil keys create``): a random 32-byte token shown once, stored only as its SHA-256 in the
  ``api_keys`` collection (``_id`` = the hash, so a lookup is one ``_id`` read, never a scan). Each names its
  storefront and role (``storefront`` or ``operator``); a revoked key keeps its document with ``revoked_at``.

A token has 256 bits of entropy, so a plain SHA-256 is enough (no salt or slow hash: nothing to brute-force).
:class:`KeyGuard` is pure ASGI middleware: it answers 401 from the headers alone, then 413 for a body over the
cap, before FastAPI parses anything. Routes read the caller with the :data:`CallerDep` dependency.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, HTTPException, Request

Role = Literal["storefront", "operator"]
TOKEN_PREFIX = "fk_"  # noqa: S105  (a prefix that lets secret scanners spot leaked keys)
HEADER = b"x-api-key"
COLLECTION = "api_keys"
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Caller:
    """Who made a request: a storefront (sees only its own orders) or an operator (sees everything)."""

    role: Role
    storefront_id: str | None = None
    key_id: str = ""

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    def owns(self, storefront_id: str | None) -> bool:
        """May this caller see an order placed by ``storefront_id``?"""
        return self.operator or (storefront_id is not None and storefront_id == self.storefront_id)


ANONYMOUS = Caller(role="operator", key_id="anonymous")  # no key, keys not required (development only)


def new_token() -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def hash_token(token: bytes | str) -> str:
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()


def key_document(*, token: str, storefront_id: str, role: Role, created_by: str) -> dict[str, Any]:
    """What ``api_keys`` stores for a new key: its hash, a short public id, owner and role; never the token."""
    digest = hash_token(token)
    return {
        "_id": digest,
        "key_id": "key_" + digest[:10],
        "storefront_id": storefront_id,
        "role": role,
        "hint": token[:7] + "...",
        "created_at": datetime.now(UTC),
        "created_by": created_by,
        "revoked_at": None,
    }


class KeyLookup(Protocol):
    async def find_one(self, filter: Any, /) -> Mapping[str, Any] | None: ...


class KeyStore:
    """Resolves a presented key to a :class:`Caller`, or None. Lookups are cached for ``ttl`` seconds (hits and
    misses alike, so a flood of wrong keys costs the store nothing): a revoked key stops working within ``ttl``."""

    def __init__(self, *, static_keys: frozenset[str], lookup: KeyLookup | None, ttl: float = 10.0) -> None:
        self._static = [hash_token(k) for k in static_keys]
        self._lookup = lookup
        self._ttl = ttl
        self._cache: OrderedDict[str, tuple[float, Caller | None]] = OrderedDict()

    async def resolve(self, token: bytes) -> Caller | None:
        return await self.resolve_digest(hash_token(token))

    async def resolve_digest(self, digest: str) -> Caller | None:
        """As :meth:`resolve`, for a key known by its hash only (a console session keeps no key)."""
        if any(hmac.compare_digest(digest, s) for s in self._static):
            return Caller(role="operator", key_id="static")
        if self._lookup is None:
            return None
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        doc = await self._lookup.find_one({"_id": digest})
        caller = None
        if doc is not None and not doc.get("revoked_at") and doc.get("role") in ("storefront", "operator"):
            caller = Caller(role=doc["role"], storefront_id=doc.get("storefront_id"), key_id=str(doc.get("key_id")))
        self._cache[digest] = (time.monotonic() + self._ttl, caller)
        self._cache.move_to_end(digest)
        while len(self._cache) > 10_000:
            self._cache.popitem(last=False)
        return caller


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return bytes(v)
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"ApiKey"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class KeyGuard:
    """ASGI middleware: the key (401), then the body's size (413), before the application reads anything."""

    def __init__(
        self, app: ASGIApp, *, keys: KeyStore, required: bool, max_body_bytes: int, open_paths: frozenset[str]
    ) -> None:
        self.app = app
        self.keys = keys
        self.required = required
        self.max_body_bytes = max_body_bytes
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        caller = await self._caller(scope, send)
        if caller is None:
            return
        scope["fulfil.caller"] = caller
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            body = await self._read_capped(scope, receive, send)
            if body is None:
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _caller(self, scope: Scope, send: Send) -> Caller | None:
        raw = _header(scope, HEADER)
        if raw is None or raw == b"":
            if self.required:
                await _answer(send, 401, "missing or unknown X-API-Key")
                return None
            return ANONYMOUS
        # A key is printable ASCII; anything else (a non-ASCII byte, a control character) is simply wrong.
        if len(raw) > 256 or not all(0x21 <= b <= 0x7E for b in raw):
            await _answer(send, 401, "missing or unknown X-API-Key")
            return None
        try:
            caller = await self.keys.resolve(raw)
        except Exception:
            await _answer(send, 503, "API keys cannot be checked right now; retry")
            return None
        if caller is None:
            await _answer(send, 401, "missing or unknown X-API-Key")
        return caller

    async def _read_capped(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        too_large = f"request body larger than {self.max_body_bytes} bytes"
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _answer(send, 413 if declared.isdigit() else 400, too_large if declared.isdigit() else "bad length")
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:  # chunked upload without a length: stop reading at the cap
                await _answer(send, 413, too_large)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, original: Receive) -> Receive:
    """The body read already, then the client's own messages (a disconnect) as they come."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await original()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def caller_of(request: Request) -> Caller:
    """The caller :class:`KeyGuard` identified (an app without the guard, e.g. a unit test, is anonymous)."""
    caller = request.scope.get("fulfil.caller")
    return caller if isinstance(caller, Caller) else ANONYMOUS


def require_operator(request: Request) -> Caller:
    caller = caller_of(request)
    if not caller.operator:
        raise HTTPException(status_code=403, detail="this needs an operator key")
    return caller


CallerDep = Annotated[Caller, Depends(caller_of)]
OperatorDep = Annotated[Caller, Depends(require_operator)]
