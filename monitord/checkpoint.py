"""The checkpoint: source position and everything derived up to it, written atomically.

State and position are saved together, so after a crash the daemon resumes
reading exactly where the saved state ends: nothing is lost and nothing is
counted twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

FORMAT_VERSION: Final = 1
FILENAME: Final = "checkpoint.json"


class CheckpointStore:
    """Load and save `checkpoint.json` in the state directory."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.path = self.dir / FILENAME

    def load(self) -> dict[str, Any] | None:
        """Return the saved document, None when there is none.

        A corrupt or unreadable checkpoint is set aside (renamed) and logged, so a
        bad file can never make the daemon crash in a loop.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.error("cannot read checkpoint %s: %s; starting fresh", self.path, err.strerror)
            self._set_aside()
            return None
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            log.error("checkpoint %s is corrupt (%s); set aside, starting fresh", self.path, err)
            self._set_aside()
            return None
        if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
            log.error("checkpoint %s has an unknown format; set aside, starting fresh", self.path)
            self._set_aside()
            return None
        return doc

    def save(self, doc: dict[str, Any]) -> int:
        """Write doc atomically (temp file, fsync, rename, fsync dir); return its size."""
        body = dict(doc)
        body["version"] = FORMAT_VERSION
        body["saved_at"] = time.time()
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)
        dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return len(data)

    def _set_aside(self) -> None:
        target = self.path.with_name(f"{FILENAME}.corrupt-{int(time.time())}")
        try:
            self.path.replace(target)
            log.warning("old checkpoint kept as %s", target)
        except OSError as err:
            log.error("cannot set aside checkpoint %s: %s", self.path, err.strerror)
