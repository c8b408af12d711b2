"""Notify's test timings: a lease of seconds, not half a minute, with the send's bounds scaled to it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from services.notify import domain


@dataclass(frozen=True)
class Lease:
    lease: timedelta
    send_timeout: timedelta
    clock_margin: timedelta
    max_hold: timedelta

    @property
    def seconds(self) -> float:
        return self.lease.total_seconds()


SHORT = Lease(
    lease=timedelta(seconds=2),
    send_timeout=timedelta(seconds=0.5),
    clock_margin=timedelta(seconds=0.25),
    max_hold=timedelta(seconds=4),
)


@pytest.fixture
def short_lease(monkeypatch: pytest.MonkeyPatch) -> Lease:
    """Claims that lapse within a test: a 2 s lease, sends cut off after 0.5 s, renewals for up to 4 s."""
    monkeypatch.setattr(domain, "CLAIM_LEASE", SHORT.lease)
    monkeypatch.setattr(domain, "SEND_TIMEOUT", SHORT.send_timeout)
    monkeypatch.setattr(domain, "CLOCK_MARGIN", SHORT.clock_margin)
    monkeypatch.setattr(domain, "MAX_HOLD", SHORT.max_hold)
    return SHORT
