"""The project's documentation stays inside the repository and in step with the code.

README.md, CONTRIBUTING.md and docs/*.md may cite only files of this
repository, and every repository path they link or name must exist. The
public interface (docs/INTERFACE.md) must cover every CLI command and flag,
every metric family the exporter emits, every configuration key and every key
of the parsed-record and guest documents: each of these lists comes from the
code, so a new one without its documentation fails here.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitord.audit.record import AuditRecord
from monitord.commands.cli import build_parser
from monitord.config import BasicAuthUser, Config
from monitord.serve.exporter import make_registry, render
from monitord.state.guest import Guest
from tests.conftest import ROOT
from tests.serve.test_exporter import populated

DOCS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").glob("*.md")])
# Markdown the project owns that must not cite outside files either (links not checked).
OTHER_PROSE = [
    ROOT / "CHANGELOG.md",
    ROOT / "bench" / "RESULTS.md",
    *(ROOT / "bench" / "results").glob("*.md"),
    ROOT / "tests" / "data" / "real" / "README.md",
]
INTERFACE = ROOT / "docs" / "INTERFACE.md"

# Files the other branches of this release add. A name stays here only until its
# branch is merged: once the file exists, the test below asks to remove it.
LANDING = frozenset({})

# What a citation of a file outside the repository looks like.
OUTSIDE = re.compile(r"CONTRACT\.md|\.\./shared|/work/|REAL-COMPONENTS|reference/FORMATS")
BARE_FORMATS = re.compile(r"(?<![\w/.-])FORMATS\.md")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*$", re.M)
# A repository path in backticks: starts at a top-level entry of the repository.
TOP = (
    "monitord/ tests/ deploy/ contrib/ bench/ docs/ scripts/ debian/ .ci/ "
    "README.md CONTRIBUTING.md CHANGELOG.md bootstrap pyproject.toml setup.py"
).split()
PATHLIKE = re.compile(r"[\w.*-]+(?:/[\w.*-]+)*/?")


def prose(path: Path) -> str:
    """The text without fenced code blocks (commands and samples are not links)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def exists(repo_path: str) -> bool:
    """True if a repository path (possibly a glob) names something that is there."""
    if repo_path.rstrip("/") in LANDING:
        return True
    if any(c in repo_path for c in "*?["):
        return any(ROOT.glob(repo_path))
    return (ROOT / repo_path).exists()


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]|\[|\]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(2)) for m in HEADING.finditer(prose(path))}


@pytest.mark.parametrize("doc", DOCS + OTHER_PROSE, ids=rel)
def test_cites_nothing_outside_the_repository(doc: Path) -> None:
    """No citation of files outside the repository (its own docs/ say it all)."""
    text = LINK.sub("", doc.read_text(encoding="utf-8"))  # link targets are checked below
    outside = [m.group(0) for m in OUTSIDE.finditer(text)]
    outside += [f"bare {m.group(0)}" for m in BARE_FORMATS.finditer(text)]
    assert outside == [], f"{rel(doc)} cites files outside the repository: {outside}"


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_links_resolve(doc: Path) -> None:
    """Every relative link points into the repository at something that exists (and its
    #anchor at a heading there)."""
    broken = []
    for target in LINK.findall(prose(doc)):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        try:
            inside = rel(dest)
        except ValueError:
            broken.append(f"{target} (outside the repository)")
            continue
        if not exists(inside):
            broken.append(target)
        elif anchor and dest.suffix == ".md" and dest.exists() and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert broken == [], f"{rel(doc)}: broken links {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_named_repository_paths_exist(doc: Path) -> None:
    """Every `path/like/this.py` named in backticks is a file or directory of the repository."""
    missing = []
    for span in CODE_SPAN.findall(prose(doc)):
        if not PATHLIKE.fullmatch(span) or not any(
            span == top or span.startswith(top) for top in TOP
        ):
            continue
        if not exists(span):
            missing.append(span)
    assert missing == [], f"{rel(doc)} names paths that do not exist: {missing}"


def test_landing_files_are_not_there_yet() -> None:
    """LANDING only holds files still to come: a merged one must leave the list."""
    arrived = sorted(p for p in LANDING if (ROOT / p).exists())
    assert arrived == [], f"remove {arrived} from LANDING in tests/test_docs.py"


