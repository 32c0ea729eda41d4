"""Text leaving monitord: names whose bytes are not UTF-8, made safe to show.

Guest names, paths and contexts are decoded from the audit log with
`surrogateescape` (monitord/audit/encoding.py), so a byte that is not UTF-8
lives on in the state as a lone surrogate (U+DC80..U+DCFF) and is saved and
restored unchanged. No output may carry a lone surrogate: it cannot be encoded
as UTF-8, and a JSON `\\udcff` escape is rejected by strict parsers. Every
output boundary (the exposition, JSON documents, the terminal) therefore shows
such a byte as the four characters `\\xHH` (lowercase hex, as Python's
`backslashreplace` writes bytes). Valid text is unchanged, and names that
differ in their bytes stay different on the screen and in metric labels (unless
a name spells `\\xHH` literally). Any other lone surrogate, which no decoded
audit value contains, becomes U+FFFD.
"""

from __future__ import annotations

import codecs
import json
from typing import Any, Final

# Error handlers for str.encode("utf-8", ...): one writes plain text, one the inside of a
# JSON string (where the backslash of `\xHH` must itself be escaped).
TEXT_ERRORS: Final = "monitord-text"
JSON_ERRORS: Final = "monitord-json"
_REPLACEMENT: Final = "\ufffd".encode()


def _byte_escapes(err: UnicodeError, backslash: bytes) -> tuple[bytes, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = bytearray()
    for char in err.object[err.start : err.end]:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out += backslash + b"x%02x" % (code - 0xDC00)
        else:
            out += _REPLACEMENT
    return bytes(out), err.end


codecs.register_error(TEXT_ERRORS, lambda err: _byte_escapes(err, b"\\"))
codecs.register_error(JSON_ERRORS, lambda err: _byte_escapes(err, b"\\\\"))


def printable(text: str) -> str:
    """Return text that encodes as UTF-8: escaped bytes shown as `\\xHH`, the rest as is."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", TEXT_ERRORS).decode("utf-8")
    return text


def printable_doc(doc: Any) -> Any:
    """Return a copy of a JSON-like document with every string (keys too) `printable`."""
    if isinstance(doc, str):
        return printable(doc)
    if isinstance(doc, dict):
        return {printable_doc(k): printable_doc(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [printable_doc(v) for v in doc]
    return doc


_COMPACT: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def json_bytes(doc: Any) -> bytes:
    """Encode a document as compact UTF-8 JSON (no trailing newline), escaped bytes as `\\xHH`.

    Characters go out as UTF-8 rather than `\\u` escapes, so the error handler
    sees every lone surrogate and nothing else needs a second pass.
    """
    return _COMPACT.encode(doc).encode("utf-8", JSON_ERRORS)
