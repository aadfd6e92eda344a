"""Thin wrappers over TVM's own RPC tracker, server and tracker queries, with bounded waits.

Everything binds 127.0.0.1 by default; binding another address warns that an RPC server runs
whatever code it is sent.

Public entry for the other stages: :func:`open_session` (a board for a key, within a deadline).
"""
from __future__ import annotations

import argparse
import queue
import socket
import sys
import threading
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


def run_tracker(host: str = "127.0.0.1", port: int = 9190, port_end: int | None = None,
                silent: bool = False) -> None:
    """Run TVM's tracker in the foreground (``tvm.exec.rpc_tracker``)."""
    from tvm.exec import rpc_tracker

    warn_exposed(host, "tracker")
    # 0.27's tracker searches [port, port_end) and finds nothing when port >= its default end 9199.
    end = port_end if port_end is not None else max(port + 10, 9199)
    rpc_tracker.main(argparse.Namespace(host=host, port=port, port_end=end, silent=silent))


def server_init() -> None:
    """Registered in every server process we start: the functions ``mntvm bench`` asks a board for.

    ``mntvm.profile_vm`` (per-kernel timing, :mod:`mntvm.remote.vm_profile`) and ``mntvm.board.arch``
    (``platform.machine()``, for the architecture check before upload). Sessions are forked from
    the server process, so they inherit both.
    """
    import platform

    import tvm_ffi

    vm_profile.register()
    tvm_ffi.register_global_func("mntvm.board.arch", platform.machine, override=True)


def run_server(tracker: str, key: str, host: str = "127.0.0.1", port: int = 9090,
               port_end: int | None = None, silent: bool = False) -> None:
    """Run TVM's RPC server (``tvm.rpc.Server``, as ``tvm.exec.rpc_server`` does) in the foreground,
    registered with ``tracker`` under ``key``; each session is a forked child of the server."""
    from tvm import rpc

    if not key:
        raise MntvmError("an RPC server needs --key (the board type the tracker hands out)")
    thost, tport = parse_addr(tracker)
    warn_exposed(host, "RPC server")
    server = rpc.Server(host, port, port_end if port_end is not None else max(port + 10, 9199),
                        key=key, tracker_addr=(thost, tport), silent=silent,
                        server_init_callback=server_init)
    print(f"mntvm: RPC server on {host}:{server.port} registered with {tracker} as '{key}'",
          file=sys.stderr, flush=True)
    server.proc.join()


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
