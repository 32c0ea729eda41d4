"""Alerts on failed libvirt operations: the engine, the alert model and the sinks."""

from monitord.alerts.engine import AlertEngine
from monitord.alerts.model import ALERT_NAME, Alert, Identity, alert_key
from monitord.alerts.sinks import (
    JOURNAL_MESSAGE_ID,
    JOURNAL_RESOLVED_MESSAGE_ID,
    AlertmanagerSink,
    DeliveryError,
    JournalSink,
    Sink,
    WebhookSink,
)

__all__ = [
    "ALERT_NAME",
    "JOURNAL_MESSAGE_ID",
    "JOURNAL_RESOLVED_MESSAGE_ID",
    "Alert",
    "AlertEngine",
    "AlertmanagerSink",
    "DeliveryError",
    "Identity",
    "JournalSink",
    "Sink",
    "WebhookSink",
    "alert_key",
]
