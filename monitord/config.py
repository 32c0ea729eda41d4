"""The daemon's configuration: one frozen, typed `Config` (docs/INTERFACE.md, "Config")."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TypeVar

from monitord.errors import ConfigError

if TYPE_CHECKING:  # pathlib costs every command ~5 ms to import; paths are str here
    from pathlib import Path

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
    # Journal source: an entry's _HOSTNAME is its record's node (a collector of other
    # hosts' journals, e.g. systemd-journal-remote's output).
    node_from_hostname: bool = False
    # Lines longer than this are counted as parse errors and skipped.
    max_line_length: int = 64 * 1024
    # Safety re-check of the followed file when inotify says nothing (seconds).
    rescan_interval: float = 5.0
    # audisp: records buffered between the stdin reader and the pipeline.
    queue_size: int = 100_000


@dataclass(frozen=True, slots=True)
class StateConfig:
    dir: str = "/var/lib/monitord"
    # Commits to the state store (position, changed guests, counters, alerts, history).
    checkpoint_interval: float = 1.0
    max_guests: int = 10_000
    forget_stopped_after: float = 7 * 86400.0
    # Distinct values kept per open-ended label (op, reason, resrc, model) before `other`.
    max_label_values: int = 100
    # Events (from the history) in /api/v1/guests/{uuid} without `?events=N`.
    max_events: int = 50
    # How often the processes of this host's running guests are checked (a guest whose
    # QEMU died while libvirtd was down never gets a stop record).
    process_check_interval: float = 60.0
    # History of libvirt records in the store: older records (by record time) are deleted,
    # and the oldest are deleted while the store is larger than history_max_bytes.
    history_retention: float = 90 * 86400.0
    history_max_bytes: int = 1 << 30
    # Commits may fail this long (disk full, read-only) before /healthz answers 503;
    # None: three checkpoint intervals.
    commit_grace: float | None = None

    @property
    def grace(self) -> float:
        """Seconds of failing commits /healthz tolerates."""
        if self.commit_grace is not None:
            return self.commit_grace
        return 3 * self.checkpoint_interval


@dataclass(frozen=True, slots=True)
class BasicAuthUser:
    username: str
    password_hash: str  # bcrypt, as in Prometheus exporter-toolkit's web.yml


class ListenAddress(NamedTuple):
    """Where the HTTP listener binds (`parse_listen` checked it)."""

    host: str  # "" for every IPv4 address; an IPv6 address without its brackets
    port: int

    @property
    def ipv6(self) -> bool:
        return ":" in self.host


# exporter-toolkit's names (Go's tls.ClientAuthType); the two that request a certificate
# without verifying it authenticate nobody and are not offered.
ClientAuthType = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
# TLS 1.0 and 1.1 are disabled by Debian's OpenSSL anyway.
TlsVersion = Literal["TLS12", "TLS13"]


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str = "127.0.0.1:9781"
    tls_cert: str | None = None
    tls_key: str | None = None
    # Client certificates (exporter-toolkit's tls_server_config), and the oldest TLS accepted.
    client_auth_type: ClientAuthType = "NoClientCert"
    client_ca_file: str | None = None
    min_version: TlsVersion = "TLS12"
    basic_auth_users: tuple[BasicAuthUser, ...] = ()
    # Failed logins per client address: a bucket of `failed_auth_burst`, refilled over
    # `failed_auth_interval`; an empty bucket answers 429 without checking.
    failed_auth_burst: int = 10
    failed_auth_interval: float = 60.0
    # Open connections at most, in all and per client address.
    max_connections: int = 64
    max_connections_per_client: int = 16
    # The whole request head (and TLS handshake) must arrive within this.
    header_timeout: float = 10.0
    # A kept-alive connection may wait this long for its next request.
    idle_timeout: float = 90.0
    # An answer must be sent completely within this (a slow reader is cut off).
    write_timeout: float = 30.0
    # Scrapes (and guest lists) within this age share one render; 0: one render per
    # request, still one at a time.
    cache_max_age: float = 1.0

    @property
    def address(self) -> ListenAddress:
        """`listen` as host and port; ValueError if it is not HOST:PORT."""
        return parse_listen(self.listen)


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """Who this monitord is: added to every alert and journal entry it writes."""

    # The `host` label of alerts about this host's own records (a record's node= wins).
    host: str = field(default_factory=lambda: os.uname().nodename)
    # Static labels added to every alert (Prometheus' external_labels), e.g. cluster, region.
    labels: tuple[tuple[str, str], ...] = ()
    # Base of generatorURL; None: derived from the host name and [http] (Config.external_url).
    external_url: str | None = None


@dataclass(frozen=True, slots=True)
class HttpTargetConfig:
    """How to reach an HTTP alert receiver: the same keys for webhooks and Alertmanagers."""

    url: str
    bearer_token_file: str | None = None
    basic_auth_username: str | None = None
    basic_auth_password_file: str | None = None
    tls_verify: bool = True
    ca_file: str | None = None
    # Client certificate (PEM) for receivers that require one; both or neither.
    cert_file: str | None = None
    key_file: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class WebhookConfig(HttpTargetConfig):
    pass


@dataclass(frozen=True, slots=True)
class AlertmanagerConfig(HttpTargetConfig):
    pass


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    resolve_after: float = 3600.0
    on_catch_up: bool = False
    journal: bool = True
    # Every Alertmanager of a cluster: each alert goes to all of them (one queue, fanned out).
    alertmanager: tuple[AlertmanagerConfig, ...] = ()
    webhook: tuple[WebhookConfig, ...] = ()
    # Firing alerts are re-sent to Alertmanager this often (its resolve_timeout is 5m).
    resend_interval: float = 60.0
    # Resolved alerts are re-sent to Alertmanager (and retried to webhooks) this long,
    # as Prometheus does, so a receiver that was away still learns of the resolution.
    resolved_retention: float = 900.0
    # Alerts waiting per sink; beyond it the oldest are dropped and counted.
    queue_size: int = 10_000
    # At most this many alerts in one HTTP request.
    batch_size: int = 500
    # Alerts firing at once; a failure beyond it raises no new alert (counted as dropped).
    max_firing: int = 10_000
    # Retries back off exponentially from `retry_initial` up to `retry_max` seconds.
    retry_initial: float = 0.5
    retry_max: float = 30.0
    # On shutdown, pending deliveries get this long.
    drain_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    target: Literal["auto", "journal", "stderr"] = "auto"
    # Repeated warnings of one kind: at most `rate_limit_burst` per `rate_limit_interval`
    # (0 = no limit); the next one that gets through says how many were suppressed.
    rate_limit_burst: int = 10
    rate_limit_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """`--source=audisp` started as root by auditd (monitord/privileges.py)."""

    # Who the plugin becomes once stdin, the state dir and the listener are open.
    user: str = "monitord"
    group: str | None = None  # None: the user's primary group
    # Serve [http] from the plugin too; off unless asked (or `--listen` is given).
    http: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    state: StateConfig = field(default_factory=StateConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    plugin: PluginConfig = field(default_factory=PluginConfig)

    @property
    def external_url(self) -> str:
        """Return the base of generatorURL: [identity] external_url, else Prometheus' default
        (`http://HOSTNAME:PORT`, the machine's host name and the listen port; https with TLS)."""
        if self.identity.external_url:
            return self.identity.external_url.rstrip("/")
        scheme = "https" if self.http.tls_cert else "http"
        port = self.http.listen.rpartition(":")[2]
        # Never the listen host: "" and 0.0.0.0 are no address, 127.0.0.1 only works here.
        host = os.uname().nodename or self.identity.host or "localhost"
        return f"{scheme}://{host}:{port}"


# ---------------------------------------------------------------------------
# Loading: TOML text -> validated `Config`.
#
# The dataclasses above are the schema: every field is a key of the same name,
# nested dataclasses are tables, tuples of dataclasses are arrays of tables.
# Every `float` field is a duration (a number of seconds or a string with a
# unit), so a new duration setting needs no loader change.

DURATION_UNITS: Final[dict[str, float]] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
# bcrypt in modular crypt format, as htpasswd -B and exporter-toolkit's web.yml use.
_BCRYPT = re.compile(r"^\$2[abxy]?\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}$")
# Prometheus label names; `__` starts names Prometheus keeps for itself.
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Labels monitord sets on its alerts: [identity] labels may not override them.
ALERT_LABEL_NAMES: Final = frozenset(
    ("alertname", "severity", "host", "virt", "domain", "uuid", "record", "op", "resrc",
     "model", "reason")
)  # fmt: skip
# Journal field names are at most 64 characters; identity labels become VIRT_LABEL_<NAME>.
JOURNAL_LABEL_PREFIX: Final = "VIRT_LABEL_"
_MAX_LABEL_NAME: Final = 64 - len(JOURNAL_LABEL_PREFIX)
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")

Path_ = tuple[str | int, ...]


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like "90s", "5m", "1h30m", "7d", "500ms"."""
    if isinstance(value, bool):
        raise ValueError('expected a duration (seconds, or a string like "90s", "5m", "1h")')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * DURATION_UNITS[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            raise ValueError(
                f"bad duration {value!r}: use seconds or a number with a unit "
                '(ms, s, m, h, d, w), e.g. "90s", "5m", "1h30m"'
            )
    else:
        raise ValueError('expected a duration (seconds, or a string like "90s", "5m", "1h")')
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"bad duration {value!r}: must be a finite number >= 0")
    return seconds


def parse_listen(value: str) -> ListenAddress:
    """Split "HOST:PORT" ("[::1]:9781", ":9781" for every address) into host and port.

    The one parser of listen addresses: the config checks them with it, the listener
    binds what it returns. Raises ValueError saying what is wrong.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f'expected HOST:PORT (e.g. "127.0.0.1:9781"), got {value!r}')
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range (0-65535) in {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        import ipaddress  # here, not at the top: every command imports this module

        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address in {value!r}") from None
        return ListenAddress(host, port)
    if ":" in host:
        raise ValueError(f'write an IPv6 address in brackets, e.g. "[::1]:9781", not {value!r}')
    if host and not _HOSTNAME.match(host):
        raise ValueError(f"{host!r} is not a host name or address in {value!r}")
    return ListenAddress(host, port)


def _check_url(value: str) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"bad port in URL {value!r}") from None
    return value


