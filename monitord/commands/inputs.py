"""Audit logs named on the command line (`parse`, `replay`): open them all, read in chunks."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import BinaryIO, Final

from monitord.errors import InputError

READ_SIZE: Final = 1 << 20


def open_all(names: Sequence[str]) -> list[tuple[str, BinaryIO]]:
    """Open every input before reading any, so an unreadable one fails with no output.

    No name, or `-`, is stdin. An InputError (exit 2) names the file and why.
    """
    if not names:
        return [("<stdin>", sys.stdin.buffer)]
    opened: list[tuple[str, BinaryIO]] = []
    try:
        for name in names:
            if name == "-":
                opened.append(("<stdin>", sys.stdin.buffer))
                continue
            try:
                opened.append((name, open(name, "rb")))  # noqa: SIM115 - closed by the caller
            except IsADirectoryError:
                raise InputError(f"cannot read {name}: is a directory") from None
            except OSError as err:
                raise InputError(f"cannot read {name}: {err.strerror}") from None
    except InputError:
        close_all(opened)
        raise
    return opened


def close_all(inputs: Sequence[tuple[str, BinaryIO]]) -> None:
    for _, stream in inputs:
        if stream is not sys.stdin.buffer:
            stream.close()


def read_chunks(stream: BinaryIO, name: str, size: int = READ_SIZE) -> Iterator[bytes]:
    """Yield a file's content in large chunks; a read error is an InputError."""
    while True:
        try:
            chunk = stream.read(size)
        except OSError as err:
            raise InputError(f"cannot read {name}: {err.strerror}") from None
        if not chunk:
            return
        yield chunk
