"""What every source gives the daemon's loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from monitord.audit.record import AuditRecord
from monitord.config import SourceConfig
from monitord.sources.counters import SourceCounters

Position = dict[str, Any]
"""A JSON-able place in the source (file: dev/inode/offset/fingerprint; journal: cursor)."""


@dataclass(frozen=True, slots=True)
class Health:
    """Whether the source is open and readable; `reason` says why not."""

    ok: bool
    reason: str = "ok"


class Source(Protocol):
    """A stream of records with a resumable position.

    The loop calls `poll`, applies the records it returns, and may then save
    `position()` with the state: the position always points just after the
    last record returned, so state and position agree.
    """

    name: str

    def open(self, position: Position | None) -> None:
        """Start at a checkpointed position, or per the start mode when None."""

    def poll(self, timeout: float, wake_fds: Sequence[int] = ()) -> list[AuditRecord]:
        """Wait up to timeout for data (or until a wake fd is readable); return new records."""

    def position(self) -> Position | None:
        """Where reading would resume; None when the source cannot resume (a pipe)."""

    @property
    def caught_up(self) -> bool:
        """True once the data that existed at start-up has been read (live from then on)."""

    @property
    def finished(self) -> bool:
        """True when the source has ended for good (EOF on the plugin pipe)."""

    def take_switch(self) -> bool:
        """True once after the source moved to another file (rotation): checkpoint now."""

    def health(self) -> Health:
        """Open and readable, or why not."""

    def close(self) -> None:
        """Release files and descriptors."""


class LogSource:
    """What the file and journal sources share: their counters, and a log that never ends."""

    name: str

    def __init__(self, config: SourceConfig, counters: SourceCounters | None) -> None:
        self.config = config
        self.counters = counters if counters is not None else SourceCounters(self.name)
        self.stats = self.counters.parse
        self._caught_up = False

    @property
    def caught_up(self) -> bool:
        return self._caught_up

    @property
    def finished(self) -> bool:
        return False
