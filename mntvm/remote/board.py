"""An emulated edge board: a Debian userland for another CPU, run under qemu-user, serving TVM RPC.

The board is a real TVM RPC server (TVM's own server loop and tracker protocol) running inside an
aarch64 Debian bookworm userland with the aarch64 TVM *runtime* wheels, executed on this x86 host
by ``qemu-aarch64-static``.  It registers with a TVM RPC tracker under a key, exactly like a
physical board would, so the bench stage cannot tell the difference (except for speed: a full
MobileNetV1 takes ~10 s per inference emulated).

Public entries:

- :func:`prepare` builds (once) and returns the sysroot, cached under
  ``mntvm.core.paths.cache_dir()/board-<arch>`` (see :mod:`mntvm.remote.userland`);
- :func:`start` launches the board server, waits until it is registered with the tracker, and
  returns a :class:`BoardHandle` (pid, port, log file);
- :func:`stop` kills the board's whole process group, by handle or by pid;
- :func:`board_arch` asks a connected remote session which CPU architecture it runs on,
  :func:`board_cores` how many CPU cores it has.

Host requirements (Debian/Ubuntu packages): ``debootstrap`` and ``qemu-user-static`` (and
``g++-aarch64-linux-gnu`` to cross-link the libraries sent to the board).  ``prepare`` must run as
root (debootstrap); ``start`` runs the board in a ``chroot`` when root, else via qemu's ``-L``.
No binfmt_misc registration is needed.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mntvm.core import arch as archs
from mntvm.core.errors import MntvmError
from mntvm.remote import rpc
from mntvm.remote.userland import (APT_PACKAGES, board_command, board_dir, board_env, board_spec, prepare,
                                   server_script)

__all__ = ["BoardHandle", "prepare", "start", "stop", "board_arch", "board_cores", "is_running", "APT_PACKAGES"]

_LISTEN_MARK = "MNTVM_BOARD_LISTENING"
_ARCH_FUNC = "mntvm.board.arch"
_CORES_FUNC = "mntvm.board.cores"

# Board processes started by this Python process (so stop() can reap them: no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class BoardHandle:
    """A running emulated board: its process (group leader) id, its RPC port, its log file."""

    pid: int
    port: int
    log: Path
    key: str
    arch: str
    tracker: tuple[str, int]


def _tracker_has(tracker: tuple[str, int], key: str, port: int) -> bool:
    """True when the tracker lists a server ``key`` at ``port`` with a free slot under ``key``."""
    try:
        st = rpc.status(f"{tracker[0]}:{tracker[1]}")
    except MntvmError:
        return False
    listed = any(s["key"] == key and s["addr"].rsplit(":", 1)[1] == str(port) for s in st["servers"])
    return listed and st["keys"].get(key, {}).get("free", 0) > 0


def _log_tail(log: Path, n: int = 6) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def start(tracker_host: str, tracker_port: int, key: str, arch: str = "aarch64",
          port: int = 9090, cache=None, *, port_end: int | None = None, log=None,
          timeout: float = 180.0) -> BoardHandle:
    """Start an emulated ``arch`` board serving TVM RPC on 127.0.0.1, registered under ``key``.

    The server binds the first free port in ``[port, port_end)`` (default ``port + 100``).
    Returns once the tracker at ``(tracker_host, tracker_port)`` lists the board as free;
    raises :class:`MntvmError` (and kills the board) if that has not happened within ``timeout``
    seconds or the board exits.  The board runs in its own process group (see :func:`stop`).
    """
    arch, spec = board_spec(arch)
    root = prepare(arch, cache)
    port_end = port_end if port_end is not None else min(port + 100, 65536)
    if not 0 < port < port_end <= 65536:
        raise MntvmError(f"bad board port range [{port}, {port_end})")
    if not re.fullmatch(r"[A-Za-z0-9_.:\-]+", key):
        raise MntvmError(f"bad RPC key {key!r}: use letters, digits, '_', '-', '.', ':'")

    script = server_script(root)
    if log is None:
        logs = board_dir(arch, cache) / "logs"
        try:
            logs.mkdir(parents=True, exist_ok=True)
            if not os.access(logs, os.W_OK):
                raise PermissionError(logs)
        except OSError:  # a shared, root-prepared cache: log to the temp dir instead
            logs = Path(tempfile.gettempdir()) / f"mntvm-board-logs-{os.geteuid()}"
            logs.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log = logs / f"{key.replace(':', '_')}-{port}-{stamp}-{os.getpid()}.log"
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = board_command(root, spec, [script, "--tracker", f"{tracker_host}:{tracker_port}",
                                      "--key", key, "--host", "127.0.0.1", "--port", str(port),
                                      "--port-end", str(port_end)])
    with open(log, "w") as logf:
        logf.write(f"$ {' '.join(cmd)}\n")
        logf.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, env=board_env(),
                                start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc

    deadline = time.monotonic() + timeout
    bound = None
    try:
        while True:
            if proc.poll() is not None:
                raise MntvmError(f"emulated {arch} board exited with code {proc.returncode} "
                                 f"before registering (log {log}): {_log_tail(log)}")
            if bound is None:
                m = re.search(rf"^{_LISTEN_MARK} (\d+)$", log.read_text(errors="replace"), re.M)
                if m:
                    bound = int(m.group(1))
            if bound is not None and _tracker_has((tracker_host, tracker_port), key, bound):
                return BoardHandle(pid=proc.pid, port=bound, log=log, key=key, arch=arch,
                                   tracker=(tracker_host, tracker_port))
            if time.monotonic() > deadline:
                raise MntvmError(
                    f"emulated {arch} board did not register with tracker "
                    f"{tracker_host}:{tracker_port} under key {key!r} within {timeout:.0f} s "
                    f"(log {log}): {_log_tail(log)}")
            time.sleep(0.25)
    except BaseException:
        stop(proc.pid)
        raise


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


def is_running(handle_or_pid) -> bool:
    """True while the board's process (group) has a live member."""
    pid = handle_or_pid.pid if isinstance(handle_or_pid, BoardHandle) else int(handle_or_pid)
    proc = _CHILDREN.get(pid)
    if proc is not None:
        proc.poll()
    return _alive(pid) or bool(_group_members(pid))