def _check_level(value: str) -> str:
    level = value.lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {value!r} (use {', '.join(LOG_LEVELS)})")
    return level


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


def _check_nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


# Per-field checks beyond the type; they raise ValueError with the reason.
_VALUE_CHECKS: dict[tuple[type, str], Callable[[Any], Any]] = {
    (SourceConfig, "path"): _check_nonempty,
    (StateConfig, "dir"): _check_nonempty,
    (HttpConfig, "listen"): _check_listen,
    (WebhookConfig, "url"): _check_url,
    (AlertmanagerConfig, "url"): _check_url,
    (IdentityConfig, "host"): _check_nonempty,
    (IdentityConfig, "external_url"): _check_url,
    (LoggingConfig, "level"): _check_level,
    (PluginConfig, "user"): _check_nonempty,
    (PluginConfig, "group"): _check_nonempty,
}
# Array elements that may be written as a bare string: the string is this key of the table
# (`alertmanager = ["http://am:9093"]` or `[[alerts.alertmanager]] url = ...`).
_FROM_STRING: dict[type, str] = {AlertmanagerConfig: "url"}
# Smallest accepted value of numeric fields (default: ints >= 1, durations > 0).
_MINIMUM: dict[tuple[type, str], float] = {
    (StateConfig, "max_events"): 0,
    (HttpConfig, "cache_max_age"): 0,
    (StateConfig, "history_max_bytes"): 1 << 20,
    (AlertsConfig, "drain_timeout"): 0,
    (LoggingConfig, "rate_limit_burst"): 0,
}


