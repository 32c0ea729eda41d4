"""`monitord parse` of one large regular file on two cores, with the output of one process.

The file is cut into segments at offsets where a single sequential reader (reading
`read_size` chunks from offset 0) holds nothing but a short partial line; segments
alternate between this process and one forked worker. The worker writes each
segment's JSON Lines to one of two temporary files and reports its malformed lines;
this process prints its own segments and copies the worker's in file order, so
stdout, the malformed-line messages and the merged `ParseStats` are byte for byte
those of the sequential path. Two credits on a pipe keep the worker at most two
segments ahead: memory and temporary space stay bounded, whatever the file size.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import stat
import struct
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any, BinaryIO, Final, TextIO

from monitord.audit.jsonl import JsonConverter
from monitord.audit.parser import Ignored, ParseError, ParseStats, StreamParser, parse_line
from monitord.audit.record import AuditRecord
from monitord.errors import InputError

SEGMENT_SIZE: Final = 16 << 20
MIN_SIZE: Final = 48 << 20  # below this the fork and copies cost more than they save
_HEADER: Final = struct.Struct("<I")

ErrorReport = Callable[[ParseError, bytes], None]
Encode = Callable[[AuditRecord], str]
# Candidate lines -> JSON lines with newline (monitord.audit.jsonl.json_converter).
Convert = JsonConverter
# Worker -> parent messages: ("segment", size, [(reason, detail, line), ...]),
# ("stats", ParseStats.to_json()), ("input_error", message) or ("crash", text).
_Message = tuple[Any, ...]


def usable_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def fork_worker(work: Callable[[], None]) -> int:
    """Fork a process that runs work() and exits, 0 if it returned and 1 if it raised;
    return its pid. Buffered output is flushed first, so the child never writes it again;
    Ctrl-C is the parent's to handle (the child just ends)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the worker (checked by what it produces)
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


def worth_it(stream: BinaryIO, min_size: int = MIN_SIZE) -> bool:
    """Tell whether a two-process parse pays off: a large regular file and two CPUs."""
    if not hasattr(os, "fork") or usable_cpus() < 2:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size >= min_size


def cut_points(
    fd: int, size: int, read_size: int, segment_size: int, max_line_length: int
) -> list[int]:
    """Offsets (multiples of read_size, 0 first) where the file may be cut into segments.

    A cut is valid where a sequential reader's state is only a partial line no longer
    than max_line_length: a newline lies in the max_line_length + 1 bytes before it.
    """
    step = max(read_size, segment_size - segment_size % read_size)
    cuts = [0]
    x = step
    while x < size:
        lo = max(0, x - max_line_length - 1)
        if b"\n" in os.pread(fd, x - lo, lo):
            cuts.append(x)
            x += step
        else:
            x += read_size  # inside a long line: try the next chunk boundary
    return cuts


def _partial_at(fd: int, cut: int, max_line_length: int) -> bytes:
    """The unfinished line a sequential reader holds at a valid cut."""
    if cut == 0:
        return b""
    lo = max(0, cut - max_line_length - 1)
    before = os.pread(fd, cut - lo, lo)
    return before[before.rfind(b"\n") + 1 :]


def _run_segment(
    fd: int,
    name: str,
    parser: StreamParser,
    start: int,
    end: int | None,
    read_size: int,
    convert: Convert,
    emit: Callable[[list[bytes]], None],
) -> None:
    """Parse [start, end) (end None: to EOF, then finish) exactly as the sequential reader."""
    parser.reset()
    parser.resume(_partial_at(fd, start, parser.max_line_length))
    pos = start
    while end is None or pos < end:
        try:
            chunk = os.pread(fd, read_size, pos)
        except OSError as err:
            raise InputError(f"cannot read {name}: {err.strerror}") from None
        if not chunk:
            break
        pos += len(chunk)
        lines = parser.feed_as(chunk, convert.line, convert.region)
        if lines:
            emit(lines)
    if end is None:
        lines = parser.finish_as(convert.line, convert.region)
        if lines:
            emit(lines)


def _send(fd: int, message: _Message) -> None:
    data = pickle.dumps(message)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytes:
    parts: list[bytes] = []
    while n:
        part = os.read(fd, n)
        if not part:
            raise EOFError("parse worker exited early")
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _receive(fd: int) -> _Message:
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    message: _Message = pickle.loads(_read_exact(fd, size))
    return message


def _worker(
    fd: int,
    name: str,
    segments: Sequence[tuple[int, int | None]],
    read_size: int,
    max_line_length: int,
    make_convert: Callable[[], Convert],
    files: Sequence[IO[bytes]],
    results: int,
    credits: int,
    error_limit: int,
) -> None:
    """The forked side: parse every other segment into the temporary files, report back."""
    sampled: list[tuple[str, str, bytes]] = []
    total_sampled = 0

    def on_error(err: ParseError, line: bytes) -> None:
        nonlocal total_sampled
        # Only the first error_limit malformed lines can ever be shown, in file order.
        if total_sampled < error_limit:
            total_sampled += 1
            sampled.append((err.reason, err.detail, line[:200]))

    parser = StreamParser(max_line_length=max_line_length, on_error=on_error)
    convert = make_convert()
    for i, (start, end) in enumerate(segments):
        _read_exact(credits, 1)  # the parent has copied what this file held before
        out = files[i % len(files)]
        out.seek(0)
        out.truncate()
        write = out.write

        def emit(lines: list[bytes], write: Callable[[bytes], object] = write) -> None:
            write(b"".join(lines))

        _run_segment(fd, name, parser, start, end, read_size, convert, emit)
        out.flush()
        _send(results, ("segment", out.tell(), sampled))
        sampled = []
    _send(results, ("stats", parser.stats.to_json()))


