"""The C leaf against the pure-Python path, byte for byte, in both of its builds.

Each test runs on the installed build (AVX2 scans where the CPU has them) and on a
portable build (`-DMONITORD_NO_SIMD`) compiled here with gcc, so CI tests both. Every
input goes through both paths one line at a time (region() must give the reference JSON
line, the same head and tail, the same ignored reason, or hand the line to Python; never
an answer where Python raises ParseError) and as whole streams through StreamParser (same
output, records, counters, malformed lines and reasons). The leaf's tables are parser.TABLES:
changing one changes both paths, and changing only the Python side fails these checks.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import random
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitord.audit import parser, record
from monitord.audit.jsonl import JsonLines
from monitord.audit.parser import (
    TABLES,
    Ignored,
    ParseError,
    Reader,
    RecordLines,
    StreamParser,
    candidate_spans,
    parse_tail,
    region_reader,
    split_header,
)
from monitord.commands import simulate
from tests.audit.test_encoding import audit_encode_nv_string, line_with
from tests.audit.test_parser_fuzz import REAL, mutate
from tests.conftest import DATA, IN_CI, ROOT, SAMPLES, need_tool
from tests.daemonproc import MonitordProcess, wait_until

SOURCE = ROOT / "monitord" / "audit" / "_fastparse.c"
GOLDEN = sorted(DATA.glob("*.log")) + sorted((DATA / "real").glob("*.log"))
GOLDEN += sorted(SAMPLES.glob("*.log"))
U = "c857b1ce-7157-4be5-ae36-29cf22a62ec8"


def missing(message: str) -> None:
    if IN_CI:  # ./bootstrap installs gcc and python3-dev: CI builds and tests both variants
        pytest.fail(message)
    pytest.skip(message)


def load(path: Path) -> ModuleType:
    """Load a build of the leaf from path, set up with parser.TABLES."""
    loader = importlib.machinery.ExtensionFileLoader("_fastparse", str(path))
    spec = importlib.util.spec_from_file_location("_fastparse", path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    module.setup(TABLES)
    return module


def compile_leaf(out: Path, *defines: str) -> Path:
    """gcc as setup.py would run it, warnings as errors; returns the shared object."""
    gcc = need_tool("gcc")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        missing(f"no Python.h in {include} (python3-dev)")
    target = out / f"_fastparse{sysconfig.get_config_var('EXT_SUFFIX')}"
    cmd = [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", *defines]
    subprocess.run([*cmd, f"-I{include}", str(SOURCE), "-o", str(target)], check=True)
    return target


@pytest.fixture(scope="module", params=["installed", "portable"])
def fast(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The installed build (SIMD where the CPU has it) and a portable one built here."""
    if request.param == "installed":
        if parser.ACCELERATOR_MODULE is None:
            if os.environ.get("MONITORD_PURE_PYTHON", "") not in ("", "0"):
                pytest.skip("MONITORD_PURE_PYTHON is set")
            missing("the C leaf is not built (no compiler at install time)")
        return parser.ACCELERATOR_MODULE  # type: ignore[return-value]
    return load(compile_leaf(tmp_path_factory.mktemp("portable"), "-DMONITORD_NO_SIMD"))


def test_simd_build_compiles_without_warnings(tmp_path: Path) -> None:
    """The AVX2 variant compiles with -Wall -Wextra -Werror too (the portable one in `fast`)."""
    load(compile_leaf(tmp_path))


def readers(fast: ModuleType | None, json: bool) -> Reader[Any]:
    """A fresh reader (own caches) through `fast`, or pure Python for None."""
    records = RecordLines()
    if json:
        lines = JsonLines(records)
        return Reader(lines.line, None, region_reader(fast, None))
    return Reader(records.line, records.head, region_reader(fast, records.tails))


REFERENCE = JsonLines(RecordLines())


def reference(line: bytes) -> bytes | Ignored | str:
    """The Python path's answer for one line: JSON line, Ignored, or the error reason."""
    try:
        return REFERENCE.line(line)
    except ParseError as err:
        return f"error:{err.reason}"


