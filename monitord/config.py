"""The daemon's configuration: one frozen, typed `Config` (CONTRACT.md, "Config")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SourceKind = Literal["file", "audisp", "journal"]
StartMode = Literal["checkpoint", "beginning", "end"]

DEFAULT_CONFIG_PATH = "/etc/monitord/monitord.toml"


@dataclass(frozen=True, slots=True)
class SourceConfig:
    kind: SourceKind = "file"
    path: str = "/var/log/audit/audit.log"
    start: StartMode = "checkpoint"
    # Journal source: read these directories/files instead of the system journal.
    journal_dir: str | None = None
    # Lines longer than this are counted as parse errors and skipped.
    max_line_length: int = 64 * 1024
    # Safety re-check of the followed file when inotify says nothing (seconds).
    rescan_interval: float = 5.0
    # audisp: records buffered between the stdin reader and the pipeline.
    queue_size: int = 100_000


@dataclass(frozen=True, slots=True)
class StateConfig:
    dir: str = "/var/lib/monitord"
    checkpoint_interval: float = 5.0
    max_guests: int = 10_000
    forget_stopped_after: float = 7 * 86400.0
    # Distinct values kept per open-ended label (op, reason, resrc, model) before `other`.
    max_label_values: int = 100
    # Records kept per guest for /api/v1/guests/{uuid} `events`.
    max_events: int = 50


@dataclass(frozen=True, slots=True)
class BasicAuthUser:
    username: str
    password_hash: str  # bcrypt, as in Prometheus exporter-toolkit's web.yml


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str = "127.0.0.1:9781"
    tls_cert: str | None = None
    tls_key: str | None = None
    basic_auth_users: tuple[BasicAuthUser, ...] = ()
    max_connections: int = 64


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    bearer_token_file: str | None = None
    basic_auth_username: str | None = None
    basic_auth_password_file: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    resolve_after: float = 3600.0
    on_catch_up: bool = False
    journal: bool = True
    alertmanager: tuple[str, ...] = ()
    webhook: tuple[WebhookConfig, ...] = ()
    # Firing alerts are re-sent to Alertmanager this often (its resolve_timeout is 5m).
    resend_interval: float = 60.0
    # Alerts waiting per sink; beyond it the oldest are dropped and counted.
    queue_size: int = 10_000
    # At most this many alerts in one HTTP request.
    batch_size: int = 500
    # Retries back off exponentially from `retry_initial` up to `retry_max` seconds.
    retry_initial: float = 0.5
    retry_max: float = 30.0
    # On shutdown, pending deliveries get this long.
    drain_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    target: Literal["auto", "journal", "stderr"] = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    state: StateConfig = field(default_factory=StateConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
