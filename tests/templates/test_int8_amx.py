"""AMX-INT8 pointwise kernel (mntvm.templates.amx_int8) in the int8 lowering (mntvm.templates.lowering_int8):
which layers take it per target (compile only, any x86 machine), the instructions it compiles to,
and, on a CPU with AMX, whole networks exactly equal to forward_int8 layer by layer (position
tails, K steps of 16/32/64 bytes, odd output-block counts, a non-zero input zero point)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import tvm
from tvm import relax

from int8_check import check_network, small_net, with_zero_point
from mntvm.core.machine import cpu_flags
from mntvm.model.network import MobileNetConfig
from mntvm.model.quantize import quantize
from mntvm.model.weights import random_weights
from mntvm.targets.profiles import get_profile
from mntvm.templates.amx_int8 import amx_supported, is_amx_kernel, pointwise_int8_amx
from mntvm.templates.lowering_int8 import amx_for, lower_int8
from mntvm.templates.registry import RULE_PW8, all_blocks, is_scheduled, rule_of, tunable_tasks

DEV = tvm.cpu()
HAS_AMX = {"amx_int8", "amx_tile"} <= cpu_flags()
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX-INT8 (amx_int8/amx_tile not in "
                                                   "/proc/cpuinfo flags): AMX kernels compiled but not run")


def _pointwise_calls(mod):
    """(output shape, PrimFunc) of every ``mntvm_pw8`` call in ``main``, in order."""
    calls = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            v = binding.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.call_tir" \
                    and v.args[0].name_hint.startswith("mntvm_pw8"):
                shape = tuple(int(s) for s in binding.var.ty.shape.values)
                calls.append((shape, mod[v.args[0]]))
    return calls


def _sapphire():
    return get_profile("x86", mcpu="sapphirerapids")


def test_amx_target_selection():
    """AMX targets (mcpu sapphirerapids) take the AMX kernel; Ice Lake (VNNI only) and int8
    activations do not."""
    assert amx_for(_sapphire().tvm_target(), "uint8")
    assert not amx_for(_sapphire().tvm_target(), "int8")
    assert not amx_for(get_profile("x86", mcpu="icelake-server").tvm_target(), "uint8")
    assert not amx_for(get_profile("x86-avx2").tvm_target(), "uint8")
    assert amx_supported(1, 2, 16, 4) and not amx_supported(1, 2, 9, 4)
    with pytest.raises(ValueError, match="P >= 16"):
        pointwise_int8_amx(1, 2, 9, 4)


@pytest.mark.parametrize("alpha,res", [(0.25, 96), (0.75, 64)])
def test_lowering_uses_amx_for_pointwise_with_16_positions_or_more(alpha, res):
    """Compile only: every pointwise layer with P >= 16 is the (scheduled, untunable) AMX kernel, the
    smaller ones the VNNI template; Ice Lake: none is AMX."""
    net = small_net(alpha, res)
    mod = lower_int8(net, _sapphire())
    calls = _pointwise_calls(mod)
    assert len(calls) == 13
    ps = [shape[2] for shape, _ in calls]
    assert min(ps) < 16 <= max(ps)
    for shape, func in calls:
        amx = shape[2] >= 16
        assert is_amx_kernel(func) == amx, shape
        assert is_scheduled(func) == amx, shape
        assert any(rule_of(b) == RULE_PW8 for b in all_blocks(func)) == (not amx), shape
    tasks = tunable_tasks(mod)
    assert not any(is_amx_kernel(f) for f in tasks.values())
    assert any(any(rule_of(b) == RULE_PW8 for b in all_blocks(f)) for f in tasks.values())
    ice = lower_int8(net, get_profile("x86", mcpu="icelake-server"))
    assert not any(is_amx_kernel(f) for _, f in _pointwise_calls(ice))


@pytest.mark.parametrize("n,ib,p,ob", [(1, 4, 196, 8), (1, 3, 25, 3), (2, 6, 16, 2)])
def test_kernel_compiles_to_tile_instructions(n, ib, p, ob):
    """Compile only: ldtilecfg, tile loads, tdpbusd (K steps of 64, 16, 32 bytes), stores and
    release, the per-call AMX permission request (syscall), a vectorized requantization."""
    target = _sapphire().tvm_target()
    func = pointwise_int8_amx(n, ib, p, ob).with_attr("global_symbol", "main")
    rt = tvm.compile(tvm.IRModule({"main": func}), target=target).mod
    asm = rt.inspect_source("asm")
    for ins in ("ldtilecfg", "tileloadd", "tdpbusd", "tilestored", "tilerelease", "syscall"):
        assert ins in asm, ins
    assert "vrndscaleps" in asm


def _kernel_check(n, ib, p, ob, threads):
    """The kernel alone against numpy on ``threads`` pool threads (the pool's size must be that):
    half-way products round to even (mult 0.5 on odd sums), huge ones saturate at both ends,
    every output is written (no sentinel left)."""
    assert tvm.get_global_func("runtime.NumThreads")() == threads
    rng = np.random.default_rng(ib * 100 + p)
    data = rng.integers(0, 256, (n, ib, p, 16), dtype=np.uint8)
    w = rng.integers(-128, 128, (ob, ib, 4, 16, 4), dtype=np.int8)
    bias = rng.integers(-30000, 30000, (ob, 16)).astype(np.int32)
    mult = (rng.random((ob, 16)) * 0.004).astype(np.float32)
    mult[:, 3], mult[:, 7] = 0.5, 80.0
    qp = np.array([100, 3, 250, 0], np.float32)
    acc = np.einsum("nipkj,bikoj->nbpo", data.reshape(n, ib, p, 4, 4).astype(np.int64), w.astype(np.int64))
    total = (acc + bias[None, :, None, :]).astype(np.int32)
    ref = np.clip(np.rint(total.astype(np.float32) * mult[None, :, None, :]) + qp[0], qp[1], qp[2]).astype(np.uint8)
    assert (total[:, :, :, 3] % 2 != 0).any() and (ref[:, :, :, 7] == 250).any() and (ref[:, :, :, 7] == 3).any()
    func = pointwise_int8_amx(n, ib, p, ob).with_attr("global_symbol", "main")
    rt = tvm.compile(tvm.IRModule({"main": func}), target=_sapphire().tvm_target()).mod
    out = tvm.runtime.tensor(np.full(ref.shape, 77, np.uint8), DEV)
    rt["main"](*[tvm.runtime.tensor(a, DEV) for a in (data, w, bias, mult, qp)], out)
    np.testing.assert_array_equal(out.numpy(), ref)


KERNEL_SHAPES = [(1, 4, 196, 8), (1, 3, 25, 3), (2, 6, 16, 2), (1, 1, 49, 5)]


@needs_amx
@pytest.mark.parametrize("n,ib,p,ob", KERNEL_SHAPES)
def test_kernel_exact_with_ties_and_saturation(n, ib, p, ob):
    """On this process's pool (1 thread here by default)."""
    _kernel_check(n, ib, p, ob, tvm.get_global_func("runtime.NumThreads")())


@needs_amx
def test_kernel_exact_on_two_threads():
    """Every KERNEL_SHAPES case in a process whose pool has 2 threads (each its own tile config
    and work range; a shape's items split between them; on one CPU the two share it)."""
    code = ("import importlib.util as u; s = u.spec_from_file_location('amx_t', {f!r}); m = u.module_from_spec(s); "
            "s.loader.exec_module(m); [m._kernel_check(*shape, 2) for shape in m.KERNEL_SHAPES]").format(f=__file__)
    here = os.path.dirname(os.path.abspath(__file__))  # for the int8_check helper it imports
    env = {**os.environ, "TVM_NUM_THREADS": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr


def _check_network(net, profile, seed=5):
    """:func:`int8_check.check_network` at template defaults; returns the number of AMX kernels."""
    return check_network(net, profile, seed=seed,
                         inspect=lambda mod: sum(is_amx_kernel(f) for _, f in _pointwise_calls(mod)))


@needs_amx
@pytest.mark.parametrize("alpha,res", [
    (0.25, 96),   # P 2304, 576, 144, 36 (32 + 4: shifted last block), 9 (VNNI)
    (0.5, 160),   # P 6400, 1600, 400 (12 x 32 + 16), 100 (3 x 32 + 4), 25 (16-row tiles, shifted)
    (0.75, 64),   # 24/48/96 channels: IB 2, 3, 6 (K steps of 32, 16, 32 bytes), OB 3 (one C column)
])
def test_network_exact_with_amx(alpha, res):
    n_amx = _check_network(small_net(alpha, res), _sapphire())
    assert n_amx >= 9


@needs_amx
def test_network_exact_with_amx_and_input_zero_point():
    """A pointwise input (dw2's output) at zero point 9: folded into the bias, still exact (at
    224: P 12544 ... 196 (6 x 32 + 4), 49 (32 + 17), the real model's shapes)."""
    net = with_zero_point(small_net(0.25, 224, seed=3), "dw2", 9)
    assert int(net.layers[[l.name for l in net.layers].index("pw2")].input.zero_point) == 9
    assert _check_network(net, _sapphire()) >= 9


@needs_amx
def test_network_exact_with_amx_batch_2():
    """Batch 2: the work items span both images."""
    cfg = MobileNetConfig(alpha=0.25, resolution=64, num_classes=10, batch=2)
    cal = np.random.RandomState(0).rand(3, 3, 64, 64).astype("float32") * 2.0 - 0.5
    net = quantize(cfg, random_weights(cfg, 0), cal)
    assert _check_network(net, _sapphire()) >= 9