def check_line(fast: ModuleType, line: bytes) -> bool:
    """region() agrees with the reference on one line (JSON and heads); True when C read it."""
    if b"\n" in line:
        handled = [check_line(fast, part) for part in line.split(b"\n")]  # every part checked
        return any(handled)
    buf = line + b"\n"
    want = reference(line)
    nlines, candidates, records, not_virt, not_libvirt, items = fast.region(
        buf, 0, len(buf), 64 * 1024, None
    )
    assert (nlines, candidates) == (1, len(candidate_spans(buf))), line
    if items == [(0, len(line))] or not candidates:
        return False  # left to Python (or not a candidate at all)
    if not_virt or not_libvirt:
        assert want == (parser.NOT_VIRT if not_virt else parser.NOT_LIBVIRT), line
        return True
    assert records == 1 and items == [want], (line, items, want)
    head = split_header(line)
    assert isinstance(head, tuple)
    decoded = parse_tail(head[5].decode("utf-8", "surrogateescape"))
    heads = fast.region(buf, 0, len(buf), 64 * 1024, {})[5]
    assert heads == [(*head[:5], decoded, head[5])], line
    known = {head[5]: "known"}  # a tail the caller has: given back, not decoded again
    assert fast.region(buf, 0, len(buf), 64 * 1024, known)[5][0][5:] == ("known", None)
    assert known == {head[5]: "known"}  # read only
    return True


def check_lines(fast: ModuleType, lines: Iterable[bytes]) -> tuple[int, int]:
    """Check every line; return (lines, lines C read)."""
    total = handled = 0
    for line in lines:
        total += 1
        handled += check_line(fast, line)
    return total, handled


def run(
    data: bytes, read_size: int, reader: Reader[Any], max_line_length: int
) -> tuple[list[object], list[tuple[str, str, bytes]], dict[str, object]]:
    """What StreamParser gives for data fed in read_size chunks: outcomes, errors, counters."""
    errors: list[tuple[str, str, bytes]] = []
    p = StreamParser(
        max_line_length=max_line_length,
        on_error=lambda err, line: errors.append((err.reason, err.detail, line)),
        reader=reader,
    )
    out: list[object] = []
    for i in range(0, len(data), read_size):
        out += p.feed(data[i : i + read_size])
    out += p.finish()
    if out and not isinstance(out[0], bytes):  # records: equal, fields in order, same types
        out = [
            (r, [(k, type(v)) for k, v in r.fields.items()], list(r.enrichment.items()))
            for r in out
        ]  # type: ignore[attr-defined]
    else:
        out = [b"".join(out)]  # type: ignore[arg-type]  # JSON runs may hold several lines
    return out, errors, p.stats.to_json()


def check_stream(
    fast: ModuleType, data: bytes, read_sizes: Iterable[int] = (1 << 20, 4096, 333)
) -> None:
    """JSON lines and records: the C path's output, errors and counters equal Python's."""
    sizes = list(read_sizes)
    for size, max_len in [(size, 64 * 1024) for size in sizes] + [(sizes[-1], 700)]:
        for json in (True, False):
            want = run(data, size, readers(None, json), max_len)
            assert run(data, size, readers(fast, json), max_len) == want


def virt_lines(data: bytes) -> list[bytes]:
    return [data[a:b] for a, b in candidate_spans(data + b"\n")]


def test_tables_are_the_parsers(fast: ModuleType) -> None:
    """The leaf reports the very tables parser.TABLES holds (no copy of its own)."""
    assert fast.tables() is TABLES


def test_golden_inputs_line_by_line(fast: ModuleType) -> None:
    """Every candidate line of the golden logs and samples: C equals Python, most in C."""
    lines = [line for path in GOLDEN for line in virt_lines(path.read_bytes())]
    total, handled = check_lines(fast, lines)
    assert total > 300
    assert handled > 0.9 * total  # the leaf really runs (and so can fail this test)


def test_golden_inputs_as_streams(fast: ModuleType) -> None:
    """Each golden log parses to the same bytes, records, counters and errors on both paths."""
    for path in GOLDEN:
        check_stream(fast, path.read_bytes())


