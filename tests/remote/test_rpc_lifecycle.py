"""`mntvm rpc tracker|server` as processes (issue 17): nothing they start outlives them, a crashed
session does not leave the server unregistered, and a taken port is one line. All on loopback;
every process started here is stopped by its PID (process group)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from rpc_fixtures import ROOT, Server, Tracker, free_port, listen_inode, socket_open, stop_group, wait_for

from mntvm.remote import rpc
from mntvm.remote.board import board_arch


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid}: {' '.join(p.cmdline())[:80]}")
        except psutil.Error:
            continue
    return out



def _assert_all_gone(procs: list[psutil.Process], inode: str, what: str) -> None:
    """``procs`` are gone and the socket ``inode`` that listened for them is closed (no child holds it)."""
    deadline = time.monotonic() + 5
    while (_alive(procs) or socket_open(inode)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(procs), f"{what}: children outlived it: {_alive(procs)}"
    assert not socket_open(inode), f"{what}: its listening socket is still open"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_tracker_leaves_nothing_behind(sig):
    t = Tracker()
    try:
        kids = psutil.Process(t.proc.pid).children(recursive=True)
        inode = listen_inode(t.port)
        os.kill(t.proc.pid, sig)
        t.proc.wait(10)
        _assert_all_gone(kids, inode, f"tracker after {sig.name}")
    finally:
        t.stop()


def test_server_and_its_session_die_with_it_on_kill_9(tracker):
    s = Server(tracker, "mntvm-test-kill9")
    try:
        sess = rpc.open_session(tracker.addr, s.key, wait_s=20)  # a session worker exists now
        kids = psutil.Process(s.proc.pid).children(recursive=True)
        assert kids, "a session is open: the server must have a child serving it"
        inode = listen_inode(s.port)
        os.kill(s.proc.pid, signal.SIGKILL)
        s.proc.wait(10)
        _assert_all_gone(kids, inode, "RPC server after kill -9")
        del sess
    finally:
        s.stop()


def test_server_registers_again_after_its_session_worker_dies(tracker):
    s = Server(tracker, "mntvm-test-crash")
    try:
        before = {p.pid for p in psutil.Process(s.proc.pid).children(recursive=True)}
        sess = rpc.open_session(tracker.addr, s.key, wait_s=20)
        assert board_arch(sess.remote) == "x86_64"
        workers = [p for p in psutil.Process(s.proc.pid).children(recursive=True) if p.pid not in before]
        assert len(workers) == 1, workers
        workers[0].kill()  # the session crashes (as a segfaulting model.so would)
        del sess
        wait_for(lambda: rpc.status(tracker.addr)["keys"][s.key] == {"total": 1, "free": 1, "pending": 0},
                 10, "the server registered again after its session worker died")
        again = rpc.open_session(tracker.addr, s.key, wait_s=10)
        assert board_arch(again.remote) == "x86_64"
        assert again.board == f"127.0.0.1:{s.port}"
        del again
        assert s.proc.poll() is None
    finally:
        s.stop()


@pytest.mark.parametrize("kind", ["tracker", "server"])
def test_taken_port_is_one_line(kind):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        extra = ["--tracker", f"127.0.0.1:{free_port()}", "--key", "k"] if kind == "server" else []
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        p = subprocess.Popen([sys.executable, "-m", "mntvm.cli", "rpc", kind, *extra, "--port", str(port),
                              "--port-end", str(port + 1)], env=env, start_new_session=True, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=60)
        finally:
            stop_group(p)
    assert p.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mntvm: error: no free port in [{port}, {port + 1}) on 127.0.0.1: "), err
    assert "in use" in lines[0]
    assert "Traceback" not in err and out == ""
