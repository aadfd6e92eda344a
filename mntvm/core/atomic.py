"""Atomic writes: a file or folder appears whole or not at all, and a failure keeps the old one.

Everything the project writes for a user (artifacts, weights, ONNX exports, schedules databases,
sweep plots and reports) goes through these: a temp file/folder beside the destination, then one
rename. New files get the usual permissions (0666/0777 minus the umask), not mkstemp's 0600.

Folders are swapped with ``renameat2(RENAME_EXCHANGE)`` (one atomic step on Linux: at every
instant the destination is either the old folder or the new one). Temp names carry the writer's
pid; a writer killed mid-way leaves a temp folder that the next write to the same destination
removes (and, on filesystems without RENAME_EXCHANGE, where the swap takes two renames, puts the
old folder back if it was left half-swapped).

An output that exists and is not what the writer makes (a user's file or folder) is never
replaced: the caller says what it writes, and anything else is refused with one line.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mntvm.core.errors import MntvmError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cannot_write(path: Path, e: OSError) -> MntvmError:
    return MntvmError(f"cannot write {path}: {e.strerror or e}")


def check_destination(path: Path, what: str, is_ours: Callable[[Path], bool] | None, folder: bool) -> Path:
    """The absolute destination (for a folder: a symlink's target), or a one-line error when it
    must not be (re)placed."""
    path = Path(os.path.realpath(path) if folder else os.path.abspath(path))
    if path.parent == path:
        raise MntvmError(f"cannot write {what} to {path}: give a file or folder name")
    if folder:
        cwd = Path.cwd()
        if path == cwd or path in cwd.parents:
            raise MntvmError(f"{path} is the current folder (or holds it): not replacing it with {what}; "
                             "give a new folder name")
    if path.is_symlink() or path.exists():
        if folder and not path.is_dir():
            raise MntvmError(f"{path} exists and is not a folder; not replacing it with {what}")
        if not folder and path.is_dir():
            raise MntvmError(f"{path} is a folder; give a file name for {what}")
        if is_ours is not None and not is_ours(path):
            raise MntvmError(f"{path} exists and is not {what}; not replacing it")
    _probe_writable(path)
    return path


def _probe_writable(path: Path) -> None:
    """Refuse, before any work, a destination whose nearest existing folder takes no new file
    (read-only, /proc, no permission): a temp file is created there and removed at once."""
    probe = path.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise MntvmError(f"cannot write {path}: {probe} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mntvm-probe-", dir=probe)
    except OSError as e:
        raise _cannot_write(path, e) from None
    os.close(fd)
    os.unlink(tmp)


def _mkdirs(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_write(path, e) from None


@contextmanager
def atomic_path(path: str | os.PathLike, what: str = "the output",
                is_ours: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write (for libraries that write by name); on success it
    is fsynced and renamed onto ``path``, on failure removed. A folder at ``path``, or an existing
    file that ``is_ours`` rejects, is refused."""
    path = check_destination(Path(path), what, is_ours, folder=False)
    _mkdirs(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, what: str = "the output") -> Path:
    with atomic_path(path, what) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, what: str = "the output") -> Path:
    return write_bytes(path, text.encode(), what)


# ---------------------------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------------------------
_TEMP = re.compile(r"^\.(.+)\.(?:tmp|old)-\d+-")  # the temp folders atomic_dir and remove_dir make
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).
    Returns False where the kernel, libc or filesystem cannot (the caller falls back)."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(path: str | os.PathLike) -> None:
    """Clean up after writers of ``path`` that were killed mid-way: remove their temp folders, and
    put the old folder back where a two-rename swap was cut between its renames."""
    path = Path(os.path.abspath(path))
    pat = re.compile(rf"^\.{re.escape(path.name)}\.(tmp|old)-(\d+)-")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for p in sorted(siblings, key=lambda p: p.name):
        m = pat.match(p.name)
        if not m or _alive(int(m.group(2))):  # a live writer's (this process's too: another thread)
            continue
        if m.group(1) == "old" and (p / "x").exists() and not path.exists():
            os.replace(p / "x", path)
        shutil.rmtree(p, ignore_errors=True)


def recover_all(folder: str | os.PathLike) -> None:
    """:func:`recover` every destination in ``folder`` that killed writers left temp folders for."""
    try:
        names = {m.group(1) for p in Path(folder).iterdir() if (m := _TEMP.match(p.name))}
    except OSError:
        return
    for name in sorted(names):
        recover(Path(folder) / name)


def remove_dir(path: str | os.PathLike) -> None:
    """Delete a folder so that nobody sees it half deleted: one rename aside, then the removal."""
    path = Path(path)
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{os.getpid()}-", dir=path.parent))
    os.replace(path, trash / "gone")  # not "x": recover() never puts it back
    shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | os.PathLike, what: str = "the output",
               is_ours: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temp folder beside ``path`` to fill; on success it replaces ``path`` atomically, on
    failure it is removed and ``path`` is untouched. An existing ``path`` that is a file, the
    current folder, or a folder that ``is_ours`` rejects is refused (nothing is written)."""
    path = check_destination(Path(path), what, is_ours, folder=True)
    _mkdirs(path)
    recover(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if not path.exists():
            os.replace(tmp, path)
        elif exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{os.getpid()}-", dir=path.parent))
            os.replace(path, old / "x")
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / "x", path)
                raise
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _cannot_write(path, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
