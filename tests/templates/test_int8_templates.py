"""int8 templates (mntvm.templates.compute_int8 / cpu_int8 / lowering_int8): the lowered QuantizedNet
against the numpy reference forward_int8, layer by layer and exactly, at default and random knobs,
with VNNI (this machine) and without (the AVX2 profile); rounding ties; the dot instruction in the
generated code."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tvm
import tvm_ffi
from tvm import te

from int8_check import check_network, small_net, with_zero_point
from mntvm.core.errors import MntvmError
from mntvm.targets.profiles import get_profile
from mntvm.templates.compute_int8 import pointwise_int8_te, pw_pairs
from mntvm.templates.defaults import apply_sampled_schedules, default_schedule, knob_schedule
from mntvm.templates.lowering_int8 import dot_for, lower_int8
from mntvm.templates.registry import INT8_RULES, all_blocks, rule_of, tunable_tasks

DEV = tvm.cpu()


@pytest.fixture(scope="module")
def small():
    return small_net(0.25, 32)


def _names(net):
    return ["input"] + [l.name for l in net.layers] + ["pool"]


@pytest.mark.parametrize("profile", ["x86", "x86-avx2", "x86-64"])
def test_network_exact_at_default_knobs(small, profile):
    """This machine's CPU (whatever dot instruction it has: VNNI, or AVX2's vpmaddwd pairs), Haswell
    (AVX2, no VNNI: the vpmaddwd pairs) and baseline x86-64 (no dot instruction: plain widening
    multiply-adds, the uint8 depthwise taps one at a time)."""
    check_network(small, get_profile(profile))


@pytest.mark.parametrize("seed", [1, 2])
def test_network_exact_at_random_knobs(small, seed):
    check_network(small, get_profile("x86"), lambda m: apply_sampled_schedules(m, "llvm", seed))


def test_network_exact_at_random_knobs_on_avx2(small):
    """No VNNI: our AVX2 intrinsic (vpmaddwd pairs), exact at sampled knobs too."""
    check_network(small, get_profile("x86-avx2"), lambda m: apply_sampled_schedules(m, "llvm", 3))


def test_avx2_kernels_multiply_int16_pairs(small):
    """On AVX2 without VNNI every int8 conv multiplies int16 pairs with vpmaddwd (exact; never the
    int16-saturating vpmaddubsw): the stem and pointwise keep the pair sums apart until the epilogue
    (no vphaddd) and take their weights as int16 (no vpmovsxbw); the depthwise takes its kernel taps
    in pairs (no per-tap vpmullw). Compile-only (Haswell), each kernel on its own."""
    profile = get_profile("x86-avx2")
    target = profile.tvm_target()
    seen = set()
    for name, func in sorted(tunable_tasks(lower_int8(small, profile)).items()):
        kind = next(r for r in map(rule_of, all_blocks(func)) if r)
        if kind not in ("mntvm_stem8", "mntvm_dw8", "mntvm_pw8"):
            continue
        mod = default_schedule(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target).mod
        asm = tvm.compile(mod, target=target).mod.inspect_source("asm")
        assert "vpmaddwd" in asm and "vpmaddubsw" not in asm, name
        if kind == "mntvm_dw8":
            assert "vpmullw" not in asm, name
        else:
            assert "vphaddd" not in asm and "vpmovsxbw" not in asm, name
        seen.add(kind)
    assert seen == {"mntvm_stem8", "mntvm_dw8", "mntvm_pw8"}


def test_avx512_without_vnni_takes_the_avx2_tiles(small):
    """Skylake-X (AVX-512, no VNNI) runs the AVX2 int8 kernels: their default tiles are the AVX2
    family's (sized for 16 ymm), not the 32-register VNNI ones that would spill there."""
    knobs = {}
    for prof in ("x86-avx512", "x86-avx2"):
        profile = get_profile(prof)
        target = profile.tvm_target()
        tasks = tunable_tasks(lower_int8(small, profile))
        knobs[prof] = {name: knob_schedule(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target,
                                           None, vector_bits=profile.vector_bits)[1]
                       for name, f in tasks.items() if name.startswith(("mntvm_pw8", "mntvm_stem8", "mntvm_dw8"))}
    assert knobs["x86-avx512"] == knobs["x86-avx2"] and len(knobs["x86-avx2"]) >= 3


def _with_weights(net, name, change):
    """``net`` with layer ``name``'s int8 weights as ``change(copy)`` leaves them."""
    i = [l.name for l in net.layers].index(name)
    w = net.layers[i].weight.copy()
    change(w)
    return dataclasses.replace(net, layers=net.layers[:i] + (dataclasses.replace(net.layers[i], weight=w),)
                               + net.layers[i + 1:])


def _dw_weight_shapes(net, profile):
    return {tuple(int(x) for x in r.source.shape) for f in tunable_tasks(lower_int8(net, profile)).values()
            for b in all_blocks(f) if rule_of(b) == "mntvm_dw8" for r in b.reads if r.source.dtype == "int8"
            and len(r.source.shape) == 4 and int(r.source.shape[-1]) == 16}