def test_simulated_logs(fast: ModuleType) -> None:
    """Seeded mixed (5% VIRT, enriched and raw) and VIRT-only logs: identical output."""
    for seed in (1, 2):
        for enriched in (True, False):
            mixed = b"".join(simulate.mixed_log(seed, 20_000, enriched=enriched))
            check_stream(fast, mixed, read_sizes=(1 << 20, 8191))
            virt = b"".join(simulate.virt_only_log(seed, 3000, enriched=enriched))
            total, handled = check_lines(fast, virt.splitlines())
            assert handled == total  # libvirt's own shapes never need the Python path
            check_stream(fast, virt, read_sizes=(1 << 20,))


def test_fuzz_corpus(fast: ModuleType) -> None:
    """The fuzz test's mutations of real lines (and random bytes): C never disagrees."""
    rng = random.Random(20240601)
    mutants = [mutate(rng, rng.choice(REAL)) for _ in range(20_000)]
    mutants += [rng.randbytes(rng.randrange(0, 300)) for _ in range(2000)]
    check_lines(fast, mutants)
    check_stream(fast, b"\n".join(mutants) + b"\n", read_sizes=(1 << 20, 1000))


EDGE = [
    # continuation tokens, runs of spaces, quoted values with spaces, duplicates
    f'virt=kvm resrc=shmem reason=start vm="a" uuid={U} size=4 path=/dev/shm/my file x',
    f'virt=kvm resrc=shmem reason=start vm="a" uuid={U} path=a  b   c path=x res=success',
    f'virt=kvm op=start vm="a b c" uuid={U} exe="/usr/bin/x y" res=success',
    f'virt=kvm op=start vm="a b uuid={U} res=failed',
    f'virt=kvm op=start vm=" uuid={U} res=0',
    f"virt=kvm op=start vm=? uuid={U} vm=616263 uuid=x res=1",
    f"virt=kvm op=start vm=? foo bar uuid={U} res=success",
    f'virt=kvm op=start vm="?" uuid={U} =x bare res=?',
    f'virt=kvm op=start vm=6E616D65 uuid={U} res="success" trailing ',
    f" virt=kvm  op=start vm=41 uuid={U} res=weird",
    # path decoding by resrc
    f'virt=kvm resrc=net reason=open vm="a" uuid={U} net=52:54:00:00:00:01 '
    "path=2F6465762F6E65742F74756E rdev=0A:C8 res=success",
    f'virt=kvm resrc=cgroup reason=allow vm="a" uuid={U} cgroup=2F78 class=path '
    "path=2F6465762F6E756C6C rdev=01:03 acl=rw res=success",
    f'virt=kvm resrc=disk reason=start vm="a" uuid={U} path=2F6465762F6E756C6C res=success',
    f'virt=kvm resrc="net" reason=open vm="a" uuid={U} path=41 res=success',
    f'virt=kvm path=41 resrc=net vm="a" uuid={U} res=success',
    f'virt=kvm resrc=net x reason=open vm="a" uuid={U} path=41 res=success',
    f'virt=kvm resrc=? reason=open vm="a" uuid={U} path=41 path=? res=success',
    # hex: odd length, lowercase, invalid UTF-8, astral, controls, DEL
    f"virt=kvm op=start vm=ABC uuid={U} res=success",
    f"virt=kvm op=start vm=6162 uuid={U} old-disk=ff00fe new-disk=F09F9880 res=success",
    f"virt=kvm op=start vm=0A0D09085C22 uuid={U} device=7F1F00 res=success",
    f"virt=kvm op=start vm=EDA080 uuid={U} disk=C3 chardev=E282AC res=success",
    f'virt=kvm op=start vm="a\\\\b" uuid={U} maj=88 new-vcpu=10 pid-ns=ABCD res=success',
    f'virt=kvm op=start vm="50%" uuid={U} exe=%s%d%r res=%success',
    # uuids: canonical (either case), and not
    f"virt=kvm op=start vm=a uuid={U.upper()} res=success",
    f'virt=kvm op=start vm=a uuid="{U}" res=success',
    "virt=kvm op=start vm=a uuid=2fd940bb-26PAM:session_open res=success",
    f"virt=kvm op=start vm=a uuid={U[:-1]} res=success",
    f"virt=kvm op=start vm=a uuid={U}0 res=success",
    f"virt=kvm op=start vm=a uuid={U.replace('-', '_')} res=success",
    "virt=kvm op=start vm=a uuid=? res=success",
    f"virt=kvm op=start vm=a uuid={U.replace('-', '')} res=success",
    # not libvirt
    'virt=kvm op=start vm="a" res=success',
    f'op=start vm="a" uuid={U} res=success',
]
OUTERS = [
    "pid=1 uid=0 auid=4294967295 ses=4294967295 subj=unconfined",
    "pid=-0 uid=+5 auid=007 ses= subj=?",
    "pid=1_0 uid=0",
    'pid=abc uid=0x10 auid=- ses=99999999999999999999 subj=a"b\\c',
    "uid=0 pid=2 pid=3  subj=x subj=y",
    "",
]
HEADERS = [
    "type=VIRT_CONTROL msg=audit(1700000000.123:42): ",
    "type=VIRT_RESOURCE msg=audit(1700000000.120:00042): ",
    "node=host-1 type=VIRT_MACHINE_ID msg=audit(5.:1): ",
    'node=a"b\\c type=UNKNOWN[2501] msg=audit(.5:1): ',
    "node= type=UNKNOWN[02510] msg=audit(1:1): ",
    "node=a%sb%d%% type=VIRT_CONTROL msg=audit(1:1): ",
    "type=UNKNOWN[2600] msg=audit(1:1): ",
    "type=UNKNOWN[25] msg=audit(1:1): ",
    "type=UNKNOWN[25x] msg=audit(1:1): ",
    "type=UNKNOWN[0000000000002501] msg=audit(1:1): ",
    "type=VIRT_CREATE msg=audit(1700000000.1234567890123456789:1): ",
    "type=VIRT_DESTROY msg=audit(1.2.3:1): ",
    "type=VIRT_MIGRATE_IN msg=audit(1:): ",
    "type=VIRT_MIGRATE_OUT msg=audit(1:1:2): ",
    "type=VIRT_CONTROLX msg=audit(1:1): ",
    "type=VIRT_INTEGRITY_CHECK msg=audit(123456789012345678901234567890123:1): ",
    "type=VIRT_CONTROL msg=audit(1:99999999999999999999): ",
    "type=VIRT_CONTROL msg=audit(1:0000000000000000000000000000001): ",
    "type=VIRT_CONTROL msg=audit(1:100000000000000000000): ",
]
ENRICHMENTS = ["", '\x1dUID="root" AUID="unset"', '\x1d UID=root UID="x" =y z "a"="b" Q=""']


