"""One writer per schedules database: a lock file in its folder, holding the writer's pid.

``tune`` holds it while it tunes into a folder; ``merge``/``prune`` while they replace one; the
repair of a torn last line while it rewrites the log. A second writer is refused with one line
naming the owner's pid. The lock is an ``flock`` on ``.mntvm-tune.lock``: the kernel drops it when
its owner exits, however it exits, so a lock file left by a killed writer (a dead pid) blocks
nobody and is taken over. Within one process the lock is re-entrant (tune reads its own database).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from mntvm.core.errors import MntvmError

LOCK = ".mntvm-tune.lock"
_HELD: dict[str, int] = {}  # folders this process holds the lock of -> nesting depth


def _owner(lock: Path) -> str:
    """The pid written in a held lock file (its owner writes it just after taking the lock)."""
    for _ in range(20):
        try:
            text = lock.read_text().strip()
        except OSError:
            text = ""
        if text.isdigit():
            return text
        time.sleep(0.05)
    return "?"


def _acquire(lock: Path, hint: str) -> int:
    """An fd holding ``lock`` (created if absent), with this pid written in it."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise MntvmError(f"cannot write {lock.parent}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MntvmError(f"{lock.parent} is being tuned by pid {_owner(lock)}; {hint}") from None
        try:
            st, mine = os.stat(lock), os.fstat(fd)
        except FileNotFoundError:  # its previous owner removed it between our open and flock
            os.close(fd)
            continue
        if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            _release(lock, fd)
            raise MntvmError(f"cannot write {lock.parent}: {e.strerror or e}") from None
        return fd


def _release(lock: Path, fd: int) -> None:
    """Remove the lock file if it is still ours (a merge may have swapped the folder), then unlock."""
    try:
        st, mine = os.stat(lock), os.fstat(fd)
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(lock)
    except OSError:
        pass
    os.close(fd)


@contextlib.contextmanager
def db_lock(folder, hint: str = "wait for it or use another -o") -> Iterator[None]:
    """Hold the writer's lock of the existing database folder ``folder`` for a ``with`` block; a
    folder another live process holds is refused: "``folder`` is being tuned by pid N; ``hint``"."""
    key = os.path.abspath(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    lock = Path(key) / LOCK
    fd = _acquire(lock, hint)
    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        _release(lock, fd)
