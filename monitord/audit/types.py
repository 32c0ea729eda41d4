"""Audit record type numbers of the virtualization range (linux/audit.h)."""

from typing import Final

VIRT_FIRST: Final = 2500
VIRT_LAST: Final = 2599

VIRT_TYPES: Final[dict[int, str]] = {
    2500: "VIRT_CONTROL",
    2501: "VIRT_RESOURCE",
    2502: "VIRT_MACHINE_ID",
    2503: "VIRT_INTEGRITY_CHECK",
    2504: "VIRT_CREATE",
    2505: "VIRT_DESTROY",
    2506: "VIRT_MIGRATE_IN",
    2507: "VIRT_MIGRATE_OUT",
}
VIRT_NUMBERS: Final[dict[str, int]] = {name: num for num, name in VIRT_TYPES.items()}

VIRT_CONTROL: Final = 2500
VIRT_RESOURCE: Final = 2501
VIRT_MACHINE_ID: Final = 2502


def type_name(type_id: int) -> str:
    """Return the name auditd gives a type number, UNKNOWN[N] for numbers it has no name for."""
    return VIRT_TYPES.get(type_id, f"UNKNOWN[{type_id}]")
