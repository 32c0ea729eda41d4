"""Where alerts go: the systemd journal, Alertmanager, a JSON webhook.

A sink delivers one batch synchronously and raises `DeliveryError` when it
could not; retrying, batching and queueing are `delivery.py`'s job. Sinks run
in their worker thread only, never in the ingestion thread.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from monitord.alerts.model import ALERT_NAME, Alert, clean, fingerprint, rfc3339
from monitord.config import (
    JOURNAL_LABEL_PREFIX,
    AlertmanagerConfig,
    HttpTargetConfig,
    WebhookConfig,
)

log = logging.getLogger("monitord.alerts")

# `journalctl MESSAGE_ID=0eb15ecc7dee4e43823235d95cb95ec9` lists every failed libvirt operation.
JOURNAL_MESSAGE_ID: Final = "0eb15ecc7dee4e43823235d95cb95ec9"
# ... and this one their resolutions (a later success, or `alerts.resolve_after`).
JOURNAL_RESOLVED_MESSAGE_ID: Final = "84f0cbbac1454254b44401985be3bbfc"
JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"

ZERO_TIME: Final = "0001-01-01T00:00:00Z"  # Go's zero time: how Alertmanager writes "no endsAt"
USER_AGENT: Final = "monitord-alerts"


class DeliveryError(Exception):
    """A batch could not be delivered; `retry` False when trying again cannot help (HTTP 4xx).

    `receivers` says how many receivers refused it (all of an Alertmanager cluster)."""

    def __init__(self, message: str, *, retry: bool = True, receivers: int = 1) -> None:
        super().__init__(message)
        self.retry = retry
        self.receivers = receivers


class Sink(Protocol):
    """A delivery target: `name` is the `sink` label, `target` says where (for logs).

    `deliver` returns how many of its receivers did not accept a batch that another one
    did (an Alertmanager cluster), 0 for a single receiver; it raises `DeliveryError`
    when none accepted it."""

    name: str
    target: str

    def deliver(self, alerts: Sequence[Alert]) -> int: ...


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

    def deliver(self, alerts: Sequence[Alert]) -> int:
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
        return 0


# Alert labels and the journal fields they become; any other label is an [identity]
# label and becomes VIRT_LABEL_<NAME>.
_JOURNAL_FIELDS: Final = {
    "host": "VIRT_HOST",
    "domain": "VIRT_DOMAIN",
    "uuid": "VIRT_UUID",
    "record": "VIRT_RECORD",
    "op": "VIRT_OP",
    "resrc": "VIRT_RESRC",
    "model": "VIRT_MODEL",
    "reason": "VIRT_REASON",
    "virt": "VIRT_TYPE",
    "alertname": None,  # always VirtOperationFailed
    "severity": None,  # PRIORITY says it
}


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
    for label, value in labels.items():
        field = _JOURNAL_FIELDS.get(label, JOURNAL_LABEL_PREFIX + label.upper())
        if field is not None:
            fields[field] = value
    if alert.key[0]:  # the record named its node (a central collector)
        fields["VIRT_NODE"] = clean(alert.key[0])
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
    except http.client.HTTPException as exc:  # a garbled answer: not HTTP, cut short
        raise DeliveryError(f"{url}: bad HTTP answer: {type(exc).__name__} {exc}") from exc


class HttpReceiver:
    """One HTTP receiver: URL, credentials and TLS, re-read when their files change."""

    def __init__(self, config: HttpTargetConfig, url: str) -> None:
        self.config = config
        self.url = url
        self._tls = url.startswith("https:")
        self._context: ssl.SSLContext | None = None
        self._stamp: tuple[object, ...] | None = None

    def _files_stamp(self) -> tuple[object, ...]:
        cfg, stamp = self.config, []
        for path in (cfg.ca_file, cfg.cert_file, cfg.key_file):
            try:
                st = Path(path).stat() if path else None
            except OSError:
                st = None
            stamp.append(None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamp)

    def context(self) -> ssl.SSLContext | None:
        """Return the TLS context, rebuilt when a CA, certificate or key file changed."""
        if not self._tls:
            return None
        stamp = self._files_stamp()
        if self._context is None or stamp != self._stamp:
            cfg = self.config
            try:
                ctx = ssl.create_default_context(cafile=cfg.ca_file)
                if cfg.cert_file:
                    ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise DeliveryError(f"{self.url}: cannot load TLS files: {exc}") from exc
            if not cfg.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._context, self._stamp = ctx, stamp
        return self._context

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
            raise DeliveryError(f"{self.url}: cannot read credentials: {exc}") from exc
        return {}

    def post(self, body: bytes) -> None:
        _post(self.url, body, self.headers(), self.config.timeout, self.context())


class AlertmanagerSink:
    """`POST /api/v2/alerts` to every Alertmanager of a cluster, as Prometheus' notifier does.

    One batch goes to all of them at once; it is delivered when at least one accepted it
    (the cluster shares it by gossip and deduplicates notifications)."""

    name = "alertmanager"

    def __init__(
        self,
        configs: Sequence[AlertmanagerConfig],
        resend_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.receivers = [HttpReceiver(c, c.url.rstrip("/") + "/api/v2/alerts") for c in configs]
        self.target = ", ".join(r.url for r in self.receivers)
        self.resend_interval = resend_interval
        self.clock = clock
        self._refusing: set[str] = set()  # receivers whose last delivery failed (logged once)

    def payload(self, alerts: Sequence[Alert]) -> list[dict[str, Any]]:
        """Return the API v2 body; a firing alert ends after 4 missed re-sends (as Prometheus)."""
        valid_until = rfc3339(self.clock() + 4 * self.resend_interval)
        return [_alert_document(a, valid_until) for a in alerts]

    def deliver(self, alerts: Sequence[Alert]) -> int:
        body = json.dumps(self.payload(alerts)).encode()
        errors = self._post_all(body)
        for receiver, error in zip(self.receivers, errors, strict=True):
            if error is not None and receiver.url not in self._refusing:
                self._refusing.add(receiver.url)
                log.warning(
                    "alerts: Alertmanager %s did not accept alerts: %s", receiver.url, error
                )
            elif error is None and receiver.url in self._refusing:
                self._refusing.discard(receiver.url)
                log.info("alerts: Alertmanager %s accepts alerts again", receiver.url)
        failed = [e for e in errors if e is not None]
        if failed and len(failed) == len(errors):
            raise DeliveryError(
                "no Alertmanager accepted the alerts: " + "; ".join(map(str, failed)),
                retry=any(e.retry for e in failed),
                receivers=len(failed),
            )
        return len(failed)

    def _post_all(self, body: bytes) -> list[DeliveryError | None]:
        """POST to every receiver at once (a slow one delays none of the others' answers)."""
        errors: list[DeliveryError | None] = [None] * len(self.receivers)

        def post(i: int) -> None:
            try:
                self.receivers[i].post(body)
            except DeliveryError as exc:
                errors[i] = exc
            except Exception as exc:  # a bug: must not count as accepted
                log.exception("alerts: posting to %s raised", self.receivers[i].url)
                errors[i] = DeliveryError(f"{self.receivers[i].url}: {exc!r}", retry=False)

        threads = [
            threading.Thread(target=post, args=(i,), name="alerts-am-post", daemon=True)
            for i in range(1, len(self.receivers))
        ]
        for thread in threads:
            thread.start()
        if self.receivers:
            post(0)
        for thread in threads:
            thread.join()
        return errors


class WebhookSink:
    """POST of Alertmanager's webhook payload (version 4) to a URL, with optional auth and TLS."""

    name = "webhook"

    def __init__(self, config: WebhookConfig, external_url: str) -> None:
        self.config = config
        self.target = config.url
        self.external_url = external_url
        self.receiver = HttpReceiver(config, config.url)

    def payload(self, alerts: Sequence[Alert]) -> dict[str, Any]:
        """Return the body Alertmanager's webhook receiver would send for this group."""
        items = [
            {
                "status": a.status,
                **_alert_document(a, ZERO_TIME),
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

    def deliver(self, alerts: Sequence[Alert]) -> int:
        self.receiver.post(json.dumps(self.payload(alerts)).encode())
        return 0


def _alert_document(a: Alert, open_end: str) -> dict[str, Any]:
    """An alert as Alertmanager's API and webhook write it; `open_end`: a firing one's endsAt."""
    return {
        "labels": dict(a.labels),
        "annotations": dict(a.annotations),
        "startsAt": rfc3339(a.starts_at),
        "endsAt": open_end if a.ends_at is None else rfc3339(a.ends_at),
        "generatorURL": a.generator_url,
    }


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
