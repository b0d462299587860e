"""Reading a file whole, safely: only regular files (or links to them), opened without
blocking (opening a FIFO must not wait for a writer), never more than the size they declare
(``/dev/zero`` never ends). Image files and kernel files are read this way; their callers
phrase the errors."""

from __future__ import annotations

import os
import stat

__all__ = ["read_regular", "NotRegularFile", "FileTooLarge", "not_a_regular_file", "READ_FLAGS"]

READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) \
    | getattr(os, "O_CLOEXEC", 0)


class NotRegularFile(OSError):
    """The path is a folder, FIFO, device or socket; ``mode`` is its ``st_mode``."""

    def __init__(self, mode: int) -> None:
        super().__init__(not_a_regular_file(mode))
        self.mode = mode


class FileTooLarge(OSError):
    """The file declares more than the caller's limit; ``size`` is what it declares."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


def not_a_regular_file(mode: int) -> str:
    """The reason a file of ``mode`` (``st_mode``) is not read, for error messages."""
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return f"is {kind}, not an image file" if kind != "not a regular file" else \
        "not a regular file"


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The whole of the regular file ``path``, read once (a file that shrinks while it is read
    gives what is there). Raises what ``os.open`` raises (FileNotFoundError, PermissionError,
    ...), :class:`NotRegularFile`, :class:`FileTooLarge` (over ``limit`` bytes) or OSError."""
    fd = os.open(os.fsdecode(path), READ_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(st.st_mode)
        if limit is not None and st.st_size > limit:
            raise FileTooLarge(st.st_size)
        chunks, left = [], st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
