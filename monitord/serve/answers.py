"""Rendered answers shared by every client that asks within `cache_max_age`.

Large bodies live in memory maps of their own, unmapped as soon as the last
client has its copy, so the memory of a scrape storm goes back to the system.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import itertools
import mmap
import time
import weakref
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final

from monitord.textout import json_bytes

# Bodies at least this large live in their own memory map (returned to the system when
# freed, whatever glibc's malloc thresholds have become); smaller ones are plain bytes.
MAP_AT_LEAST: Final = 256 * 1024
GZIP_LEVEL: Final = 1
# Renders of one kind alive at once (being sent to slow clients); see RenderCache.
MAX_GENERATIONS: Final = 3


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
    return trim


_MALLOC_TRIM: Final = _malloc_trim()


def release_memory() -> None:
    """Once a load is over, give its memory back to the system.

    A connection that failed mid-answer can leave a reference cycle (its exception's
    traceback, the frame holding the body) that only the cyclic collector frees, and
    an idle daemon allocates too little to trigger a full collection: so collect now.
    Then glibc's malloc returns what its arenas hold free (a no-op elsewhere): the
    render and loop threads' arenas would otherwise keep the peak for good.
    """
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass(frozen=True, slots=True, weakref_slot=True, eq=False)  # hashed by identity
class Body:
    """A rendered answer shared by every client that asks within `cache_max_age`."""

    data: bytes | memoryview
    content_type: str
    made: float  # monotonic time the data was taken from the table
    gzip: bool = False


def _blocks(parts: Iterable[bytes]) -> Iterator[bytes]:
    """The parts joined a few thousand at a time (in C), never into one big string."""
    pieces = iter(parts)
    while block := b"".join(itertools.islice(pieces, 2048)):
        yield block


def collect(parts: Iterable[bytes], size: int) -> bytes | memoryview:
    """Join parts: small results as bytes, large ones in a memory map of their own.

    A map is unmapped when its last reader lets go, so the memory of a large
    answer goes back to the system at once, whatever malloc would have kept.
    """
    if size < MAP_AT_LEAST:
        return b"".join(parts)
    area = mmap.mmap(-1, size)
    for block in _blocks(parts):
        area.write(block)
    return memoryview(area).toreadonly()


def make_body(parts: Iterable[bytes], content_type: str, made: float, packed: bool) -> Body:
    """The body of an answer from its parts, gzip-compressed if `packed` (level 1: a tenth
    of the size for a fraction of the time; the plain text is never joined then)."""
    if not packed:
        parts = list(parts)
        return Body(collect(parts, sum(map(len, parts))), content_type, made)
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    out = [*map(packer.compress, _blocks(parts)), packer.flush()]
    return Body(collect(out, sum(map(len, out))), content_type, made, gzip=True)


def document_parts(doc: dict[str, Any]) -> list[bytes]:
    """Encode a guest list document guest by guest: the same bytes as one `json_bytes`,
    without a multi-MiB string for 10,000 guests."""
    parts: list[bytes] = []
    sep = b"{"
    for key, value in doc.items():
        parts.append(sep + json_bytes(key) + b":")
        sep = b","
        if key == "guests" and isinstance(value, list):
            parts.append(b"[")
            parts.extend((b"," if i else b"") + json_bytes(item) for i, item in enumerate(value))
            parts.append(b"]")
        else:
            parts.append(json_bytes(value))
    parts.append(b"}\n" if doc else b"{}\n")
    return parts


class RenderCache:
    """Single flight and reuse of rendered answers, used from the event loop only.

    `get(key, make)` returns the cached body when younger than `max_age`; else
    the render in flight for that key, or a new one started in the render
    thread. A cached body is dropped once too old even if nobody asks again,
    so an idle daemon keeps no rendered text.

    Slow clients keep older renders alive while they are sent. At most
    MAX_GENERATIONS of one kind live at once: beyond that, a request gets the
    newest of them even if older than `max_age`, so memory stays bounded
    (MAX_GENERATIONS bodies per kind) however slowly clients read.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: ThreadPoolExecutor,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loop = loop
        self.executor = executor
        self.max_age = max_age
        self.clock = clock
        self.renders: Counter[str] = Counter()  # renders started, by key kind (tests, bench)
        self._bodies: dict[Any, Body] = {}
        self._flights: dict[Any, asyncio.Future[Body]] = {}
        self._alive: dict[Any, weakref.WeakSet[Body]] = {}  # bodies still held, by key
        self.stale_served = 0
        self._trim_due = False

    async def get(self, key: Any, make: Callable[[], Body]) -> Body:
        hit = self._bodies.get(key)
        if hit is not None and self.clock() - hit.made < self.max_age:
            return hit
        flight = self._flights.get(key)
        alive = self._alive.get(key)
        if flight is None and alive is not None and len(alive) >= MAX_GENERATIONS:
            self.stale_served += 1
            return max(alive, key=lambda b: b.made)
        if flight is None:
            self.renders["+".join(k for k in key if k in ("metrics", "guests", "gzip"))] += 1
            flight = self.loop.run_in_executor(self.executor, make)
            self._flights[key] = flight
            flight.add_done_callback(lambda f: self._landed(key, f))
        return await asyncio.shield(flight)

    def _landed(self, key: Any, flight: asyncio.Future[Body]) -> None:
        self._flights.pop(key, None)
        if flight.cancelled() or flight.exception() is not None:
            return
        body = flight.result()
        self._bodies[key] = body
        self._alive.setdefault(key, weakref.WeakSet()).add(body)
        delay = max(0.0, body.made + self.max_age - self.clock())
        # The timer holds the key and time, not the body: it must not keep the body alive.
        self.loop.call_later(delay, self._expire, key, body.made)

    def _expire(self, key: Any, made: float) -> None:
        cached = self._bodies.get(key)
        if cached is not None and cached.made == made:
            del self._bodies[key]
        if not self._bodies and not self._flights and not self._trim_due:
            # Idle again: a moment later (the last clients have their copies), hand the
            # memory freed by the renders and the sends back to the system.
            self._trim_due = True
            self.loop.call_later(self.max_age + 1.0, self._trim)

    def _trim(self) -> None:
        self._trim_due = False
        if not self._bodies and not self._flights:
            self.loop.run_in_executor(self.executor, release_memory)

    def clear(self) -> None:
        self._bodies.clear()
