"""The HTTP listener on a real loopback socket: paths, errors, bad clients, TLS, basic auth."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from monitord.config import HttpConfig, StateConfig, parse_listen
from monitord.errors import RuntimeFailure
from monitord.serve.answers import document_parts
from monitord.serve.exporter import make_registry
from monitord.serve.server import WebServer, bind_address
from monitord.state.table import GuestTable
from monitord.textout import json_bytes
from tests.state.test_state import UUID, UUID2, Log, feed
from tests.waiting import wait_until

Health = list[tuple[bool, str]]


def make_server(
    listen: str = "127.0.0.1:0", health: Health | None = None, **http: Any
) -> tuple[WebServer, GuestTable]:
    table = GuestTable(StateConfig(), clock=lambda: 42.0)
    log = Log()
    feed(table, log.start(disks=("/d/a",)))
    table.apply(log.disk("attach", new="/d/b", res="failed"))
    registry = make_registry(table, "9.9.9")
    state = health if health is not None else [(True, "")]
    web = WebServer(HttpConfig(listen=listen, **http), registry, table, lambda: state[0])
    return web, table


@pytest.fixture
def server() -> Iterator[WebServer]:
    web, _ = make_server()
    web.start()
    yield web
    web.stop()


def get(
    web: WebServer, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = web.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_metrics_text_and_openmetrics(server: WebServer) -> None:
    """/metrics serves the text format, and OpenMetrics when Accept asks for it."""
    status, headers, body = get(server, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b'libvirt_audit_domain_running{uuid="' + UUID.encode() in body
    status, headers, body = get(
        server, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_guest_api(server: WebServer) -> None:
    """/api/v1/guests lists guests; /api/v1/guests/{uuid} is one (its events: none without a
    store, tests/serve/test_api_history.py has them); unknown is a 404 JSON."""
    status, headers, body = get(server, "/api/v1/guests")
    doc = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert doc["generated_at"] == 42.0 and doc["guests"][0]["uuid"] == UUID
    status, _, body = get(server, f"/api/v1/guests/{UUID}")
    one = json.loads(body)
    assert status == 200 and one["disks"] == ["/d/a"] and one["failures"] == 1
    assert one["events"] == []
    status, headers, body = get(server, f"/api/v1/guests/{UUID.upper()}")
    assert status == 200
    status, headers, body = get(server, f"/api/v1/guests/{UUID2}")
    assert status == 404 and headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == 404


@pytest.mark.parametrize(
    "path", ["/api/v1/guests/not-a-uuid", "/api/v1/guests/%00", "/api/v1/guests/" + "a" * 5000,
             f"/api/v1/guests/{UUID}x", f"/api/v1/guests/{UUID}/events"],
)  # fmt: skip
def test_bad_uuid_is_400(server: WebServer, path: str) -> None:
    """A malformed UUID gets a 400 JSON answer."""
    status, _, body = get(server, path)
    assert status == 400 and "not a UUID" in json.loads(body)["error"]


def test_guest_parameters_are_checked_without_a_store(server: WebServer) -> None:
    """Without a state store, /api/v1/guests/{uuid} checks its parameters as with one: an
    unknown or malformed one is a 400; `node` selects the guest (404 names the node)."""
    for query, reason in (("colour=red", "unknown parameter"), ("events=x", "whole number")):
        status, _, body = get(server, f"/api/v1/guests/{UUID}?{query}")
        assert status == 400 and reason in json.loads(body)["error"], query
    status, _, body = get(server, f"/api/v1/guests/{UUID}?node=elsewhere&events=3")
    assert status == 404 and "on node elsewhere" in json.loads(body)["error"]
    status, _, body = get(server, f"/api/v1/guests/{UUID}?events=3")
    assert status == 200 and json.loads(body)["uuid"] == UUID


def test_unknown_paths_and_methods(server: WebServer) -> None:
    """Unknown paths are 404, other methods 405 with Allow, HEAD has headers but no body."""
    for path in ("/nope", "/api/v2/guests", "/metrics/x", "/../etc/passwd"):
        status, _, body = get(server, path)
        assert status == 404, path
        assert json.loads(body)["error"].startswith("no such path")
    status, headers, _ = get(server, "/metrics", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, _, _ = get(server, "/api/v1/guests", method="DELETE")
    assert status == 405
    status, headers, body = get(server, "/api/v1/guests", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, _, body = get(server, "/metrics?name[]=x")
    assert status == 200


def test_index_page(server: WebServer) -> None:
    """/ is a small HTML page linking the others."""
    status, headers, body = get(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    for link in (b'href="metrics"', b'href="api/v1/guests"', b'href="healthz"'):
        assert link in body


def test_healthz_follows_health_check() -> None:
    """/healthz is 200 ok when healthy and 503 with the reason otherwise."""
    health: Health = [(True, "")]
    web, _ = make_server(health=health)
    web.start()
    try:
        assert get(web, "/healthz")[::2] == (200, b"ok\n")
        health[0] = (False, "source not open: /var/log/audit/audit.log")
        status, _, body = get(web, "/healthz")
        assert status == 503 and body == b"source not open: /var/log/audit/audit.log\n"
    finally:
        web.stop()


def raw(web: WebServer, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    with socket.create_connection(web.address, timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may answer and close before reading everything
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def test_huge_headers_and_garbage_get_clean_4xx(server: WebServer) -> None:
    """A huge header line, too many headers, a huge request line or garbage get 4xx, and the
    server goes on serving."""
    answer = raw(server, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(300))
    answer = raw(server, b"GET /metrics HTTP/1.1\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    answer = raw(server, b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414"), answer[:80]
    answer = raw(server, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert get(server, "/api/v1/guests")[0] == 200


def test_200_concurrent_connections() -> None:
    """200 clients at once, with 16 connection slots: the others wait in the listen backlog,
    and every request is answered correctly."""
    web, _ = make_server(max_connections=16, max_connections_per_client=256)
    web.start()
    try:

        def one(i: int) -> int:
            path = "/metrics" if i % 2 else f"/api/v1/guests/{UUID}"
            status, _, body = get(web, path)
            assert body
            return status

        with ThreadPoolExecutor(max_workers=200) as pool:
            statuses = list(pool.map(one, range(200)))
        assert statuses == [200] * 200
    finally:
        web.stop()


def test_slow_clients_do_not_block_others() -> None:
    """Clients that send half a request hold a connection until header_timeout; others are
    served meanwhile, and the slow ones are closed at the deadline."""
    web, _ = make_server(max_connections=8, header_timeout=1.5)
    web.start()
    slow = []
    try:
        for _ in range(5):
            s = socket.create_connection(web.address, timeout=10)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
            slow.append(s)
        t0 = time.monotonic()
        for _ in range(10):
            assert get(web, "/api/v1/guests")[0] == 200
        assert time.monotonic() - t0 < 1.0
        for s in slow:
            s.settimeout(5)
            assert s.recv(100) == b""
    finally:
        for s in slow:
            s.close()
        web.stop()


def test_head_deadline_counts_the_whole_head() -> None:
    """A client sending its head one byte at a time, well within any per-read timeout, is
    closed when header_timeout has passed since it began (the slowloris defect)."""
    web, _ = make_server(header_timeout=1.0)
    web.start()
    try:
        with socket.create_connection(web.address, timeout=5) as s:
            t0 = time.monotonic()
            closed_after = None
            for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                try:
                    s.sendall(bytes([byte]))
                    time.sleep(0.1)
                    s.setblocking(False)
                    try:
                        if s.recv(100) == b"":
                            closed_after = time.monotonic() - t0
                            break
                    except BlockingIOError:
                        pass
                    finally:
                        s.setblocking(True)
                except (BrokenPipeError, ConnectionResetError):
                    closed_after = time.monotonic() - t0
                    break
        assert closed_after is not None and 0.9 <= closed_after < 2.5, closed_after
    finally:
        web.stop()


def connect_from(web: WebServer, source: str) -> socket.socket:
    """A connection from another loopback address (all of 127.0.0.0/8 is local on Linux)."""
    return socket.create_connection(web.address, timeout=5, source_address=(source, 0))


def test_connections_per_client_address_are_capped() -> None:
    """Beyond max_connections_per_client, a client address's connections get a 503 and are
    closed; another address is served as before."""
    web, _ = make_server(max_connections_per_client=4)
    web.start()
    held = []
    try:
        held = [connect_from(web, "127.0.0.2") for _ in range(4)]
        with connect_from(web, "127.0.0.2") as extra:
            assert extra.recv(100).startswith(b"HTTP/1.1 503")
        assert get(web, "/healthz")[0] == 200
        assert web.refused["per_client"] == 1
        held.pop().close()
        wait_until(lambda: web._per_address.get("127.0.0.2") == 3, what="a slot freed")
        with connect_from(web, "127.0.0.2") as again:
            again.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert again.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()
        web.stop()


def test_full_server_makes_room_from_the_longest_waiting() -> None:
    """With every connection slot held by clients that send nothing (from many addresses),
    a new client is still answered: the connection idle longest makes room for it."""
    web, _ = make_server(max_connections=8, header_timeout=30.0)
    web.start()
    held = [connect_from(web, f"127.0.1.{i}") for i in range(1, 9)]
    try:
        wait_until(lambda: len(web._connections) == 8, what="8 connections held")
        t0 = time.monotonic()
        status, _, body = get(web, "/healthz")
        took = time.monotonic() - t0
        assert status == 200 and body == b"ok\n"
        assert took < 3.0, took
        assert web.refused["displaced"] >= 1
    finally:
        for s in held:
            s.close()
        web.stop()


def test_address_in_use_and_invalid_addresses() -> None:
    """A taken port is a RuntimeFailure with a clear message; a malformed address never gets
    that far (the config refuses it, exit 2)."""
    web, _ = make_server()
    web.start()
    try:
        host, port = web.address
        other, _ = make_server(listen=f"{host}:{port}")
        with pytest.raises(RuntimeFailure, match="address already in use|Address already in use"):
            other.start()
    finally:
        web.stop()
    for bad in ("nonsense", "127.0.0.1:99999", "::1:80", "[zz]:80", "127.0.0.1:"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert bind_address(parse_listen(":9781"))[1:] == ("0.0.0.0", 9781)
    assert bind_address(parse_listen("[::1]:9781")) == (socket.AF_INET6, "::1", 9781)
    assert bind_address(parse_listen("localhost:80"))[1:] in (("127.0.0.1", 80), ("::1", 80))


def test_ipv6_loopback() -> None:
    """`[::1]:0` binds IPv6 and serves."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    web, _ = make_server(listen="[::1]:0")
    web.start()
    try:
        assert web.address[0] == "::1"
        assert web.url.startswith("http://[::1]:")
        assert get(web, "/healthz")[0] == 200
    finally:
        web.stop()