def edge_lines() -> list[bytes]:
    lines = []
    for h in HEADERS:
        for o in OUTERS:
            for inner in EDGE:
                for e in ENRICHMENTS[:2] if o else ENRICHMENTS:
                    lines.append(f"{h}{o} msg='{inner}'{e}".encode())
    lines += [
        f"type=VIRT_CONTROL msg=audit(1:1): pid=1 msg='virt=kvm uuid={U} 'x''".encode(),
        b"type=VIRT_CONTROL msg=audit(1:1): pid=1 msg='",
        b"type=VIRT_CONTROL msg=audit(1:1): pid=1",
        b"type=VIRT_CONTROL msg=audit(1:1) pid=1 msg='virt=kvm'",
        f"type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid={U}'\r\r".encode(),
        f"type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid={U}'\x1dA=1\x1dB=2".encode(),
        f"type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid={U}'\x1dA=\xc3\xa9".encode(),
        f"type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid={U} vm=\xff'".encode("latin-1"),
        b"type=VIRT_CONTROL\x1d msg=audit(1:1): msg='virt=kvm uuid=x'",
        b"type=VIRT_CONTROL msg=audit(1:1\x1d): msg='virt=kvm uuid=x'",
        b"node=a\tb type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid=x'",
        b"node=type=VIRT_CONTROL msg=audit(1:1): msg='virt=kvm uuid=x'",
        b"type= msg=audit(1:1): msg='virt=kvm uuid=x'",
        b"type=UNKNOWN[" + b"1" * 5000 + b"] msg=audit(1:1): msg='virt=kvm uuid=x'",
        b"type=VIRT_CONTROL msg=audit(1:" + b"9" * 5000 + b"): msg='virt=kvm uuid=x'",
    ]
    return lines


