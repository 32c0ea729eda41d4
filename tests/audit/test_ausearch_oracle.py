"""Differential test: our record set equals what Debian's real `ausearch` finds in the same log."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from monitord.audit import StreamParser
from monitord.commands.simulate import mixed_log, write_lines
from tests.conftest import need_tool

TYPES = "VIRT_CONTROL,VIRT_RESOURCE,VIRT_MACHINE_ID"
# `ausearch -i` prints: type=T msg=audit(DATE TIME.mmm:SERIAL) : ... msg='... res=R'
HEAD = re.compile(r"type=(\S+) msg=audit\([^)]*:(\d+)\) : ")
VM = re.compile(r" vm=(.*?) uuid=(\S+) ")


def ausearch_records(ausearch: str, log: Path) -> set[tuple[int, str, str, str | None, str]]:
    out = subprocess.run(
        [ausearch, "--input", str(log), "-m", TYPES, "-i"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    found = set()
    for raw in out.stdout.decode("utf-8", "surrogateescape").splitlines():
        head = HEAD.match(raw)
        if head is None:
            continue
        inner = raw.partition(" msg='")[2]
        vm = VM.search(" " + inner)
        if vm is None or " virt=" not in " " + inner:
            continue  # not libvirt's (dockerd writes VIRT_CONTROL without virt=/uuid=)
        result = inner.rstrip().rstrip("'").rpartition(" res=")[2]
        name = vm.group(1)
        found.add(
            (int(head.group(2)), head.group(1), result, None if name == "?" else name, vm.group(2))
        )
    return found


@pytest.mark.parametrize("enriched", [True, False], ids=["enriched", "raw"])
def test_record_set_equals_ausearch(tmp_path: Path, enriched: bool) -> None:
    """Serials, types, results, decoded vm names and uuids match ausearch -i on a mixed log."""
    ausearch = need_tool("ausearch")
    log = tmp_path / "audit.log"
    with log.open("wb") as out:
        write_lines(out, mixed_log(seed=2024, lines=30_000, virt_fraction=0.08, enriched=enriched))
    parser = StreamParser()
    ours = {
        (r.serial, r.type, r.result or "", r.vm, r.uuid or "")
        for r in parser.feed(log.read_bytes()) + parser.finish()
    }
    theirs = ausearch_records(ausearch, log)
    assert len(ours) > 1500
    assert parser.stats.ignored["not_libvirt"] > 0  # the docker records were there, and skipped
    assert sum(parser.stats.errors.values()) == 0
    assert ours == theirs
    names = {r[3] for r in ours}
    assert {"my vm", "café-01", 'say "hi"', "bob's=vm"} & names  # hex and odd names included