def test_depthwise_tap_pairs_exact_at_the_int16_limit():
    """int8 activations without a dot instruction (Arm's depthwise; x86 given int8): two taps'
    products are added in int16, exact while each is at most 128 * 127. dw2's weights all -127
    where most activations (ReLU6's zeros: z = -128) and the padding are -128: pair sums of 32512,
    35 short of overflow, match forward_int8 exactly. Two adjacent taps of -128 (an imported model
    may hold them; ours clip to +-127) would sum 32768 in a pair: that layer keeps single taps (its
    weights (CB, KH, KW, V), not pairs (CB, 5, 2, V)) and is exact too."""
    profile = get_profile("x86")
    net = small_net(0.25, 32, seed=3, act_dtype="int8")
    assert net.layers[3].name == "dw2" and int(net.layers[3].input.zero_point) == -128
    limit = _with_weights(net, "dw2", lambda w: w.fill(-127))
    assert (1, 5, 2, 16) in _dw_weight_shapes(limit, profile)
    check_network(limit, profile)

    def two_at_128(w):
        w.fill(-127)
        w[:, 0, 0, 0:2] = -128  # taps 0 and 1: the first pair

    wide = _with_weights(net, "dw2", two_at_128)
    shapes = _dw_weight_shapes(wide, profile)
    assert (1, 3, 3, 16) in shapes and (1, 5, 2, 16) in shapes, shapes  # dw2 single, the rest pairs
    check_network(wide, profile)


def test_full_width_network_exact():
    """alpha 1.0 (1024 channels, 64 input blocks per pointwise reduction) at resolution 32."""
    check_network(small_net(1.0, 32, seed=1), get_profile("x86"))


def test_module_structure(small):
    """One PrimFunc per layer kind, every conv/pool/FC a tunable template, the dot choice recorded
    per target: VNNI on Sapphire Rapids, AVX2's vpmaddwd pairs on Haswell and Skylake-AVX512 (no
    VNNI). Compile-only: named CPUs, whatever this one is."""
    profile = get_profile("x86", mcpu="sapphirerapids")
    mod = lower_int8(small, profile)
    tasks = tunable_tasks(mod)
    rules = {rule_of(b) for f in tasks.values() for b in all_blocks(f)} - {None}
    assert rules == set(INT8_RULES)
    assert dot_for(profile.tvm_target(), "uint8") == "vnni"
    assert dot_for(get_profile("x86-avx2").tvm_target(), "uint8") == "avx2"
    assert dot_for(get_profile("x86-avx512").tvm_target(), "uint8") == "avx2"  # skylake: no VNNI
    assert dot_for(profile.tvm_target(), "int8") == "none"  # both x86 dots take u8 activations
    ann = {str(b.annotations["mntvm_dot"]) for f in tasks.values() for b in all_blocks(f)
           if rule_of(b) in ("mntvm_pw8", "mntvm_dense8")}
    assert ann == {"vnni"}


@pytest.mark.parametrize("act_dtype", ["uint8", "int8"])
def test_tasks_do_not_depend_on_quantization_values(act_dtype):
    """Two nets of one config with different weights, calibration inputs and zero points lower to
    structurally equal tasks (a tuning log of one applies to the other), and both stay exact."""
    a = small_net(0.25, 32, seed=1, act_dtype=act_dtype)
    b = small_net(0.25, 32, seed=2, act_dtype=act_dtype, spread=5.0)
    if act_dtype == "uint8":
        b = with_zero_point(b, "stem", 9)
    zps = lambda n: {int(l.output.zero_point) for l in n.layers[:-1]} | {int(n.input.zero_point)}
    assert zps(a) != zps(b) and a.input.scale != b.input.scale
    profile = get_profile("x86")
    ta, tb = tunable_tasks(lower_int8(a, profile)), tunable_tasks(lower_int8(b, profile))
    assert sorted(ta) == sorted(tb) and len(ta) >= 5
    for name in ta:
        assert tvm_ffi.structural_equal(ta[name], tb[name]), name
        assert tvm_ffi.structural_hash(ta[name]) == tvm_ffi.structural_hash(tb[name]), name
    check_network(b, profile)


def test_bad_requests(small):
    with pytest.raises(MntvmError, match="cannot expose 'pw99'"):
        lower_int8(small, get_profile("x86"), expose=["pw99"])
    with pytest.raises(MntvmError, match="GPU"):
        lower_int8(small, get_profile("cuda-sm80"))


