"""`monitord status`: the guest table of a running daemon, read from its API.

Works against a secured listener too: `--ca-file` for a certificate no system CA
signed, `--cert`/`--key` when the daemon wants a client certificate, `--user` with
`--password-file` for basic auth.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import json
import ssl
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from monitord.commands import guesttable
from monitord.errors import InputError, RuntimeFailure, UserError
from monitord.textout import printable_doc

TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to talk to a secured daemon: TLS trust and client certificate, basic auth."""

    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None


def credentials(args: argparse.Namespace) -> Credentials:
    """Read the flags into Credentials; a UserError (exit 2) for a bad combination or file."""
    cert, key = getattr(args, "cert", None), getattr(args, "key", None)
    user, password_file = getattr(args, "user", None), getattr(args, "password_file", None)
    if key and not cert:
        raise UserError("--key needs --cert")
    if (user is None) != (password_file is None):
        raise UserError("--user and --password-file go together")
    password = None
    if password_file is not None:
        try:
            with open(password_file, encoding="utf-8") as stream:
                password = stream.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise InputError(f"cannot read --password-file {password_file}: {reason}") from None
    return Credentials(getattr(args, "ca_file", None), cert, key, user, password)


def _tls_context(creds: Credentials) -> ssl.SSLContext | None:
    if creds.ca_file is None and creds.cert is None:
        return None  # urllib's default: the system's CAs
    try:
        ctx = ssl.create_default_context(cafile=creds.ca_file)
    except (OSError, ssl.SSLError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise InputError(f"cannot use --ca-file {creds.ca_file}: {reason}") from None
    if creds.cert is not None:
        try:
            ctx.load_cert_chain(creds.cert, creds.key)
        except (OSError, ssl.SSLError) as err:
            reason = getattr(err, "strerror", None) or str(err)
            names = f"{creds.cert}" + (f" / --key {creds.key}" if creds.key else "")
            raise InputError(f"cannot use --cert {names}: {reason}") from None
    return ctx


def _failure_hint(err: object, https: bool, creds: Credentials) -> str:
    text = str(err).lower()
    if isinstance(err, ssl.SSLCertVerificationError) or "certificate verify failed" in text:
        return "give --ca-file with the CA (or self-signed certificate) the daemon uses"
    if "certificate required" in text or "certificate_required" in text:
        return "the daemon wants a client certificate: give --cert and --key"
    if https and creds.cert is None and isinstance(err, ConnectionError | ssl.SSLError):
        # TLS 1.3 reports a refused client only once the request is sent: a closed connection.
        return "if the daemon wants a client certificate, give --cert and --key"
    return "is monitord running?"


def get_document(
    url: str, path: str, key: str, creds: Credentials | None = None, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """GET `{url}{path}`, a JSON object with a `key` list; one clear line if that fails: a
    RuntimeFailure, or a UserError for a URL that is not one."""
    creds = creds or Credentials()
    base = url.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    target = base + path
    headers = {"Accept-Encoding": "gzip"}
    if creds.user is not None:
        token = base64.b64encode(f"{creds.user}:{creds.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    context = _tls_context(creds)
    try:
        request = urllib.request.Request(target, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            body = resp.read()
            if resp.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
    except urllib.error.HTTPError as err:
        hint = ""
        with contextlib.suppress(ValueError, KeyError, TypeError, OSError):
            hint = ": " + str(json.loads(err.read())["error"])  # the daemon says what is wrong
        if err.code == 401:
            hint = ": give --user and --password-file" if creds.user is None else ": wrong user"
        elif err.code == 429:
            hint = ": too many failed logins from this address, try again later"
        raise RuntimeFailure(f"{target} answered HTTP {err.code} {err.reason}{hint}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        hint = _failure_hint(reason, target.startswith("https:"), creds)
        raise RuntimeFailure(f"cannot reach {target}: {reason} ({hint} ({url}))") from None
    except ValueError as err:
        raise UserError(f"bad URL {url!r}: {err}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise RuntimeFailure(f"{target} did not answer JSON: is it monitord?") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise RuntimeFailure(f"{target} did not answer a {key} document: is it monitord?")
    return doc


def main(args: argparse.Namespace) -> int:
    # An older daemon may send names with bytes that are not UTF-8 as `\udcXX` escapes.
    doc = printable_doc(get_document(args.url, "/api/v1/guests", "guests", credentials(args)))
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(guesttable.render(doc["guests"]))
    sys.stdout.flush()
    return 0
