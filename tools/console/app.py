"""The ops console: a FastAPI app with Jinja2 pages, htmx polling for live updates, plotly.js charts.

Composition root: settings, the ``Console`` (the fold fed by the Kafka tail, the KPI book, the key store) and its
background tasks, the metrics registry, the routers of ``tools.console.routes``. Pages are drawn from memory (the
fold), never from the services' databases; only the order page reads Kafka (its own records, by position) and
Jaeger (its trace), and the dead-letter page reads the dead-letter topics.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from tools.console import routes
from tools.console.settings import ConsoleSettings
from tools.console.state import Console


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

    app = FastAPI(
        title="fulfil ops console",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        exception_handlers=routes.EXCEPTION_HANDLERS,
    )
    app.state.console = con
    app.state.settings = settings
    app.state.registry = registry
    for router in routes.ROUTERS:
        app.include_router(router)
    return app