def _pointwise_module(profile, mult, zp, lo, hi, bias, data, weight, run=True):
    """One pointwise template (1 input block of 16, 2 output blocks, P positions), default knobs;
    run on ``data`` unless not ``run`` (then the output is None)."""
    target = profile.tvm_target()
    dot = dot_for(target, "uint8")
    d = te.placeholder(data.shape, "uint8", name="data")
    w_shape = (2, 1, 4, 16, 4) if dot != "none" else (2, 1, 4, 4, 16)
    w_dtype = "int16" if pw_pairs(dot) else "int8"  # the pairs template takes the int8 values widened
    w = te.placeholder(w_shape, w_dtype, name="w")
    b = te.placeholder((2, 16), "int32", name="b")
    m = te.placeholder((2, 16), "float32", name="m")
    q = te.placeholder((4,), "int32", name="q")
    out = pointwise_int8_te(d, w, b, m, q, dot, profile.vector_bits)
    mod = tvm.IRModule({"main": te.create_prim_func([d, w, b, m, q, out])})
    sch = default_schedule(mod, target)
    rt = tvm.compile(sch.mod, target=target).mod
    if not run:
        return None, rt
    # weight (O, I) -> the packed layout the block's dot instruction takes
    wo = weight.reshape(2, 16, 4, 4)  # (OB, o, k4, i4)
    wp = wo.transpose(0, 2, 1, 3) if dot != "none" else wo.transpose(0, 2, 3, 1)
    args = [data, np.ascontiguousarray(wp)[:, None].astype(w_dtype), bias.reshape(2, 16), mult.reshape(2, 16),
            np.array([zp, lo, hi, 0], np.int32), np.zeros((1, 2, data.shape[2], 16), "uint8")]
    args = [tvm.runtime.tensor(a, DEV) for a in args]
    rt["main"](*args)
    return args[-1].numpy(), rt


@pytest.mark.parametrize("profile", ["x86", "x86-avx2"])
def test_requantization_rounds_ties_to_even_and_saturates(profile):
    """Accumulators k + 0.5 after the multiplier round half to even (as rint / ONNX Runtime);
    out-of-range values clamp to [lo, hi]."""
    p = 16
    rng = np.random.RandomState(0)
    data = rng.randint(0, 256, (1, 1, p, 16)).astype("uint8")
    weight = rng.randint(-128, 128, (32, 16)).astype("int8")
    acc = np.einsum("pi,oi->po", data[0, 0].astype(np.int64), weight.astype(np.int64))
    # choose the bias so that acc + bias is odd and small: ties at mult 0.5; two channels saturate
    target = rng.randint(-41, 41, 32) * 2 + 1
    bias = (target - acc[0]).astype(np.int32)
    bias[5], bias[6] = 10 ** 6, -10 ** 6
    mult = np.full(32, 0.5, np.float32)
    zp, lo, hi = 100, 3, 250
    got, _ = _pointwise_module(get_profile(profile), mult, zp, lo, hi, bias, data, weight)
    total = (acc + bias[None, :]).astype(np.int32)
    ref = np.clip(np.rint(total.astype(np.float32) * mult) + zp, lo, hi).astype(np.uint8)
    got = got[0].transpose(1, 0, 2).reshape(p, 32)
    np.testing.assert_array_equal(got, ref)
    ties = (total[0] % 2 != 0) & (np.abs(total[0]) < 100)
    assert ties.sum() >= 25  # row 0: exact ties, both even and odd halves
    assert {int(x) for x in np.rint(total[0][ties] * np.float32(0.5)) % 2} == {0}
    assert got[0, 5] == hi and got[0, 6] == lo


@pytest.mark.parametrize("profile,has_dot", [(("x86", "sapphirerapids"), True), (("x86-avx2", None), False)])
def test_generated_code_uses_the_dot_instruction(profile, has_dot):
    """VNNI build: vpdpbusd in the pointwise kernel and a vectorized (zmm) requantization; the
    AVX2 build: vpmaddwd on int16 pairs (the weights packed as int16, not widened in the kernel),
    its (lane, pair) sums accumulated as they come (no vphaddd in the reduction: the pairs are
    added once, in the epilogue), neither vpdpbusd nor
    the int16-saturating vpmaddubsw. Compile-only (named CPUs):
    the kernels' results are checked where they run, above."""
    rng = np.random.RandomState(1)
    data = rng.randint(0, 256, (1, 1, 16, 16)).astype("uint8")
    weight = rng.randint(-128, 128, (32, 16)).astype("int8")
    _, rt = _pointwise_module(get_profile(profile[0], mcpu=profile[1]), np.full(32, 0.01, np.float32), 0, 0, 255,
                              np.zeros(32, np.int32), data, weight, run=False)
    asm = rt.inspect_source("asm")
    assert ("vpdpbusd" in asm) == has_dot
    assert "vpmaddubsw" not in asm
    if not has_dot:
        assert "vpmaddwd" in asm
        assert "vpmovsxbw" not in asm, "weights widened in the kernel (they come int16)"
        assert "vphaddd" not in asm and "vpermd" not in asm, "pair sums folded in the reduction"
    if has_dot:
        assert "vrndscaleps\t$12, %zmm" in asm or "vrndscaleps\t$4, %zmm" in asm, "requantization not vectorized"