def test_edge_cases(fast: ModuleType) -> None:
    """Crafted shapes: continuations, quotes, path by resrc, hex, uuids, ints, types, stamps."""
    lines = edge_lines()
    total, handled = check_lines(fast, lines)
    assert handled > total // 3
    noise = b'type=SYSCALL msg=audit(1:2): key="type=VIRT_RESOURCE" a=1\n'
    node_needles = [
        b"node=type=VIRT_x type=UNKNOWN[2501] msg=audit(1:1): msg='virt=a uuid=b'",
        b"node=type=UNKNOWN[25x type=VIRT_CONTROL msg=audit(1:1): msg='virt=a uuid=b'",
        b"node=type=VIRT_x type=VIRT_CONTROL msg=audit(1:1): msg='virt=a uuid=b'",
        b"node=n type=SYSCALL msg=audit(1:1): type=VIRT_CONTROL",
        b"xtype=VIRT_CONTROL msg=audit(1:1): msg='virt=a uuid=b'",
        b"node=type=VIRT_CONTROL",
    ]
    check_lines(fast, node_needles)
    data = b"\n".join(lines + node_needles) + b"\n" + noise * 3 + lines[0]  # no final newline
    check_stream(fast, data, read_sizes=(1 << 20, 4096, 97))


HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HYPOTHESIS
@given(raw=st.binary(min_size=1, max_size=80).filter(lambda b: b != b"?" and b"\n" not in b))
@example(raw=b"\xff\xfe not utf-8")
@example(raw="\U0001f600 \x7f".encode())
@example(raw=b"\xed\xa0\x80\xc3")
def test_any_name_or_path(fast: ModuleType, raw: bytes) -> None:
    """Any guest name or path (any bytes, hex-encoded as libaudit does): C equals Python."""
    encoded = audit_encode_nv_string(raw)
    lines = [
        line_with(key, encoded, resrc)
        for key, resrc in (
            ("vm", "disk"),
            ("new-disk", "disk"),
            ("cgroup", "cgroup"),
            ("path", "net"),
            ("path", "shmem"),
            ("device", "tpm"),
        )
    ]
    assert all(check_line(fast, line.rstrip(b"\n")) for line in lines)
    check_stream(fast, b"".join(lines), read_sizes=(1 << 20,))


@HYPOTHESIS
@given(whole=st.text("0123456789", max_size=18), fraction=st.text("0123456789", max_size=18))
@example(whole="0", fraction="0001")
@example(whole="0", fraction="00001")
@example(whole="1700000006", fraction="050")
@example(whole="000", fraction="5")
@example(whole="123456789012345", fraction="6")
@example(whole="12345678901234", fraction="5")
@example(whole="0", fraction="000123456789012345")
@example(whole="9999999999999999", fraction="")
def test_any_stamp(fast: ModuleType, whole: str, fraction: str) -> None:
    """Any stamp: the JSON time is repr(float(stamp)) (C writes most stamps as they are)."""
    for stamp in (whole, f"{whole}.{fraction}"):
        check_line(fast, f"type=VIRT_CONTROL msg=audit({stamp}:1): msg='virt=a uuid={U}'".encode())


@HYPOTHESIS
@given(text=st.text(min_size=0, max_size=60))
def test_any_text_in_a_line(fast: ModuleType, text: str) -> None:
    """Arbitrary text in the inner message, the outer fields and the enrichment never makes
    C disagree."""
    raw = text.encode("utf-8", "surrogateescape")
    head = b"type=VIRT_CONTROL msg=audit(1.5:2): pid=1 "
    inner = f"msg='virt=kvm uuid={U}".encode()
    for line in (head + inner + b" vm=" + raw + b"'", head + raw + b" " + inner + b"'",
                 head + inner + b"'\x1d" + raw):  # fmt: skip
        check_line(fast, line)
        check_stream(fast, line + b"\n", read_sizes=(1 << 20,))


# ---- the tables: one definition, given to the leaf at set-up ----------------------------------

