"""The emulated aarch64 board: prepare, start under a tracker, run cross-compiled code, stop; and
the whole MobileNetV1 (α 0.25 / 96) through our ARM templates, at default and at randomly sampled
knobs, run on the board and compared with ONNX Runtime; a tiny tuning run measured on the board
through the tracker (issue #5).

Needs the host packages in ``mntvm.remote.board.APT_PACKAGES`` (debootstrap, qemu-user-static,
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
from rpc_fixtures import listen_inode, socket_open, stop_group

from mntvm import MntvmError
from mntvm.remote import board

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
    stop_group(proc)  # the whole group: TVM's tracker runs in a popen worker child


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
    # the board's TVM, TVM-FFI and ml_dtypes are the host's (pyproject's pins), not the newest: ml_dtypes
    # 0.7.0 took 18 s to import under qemu
    from importlib.metadata import version

    for dist in ("apache_tvm", "apache_tvm_ffi", "ml_dtypes"):
        assert (sysroot / "opt" / "tvm" / f"{dist}-{version(dist)}.dist-info").is_dir(), dist


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
        inode = listen_inode(handle.port)

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
    # its listening socket is closed: no process (an escaped child included) holds it
    assert not socket_open(inode)
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


# ----------------------------------------------------------------------------------------------
# issue #5: the whole MobileNetV1 through our ARM (NEON) templates, run on the emulated board and
# compared with ONNX Runtime, at the templates' default knobs and at randomly sampled knobs.

A64_PROFILE = "rpi4-aarch64"
KNOB_SEED = 1000  # task i (sorted by name) samples its knobs with seed KNOB_SEED + i
TOL = 1e-5


@pytest.fixture(scope="module")
def mobilenet_ref():
    """α 0.25 / 96 MobileNetV1, its (seeded random) weights, the documented deterministic input,
    and ONNX Runtime's softmax output for them on our ONNX export (the independent reference)."""
    from conftest import ort_run
    from mntvm.model import weights as W
    from mntvm.compile.artifact import deterministic_input
    from mntvm.export.onnx import build_onnx
    from mntvm.model.network import MobileNetConfig

    cfg = MobileNetConfig(alpha=0.25, resolution=96)
    w = W.random_weights(cfg, 0)
    x = deterministic_input(cfg.input_shape, 0)
    return cfg, w, x, ort_run(build_onnx(cfg, w), x)


@pytest.fixture(scope="module")
def a64_board(sysroot, tracker):
    """One emulated aarch64 board for the MobileNet tests below; yields (tracker, key)."""
    key = f"mntvm-test-{ARCH}-net-{_free_port()}"
    handle = board.start(*tracker, key=key, arch=ARCH, port=_free_port())
    try:
        yield tracker, key
    finally:
        board.stop(handle)


def _run_on_board(a64_board, art_dir, x):
    """Upload ``art_dir``'s model.so to the board (under a unique name), run ``main(x)`` in the
    Relax VM there and return the output; the session is closed before returning."""
    import tvm
    from tvm import relax, rpc

    from mntvm.compile.artifact import load_artifact

    (host, port), key = a64_board
    art = load_artifact(art_dir)
    remote = rpc.connect_tracker(host, port).request(key, priority=1, session_timeout=300)
    try:
        assert board_arch_ok(remote)
        name = f"{art_dir.name}-{_free_port()}.so"
        remote.upload(str(art.lib_path), target=name)
        dev = remote.cpu()
        vm = relax.VirtualMachine(remote.load_module(name), dev)
        out = vm["main"](tvm.runtime.tensor(x, dev)).numpy()
        del vm, dev
    finally:
        del remote
    return out


def _decisions(trace) -> list:
    """The sampled knob values of a trace, in instruction order."""
    out = []
    for inst in trace.insts:
        if inst in trace.decisions:
            d = trace.decisions[inst]
            out.append([int(v) for v in d] if inst.kind.name == "SamplePerfectTile" else int(d))
    return out


def _random_knob_db(cfg, w, profile, path, seed):
    """A schedules database (the folder ``mntvm tune`` writes) holding, for every tunable task of
    the lowered network, one record whose knobs are drawn at random from the template's space.

    Each record's trace is made as MetaSchedule's ApplyCustomRule makes one: a traced
    ``Schedule(workload, seed)`` handed to the registered rule ``s_tir.meta_schedule.cpu.<rule>``
    with no decisions, so every ``sample_perfect_tile``/``sample_categorical`` draws. (Not through
    ``TuneContext``/``generate_design_space``: building a TuneContext imports
    ``tvm.s_tir.tensor_intrin``, 17-70 s here.) Returns ``{task: (random knobs, default knobs,
    random TIR differs from default TIR)}``.
    """
    import json

    import tvm
    import tvm_ffi
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from mntvm.templates.defaults import knob_schedule
    from mntvm.templates.lowering import lower
    from mntvm.templates.registry import all_blocks, rule_of, tunable_tasks
    from mntvm.tuning.database import META, task_mod

    target = profile.tvm_target()
    tasks = tunable_tasks(lower(cfg, w, profile))
    path.mkdir(parents=True)
    (path / META).write_text(json.dumps({
        "format": 1, "target": profile.to_metadata(), "tvm_version": tvm.__version__,
        "trials": {name: 1 for name in tasks}, "note": f"random knobs, seed {seed}"}))
    db = ms.database.JSONDatabase(work_dir=str(path))
    report = {}
    for i, (name, func) in enumerate(sorted(tasks.items())):
        wl = task_mod(func)  # the workload exactly as compile's MetaScheduleApplyDatabase keys it
        rand = s_tir.Schedule(wl, seed=seed + i)
        rules = [(b.name_hint, rule_of(b)) for b in all_blocks(wl["main"]) if rule_of(b)]
        assert rules, name
        for block, rule in rules:
            tvm.get_global_func(f"s_tir.meta_schedule.cpu.{rule}")(rand, rand.get_sblock(block))
        # what apply_default_schedules does, less the knob values it records on the root block (a
        # record made as ApplyCustomRule makes one has none)
        dflt, _ = knob_schedule(wl, target, None, vector_bits=profile.vector_bits)
        db.commit_tuning_record(ms.database.TuningRecord(
            rand.trace, db.commit_workload(wl), run_secs=[1e-3], target=target))
        report[name] = (_decisions(rand.trace), _decisions(dflt.trace),
                        not tvm_ffi.structural_equal(rand.mod, dflt.mod))
    return report


