"""Thin wrappers over TVM's own RPC tracker, server and tracker queries, with bounded waits.

The tracker and the server run TVM's loops in the ``mntvm rpc`` process itself (not in TVM's
popen-worker child), on a socket bound here first; session workers are forked with a parent-death
signal, so nothing outlives the process, and a crashed session does not unregister the server.

Everything binds 127.0.0.1 by default; binding another address warns that an RPC server runs
whatever code it is sent.

Public entry for the other stages: :func:`open_session` (a board for a key, within a deadline).
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from mntvm.core.errors import MntvmError, one_line
from mntvm.remote import vm_profile

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port), with a one-line error for anything else."""
    host, sep, port = (addr or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MntvmError(f"bad tracker address {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def warn_exposed(host: str, what: str) -> None:
    """Warn on stderr when a tracker or server (``what``) listens beyond loopback."""
    if host not in LOOPBACK:
        print(f"mntvm: warning: the {what} listens on {host}: an RPC server runs whatever code it is sent; "
              "expose it only on a network you trust", file=sys.stderr)


def bind_port(host: str, port: int, port_end: int) -> socket.socket:
    """A listening TCP socket on the first free port of ``[port, port_end)`` on ``host``.

    Bound here, before anything starts, so that a taken range is one line (MntvmError) rather
    than TVM's tracebacks; the socket is then handed to TVM's tracker or server loop.
    """
    why: list[str] = []
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (OSError, OverflowError) as e:
        why.append(getattr(e, "strerror", None) or str(e))
        family = None
    for p in range(port, port_end) if family is not None else ():
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TVM does: restart over TIME_WAIT
        try:
            sock.bind((host, p))
            sock.listen(16)
            return sock
        except (OSError, OverflowError) as e:
            sock.close()
            msg = getattr(e, "strerror", None) or str(e)
            if msg not in why:
                why.append(msg)
    raise MntvmError(f"no free port in [{port}, {port_end}) on {host}: "
                     f"{'; '.join(why) or 'the range is empty'}")


def _note_parent() -> None:
    global _FORK_PARENT
    _FORK_PARENT = os.getpid()


def _die_with_parent() -> None:
    """In a forked child: SIGKILL when the parent dies (Linux ``PR_SET_PDEATHSIG``), even by kill -9."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: no parent-death signal to ask for
        return
    if os.getppid() != _FORK_PARENT:  # the parent died before the prctl
        os._exit(1)


_PR_SET_PDEATHSIG = 1
_FORK_PARENT = os.getpid()


def _sessions_die_with_this_process() -> None:
    """Every child this process forks from now on (TVM's session workers) dies with it."""
    multiprocessing.set_start_method("fork", force=True)  # sessions are forks of the server, never execs
    os.register_at_fork(before=_note_parent, after_in_child=_die_with_parent)


def run_tracker(host: str = "127.0.0.1", port: int = 9190, port_end: int | None = None,
                silent: bool = False) -> None:
    """Run TVM's tracker (``tvm.rpc.tracker.TrackerServerHandler``) in this process, in the foreground.

    In this process, not in TVM's popen-worker child, so that nothing outlives it (kill -9, SIGTERM).
    """
    import asyncio
    import logging

    from tvm.rpc import base, tracker

    warn_exposed(host, "tracker")
    # 0.27's tracker searches [port, port_end) and finds nothing when port >= its default end 9199.
    end = port_end if port_end is not None else max(port + 10, 9199)
    sock = bind_port(host, port, end)
    if silent:
        tracker.logger.setLevel(logging.WARN)
    tracker.logger.info("bind to %s:%d", host, sock.getsockname()[1])
    asyncio.set_event_loop(asyncio.new_event_loop())
    tracker.TrackerServerHandler(sock, base.random_key("tracker")).run()


def server_init() -> None:
    """Registered in every server process we start: the functions ``mntvm bench`` asks a board for.

    ``mntvm.profile_vm`` (per-kernel timing, :mod:`mntvm.remote.vm_profile`), ``mntvm.board.arch``
    (``platform.machine()``, for the architecture check before upload) and ``mntvm.board.cores``
    (the cores the server process may run on, for the thread-count check). Sessions are forked
    from the server process, so they inherit them.
    """
    import platform

    import tvm_ffi

    vm_profile.register()
    tvm_ffi.register_global_func("mntvm.board.arch", platform.machine, override=True)
    tvm_ffi.register_global_func("mntvm.board.cores", lambda: len(os.sched_getaffinity(0)), override=True)


def run_server(tracker: str, key: str, host: str = "127.0.0.1", port: int = 9090,
               port_end: int | None = None, silent: bool = False) -> None:
    """Run TVM's RPC server loop in this process, in the foreground, registered with ``tracker``
    under ``key``; each session is a forked child that dies with this process.

    TVM's loop (``tvm.rpc.server._listen_loop``, as in ``tvm.rpc.Server``'s worker) ends with an
    error, and drops its tracker registration, when a session worker dies (a crash, a kill);
    this loop then registers again, so the board stays available without a restart.
    """
    import logging

    from tvm.rpc import server as tvm_server

    if not key:
        raise MntvmError("an RPC server needs --key (the board type the tracker hands out)")
    thost, tport = parse_addr(tracker)
    warn_exposed(host, "RPC server")
    sock = bind_port(host, port, port_end if port_end is not None else max(port + 10, 9199))
    bound = sock.getsockname()[1]
    if silent:
        tvm_server.logger.setLevel(logging.ERROR)
    tvm_server.logger.info("bind to %s:%d", host, bound)
    server_init()
    _sessions_die_with_this_process()
    print(f"mntvm: RPC server on {host}:{bound} registered with {tracker} as '{key}'",
          file=sys.stderr, flush=True)
    cwd = os.getcwd()
    delay = 1.0
    while True:
        started = time.monotonic()
        try:
            tvm_server._listen_loop(sock, bound, key, (thost, tport), None, None)  # noqa: SLF001
            why = "the serving loop returned"
        except Exception as e:  # noqa: BLE001 - a failed session or tracker link: register again
            why = one_line(e)
        os.chdir(cwd)  # the failed session left us in its (removed) work folder
        delay = 1.0 if time.monotonic() - started > 60 else delay
        print(f"mntvm: RPC server on {host}:{bound}: {why}; registering with {tracker} again "
              f"in {delay:g}s", file=sys.stderr, flush=True)
        time.sleep(delay)
        delay = min(delay * 2, 30.0)


def bounded(fn: Callable, timeout: float, on_timeout: str):
    """``fn()`` in a daemon thread; MntvmError(on_timeout) if it has not returned within ``timeout``.

    For calls that can block forever on a peer that accepted the connection but never answers
    (a stopped tracker or board). The thread is left behind, blocked; it holds no lock of ours.
    """
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise MntvmError(on_timeout)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _tracker(addr: str, timeout: float = 5.0):
    """A TrackerSession, after checking within ``timeout`` that something listens there."""
    from tvm import rpc

    host, port = parse_addr(addr)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise MntvmError(f"cannot reach the RPC tracker at {addr}: {e.strerror or e}") from None
    try:
        return bounded(lambda: rpc.connect_tracker(host, port), timeout,
                       f"the RPC tracker at {addr} accepted the connection but did not answer "
                       f"within {timeout:g}s")
    except (RuntimeError, OSError, ValueError) as e:
        raise MntvmError(f"{addr} is not a TVM RPC tracker: {e}") from None


def status(tracker: str, timeout: float = 5.0) -> dict:
    """Keys registered with the tracker: total, free and pending counts, and the servers' addresses."""
    t = _tracker(tracker, timeout)
    try:
        summary = bounded(t.summary, timeout, f"the RPC tracker at {tracker} did not answer a status "
                                              f"query within {timeout:g}s")
    except (RuntimeError, OSError, ValueError) as e:
        raise MntvmError(f"the RPC tracker at {tracker} failed a status query: {e}") from None
    finally:
        t.close()
    keys: dict[str, dict] = {}
    servers = []
    for item in summary.get("server_info", []):
        key = item["key"].split(":", 1)[1] if ":" in item["key"] else item["key"]
        addr = item["addr"]
        servers.append({"key": key, "addr": f"{addr[0]}:{addr[1]}"})
        keys.setdefault(key, {"total": 0, "free": 0, "pending": 0})["total"] += 1
    for key, q in summary.get("queue_info", {}).items():
        k = keys.setdefault(key, {"total": 0, "free": 0, "pending": 0})
        k["free"], k["pending"] = q["free"], q["pending"]
    return {"tracker": tracker, "keys": keys, "servers": servers}


def format_status(s: dict) -> str:
    rows = [f"tracker {s['tracker']}", f"{'key':<20} {'total':>5} {'free':>5} {'pending':>7}"]
    for key, k in sorted(s["keys"].items()):
        rows.append(f"{key:<20} {k['total']:>5} {k['free']:>5} {k['pending']:>7}")
    if not s["keys"]:
        rows.append("(no boards registered)")
    return "\n".join(rows)


@dataclass
class Session:
    """An RPC session to one board, with the board's address as handed out by the tracker."""

    remote: object
    board: str
    key: str

    def __getattr__(self, name):
        return getattr(self.remote, name)


def open_session(tracker: str, key: str | None, wait_s: float = 60.0, session_timeout: float = 0) -> Session:
    """Ask the tracker for a free board under ``key``; error if none is handed out within ``wait_s``."""
    from tvm import rpc

    if not key:
        raise MntvmError("--key is required with --tracker (the board type registered with the tracker)")
    known = status(tracker)["keys"]
    if key not in known or known[key]["total"] == 0:
        names = ", ".join(sorted(k for k, v in known.items() if v["total"])) or "none"
        raise MntvmError(f"no board is registered under key '{key}' at tracker {tracker} (keys: {names})")
    t = _tracker(tracker)

    box: dict = {}

    def ask():
        try:
            from tvm.rpc import base

            base.sendjson(t._sock, [base.TrackerCode.REQUEST, key, "", 1])
            value = base.recvjson(t._sock)
            if value[0] != base.TrackerCode.SUCCESS:
                raise RuntimeError(f"tracker answered {value}")
            url, port, matchkey = value[1]
            box["board"] = f"{url}:{port}"
            box["remote"] = rpc.connect(url, port, matchkey, session_timeout)
        except BaseException as e:  # noqa: BLE001 - reported below
            box["error"] = e

    th = threading.Thread(target=ask, daemon=True)
    th.start()
    th.join(wait_s)
    if th.is_alive():
        t.close()  # the tracker drops our pending request when the connection goes
        busy = known[key]["total"] - known[key]["free"]
        raise MntvmError(f"no free board under key '{key}' within {wait_s:g}s (tracker {tracker}: "
                         f"{known[key]['total']} registered, {busy} busy in other sessions)")
    t.close()
    if "error" in box:
        raise MntvmError(f"could not open a session on a '{key}' board: {one_line(box['error'])}")
    return Session(box["remote"], box["board"], key)


_LOST_CONNECTION = ("kshutdown", "socket", "connection", "closed", "broken pipe", "reset by peer",
                    "rpcsessiontimeout", "eof", "errno 32", "errno 104")


class RemoteWorker:
    """Runs every call on one RPC session in a single daemon thread, each with a deadline.

    A board that dies shows up as an RPC error; a board that hangs (stopped process, lost network)
    never answers, and TVM's client has no timeout of its own: :meth:`call` then gives up after
    ``timeout`` seconds. The remote objects live in :attr:`state` (filled by the calls), owned by
    the worker, so that nothing frees them (a round trip) from the caller's thread while the board
    is unresponsive.
    """

    def __init__(self, board: str):
        self.board = board
        self.state: dict = {}
        self.failed: str | None = None
        self._jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name=f"mntvm-rpc-{board}").start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self._jobs.get()
            try:
                box["value"] = fn(self.state)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box["error"] = e
            done.set()
            del fn, box, done

    def call(self, fn: Callable[[dict], object], timeout: float, what: str):
        """``fn(state)`` on the worker; MntvmError if it fails or takes longer than ``timeout`` s."""
        if self.failed:
            raise MntvmError(self.failed)
        box: dict = {}
        done = threading.Event()
        self._jobs.put((fn, box, done))
        if not done.wait(timeout):
            self.failed = (f"board {self.board} stopped answering during the benchmark "
                           f"(no reply to {what} within {timeout:.0f}s)")
            raise MntvmError(self.failed)
        if "error" in box:
            e = box["error"]
            if isinstance(e, MntvmError):
                raise e
            msg = one_line(e)
            if any(m in str(e).lower() for m in _LOST_CONNECTION):
                self.failed = f"board {self.board} stopped answering during the benchmark ({what}: {msg})"
            else:
                self.failed = f"{what} failed on board {self.board}: {msg}"
            raise MntvmError(self.failed) from None
        return box["value"]

    def close(self, timeout: float = 10.0) -> None:
        """Free the remote objects and the session (on the worker), unless the board already failed."""
        if self.failed:
            return
        try:
            self.call(lambda st: st.clear(), timeout, "closing the session")
        except MntvmError:
            pass
