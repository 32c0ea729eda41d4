"""The config loader: TOML -> one validated `Config`, errors with key and line."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from monitord.config import (
    AlertsConfig,
    Config,
    HttpConfig,
    ListenAddress,
    LoggingConfig,
    SourceConfig,
    StateConfig,
    WebhookConfig,
    apply_overrides,
    load_config,
    load_run_config,
    parse_config,
    parse_duration,
    parse_listen,
)
from monitord.errors import ConfigError
from tests.conftest import ROOT

EXAMPLE = ROOT / "deploy" / "monitord.toml"
HASH = "$2b$10$" + "a" * 53


def uncommented_example() -> str:
    """The shipped example with every `#key = ...` example line enabled."""
    text = re.sub(r"(?m)^#(?=[\[a-z])", "", EXAMPLE.read_text())
    # Both alternatives are shown for webhook auth; enabling both is (rightly) an error.
    text = re.sub(r"(?m)^basic_auth_.*\n", "", text)
    return text.replace("alertmanager = []\n", "", 1)


def write(tmp_path: Path, text: str, mode: int = 0o644) -> Path:
    path = tmp_path / "monitord.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.toml")
    return str(info.value)


def test_shipped_example_is_valid_and_states_the_defaults() -> None:
    """deploy/monitord.toml loads, and its active settings are exactly the defaults."""
    assert load_config(EXAMPLE) == Config()


def test_shipped_example_documents_every_key() -> None:
    """Every field of every config table appears in deploy/monitord.toml (set or as example)."""
    text = EXAMPLE.read_text()
    for cls in (SourceConfig, StateConfig, HttpConfig, AlertsConfig, WebhookConfig, LoggingConfig):
        for f in dataclasses.fields(cls):
            assert re.search(rf"(?m)^#?{f.name} = ", text) or (
                f"[{cls.__name__.removesuffix('Config').lower()}.{f.name}]" in text
                or f"[[alerts.{f.name}]]" in text
            ), f"{cls.__name__}.{f.name} is not in {EXAMPLE}"


def test_shipped_examples_are_valid_when_enabled() -> None:
    """The commented examples in deploy/monitord.toml load when uncommented."""
    config = parse_config(uncommented_example(), "example")
    assert [am.url for am in config.alerts.alertmanager] == ["http://127.0.0.1:9093"]
    assert config.alerts.webhook[0].url == "http://127.0.0.1:8080/hook"
    assert config.alerts.webhook[0].timeout == 10.0
    assert config.http.tls_cert == "/etc/monitord/tls/monitord.crt"
    assert [u.username for u in config.http.basic_auth_users] == ["prometheus"]
    assert config.source.journal_dir == "/var/log/journal/remote"


def test_every_float_setting_accepts_a_duration() -> None:
    """Float fields are durations: each takes "2m" and means 120 seconds."""
    for table, cls in (("source", SourceConfig), ("state", StateConfig), ("alerts", AlertsConfig)):
        for f in dataclasses.fields(cls):
            if typing.get_type_hints(cls)[f.name] is float:
                extra = {
                    "retry_max": 'retry_initial = "1s"\n',
                    "retry_initial": "retry_max = 999\n",
                }
                extra = extra.get(f.name, "")
                config = parse_config(f'[{table}]\n{extra}{f.name} = "2m"\n')
                assert getattr(getattr(config, table), f.name) == 120.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90s", 90.0),
        ("500ms", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1w", 604800.0),
        ("1h30m", 5400.0),
        ("2.5s", 2.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    """Durations are numbers of seconds or strings with ms/s/m/h/d/w units."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 m", "m5", "5x", "1h 30m", "-5s", True, [1]])
def test_bad_durations(text: object) -> None:
    """Anything else is refused with an example of the right form."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_full_file_with_every_table() -> None:
    """Tables, arrays of tables and the basic-auth user table map onto the dataclasses."""
    config = parse_config(
        f"""
