"""The tuning builder (``mntvm.tuning.space.ms_builder``): one build process serves batch after
batch (starting one costs as much as building a batch), a failed build is a result, not a dead
builder, and ``close()`` leaves no process and no library behind."""
from __future__ import annotations

import os

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.arg_info import ArgInfo

from mntvm.model import weights as W
from mntvm.model.network import MobileNetConfig
from mntvm.targets.profiles import get_profile
from mntvm.templates.defaults import default_schedule
from mntvm.templates.lowering import lower
from mntvm.tuning.database import task_mod
from mntvm.tuning.space import drop_artifact, ms_builder

CFG = MobileNetConfig(alpha=0.25, resolution=32)


def _children() -> set[int]:
    """This process's child processes (all threads'), from /proc."""
    kids = set()
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/children") as f:
                kids |= {int(x) for x in f.read().split()}
        except FileNotFoundError:  # a thread that just ended
            pass
    return kids


def test_one_build_process_serves_every_batch_and_close_stops_it():
    profile = get_profile("x86")
    target = profile.tvm_target()
    low = lower(CFG, W.random_weights(CFG), profile)
    mods = [task_mod(low[n]) for n in ("mntvm_dense", "mntvm_pool")]
    inputs = [ms.builder.BuilderInput(default_schedule(m, target, profile.vector_bits).mod, target) for m in mods]
    before = _children()
    builder = ms_builder(target=target)
    try:
        (first,) = builder.build(inputs[:1])
        workers = _children() - before
        assert first.error_msg is None and len(workers) == 1
        assert builder.build(inputs[1:])[0].error_msg is None and _children() - before == workers  # same process
        # a module that cannot be built comes back as an error (its process may be replaced), and
        # the builder goes on
        nowhere = tvm.target.Target({"kind": "llvm", "mtriple": "nonsense-unknown-none"})  # no LLVM backend
        (bad,) = builder.build([ms.builder.BuilderInput(inputs[0].mod, nowhere)])
        assert bad.artifact_path is None and bad.error_msg
        results = builder.build(inputs)
        assert [r.error_msg for r in results] == [None, None]
        workers |= _children() - before
        assert len(_children() - before) == 1

        # what was built is the kernel: the global average pool against numpy
        pool = tvm.runtime.load_module(results[1].artifact_path)["main"]
        func = mods[1]["main"]
        (n, cb, p, v), out_shape = [[int(d) for d in a.shape] for a in ArgInfo.from_prim_func(func)]
        x = np.random.default_rng(0).standard_normal((n, cb, p, v)).astype("float32")
        out = tvm.runtime.tensor(np.zeros(out_shape, "float32"))
        pool(tvm.runtime.tensor(x), out)
        want = x.mean(axis=2).reshape(n, cb * v)[:, :out_shape[1]].reshape(out_shape)
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)
        # a measured candidate's library can go at once; the others go with the builder
        drop_artifact(results[0].artifact_path)
        assert not os.path.exists(results[0].artifact_path) and os.path.exists(results[1].artifact_path)
    finally:
        builder.close()
    assert not _children() & workers
    assert not os.path.exists(os.path.dirname(os.path.dirname(results[1].artifact_path)))  # its folder too



def test_tuning_contexts_do_not_parse_every_targets_tensor_intrinsics():
    """MetaSchedule's TuneContext imports ``tvm.s_tir.tensor_intrin`` (every target's intrinsics, CUDA's
    included: seconds of parsing). Within ``without_tvm_intrinsics`` (which tune uses) nothing of it
    runs and its submodules import on demand; afterwards the stand-in is gone."""
    import json
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import json, sys
        import tvm
        from tvm.s_tir import meta_schedule as ms
        from mntvm.tuning.space import TVM_INTRINSICS, tune_space, without_tvm_intrinsics
        loaded = lambda: sorted(m for m in sys.modules if m.startswith(TVM_INTRINSICS))
        with without_tvm_intrinsics():
            ms.TuneContext(target=tvm.target.Target("llvm"), space_generator=tune_space())
            inside = loaded()
            import tvm.s_tir.tensor_intrin.x86
            x86 = loaded()
        print(json.dumps([inside, x86, loaded()]))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    inside, x86, after = json.loads(p.stdout.splitlines()[-1])
    pkg = "tvm.s_tir.tensor_intrin"
    assert inside == [pkg] and x86 == [pkg, pkg + ".x86"]
    assert after == [pkg + ".x86"]  # the stand-in gone: the next import runs the real package
