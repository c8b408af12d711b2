"""Where the operator tools find the repository's own files: what deploy/ declares (topics, catalogue) and what they
write under .local/ (backups, the audit log, benchmark results).

A module of its own, importing nothing but pathlib, so that knowing a path costs no settings or client library.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
