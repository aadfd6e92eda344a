"""The fused template's weight prefetch (mntvm.templates.prefetch): only on layers whose pointwise
weights stream from L3, every prefetched address inside the weights, the next panel covered, and
the results unchanged (numpy)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tvm  # noqa: E402  (a hard requirement: never skip)
from tvm import sym, te, tirx  # noqa: E402
from tvm.s_tir import SBlockRealize  # noqa: E402

from mntvm.templates import prefetch, x86  # noqa: E402
from mntvm.templates.compute import dw_pointwise_te  # noqa: E402
from mntvm.templates.defaults import default_schedule  # noqa: E402

V = 16
TARGET = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2})


def _fused(c, o_c, h):
    """The fused dw+pw task at the AVX-512 defaults, and its tensors' shapes."""
    data = te.placeholder((1, c // V, h * h, V), name="data")
    wd = te.placeholder((c // V, 3, 3, V), name="wd")
    bd = te.placeholder((c // V, V), name="bd")
    wp = te.placeholder((o_c // V, c // V, V, V), name="wp")
    bp = te.placeholder((o_c // V, V), name="bp")
    out = dw_pointwise_te(data, wd, bd, ("relu",), h, h, 1, (1, 1, 1, 1), wp, bp, ("clip", 0.0, 6.0))
    mod = tvm.IRModule({"main": te.create_prim_func([data, wd, bd, wp, bp, out])})
    return default_schedule(mod, TARGET, 512).mod


def _prefetches(stmt, loops=()):
    """(index expressions of each prefetched weight element, the loops around it)."""
    out = []
    if isinstance(stmt, tirx.For):
        return _prefetches(stmt.body, loops + (stmt,))
    if isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            out += _prefetches(s, loops)
    elif isinstance(stmt, SBlockRealize):
        out += _prefetches(stmt.block.body, loops)
    elif isinstance(stmt, tirx.Evaluate) and isinstance(stmt.value, tvm.ir.Call) and \
            stmt.value.op.name == "tirx.prefetch":
        load = stmt.value.args[0].args[0]
        out.append((load.source, list(load.indices), loops))
    return out


def _marked(stmt, out=None):
    """Every loop carrying a prefetch mark, by role."""
    out = {} if out is None else out
    if isinstance(stmt, tirx.For):
        role = stmt.annotations.get(prefetch.KEY) if stmt.annotations else None
        if role is not None:
            out.setdefault(str(role).split(":")[0], stmt)
        _marked(stmt.body, out)
    elif isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            _marked(s, out)
    elif isinstance(stmt, SBlockRealize):
        _marked(stmt.block.body, out)
    return out


def _value(expr, env):
    ana = sym.Analyzer()
    for var, val in env.items():
        ana.bind(var, tirx.const(val, "int32"))
    return int(ana.simplify(expr))


def test_heavy_layer_prefetches_the_next_panel_in_bounds(monkeypatch):
    """512 -> 512 channels (1 MB of weights, as MobileNetV1's 14x14 layers; prefetched from 1 MB on for
    this test): every prefetched index lies inside the weights for every loop value, and the first
    task's first panel requests exactly the lines of its second panel."""
    monkeypatch.setattr(x86, "AVX512", dataclasses.replace(x86.AVX512, prefetch_weights=1 << 20))
    mod = prefetch.inject(_fused(512, 512, 4))
    found = _prefetches(mod["main"].body)
    assert found, "no prefetch injected"
    buf, _, loops = found[0]
    assert [int(x) for x in buf.shape] == [32, 32, V, V]
    for _, idx, loops in found:
        ana = sym.Analyzer()
        for lp in loops:
            ana.bind(lp.loop_var, tvm.ir.Range.from_min_extent(lp.min, lp.extent))
        for i, dim in zip(idx, buf.shape):
            b = ana.const_int_bound(i)
            assert 0 <= b.min_value and b.max_value < int(dim), (idx, b)
    roles = _marked(mod["main"].body)
    assert sorted(roles) == ["ib", "ob0", "ob1", "p1", "task"]
    p1, ib, ob0 = roles["p1"], roles["ib"], roles["ob0"]
    assert int(ob0.extent) > 1
    ot = int(roles["ob1"].extent)  # the panel width: channel vectors of the register tile
    lines = set()
    for p in range(int(p1.extent)):
        for i in range(int(ib.extent)):
            env = {roles["task"].loop_var: 0, ob0.loop_var: 0, p1.loop_var: p, ib.loop_var: i}
            for _, idx, _ in found:
                lines.add(tuple(_value(e, env) for e in idx))
    want = {(ob, i, vi, 0) for ob in range(ot, 2 * ot) for i in range(32) for vi in range(V)}
    assert lines == want


def test_light_layer_is_left_alone():
    """256 -> 256 channels (0.25 MB, stays in L2): no marks, the module comes back unchanged."""
    mod = _fused(256, 256, 4)
    assert prefetch.KEY not in mod.script()
    assert prefetch.inject(mod)["main"].same_as(mod["main"])


@pytest.mark.parametrize("threshold", [1 << 20, 0])
def test_prefetching_kernels_compute_the_same(monkeypatch, threshold):
    """Built with the prefetches (a 1 MB layer, prefetched from 1 MB on; with the threshold at 0 also a
    64 KB one whose output-channel groups differ), the fused kernel still equals numpy, and the machine
    code holds prefetch instructions."""
    monkeypatch.setattr(x86, "AVX512", dataclasses.replace(x86.AVX512, prefetch_weights=threshold))
    rng = np.random.RandomState(3)
    for c, o_c, h in ([(512, 512, 4)] + ([(64, 256, 6)] if threshold == 0 else [])):
        mod = prefetch.inject(_fused(c, o_c, h))
        rt = tvm.compile(mod, target=TARGET).mod
        asm = rt.inspect_source("s")
        assert "prefetch" in asm
        x = rng.randn(1, c // V, h * h, V).astype("float32")
        w1 = rng.randn(c // V, 3, 3, V).astype("float32")
        b1 = rng.randn(c // V, V).astype("float32")
        w2 = (rng.randn(o_c // V, c // V, V, V) / np.sqrt(c)).astype("float32")
        b2 = rng.randn(o_c // V, V).astype("float32")
        args = [tvm.runtime.tensor(a) for a in (x, w1, b1, w2, b2, np.zeros((1, o_c // V, h * h, V), "float32"))]
        rt["main"](*args)
        # numpy: depthwise 3x3 pad 1 (+bias, ReLU) per channel block, then 1x1 (+bias, ReLU6)
        xi = x[0].reshape(c // V, h, h, V)
        xp = np.pad(xi, ((0, 0), (1, 1), (1, 1), (0, 0))).astype(np.float64)
        mid = sum(xp[:, i:i + h, j:j + h, :] * w1[:, None, None, i, j, :] for i in range(3) for j in range(3))
        mid = np.maximum(mid + b1[:, None, None, :], 0).reshape(c // V, h * h, V)
        ref = np.clip(np.einsum("bpi,obiv->opv", mid, w2) + b2[:, None, :], 0, 6)
        np.testing.assert_allclose(args[-1].numpy()[0], ref, atol=1e-4, rtol=1e-5)


# every tvm.compile in the package and the benchmarks that is not of our CPU kernels (these go through
# prefetch.compile_cpu, which adds the prefetch): file -> the calls, as written
NOT_OUR_CPU_KERNELS = {
    "mntvm/templates/prefetch.py": ["return tvm.compile(inject(mod), target=target)"],  # compile_cpu itself
    "mntvm/templates/gpu.py": ["ex = tvm.compile(mod, target=target, relax_pipeline=None)"],  # GPU kernels
    "mntvm/tuning/space.py": ["return tvm.compile(mod, target=target).mod"],  # CUDA candidates
    "mntvm/tuning/measure.py": ['_EVICT[nt] = (tvm.compile(sch.mod, target="llvm")["main"],'],  # cache eviction
    "mntvm/templates/lowering.py": ["ex = tvm.compile(mod, target=target)"],  # a docstring's example
    "benchmarks/schedules_effect.py": ["ex = tvm.compile(inference_module(cfg, w), target=profile.tvm_target())"],
}


def test_our_cpu_kernels_are_compiled_only_through_compile_cpu():
    """A new place that compiles our kernels with a bare ``tvm.compile`` would build them without
    their prefetch and nobody would notice but a benchmark: every ``tvm.compile(`` in mntvm/ and
    benchmarks/ is either prefetch.compile_cpu's own or one listed above as not ours."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    found = {}
    for path in sorted([*root.glob("mntvm/**/*.py"), *root.glob("benchmarks/*.py")]):
        calls = [line.split("#")[0].strip() for line in path.read_text().splitlines() if "tvm.compile(" in line]
        if calls:
            found[str(path.relative_to(root))] = calls
    assert found == NOT_OUR_CPU_KERNELS


def test_prefetch_knob_follows_the_family():
    """The fused template's ``prefetch`` default: NEON from 1 MB of pointwise weights on, AVX2 never (the
    prefetches slowed 1.0/224 on Zen 2), AVX-512 never either: its layers of 2 MB and more chunk their
    reduction instead (``kc``); the knob alone decides the marks."""
    from mntvm.templates.cpu import dw_pointwise_knobs
    from mntvm.templates.families import family_for

    layers = ((256, 256, 14), (512, 512, 14), (512, 1024, 7), (1024, 1024, 7))
    for bits, v in ((512, 16), (256, 8)):
        fam = family_for(TARGET, bits)
        got = [dw_pointwise_knobs(o // v, h, h, c // v, v, fam)["prefetch"] for c, o, h in layers]
        assert got == [0, 0, 0, 0], (bits, got)
    avx512 = family_for(TARGET, 512)
    assert [dw_pointwise_knobs(o // 16, h, h, c // 16, 16, avx512)["kc"] > 0 for c, o, h in layers] == \
        [False, False, True, True]
    arm = family_for(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "num-cores": 2}), 128)
    assert dw_pointwise_knobs(128, 7, 7, 256, 4, arm)["prefetch"] == 1
    assert prefetch.KEY not in _fused(512, 1024, 4).script()
