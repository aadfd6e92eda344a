"""Loopback RPC helpers for the tests: a tracker and x86 servers as subprocesses, stopped by PID.

Everything listens on 127.0.0.1; every process is started in its own session (process group), so
stopping it by its PID also reaches the children TVM's server forks.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port``."""
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


def _tcp_rows() -> list[list[str]]:
    """The rows of /proc/net/tcp and tcp6, split: [sl, local, remote, state, ..., inode, ...]."""
    rows = []
    for name in ("tcp", "tcp6"):
        try:
            rows += [line.split() for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]]
        except OSError:
            continue
    return rows


def listen_inode(port: int) -> str:
    """The inode of the one socket listening on ``port`` (state 0A: LISTEN), any local address."""
    rows = [r for r in _tcp_rows() if r[3] == "0A" and r[1].rsplit(":", 1)[1] == f"{port:04X}"]
    assert len(rows) == 1, rows
    return rows[0][9]


def socket_open(inode: str) -> bool:
    """Whether the TCP socket ``inode`` (:func:`listen_inode`) is still open in some process. Asked of the
    kernel, not by connecting to its port: under pytest-xdist another test may bind a freed port at
    once, and a connect to a free ephemeral port on loopback can connect to itself."""
    return any(r[9] == inode for r in _tcp_rows())


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def cli_popen(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mntvm.cli", *args], env=_env(),
                            start_new_session=True, **kw)


def stop_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGCONT + SIGTERM, then SIGKILL, to ``proc``'s process group (by its PID); reaps it."""
    for sig in (signal.SIGCONT, signal.SIGTERM):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # TVM's server leaves forked children behind
    except ProcessLookupError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def tracker_status(addr: str) -> dict:
    from mntvm.remote import rpc

    return rpc.status(addr)


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, poll=0.2):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise AssertionError(f"{what}: process exited with {proc.returncode}: {out[-800:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(poll)


class Tracker:
    """``mntvm rpc tracker`` on a free loopback port."""

    def __init__(self):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.proc = cli_popen("rpc", "tracker", "--port", str(self.port), "--port-end", str(self.port + 1),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: tracker_status(self.addr) is not None, 60, "RPC tracker", self.proc)
        except BaseException:
            stop_group(self.proc)
            raise

    def stop(self):
        stop_group(self.proc)


class Server:
    """``mntvm rpc server`` (TVM's server, x86) on a free loopback port, registered under ``key``."""

    def __init__(self, tracker: Tracker, key: str):
        self.key = key
        self.port = free_port()
        self.proc = cli_popen("rpc", "server", "--tracker", tracker.addr, "--key", key,
                              "--port", str(self.port), "--port-end", str(self.port + 1),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: tracker_status(tracker.addr)["keys"].get(key, {}).get("free") == 1, 60,
                     f"RPC server '{key}'", self.proc)
        except BaseException:
            stop_group(self.proc)
            raise

    def stop(self):
        stop_group(self.proc)


def bench_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"--json must print exactly one line, got {stdout!r}"
    return json.loads(lines[0])
