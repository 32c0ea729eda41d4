"""audit's value encoding (`audit_encode_nv_string`) and its inverse."""

from __future__ import annotations

import binascii

_HEX_DIGITS = frozenset("0123456789ABCDEFabcdef")


def needs_encoding(value: bytes) -> bool:
    """Tell whether audit writes value as hex: a quote, a space, a control or non-ASCII byte."""
    return any(b == 0x22 or b < 0x21 or b > 0x7E for b in value)


def encode_value(value: str | bytes | None) -> str:
    """Encode a value as `audit_encode_nv_string` does: `"text"`, uppercase hex, or `"?"`."""
    if value is None:
        return '"?"'
    raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    if needs_encoding(raw):
        return raw.hex().upper()
    return '"' + raw.decode("ascii") + '"'


def encode_nv(key: str, value: str | bytes | None) -> str:
    """Return `key=<encoded value>`, the form libvirt's `virAuditEncode` produces."""
    return f"{key}={encode_value(value)}"


def decode_hex(value: str) -> str | None:
    """Decode audit hex to text, None when value is not hex.

    Bytes that are not UTF-8 survive as surrogate escapes, so nothing a guest
    name or path holds is lost.
    """
    if len(value) % 2 or not value or not _HEX_DIGITS.issuperset(value):
        return None
    try:
        raw = binascii.unhexlify(value)
    except binascii.Error:  # pragma: no cover - guarded by the digit check
        return None
    return raw.decode("utf-8", "surrogateescape")
