"""Where alerts go: the systemd journal, Alertmanager, a JSON webhook.

A sink delivers one batch synchronously and raises `DeliveryError` when it
could not; retrying, batching and queueing are `delivery.py`'s job. Sinks run
in their worker thread only, never in the ingestion thread.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from monitord.alerts.model import ALERT_NAME, Alert, fingerprint, rfc3339
from monitord.config import WebhookConfig

log = logging.getLogger("monitord.alerts")

# `journalctl MESSAGE_ID=0eb15ecc7dee4e43823235d95cb95ec9` lists every failed libvirt operation.
JOURNAL_MESSAGE_ID: Final = "0eb15ecc7dee4e43823235d95cb95ec9"
# ... and this one their resolutions (a later success, or `alerts.resolve_after`).
JOURNAL_RESOLVED_MESSAGE_ID: Final = "84f0cbbac1454254b44401985be3bbfc"
JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"

HTTP_TIMEOUT: Final = 10.0
ZERO_TIME: Final = "0001-01-01T00:00:00Z"  # Go's zero time: how Alertmanager writes "no endsAt"
USER_AGENT: Final = "monitord-alerts"


class DeliveryError(Exception):
    """A batch could not be delivered; `retry` False when trying again cannot help (HTTP 4xx)."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Sink(Protocol):
    """A delivery target: `name` is the `sink` label, `target` says where (for logs)."""

    name: str
    target: str

    def deliver(self, alerts: Sequence[Alert]) -> None: ...


# Journal


class JournalSink:
    """One structured journal entry per firing or resolved alert."""

    name = "journal"

    def __init__(
        self,
        socket_path: str = JOURNAL_SOCKET,
        send: Callable[..., None] | None = None,
    ) -> None:
        self.target = socket_path
        self.socket_path = socket_path
        self._send = send
        self._inactive_logged = False

    def active(self) -> bool:
        """True when journald listens; otherwise say so once (journal.send would drop silently)."""
        if Path(self.socket_path).exists():
            if self._inactive_logged:
                log.info("alerts: journald is back at %s; journal sink active", self.socket_path)
                self._inactive_logged = False
            return True
        if not self._inactive_logged:
            log.warning("alerts: no journald socket at %s; journal sink inactive", self.socket_path)
            self._inactive_logged = True
        return False

    def deliver(self, alerts: Sequence[Alert]) -> None:
        if not self.active():  # journald went away after start-up
            raise DeliveryError(f"no journald socket at {self.socket_path}", retry=False)
        send = self._send
        if send is None:
            from systemd import journal  # imported late: only this sink needs it

            send = self._send = journal.send
        for alert in alerts:
            try:
                send(**journal_fields(alert))
            except (OSError, ValueError) as exc:
                raise DeliveryError(f"journal: {exc}") from exc


def journal_fields(alert: Alert) -> dict[str, str]:
    """Return the journal fields of an alert (MESSAGE, PRIORITY, MESSAGE_ID, VIRT_*)."""
    labels = alert.labels
    firing = alert.ends_at is None
    message = alert.annotations.get("summary", ALERT_NAME)
    fields: dict[str, str] = {
        "MESSAGE": message if firing else f"Resolved: {message}",
        # err for a failed start, warning for the rest, notice for a resolution.
        "PRIORITY": ("3" if alert.critical else "4") if firing else "5",
        "MESSAGE_ID": JOURNAL_MESSAGE_ID if firing else JOURNAL_RESOLVED_MESSAGE_ID,
        "SYSLOG_IDENTIFIER": "monitord",
        "VIRT_ALERT_STATUS": alert.status,
        "VIRT_DESCRIPTION": alert.annotations.get("description", ""),
        "AUDIT_SERIAL": str(alert.serial),
        "AUDIT_TIME": rfc3339(alert.starts_at),
    }
    for label, field in (
        ("domain", "VIRT_DOMAIN"),
        ("uuid", "VIRT_UUID"),
        ("record", "VIRT_RECORD"),
        ("op", "VIRT_OP"),
        ("resrc", "VIRT_RESRC"),
        ("model", "VIRT_MODEL"),
        ("reason", "VIRT_REASON"),
        ("virt", "VIRT_TYPE"),
    ):
        if label in labels:
            fields[field] = labels[label]
    return fields


# HTTP


