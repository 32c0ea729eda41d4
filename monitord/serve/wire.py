"""HTTP/1.1 on the wire: request heads parsed strictly, answers as plain data."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from monitord.textout import json_bytes

MAX_REQUEST_LINE: Final = 8 * 1024
MAX_HEAD: Final = 64 * 1024
MAX_HEADERS: Final = 100
REASONS: Final = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 414: "URI Too Long", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    503: "Service Unavailable", 505: "HTTP Version Not Supported",
}  # fmt: skip


class BadRequest(Exception):
    """The request cannot be answered normally: answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        target = self.target
        if target.startswith(("http://", "https://")):  # absolute form
            rest = target.split("://", 1)[1]
            target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        return target.split("?", 1)[0].split("#", 1)[0]

    @property
    def query(self) -> str:
        """The query string: after `?`, before any `#`."""
        return self.target.split("#", 1)[0].partition("?")[2]

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in self.headers.get(name, "").split(",") if t.strip()}

    @property
    def keep_alive(self) -> bool:
        connection = self.tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @property
    def has_body(self) -> bool:
        length = self.headers.get("content-length", "0").strip()
        return "transfer-encoding" in self.headers or length not in ("", "0")

    @property
    def accepts_gzip(self) -> bool:
        for item in self.headers.get("accept-encoding", "").split(","):
            name, _, params = item.partition(";")
            if name.strip().lower() not in ("gzip", "*"):
                continue
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
        return False


_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")


def head_end(buf: bytes | bytearray) -> int:
    """The index just after the empty line ending a request head, -1 if not there yet.

    Lines may end in CRLF or a bare LF (RFC 9112 lets servers accept both).
    """
    lf = buf.find(b"\n\n")
    crlf = buf.find(b"\n\r\n")
    ends = [i + 2 for i in (lf,) if i >= 0] + [i + 3 for i in (crlf,) if i >= 0]
    return min(ends) if ends else -1


def parse_head(head: bytes) -> Request:
    """Parse a request head (request line and header fields); BadRequest if malformed."""
    lines = head.split(b"\n")
    while lines and lines[0].strip(b"\r") == b"":  # empty lines before the request line
        lines.pop(0)
    if not lines:
        raise BadRequest(400, "empty request")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method, target, version = (p.decode("latin-1") for p in parts)
    if not _TOKEN.match(parts[0]):
        raise BadRequest(400, "malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if re.fullmatch(r"HTTP/\d+(\.\d+)?", version):
            raise BadRequest(505, f"{version} is not supported; use HTTP/1.1")
        raise BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    fields = [line.rstrip(b"\r") for line in lines[1:]]
    fields = [f for f in fields if f]
    if len(fields) > MAX_HEADERS:
        raise BadRequest(431, f"more than {MAX_HEADERS} header fields")
    for line in fields:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest(400, "folded header lines are not accepted")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise BadRequest(400, "malformed header field")
        key = name.decode("latin-1").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(method, target, version, headers)


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes | memoryview = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    gzip: bool = False
    close: bool = False
    source: object = None  # what `body` belongs to, kept alive until it is sent


def error_answer(status: int, message: str, **headers: str) -> Answer:
    body = json_bytes({"error": message, "status": status}) + b"\n"
    return Answer(status, body, "application/json", dict(headers))
