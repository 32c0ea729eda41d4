"""The [identity] table and the alert settings of the config file."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

from monitord.alerts import Alert, Identity
from monitord.config import (
    ALERT_LABEL_NAMES,
    AlertmanagerConfig,
    Config,
    IdentityConfig,
    parse_config,
)
from monitord.errors import ConfigError
from tests.alerts.test_alerts import IDENT, disk_record, record
from tests.conftest import ROOT

EXAMPLE = ROOT / "deploy" / "monitord.toml"
HOSTNAME = os.uname().nodename


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.toml")
    return str(info.value)


def test_identity_defaults_to_the_machines_host_name() -> None:
    """Without [identity], host is the machine's host name, no labels, a derived URL."""
    identity = Config().identity
    assert identity == IdentityConfig(host=HOSTNAME, labels=(), external_url=None)


def test_identity_is_read_from_the_file() -> None:
    """host, labels (inline or as a table) and external_url are read and kept sorted."""
    config = parse_config(
        '[identity]\nhost = "hv01"\nexternal_url = "https://hv01.example.org:9781/mon/"\n'
        '[identity.labels]\nregion = "eu-west"\ncluster = "prod-eu"\n'
    )
    assert config.identity.host == "hv01"
    assert config.identity.labels == (("cluster", "prod-eu"), ("region", "eu-west"))
    assert config.external_url == "https://hv01.example.org:9781/mon"
    inline = parse_config('[identity]\nlabels = { cluster = "prod-eu" }\n')
    assert inline.identity.labels == (("cluster", "prod-eu"),)


@pytest.mark.parametrize(
    ("http", "expected"),
    [
        ("", f"http://{HOSTNAME}:9781"),
        ('listen = ":9000"', f"http://{HOSTNAME}:9000"),
        ('listen = "[::1]:9781"', f"http://{HOSTNAME}:9781"),
        ('listen = "0.0.0.0:9781"\ntls_cert = "/c"\ntls_key = "/k"', f"https://{HOSTNAME}:9781"),
    ],
)
def test_default_external_url_has_a_host_and_the_listen_port(http: str, expected: str) -> None:
    """Without external_url, generatorURL's base is the host name and the listen port (never
    an empty or wildcard host), https when the listener has TLS."""
    assert parse_config(f"[http]\n{http}\n").external_url == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[identity]\nhost = ""', "c.toml:2: identity.host: must not be empty"),
        ("[identity]\nhost = 1", "c.toml:2: identity.host: expected a string, got an integer"),
        ("[identity]\nhostname = 'x'", "identity.hostname: unknown key (did you mean 'host'?)"),
        ('[identity]\nexternal_url = "hv01:9781"', "identity.external_url: expected an http://"),
        ('[identity]\nlabels = "prod"', "identity.labels: expected a table"),
        ('[identity]\nlabels = { "1dc" = "a" }', "identity.labels.1dc: not a Prometheus label"),
        ('[identity]\nlabels = { "dc-1" = "a" }', "identity.labels.dc-1: not a Prometheus label"),
        ('[identity]\nlabels = { __dc = "a" }', "identity.labels.__dc: not a Prometheus label"),
        ('[identity]\nlabels = { host = "a" }', "'host' is a label monitord sets on every alert"),
        ('[identity]\nlabels = { uuid = "a" }', "'uuid' is a label monitord sets on every alert"),
        ('[identity]\nlabels = { dc = "" }', "identity.labels.dc: must not be empty"),
        ("[identity]\nlabels = { dc = 1 }", "identity.labels.dc: expected a string"),
        ('[identity]\nlabels = { dc = "a", DC = "b" }', "'DC' and 'dc' would be the same"),
        ('[identity]\nlabels = { %s = "a" }' % ("x" * 54), "at most 53 characters"),
    ],
)
def test_bad_identity_is_refused_with_key_and_line(text: str, message: str) -> None:
    """Each bad [identity] setting is an error naming the key (and line)."""
    assert message in error_of(text)


