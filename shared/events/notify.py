"""Events the notify service writes to ``notify.events``."""

from __future__ import annotations

from typing import Literal

from shared.events.base import EmittedEvent

NotificationKind = Literal["order_completed", "order_cancelled"]


class NotificationSent(EmittedEvent):
    event_type: Literal["NotificationSent"] = "NotificationSent"
    kind: NotificationKind
    channel: Literal["email"] = "email"
    message_id: str


class NotificationFailed(EmittedEvent):
    event_type: Literal["NotificationFailed"] = "NotificationFailed"
    kind: NotificationKind
    channel: Literal["email"] = "email"
    error: str


NotifyEvent = NotificationSent | NotificationFailed
