"""TLS on the listener, as exporter-toolkit's web config: client certificates, min_version,
files re-read on reload, plain HTTP on the TLS port, bad files as config errors."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from monitord.config import HttpConfig, parse_config
from monitord.errors import ConfigError
from monitord.serve.server import WebServer
from tests.conftest import need_tool
from tests.daemonproc import free_port, monitord_cmd
from tests.serve.test_web import make_server
from tests.serve.tlsfiles import TlsFiles, make_ca, make_cert, make_tls_files
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def client_context(
    tls: TlsFiles, cert: tuple[Path, Path] | None = None, maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def https_get(web: WebServer, ctx: ssl.SSLContext, path: str = "/healthz") -> tuple[int, bytes]:
    host, port = web.address
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def served(request: pytest.FixtureRequest, tls: TlsFiles) -> Iterator[WebServer]:
    settings: dict[str, Any] = getattr(request, "param", {})
    web, _ = make_server(tls_cert=str(tls.server_cert), tls_key=str(tls.server_key), **settings)
    web.start()
    yield web
    web.stop()


def test_https_with_keep_alive(served: WebServer, tls: TlsFiles) -> None:
    """HTTPS answers; one TLS connection carries several requests (one handshake)."""
    assert served.url.startswith("https://")
    host, port = served.address
    conn = http.client.HTTPSConnection(host, port, context=client_context(tls), timeout=10)
    try:
        for path in ("/api/v1/guests", "/metrics", "/healthz"):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
        assert conn.sock is not None and isinstance(conn.sock, ssl.SSLSocket)
    finally:
        conn.close()


def test_plain_http_to_tls_port_is_one_rate_limited_line(
    served: WebServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Plain HTTP to the TLS listener gets a 400 saying so, and the log gets one warning
    line for many such requests: no traceback (the issue's defect 6)."""
    caplog.set_level(logging.DEBUG, logger="monitord")
    for _ in range(5):
        with socket.create_connection(served.address, timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 400") and b"HTTPS server" in answer
    records = [r for r in caplog.records if "plain HTTP" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert all(r.exc_info is None and "Traceback" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("served", [{"min_version": "TLS13"}], indirect=True)
def test_min_version(served: WebServer, tls: TlsFiles) -> None:
    """min_version = "TLS13" refuses a client that speaks at most TLS 1.2."""
    assert https_get(served, client_context(tls))[0] == 200
    with pytest.raises(ssl.SSLError):
        https_get(served, client_context(tls, maximum=ssl.TLSVersion.TLSv1_2))


def test_client_certificates_required(tls: TlsFiles) -> None:
    """RequireAndVerifyClientCert: only a client certificate signed by client_ca_file gets in."""
    web, _ = make_server(
        tls_cert=str(tls.server_cert), tls_key=str(tls.server_key),
        client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(tls.ca),
    )  # fmt: skip
    web.start()
    try:
        good = (tls.client_cert, tls.client_key)
        assert https_get(web, client_context(tls, good)) == (200, b"ok\n")
        for cert in (None, (tls.rogue_cert, tls.rogue_key)):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                https_get(web, client_context(tls, cert))
    finally:
        web.stop()


def test_client_certificates_verified_if_given(tls: TlsFiles) -> None:
    """VerifyClientCertIfGiven: no certificate is fine, a foreign one is refused."""
    web, _ = make_server(
        tls_cert=str(tls.server_cert), tls_key=str(tls.server_key),
        client_auth_type="VerifyClientCertIfGiven", client_ca_file=str(tls.ca),
    )  # fmt: skip
    web.start()
    try:
        assert https_get(web, client_context(tls))[0] == 200
        assert https_get(web, client_context(tls, (tls.client_cert, tls.client_key)))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_get(web, client_context(tls, (tls.rogue_cert, tls.rogue_key)))
    finally:
        web.stop()


def served_serial(web: WebServer) -> int:
    """The serial number of the certificate the listener presents now."""
    host, port = web.address
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    out = subprocess.run(
        [need_tool("openssl"), "x509", "-inform", "DER", "-noout", "-serial"],
        input=der, capture_output=True, check=True,
    ).stdout  # fmt: skip
    return int(out.decode().strip().split("=")[1], 16)


def test_reload_rereads_tls_files_and_users(tmp_path: Path, tls: TlsFiles) -> None:
    """reload() picks up a renewed certificate (same file names), new users and client
    certificate settings without a restart; a bad file keeps the running ones."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(tls.server_cert, cert)
    shutil.copy(tls.server_key, key)
    web, _ = make_server(tls_cert=str(cert), tls_key=str(key))
    web.start()
    try:
        first = served_serial(web)
        renewed = make_cert(tmp_path, "renewed", make_ca(tmp_path, "ca2"))
        shutil.copy(renewed[0], cert)
        shutil.copy(renewed[1], key)
        assert served_serial(web) == first  # nothing re-read without a reload
        assert web.reload(
            HttpConfig(listen=web.config.listen, tls_cert=str(cert), tls_key=str(key))
        )
        assert served_serial(web) != first
        # Client certificates switched on by a reload.
        mtls = HttpConfig(
            listen=web.config.listen, tls_cert=str(tls.server_cert), tls_key=str(tls.server_key),
            client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(tls.ca),
        )  # fmt: skip
        assert web.reload(mtls)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_get(web, client_context(tls))
        assert https_get(web, client_context(tls, (tls.client_cert, tls.client_key)))[0] == 200
        # A bad key file: refused, the running context stays.
        (tmp_path / "bad.key").write_text("not a key\n")
        bad = HttpConfig(
            listen=web.config.listen, tls_cert=str(tls.server_cert),
            tls_key=str(tmp_path / "bad.key"),
        )  # fmt: skip
        assert not web.reload(bad)
        assert https_get(web, client_context(tls, (tls.client_cert, tls.client_key)))[0] == 200
    finally:
        web.stop()


def test_bad_tls_files_are_config_errors(tmp_path: Path, tls: TlsFiles) -> None:
    """A missing key, a key that is no key, or an unreadable client CA is a ConfigError."""
    (tmp_path / "junk.pem").write_text("junk\n")
    for settings in (
        {"tls_key": str(tmp_path / "missing.key")},
        {"tls_key": str(tmp_path / "junk.pem")},
        {"client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(tmp_path / "x")},
    ):
        merged: dict[str, Any] = {
            "tls_cert": str(tls.server_cert), "tls_key": str(tls.server_key), **settings,
        }  # fmt: skip
        web, _ = make_server(**merged)
        with pytest.raises(ConfigError, match="http: cannot load"):
            web.start()


def test_bad_tls_config_exits_2(tmp_path: Path, tls: TlsFiles) -> None:
    """`monitord run` with a TLS key that cannot be loaded exits 2 with one line, no
    traceback (it exited 1 before)."""
    config = tmp_path / "monitord.toml"
    config.write_text(
        f'[http]\nlisten = "127.0.0.1:{free_port()}"\n'
        f'tls_cert = "{tls.server_cert}"\ntls_key = "{tmp_path / "missing.key"}"\n'
    )
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    proc = subprocess.run(
        [*monitord_cmd(), "run", "--config", str(config), "--audit-log", str(log),
         "--state-dir", str(tmp_path / "state"), "--log-level", "error"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot load TLS certificate" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_client_cert_settings_checked_in_config() -> None:
    """client_auth_type and client_ca_file are validated like exporter-toolkit does."""
    tls_keys = 'tls_cert = "/c"\ntls_key = "/k"\n'
    bad = {
        'client_auth_type = "RequireAndVerifyClientCert"\n': "needs client_ca_file",
        'client_ca_file = "/ca"\n': "set client_auth_type too",
        'client_auth_type = "RequireAnyClientCert"\nclient_ca_file = "/ca"\n': "expected one of",
        'min_version = "TLS11"\n': "expected one of",
    }
    for text, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            parse_config("[http]\n" + tls_keys + text)
    with pytest.raises(ConfigError, match="needs TLS"):
        parse_config('[http]\nmin_version = "TLS13"\n')
    ok = parse_config(
        "[http]\n" + tls_keys + 'client_auth_type = "RequireAndVerifyClientCert"\n'
        'client_ca_file = "/ca"\nmin_version = "TLS13"\n'
    )
    assert ok.http.client_auth_type == "RequireAndVerifyClientCert"
    assert json.dumps(ok.http.min_version) == '"TLS13"'


def test_sighup_reloads_tls_files_and_users_of_a_running_daemon(
    tmp_path: Path, tls: TlsFiles
) -> None:
    """`monitord run` with TLS and basic auth: after the certificate file is replaced and a
    user added, SIGHUP makes new connections see both, without a restart."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(tls.server_cert, cert)
    shutil.copy(tls.server_key, key)
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    port = free_port()
    config = tmp_path / "monitord.toml"

    def write_config(users: str) -> None:
        config.write_text(
            f'[http]\nlisten = "127.0.0.1:{port}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
            f"[http.basic_auth_users]\n{users}"
        )
        config.chmod(0o600)

    write_config(f'a = "{hashed}"\n')
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    out = (tmp_path / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [*monitord_cmd(), "run", "--config", str(config), "--audit-log", str(log),
         "--state-dir", str(tmp_path / "state")],
        stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def status(user: str) -> int:
        token = base64.b64encode(f"{user}:pw".encode()).decode()
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, context=client_context(tls), timeout=5
        )
        try:
            conn.request("GET", "/healthz", headers={"Authorization": f"Basic {token}"})
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        wait_until(lambda: status("a") in (200, 503), timeout=30, what="listening",
                   ignore=(OSError,))  # fmt: skip
        assert status("b") == 401
        renewed = make_cert(tmp_path, "renewed", (tls.ca, tls.ca.with_suffix(".key")))
        shutil.copy(renewed[0], cert)
        shutil.copy(renewed[1], key)
        write_config(f'a = "{hashed}"\nb = "{hashed}"\n')
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: status("b") in (200, 503), timeout=15, what="user b after SIGHUP",
                   ignore=(OSError,))  # fmt: skip
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw_sock:
            ctx = client_context(tls)
            with ctx.wrap_socket(raw_sock, server_hostname="127.0.0.1") as s:
                der = s.getpeercert(binary_form=True)
        assert der == ssl.PEM_cert_to_DER_cert(renewed[0].read_text())
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        out.close()
