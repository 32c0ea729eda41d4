"""The parser's fast paths build exactly what the plain code builds.

`make_record` must give a real, frozen, comparable `AuditRecord`; the parallel
`monitord parse` must print byte for byte what the single process prints.
"""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from monitord.audit.record import AuditRecord, make_record

ARGS = (
    "VIRT_CONTROL",
    2500,
    1700000000.25,
    42,
    "host",
    1058,
    0,
    4294967295,
    4294967295,
    "system_u:system_r:virtd_t:s0",
    {"virt": "kvm", "uuid": "u", "vm": None},
    {"UID": "root"},
)


def test_make_record_is_a_frozen_audit_record() -> None:
    """make_record returns an AuditRecord equal to the constructor's, frozen like it."""
    fast = make_record(*ARGS)
    plain = AuditRecord(*ARGS)
    assert type(fast) is AuditRecord and fast == plain and repr(fast) == repr(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.serial = 1  # type: ignore[misc]
    assert dataclasses.replace(fast, node=None) == dataclasses.replace(plain, node=None)
    assert pickle.loads(pickle.dumps(fast)) == plain
    assert fast.to_json() == plain.to_json()
