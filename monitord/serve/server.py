"""The HTTP listener: /metrics, the JSON guest API, /healthz and a small index page.

An asyncio event loop in one thread owns every connection: a slow or silent
client costs a socket and a small buffer, never a thread. Work that takes CPU
runs in two worker threads: one renders (/metrics, the guest list, gzip), one
checks bcrypt passwords, so neither delays the other nor the loop. The guest
table's lock is taken only for a snapshot; ingestion never waits on a client.

What an adversarial client meets:
- a deadline for the whole request head (TLS handshake included), not per read;
- at most `max_connections_per_client` connections per address (more are
  closed at once), and at most `max_connections` in all: then the connection
  that has waited longest for a request head makes room once it has waited
  DISPLACE_AFTER, and new connections wait in the listen backlog until one does;
- scrapes share renders: one render at a time per kind of answer, reused while
  younger than `cache_max_age`, kept in memory maps that go back to the system
  when the last client has its copy;
- with basic auth: the same bcrypt work for unknown users as for known ones, and
  a token bucket of failed attempts per address (429 when empty).
HTTP/1.1 keep-alive and `Accept-Encoding: gzip`, as Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import hashlib
import hmac
import html
import ipaddress
import itertools
import logging
import mmap
import os
import re
import socket
import ssl
import threading
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from monitord.config import BasicAuthUser, HttpConfig
from monitord.errors import ConfigError, RuntimeFailure
from monitord.logsetup import RateLimitedLogger
from monitord.serve import exporter
from monitord.state.table import GuestTable
from monitord.textout import JSON_ERRORS, json_bytes

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, str]]

UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)
GUEST_PREFIX: Final = "/api/v1/guests/"
MAX_REQUEST_LINE: Final = 8 * 1024
MAX_HEAD: Final = 64 * 1024
MAX_HEADERS: Final = 100
READ_SIZE: Final = 16 * 1024
# An answer goes out in blocks of this size; a client must take each within write_timeout.
SEND_BLOCK: Final = 256 * 1024
# Bodies at least this large live in their own memory map (returned to the system when
# freed, whatever glibc's malloc thresholds have become); smaller ones are plain bytes.
MAP_AT_LEAST: Final = 256 * 1024
# At max_connections, a connection waiting this long for a request head makes room: long
# enough for a client to send its request (or finish a TLS handshake) across the world.
DISPLACE_AFTER: Final = 0.25
# Bodies smaller than this are never compressed.
GZIP_AT_LEAST: Final = 512
GZIP_LEVEL: Final = 1
# bcrypt checks waiting at once, over all clients; beyond it: 429.
MAX_PENDING_AUTH: Final = 16
# Addresses remembered for failed logins (least recently failing forgotten first).
MAX_AUTH_CLIENTS: Final = 4096
TLS_VERSIONS: Final = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH: Final = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
REASONS: Final = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 414: "URI Too Long", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    503: "Service Unavailable", 505: "HTTP Version Not Supported",
}  # fmt: skip
PLAIN_ON_TLS: Final = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)
BUSY: Final = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

INDEX_HTML: Final = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>monitord</title></head>
<body>
<h1>monitord {version}</h1>
<p>libvirt guest state from the audit trail: {tracked} guest(s) tracked.</p>
<ul>
<li><a href="metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="api/v1/guests">/api/v1/guests</a>: every tracked guest (JSON)</li>
<li><code>/api/v1/guests/{{uuid}}</code>: one guest with its recent records (JSON)</li>
<li><a href="healthz">/healthz</a>: health</li>
</ul>
</body></html>
"""


