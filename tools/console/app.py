"""The ops console: a FastAPI app with Jinja2 pages, htmx polling for live updates, plotly.js charts.

Composition root: settings, the fold fed by the Kafka tail, the KPI book, the key store, the routes. Pages are
drawn from memory (the fold), never from the services' databases; only the order page reads Kafka (its own
records, by position) and Jaeger (its trace), and the dead-letter page reads the dead-letter topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from aiokafka.errors import KafkaError
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pymongo import AsyncMongoClient
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import topics
from shared.events.storefront import redact_card_numbers
from shared.keys import COLLECTION as KEYS_COLLECTION
from shared.keys import Caller, KeyStore
from tools.console import charts
from tools.console.fold import STAGES, TERMINAL, SagaFold, parcel_view, status_history
from tools.console.kpis import Kpis
from tools.console.settings import ConsoleSettings
from tools.console.stream import Tail, read_positions
from tools.ops import topic_log
from tools.ops.trace import fetch_trace, waterfall

HERE = Path(__file__).resolve().parent
COOKIE = "fulfil_console_key"
ORDER_ID = r"^[A-Za-z0-9._-]{1,64}$"
DLQ_PAGE = 200  # newest dead letters shown; filter by order or error class for the rest
RECORD_ID = re.compile(r"^[a-z_.-]+\.dlq:\d{1,5}:\d{1,19}$")
templates = Jinja2Templates(directory=HERE / "templates")


class LoginNeeded(Exception):
    """No key, or a key nobody issued: a browser goes to the login form, an API client gets 401."""


@cache
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


class Console:
    """What the pages read: the fold, the tail that feeds it, the KPI book, and the key store."""

    def __init__(self, settings: ConsoleSettings, *, fold: SagaFold | None = None) -> None:
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
        """The caller of a request, by its X-API-Key header or else its login cookie."""
        return await self.caller_of(request.headers.get("x-api-key") or request.cookies.get(COOKIE) or "")

    async def caller_of(self, token: str) -> Caller:
        if not token or len(token) > 256 or not all(0x21 <= ord(c) <= 0x7E for c in token):
            raise LoginNeeded
        try:
            caller = await self.keys.resolve(token.encode())
        except Exception:
            raise HTTPException(503, "API keys cannot be checked right now; retry") from None
        if caller is None:
            raise LoginNeeded
        if not caller.operator:
            raise HTTPException(403, "the console needs an operator key; this is a storefront key")
        return caller


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


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "") and "hx-request" not in request.headers


async def operator(request: Request) -> Caller:
    """The caller, who must hold an operator key (header or login cookie)."""
    console: Console = request.app.state.console
    return await console.caller(request)


Operator = Annotated[Caller, Depends(operator)]
OrderId = Annotated[str, PathParam(pattern=ORDER_ID, description="an order id")]
OrderFilter = Annotated[str, Query(pattern=r"^[A-Za-z0-9._-]{0,64}$")]  # empty: any order
ErrorFilter = Annotated[str, Query(pattern=r"^[A-Za-z]{0,64}$")]
SelectedIds = Annotated[list[str], Form(max_length=500)]
Confirmed = Annotated[str, Form()]  # "yes" acts; anything else shows the confirmation page


def create_app(
    settings: ConsoleSettings | None = None, *, console: Console | None = None, tail: bool = True
) -> FastAPI:
    """The console app; ``tail=False`` leaves Kafka alone (the benchmark feeds the fold itself)."""
    settings = settings or ConsoleSettings()
    con = console or Console(settings)
    registry = CollectorRegistry()
    con.kpis.register(registry)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = []
        if tail:
            tasks = [
                asyncio.create_task(con.tail.run()),
                asyncio.create_task(con.tail.poll_offsets()),
                asyncio.create_task(con.kpis.refresh_forever(ready=lambda: con.tail.caught_up)),
            ]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await con.mongo.close()

    app = FastAPI(title="fulfil ops console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.console = con

    @app.exception_handler(LoginNeeded)
    async def login_needed(request: Request, _: LoginNeeded) -> Response:
        if _wants_html(request):
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(here)}", status_code=303)
        return JSONResponse(
            {"detail": "missing or unknown operator key (X-API-Key header or log in)"},
            status_code=401,
            headers={"WWW-Authenticate": "ApiKey"},
        )

    @app.exception_handler(KafkaError)
    async def kafka_down(request: Request, exc: KafkaError) -> Response:
        """A page that reads Kafka (order, dead letters) while the broker does not answer: 503, say so."""
        detail = f"Kafka did not answer ({type(exc).__name__}); retry in a moment"
        return await http_error(request, StarletteHTTPException(503, detail))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _wants_html(request):
            return templates.TemplateResponse(
                request, "error.html", {"status": exc.status_code, "detail": exc.detail}, status_code=exc.status_code
            )
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    # ------------------------------------------------------------------ open: probes, metrics, assets, login

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "service": "console", "caught_up": con.tail.caught_up}

    @app.get("/metrics")
    async def metrics() -> Response:
        body = await asyncio.to_thread(generate_latest, registry)  # the KPI collector may wait for the worker
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/static/htmx.min.js")
    async def htmx_js() -> Response:
        body = (HERE / "static" / "htmx-2.0.11.min.js").read_bytes()
        return Response(body, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/static/plotly.min.js")
    async def plotly_static() -> Response:
        js = await asyncio.to_thread(plotly_js)
        return Response(js, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/") -> Response:
        return templates.TemplateResponse(request, "login.html", {"next": _local(next), "error": None})

    @app.post("/login", response_class=HTMLResponse)
    async def login(
        request: Request, key: Annotated[str, Form(max_length=256)], next: Annotated[str, Form()] = "/"
    ) -> Response:
        try:
            await con.caller_of(key.strip())
        except LoginNeeded:
            ctx = {"next": _local(next), "error": "unknown key"}
            return templates.TemplateResponse(request, "login.html", ctx, status_code=401)
        response = RedirectResponse(_local(next), status_code=303)
        response.set_cookie(COOKIE, key.strip(), httponly=True, samesite="strict", max_age=12 * 3600)
        return response

    @app.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    # ------------------------------------------------------------------ board

    def board_context(request: Request) -> dict[str, Any]:
        board = con.board()
        return {"b": board, "figures": con.board_charts(board), "refresh": settings.refresh_seconds}

    @app.get("/", response_class=HTMLResponse)
    async def board_page(request: Request, _: Operator) -> Response:
        return templates.TemplateResponse(request, "board.html", board_context(request))

    @app.get("/board/fragment", response_class=HTMLResponse)
    async def board_fragment(request: Request, _: Operator) -> Response:
        return templates.TemplateResponse(request, "_board.html", board_context(request))

    @app.get("/api/board")
    async def board_json(_: Operator) -> dict[str, Any]:
        return con.board()

    # ------------------------------------------------------------------ orders

    @app.get("/orders")
    async def find_order(_: Operator, order_id: Annotated[str, Query(pattern=ORDER_ID)]) -> Response:
        return RedirectResponse(f"/orders/{order_id}", status_code=303)

    async def order_or_404(order_id: str) -> dict[str, Any]:
        view = await con.order(order_id)
        if view is None:
            raise HTTPException(404, f"no record of order {redact_card_numbers(order_id)} on any topic")
        return view

    @app.get("/orders/{order_id}", response_class=HTMLResponse)
    async def order_page(request: Request, _: Operator, order_id: OrderId) -> Response:
        ctx = {"o": await order_or_404(order_id), "refresh": settings.refresh_seconds}
        return templates.TemplateResponse(request, "order.html", ctx)

    @app.get("/orders/{order_id}/fragment", response_class=HTMLResponse)
    async def order_fragment(request: Request, _: Operator, order_id: OrderId) -> Response:
        return templates.TemplateResponse(request, "_order.html", {"o": await order_or_404(order_id)})

    @app.get("/api/orders/{order_id}")
    async def order_json(_: Operator, order_id: OrderId) -> dict[str, Any]:
        return await order_or_404(order_id)

    # ------------------------------------------------------------------ dead letters

    async def masked_letters(order_id: str, error: str) -> dict[str, Any]:
        """The newest dead letters (masked), optionally of one order or error class, and how many there are."""
        found = await topic_log.dead_letters(settings, order_id=order_id or None, error=error or None)
        found.sort(key=lambda d: d.rec.timestamp, reverse=True)
        return {
            "letters": [topic_log.masked_dead_letter(d.full()) for d in found[:DLQ_PAGE]],
            "total": len(found),
            "shown": min(len(found), DLQ_PAGE),
            "order_id": order_id or "",
            "error": error or "",
        }

    @app.get("/dead-letters", response_class=HTMLResponse)
    async def dead_letters_page(
        request: Request, _: Operator, order_id: OrderFilter = "", error: ErrorFilter = "", done: str = ""
    ) -> Response:
        ctx = {**await masked_letters(order_id, error), "done": done[:200], "refresh": settings.refresh_seconds}
        return templates.TemplateResponse(request, "dead_letters.html", ctx)

    @app.get("/dead-letters/fragment", response_class=HTMLResponse)
    async def dead_letters_fragment(
        request: Request, _: Operator, order_id: OrderFilter = "", error: ErrorFilter = ""
    ) -> Response:
        return templates.TemplateResponse(request, "_dead_letters.html", await masked_letters(order_id, error))

    def checked_ids(ids: list[str]) -> set[str]:
        bad = [i for i in ids if not RECORD_ID.fullmatch(i)]
        if not ids or bad:
            raise HTTPException(
                422,
                "select at least one record; ids look like TOPIC.dlq:PARTITION:OFFSET"
                if not bad
                else f"not a dead-letter record id: {bad[0][:80]!r} (TOPIC.dlq:PARTITION:OFFSET)",
            )
        return set(ids)

    async def selected(ids: list[str]) -> tuple[set[str], list[topic_log.DeadLetter]]:
        """The dead letters a form names, checked; 404 when none of them exists any more."""
        chosen = checked_ids(ids)
        found = await topic_log.dead_letters(settings, ids=chosen)
        if not found:
            raise HTTPException(404, "none of the selected dead letters exists any more")
        return chosen, found

    def confirmation(
        request: Request,
        action: str,
        chosen: set[str],
        found: list[topic_log.DeadLetter],
        *,
        to: Callable[[topic_log.DeadLetter], str],
        kept: list[str],
    ) -> Response:
        """The page that lists what ``action`` would do to each record; only its "Yes" button acts."""
        rows = [topic_log.masked_dead_letter(d.full()) | {"to": to(d)} for d in found]
        ctx = {"action": action, "rows": rows, "kept": kept, "ids": sorted(chosen)}
        return templates.TemplateResponse(request, "confirm.html", ctx)

    def by(caller: Caller) -> dict[str, Any]:
        """The audit entry's source for a console action: the operator's key id (its "user" runs the console)."""
        return {"via": "console", "key_id": caller.key_id}

    def done(message: str) -> Response:
        return RedirectResponse(f"/dead-letters?done={quote(message)}", status_code=303)

    @app.post("/dead-letters/redrive", response_class=HTMLResponse)
    async def redrive(request: Request, caller: Operator, ids: SelectedIds, confirm: Confirmed = "") -> Response:
        """Without ``confirm=yes`` only shows what would be redriven; with it, redrives and audits."""
        chosen, found = await selected(ids)
        if confirm != "yes":
            return confirmation(request, "redrive", chosen, found, to=lambda d: d.original_topic, kept=[])
        sent = await topic_log.redrive(settings, found, audit_log=settings.audit_log, **by(caller))
        return done(f"redriven: {sent}")

    @app.post("/dead-letters/purge", response_class=HTMLResponse)
    async def purge(request: Request, caller: Operator, ids: SelectedIds, confirm: Confirmed = "") -> Response:
        """Without ``confirm=yes`` shows the purge plan (what Kafka can delete, what must stay); with it, purges."""
        chosen, found = await selected(ids)
        plan, kept = await topic_log.purge_plan(settings, found)
        if confirm != "yes":
            return confirmation(request, "purge", chosen, found, to=lambda _: "(deleted)", kept=kept)
        purged = await topic_log.purge(settings, found, plan, kept, audit_log=settings.audit_log, **by(caller))
        return done(f"purged: {purged}")

    return app


def _local(target: str) -> str:
    """Only a path on this site is a place to go back to after login (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"