def test_stop_then_restart_on_same_port() -> None:
    """stop() releases the port: a new server can bind it at once."""
    web, _ = make_server()
    web.start()
    port = web.address[1]
    web.stop()
    again, _ = make_server(listen=f"127.0.0.1:{port}")
    again.start()
    try:
        assert get(again, "/healthz")[0] == 200
    finally:
        again.stop()


def test_scrapes_do_not_block_ingestion() -> None:
    """While clients scrape in a loop, applying records keeps going at full speed."""
    web, table = make_server()
    web.start()
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            get(web, "/metrics")

    threads = [threading.Thread(target=scraper) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        log = Log(t=1_800_000_000.0)
        records = []
        for i in range(500):
            records += log.start(uuid=f"00000000-0000-0000-0000-{i:012d}", vm=f"g{i}")
        t0 = time.monotonic()
        feed(table, records)
        assert time.monotonic() - t0 < 5.0
        assert table.guests_tracked == 501
    finally:
        stop.set()
        for th in threads:
            th.join()
        web.stop()


def test_guest_list_is_encoded_piecewise_exactly_like_one_encoding() -> None:
    """The streamed /api/v1/guests body has the very bytes of one json_bytes of the document,
    and is UTF-8 even for names with bytes that are not UTF-8."""
    docs: list[dict[str, Any]] = [
        {"generated_at": 1.5, "guests": [{"name": "caf\u00e9 \udcff", "disks": []}, {"x": None}]},
        {"generated_at": 2.0, "guests": []},
        {},
    ]
    for doc in docs:
        body = b"".join(document_parts(doc))
        assert body == json_bytes(doc) + b"\n"
        body.decode("utf-8")
    assert json.loads(b"".join(document_parts(docs[0])))["guests"][0]["name"] == "caf\u00e9 \\xff"


def test_keep_alive_serves_requests_on_one_connection(server: WebServer) -> None:
    """HTTP/1.1 keeps the connection open: several requests, each answered, on one socket."""
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        ports = set()
        for path in ("/metrics", "/healthz", "/api/v1/guests", "/nope", "/metrics"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status in (200, 404) and resp.getheader("Connection") is None
            assert conn.sock is not None
            ports.add(conn.sock.getsockname()[1])
        assert len(ports) == 1
    finally:
        conn.close()


def test_pipelined_requests_and_http10() -> None:
    """Requests sent back to back on one connection are answered in order; HTTP/1.0 closes
    after its answer unless it asks for keep-alive; `Connection: close` is honoured."""
    web, _ = make_server()
    web.start()
    try:
        answer = raw(
            web,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
        assert statuses == [b"200", b"404", b"200"]
        answer = raw(web, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer
        with socket.create_connection(web.address, timeout=5) as s:
            for _ in range(2):
                s.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                data = b""
                while not data.endswith(b"ok\n"):
                    data += s.recv(4096)
                assert data.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in data
        answer = raw(web, b"GET /healthz HTTP/1.1\nConnection: close\n\n")  # bare LF ends
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        web.stop()


def test_gzip_when_asked(server: WebServer) -> None:
    """With `Accept-Encoding: gzip`, /metrics and the guest list come compressed (same
    content); without it, or with q=0, they come plain; small answers stay plain."""
    _, plain_headers, plain = get(server, "/metrics")
    assert "content-encoding" not in plain_headers
    _, headers, packed = get(server, "/metrics", headers={"Accept-Encoding": "br, gzip"})
    assert headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
    # The process collectors' values move between scrapes; the guest lines do not.
    text = gzip.decompress(packed).decode()
    assert [ln for ln in text.split("\n") if ln.startswith("libvirt_")] == [
        ln for ln in plain.decode().split("\n") if ln.startswith("libvirt_")
    ]
    _, headers, body = get(server, "/metrics", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in headers and body.startswith(b"# HELP")
    feed(server.table, Log().start(uuid=UUID2, vm="second"))
    _, headers, body = get(server, "/api/v1/guests", headers={"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip"
    assert {g["uuid"] for g in json.loads(gzip.decompress(body))["guests"]} == {UUID, UUID2}
    _, headers, body = get(server, "/healthz", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in headers and body == b"ok\n"


def test_concurrent_scrapes_share_one_render() -> None:
    """Scrapes within cache_max_age share one render (and one gzip); after it, a new one."""
    web, table = make_server(cache_max_age=2.0, max_connections_per_client=64)
    web.start()
    try:
        assert web.cache is not None
        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(lambda _: get(web, "/metrics")[0], range(20)))
            zipped = list(
                pool.map(
                    lambda _: get(web, "/metrics", headers={"Accept-Encoding": "gzip"})[0],
                    range(20),
                )
            )
        assert results == [200] * 20 and zipped == [200] * 20
        assert web.cache.renders == {"metrics": 1, "metrics+gzip": 1}
        feed(table, Log(t=1_800_000_000.0).start(uuid=UUID2, vm="later"))
        assert b"later" not in get(web, "/metrics")[2]  # still the shared render
        wait_until(lambda: b'domain="later"' in get(web, "/metrics")[2], what="a new render")
        assert web.cache.renders["metrics"] == 2
    finally:
        web.stop()


def test_cache_is_emptied_when_idle() -> None:
    """A render is dropped once older than cache_max_age, even with nobody asking again
    (an idle daemon keeps no rendered text)."""
    web, _ = make_server(cache_max_age=0.3)
    web.start()
    try:
        assert web.cache is not None
        get(web, "/metrics", headers={"Accept-Encoding": "gzip"})
        get(web, "/api/v1/guests")
        assert web.cache._bodies
        wait_until(lambda: not web.cache._bodies, timeout=5, what="cache emptied")
    finally:
        web.stop()


def test_no_cache_still_one_render_at_a_time() -> None:
    """cache_max_age = 0: each scrape gets a render of its own, never older than its request."""
    web, table = make_server(cache_max_age=0.0)
    web.start()
    try:
        assert web.cache is not None
        for _ in range(3):
            assert get(web, "/metrics")[0] == 200
        assert web.cache.renders["metrics"] == 3
        feed(table, Log(t=1_800_000_000.0).start(uuid=UUID2, vm="now"))
        assert b'domain="now"' in get(web, "/metrics")[2]
    finally:
        web.stop()


def test_hostile_names_over_http(server: WebServer) -> None:
    """A guest whose name is bytes that are not UTF-8 (vm=FFFE) keeps /metrics and the API
    answering with valid UTF-8: the bytes are shown as \\xff\\xfe (the issue's defect 1)."""
    server.table.apply(Log().control("start", "booted", vm="\udcff\udcfe", uuid=UUID2))
    status, _, body = get(server, "/metrics")
    assert status == 200
    assert b'domain="\\\\xff\\\\xfe"' in body
    body.decode("utf-8")
    status, _, body = get(server, "/api/v1/guests")
    names = {g["name"] for g in json.loads(body.decode("utf-8"))["guests"]}
    assert status == 200 and "\\xff\\xfe" in names
    status, _, body = get(server, f"/api/v1/guests/{UUID2}")
    assert status == 200 and json.loads(body.decode("utf-8"))["name"] == "\\xff\\xfe"


def test_a_failing_render_is_a_500_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A collector that raises gives a JSON 500 (traceback in the log, once), not a dropped
    connection, and other paths keep answering."""
    from prometheus_client.registry import Collector

    class Broken(Collector):
        def describe(self) -> list[Any]:
            return []  # registering must not call collect()

        def collect(self) -> Iterator[Any]:
            raise RuntimeError("broken collector")

    web, _ = make_server()
    web.registry.register(Broken())
    web.registry.register(Broken())
    web.start()
    try:
        for _ in range(3):
            status, _, body = get(web, "/metrics")
            assert status == 500 and json.loads(body)["status"] == 500
        assert get(web, "/healthz")[0] == 200
        tracebacks = [r for r in caplog.records if r.exc_info and "broken" in str(r.exc_info[1])]
        assert len(tracebacks) == 1
    finally:
        web.stop()


def test_slow_readers_do_not_hold_back_large_answers() -> None:
    """Clients that ask for /metrics and never read it give up their place among the few
    connections sending large answers at a time: another client still gets /metrics at
    once, not after write_timeout."""
    from monitord.serve import server as server_module

    web, table = make_server(write_timeout=20.0, max_connections_per_client=64)
    log = Log(t=1_800_000_000.0)
    for i in range(6000):
        feed(table, log.start(uuid=f"00000000-0000-4000-8000-{i:012d}", vm=f"guest-{i}"))
    web.start()
    stuck = []
    try:
        size = len(get(web, "/metrics")[2])
        assert size > 4 * server_module.SEND_BLOCK
        for _ in range(server_module.SENDERS + 2):
            s = socket.create_connection(web.address, timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
            stuck.append(s)
        time.sleep(0.3)
        t0 = time.monotonic()
        status, _, body = get(web, "/metrics")
        assert status == 200 and len(body) > 4 * server_module.SEND_BLOCK
        assert time.monotonic() - t0 < 5.0
    finally:
        for s in stuck:
            s.close()
        web.stop()


def test_renders_alive_at_once_are_bounded() -> None:
    """While slow clients still hold three renders of a kind, a request gets the newest of
    them instead of a fourth (memory bounded however slowly clients read); once they are
    let go, renders are fresh again."""
    import asyncio
    import gc
    from concurrent.futures import ThreadPoolExecutor as Pool

    from monitord.serve.answers import MAP_AT_LEAST, MAX_GENERATIONS, Body, RenderCache, collect

    loop = asyncio.new_event_loop()
    now = [0.0]
    made: list[Body] = []

    def make() -> Body:  # large enough to live in a memory map, as real renders do
        made.append(Body(collect([b"x" * MAP_AT_LEAST], MAP_AT_LEAST), "text/plain", now[0]))
        return made[-1]

    with Pool(1) as pool:
        cache = RenderCache(loop, pool, max_age=1.0, clock=lambda: now[0])
        held = []
        for i in range(MAX_GENERATIONS + 2):
            now[0] = 2.0 * i
            held.append(loop.run_until_complete(cache.get(("metrics",), make)))
        assert len(made) == MAX_GENERATIONS and cache.stale_served == 2
        assert held[-1] is held[-2] is made[-1]
        held.clear()
        made_before = len(made)
        del made[:]
        loop.run_until_complete(asyncio.sleep(0.01))  # the loop lets go of finished futures
        gc.collect()
        now[0] = 100.0
        loop.run_until_complete(cache.get(("metrics",), make))
        assert len(made) == 1 and made_before == MAX_GENERATIONS
        assert isinstance(made[0].data, memoryview)
        loop.run_until_complete(asyncio.sleep(1.1))  # its expiry timer (real time) fires
        assert not cache._bodies
    loop.close()