def _tls_checks(http: HttpConfig) -> Iterator[tuple[str, str]]:
    """The client-certificate settings of exporter-toolkit, checked as it checks them."""
    defaults = HttpConfig()
    if http.tls_cert is None:
        for key in ("client_ca_file", "client_auth_type", "min_version"):
            if getattr(http, key) != getattr(defaults, key):
                yield key, "needs TLS (tls_cert and tls_key)"
    if http.client_auth_type != "NoClientCert" and http.client_ca_file is None:
        yield "client_auth_type", "needs client_ca_file (the CA that signs client certificates)"
    if http.client_ca_file is not None and http.client_auth_type == "NoClientCert":
        yield (
            "client_ca_file",
            'set client_auth_type too (e.g. "RequireAndVerifyClientCert"): '
            "a CA without a policy checks nothing",
        )


def _cross_checks(obj: object) -> Iterator[tuple[str, str]]:
    """Yield (key, message) for settings that only make sense together."""
    if isinstance(obj, HttpConfig) and (obj.tls_cert is None) != (obj.tls_key is None):
        key = "tls_cert" if obj.tls_key is None else "tls_key"  # the one that is set
        yield key, "tls_cert and tls_key must be set together"
    if isinstance(obj, HttpConfig):
        yield from _tls_checks(obj)
    if isinstance(obj, AlertsConfig) and obj.retry_max < obj.retry_initial:
        yield "retry_max", "must be at least retry_initial"
    if isinstance(obj, HttpTargetConfig):
        if (obj.cert_file is None) != (obj.key_file is None):
            key = "cert_file" if obj.key_file is None else "key_file"
            yield key, "cert_file and key_file must be set together"
        if (obj.basic_auth_username is None) != (obj.basic_auth_password_file is None):
            yield (
                "basic_auth_username",
                ("basic_auth_username and basic_auth_password_file must be set together"),
            )
        if obj.bearer_token_file is not None and obj.basic_auth_username is not None:
            yield "bearer_token_file", "use either bearer_token_file or basic auth, not both"


