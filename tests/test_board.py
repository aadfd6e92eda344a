"""The emulated aarch64 board: prepare, start under a tracker, run cross-compiled code, stop.

Needs the host packages in ``mntvm.board.APT_PACKAGES`` (debootstrap, qemu-user-static,
g++-aarch64-linux-gnu), root for the first ``prepare`` and network to the Debian mirror and PyPI.
Missing tools are a failure, not a skip.  First run ~1 min (downloads), later runs ~15 s.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mntvm import MntvmError, board

ARCH = "aarch64"
CXX = "aarch64-linux-gnu-g++"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require_host_tools():
    missing = [t for t in ("debootstrap", "qemu-aarch64-static", CXX)
               if not (shutil.which(t) or shutil.which(t, path="/usr/sbin:/sbin"))]
    if missing:
        pytest.fail(f"missing {missing}: apt-get install {' '.join(board.APT_PACKAGES)}")


@pytest.fixture(scope="module")
def sysroot():
    _require_host_tools()
    return board.prepare(ARCH)


@pytest.fixture(scope="module")
def tracker():
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
         "--port", str(port), "--port-end", str(port + 10)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    from tvm import rpc

    deadline = time.monotonic() + 60
    while True:
        try:  # a plain connect first: connect_tracker itself sleeps 5 s between retries
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            rpc.connect_tracker("127.0.0.1", port).summary()
            break
        except Exception:  # pylint: disable=broad-except  # not up yet
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else ""
                proc.kill()
                pytest.fail(f"RPC tracker did not come up on port {port}: {out[-500:]}")
            time.sleep(0.2)
    yield ("127.0.0.1", port)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tiny_add_lib(tmp_path):
    """A 1-D float32 add, compiled for aarch64 and cross-linked; returns (path, n)."""
    import tvm
    from tvm import te
    from tvm.support import cc

    n = 37
    a = te.placeholder((n,), "float32", name="a")
    b = te.placeholder((n,), "float32", name="b")
    c = te.compute((n,), lambda i: a[i] * 2.0 + b[i], name="c")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "axpb")
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    ex = tvm.compile(tvm.IRModule({"axpb": func}), target=target)
    path = tmp_path / "axpb_aarch64.so"
    ex.export_library(str(path), fcompile=cc.cross_compiler(CXX))
    return path, n


def _tiny_relax_lib(tmp_path):
    """A tiny Relax model relu(x @ w) for aarch64, cross-linked; returns its path."""
    import tvm
    from tvm import relax
    from tvm.support import cc

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    w = relax.Var("w", relax.TensorType((8, 3), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit(relax.op.nn.relu(relax.op.matmul(x, w))))
        bb.emit_func_output(y)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    ex = tvm.compile(bb.get(), target=target)
    path = tmp_path / "tiny_relax_aarch64.so"
    ex.export_library(str(path), fcompile=cc.cross_compiler(CXX))
    return path


def test_prepare_is_cached(sysroot):
    t0 = time.monotonic()
    again = board.prepare(ARCH)
    assert again == sysroot
    assert time.monotonic() - t0 < 2.0
    assert (sysroot / "opt" / "tvm" / "tvm" / "lib" / "libtvm_runtime.so").is_file()
    assert not list((sysroot / "opt" / "tvm" / "tvm" / "lib").glob("libtvm_compiler*"))
    assert (sysroot / "usr" / "bin" / "python3").exists()


def test_unknown_arch_is_refused():
    with pytest.raises(MntvmError, match="no emulated board"):
        board.prepare("riscv128")


def test_board_runs_cross_compiled_code(sysroot, tracker, tmp_path):
    import tvm
    from tvm import relax, rpc

    lib, n = _tiny_add_lib(tmp_path)
    rlib = _tiny_relax_lib(tmp_path)
    key = f"mntvm-test-{ARCH}-{_free_port()}"
    t0 = time.monotonic()
    handle = board.start(*tracker, key=key, arch=ARCH, port=_free_port())
    started = time.monotonic() - t0
    try:
        assert board.is_running(handle)
        assert handle.log.is_file()
        # the board listens on loopback only
        with socket.create_connection(("127.0.0.1", handle.port), timeout=5):
            pass

        remote = rpc.connect_tracker(*tracker).request(key, priority=1, session_timeout=120)
        assert board_arch_ok(remote)

        t1 = time.monotonic()
        remote.upload(str(lib))
        mod = remote.load_module(lib.name)
        dev = remote.cpu()
        rng = np.random.default_rng(0)
        a_np = rng.standard_normal(n).astype("float32")
        b_np = rng.standard_normal(n).astype("float32")
        a = tvm.runtime.tensor(a_np, dev)
        b = tvm.runtime.tensor(b_np, dev)
        c = tvm.runtime.tensor(np.zeros(n, "float32"), dev)
        mod["axpb"](a, b, c)
        np.testing.assert_allclose(c.numpy(), a_np * 2.0 + b_np, rtol=1e-6, atol=1e-6)

        # a Relax executable through the VM, as the bench stage runs models
        remote.upload(str(rlib))
        vm = relax.VirtualMachine(remote.load_module(rlib.name), dev)
        x_np = rng.standard_normal((4, 8)).astype("float32")
        w_np = rng.standard_normal((8, 3)).astype("float32")
        args = (tvm.runtime.tensor(x_np, dev), tvm.runtime.tensor(w_np, dev))
        np.testing.assert_allclose(vm["main"](*args).numpy(), np.maximum(x_np @ w_np, 0),
                                   rtol=1e-5, atol=1e-5)
        assert vm.time_evaluator("main", dev, number=2, repeat=2)(*args).mean > 0
        ran = time.monotonic() - t1
        print(f"board start {started:.1f} s, tiny uploads+runs {ran:.2f} s")
        del mod, a, b, c, vm, args, remote
    finally:
        board.stop(handle.pid)
    assert not board.is_running(handle.pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", handle.port), timeout=2).close()
    board.stop(handle)  # stopping a stopped board is a no-op


def board_arch_ok(remote) -> bool:
    arch = board.board_arch(remote)
    assert arch == ARCH, arch
    return True


def test_start_fails_loudly_without_tracker(sysroot):
    dead = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(MntvmError, match="did not register"):
        board.start("127.0.0.1", dead, key="nobody", arch=ARCH, port=_free_port(), timeout=8)
    assert time.monotonic() - t0 < 30
