"""Basic auth on the listener: bcrypt users, constant work for unknown users, and a bound
on failed attempts per client address."""

from __future__ import annotations

import base64
import http.client
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import bcrypt
import pytest

from monitord.config import BasicAuthUser
from monitord.serve.access import FailedLogins
from monitord.serve.server import WebServer
from tests.serve.test_web import get, make_server

# Cost 10 as `htpasswd -nBC 10` makes: ~50-100 ms a check, large against the noise.
HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=10)).decode()


def auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def secured() -> Iterator[WebServer]:
    web, _ = make_server(
        basic_auth_users=(BasicAuthUser("prom", HASH),),
        failed_auth_burst=1000,
        max_connections_per_client=64,
    )
    web.start()
    yield web
    web.stop()


def test_basic_auth(secured: WebServer) -> None:
    """Every path needs a configured user with its password; others get 401 with a
    challenge."""
    status, headers, _ = get(secured, "/metrics")
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    assert get(secured, "/metrics", headers=auth("prom", "wrong"))[0] == 401
    assert get(secured, "/metrics", headers=auth("other", "s3cret"))[0] == 401
    assert get(secured, "/metrics", headers={"Authorization": "Basic !!!"})[0] == 401
    assert get(secured, "/metrics", headers=auth("prom", "s3cret"))[0] == 200
    assert get(secured, "/api/v1/guests", headers=auth("prom", "s3cret"))[0] == 200
    assert get(secured, "/healthz", headers=auth("prom", "s3cret"))[0] == 200


def timed(web: WebServer, user: str, password: str) -> float:
    t0 = time.perf_counter()
    assert get(web, "/healthz", headers=auth(user, password))[0] == 401
    return time.perf_counter() - t0


def test_unknown_users_cost_what_known_users_cost(secured: WebServer) -> None:
    """A wrong password takes about as long for an unknown user as for a known one (it was
    1.5 ms against 69 ms): the time tells nobody which users exist."""
    unknown, known = [], []
    for _ in range(6):  # interleaved, so a busy moment hits both alike
        unknown.append(timed(secured, "nobody", "guess"))
        known.append(timed(secured, "prom", "guess"))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 < ratio < 2.0, (unknown, known)
    assert statistics.median(unknown) > 0.01  # a real bcrypt ran for the unknown user


def test_failed_logins_are_bounded_per_address() -> None:
    """After failed_auth_burst failures an address gets 429 (with Retry-After) without any
    bcrypt, even with the right password; other addresses are not affected."""
    web, _ = make_server(
        basic_auth_users=(BasicAuthUser("prom", HASH),),
        failed_auth_burst=3,
        failed_auth_interval=600.0,  # no refill while the test runs (refill: the unit test)
    )
    web.start()
    try:
        statuses = [get(web, "/metrics", headers=auth("prom", f"guess{i}"))[0] for i in range(3)]
        assert statuses == [401, 401, 401]
        assert web.auth is not None
        checks = []
        verify = web.auth.verify
        web.auth.verify = lambda *a: checks.append(a) or verify(*a)  # type: ignore[method-assign]
        status, headers, _ = get(web, "/metrics", headers=auth("prom", "guess"))
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert get(web, "/metrics", headers=auth("prom", "s3cret"))[0] == 429
        assert checks == []  # answered without a bcrypt
        # Another client address still gets its own tries.
        host, port = web.address
        conn = http.client.HTTPConnection(host, port, timeout=10, source_address=("127.0.0.3", 0))
        conn.request("GET", "/metrics", headers=auth("prom", "s3cret"))
        assert conn.getresponse().status == 200
        conn.close()
        # Verified once (from the other address), the pair needs no bcrypt and no token.
        assert get(web, "/metrics", headers=auth("prom", "s3cret"))[0] == 200
    finally:
        web.stop()


def test_parallel_guesses_are_bounded_too() -> None:
    """Guesses sent in parallel take their tokens before checking: of 20 at once from one
    address with a burst of 4, at most 4 are checked, the rest get 429."""
    web, _ = make_server(
        basic_auth_users=(BasicAuthUser("prom", HASH),),
        failed_auth_burst=4,
        max_connections_per_client=64,
    )
    web.start()
    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(
                pool.map(lambda i: get(web, "/metrics", headers=auth("x", str(i)))[0], range(20))
            )
        assert statuses.count(401) <= 4 and statuses.count(429) >= 16
        assert set(statuses) <= {401, 429}
    finally:
        web.stop()


def test_token_bucket_arithmetic() -> None:
    """The bucket: burst tries, one back every interval/burst, a success gives its try back,
    and the table of addresses stays bounded."""
    now = [0.0]
    bucket = FailedLogins(burst=2, interval=10.0, clock=lambda: now[0])
    assert bucket.take("a") and bucket.take("a") and not bucket.take("a")
    assert bucket.retry_after("a") == 5
    now[0] = 5.0
    assert bucket.take("a") and not bucket.take("a")
    bucket.give_back("a")
    assert bucket.take("a")
    for i in range(5000):
        bucket.take(f"10.0.{i // 256}.{i % 256}")
    assert len(bucket._buckets) <= 4096