def parse_file(
    stream: BinaryIO,
    name: str,
    stats: ParseStats,
    on_error: ErrorReport,
    out: TextIO,
    make_encode: Callable[[], Encode] | None,
    read_size: int,
    *,
    segment_size: int = SEGMENT_SIZE,
    max_line_length: int | None = None,
    error_limit: int = 20,
    make_convert: Callable[[], Convert] | None = None,
) -> None:
    """Parse a regular file on two processes; print what the sequential path prints.

    Records go to `out` as JSON Lines, malformed lines to `on_error` (in file order,
    the worker's first `error_limit` of them), counters into `stats`. `make_convert`
    (one candidate line -> its JSON line), when given, replaces `make_encode`.
    """
    if make_convert is None:
        if make_encode is None:
            raise ValueError("parse_file needs make_encode or make_convert")
        make_convert = _converter_of(make_encode)
    fd = stream.fileno()
    size = os.fstat(fd).st_size
    parser = StreamParser(stats=stats, on_error=on_error)
    if max_line_length is not None:
        parser.max_line_length = max_line_length
    cuts = cut_points(fd, size, read_size, segment_size, parser.max_line_length)
    bounds: list[tuple[int, int | None]] = [
        (cut, cuts[i + 1] if i + 1 < len(cuts) else None) for i, cut in enumerate(cuts)
    ]
    convert = make_convert()
    out.flush()  # everything below writes bytes to out.buffer
    sink = out.buffer

    def emit(lines: list[bytes]) -> None:
        sink.write(b"".join(lines))

    if len(bounds) < 2:
        _run_segment(fd, name, parser, 0, None, read_size, convert, emit)
        return
    import tempfile  # here: `monitord parse` of small inputs starts without it

    # Closed in the `finally` below (a `with` for each would nest the whole function).
    files = [tempfile.TemporaryFile(prefix="monitord-parse-") for _ in range(2)]  # noqa: SIM115
    results_r, results_w = os.pipe()
    credits_r, credits_w = os.pipe()
    out.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 0
        try:
            os.close(results_r)
            os.close(credits_w)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _worker(
                fd,
                name,
                bounds[1::2],
                read_size,
                parser.max_line_length,
                make_convert,
                files,
                results_w,
                credits_r,
                error_limit,
            )
        except InputError as err:
            _send(results_w, ("input_error", str(err)))
        except BaseException as err:  # reported to the parent, which raises
            code = 1
            with contextlib.suppress(BaseException):  # else the parent sees EOF
                _send(results_w, ("crash", f"{type(err).__name__}: {err}"))
        finally:
            os._exit(code)
    os.close(results_w)
    os.close(credits_r)
    try:
        os.write(credits_w, b"xx")  # one credit per temporary file
        for i, (start, end) in enumerate(bounds):
            if i % 2 == 0:
                _run_segment(fd, name, parser, start, end, read_size, convert, emit)
                continue
            message = _receive(results_r)
            _raise_for(message)
            copy = files[(i // 2) % 2].fileno()
            size_out = int(message[1])
            offset = 0
            while offset < size_out:
                block = os.pread(copy, min(size_out - offset, 1 << 20), offset)
                if not block:
                    raise EOFError("parse worker output truncated")
                sink.write(block)
                offset += len(block)
            for reason, detail, line in message[2]:
                on_error(ParseError(reason, detail), line)
            if i + 4 < len(bounds):  # the worker has a segment left that needs this file
                os.write(credits_w, b"x")
        message = _receive(results_r)
        _raise_for(message)
        worker = ParseStats.from_json(message[1])
        stats.lines += worker.lines
        stats.bytes += worker.bytes
        stats.records += worker.records
        stats.ignored.update(worker.ignored)
        stats.errors.update(worker.errors)
    finally:
        for fd_ in (results_r, credits_w):
            os.close(fd_)
        for f in files:
            f.close()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # pragma: no cover - already reaped
            pass
        os.waitpid(pid, 0)


def _converter_of(make_encode: Callable[[], Encode]) -> Callable[[], Convert]:
    """A line converter from a record encoder (parse_line, then encode)."""

    def make() -> Convert:
        encode = make_encode()

        def convert(line: bytes) -> bytes | Ignored:
            outcome = parse_line(line)
            if isinstance(outcome, Ignored):
                return outcome
            return (encode(outcome) + "\n").encode()

        return JsonConverter(convert)

    return make


def _raise_for(message: _Message) -> None:
    kind = message[0]
    if kind == "input_error":
        raise InputError(str(message[1]))
    if kind == "crash":
        raise RuntimeError(f"parse worker failed: {message[1]}")