def _post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
    context: ssl.SSLContext | None = None,
) -> None:
    """POST a JSON body; raise DeliveryError unless the answer is 2xx."""
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", USER_AGENT)
    for name, value in headers.items():
        request.add_header(name, value)
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    # No proxies from the environment: alert receivers are addressed directly, as in Prometheus.
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        exc.close()
        retry = exc.code >= 500 or exc.code in (408, 429)
        raise DeliveryError(f"{url}: HTTP {exc.code} {detail}", retry=retry) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{url}: {reason}") from exc


class AlertmanagerSink:
    """`POST /api/v2/alerts` to one Alertmanager (an HA pair is two sinks, both sent to)."""

    name = "alertmanager"

    def __init__(
        self,
        url: str,
        resend_interval: float,
        timeout: float = HTTP_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        base = url.rstrip("/")
        self.target = base + "/api/v2/alerts"
        self.resend_interval = resend_interval
        self.timeout = timeout
        self.clock = clock

    def payload(self, alerts: Sequence[Alert]) -> list[dict[str, Any]]:
        """Return the API v2 body; a firing alert ends after 4 missed re-sends (as Prometheus)."""
        valid_until = rfc3339(self.clock() + 4 * self.resend_interval)
        return [
            {
                "labels": dict(a.labels),
                "annotations": dict(a.annotations),
                "startsAt": rfc3339(a.starts_at),
                "endsAt": valid_until if a.ends_at is None else rfc3339(a.ends_at),
                "generatorURL": a.generator_url,
            }
            for a in alerts
        ]

    def deliver(self, alerts: Sequence[Alert]) -> None:
        body = json.dumps(self.payload(alerts)).encode()
        _post(self.target, body, {}, self.timeout)


class WebhookSink:
    """POST of Alertmanager's webhook payload (version 4) to a URL, with optional auth and TLS."""

    name = "webhook"

    def __init__(self, config: WebhookConfig, external_url: str) -> None:
        self.config = config
        self.target = config.url
        self.external_url = external_url
        self._context: ssl.SSLContext | None = None
        if config.url.startswith("https:"):
            ctx = ssl.create_default_context(cafile=config.ca_file)
            if not config.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._context = ctx

    def headers(self) -> dict[str, str]:
        """Read credentials at each delivery, so a rotated token file is picked up."""
        cfg = self.config
        try:
            if cfg.bearer_token_file:
                token = Path(cfg.bearer_token_file).read_text().strip()
                return {"Authorization": f"Bearer {token}"}
            if cfg.basic_auth_username is not None:
                password = ""
                if cfg.basic_auth_password_file:
                    password = Path(cfg.basic_auth_password_file).read_text().strip()
                pair = f"{cfg.basic_auth_username}:{password}".encode()
                return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        except OSError as exc:
            raise DeliveryError(f"{cfg.url}: cannot read credentials: {exc}") from exc
        return {}

    def payload(self, alerts: Sequence[Alert]) -> dict[str, Any]:
        """Return the body Alertmanager's webhook receiver would send for this group."""
        items = [
            {
                "status": a.status,
                "labels": dict(a.labels),
                "annotations": dict(a.annotations),
                "startsAt": rfc3339(a.starts_at),
                "endsAt": ZERO_TIME if a.ends_at is None else rfc3339(a.ends_at),
                "generatorURL": a.generator_url,
                "fingerprint": fingerprint(a.labels),
            }
            for a in alerts
        ]
        status = "firing" if any(a.ends_at is None for a in alerts) else "resolved"
        return {
            "version": "4",
            "groupKey": f'{{}}:{{alertname="{ALERT_NAME}"}}',
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "monitord",
            "groupLabels": {"alertname": ALERT_NAME},
            "commonLabels": _common([a.labels for a in alerts]),
            "commonAnnotations": _common([a.annotations for a in alerts]),
            "externalURL": self.external_url,
            "alerts": items,
        }

    def deliver(self, alerts: Sequence[Alert]) -> None:
        body = json.dumps(self.payload(alerts)).encode()
        _post(self.config.url, body, self.headers(), self.config.timeout, self._context)


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """Return the pairs every map has in common (Alertmanager's commonLabels)."""
    if not maps:
        return {}
    common = dict(maps[0])
    for m in maps[1:]:
        common = {k: v for k, v in common.items() if m.get(k) == v}
        if not common:
            break
    return common
