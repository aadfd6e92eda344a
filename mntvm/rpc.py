"""Thin wrappers over TVM's own RPC tracker, server and tracker queries, with bounded waits.

Everything binds 127.0.0.1 by default; binding another address warns that an RPC server runs
whatever code it is sent.

Public entry for the other stages: :func:`open_session` (a board for a key, within a deadline).
"""
from __future__ import annotations

import argparse
import socket
import sys
import threading
from dataclasses import dataclass

from .errors import MntvmError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port), with a one-line error for anything else."""
    host, sep, port = (addr or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MntvmError(f"bad tracker address {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def _warn_exposed(host: str, what: str) -> None:
    if host not in LOOPBACK:
        print(f"mntvm: warning: the {what} listens on {host}: an RPC server runs whatever code it is sent; "
              "expose it only on a network you trust", file=sys.stderr)


def run_tracker(host: str = "127.0.0.1", port: int = 9190, port_end: int | None = None,
                silent: bool = False) -> None:
    """Run TVM's tracker in the foreground (``tvm.exec.rpc_tracker``)."""
    from tvm.exec import rpc_tracker

    _warn_exposed(host, "tracker")
    # 0.27's tracker searches [port, port_end) and finds nothing when port >= its default end 9199.
    end = port_end if port_end is not None else max(port + 10, 9199)
    rpc_tracker.main(argparse.Namespace(host=host, port=port, port_end=end, silent=silent))


def run_server(tracker: str, key: str, host: str = "127.0.0.1", port: int = 9090,
               port_end: int | None = None, silent: bool = False) -> None:
    """Run TVM's RPC server in the foreground, registered with ``tracker`` under ``key``."""
    from tvm.exec import rpc_server

    if not key:
        raise MntvmError("an RPC server needs --key (the board type the tracker hands out)")
    parse_addr(tracker)
    _warn_exposed(host, "RPC server")
    rpc_server.main(argparse.Namespace(
        host=host, port=port, port_end=port_end if port_end is not None else max(port + 10, 9199),
        through_proxy=False, tracker=tracker, key=key, load_library=None, custom_addr=None,
        silent=silent, fork=True))


def _tracker(addr: str, timeout: float = 5.0):
    """A TrackerSession, after checking within ``timeout`` that something listens there."""
    from tvm import rpc

    host, port = parse_addr(addr)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise MntvmError(f"cannot reach the RPC tracker at {addr}: {e.strerror or e}") from None
    try:
        return rpc.connect_tracker(host, port)
    except (RuntimeError, OSError) as e:
        raise MntvmError(f"{addr} is not a TVM RPC tracker: {e}") from None


def status(tracker: str) -> dict:
    """Keys registered with the tracker: total, free and pending counts, and the servers' addresses."""
    t = _tracker(tracker)
    try:
        summary = t.summary()
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
    t = _tracker(tracker)
    known = status(tracker)["keys"]
    if key not in known or known[key]["total"] == 0:
        t.close()
        names = ", ".join(sorted(k for k, v in known.items() if v["total"])) or "none"
        raise MntvmError(f"no board is registered under key '{key}' at tracker {tracker} (keys: {names})")

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
        raise MntvmError(f"no free board under key '{key}' within {wait_s:g}s (tracker {tracker})")
    t.close()
    if "error" in box:
        raise MntvmError(f"could not open a session on a '{key}' board: {box['error']}")
    return Session(box["remote"], box["board"], key)