LINE = (
    f"type=VIRT_RESOURCE msg=audit(1.5:2): pid=1 uid=0 msg='virt=kvm resrc=disk reason=start "
    f'vm="a" uuid={U.upper()} foo=616263 path=2F78 exe="/x" res=ok\'\x1dUID="root"\n'
).encode()
# (TABLES key, its Python-side home: module and global, the changed value)
CHANGES: list[tuple[str, ModuleType, str, Callable[[Any], Any]]] = [
    ("encoded_keys", parser, "_ENCODED_KEYS", lambda t: t | {"foo"}),
    ("encoded_path_resrc", parser, "_ENCODED_PATH_RESRC", lambda t: t | {"disk"}),
    ("results", record, "RESULTS", lambda t: {**t, "ok": "success"}),
    ("document", record, "DOCUMENT_KEYS", lambda t: tuple(k for k in t if k != "exe")),
    ("uuid_digits", parser, "UUID_DIGITS", lambda t: t.lower()),
]


@pytest.fixture
def tables(fast: ModuleType) -> Iterator[Callable[[str, bool], None]]:
    """change(key, leaf_too): change one table in parser.py, given to the leaf too (as
    parser.TABLES does) or, to show what a copy in C would risk, not."""
    patch = pytest.MonkeyPatch()

    def change(key: str, leaf_too: bool) -> None:
        _, home, name, new = next(c for c in CHANGES if c[0] == key)
        value = new(TABLES[key])
        patch.setattr(home, name, value)
        if leaf_too:
            patch.setitem(TABLES, key, value)
            fast.setup(TABLES)

    def forget() -> None:  # the Python path's caches hold what the old tables made
        for cache in (parser._TOKENS, parser._OUTERS, parser._ENRICHMENTS, parser._TYPES):
            cache.clear()

    forget()
    yield change
    patch.undo()
    fast.setup(TABLES)
    forget()


def outputs(fast: ModuleType | None) -> list[object]:
    return [run(LINE, 1 << 20, readers(fast, json), 1 << 16) for json in (True, False)]


@pytest.mark.parametrize("key", [c[0] for c in CHANGES])
def test_a_changed_table_changes_both_paths(
    fast: ModuleType, tables: Callable[[str, bool], None], key: str
) -> None:
    """Changing a table in parser.py changes what both paths make of a line, alike."""
    before = outputs(None)
    tables(key, True)
    after = outputs(None)
    assert after != before  # the table matters for this line
    assert outputs(fast) == after


@pytest.mark.parametrize("key", [c[0] for c in CHANGES])
def test_a_table_changed_on_one_side_fails_parity(
    fast: ModuleType, tables: Callable[[str, bool], None], key: str
) -> None:
    """A table changed in Python alone (as a copy in C would allow): the parity checks fail."""
    tables(key, False)
    assert outputs(fast) != outputs(None)
    with pytest.raises(AssertionError):
        check_stream(fast, LINE, read_sizes=(1 << 20,))


def test_types_table_drives_the_leaf(fast: ModuleType, tables: Callable[[str, bool], None]) -> None:
    """A record type the leaf is given (in the VIRT range) is read as such, others are not."""
    line = f"type=VIRT_NEW msg=audit(1.5:2): pid=1 msg='virt=kvm uuid={U}'\n".encode()
    assert fast.region(line, 0, len(line), 1 << 16, None)[3] == 1  # not_virt
    try:
        fast.setup({**TABLES, "types": {**TABLES["types"], "VIRT_NEW": 2599}})  # type: ignore[dict-item]
        out = fast.region(line, 0, len(line), 1 << 16, None)[5]
        assert b'"type":"VIRT_NEW","type_id":2599' in out[0]
        fast.setup({**TABLES, "types": {**TABLES["types"], "VIRT_NEW": 2600}})  # type: ignore[dict-item]
        assert fast.region(line, 0, len(line), 1 << 16, None)[3] == 1  # out of the range
    finally:
        fast.setup(TABLES)