[source]
kind = "journal"
journal_dir = "/srv/journal"
[state]
checkpoint_interval = "1m30s"
max_guests = 5
[http]
listen = "[::1]:9000"
tls_cert = "/c"
tls_key = "/k"
[http.basic_auth_users]
zed = "{HASH}"
"alice smith" = "{HASH}"
[alerts]
alertmanager = ["http://127.0.0.1:9093", "https://am.example:9443/prefix"]
[[alerts.webhook]]
url = "http://127.0.0.1:8080/hook"
[[alerts.webhook]]
url = "https://hooks.example/x"
bearer_token_file = "/t"
timeout = "500ms"
tls_verify = false
[logging]
level = "DEBUG"
target = "stderr"
"""
    )
    assert config.source == SourceConfig(kind="journal", journal_dir="/srv/journal")
    assert config.state.checkpoint_interval == 90.0 and config.state.max_guests == 5
    assert config.http.listen == "[::1]:9000"
    assert [u.username for u in config.http.basic_auth_users] == ["alice smith", "zed"]
    assert config.http.basic_auth_users[0].password_hash == HASH
    assert len(config.alerts.alertmanager) == 2
    assert config.alerts.webhook[1] == WebhookConfig(
        url="https://hooks.example/x", bearer_token_file="/t", timeout=0.5, tls_verify=False
    )
    assert config.logging == LoggingConfig(level="debug", target="stderr")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("colour = 1\n", "c.toml:1: colour: unknown key"),
        (
            "[source]\n\nkindd = 'file'\n",
            "c.toml:3: source.kindd: unknown key (did you mean 'kind'?)",
        ),
        (
            "[alerts]\n[[alerts.webhook]]\nurl = 'http://a/'\n[[alerts.webhook]]\nurl = 'http://b/'\n"
            "token = 'x'\n",
            "c.toml:6: alerts.webhook[1].token: unknown key",
        ),
        ("[[source]]\nkind = 'file'\n", "c.toml:1: source: expected a table, got an array"),
        ("[state]\nmax_guests = '10'\n", "c.toml:2: state.max_guests: expected an integer"),
        ("[state]\nmax_guests = true\n", "c.toml:2: state.max_guests: expected an integer"),
        ("[state]\nmax_guests = 0\n", "c.toml:2: state.max_guests: must be at least 1"),
        ("[state]\n'dir' = 5\n", "c.toml:2: state.dir: expected a string, got an integer"),
        ("[alerts]\njournal = 'yes'\n", "c.toml:2: alerts.journal: expected true or false"),
        ("[source]\nkind = 'tcp'\n", "c.toml:2: source.kind: expected one of 'file', 'audisp'"),
        ("[state]\ncheckpoint_interval = '5 min'\n", "c.toml:2: state.checkpoint_interval: bad"),
        ("[state]\ncheckpoint_interval = 0\n", "greater than 0"),
        ("[http]\nlisten = 'localhost'\n", "c.toml:2: http.listen: expected HOST:PORT"),
        ("[http]\nlisten = '::1:80'\n", "c.toml:2: http.listen: write an IPv6 address in brackets"),
        ("[http]\nlisten = '1.2.3.4:99999'\n", "out of range"),
        ("[http]\ntls_cert = '/c'\n", "c.toml:2: http.tls_cert: tls_cert and tls_key must be set"),
        ("[http.basic_auth_users]\nbob = 'secret'\n", "c.toml:2: http.basic_auth_users.bob: exp"),
        ("[http]\nbasic_auth_users = ['bob']\n", "c.toml:2: http.basic_auth_users: expected a t"),
        (
            "[alerts]\nalertmanager = [\n  'http://a:9093',\n  'a:9093',\n]\n",
            "c.toml:2: alerts.alertmanager[1]: expected an http:// or https:// URL",
        ),
        ("[alerts]\nretry_initial = '1m'\nretry_max = '1s'\n", "c.toml:3: alerts.retry_max"),
        ("[[alerts.webhook]]\ntimeout = 1\n", "c.toml:1: alerts.webhook[0]: missing required key"),
        (
            "[[alerts.webhook]]\nurl = 'http://x/'\nbasic_auth_username = 'u'\n",
            "c.toml:3: alerts.webhook[0].basic_auth_username: basic_auth_username and",
        ),
        ("[logging]\nlevel = 'loud'\n", "c.toml:2: logging.level: unknown log level 'loud'"),
        ("[logging]\ntarget = 'syslog'\n", "c.toml:2: logging.target: expected one of"),
        ("http.listen = 'x'\n", "c.toml:1: http.listen: expected HOST:PORT"),
        ("http = { listen = 'x' }\n", "c.toml:1: http.listen: expected HOST:PORT"),
        ("[source]\nkind = 'file\n", "c.toml:2: invalid TOML: "),
        ("[source]\nkind = 'file'\nkind = 'file'\n", "c.toml:3: invalid TOML: "),
    ],
)
def test_errors_name_key_and_line(text: str, expected: str) -> None:
    """Unknown keys, wrong types, bad values and bad syntax name the key and the line."""
    message = error_of(text)
    assert expected in message
    assert "\n" not in message


def test_line_numbers_skip_multiline_strings() -> None:
    """A key-like line inside a multi-line string does not confuse the line search."""
    text = '[source]\npath = """\nkind = 1\n"""\nkind = "x"\n'
    assert error_of(text).startswith("c.toml:5: source.kind")


def test_listen_forms() -> None:
    """HOST:PORT, [IPv6]:PORT and :PORT (every address) are accepted."""
    assert parse_listen("127.0.0.1:9781") == ("127.0.0.1", 9781)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9781") == ("", 9781)
    assert parse_listen("host.example:80") == ("host.example", 80)
    v6 = parse_listen("[fe80::1%eth0]:9781")
    assert isinstance(v6, ListenAddress) and v6.ipv6 and v6.host == "fe80::1%eth0"
    assert not parse_listen("127.0.0.1:1").ipv6
    assert HttpConfig(listen="[::1]:9781").address == ("::1", 9781)
    for bad in ("9781", "host:", "[fe80::zz]:1", "a b:1", "host:-1", "host:\u0669\u0667"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_world_writable_file_is_refused(tmp_path: Path) -> None:
    """A world-writable config file is refused, with the chmod that fixes it."""
    path = write(tmp_path, "", mode=0o666)
    with pytest.raises(ConfigError, match=r"world-writable .*chmod o-w"):
        load_config(path)
    path.chmod(0o664)
    assert load_config(path) == Config()


def test_missing_files(tmp_path: Path) -> None:
    """A file named explicitly must exist; the default path missing means all defaults."""
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
    assert load_config(None, default_path=tmp_path / "absent.toml") == Config()
    (tmp_path / "present.toml").write_text("[http]\nlisten = ':1'\n")
    assert load_config(None, default_path=tmp_path / "present.toml").http.listen == ":1"
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(tmp_path)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported with their line."""
    path = tmp_path / "c.toml"
    path.write_bytes(b"[source]\npath = '\xff'\n")
    with pytest.raises(ConfigError, match=r"c.toml:2: invalid TOML: not UTF-8"):
        load_config(path)


