"""Tables as text for a terminal: the guest table (`replay`, `status`, the demo's live view)
and the plain tables of `history` and `sessions`."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

COLUMNS: Final = ("NAME", "STATE", "VCPUS", "MEMORY", "DISKS", "NICS", "FAILURES", "LAST OP")
# Right-aligned columns (numbers).
_RIGHT: Final = frozenset({"VCPUS", "MEMORY", "DISKS", "NICS", "FAILURES"})


def human_bytes(n: int | None) -> str:
    """Return a byte count as libvirt users read memory: `64 MiB`, `2 GiB`, `1.5 GiB`."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def last_op(guest: Mapping[str, Any]) -> str:
    """Return `op/reason`, with `(failed)` when the last lifecycle record failed."""
    op = guest.get("last_op")
    if op is None:
        return "-"
    text = f"{op}/{guest['last_reason']}" if guest.get("last_reason") else str(op)
    if guest.get("last_result") == "failed":
        text += " (failed)"
    return text


def row(guest: Mapping[str, Any], with_host: bool = False) -> tuple[str, ...]:
    host = (guest.get("host") or "-",) if with_host else ()
    return (
        guest.get("name") or guest["uuid"],
        *host,
        guest["state"],
        "-" if guest.get("vcpus") is None else str(guest["vcpus"]),
        human_bytes(guest.get("memory_bytes")),
        str(len(guest.get("disks") or ())),
        str(len(guest.get("nics") or ())),
        str(guest.get("failures", 0)),
        last_op(guest),
    )


def render(guests: Sequence[Mapping[str, Any]], max_rows: int | None = None) -> str:
    """Return the table with a header and a one-line summary; at most `max_rows` guest rows."""
    # A central collector's guests live on several hosts: then the host is a column.
    with_host = len({g.get("host") for g in guests}) > 1
    columns = (COLUMNS[0], "HOST", *COLUMNS[1:]) if with_host else COLUMNS
    rows = [row(g, with_host) for g in guests]
    shown = rows if max_rows is None else rows[:max_rows]
    text = table(columns, shown, _RIGHT)
    if len(shown) < len(rows):
        text += f"... {len(rows) - len(shown)} more\n"
    return text + summary(guests) + "\n"


def table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[str] = ()
) -> str:
    """Lines of cells as wide as their column's widest, two spaces apart; the columns named
    in `right` right-aligned."""
    widths = [len(c) for c in columns]
    for r in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, r, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        out = [
            cell.rjust(w) if col in right else cell.ljust(w)
            for col, cell, w in zip(columns, cells, widths, strict=True)
        ]
        return "  ".join(out).rstrip()

    return "".join(fmt(r) + "\n" for r in (columns, *rows))


def summary(guests: Sequence[Mapping[str, Any]]) -> str:
    """Return e.g. `3 guests: 2 running, 1 stopped, 0 unknown; 4 failures`."""
    by_state = {"running": 0, "stopped": 0, "unknown": 0}
    failures = 0
    for g in guests:
        by_state[g["state"]] = by_state.get(g["state"], 0) + 1
        failures += int(g.get("failures") or 0)
    states = ", ".join(f"{n} {state}" for state, n in by_state.items())
    noun = "guest" if len(guests) == 1 else "guests"
    return f"{len(guests)} {noun}: {states}; {failures} failed record(s)"
