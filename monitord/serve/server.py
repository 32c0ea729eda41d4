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
  that has waited longest for its request head makes room (after 0.25 s with
  part of a head, 1 s with none), and new connections wait in the listen
  backlog until one does;
- scrapes share renders: one render at a time per kind of answer, reused while
  younger than `cache_max_age`, kept in memory maps that go back to the system
  when the last client has its copy;
- with basic auth: the same bcrypt work for unknown users as for known ones, and
  a token bucket of failed attempts per address (429 when empty).
HTTP/1.1 keep-alive and `Accept-Encoding: gzip`, as Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import html
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from monitord.config import HttpConfig, ListenAddress
from monitord.errors import ConfigError, RuntimeFailure
from monitord.logsetup import RateLimitedLogger
from monitord.serve import api, exporter
from monitord.serve.access import BasicAuth, FailedLogins, tls_context
from monitord.serve.answers import Body, RenderCache, document_parts, make_body
from monitord.serve.wire import (
    MAX_HEAD,
    MAX_REQUEST_LINE,
    REASONS,
    Answer,
    BadRequest,
    Request,
    error_answer,
    head_end,
    parse_head,
)
from monitord.state.table import GuestTable
from monitord.textout import json_bytes

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, str]]

GUEST_PREFIX: Final = "/api/v1/guests/"
READ_SIZE: Final = 16 * 1024
# An answer goes out in blocks of this size (a transport buffers at most one): large while
# the connection is one of the SENDERS, small once it has proved a slow reader.
SEND_BLOCK: Final = 1024 * 1024
SLOW_BLOCK: Final = 64 * 1024
# Answers above ONE_WRITE are sent by at most SENDERS connections at a time: every send is a
# system call after which the loop's thread must win the GIL back from the ingestion
# thread, so the loop's work per turn, and /healthz's wait, stay bounded under a storm.
# A client that takes a block longer than SLOW_DRAIN gives up its place (a slow reader
# costs few system calls, and must not hold the others back).
ONE_WRITE: Final = 64 * 1024
SENDERS: Final = 4
SLOW_DRAIN: Final = 0.5
# At max_connections, a connection that has sent part of a request head for this long makes
# room (the slowloris signature); one that has sent nothing (new, or idle between requests)
# after DISPLACE_SILENT_AFTER, which leaves a crowd of new clients the time to send theirs.
DISPLACE_AFTER: Final = 0.25
DISPLACE_SILENT_AFTER: Final = 1.0
# bcrypt checks waiting at once, over all clients; beyond it: 429.
MAX_PENDING_AUTH: Final = 16
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


def bind_address(listen: ListenAddress) -> tuple[socket.AddressFamily, str, int]:
    """Return the socket family, host and port to bind for a parsed listen address."""
    host, port = listen
    if listen.ipv6:
        return socket.AF_INET6, host, port
    if host == "":
        return socket.AF_INET, "0.0.0.0", port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise RuntimeFailure(f"cannot listen on {host}:{port}: {err.strerror}") from None
    family, _, _, _, addr = infos[0]
    return family, str(addr[0]), port


# -- connections ----------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Connection:
    """One client connection, as the listener tracks it for its limits."""

    address: str
    since: float  # when it began waiting for its current request head
    waiting: bool = True  # waiting for a request head (idle or partial): may be displaced
    partial: bool = False  # part of the awaited request head has arrived
    task: asyncio.Task[None] | None = None
    transport: asyncio.WriteTransport | None = None