def stop(handle_or_pid, timeout: float = 10.0) -> None:
    """Stop a board by handle or pid: SIGTERM then SIGKILL to its whole process group.

    ``pid`` must be a board's (process-group leader's) pid as returned by :func:`start`; a pid
    that is not a group leader gets the signals alone.  Stopping a board that is gone is a no-op.
    """
    pid = handle_or_pid.pid if isinstance(handle_or_pid, BoardHandle) else int(handle_or_pid)
    if pid <= 1 or pid == os.getpid():
        raise MntvmError(f"refusing to stop pid {pid}")
    proc = _CHILDREN.get(pid)
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        group = bool(_group_members(pid))  # leader gone (e.g. reaped) but members may remain

    def _signal(sig):
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _gone() -> bool:
        if proc is not None:
            proc.poll()
        return not _alive(pid) and not (group and _group_members(pid))

    _signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not _gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _gone():
        _signal(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not _gone() and time.monotonic() < deadline:
            time.sleep(0.1)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        _CHILDREN.pop(pid, None)
    if not _gone():
        raise MntvmError(f"board process {pid} survived SIGKILL")


def board_arch(remote) -> str:
    """The CPU architecture of a connected RPC session, canonical (:mod:`mntvm.core.arch`: ``aarch64``,
    ``x86_64``, ``armv7``).

    Uses the ``mntvm.board.arch`` function the emulated board registers; on a stock TVM server
    with the compiler library, falls back to ``target.llvm_get_system_triple``.
    """
    for name, parse in ((_ARCH_FUNC, str),
                        ("target.llvm_get_system_triple", lambda t: str(t).split("-", 1)[0])):
        try:
            func = remote.get_function(name)
        except Exception:  # pylint: disable=broad-except  # missing remote function
            continue
        if func is None:
            continue
        try:
            value = parse(func())
        except Exception:  # pylint: disable=broad-except
            continue
        if value:
            return archs.canonical(value)
    raise MntvmError("cannot tell the remote board's architecture: it has neither "
                     f"{_ARCH_FUNC} nor target.llvm_get_system_triple")


def board_cores(remote) -> int | None:
    """The CPU cores a connected RPC session's server may run on (``mntvm.board.cores``, which our
    servers and the emulated board register: its affinity mask), or None on a stock TVM server."""
    try:
        func = remote.get_function(_CORES_FUNC)
        return int(func()) if func is not None else None
    except Exception:  # pylint: disable=broad-except  # missing remote function
        return None