class _Locator:
    """Line numbers of keys and table headers, found by scanning the TOML text.

    tomllib reports none, and a message without a line is hard to act on in a
    long file. The scan understands what monitord's files use (tables, arrays
    of tables, dotted and quoted keys, multi-line strings and arrays);
    anything it cannot place falls back to the enclosing table's line.
    """

    _KEY = re.compile(
        r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*="""
    )
    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")

    def __init__(self, text: str) -> None:
        self.lines: dict[Path_, int] = {}
        arrays: dict[tuple[str, ...], int] = {}
        current: Path_ = ()
        in_string: str | None = None
        for number, raw in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if raw.count(in_string) % 2 == 1:
                    in_string = None
                continue
            header = self._HEADER.match(raw)
            if header and not self._KEY.match(raw):
                names = tuple(self._split(header.group(2)))
                if header.group(1) == "[[":
                    arrays[names] = arrays.get(names, 0) + 1
                resolved: list[str | int] = []
                for i, name in enumerate(names, start=1):
                    resolved.append(name)
                    if names[:i] in arrays:
                        resolved.append(arrays[names[:i]] - 1)
                current = tuple(resolved)
                self.lines.setdefault(current, number)
                if header.group(1) == "[[":
                    self.lines.setdefault(current[:-1], number)
                continue
            key = self._KEY.match(raw)
            if key:
                self.lines.setdefault((*current, *self._split(key.group(1))), number)
                rest = raw[key.end() :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_string = quote
                        break

    @staticmethod
    def _split(dotted: str) -> list[str]:
        parts = re.findall(r"""\s*("[^"]*"|'[^']*'|[^.\s]+)\s*(?:\.|$)""", dotted)
        return [p[1:-1] if p[:1] in "\"'" else p for p in parts]

    def line_of(self, path: Path_) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


