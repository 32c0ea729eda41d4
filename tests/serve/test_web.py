"""The HTTP listener on a real loopback socket: paths, errors, bad clients, TLS, basic auth."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from monitord.config import BasicAuthUser, HttpConfig, StateConfig, parse_listen
from monitord.errors import RuntimeFailure
from monitord.serve.exporter import make_registry
from monitord.serve.server import WebServer, bind_address
from monitord.state.table import GuestTable
from tests.conftest import need_tool
from tests.state.test_state import UUID, UUID2, Log, feed

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
    """/api/v1/guests lists guests; /api/v1/guests/{uuid} adds events; unknown is a 404 JSON."""
    status, headers, body = get(server, "/api/v1/guests")
    doc = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert doc["generated_at"] == 42.0 and doc["guests"][0]["uuid"] == UUID
    status, _, body = get(server, f"/api/v1/guests/{UUID}")
    one = json.loads(body)
    assert status == 200 and one["disks"] == ["/d/a"] and one["failures"] == 1
    assert one["events"][-1]["result"] == "failed"
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
    assert answer.startswith(b"HTTP/1.0 431"), answer[:80]
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(300))
    answer = raw(server, b"GET /metrics HTTP/1.1\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.0 431"), answer[:80]
    answer = raw(server, b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 414"), answer[:80]
    answer = raw(server, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400"), answer[:80]
    assert get(server, "/api/v1/guests")[0] == 200


def test_200_concurrent_connections() -> None:
    """200 clients at once, with 16 request slots: every request is answered correctly."""
    web, _ = make_server(max_connections=16)
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
    """Clients that send half a request hold a slot until their timeout; others are served."""
    web, _ = make_server(max_connections=8)
    web.request_timeout = 1.5
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
        # The slow ones are cut off after request_timeout, freeing their slots.
        for s in slow:
            s.settimeout(5)
            assert s.recv(100) == b""
    finally:
        for s in slow:
            s.close()
        web.stop()


def test_address_in_use_and_invalid_addresses() -> None:
    """A taken port or a malformed address is a RuntimeFailure with a clear message."""
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
        web, _ = make_server(listen=bad)
        with pytest.raises(RuntimeFailure, match="cannot listen on"):
            web.start()
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


@pytest.fixture
def cert(tmp_path: Path) -> tuple[str, str]:
    openssl = need_tool("openssl")
    key, crt = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(crt), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(crt), str(key)


def test_tls(cert: tuple[str, str]) -> None:
    """With tls_cert/tls_key the listener speaks HTTPS only; a plain client gets nothing."""
    crt, key = cert
    web, _ = make_server(tls_cert=crt, tls_key=key)
    web.start()
    try:
        ctx = ssl.create_default_context(cafile=crt)
        host, port = web.address
        conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
        conn.request("GET", "/api/v1/guests")
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["guests"]
        conn.close()
        assert not raw(web, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/")
        assert web.url.startswith("https://")
    finally:
        web.stop()
    with pytest.raises(RuntimeFailure, match="TLS"):
        make_server(tls_cert=crt, tls_key=crt + ".missing")[0].start()


def test_basic_auth() -> None:
    """With basic_auth_users every path needs a matching user and bcrypt-checked password."""
    import bcrypt

    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web, _ = make_server(basic_auth_users=(BasicAuthUser("prom", hashed),))
    web.start()

    def auth(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    try:
        status, headers, _ = get(web, "/metrics")
        assert status == 401 and headers["www-authenticate"].startswith("Basic")
        assert get(web, "/metrics", headers=auth("prom", "wrong"))[0] == 401
        assert get(web, "/metrics", headers=auth("other", "s3cret"))[0] == 401
        assert get(web, "/metrics", headers={"Authorization": "Basic !!!"})[0] == 401
        assert get(web, "/metrics", headers=auth("prom", "s3cret"))[0] == 200
        assert get(web, "/api/v1/guests", headers=auth("prom", "s3cret"))[0] == 200
    finally:
        web.stop()


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


def test_guest_list_is_encoded_piecewise_exactly_like_json_dumps() -> None:
    """The streamed /api/v1/guests body has the very bytes of one json.dumps of the document."""
    from monitord.serve.server import _document_parts

    docs: list[dict[str, Any]] = [
        {"generated_at": 1.5, "guests": [{"name": "caf\u00e9 \udcff", "disks": []}, {"x": None}]},
        {"generated_at": 2.0, "guests": []},
        {},
    ]
    for doc in docs:
        expected = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        assert b"".join(_document_parts(doc)) == expected
