"""The operator audit log: who did what, when (one JSON line an action), written by `fulfil` and the console."""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools.ops.paths import REPO

AUDIT_LOG = Path(os.environ.get("FULFIL_AUDIT_LOG") or REPO / ".local" / "logs" / "audit.log")


def operator() -> str:
    """Who runs this: FULFIL_OPERATOR, else the OS user."""
    return os.environ.get("FULFIL_OPERATOR") or getpass.getuser()


def write(action: str, path: Any, **details: Any) -> dict[str, Any]:
    """Append who did what when to the operator audit log (one JSON line) and return the entry."""
    entry = {
        "at": datetime.now(UTC).isoformat(),
        "action": action,
        "user": operator(),
        "host": socket.gethostname(),
        **details,
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
    return entry
