"""The console's routes, one router per concern: open (probes, metrics, assets, login), board, orders, dead letters.

Each handler takes what it reads through ``Depends``: the ``Console`` and settings that ``create_app`` puts on
``app.state``, and the caller, who must hold an operator key. The error handlers answer a browser with a page and
an API client with JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Callable, Coroutine
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.events.storefront import redact_card_numbers
from shared.keys import Caller
from tools.console.sessions import LIFETIME
from tools.console.settings import ConsoleSettings
from tools.console.state import COOKIE, Console, LoginNeeded, presented_key
from tools.ops import topic_log

HERE = Path(__file__).resolve().parent
ORDER_ID = r"^[A-Za-z0-9._-]{1,64}$"
DLQ_PAGE = 200  # newest dead letters shown; filter by order or error class for the rest
RECORD_ID = re.compile(r"^[a-z_.-]+\.dlq:\d{1,5}:\d{1,19}$")
templates = Jinja2Templates(directory=HERE / "templates")


@cache
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def _settings(request: Request) -> ConsoleSettings:
    settings: ConsoleSettings = request.app.state.settings
    return settings


def _registry(request: Request) -> CollectorRegistry:
    registry: CollectorRegistry = request.app.state.registry
    return registry


async def operator(request: Request) -> Caller:
    """The caller, who must hold an operator key (header or login cookie)."""
    return await _console(request).caller(request)


ConsoleDep = Annotated[Console, Depends(_console)]
SettingsDep = Annotated[ConsoleSettings, Depends(_settings)]
Operator = Annotated[Caller, Depends(operator)]
OrderId = Annotated[str, PathParam(pattern=ORDER_ID, description="an order id")]
OrderFilter = Annotated[str, Query(pattern=r"^[A-Za-z0-9._-]{0,64}$")]  # empty: any order
ErrorFilter = Annotated[str, Query(pattern=r"^[A-Za-z]{0,64}$")]
SelectedIds = Annotated[list[str], Form(max_length=500)]
Confirmed = Annotated[str, Form()]  # "yes" acts; anything else shows the confirmation page


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "") and "hx-request" not in request.headers


def _local(target: str) -> str:
    """Only a path on this site is a place to go back to after login (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


# ---------------------------------------------------------------------- errors


async def login_needed(request: Request, _: LoginNeeded) -> Response:
    """No operator key: a browser goes to the login form, an API client gets 401."""
    if _wants_html(request):
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(here)}", status_code=303)
    return JSONResponse(
        {"detail": "missing or unknown operator key (X-API-Key header or log in)"},
        status_code=401,
        headers={"WWW-Authenticate": "ApiKey"},
    )


async def kafka_down(request: Request, exc: KafkaError) -> Response:
    """A page that reads Kafka (order, dead letters) while the broker does not answer: 503, say so."""
    detail = f"Kafka did not answer ({type(exc).__name__}); retry in a moment"
    return await http_error(request, StarletteHTTPException(503, detail))


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if _wants_html(request):
        return templates.TemplateResponse(
            request, "error.html", {"status": exc.status_code, "detail": exc.detail}, status_code=exc.status_code
        )
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


EXCEPTION_HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    LoginNeeded: login_needed,
    KafkaError: kafka_down,
    StarletteHTTPException: http_error,
}

# ---------------------------------------------------------------------- open: probes, metrics, assets, login

public = APIRouter()


@public.get("/health")
async def health(console: ConsoleDep) -> dict[str, Any]:
    return {"status": "ok", "service": "console", "caught_up": console.tail.caught_up}


async def scraper(request: Request, console: ConsoleDep, settings: SettingsDep) -> None:
    """Who may read /metrics (GMV and revenue are in it): the scrape token (``METRICS_TOKEN``, good for nothing
    else), or an operator."""
    token = settings.metrics_token.get_secret_value()
    sent = presented_key(request)
    if token and sent is not None and hmac.compare_digest(sent.encode(), token.encode()):
        return
    await console.caller(request)


