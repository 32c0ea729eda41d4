"""`monitord status`: the guest table of a running daemon, read from its API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from monitord.commands import guesttable
from monitord.errors import RuntimeFailure

TIMEOUT = 10.0


def fetch(url: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """GET `{url}/api/v1/guests`; a RuntimeFailure with one clear line if that fails."""
    base = url.rstrip("/")
    if "://" not in base:
        base = "http://" + base
    target = base + "/api/v1/guests"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        raise RuntimeFailure(f"{target} answered HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise RuntimeFailure(
            f"cannot reach {target}: {reason} (is monitord running? ({url}))"
        ) from None
    except ValueError as err:
        raise RuntimeFailure(f"bad URL {url!r}: {err}") from None
    try:
        doc = json.loads(body)
    except ValueError:
        raise RuntimeFailure(f"{target} did not answer JSON: is it monitord?") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("guests"), list):
        raise RuntimeFailure(f"{target} did not answer a guest document: is it monitord?")
    return doc


def main(args: argparse.Namespace) -> int:
    doc = fetch(args.url)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(guesttable.render(doc["guests"]))
    sys.stdout.flush()
    return 0