def parse_listen(listen: str) -> tuple[socket.AddressFamily, str, int]:
    """Return (family, host, port) of `HOST:PORT`, `[V6]:PORT` or `:PORT` (all IPv4)."""
    text = listen.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise RuntimeFailure(f"cannot listen on {listen!r}: expected HOST:PORT or [IPV6]:PORT")
    port = int(port_text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise RuntimeFailure(
                f"cannot listen on {listen!r}: {host!r} is no IPv6 address"
            ) from None
        return socket.AF_INET6, host, port
    if host == "":
        return socket.AF_INET, "0.0.0.0", port
    if ":" in host:
        raise RuntimeFailure(f"cannot listen on {listen!r}: write IPv6 addresses as [ADDR]:PORT")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise RuntimeFailure(f"cannot listen on {listen!r}: {err.strerror}") from None
    family, _, _, _, addr = infos[0]
    return family, str(addr[0]), port


def tls_context(config: HttpConfig) -> ssl.SSLContext | None:
    """Build the server's TLS context from the files named in config (read now).

    A file that cannot be used is a ConfigError: exit 2 at start-up, and on
    reload the running context stays.
    """
    cert, key = config.tls_cert, config.tls_key
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("http: tls_cert and tls_key must be given together")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[config.min_version]
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError(
            f"http: cannot load TLS certificate {cert} / key {key}: {reason}"
        ) from None
    ctx.verify_mode = CLIENT_AUTH[config.client_auth_type]
    if config.client_ca_file:
        try:
            ctx.load_verify_locations(cafile=config.client_ca_file)
        except (OSError, ssl.SSLError) as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise ConfigError(
                f"http: cannot load client_ca_file {config.client_ca_file}: {reason}"
            ) from None
    return ctx


def _bcrypt_cost(hashed: bytes) -> int:
    try:
        return int(hashed.split(b"$")[2])
    except (IndexError, ValueError):
        return 10


class BasicAuth:
    """HTTP basic auth against bcrypt hashes (Prometheus exporter-toolkit's web.yml).

    bcrypt is slow on purpose. A verified (user, password) pair is remembered by
    a keyed SHA-256, so a scraper's repeated requests cost one HMAC each. Every
    other attempt costs one bcrypt: an unknown user is checked against a dummy
    hash of the users' highest cost, so the time taken does not tell whether
    the user exists.
    """

    def __init__(self, users: tuple[BasicAuthUser, ...]) -> None:
        import bcrypt  # only needed when basic auth is configured

        self._bcrypt = bcrypt
        self.users = {u.username: u.password_hash.encode() for u in users}
        cost = max((_bcrypt_cost(h) for h in self.users.values()), default=10)
        self._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(rounds=cost))
        self._key = os.urandom(32)
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    @staticmethod
    def credentials(header: str | None) -> tuple[str, str] | None:
        """(user, password) from an Authorization header, None if it has none."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, sep, password = (
                base64.b64decode(header[6:], validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None

    def _token(self, user: str, password: str) -> bytes:
        return hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()

    def known_good(self, user: str, password: str) -> bool:
        """True if this pair was verified before (no bcrypt needed)."""
        token = self._token(user, password)
        with self._lock:
            return token in self._ok

    def verify(self, user: str, password: str) -> bool:
        """The slow check: one bcrypt, known user or not."""
        hashed = self.users.get(user)
        try:
            ok = bool(self._bcrypt.checkpw(password.encode(), hashed or self._dummy))
        except ValueError:
            ok = False
        ok = ok and hashed is not None
        if ok:
            with self._lock:
                if len(self._ok) > 1024:
                    self._ok.clear()
                self._ok.add(self._token(user, password))
        return ok

    def check(self, header: str | None) -> bool:
        """Whether the Authorization header names a user with the right password."""
        creds = self.credentials(header)
        if creds is None:
            return False
        return self.known_good(*creds) or self.verify(*creds)


class FailedLogins:
    """A token bucket of failed logins per client address: `burst`, refilled over `interval`.

    A try takes a token before its bcrypt and gets it back when it succeeds, so
    parallel guesses are bounded as well as sequential ones.
    """

    def __init__(self, burst: int, interval: float, clock: Callable[[], float]) -> None:
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def _bucket(self, address: str) -> list[float]:
        now = self.clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= MAX_AUTH_CLIENTS:
                self._buckets.popitem(last=False)
            bucket = self._buckets[address] = [float(self.burst), now]
        else:
            rate = self.burst / self.interval
            bucket[0] = min(float(self.burst), bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            self._buckets.move_to_end(address)
        return bucket

    def take(self, address: str) -> bool:
        bucket = self._bucket(address)
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def give_back(self, address: str) -> None:
        bucket = self._bucket(address)
        bucket[0] = min(float(self.burst), bucket[0] + 1.0)

    def retry_after(self, address: str) -> int:
        bucket = self._bucket(address)
        return max(1, int((1.0 - bucket[0]) * self.interval / self.burst + 0.999))


# -- bodies --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Body:
    """A rendered answer shared by every client that asks within `cache_max_age`."""

    data: bytes | memoryview
    content_type: str
    made: float  # monotonic time the data was taken from the table
    gzip: bool = False


def _collect(parts: Iterable[bytes], size: int) -> bytes | memoryview:
    """Join parts: small results as bytes, large ones in a memory map of their own.

    A map is unmapped when its last reader lets go, so the memory of a large
    answer goes back to the system at once, whatever malloc would have kept.
    Parts are joined a few thousand at a time (in C), never into one big string.
    """
    if size < MAP_AT_LEAST:
        return b"".join(parts)
    area = mmap.mmap(-1, size)
    pieces = iter(parts)
    while block := b"".join(itertools.islice(pieces, 2048)):
        area.write(block)
    return memoryview(area)


def gzipped(body: Body) -> Body:
    """The gzip form of a body (level 1: a tenth of the size for a fraction of the time)."""
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    view = memoryview(body.data)
    out = [packer.compress(view[i : i + (1 << 20)]) for i in range(0, len(view), 1 << 20)]
    out.append(packer.flush())
    return Body(_collect(out, sum(map(len, out))), body.content_type, body.made, gzip=True)


def document_parts(doc: dict[str, Any]) -> list[bytes]:
    """Encode a guest list document guest by guest: the same bytes as one `json_bytes`,
    without a multi-MiB string for 10,000 guests."""
    dumps = exporter_json.encode
    parts: list[bytes] = []
    sep = b"{"
    for key, value in doc.items():
        parts.append(sep + dumps(key).encode("utf-8", JSON_ERRORS) + b":")
        sep = b","
        if key == "guests" and isinstance(value, list):
            parts.append(b"[")
            parts.extend(
                (b"," if i else b"") + dumps(item).encode("utf-8", JSON_ERRORS)
                for i, item in enumerate(value)
            )
            parts.append(b"]")
        else:
            parts.append(dumps(value).encode("utf-8", JSON_ERRORS))
    parts.append(b"}\n" if doc else b"{}\n")
    return parts


def _json_encoder() -> Any:
    import json

    return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


exporter_json: Final = _json_encoder()


class RenderCache:
    """Single flight and reuse of rendered answers, used from the event loop only.

    `get(key, make)` returns the cached body when younger than `max_age`; else
    the render in flight for that key, or a new one started in the render
    thread. A cached body is dropped once too old even if nobody asks again,
    so an idle daemon keeps no rendered text.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: ThreadPoolExecutor,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loop = loop
        self.executor = executor
        self.max_age = max_age
        self.clock = clock
        self.renders: Counter[str] = Counter()  # renders started, by key kind (tests, bench)
        self._bodies: dict[Any, Body] = {}
        self._flights: dict[Any, asyncio.Future[Body]] = {}

    async def get(self, key: Any, make: Callable[[], Body]) -> Body:
        hit = self._bodies.get(key)
        if hit is not None and self.clock() - hit.made < self.max_age:
            return hit
        flight = self._flights.get(key)
        if flight is None:
            self.renders["+".join(k for k in key if k in ("metrics", "guests", "gzip"))] += 1
            flight = self.loop.run_in_executor(self.executor, make)
            self._flights[key] = flight
            flight.add_done_callback(lambda f: self._landed(key, f))
        return await asyncio.shield(flight)

    def _landed(self, key: Any, flight: asyncio.Future[Body]) -> None:
        self._flights.pop(key, None)
        if flight.cancelled() or flight.exception() is not None:
            return
        body = flight.result()
        self._bodies[key] = body
        delay = max(0.0, body.made + self.max_age - self.clock())
        self.loop.call_later(delay, self._expire, key, body)

    def _expire(self, key: Any, body: Body) -> None:
        if self._bodies.get(key) is body:
            del self._bodies[key]

    def clear(self) -> None:
        self._bodies.clear()


