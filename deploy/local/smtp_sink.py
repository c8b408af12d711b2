"""A local SMTP sink: accepts every message and lists them over a Mailpit-compatible HTTP API.

The notify service sends real SMTP here on the local stack (docker-compose uses Mailpit itself). The HTTP API
implements the subset of Mailpit's that tests and humans use, so the same client code works against both:

    GET    /api/v1/messages          {"total": N, "messages": [{"ID", "From", "To", "Subject", "Created"}]}
    GET    /api/v1/message/{id}      one message with "Text" and "Headers"
    DELETE /api/v1/messages          remove all messages
    GET    /livez                    200 when running

Messages are kept as .eml files in the data folder so they survive a restart of the sink.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses, parseaddr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class _Mailbox:
    """Stores received messages as files, newest listed first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Summaries parsed once (at start-up, then as mail arrives): a listing after a load test of thousands of
        # mails must not re-read every file.
        self._summaries: dict[str, dict[str, Any]] = {}
        for msg_id in self.ids():
            if (msg := self.get(msg_id)) is not None:
                self._summaries[msg_id] = _summary(msg_id, msg)

    def add(self, raw: bytes) -> str:
        # A sortable id: nanosecond time first keeps listing order stable across restarts.
        msg_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            tmp = self.root / f".{msg_id}.tmp"
            tmp.write_bytes(raw)
            tmp.rename(self.root / f"{msg_id}.eml")
        msg = message_from_bytes(raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        with self._lock:
            self._summaries[msg_id] = _summary(msg_id, msg)
        return msg_id

    def summaries(self) -> list[dict[str, Any]]:
        """Every message's summary, newest first."""
        with self._lock:
            return [self._summaries[k] for k in sorted(self._summaries, reverse=True)]

    def ids(self) -> list[str]:
        return sorted((p.stem for p in self.root.glob("*.eml")), reverse=True)

    def get(self, msg_id: str) -> EmailMessage | None:
        path = self.root / f"{msg_id}.eml"
        if "/" in msg_id or not path.exists():
            return None
        parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def clear(self) -> None:
        with self._lock:
            for p in self.root.glob("*.eml"):
                p.unlink(missing_ok=True)
            self._summaries.clear()


def _addr(value: str) -> dict[str, str]:
    name, address = parseaddr(value)
    return {"Name": name, "Address": address}


def _summary(msg_id: str, msg: EmailMessage) -> dict[str, Any]:
    return {
        "ID": msg_id,
        "MessageID": str(msg.get("Message-ID", "")),
        "From": _addr(str(msg.get("From", ""))),
        "To": [{"Name": n, "Address": a} for n, a in getaddresses([str(v) for v in msg.get_all("To", [])])],
        "Subject": str(msg.get("Subject", "")),
        "Created": str(msg.get("Date", "")),
    }


class _SmtpHandler:
    def __init__(self, mailbox: _Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
        self.mailbox.add(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


def _http_handler(mailbox: _Mailbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/livez":
                self._send(200, {"status": "ok"})
            elif path == "/api/v1/messages":
                items = mailbox.summaries()
                self._send(200, {"total": len(items), "count": len(items), "messages": items})
            elif path.startswith("/api/v1/message/"):
                msg_id = path.rsplit("/", 1)[1]
                msg = mailbox.get(msg_id)
                if msg is None:
                    self._send(404, {"error": f"no message {msg_id}"})
                    return
                body = msg.get_body(preferencelist=("plain",))
                text = body.get_content() if body is not None else ""
                headers = {k: [str(v) for v in msg.get_all(k, [])] for k in msg}
                self._send(200, {**_summary(msg_id, msg), "Text": text, "Headers": headers})
            else:
                self._send(404, {"error": "not found"})

        def do_DELETE(self) -> None:
            if self.path.split("?", 1)[0] == "/api/v1/messages":
                mailbox.clear()
                self._send(200, {"deleted": True})
            else:
                self._send(404, {"error": "not found"})

        def log_message(self, format: str, *args: Any) -> None:
            return  # keep the sink's log to SMTP events only

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--http-port", type=int, default=8025)
    parser.add_argument("--data", type=Path, default=Path(".local/data/smtp"))
    args = parser.parse_args()

    mailbox = _Mailbox(args.data)
    controller = Controller(_SmtpHandler(mailbox), hostname=args.host, port=args.smtp_port)
    controller.start()
    http = ThreadingHTTPServer((args.host, args.http_port), _http_handler(mailbox))
    print(f"smtp sink: SMTP {args.host}:{args.smtp_port}, HTTP {args.host}:{args.http_port}", flush=True)
    try:
        http.serve_forever()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