class WebServer:
    """The HTTP listener of the daemon (docs/INTERFACE.md, "HTTP")."""

    def __init__(
        self,
        config: HttpConfig,
        registry: CollectorRegistry,
        table: GuestTable,
        health: HealthCheck,
        history: api.History | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.registry = registry
        self.table = table
        self.health = health
        # The store's history (GET /api/v1/events, a guest's `events`); None: no store.
        self.history = history
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
        # Made again on the loop's thread in _run: a connection ended; large answers sending.
        self._freed = asyncio.Event()
        self._senders = asyncio.Semaphore(SENDERS)
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
        family, host, port = bind_address(self.config.address)
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
        self._senders = asyncio.Semaphore(SENDERS)
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
        log.info("http: settings reloaded, TLS files and users read again")
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
            # Cleaned up when the task ends, even if cancelled before it ever ran.
            conn.task.add_done_callback(functools.partial(self._release, conn, sock))

    async def _room(self) -> None:
        """Wait until another connection may be accepted.

        At max_connections, the connection that has waited longest for a request
        head (a slow or idle client) makes room once it has waited DISPLACE_AFTER
        (part of a head sent) or DISPLACE_SILENT_AFTER (nothing sent); while none
        has, new connections wait in the listen backlog.
        """
        while len(self._connections) >= self.config.max_connections:
            now = self.clock()
            ripe = [
                c
                for c in self._connections
                if c.waiting
                and now - c.since >= (DISPLACE_AFTER if c.partial else DISPLACE_SILENT_AFTER)
            ]
            oldest = min(ripe, key=lambda c: c.since) if ripe else None
            if oldest is not None:
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
            conn.transport = writer.transport
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

    def _release(self, conn: Connection, sock: socket.socket, task: object = None) -> None:
        """Forget an ended connection and close it (abort: nothing is left to send)."""
        self._connections.discard(conn)
        self._freed.set()
        left = self._per_address[conn.address] - 1
        if left > 0:
            self._per_address[conn.address] = left
        else:
            del self._per_address[conn.address]
        if conn.transport is not None:
            conn.transport.abort()
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
            conn.waiting, conn.partial = True, bool(buffer)
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
                    conn.partial = bool(buffer)
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
        if len(body) <= ONE_WRITE:  # one write, one segment for small answers
            header, body = header + body, b""
        # The whole answer within write_timeout (Go's WriteTimeout): a client reading slowly
        # holds a connection and a body for that long at most.
        async with asyncio.timeout(self.config.write_timeout):
            writer.write(header)
            if body:
                await self._send_body(writer, body)
            await writer.drain()

    async def _send_body(self, writer: asyncio.StreamWriter, body: bytes | memoryview) -> None:
        senders = self._senders
        await senders.acquire()
        holding = True
        try:
            start = 0
            while start < len(body):
                block = SEND_BLOCK if holding else SLOW_BLOCK
                writer.write(body[start : start + block])
                start += block
                if holding:
                    try:
                        async with asyncio.timeout(SLOW_DRAIN):
                            await writer.drain()
                        continue
                    except TimeoutError:
                        senders.release()
                        holding = False
                await writer.drain()
        finally:
            if holding:
                senders.release()

    async def _answer(self, request: Request, conn: Connection) -> Answer:
        try:
            return await self._route(request, conn)
        except Exception:  # a bug: say so in the log (with its traceback) and to the client
            if self._log.limiter.admit(("answer failed",))[0]:
                log.exception("http: answering %s %s failed", request.method, request.path[:200])
            return error_answer(500, "internal error; see monitord's log")

    async def _route(self, request: Request, conn: Connection) -> Answer:
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
        query = request.query
        # One guest or one page of events: answered here, never queued behind a render.
        if path == "/api/v1/events":
            status, doc = api.events_answer(query, self.history)
            return Answer(status, json_bytes(doc) + b"\n")
        if path.startswith(GUEST_PREFIX):
            uuid, lookup = path[len(GUEST_PREFIX) :], self.table.guest_document
            status, doc = api.guest_answer(uuid, query, lookup, self.history)
            return Answer(status, json_bytes(doc) + b"\n")
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
        packed = request.accepts_gzip
        key = ("metrics", content_type, "gzip" if packed else "identity")

        def render() -> Body:
            made = self.clock()
            parts, kind = exporter.render_parts(self.registry, accept)
            return make_body(parts, kind, made, packed)

        return self._answer_with(await self.cache.get(key, render))

    async def _guests(self, request: Request) -> Answer:
        assert self.cache is not None
        packed = request.accepts_gzip
        key = ("guests", "gzip" if packed else "identity")

        def render() -> Body:
            made = self.clock()
            return make_body(
                document_parts(self.table.document()), "application/json", made, packed
            )

        return self._answer_with(await self.cache.get(key, render))

    @staticmethod
    def _answer_with(body: Body) -> Answer:
        headers = {"Vary": "Accept-Encoding"}
        return Answer(200, body.data, body.content_type, headers, gzip=body.gzip, source=body)