class _Builder:
    """Turn the parsed TOML document into the dataclasses, reporting the first problem."""

    def __init__(self, source: str | None, locator: _Locator | None) -> None:
        self.source = source
        self.locator = locator

    def fail(self, path: Path_, message: str) -> ConfigError:
        key = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")
        line = self.locator.line_of(path) if self.locator else None
        return ConfigError(f"{key}: {message}" if key else message, path=self.source, line=line)

    def table(self, cls: type[T], data: object, path: Path_) -> T:
        if not isinstance(data, dict):
            raise self.fail(path, f"expected a table, got {_kind(data)}")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                import difflib

                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.fail((*path, key), f"unknown key{hint}")
            kwargs[key] = self.value(cls, key, hints[key], value, (*path, key))
        for name, f in known.items():
            if (
                name not in kwargs
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ):
                raise self.fail(path, f"missing required key {name!r}")
        obj = cls(**kwargs)
        for key, message in _cross_checks(obj):
            raise self.fail((*path, key), message)
        return obj

    def value(self, owner: type, name: str, hint: Any, value: object, path: Path_) -> Any:
        if owner is HttpConfig and name == "basic_auth_users":
            return self.users(value, path)
        if owner is IdentityConfig and name == "labels":
            return self.labels(value, path)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (types.UnionType, typing.Union) and type(None) in args:
            (inner,) = (a for a in args if a is not type(None))
            return self.value(owner, name, inner, value, path)
        if origin is tuple:
            if not isinstance(value, list):
                raise self.fail(path, f"expected an array, got {_kind(value)}")
            return tuple(
                self.element(owner, args[0], item, (*path, i)) for i, item in enumerate(value)
            )
        if dataclasses.is_dataclass(hint):
            return self.table(hint, value, path)  # type: ignore[arg-type]
        try:
            return self.scalar(owner, name, hint, value)
        except ValueError as err:
            raise self.fail(path, str(err)) from None

    def element(self, owner: type, hint: Any, item: object, path: Path_) -> Any:
        if isinstance(item, str) and hint in _FROM_STRING:
            key = _FROM_STRING[hint]
            try:
                self.scalar(hint, key, str, item)  # an error names the element, not its key
            except ValueError as err:
                raise self.fail(path, str(err)) from None
            return self.table(hint, {key: item}, path)
        if dataclasses.is_dataclass(hint):
            return self.table(hint, item, path)  # type: ignore[arg-type]
        try:
            return self.scalar(owner, "", hint, item)
        except ValueError as err:
            raise self.fail(path, str(err)) from None

    def scalar(self, owner: type, name: str, hint: Any, value: object) -> Any:
        minimum = _MINIMUM.get((owner, name))
        if typing.get_origin(hint) is Literal:
            choices = typing.get_args(hint)
            if value not in choices:
                raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
            return value
        if hint is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {_kind(value)}")
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected an integer, got {_kind(value)}")
            if value < (1 if minimum is None else minimum):
                raise ValueError(f"must be at least {1 if minimum is None else int(minimum)}")
            return value
        if hint is float:
            seconds = parse_duration(value)
            if minimum is None and seconds <= 0:
                raise ValueError("must be a duration greater than 0")
            if minimum is not None and seconds < minimum:
                raise ValueError(f"must be at least {minimum:g} s")
            return seconds
        if hint is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {_kind(value)}")
            check = _VALUE_CHECKS.get((owner, name))
            return check(value) if check else value
        raise TypeError(f"config schema: unsupported type {hint!r}")  # a bug, not user error

    def labels(self, value: object, path: Path_) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, dict):
            raise self.fail(path, f'expected a table of name = "value", got {_kind(value)}')
        seen: dict[str, str] = {}
        for name, text in value.items():
            where = (*path, name)
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                raise self.fail(
                    where,
                    "not a Prometheus label name (letters, digits and _, not starting with a "
                    "digit or __)",
                )
            if name in ALERT_LABEL_NAMES:
                raise self.fail(where, f"{name!r} is a label monitord sets on every alert")
            if len(name) > _MAX_LABEL_NAME:
                raise self.fail(
                    where,
                    f"label names are at most {_MAX_LABEL_NAME} characters (journal field "
                    f"{JOURNAL_LABEL_PREFIX}<NAME> is limited to 64)",
                )
            if name.upper() in seen:
                raise self.fail(
                    where,
                    f"{name!r} and {seen[name.upper()]!r} would be the same journal field",
                )
            if not isinstance(text, str):
                raise self.fail(where, f"expected a string, got {_kind(text)}")
            if not text:
                raise self.fail(where, "must not be empty (an empty label is no label)")
            seen[name.upper()] = name
        return tuple(sorted(value.items()))

    def users(self, value: object, path: Path_) -> tuple[BasicAuthUser, ...]:
        if not isinstance(value, dict):
            raise self.fail(path, f'expected a table of user = "bcrypt hash", got {_kind(value)}')
        users = []
        for username, hashed in value.items():
            where = (*path, username)
            if not username:
                raise self.fail(where, "user name must not be empty")
            if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
                raise self.fail(
                    where,
                    'expected a bcrypt hash ("$2b$...", e.g. from `htpasswd -nBC 10 USER`)',
                )
            users.append(BasicAuthUser(username=username, password_hash=hashed))
        return tuple(sorted(users, key=lambda u: u.username))