def test_readme_keeps_the_two_commands() -> None:
    """The README keeps `./bootstrap demo` and `./bootstrap test` (CI runs the latter)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "./bootstrap demo" in text and "./bootstrap test" in text


# -- the interface covers what the code offers -----------------------------------------------


def section(text: str, title: str) -> str:
    """The text under the first heading containing `title`, up to the next heading of the
    same or a higher level."""
    for m in HEADING.finditer(text):
        if title in m.group(2):
            level = len(m.group(1))
            rest = text[m.end() :]
            end = re.search(rf"^#{{1,{level}}}\s", rest, re.M)
            return rest[: end.start()] if end else rest
    raise AssertionError(f"docs/INTERFACE.md has no heading with {title!r}")


def subcommands() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_command_and_flag_is_documented() -> None:
    """Each `monitord` command has its section in docs/INTERFACE.md naming each of its flags."""
    text = INTERFACE.read_text(encoding="utf-8")
    commands = dict(subcommands())
    assert {"run", "demo", "parse", "replay", "status", "check-config"} <= set(commands)
    missing = []
    for name, parser in commands.items():
        body = section(text, f"`monitord {name}`")
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help" and flag not in body:
                    missing.append(f"monitord {name} {flag}")
    assert missing == []


def metric_families() -> set[str]:
    """Every family name /metrics serves for a populated table (prometheus-client's own
    process_* and python_* families aside)."""
    table, stages = populated()
    body = render(make_registry(table, "0.0.0", stages), None)[0].decode()
    names = set(re.findall(r"^# TYPE (\S+) ", body, re.M))
    return {n for n in names if not n.startswith(("process_", "python_"))}


def test_every_metric_family_is_documented() -> None:
    """Each metric family the exporter emits is in docs/INTERFACE.md, "Metrics"."""
    body = section(INTERFACE.read_text(encoding="utf-8"), "Metrics")
    families = metric_families()
    assert len(families) > 25
    missing = sorted(n for n in families if f"`{n}`" not in body)
    assert missing == []


def config_keys(cls: type, prefix: str) -> Iterator[tuple[str, str]]:
    """(table, key) of every key of a config dataclass, nested tables included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield prefix, f.name
        hint = hints[f.name]
        for inner in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(inner) and inner is not BasicAuthUser:
                yield from config_keys(inner, f"{prefix}.{f.name}")  # type: ignore[arg-type]


def test_every_config_key_is_documented() -> None:
    """Each key monitord's config accepts is in its table's section of docs/INTERFACE.md."""
    text = section(INTERFACE.read_text(encoding="utf-8"), "Configuration")
    missing = []
    for f in dataclasses.fields(Config):
        body = section(text, f"`[{f.name}]`")
        hints = typing.get_type_hints(Config)
        for table, key in config_keys(hints[f.name], f.name):
            if f"`{key}`" not in body and f"`[{table}.{key}]`" not in body:
                missing.append(f"{table}.{key}")
    assert missing == []


def test_every_document_key_is_documented() -> None:
    """Each key of the parsed-record and guest documents is in docs/INTERFACE.md."""
    text = INTERFACE.read_text(encoding="utf-8")
    record_doc = AuditRecord(
        type="VIRT_CONTROL", type_id=2500, time=0.0, serial=1, node=None, pid=None, uid=None,
        auid=None, ses=None, subj=None, fields={}, enrichment={},
    ).to_json()  # fmt: skip
    parse = section(text, "`monitord parse`")
    guests = section(text, "Guests: `GET /api/v1/guests`")
    missing = [f"parse: {k}" for k in record_doc if f"`{k}`" not in parse]
    guest_doc = Guest("00000000-0000-0000-0000-000000000000").document("hv01")
    missing += [f"guest: {k}" for k in guest_doc if f"`{k}`" not in guests]
    assert missing == []


def test_path_checks_can_fail() -> None:
    """The checks above reject what they should: a missing path, a bad anchor, a citation."""
    assert exists("monitord/state/effects.py") and exists("bench/results/*.md")
    assert not exists("monitord/no_such_module.py") and not exists("bench/none/*.md")
    assert "no-such-heading" not in anchors(INTERFACE)
    assert slug("### `[identity]`".lstrip("# ")) == "identity"
    assert OUTSIDE.search("see ../shared/CONTRACT.md") and BARE_FORMATS.search("(FORMATS.md, 2)")
    assert not BARE_FORMATS.search("docs/FORMATS.md")