def run_args(**flags: object) -> argparse.Namespace:
    names = ("config", "source", "audit_log", "journal_dir", "listen", "state_dir", "start")
    values: dict[str, object] = dict.fromkeys((*names, "log_level"))
    values.update(flags)
    return argparse.Namespace(**values)


def test_flags_override_the_file(tmp_path: Path) -> None:
    """`monitord run` flags that are given replace the file's values; others keep them."""
    path = write(tmp_path, "[http]\nlisten = '127.0.0.1:1'\n[state]\nmax_guests = 7\n")
    config = load_run_config(
        run_args(
            config=str(path),
            source="journal",
            audit_log="/a.log",
            journal_dir="/j",
            listen="[::1]:2",
            state_dir="/s",
            start="end",
            log_level="WARNING",
        )
    )
    assert config.source == SourceConfig(
        kind="journal", path="/a.log", start="end", journal_dir="/j"
    )
    assert config.http.listen == "[::1]:2"
    assert config.state.dir == "/s" and config.state.max_guests == 7
    assert config.logging.level == "warning"
    assert load_run_config(run_args(config=str(path))).http.listen == "127.0.0.1:1"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"listen": "nonsense"}, "--listen: expected HOST:PORT"),
        ({"log_level": "chatty"}, "--log-level: unknown log level"),
        ({"state_dir": ""}, "--state-dir: must not be empty"),
    ],
)
def test_bad_flags_are_config_errors(flags: dict[str, str], message: str) -> None:
    """A bad override is a ConfigError naming the flag."""
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), run_args(**flags))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitord", *args], capture_output=True, text=True, timeout=30
    )


def test_check_config_command(tmp_path: Path) -> None:
    """`monitord check-config` prints FILE: ok (exit 0) or one line with key and line (exit 2)."""
    good = cli("check-config", str(EXAMPLE))
    assert (good.returncode, good.stdout, good.stderr) == (0, f"{EXAMPLE}: ok\n", "")
    path = write(tmp_path, "[state]\nmax_guests = 10\n\n[http]\nlisten = 'nowhere'\n")
    bad = cli("check-config", str(path))
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr == (
        f'monitord: {path}:5: http.listen: expected HOST:PORT (e.g. "127.0.0.1:9781"), '
        "got 'nowhere'\n"
    )
    missing = cli("check-config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr + bad.stderr