@public.get("/metrics", dependencies=[Depends(scraper)])
async def metrics(registry: Annotated[CollectorRegistry, Depends(_registry)]) -> Response:
    body = await asyncio.to_thread(generate_latest, registry)  # the KPI collector may wait for the worker
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@public.get("/static/htmx.min.js")
async def htmx_js() -> Response:
    body = (HERE / "static" / "htmx-2.0.11.min.js").read_bytes()
    return Response(body, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


@public.get("/static/plotly.min.js")
async def plotly_static() -> Response:
    js = await asyncio.to_thread(plotly_js)
    return Response(js, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


@public.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/") -> Response:
    return templates.TemplateResponse(request, "login.html", {"next": _local(next), "error": None})


@public.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    console: ConsoleDep,
    settings: SettingsDep,
    key: Annotated[str, Form(max_length=256)],
    next: Annotated[str, Form()] = "/",
) -> Response:
    try:
        session = await console.log_in(key.strip())
    except LoginNeeded:
        ctx = {"next": _local(next), "error": "unknown key"}
        return templates.TemplateResponse(request, "login.html", ctx, status_code=401)
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(COOKIE, session, **_cookie_flags(request, settings), max_age=int(LIFETIME.total_seconds()))
    return response


@public.post("/logout")
async def logout(request: Request, console: ConsoleDep, settings: SettingsDep) -> Response:
    """Ends the session in the store, not only in this browser (a copied cookie stops working too)."""
    await console.log_out(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, **_cookie_flags(request, settings))
    return response


def _cookie_flags(request: Request, settings: ConsoleSettings) -> dict[str, Any]:
    """``Secure`` whenever the console is reached over HTTPS or says it is (production, or behind a TLS proxy)."""
    secure = settings.cookie_secure or settings.environment == "production" or request.url.scheme == "https"
    return {"httponly": True, "samesite": "strict", "secure": secure}


# ---------------------------------------------------------------------- board

board = APIRouter()


def _board_context(console: Console, settings: ConsoleSettings) -> dict[str, Any]:
    view = console.board()
    return {"b": view, "figures": console.board_charts(view), "refresh": settings.refresh_seconds}


@board.get("/", response_class=HTMLResponse)
async def board_page(request: Request, _: Operator, console: ConsoleDep, settings: SettingsDep) -> Response:
    return templates.TemplateResponse(request, "board.html", _board_context(console, settings))


@board.get("/board/fragment", response_class=HTMLResponse)
async def board_fragment(request: Request, _: Operator, console: ConsoleDep, settings: SettingsDep) -> Response:
    return templates.TemplateResponse(request, "_board.html", _board_context(console, settings))


@board.get("/api/board")
async def board_json(_: Operator, console: ConsoleDep) -> dict[str, Any]:
    return console.board()


# ---------------------------------------------------------------------- orders

orders = APIRouter()


async def _order_or_404(console: Console, order_id: str) -> dict[str, Any]:
    view = await console.order(order_id)
    if view is None:
        raise HTTPException(404, f"no record of order {redact_card_numbers(order_id)} on any topic")
    return view


@orders.get("/orders")
async def find_order(_: Operator, order_id: Annotated[str, Query(pattern=ORDER_ID)]) -> Response:
    return RedirectResponse(f"/orders/{order_id}", status_code=303)


@orders.get("/orders/{order_id}", response_class=HTMLResponse)
async def order_page(
    request: Request, _: Operator, order_id: OrderId, console: ConsoleDep, settings: SettingsDep
) -> Response:
    ctx = {"o": await _order_or_404(console, order_id), "refresh": settings.refresh_seconds}
    return templates.TemplateResponse(request, "order.html", ctx)


@orders.get("/orders/{order_id}/fragment", response_class=HTMLResponse)
async def order_fragment(request: Request, _: Operator, order_id: OrderId, console: ConsoleDep) -> Response:
    return templates.TemplateResponse(request, "_order.html", {"o": await _order_or_404(console, order_id)})


@orders.get("/api/orders/{order_id}")
async def order_json(_: Operator, order_id: OrderId, console: ConsoleDep) -> dict[str, Any]:
    return await _order_or_404(console, order_id)


# ---------------------------------------------------------------------- dead letters

dead_letters = APIRouter()


async def _masked_letters(settings: ConsoleSettings, order_id: str, error: str) -> dict[str, Any]:
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


@dead_letters.get("/dead-letters", response_class=HTMLResponse)
async def dead_letters_page(
    request: Request,
    _: Operator,
    settings: SettingsDep,
    order_id: OrderFilter = "",
    error: ErrorFilter = "",
    done: str = "",
) -> Response:
    ctx = {
        **await _masked_letters(settings, order_id, error),
        "done": done[:200],
        "refresh": settings.refresh_seconds,
    }
    return templates.TemplateResponse(request, "dead_letters.html", ctx)


@dead_letters.get("/dead-letters/fragment", response_class=HTMLResponse)
async def dead_letters_fragment(
    request: Request, _: Operator, settings: SettingsDep, order_id: OrderFilter = "", error: ErrorFilter = ""
) -> Response:
    return templates.TemplateResponse(request, "_dead_letters.html", await _masked_letters(settings, order_id, error))


def _checked_ids(ids: list[str]) -> set[str]:
    bad = [i for i in ids if not RECORD_ID.fullmatch(i)]
    if not ids or bad:
        raise HTTPException(
            422,
            "select at least one record; ids look like TOPIC.dlq:PARTITION:OFFSET"
            if not bad
            else f"not a dead-letter record id: {bad[0][:80]!r} (TOPIC.dlq:PARTITION:OFFSET)",
        )
    return set(ids)


async def _selected(settings: ConsoleSettings, ids: list[str]) -> tuple[set[str], list[topic_log.DeadLetter]]:
    """The dead letters a form names, checked; 404 when none of them exists any more."""
    chosen = _checked_ids(ids)
    found = await topic_log.dead_letters(settings, ids=chosen)
    if not found:
        raise HTTPException(404, "none of the selected dead letters exists any more")
    return chosen, found


def _confirmation(
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


def _by(caller: Caller) -> dict[str, Any]:
    """The audit entry's source for a console action: the operator's key id (its "user" runs the console)."""
    return {"via": "console", "key_id": caller.key_id}


def _done(message: str) -> Response:
    return RedirectResponse(f"/dead-letters?done={quote(message)}", status_code=303)


@dead_letters.post("/dead-letters/redrive", response_class=HTMLResponse)
async def redrive(
    request: Request, caller: Operator, settings: SettingsDep, ids: SelectedIds, confirm: Confirmed = ""
) -> Response:
    """Without ``confirm=yes`` only shows what would be redriven; with it, redrives and audits."""
    chosen, found = await _selected(settings, ids)
    if confirm != "yes":
        return _confirmation(request, "redrive", chosen, found, to=lambda d: d.original_topic, kept=[])
    sent = await topic_log.redrive(settings, found, audit_log=settings.audit_log, **_by(caller))
    return _done(f"redriven: {sent}")


@dead_letters.post("/dead-letters/purge", response_class=HTMLResponse)
async def purge(
    request: Request, caller: Operator, settings: SettingsDep, ids: SelectedIds, confirm: Confirmed = ""
) -> Response:
    """Without ``confirm=yes`` shows the purge plan (what Kafka can delete, what must stay); with it, purges."""
    chosen, found = await _selected(settings, ids)
    plan, kept = await topic_log.purge_plan(settings, found)
    if confirm != "yes":
        return _confirmation(request, "purge", chosen, found, to=lambda _: "(deleted)", kept=kept)
    purged = await topic_log.purge(settings, found, plan, kept, audit_log=settings.audit_log, **_by(caller))
    return _done(f"purged: {purged}")


ROUTERS = (public, board, orders, dead_letters)