def test_mobilenet_default_knobs_on_board(mobilenet_ref, a64_board, tmp_path):
    """compile_model for rpi4-aarch64 at the templates' default knobs (no database): the output on
    the emulated board matches ONNX Runtime within 1e-5."""
    from mntvm.compile.artifact import load_artifact
    from mntvm.compile.build import compile_model

    cfg, w, x, ref = mobilenet_ref
    t0 = time.monotonic()
    art = load_artifact(compile_model(cfg, tmp_path / "default", target=A64_PROFILE, weights=w,
                                      schedules=None))
    built = time.monotonic() - t0
    s = art.metadata["schedules"]
    assert s["kind"] == "templates" and s["tuned"] == [] and len(s["defaults"]) == s["tasks"] >= 10
    assert art.metadata["target"]["name"] == A64_PROFILE
    t0 = time.monotonic()
    got = _run_on_board(a64_board, art.path, x)
    ran = time.monotonic() - t0
    diff = float(np.abs(got - ref).max())
    print(f"{A64_PROFILE} default knobs: compile {built:.1f} s, board {ran:.1f} s, "
          f"max |ours - onnxruntime| = {diff:.2e}")
    assert got.shape == ref.shape
    assert diff <= TOL, diff


def test_mobilenet_random_knobs_on_board(mobilenet_ref, a64_board, tmp_path):
    """Every tunable task at randomly sampled knobs (a seeded sample per task, written as a
    schedules database and applied by compile_model, as tuned logs are): the output on the
    emulated board matches ONNX Runtime within 1e-5, and the sampled knobs are not the defaults."""
    from mntvm.compile.artifact import load_artifact
    from mntvm.compile.build import compile_model
    from mntvm.targets.profiles import get_profile

    cfg, w, x, ref = mobilenet_ref
    t0 = time.monotonic()
    report = _random_knob_db(cfg, w, get_profile(A64_PROFILE), tmp_path / "db", KNOB_SEED)
    art = load_artifact(compile_model(cfg, tmp_path / "random", target=A64_PROFILE, weights=w,
                                      schedules=tmp_path / "db"))
    built = time.monotonic() - t0
    # every task ran on its random record, none fell back to the defaults
    s = art.metadata["schedules"]
    assert s["kind"] == "templates+database" and s["defaults"] == [], s
    assert s["tuned"] == sorted(report)
    # not vacuous: most tasks' knobs (and so their scheduled TIR) differ from the defaults
    knobbed = {n: r for n, r in report.items() if r[0]}
    changed = sorted(n for n, (rnd, dft, tir_differs) in knobbed.items() if rnd != dft)
    for n, (rnd, dft, tir_differs) in sorted(report.items()):
        print(f"  {n:12s} random {rnd}  default {dft}")
        assert tir_differs == (rnd != dft), n  # the knobs are all that differs
    assert len(knobbed) >= len(report) - 1  # only the pool has no knobs
    assert len(changed) >= 0.75 * len(knobbed), (changed, knobbed)
    t0 = time.monotonic()
    got = _run_on_board(a64_board, art.path, x)
    ran = time.monotonic() - t0
    diff = float(np.abs(got - ref).max())
    print(f"{A64_PROFILE} random knobs (seed {KNOB_SEED}, {len(changed)}/{len(knobbed)} tasks off "
          f"their defaults): db + compile {built:.1f} s, board {ran:.1f} s, "
          f"max |ours - onnxruntime| = {diff:.2e}")
    assert got.shape == ref.shape
    assert diff <= TOL, diff


def test_tiny_remote_tuning_on_the_board(mobilenet_ref, a64_board, tmp_path):
    """`mntvm tune --target rpi4-aarch64 --tracker ... --key ...`: kernels cross-built and linked
    here, measured on the emulated board; compile applies the log and the board's output still
    matches ONNX Runtime."""
    from mntvm.compile.artifact import load_artifact
    from mntvm.compile.build import compile_model
    from mntvm.tuning.tune import tune

    cfg, w, x, ref = mobilenet_ref
    (host, port), key = a64_board
    t0 = time.monotonic()
    summary = tune(cfg, A64_PROFILE, trials=2, ops="fc", out=tmp_path / "db", tracker=f"{host}:{port}",
                   key=key, progress=False, chunk=2)
    tuned_s = time.monotonic() - t0
    (task,) = summary["tasks"].values()
    assert task["rule"] == "mntvm_dense" and task["trials"] >= 2 and 0 < task["best_ms"] < 1e6
    art = load_artifact(compile_model(cfg, tmp_path / "a", target=A64_PROFILE, weights=w,
                                      schedules=tmp_path / "db"))
    assert art.metadata["schedules"]["tuned"] == ["mntvm_dense"]
    diff = float(np.abs(_run_on_board(a64_board, art.path, x) - ref).max())
    print(f"remote tuning on the board: {task['trials']} trials in {tuned_s:.1f} s, best "
          f"{task['best_ms']:.3f} ms; max |ours - onnxruntime| = {diff:.2e}")
    assert diff <= TOL, diff
