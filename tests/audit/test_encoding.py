"""Property tests: values encoded exactly as audit_encode_nv_string does parse back unchanged."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from monitord.audit import AuditRecord, parse_line
from monitord.audit.encoding import decode_hex, encode_value, needs_encoding

U = "c857b1ce-7157-4be5-ae36-29cf22a62ec8"


def audit_encode_nv_string(value: bytes) -> str:
    """An independent transcription of libaudit's rule (audit_value_needs_encoding).

    Hex (uppercase, no quotes) when the value holds `"`, a byte < 0x21 or > 0x7E;
    otherwise the value in double quotes.
    """
    if any(b == 0x22 or b < 0x21 or b > 0x7E for b in value):
        return "".join(f"{b:02X}" for b in value)
    return '"' + value.decode("ascii") + '"'


def line_with(field: str, encoded: str, resrc: str = "disk") -> bytes:
    inner = (
        f'virt=kvm resrc={resrc} reason=attach vm="w" uuid={U} {field}={encoded} '
        'exe="/usr/sbin/libvirtd" hostname=? addr=? terminal=? res=success'
    )
    return (
        "type=VIRT_RESOURCE msg=audit(1700000000.001:7): pid=1 uid=0 auid=4294967295 "
        f"ses=4294967295 msg='{inner}'\x1dUID=\"root\"\n"
    ).encode()


# A value that is not "?" and has no `'` followed by nothing (libvirt never ends a value so).
names = st.binary(min_size=1, max_size=80).filter(lambda b: b != b"?" and b"\n" not in b)


@settings(max_examples=400, deadline=None)
@given(names)
@example(b"my vm")
@example("café-01".encode())
@example(b'say "hi"')
@example(b"bob's=vm")
@example(b"\xff\xfe not utf-8")
@example(b"DEADBEEF")
def test_vm_name_round_trip(raw: bytes) -> None:
    """Any guest name (any bytes, invalid UTF-8 included) decodes back to the original."""
    encoded = audit_encode_nv_string(raw)
    assert encode_value(raw) == encoded
    inner = f"virt=kvm op=start reason=booted vm={encoded} uuid={U} vm-pid=1 res=success"
    line = f"type=VIRT_CONTROL msg=audit(1.000:1): pid=1 msg='{inner}'\n".encode(
        "utf-8", "surrogateescape"
    )
    record = parse_line(line)
    assert isinstance(record, AuditRecord)
    assert record.vm is not None
    assert record.vm.encode("utf-8", "surrogateescape") == raw


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=60).filter(lambda t: t != "?"))
def test_path_round_trip(path: str) -> None:
    """Disk paths (old-/new- fields) and cgroup paths survive encoding, any text."""
    raw = path.encode("utf-8", "surrogateescape")
    for field, resrc in (("new-disk", "disk"), ("cgroup", "cgroup"), ("device", "tpm")):
        record = parse_line(
            line_with(field, audit_encode_nv_string(raw), resrc).decode("utf-8", "surrogateescape")
        )
        assert isinstance(record, AuditRecord)
        assert record.get(field) == path


@given(st.binary(max_size=64))
def test_decode_hex_inverts_hex(raw: bytes) -> None:
    """decode_hex(hex(x)) gives x back (as surrogate-escaped text); non-hex gives None."""
    if raw:
        decoded = decode_hex(raw.hex().upper())
        assert decoded is not None and decoded.encode("utf-8", "surrogateescape") == raw
    assert decode_hex("XYZ1") is None and decode_hex("ABC") is None and decode_hex("") is None


def test_raw_fields_never_hex_decoded() -> None:
    """maj, counts, pid-ns, rdev and uuid stay as written even when they look like hex."""
    for field, value in (
        ("maj", "88"),
        ("new-vcpu", "10"),
        ("pid-ns", "4026532218"),
        ("rdev", "0A"),
    ):
        record = parse_line(line_with(field, value))
        assert isinstance(record, AuditRecord) and record.get(field) == value
    assert needs_encoding(b"a b") and not needs_encoding(b"abc")
    assert encode_value(None) == '"?"'
