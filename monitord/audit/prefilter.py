"""The candidate lines of a large file, found by a forked reader (`monitord replay`, two cores).

Most of an audit.log is not libvirt's: reading, counting and scanning it costs more
than parsing the few VIRT lines. A forked reader process does that part: it reads
the file as a sequential `StreamParser` would (READ_SIZE chunks from offset 0) and
passes on, for each chunk, only its candidate lines (the C scan's `region_lines`),
with the counts of the raw stream so far. This process parses and applies those
lines meanwhile. If the reader dies, this process reads on from the chunk where it
stopped, in the reader's state: the same lines and the same counts either way.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
from collections.abc import Iterator
from typing import BinaryIO, Final

from monitord.audit.parallel import fork_worker
from monitord.audit.parser import ACCELERATOR_MODULE, ParseStats, StreamParser
from monitord.commands.inputs import READ_SIZE
from monitord.errors import InputError

# One message per chunk: kind, length of the lines that follow, and the reader's state
# after the chunk: lines, bytes, not_virt lines, line_too_long errors, the length of
# the partial line it holds and whether it is discarding an over-long one.
_HEADER: Final = struct.Struct("<8Q")
_CHUNK: Final = 0
_END: Final = 1
_PIPE_SIZE: Final = 1 << 20


def available() -> bool:
    """The candidate scan needs the C accelerator (and fork)."""
    return ACCELERATOR_MODULE is not None and hasattr(os, "fork")


def candidate_chunks(
    stream: BinaryIO, name: str, stats: ParseStats, max_line_length: int
) -> Iterator[bytes | memoryview]:
    """Yield the candidate lines of each READ_SIZE chunk of a regular file, newline-ended.

    One item per chunk (often empty) and one for a last line without newline, so a
    consumer can act after the same chunks as a sequential reader; an item is valid
    until the next is asked for. `stats` counts the raw stream as that reader would
    (lines, bytes, `not_virt` lines, `line_too_long`); what parsing the yielded lines
    finds is the consumer's to count.
    """
    assert ACCELERATOR_MODULE is not None
    fd = stream.fileno()
    start = _Counts.of(stats)
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:  # pragma: no cover - a smaller pipe only means more wake-ups
        pass

    def reader() -> None:
        os.close(r)
        _reader(fd, name, max_line_length, w)

    pid = fork_worker(reader)
    os.close(w)
    # Where the reader's last message left it: bytes read, partial line length, discarding.
    state = (0, 0, 0)
    ended = False
    # The lines are read into one reused buffer, header and all: no copies beyond the pipe's.
    buf = bytearray(READ_SIZE + max_line_length + 2 + _HEADER.size)
    try:
        with os.fdopen(r, "rb", buffering=0) as pipe:
            while True:
                if not _read_exactly(pipe, buf, _HEADER.size):
                    break  # the reader died
                kind, size, lines, nbytes, not_virt, too_long, pending, discarding = (
                    _HEADER.unpack_from(buf)
                )
                if size > len(buf) or not _read_exactly(pipe, buf, size):
                    break
                start.plus(_Counts(lines, nbytes, not_virt, too_long)).store(stats)
                if kind == _END:
                    ended = True
                    break
                state = (nbytes, pending, discarding)
                yield memoryview(buf)[:size]
    finally:
        if not ended:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if ended:
        return
    # The reader stopped after `offset` bytes (a chunk end, or the file's end once it has
    # sent its final line): read on from there as it would have.
    offset, pending, discarding = state
    parser = StreamParser(stats=stats, max_line_length=max_line_length)
    parser.resume(os.pread(fd, pending, offset - pending) if pending else b"", bool(discarding))
    # From here the parser counts into `stats` itself.
    for lines_, _ in _read_lines(fd, name, parser, offset):
        yield lines_


def _read_exactly(pipe: BinaryIO, buf: bytearray, size: int) -> bool:
    """Fill buf[:size] from the pipe; False at its end (the reader is gone)."""
    view = memoryview(buf)
    got = 0
    while got < size:
        n = pipe.readinto(view[got:size])  # type: ignore[attr-defined]
        if not n:
            return False
        got += n
    return True


class _Counts:
    """What a lines-only StreamParser counts: lines, bytes, not_virt, line_too_long."""

    __slots__ = ("lines", "nbytes", "not_virt", "too_long")

    def __init__(self, lines: int, nbytes: int, not_virt: int, too_long: int) -> None:
        self.lines, self.nbytes, self.not_virt, self.too_long = lines, nbytes, not_virt, too_long

    @classmethod
    def of(cls, stats: ParseStats) -> _Counts:
        # not_virt + 1, 0 when the key is absent: a parser that has read no line has none.
        not_virt = stats.ignored["not_virt"] + 1 if "not_virt" in stats.ignored else 0
        return cls(stats.lines, stats.bytes, not_virt, stats.errors.get("line_too_long", 0))

    def plus(self, more: _Counts) -> _Counts:
        """These counts followed by a reader's from zero (`more`)."""
        if self.not_virt and more.not_virt:
            not_virt = self.not_virt + more.not_virt - 1
        else:
            not_virt = self.not_virt or more.not_virt
        return _Counts(
            self.lines + more.lines,
            self.nbytes + more.nbytes,
            not_virt,
            self.too_long + more.too_long,
        )

    def store(self, stats: ParseStats) -> None:
        stats.lines = self.lines
        stats.bytes = self.nbytes
        if self.not_virt:
            stats.ignored["not_virt"] = self.not_virt - 1
        if self.too_long:
            stats.errors["line_too_long"] = self.too_long


def _reader(fd: int, name: str, max_line_length: int, out: int) -> None:
    """In the forked reader: every chunk's candidate lines and counts, then the end."""
    parser = StreamParser(max_line_length=max_line_length)
    stats = parser.stats
    with os.fdopen(out, "wb", buffering=_PIPE_SIZE) as pipe:
        for lines, state in _read_lines(fd, name, parser, 0):
            pipe.write(_message(_CHUNK, lines, stats, state[0], int(state[1])))
            pipe.write(lines)
            pipe.flush()  # each chunk as soon as it is read: the consumer works meanwhile
        pipe.write(_message(_END, b"", stats, 0, 0))


def _message(kind: int, lines: bytes, stats: ParseStats, pending: int, discarding: int) -> bytes:
    unexpected = set(stats.ignored) - {"not_virt"} or set(stats.errors) - {"line_too_long"}
    if unexpected:  # a lines-only parser counts nothing else: refuse to guess
        raise RuntimeError(f"candidate reader counted {unexpected}")
    c = _Counts.of(stats)
    return _HEADER.pack(
        kind, len(lines), c.lines, c.nbytes, c.not_virt, c.too_long, pending, discarding
    )


def _read_lines(
    fd: int, name: str, parser: StreamParser, offset: int
) -> Iterator[tuple[bytes, tuple[int, bool]]]:
    """From offset on (a chunk end): each chunk's candidate lines, and the parser's state
    after it (partial line length, discarding)."""
    buf = bytearray(READ_SIZE)  # refilled: no new memory per chunk
    while True:
        try:
            n = os.preadv(fd, [buf], offset)
        except OSError as err:
            raise InputError(f"cannot read {name}: {err.strerror}") from None
        if not n:
            break
        offset += n
        yield parser.feed_lines(buf if n == READ_SIZE else buf[:n]), parser.state()
    lines = parser.finish_lines()
    if lines:
        yield lines, (0, False)