def test_setup_refuses_incomplete_tables(fast: ModuleType) -> None:
    """A missing or malformed table is an error, and the leaf reads nothing until set up."""
    try:
        with pytest.raises(KeyError):
            fast.setup({k: v for k, v in TABLES.items() if k != "raw_keys"})
        with pytest.raises(RuntimeError):
            fast.region(b"x\n", 0, 2, 10, None)
        with pytest.raises(ValueError):
            fast.setup({**TABLES, "needles": (b"x",)})
    finally:
        fast.setup(TABLES)
    assert fast.tables() is TABLES


def test_pure_python_switch_and_cli(tmp_path: Path) -> None:
    """MONITORD_PURE_PYTHON=1 turns the leaf off; `monitord parse` prints the same bytes and
    messages either way."""
    if parser.ACCELERATOR_MODULE is None:
        missing("the C leaf is not built (or MONITORD_PURE_PYTHON is set)")
    log = tmp_path / "edge.log"
    log.write_bytes(b"\n".join(edge_lines()) + b"\n" + b"".join(simulate.mixed_log(4, 5000)))
    runs = []
    for pure, path in (("", "c"), ("1", "python")):
        env = {**os.environ, "MONITORD_PURE_PYTHON": pure}
        code = "import sys; from monitord.commands.cli import main; sys.exit(main())"
        version = subprocess.run(
            [sys.executable, "-c", code, "--version"], capture_output=True, env=env, check=True
        )
        assert version.stdout.rstrip().endswith(f"(parser: {path})".encode())
        parse = [sys.executable, "-c", code, "parse", str(log)]
        runs.append(subprocess.run(parse, capture_output=True, env=env, cwd=ROOT, check=True))
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout
    assert runs[0].stderr == runs[1].stderr and b"bad_uuid" in runs[0].stderr


# ---- the daemon, with and without the leaf ----------------------------------------------------

# What depends on timing, not on the parser: when commits ran and what they held so far.
VARYING = (
    "process_", "python_", "monitord_checkpoint_timestamp", "monitord_record_lag",
    "monitord_state_store_bytes", "monitord_state_commit_duration", "monitord_history_events",
    "monitord_history_pruned",
)  # fmt: skip


def utf8_names(line: bytes) -> bool:
    """False for a line whose record holds text that is not UTF-8: /metrics cannot show it
    yet (issue 14), and this test is about the parser."""
    try:
        record = parser.parse_line(line)
    except ParseError:
        return True
    if isinstance(record, Ignored):
        return True
    texts = [record.node, record.subj, *record.fields.values(), *record.enrichment.values()]
    return all(t is None or t.isprintable() for t in texts)


def test_daemon_same_with_and_without_the_leaf(tmp_path: Path) -> None:
    """Two `monitord run` over one log (golden files, a simulated host, fuzz), one with
    MONITORD_PURE_PYTHON=1: the same guests, counters and metrics."""
    if parser.ACCELERATOR_MODULE is None:
        missing("the C leaf is not built (or MONITORD_PURE_PYTHON is set)")
    rng = random.Random(7)
    log = tmp_path / "audit.log"
    lines = [line for path in GOLDEN for line in path.read_bytes().splitlines()]
    lines += b"".join(simulate.mixed_log(3, 30_000)).splitlines()
    lines += [mutate(rng, rng.choice(REAL)) for _ in range(3000)]
    data = b"".join(line + b"\n" for line in lines if utf8_names(line))
    log.write_bytes(data)
    seen = []
    for pure in ("", "1"):
        args = ["--source", "file", "--audit-log", str(log), "--start", "beginning"]
        env = {"MONITORD_PURE_PYTHON": pure}
        with MonitordProcess(tmp_path / f"state{pure}", args, env=env) as daemon:
            read_all = lambda d=daemon: d.metric("monitord_bytes_read_total") == len(data)  # noqa: E731
            wait_until(read_all, timeout=120)
            guests = daemon.guests()
            metrics = {k: v for k, v in daemon.metrics().items() if not k.startswith(VARYING)}
        del guests["generated_at"]
        seen.append((guests, metrics))
    assert seen[0] == seen[1]
    guests, metrics = seen[0]
    assert len(guests["guests"]) > 10 and metrics['monitord_parse_errors_total{reason="bad_uuid"}']
