"""Who may use the listener: TLS (client certificates, oldest version), basic auth, and a
bound on failed logins per client address (Prometheus exporter-toolkit's web config)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from monitord.config import BasicAuthUser, HttpConfig
from monitord.errors import ConfigError

# Addresses remembered for failed logins (least recently failing forgotten first).
MAX_AUTH_CLIENTS: Final = 4096
TLS_VERSIONS: Final = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH: Final = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


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
