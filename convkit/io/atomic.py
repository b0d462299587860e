"""Writing files that appear whole or not at all: the one place convkit replaces a file.

Every writer (images, streamed PNG bands, model files) writes to a temporary file beside the
destination and renames it over the destination, so a reader never sees half a file and a
killed run leaves the old file as it was. The rules, once:

* Temporary names are ``.convkit-<pid>-<random>.tmp``: hidden (folder walks skip them), not
  matched by an image extension, and carrying the writer's process id, so that
  :func:`remove_stale` can tell a dead run's leftovers from a live run's files. A writer that
  picks its encoder by the extension (``cv2.imwrite``) asks for ``.tmp<ext>``.
* A file that is replaced keeps its permission bits, and its owner and group where this
  process may set them (as ``sed -i`` and ``mogrify`` do). The temporary file has that mode
  from its creation on, never a wider one. A new file gets ``0o666`` less the umask.
* A symbolic link that is written through stays a link: the file it points to is replaced
  (the temporary file is made beside that file, so the rename stays on one file system).

torch-free.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["destination", "replacing", "write_file", "remove_stale", "is_temp_name"]

_PREFIX = ".convkit-"
_TEMP_NAME = re.compile(r"^\.convkit-(\d+)-[0-9a-f]{12}\.tmp")


def destination(path: str | os.PathLike[str]) -> Path:
    """The file that a write to ``path`` replaces: the target of a symbolic link (followed to
    the end, even if it does not exist yet), else ``path`` itself."""
    p = Path(os.fsdecode(path))
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def is_temp_name(name: str) -> bool:
    """Whether ``name`` (a file name, no folder) is one of convkit's temporary files."""
    return _TEMP_NAME.match(name) is not None


def _create_temp(dst: Path, suffix: str) -> tuple[Path, int | None]:
    """Create an empty temporary file beside ``dst`` with ``dst``'s mode (and owner, where
    allowed) or, for a new file, the umask's default; return its path, and the mode to set
    once it is written when that mode would not let its owner write it (a read-only file
    replaced in place: writers open the temporary file by name)."""
    try:
        st = os.stat(dst)
    except OSError:
        st = None
    keep = st is not None and stat.S_ISREG(st.st_mode)
    final = stat.S_IMODE(st.st_mode) if keep else 0o666
    mode = final | 0o200  # the owner writes it meanwhile; group and others get no more
    later = final if keep and mode != final else None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    while True:
        # os.urandom, as secrets.token_hex uses, without secrets' 5 ms import (hashlib, hmac)
        temp = dst.with_name(f"{_PREFIX}{os.getpid()}-{os.urandom(6).hex()}.tmp{suffix}")
        try:
            # the umask can only narrow this mode; for a replacement it is set exactly below
            fd = os.open(temp, flags, mode & 0o777)
            break
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue
    try:
        if keep:
            with contextlib.suppress(OSError):  # not the owner, not root: keep ours
                os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, mode)  # after chown, which may clear set-id bits
    except BaseException:
        os.close(fd)
        _remove_quietly(temp)
        raise
    os.close(fd)
    return temp, later


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, keep_suffix: bool = False) -> Iterator[Path]:
    """``with replacing(path) as temp:`` write the new file at ``temp`` (by name; it exists,
    empty, with the right mode); when the block ends without an exception it replaces
    ``path`` (the file a link points to, for a link). On any exception, Ctrl-C included, the
    temporary file is removed and ``path`` is left as it was. ``keep_suffix`` ends the
    temporary name in ``path``'s extension, for writers that choose the format by it."""
    dst = destination(path)
    temp, final_mode = _create_temp(dst, dst.suffix if keep_suffix else "")
    try:
        yield temp
        if final_mode is not None:
            os.chmod(temp, final_mode)
        os.replace(temp, dst)
    except BaseException:
        _remove_quietly(temp)
        raise


def write_file(path: str | os.PathLike[str], content: bytes | Callable[[IO[bytes]], None], *,
               fsync: bool = False) -> None:
    """Replace ``path`` with ``content`` (bytes, or a function that writes to the open file),
    atomically as :func:`replacing` does. ``fsync`` flushes the data to disk before the rename
    (for files that must survive a power cut: model checkpoints)."""
    with replacing(path) as temp, open(temp, "wb") as f:
        if callable(content):
            content(f)
        else:
            f.write(content)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def remove_stale(folder: str | os.PathLike[str], *, own: bool = False) -> int:
    """Remove the temporary files that convkit processes which no longer run left in
    ``folder`` (a run killed with SIGKILL, a power cut); return how many. Files of a live
    process (a concurrent run writing into the same folder) are left alone; ``own`` removes
    this process's too (a run that ends while an abandoned thread still writes)."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None or (_alive(int(m.group(1))) and not (own and int(m.group(1)) == os.getpid())):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # someone else's process, or we cannot tell: leave its files
    return True


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
