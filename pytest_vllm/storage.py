"""Durable writes: a reader (or a crash) sees the old file or the new one, never half of either.

``atomic_write*``: write a temp file next to the target, fsync it, rename it over the target, fsync
the folder (the rename itself survives a power cut only then). A write that fails removes its temp
file; one killed outright (SIGKILL, power cut) leaves it behind, and the next write of the same
target removes it once its writer process is gone.

``locked``: a read-modify-write (a baseline file that several xdist workers or CI jobs add entries
to) holds an exclusive lock on a sibling ``.<name>.lock`` file, so no writer overwrites another's
entry. The lock is ``flock``-based (filelock): a killed holder releases it with its process. The
lock file stays (deleting it would let two writers hold locks on two different files).
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from pytest_vllm.errors import StorageError

TEMP_SUFFIX = ".tmp"
LOCK_TIMEOUT_S = 300.0  # a baseline write takes milliseconds: a lock held this long is a hung process


def temp_path(path: Path, pid: int | None = None) -> Path:
    """Where a write of ``path`` by process ``pid`` puts its data first (hidden, named after the writer,
    so a later write can tell a dead writer's leftover from a live writer's file)."""
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def atomic_write(path: Path, fill: Callable[[IO[bytes]], object]) -> None:
    """Replace ``path`` with what ``fill`` writes into the open temp file, durably; on any failure the
    target is untouched and the temp file removed. The new file keeps the old one's permissions."""
    remove_stale_temps(path)
    tmp = temp_path(path)
    out = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")  # 0o666 & ~umask, as open()
    try:
        with out:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(out.fileno(), stat.S_IMODE(path.stat().st_mode))
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda out: out.write(data))


def atomic_write_text(path: Path, text: str, encoding: str = "utf-8") -> None:
    atomic_write(path, lambda out: out.write(text.encode(encoding)))


def atomic_write_json(path: Path, data: Any, **dump_options: Any) -> None:
    """``json.dump`` streamed into the temp file (no second copy of a large document in memory), then a
    newline; a value json cannot encode fails the write and leaves ``path`` as it was."""
    def fill(out: IO[bytes]) -> None:
        text = io.TextIOWrapper(out, encoding="utf-8", write_through=False)
        try:
            json.dump(data, text, **dump_options)
            text.write("\n")
            text.flush()
        finally:
            text.detach()  # closing the wrapper would close ``out`` before its fsync

    atomic_write(path, fill)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open a folder, i.e. POSIX)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temp files that killed writers of ``path`` left (their process is gone); a live
    writer's file is kept. Returns the removed paths."""
    removed = []
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}") if path.parent.is_dir() else ():
        pid_text = leftover.name[len(path.name) + 2:].split(".", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed.append(leftover)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextlib.contextmanager
def locked(path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (its folder must exist) for a read-modify-write."""
    lock = FileLock(str(lock_path(path)), timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise StorageError(f"{path} has been locked by another process for {timeout_s:g}s ({lock_path(path)}); "
                           "wait for the other pytest-vllm run to finish, or stop it if it hangs") from None
    try:
        yield
    finally:
        lock.release()