def test_alertmanager_entries_are_urls_or_tables() -> None:
    """alertmanager takes URLs, inline tables and [[alerts.alertmanager]] tables, with the
    webhook's TLS and auth keys."""
    config = parse_config(
        '[alerts]\nalertmanager = ["http://am1:9093", { url = "https://am2:9093", '
        'ca_file = "/ca.pem", cert_file = "/c.pem", key_file = "/k.pem", timeout = "5s" }]\n'
    )
    assert config.alerts.alertmanager == (
        AlertmanagerConfig(url="http://am1:9093"),
        AlertmanagerConfig(
            url="https://am2:9093",
            ca_file="/ca.pem",
            cert_file="/c.pem",
            key_file="/k.pem",
            timeout=5.0,
        ),
    )
    tables = parse_config(
        '[[alerts.alertmanager]]\nurl = "https://am1:9093"\nbearer_token_file = "/t"\n'
        '[[alerts.alertmanager]]\nurl = "https://am2:9093"\ntls_verify = false\n'
    )
    assert [am.bearer_token_file for am in tables.alerts.alertmanager] == ["/t", None]
    assert [am.tls_verify for am in tables.alerts.alertmanager] == [True, False]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[alerts]\nalertmanager = ["am:9093"]', "alerts.alertmanager[0]: expected an http://"),
        ("[alerts]\nalertmanager = [{ ca_file = '/x' }]", "missing required key 'url'"),
        (
            '[[alerts.alertmanager]]\nurl = "http://a"\nca_fle = "/x"',
            "c.toml:3: alerts.alertmanager[0].ca_fle: unknown key (did you mean 'ca_file'?)",
        ),
        (
            '[[alerts.alertmanager]]\nurl = "http://a"\ncert_file = "/c"',
            "alerts.alertmanager[0].cert_file: cert_file and key_file must be set together",
        ),
        (
            '[[alerts.webhook]]\nurl = "http://a"\nkey_file = "/k"',
            "alerts.webhook[0].key_file: cert_file and key_file must be set together",
        ),
        (
            '[[alerts.alertmanager]]\nurl = "http://a"\nbearer_token_file = "/t"\n'
            'basic_auth_username = "u"\nbasic_auth_password_file = "/p"',
            "use either bearer_token_file or basic auth, not both",
        ),
        ("[alerts]\nresolved_retention = 0", "alerts.resolved_retention: must be a duration"),
    ],
)
def test_bad_alertmanager_settings_are_refused(text: str, message: str) -> None:
    """Alertmanager entries are checked like webhooks: URL, known keys, paired settings."""
    assert message in error_of(text)


def test_shipped_example_documents_identity_and_alertmanager_keys() -> None:
    """deploy/monitord.toml documents every [identity] key and every Alertmanager entry key."""
    text = EXAMPLE.read_text()
    assert "\n[identity]\n" in text
    for cls in (IdentityConfig, AlertmanagerConfig):
        for f in dataclasses.fields(cls):
            assert re.search(rf"(?m)^#?{f.name} = ", text), f"{cls.__name__}.{f.name}"
    assert 'resolved_retention = "15m"' in text


def test_alert_labels_are_the_reserved_names() -> None:
    """Every label an alert sets itself is in ALERT_LABEL_NAMES, which [identity] labels
    may not use (else an identity label would overwrite it)."""
    records = [
        record(),
        disk_record(),
        record("VIRT_MACHINE_ID", vm_ctx="a", img_ctx="b", model="dac"),
    ]
    names = {name for rec in records for name in Alert.from_record(rec, IDENT).labels}
    assert names == ALERT_LABEL_NAMES
    with_labels = Identity("hv01", "http://x", (("cluster", "c"),))
    assert Alert.from_record(record(), with_labels).labels["cluster"] == "c"
