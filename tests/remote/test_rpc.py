"""`mntvm rpc` over TVM's own tracker and server, on loopback: status, and the session faults
(tracker unreachable or not answering, no free board within --wait), each a one-line error in
bounded time."""
from __future__ import annotations

import json
import socket
import time

import pytest
from conftest import run_cli
from rpc_fixtures import Server, free_port

from mntvm import MntvmError
from mntvm.remote import rpc


@pytest.fixture(scope="module")
def server(tracker):
    s = Server(tracker, "mntvm-test-x86-rpc")
    yield s
    s.stop()


def test_status_json_lists_the_key_with_counts(tracker, server):
    p = run_cli("rpc", "status", "--tracker", tracker.addr, "--json", timeout=60)
    s = json.loads(p.stdout)
    assert s["tracker"] == tracker.addr
    assert s["keys"][server.key] == {"total": 1, "free": 1, "pending": 0}
    assert {"key": server.key, "addr": f"127.0.0.1:{server.port}"} in s["servers"]
    text = run_cli("rpc", "status", "--tracker", tracker.addr, timeout=60).stdout
    assert server.key in text and "free" in text


def test_session_gets_the_board_and_its_arch(tracker, server):
    from mntvm.remote.board import board_arch

    sess = rpc.open_session(tracker.addr, server.key, wait_s=20)
    try:
        assert sess.board == f"127.0.0.1:{server.port}"
        assert board_arch(sess.remote) == "x86_64"
        assert sess.remote.get_function("mntvm.profile_vm") is not None  # registered by `mntvm rpc server`
        assert rpc.status(tracker.addr)["keys"][server.key]["free"] == 0
    finally:
        del sess


def test_tracker_unreachable_is_a_prompt_error():
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    p = run_cli("rpc", "status", "--tracker", dead, check=False, timeout=60)
    assert p.returncode == 2
    assert f"cannot reach the RPC tracker at {dead}" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    with pytest.raises(MntvmError, match="cannot reach the RPC tracker"):
        rpc.open_session(dead, "anything", wait_s=5)
    assert time.monotonic() - t0 < 20


def test_tracker_that_never_answers_is_bounded():
    # accepts connections (the kernel's backlog) but never speaks: like a stopped tracker
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        addr = f"127.0.0.1:{s.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(MntvmError, match="did not answer"):
            rpc.status(addr, timeout=2)
        assert time.monotonic() - t0 < 10


def test_unknown_key_is_named(tracker, server):
    with pytest.raises(MntvmError, match=rf"no board is registered under key 'nope'.*{server.key}"):
        rpc.open_session(tracker.addr, "nope", wait_s=5)


def test_no_free_board_within_wait(tracker, server, tmp_path):
    # the only board is busy in another session: the bench must give up after --wait
    held = rpc.open_session(tracker.addr, server.key, wait_s=20)
    try:
        art = tmp_path / "never-opened"  # the session is asked for before the artifact is used
        from mntvm.compile.build import compile_model
        from mntvm.model.network import MobileNetConfig

        compile_model(MobileNetConfig(alpha=0.25, resolution=64), art, target="x86")
        t0 = time.monotonic()
        p = run_cli("bench", str(art), "--tracker", tracker.addr, "--key", server.key, "--wait", "3",
                    "--json", check=False, timeout=120)
        elapsed = time.monotonic() - t0
        assert p.returncode == 2, p.stderr
        assert f"no free board under key '{server.key}' within 3s" in p.stderr
        assert "1 registered, 1 busy" in p.stderr
        assert p.stdout == ""
        assert 3 <= elapsed < 20, elapsed
    finally:
        del held
    # and once the other session is gone the board is free again
    deadline = time.monotonic() + 20
    while rpc.status(tracker.addr)["keys"][server.key]["free"] != 1:
        assert time.monotonic() < deadline, "board not handed back after the session closed"
        time.sleep(0.2)


def test_binding_elsewhere_warns(capsys):
    rpc.warn_exposed("0.0.0.0", "RPC server")
    assert "runs whatever code it is sent" in capsys.readouterr().err
    rpc.warn_exposed("127.0.0.1", "RPC server")
    assert capsys.readouterr().err == ""


def test_bad_tracker_address():
    with pytest.raises(MntvmError, match="bad tracker address"):
        rpc.parse_addr("localhost")
