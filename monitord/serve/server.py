"""The HTTP listener: /metrics, the JSON guest API, /healthz and a small index page.

One thread accepts; each request gets its own thread, at most
`http.max_connections` at a time (beyond that, connections wait in the
kernel's backlog). Every socket has a timeout, so a slow or silent client
holds one slot for a bounded time and never blocks the others. Readers see
consistent snapshots of the guest table and never block ingestion for long.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import os
import re
import selectors
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from prometheus_client import CollectorRegistry

from monitord.config import BasicAuthUser, HttpConfig
from monitord.errors import RuntimeFailure
from monitord.serve import api, exporter
from monitord.state.table import GuestTable

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, str]]
# Blocks of the /metrics body stay below glibc's mmap threshold, so they are reused.
WRITE_BLOCK: Final = 64 * 1024

UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)
GUEST_PREFIX: Final = "/api/v1/guests/"
# Seconds a client may stay silent while we read its request or it reads our answer.
REQUEST_TIMEOUT: Final = 10.0

INDEX_HTML: Final = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>monitord</title></head>
<body>
<h1>monitord {version}</h1>
<p>libvirt guest state from the audit trail: {tracked} guest(s) tracked.</p>
<ul>
<li><a href="metrics">/metrics</a>: Prometheus metrics</li>
<li><a href="api/v1/guests">/api/v1/guests</a>: every tracked guest (JSON)</li>
<li><code>/api/v1/guests/{{uuid}}</code>: one guest with its recent records (JSON)</li>
<li><a href="api/v1/events">/api/v1/events</a>: the history of libvirt records (JSON)</li>
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


class BasicAuth:
    """HTTP basic auth against bcrypt hashes (Prometheus exporter-toolkit's web.yml).

    bcrypt is slow on purpose; a verified (user, password) pair is remembered by
    its salted SHA-256 so a scraper's repeated requests cost one hash check each.
    """

    def __init__(self, users: tuple[BasicAuthUser, ...]) -> None:
        self.users = {u.username: u.password_hash.encode() for u in users}
        self._salt = hashlib.sha256(repr(sorted(self.users.items())).encode()).digest()
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            return False
        token = hmac.new(self._salt, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if token in self._ok:
                return True
        import bcrypt  # only needed when basic auth is configured

        try:
            ok = bool(bcrypt.checkpw(password.encode(), hashed))
        except ValueError:
            return False
        if ok:
            with self._lock:
                if len(self._ok) > 1024:
                    self._ok.clear()
                self._ok.add(token)
        return ok


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(
        self, web: WebServer, family: socket.AddressFamily, address: tuple[str, int]
    ) -> None:
        self.address_family = family
        self.web = web
        self.slots = threading.BoundedSemaphore(max(1, web.config.max_connections))
        self.stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        super().__init__(address, _Handler, bind_and_activate=False)
        if family == socket.AF_INET6:
            # `[::]` listens on IPv6 only; an operator wanting both says so with two daemons.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept until stopped, sleeping in select() with no timeout.

        socketserver's own loop wakes every poll_interval to look for shutdown();
        a pipe wakes this one instead, so an idle daemon has no periodic wake-ups.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self and not self.stopping.is_set():
                        self._handle_request_noblock()  # type: ignore[attr-defined]

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # a wake-up is pending already

    def server_close(self) -> None:
        super().server_close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def process_request(self, request: Any, client_address: Any) -> None:
        # Bounded concurrency: wait for a free slot (new connections queue in the backlog).
        while not self.slots.acquire(timeout=0.2):
            if self.stopping.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("http: error while answering %s", client_address)


def _document_parts(doc: dict[str, Any]) -> list[bytes]:
    """Encode a guest list document guest by guest: the same bytes as one json.dumps,
    without a multi-MiB string for 10,000 guests."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    parts: list[bytes] = []
    sep = b"{"
    for key, value in doc.items():
        parts.append(sep + dumps(key).encode() + b":")
        sep = b","
        if key == "guests" and isinstance(value, list):
            parts.append(b"[")
            parts.extend(
                (b"," if i else b"") + dumps(item).encode() for i, item in enumerate(value)
            )
            parts.append(b"]")
        else:
            parts.append(dumps(value).encode())
    parts.append(b"}\n" if doc else b"{}\n")
    return parts


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "monitord"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.web.request_timeout  # type: ignore[misc]
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (OSError, ssl.SSLError) as err:
                log.debug("http: TLS handshake with %s failed: %s", self.client_address, err)
                self.close_connection = True
                raise ConnectionAbortedError from None

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True  # the client went away or was too slow: nothing to say

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: %s %s", self.address_string(), format % args)

    # -- answers ---------------------------------------------------------------

    def _send(
        self,
        code: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_parts(self, code: int, parts: list[bytes], content_type: str) -> None:
        """Send a body given as pieces, in blocks of about WRITE_BLOCK bytes."""
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sum(map(len, parts))))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command == "HEAD":
            return
        block: list[bytes] = []
        size = 0
        for part in parts:
            block.append(part)
            size += len(part)
            if size >= WRITE_BLOCK:
                self.wfile.write(b"".join(block))
                block, size = [], 0
        if block:
            self.wfile.write(b"".join(block))

    def _json(self, code: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        self._send(code, body, "application/json", headers)

    def _error(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(code, {"error": message, "status": code}, headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib's own errors (bad request line, huge headers) as JSON too.
        self.close_connection = True
        # An unparsable request line leaves HTTP/0.9, which would send no status line.
        self.request_version = "HTTP/1.0"
        try:
            self._error(code, message or self.responses.get(code, ("error",))[0])
        except OSError:
            pass

    def _authorized(self) -> bool:
        auth = self.server.web.auth
        if auth is None or auth.check(self.headers.get("Authorization")):
            return True
        self._error(401, "unauthorized", {"WWW-Authenticate": 'Basic realm="monitord"'})
        return False

    def do_GET(self) -> None:
        if not self._authorized():
            return
        web = self.server.web
        path, _, query = self.path.split("#", 1)[0].partition("?")
        if path == "/metrics":
            parts, content_type = exporter.render_parts(web.registry, self.headers.get("Accept"))
            self._send_parts(200, parts, content_type)
        elif path == "/api/v1/guests" or path == "/api/v1/guests/":
            self._send_parts(200, _document_parts(web.table.document()), "application/json")
        elif path == "/api/v1/events":
            self._json(*api.events_answer(query, web.history))
        elif path.startswith(GUEST_PREFIX):
            uuid = path[len(GUEST_PREFIX) :]
            self._json(*api.guest_answer(uuid, query, web.guest_lookup, web.history))
        elif path == "/healthz":
            ok, reason = web.health()
            text = "ok" if ok else (reason or "unhealthy")
            self._send(200 if ok else 503, text.encode() + b"\n", "text/plain; charset=utf-8")
        elif path in ("/", "/index.html"):
            from monitord import __version__

            page = INDEX_HTML.format(
                version=html.escape(__version__), tracked=web.table.guests_tracked
            )
            self._send(200, page.encode(), "text/html; charset=utf-8")
        else:
            self._error(404, f"no such path: {path[:200]}")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _not_allowed(self) -> None:
        self._error(405, f"method {self.command} not allowed", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed


class WebServer:
    """The HTTP listener of the daemon (CONTRACT.md, "HTTP")."""

    def __init__(
        self,
        config: HttpConfig,
        registry: CollectorRegistry,
        table: GuestTable,
        health: HealthCheck,
        history: api.History | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.table = table
        self.health = health
        self.history = history
        self.request_timeout = REQUEST_TIMEOUT
        self.auth = BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def guest_lookup(self, uuid: str, node: str | None) -> dict[str, Any] | None:
        """The table's document of a guest (api.GuestLookup)."""
        return self.table.guest_document(uuid)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when configured with port 0."""
        if self._server is None:
            raise RuntimeError("WebServer.address before start()")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def _tls_context(self) -> ssl.SSLContext | None:
        cert, key = self.config.tls_cert, self.config.tls_key
        if not cert and not key:
            return None
        if not cert or not key:
            raise RuntimeFailure("http: tls_cert and tls_key must be given together")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as err:
            raise RuntimeFailure(
                f"http: cannot load TLS certificate {cert} / key {key}: {err}"
            ) from None
        return ctx

    def start(self) -> None:
        """Bind and serve from a background thread; RuntimeFailure if the address is unusable."""
        family, host, port = parse_listen(self.config.listen)
        tls = self._tls_context()
        if self.auth is not None:
            try:
                import bcrypt  # noqa: F401
            except ImportError:
                raise RuntimeFailure("http: basic auth needs the bcrypt package") from None
        server = _Server(self, family, (host, port))
        try:
            server.server_bind()
            server.server_activate()
        except OSError as err:
            server.server_close()
            raise RuntimeFailure(f"cannot listen on {self.config.listen}: {err.strerror}") from None
        if tls is not None:
            # The handshake runs in the request's thread (with its timeout), not in accept().
            server.socket = tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="monitord-http", daemon=True,
        )  # fmt: skip
        self._thread.start()
        log.info("http: listening on %s", self.url)

    def stop(self) -> None:
        """Stop accepting and close the listener; requests in flight finish on their own."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        server.server_close()