# -- requests --------------------------------------------------------------------------------


class BadRequest(Exception):
    """The request cannot be answered normally: answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        target = self.target
        if target.startswith(("http://", "https://")):  # absolute form
            rest = target.split("://", 1)[1]
            target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        return target.split("?", 1)[0].split("#", 1)[0]

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in self.headers.get(name, "").split(",") if t.strip()}

    @property
    def keep_alive(self) -> bool:
        connection = self.tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @property
    def has_body(self) -> bool:
        length = self.headers.get("content-length", "0").strip()
        return "transfer-encoding" in self.headers or length not in ("", "0")

    @property
    def accepts_gzip(self) -> bool:
        for item in self.headers.get("accept-encoding", "").split(","):
            name, _, params = item.partition(";")
            if name.strip().lower() not in ("gzip", "*"):
                continue
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
        return False


_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def head_end(buf: bytes | bytearray) -> int:
    """The index just after the empty line ending a request head, -1 if not there yet.

    Lines may end in CRLF or a bare LF (RFC 9112 lets servers accept both).
    """
    lf = buf.find(b"\n\n")
    crlf = buf.find(b"\n\r\n")
    ends = [i + 2 for i in (lf,) if i >= 0] + [i + 3 for i in (crlf,) if i >= 0]
    return min(ends) if ends else -1


def parse_head(head: bytes) -> Request:
    """Parse a request head (request line and header fields); BadRequest if malformed."""
    lines = head.split(b"\n")
    while lines and lines[0].strip(b"\r") == b"":  # empty lines before the request line
        lines.pop(0)
    if not lines:
        raise BadRequest(400, "empty request")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method, target, version = (p.decode("latin-1") for p in parts)
    if not _TOKEN.match(parts[0]):
        raise BadRequest(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if re.fullmatch(r"HTTP/\d+(\.\d+)?", version):
            raise BadRequest(505, f"{version} is not supported; use HTTP/1.1")
        raise BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    fields = [line.rstrip(b"\r") for line in lines[1:]]
    fields = [f for f in fields if f]
    if len(fields) > MAX_HEADERS:
        raise BadRequest(431, f"more than {MAX_HEADERS} header fields")
    for line in fields:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest(400, "folded header lines are not accepted")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise BadRequest(400, "malformed header field")
        key = name.decode("latin-1").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(method, target, version, headers)


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes | memoryview = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    gzip: bool = False
    close: bool = False


def error_answer(status: int, message: str, **headers: str) -> Answer:
    body = json_bytes({"error": message, "status": status}) + b"\n"
    return Answer(status, body, "application/json", dict(headers))


# -- connections ----------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Connection:
    """One client connection, as the listener tracks it for its limits."""

    address: str
    since: float  # when it began waiting for its current request head
    waiting: bool = True  # waiting for a request head (idle or partial): may be displaced
    task: asyncio.Task[None] | None = None


class WebServer:
    """The HTTP listener of the daemon (docs/INTERFACE.md, "HTTP")."""

    def __init__(
        self,
        config: HttpConfig,
        registry: CollectorRegistry,
        table: GuestTable,
        health: HealthCheck,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.registry = registry
        self.table = table
        self.health = health
        self.clock = clock
        self.auth = BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
        self.tls: ssl.SSLContext | None = None
        self.failed_logins = FailedLogins(
            config.failed_auth_burst, config.failed_auth_interval, clock
        )
        self.refused: Counter[str] = Counter()  # connections refused or displaced, by reason
        self.cache: RenderCache | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._render = ThreadPoolExecutor(1, thread_name_prefix="monitord-render")
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="monitord-auth")
        self._pending_auth = 0
        self._connections: set[Connection] = set()
        self._per_address: Counter[str] = Counter()
        self._stopping: asyncio.Event | None = None
        self._freed = asyncio.Event()  # a connection ended (made on the loop's thread in _run)
        self._log = RateLimitedLogger(log, burst=1, interval=60.0)
        self._date = (0, "")

    # -- life cycle -----------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when configured with port 0."""
        if self._sock is None:
            raise RuntimeError("WebServer.address before start()")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def start(self) -> None:
        """Bind and serve from a background thread.

        ConfigError (exit 2) for TLS files that cannot be used, RuntimeFailure
        if the address is unusable.
        """
        family, host, port = parse_listen(self.config.listen)
        self.tls = tls_context(self.config)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # `[::]` listens on IPv6 only; an operator wanting both says so with two daemons.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(1024)
        except OSError as err:
            sock.close()
            raise RuntimeFailure(f"cannot listen on {self.config.listen}: {err.strerror}") from None
        sock.setblocking(False)
        self._sock = sock
        loop = asyncio.new_event_loop()
        self._loop = loop
        self.cache = RenderCache(loop, self._render, self.config.cache_max_age, self.clock)
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(loop, ready), name="monitord-http", daemon=True
        )
        self._thread.start()
        ready.wait()
        log.info("http: listening on %s", self.url)

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        self._stopping = asyncio.Event()
        self._freed = asyncio.Event()
        ready.set()
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        """Stop accepting, end every connection and the loop thread, close the listener."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        stopping = self._stopping
        if stopping is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # the loop ended already
        thread.join(timeout=5)
        self._thread = self._loop = None
        self._render.shutdown(wait=False, cancel_futures=True)
        self._checker.shutdown(wait=False, cancel_futures=True)
        if self._sock is not None:
            self._sock.close()

    def reload(self, config: HttpConfig) -> bool:
        """SIGHUP: re-read the TLS files and users and apply the new limits; the listen
        address changes on restart only. On an error the running TLS and users stay
        (logged); returns whether the new settings are in force."""
        try:
            tls = tls_context(config)
            auth = BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
        except ConfigError as err:
            log.error("http: reload refused, keeping the running TLS and users: %s", err)
            return False
        except ImportError:
            log.error("http: reload refused: basic auth needs the bcrypt package")
            return False
        if config.listen != self.config.listen:
            log.warning("http: listen changes on restart only (still %s)", self.config.listen)
        self.config = config
        self.tls, self.auth = tls, auth
        self.failed_logins.burst = config.failed_auth_burst
        self.failed_logins.interval = config.failed_auth_interval
        if self.cache is not None:
            self.cache.max_age = config.cache_max_age
        log.info("http: TLS files and users reloaded")
        return True

    # -- accepting ------------------------------------------------------------------

    async def _serve(self) -> None:
        assert self._sock is not None and self._stopping is not None
        loop = asyncio.get_running_loop()
        accepting = asyncio.ensure_future(self._accept(loop, self._sock))
        await self._stopping.wait()
        accepting.cancel()
        tasks = [c.task for c in self._connections if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(accepting, *tasks, return_exceptions=True)
        if self.cache is not None:
            self.cache.clear()

    async def _accept(self, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
        while True:
            await self._room()
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as err:  # EMFILE and friends: wait, do not spin
                self._log.error("http: accept failed: %s", err)
                await asyncio.sleep(0.1)
                continue
            address = str(peer[0])
            if self._per_address[address] >= self.config.max_connections_per_client:
                self.refused["per_client"] += 1
                self._log.warning(
                    "http: refused a connection from %s: it has max_connections_per_client "
                    "(%d) open already",
                    address,
                    self.config.max_connections_per_client,
                )
                self._refuse(sock)
                continue
            conn = Connection(address, self.clock())
            self._connections.add(conn)
            self._per_address[address] += 1
            conn.task = loop.create_task(self._connection(sock, conn))

    async def _room(self) -> None:
        """Wait until another connection may be accepted.

        At max_connections, the connection that has waited longest for a request
        head (a slow or idle client) makes room once it has waited DISPLACE_AFTER;
        while none has, new connections wait in the listen backlog.
        """
        while len(self._connections) >= self.config.max_connections:
            waiting = [c for c in self._connections if c.waiting]
            oldest = min(waiting, key=lambda c: c.since) if waiting else None
            if oldest is not None and self.clock() - oldest.since >= DISPLACE_AFTER:
                self.refused["displaced"] += 1
                self._log.warning(
                    "http: max_connections (%d) reached: closed the connection from %s, "
                    "which sent no request for %.1f s",
                    self.config.max_connections,
                    oldest.address,
                    self.clock() - oldest.since,
                )
                self._drop(oldest)
                return
            self._freed.clear()
            try:
                async with asyncio.timeout(0.25):
                    await self._freed.wait()
            except TimeoutError:
                pass

    def _drop(self, conn: Connection) -> None:
        self._connections.discard(conn)
        if conn.task is not None:
            conn.task.cancel()

    def _refuse(self, sock: socket.socket) -> None:
        try:
            if self.tls is None:
                sock.send(BUSY)
        except OSError:
            pass
        sock.close()

    # -- one connection ---------------------------------------------------------------

    async def _connection(self, sock: socket.socket, conn: Connection) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            deadline = conn.since + self.config.header_timeout
            try:
                async with asyncio.timeout_at(self._loop_time(deadline)):
                    streams = await self._open(sock, conn)
            except TimeoutError:
                return
            if streams is None:
                return
            reader, writer = streams
            await self._requests(reader, writer, conn)
            # A graceful close sends what is still buffered; abort() below would drop it.
            writer.close()
            async with asyncio.timeout(self.config.write_timeout):
                await writer.wait_closed()
        except (ConnectionError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the client went away or was too slow: nothing to say
        except asyncio.CancelledError:
            pass  # displaced by a newer connection, or the server stops
        except Exception:
            log.exception("http: error while serving %s", conn.address)
        finally:
            self._connections.discard(conn)
            self._freed.set()
            self._per_address[conn.address] -= 1
            if self._per_address[conn.address] <= 0:
                del self._per_address[conn.address]
            if writer is not None:
                writer.transport.abort()
            else:
                sock.close()

    def _loop_time(self, deadline: float) -> float:
        """A deadline on self.clock as the event loop's time."""
        loop = asyncio.get_running_loop()
        return loop.time() + (deadline - self.clock())

    async def _open(
        self, sock: socket.socket, conn: Connection
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Streams over the socket: after the TLS handshake when TLS is on."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_HEAD, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        tls = self.tls
        if tls is not None:
            first = await self._peek(loop, sock)
            if not first:
                return None
            if first[0] != 0x16:  # not a TLS handshake record: plain HTTP or garbage
                self._log.warning(
                    "http: %s sent plain HTTP (or no TLS) to the TLS listener; use https://",
                    conn.address,
                )
                try:
                    sock.recv(MAX_HEAD)  # read what came, so closing does not reset the answer
                    sock.send(PLAIN_ON_TLS)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return None
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=tls, ssl_shutdown_timeout=1.0
                )
            except (ssl.SSLError, OSError) as err:
                self._log.warning("http: TLS handshake with %s failed: %s", conn.address, err)
                return None
        else:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    @staticmethod
    async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
        """The first byte the client sent, left in the socket for the TLS handshake."""
        while True:
            try:
                return sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                pass
            ready = loop.create_future()
            loop.add_reader(sock.fileno(), ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())

    async def _requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        """Serve requests on one connection until it closes, errs or idles out."""
        buffer = bytearray()
        first = True
        while True:
            conn.waiting = True
            if not first:
                # Idle between requests: wait up to idle_timeout for the next one to begin.
                if not buffer:
                    try:
                        async with asyncio.timeout(self.config.idle_timeout):
                            data = await reader.read(READ_SIZE)
                    except TimeoutError:
                        return
                    if not data:
                        return
                    buffer += data
                conn.since = self.clock()
            try:
                request = await self._read_head(reader, buffer, conn)
            except BadRequest as bad:
                await self._send(writer, None, error_answer(bad.status, bad.message), close=True)
                return
            if request is None:
                return
            first = False
            conn.waiting = False
            answer = await self._answer(request, conn)
            close = (
                answer.close
                or not request.keep_alive
                or request.has_body
                or self._stopping is None
                or self._stopping.is_set()
            )
            await self._send(writer, request, answer, close=close)
            if close:
                return

    async def _read_head(
        self, reader: asyncio.StreamReader, buffer: bytearray, conn: Connection
    ) -> Request | None:
        """Read one request head within header_timeout of its start; None if the client
        left or was too slow. The bytes after it stay in buffer (a pipelined request)."""
        try:
            async with asyncio.timeout_at(self._loop_time(conn.since + self.config.header_timeout)):
                while True:
                    end = head_end(buffer)
                    if end >= 0:
                        head = bytes(buffer[:end])
                        del buffer[:end]
                        if len(head) > MAX_HEAD:
                            raise BadRequest(431, "request head too large")
                        return parse_head(head)
                    line_end = buffer.find(b"\n")
                    if (line_end < 0 and len(buffer) > MAX_REQUEST_LINE) or (
                        line_end > MAX_REQUEST_LINE
                    ):
                        raise BadRequest(414, "request line too long")
                    if len(buffer) > MAX_HEAD:
                        raise BadRequest(431, "request head too large")
                    data = await reader.read(READ_SIZE)
                    if not data:
                        return None
                    buffer += data
        except TimeoutError:
            return None

    # -- answers ----------------------------------------------------------------------

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        request: Request | None,
        answer: Answer,
        close: bool,
    ) -> None:
        head = [
            f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, 'Error')}",
            "Server: monitord",
            f"Date: {self._http_date()}",
            f"Content-Type: {answer.content_type}",
            f"Content-Length: {len(answer.body)}",
            "Cache-Control: no-store",
        ]
        if answer.gzip:
            head.append("Content-Encoding: gzip")
        head += [f"{k}: {v}" for k, v in answer.headers.items()]
        if close:
            head.append("Connection: close")
        elif request is not None and request.version == "HTTP/1.0":
            head.append("Connection: keep-alive")
        header = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        body = answer.body if request is None or request.method != "HEAD" else b""
        if len(body) <= 64 * 1024:  # one write, one segment for small answers
            header, body = header + body, b""
        writer.write(header)
        timeout = self.config.write_timeout
        for start in range(0, len(body), SEND_BLOCK):
            writer.write(body[start : start + SEND_BLOCK])
            async with asyncio.timeout(timeout):
                await writer.drain()
        async with asyncio.timeout(timeout):
            await writer.drain()

    async def _answer(self, request: Request, conn: Connection) -> Answer:
        if request.method not in ("GET", "HEAD"):
            answer = error_answer(405, f"method {request.method} not allowed", Allow="GET, HEAD")
            answer.close = request.has_body
            return answer
        denied = await self._authorize(request, conn)
        if denied is not None:
            return denied
        path = request.path
        if path == "/metrics":
            return await self._metrics(request)
        if path in ("/api/v1/guests", "/api/v1/guests/"):
            return await self._guests(request)
        if path.startswith(GUEST_PREFIX):
            uuid = path[len(GUEST_PREFIX) :]
            if not UUID_RE.match(uuid):
                return error_answer(400, f"not a UUID: {uuid[:64]!r}")
            loop = asyncio.get_running_loop()
            doc = await loop.run_in_executor(self._render, self._guest_document, uuid)
            if doc is None:
                return error_answer(404, f"no guest with UUID {uuid} is tracked")
            return Answer(200, doc + b"\n")
        if path == "/healthz":
            ok, reason = self.health()
            text = "ok" if ok else (reason or "unhealthy")
            return Answer(200 if ok else 503, text.encode() + b"\n", "text/plain; charset=utf-8")
        if path in ("/", "/index.html"):
            from monitord import __version__

            page = INDEX_HTML.format(
                version=html.escape(__version__), tracked=self.table.guests_tracked
            )
            return Answer(200, page.encode(), "text/html; charset=utf-8")
        return error_answer(404, f"no such path: {path[:200]}")

    def _guest_document(self, uuid: str) -> bytes | None:
        doc = self.table.guest_document(uuid.lower()) or self.table.guest_document(uuid)
        return None if doc is None else json_bytes(doc)

    async def _authorize(self, request: Request, conn: Connection) -> Answer | None:
        """None when the request may go on, else the 401 or 429 to send."""
        auth = self.auth
        if auth is None:
            return None
        denied = error_answer(401, "unauthorized", **{"WWW-Authenticate": 'Basic realm="monitord"'})
        creds = auth.credentials(request.headers.get("authorization"))
        if creds is None:
            return denied
        if auth.known_good(*creds):
            return None
        limits = self.failed_logins
        if self._pending_auth >= MAX_PENDING_AUTH or not limits.take(conn.address):
            self._log.warning("http: too many failed logins from %s; answering 429", conn.address)
            retry = limits.retry_after(conn.address)
            return error_answer(
                429, "too many failed logins; try again later", **{"Retry-After": str(retry)}
            )
        self._pending_auth += 1
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._checker, auth.verify, *creds)
        finally:
            self._pending_auth -= 1
        if ok:
            limits.give_back(conn.address)
            return None
        return denied

    async def _metrics(self, request: Request) -> Answer:
        assert self.cache is not None
        accept = request.headers.get("accept")
        _, content_type = choose_encoder(accept or "")
        key = ("metrics", content_type)
        body = await self.cache.get(key, lambda: self._render_metrics(accept))
        return await self._maybe_gzip(request, key, body)

    def _render_metrics(self, accept: str | None) -> Body:
        made = self.clock()
        parts, content_type = exporter.render_parts(self.registry, accept)
        return Body(_collect(parts, sum(map(len, parts))), content_type, made)

    async def _guests(self, request: Request) -> Answer:
        assert self.cache is not None
        key = ("guests",)
        body = await self.cache.get(key, self._render_guests)
        return await self._maybe_gzip(request, key, body)

    def _render_guests(self) -> Body:
        made = self.clock()
        parts = document_parts(self.table.document())
        return Body(_collect(parts, sum(map(len, parts))), "application/json", made)

    async def _maybe_gzip(self, request: Request, key: tuple[str, ...], body: Body) -> Answer:
        headers = {"Vary": "Accept-Encoding"}
        if request.accepts_gzip and len(body.data) >= GZIP_AT_LEAST:
            assert self.cache is not None
            packed = await self.cache.get((*key, "gzip"), lambda: gzipped(body))
            return Answer(200, packed.data, body.content_type, headers, gzip=True)
        return Answer(200, body.data, body.content_type, headers)
