"""Follow one order live: ``GET /orders/{order_id}/stream`` (Server-Sent Events), resuming after a dropped
connection with ``Last-Event-ID``, until the order ends.

    .venv/bin/python docs/examples/track_order.py SHOP1-000123 [--api http://127.0.0.1:8080] [--key fk_...]

The key defaults to ``$FULFIL_API_KEY`` (the local stack lets a request without a key through). Prints one line
per change; exits 0 when the order ended, 1 on an answer that is not a stream (401, 404, ...).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import httpx
from httpx_sse import aconnect_sse

TERMINAL = {"COMPLETED", "CANCELLED", "REJECTED"}
RECONNECTS = 20  # bounded: a server that stays away ends the client


async def track(order_id: str, *, api: str, key: str | None) -> int:
    last_id: str | None = None
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as http:
        for attempt in range(RECONNECTS):
            headers = {"X-API-Key": key} if key else {}
            if last_id is not None:
                headers["Last-Event-ID"] = last_id  # nothing we already have is sent again
            try:
                async with aconnect_sse(http, "GET", f"{api}/orders/{order_id}/stream", headers=headers) as source:
                    response = source.response
                    if response.status_code == 204:
                        return 0  # we have the terminal state already
                    if response.status_code != 200:
                        await response.aread()
                        print(f"{response.status_code}: {response.text}", file=sys.stderr)
                        return 1
                    async for event in source.aiter_sse():
                        if not event.data:
                            continue  # a keep-alive comment
                        last_id, order = event.id, event.json()
                        shipment = order["shipment"] or {}
                        print(
                            f"v{event.id} {order['status']:<9} {order['stage'] or '-':<18} "
                            f"{shipment.get('carrier', '')} {shipment.get('tracking_number', '')}".rstrip()
                        )
                        if order["status"] in TERMINAL:
                            return 0
            except httpx.TransportError as e:
                print(f"connection lost ({type(e).__name__}); resuming after v{last_id}", file=sys.stderr)
            await asyncio.sleep(min(2**attempt, 10) * 0.5)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("order_id")
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--key", default=os.environ.get("FULFIL_API_KEY"))
    args = parser.parse_args()
    return asyncio.run(track(args.order_id, api=args.api.rstrip("/"), key=args.key))


if __name__ == "__main__":
    sys.exit(main())
