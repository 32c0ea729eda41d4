"""Certificates for TLS tests, made by the real openssl: a CA, a server and client certificates."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import need_tool


def _run(*args: str) -> None:
    subprocess.run([need_tool("openssl"), *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={name}")  # fmt: skip
    return crt, key


def make_cert(
    directory: Path, name: str, ca: tuple[Path, Path], san: str = "IP:127.0.0.1"
) -> tuple[Path, Path]:
    """A certificate for `name` signed by ca: (certificate, key)."""
    crt, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n")
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")  # fmt: skip
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
         "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return crt, key


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, "ca")
    server = make_cert(directory, "server", ca)
    client = make_cert(directory, "client", ca, san="DNS:prometheus")
    rogue = make_cert(directory, "rogue", make_ca(directory, "rogue-ca"), san="DNS:prometheus")
    return TlsFiles(ca[0], *server, *client, *rogue)