T = TypeVar("T")


_KINDS: Final = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                 list: "an array", dict: "a table"}  # fmt: skip


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def parse_config(text: str, source: str | None = None) -> Config:
    """Validate TOML text into a `Config`; `source` names the file in error messages."""
    import tomllib  # only commands that read a config file pay for it

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        m = re.search(r"\(at (?:line (\d+), column \d+|end of document)\)$", message)
        line = (int(m.group(1)) if m.group(1) else text.count("\n") or 1) if m else None
        message = message[: m.start()].rstrip() if m else message
        raise ConfigError(f"invalid TOML: {message}", path=source, line=line) from None
    return _Builder(source, _Locator(text)).table(Config, data, ())


def load_config(
    path: str | Path | None = None, *, default_path: str | Path = DEFAULT_CONFIG_PATH
) -> Config:
    """Read and validate a config file.

    `None` means the default path, whose absence means all defaults; a file
    named explicitly must exist. A world-writable file is refused: whoever
    can write it chooses what the daemon reads and where it sends alerts.
    """
    explicit = path is not None
    name = os.fspath(default_path if path is None else path)
    try:
        with open(name, "rb") as stream:
            st = os.fstat(stream.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError("not a regular file", path=name)
            if st.st_mode & stat.S_IWOTH:
                raise ConfigError(
                    f"refusing a world-writable config file (mode {stat.S_IMODE(st.st_mode):04o}); "
                    f"fix with: chmod o-w {name}",
                    path=name,
                )
            raw = stream.read()
    except FileNotFoundError:
        if not explicit:
            return Config()
        raise ConfigError("no such file", path=name) from None
    except IsADirectoryError:
        raise ConfigError("not a regular file", path=name) from None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", path=name) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError("invalid TOML: not UTF-8", path=name, line=line) from None
    return parse_config(text, name)


# `monitord run` flag -> (table, key, check); a flag left unset keeps the file's value.
_OVERRIDES: dict[str, tuple[str, str, Callable[[str], str] | None]] = {
    "source": ("source", "kind", None),
    "audit_log": ("source", "path", _check_nonempty),
    "journal_dir": ("source", "journal_dir", _check_nonempty),
    "listen": ("http", "listen", _check_listen),
    "state_dir": ("state", "dir", _check_nonempty),
    "start": ("source", "start", None),
    "log_level": ("logging", "level", _check_level),
}


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    """Return `config` with the `monitord run` flags that were given applied on top."""
    changes: dict[str, dict[str, Any]] = {}
    for attr, (table, key, check) in _OVERRIDES.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        flag = "--" + attr.replace("_", "-")
        if check is not None:
            try:
                value = check(value)
            except ValueError as err:
                raise ConfigError(f"{flag}: {err}") from None
        changes.setdefault(table, {})[key] = value
    for table, values in changes.items():
        config = dataclasses.replace(
            config, **{table: dataclasses.replace(getattr(config, table), **values)}
        )
    return config


def load_run_config(args: argparse.Namespace) -> Config:
    """The config of `monitord run`: the file (`--config` or the default), then the flags.

    The daemon calls this again on SIGHUP, so flags keep winning after a reload.
    """
    return apply_overrides(load_config(getattr(args, "config", None)), args)


def check_config_main(args: argparse.Namespace) -> int:
    """`monitord check-config FILE`: exit 0 and say ok, or raise ConfigError (exit 2)."""
    load_config(args.file)
    print(f"{args.file}: ok")
    return 0
