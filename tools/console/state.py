"""What the console's pages read: the fold fed by the Kafka tail, the KPI book, and the operator key store.

Pages are drawn from memory (the fold), never from the services' databases; only an order's page reads Kafka (its
own records, by position) and Jaeger (its trace).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from fastapi import HTTPException, Request
from pymongo import AsyncMongoClient

from shared import topics
from shared.events.storefront import redact_card_numbers
from shared.keys import COLLECTION as KEYS_COLLECTION
from shared.keys import Caller, KeyStore, hash_token
from tools.console import charts
from tools.console.fold import STAGES, TERMINAL, SagaFold, parcel_view, status_history
from tools.console.kpis import Kpis
from tools.console.sessions import COLLECTION as SESSIONS_COLLECTION
from tools.console.sessions import Sessions
from tools.console.settings import ConsoleSettings
from tools.console.stream import Tail, read_positions
from tools.ops import topic_log
from tools.ops.trace import fetch_trace, waterfall

COOKIE = "fulfil_console_session"
CSRF_FIELD = "csrf"  # the hidden field of every form that changes something (or the X-CSRF-Token header)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


T = TypeVar("T")


class LoginNeeded(Exception):
    """No key, or a key nobody issued: a browser goes to the login form, an API client gets 401."""


class Console:
    """What the pages read: the fold, the tail that feeds it, the KPI book, and the key store."""

    def __init__(
        self, settings: ConsoleSettings, *, fold: SagaFold | None = None, sessions: Sessions | None = None
    ) -> None:
        self.settings = settings
        self.fold = fold or SagaFold()
        self.kpis = Kpis()
        self.tail = Tail(settings, self.fold, kpi=self.kpis.add)
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongodb_url, serverSelectionTimeoutMS=3000
        )
        self.keys = KeyStore(
            static_keys=settings.operator_keys(),
            lookup=self.mongo[settings.api_keys_database][KEYS_COLLECTION],
            ttl=settings.api_key_cache_seconds,
        )
        self.sessions = sessions or Sessions(self.mongo[settings.api_keys_database][SESSIONS_COLLECTION])

    # ------------------------------------------------------------------ board

    def board(self, now: float | None = None) -> dict[str, Any]:
        """Everything the board shows: O(stages + minutes), whatever the number of orders."""
        now = time.time() if now is None else now
        fold, offsets = self.fold, self.tail.offsets
        in_flight = len(fold.in_flight)
        stuck_after = self.settings.stuck_after_seconds
        per_minute = fold.throughput(now=now, minutes=60)
        stages = {s: fold.stage_counts.get(s, 0) for s in STAGES}
        finished = {s: fold.stage_counts.get(s, 0) for s in TERMINAL}
        recent = [fold.orders[o] for o in reversed(fold.recent) if o in fold.orders][:15]
        return {
            "at": datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="seconds"),
            "caught_up": self.tail.caught_up,
            "records": fold.records,
            "orders": len(fold.orders),
            "in_flight": in_flight,
            "stuck": fold.stuck(now=now, older_than=stuck_after),
            "stuck_after_minutes": round(stuck_after / 60, 1),
            "stages": stages,
            "finished": finished,
            "completed_last_minute": per_minute[-2][1] if len(per_minute) > 1 else 0,
            "throughput": per_minute,
            "dead_letters": offsets.dead_letters,
            "dead_letters_total": sum(offsets.dead_letters.values()),
            "lag": offsets.lag,
            "lag_total": sum(offsets.lag.values()),
            "offsets_error": offsets.error,
            "oldest": [_order_row(o, now, stuck_after) for o in fold.oldest_in_flight(10)],
            "recent": [_order_row(o, now, stuck_after) for o in recent],
            "kpi": self.kpis.tiles(),
        }

    def board_charts(self, board: dict[str, Any]) -> dict[str, charts.Figure]:
        figs = {
            "stages": charts.bar(
                "orders per stage",
                [*board["stages"], *board["finished"]],
                [*board["stages"].values(), *board["finished"].values()],
            ),
            "throughput": charts.time_bars("orders completed per minute", board["throughput"], y="orders"),
            "lag": charts.bar("consumer lag per service", list(board["lag"]), list(board["lag"].values())),
            "dead_letters": charts.bar(
                "dead letters per topic",
                [t.removesuffix(topics.DLQ_SUFFIX) for t in board["dead_letters"]],
                list(board["dead_letters"].values()),
                color=charts.COLORS["bad"],
            ),
        }
        figs.update(self.kpis.charts())
        return figs

    # ------------------------------------------------------------------ one order

    async def order(self, order_id: str) -> dict[str, Any] | None:
        state = self.fold.orders.get(order_id)
        if state is None:
            return None
        records = await read_positions(self.settings, list(state.positions))
        events = topic_log.timeline(records)
        trace: dict[str, Any] = {"id": state.trace_id, "rows": [], "error": None, "link": None}
        if state.trace_id:
            if self.settings.jaeger_ui_url:
                trace["link"] = f"{self.settings.jaeger_ui_url.rstrip('/')}/trace/{state.trace_id}"
            try:
                raw = await asyncio.to_thread(fetch_trace, self.settings.jaeger_query_url, state.trace_id)
                trace["rows"] = waterfall(raw)
            except (httpx.HTTPError, LookupError, KeyError, ValueError) as e:
                trace["error"] = str(e) or type(e).__name__
        now = time.time()
        return {
            "order": _order_row(state, now, self.settings.stuck_after_seconds),
            "events": events,
            "history": status_history(events),
            "parcel": parcel_view((r.topic, r.json()) for r in records),
            "trace": trace,
            "figure": charts.waterfall(trace["rows"]) if trace["rows"] else None,
        }

    # ------------------------------------------------------------------ keys

    async def caller(self, request: Request) -> Caller:
        """The caller of a request: an API client by its key (``X-API-Key``, or ``Authorization: Bearer``), a
        browser by its login session -- whose requests that change something must carry the session's CSRF token
        (a form field, or the ``X-CSRF-Token`` header). The page's forms read the token from ``request.state``."""
        request.state.csrf = ""
        key = presented_key(request)
        if key is not None:
            return await self.caller_of(key)
        session = await self._checked(self.sessions.find(request.cookies.get(COOKIE, "")))
        if session is None:
            raise LoginNeeded
        caller = await self._operator(self.keys.resolve_digest(session.key_digest))
        if request.method not in SAFE_METHODS:
            sent = request.headers.get("x-csrf-token") or str((await request.form()).get(CSRF_FIELD) or "")
            if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
                raise HTTPException(403, "this form is stale or did not come from the console: reload the page")
        request.state.csrf = session.csrf
        return caller

    async def caller_of(self, token: str) -> Caller:
        """The operator holding the key ``token`` (401 for no or an unknown key, 403 for a storefront's)."""
        if not token or len(token) > 256 or not all(0x21 <= ord(c) <= 0x7E for c in token):
            raise LoginNeeded
        return await self._operator(self.keys.resolve(token.encode()))

    async def log_in(self, key: str) -> str:
        """A new session for the operator key ``key`` (checked first): the id the login cookie holds."""
        await self.caller_of(key)
        token, _ = await self._checked(self.sessions.open(hash_token(key)))
        return token

    async def log_out(self, request: Request) -> None:
        await self._checked(self.sessions.end(request.cookies.get(COOKIE, "")))

    async def _operator(self, resolving: Awaitable[Caller | None]) -> Caller:
        caller = await self._checked(resolving)
        if caller is None:  # an unknown or revoked key: a session opened with it ends here too
            raise LoginNeeded
        if not caller.operator:
            raise HTTPException(403, "the console needs an operator key; this is a storefront key")
        return caller

    @staticmethod
    async def _checked(call: Awaitable[T]) -> T:
        try:
            return await call
        except HTTPException:
            raise
        except Exception:
            raise HTTPException(503, "API keys cannot be checked right now; retry") from None


def presented_key(request: Request) -> str | None:
    """The key an API client sends (``X-API-Key``, or ``Authorization: Bearer`` as Prometheus scrapes), if any."""
    key = request.headers.get("x-api-key")
    if key is not None:
        return key
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def _order_row(o: Any, now: float, stuck_after: float) -> dict[str, Any]:
    in_flight = bool(o.stage) and o.stage not in TERMINAL
    age = now - o.started_at
    return {
        "order_id": o.order_id,
        "shown_id": redact_card_numbers(o.order_id),
        "stage": o.stage or "(seen)",
        "reason": o.reason,
        "in_flight": in_flight,
        "stuck": in_flight and age > stuck_after,
        "age_s": round(age, 1),
        "age": _age(age),
        "records": len(o.positions),
        "started_at": datetime.fromtimestamp(o.started_at, tz=UTC).isoformat(timespec="seconds"),
        "trace_id": o.trace_id,
    }


def _age(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))
