"""Whole-file writes that a kill never leaves half done: a temporary file beside the target, flushed to
disk, then renamed over it (`os.replace` is atomic on one file system). A checkpoint, a directory, has
its own swap in `toto_robot.checkpoint`.

The temporary is `.<name>.tmp-<host>-<pid>`; a writer killed by SIGKILL cannot remove its own, so the next
write of the same target removes the temporaries of this host's writers that are no longer running (another
host's, on a shared file system, are left alone: their process ids mean nothing here)."""

from __future__ import annotations

import glob
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _prefix(path: Path) -> str:
    return f".{path.name}.tmp-{socket.gethostname()}-"


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed writers of `path` on this host left beside it; return them."""
    path = Path(path)
    prefix, removed = _prefix(path), []
    for tmp in path.parent.glob(glob.escape(prefix) + "*"):
        pid = tmp.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write whole (any writer: bytes, safetensors, ...); it
    replaces `path` when the block ends, and is removed if the block raises (readers see the old file or the
    new one, never a part)."""
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = path.with_name(f"{_prefix(path)}{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename, so a crash cannot expose an empty file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Replace `path` with `data`: readers see the old file or the new one, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` of `text` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))
