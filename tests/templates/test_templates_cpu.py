"""CPU conv templates (mntvm.templates.cpu): numerics vs numpy at default and randomly sampled knobs,
the Relax lowering of a small MobileNet, and a tiny MetaSchedule run of one rule."""
from __future__ import annotations

import numpy as np
import pytest

import tvm  # noqa: E402  (a hard requirement: never skip)
from tvm import relax, te  # noqa: E402
from tvm.s_tir import Schedule  # noqa: E402

from mntvm.templates.compute import (dense_te, depthwise_te, dw_pointwise_te, pointwise_te, pool_te,  # noqa: E402
                                     stem_te)
from mntvm.templates import prefetch  # noqa: E402
from mntvm.templates.bias_init import bias_into_init  # noqa: E402
from mntvm.templates.cpu import (CHUNK_BYTES, RAGGED_EXTRA, RAGGED_POSITIONS, STEM_EXTRA,  # noqa: E402
                                 dw_pointwise_knobs, inner_positions_outside, ragged_extra_positions,
                                 ragged_workloads, reduction_chunk, stem_extra_positions, stem_flat_knobs)
from mntvm.templates.families import family_for  # noqa: E402
from mntvm.templates.defaults import apply_default_schedules, default_schedule  # noqa: E402
from mntvm.templates.lowering import lower_blocked  # noqa: E402
from mntvm.templates.registry import (RULE_DENSE, RULE_DW, RULE_DWPW, RULE_POOL, RULE_PW, RULE_STEM,  # noqa: E402
                                      all_blocks, scheduler, tunable_tasks)


def _target():
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": 2})


TARGET = _target()
DEV = tvm.cpu()


def _run(func_mod, arrays, out_shape):
    rt = tvm.compile(func_mod, target=TARGET).mod
    args = [tvm.runtime.tensor(a, DEV) for a in arrays] + [tvm.runtime.tensor(np.zeros(out_shape, "float32"), DEV)]
    rt["main"](*args)
    return args[-1].numpy()


def _schedule(tensors, block, rule, seed=None):
    """seed=None: the AVX-512 family's defaults; seed given: random sampled knobs."""
    mod = tvm.IRModule({"main": te.create_prim_func(tensors)})
    if seed is None:
        return default_schedule(mod, TARGET, 512).mod
    sch = Schedule(mod, seed=seed)
    scheduler("cpu", rule)(sch, sch.get_sblock(block), None)
    return sch.mod


def _blocked(x, v):
    """NCHW -> (N, C/V, H*W, V), zero-padded channels."""
    n, c, h, w = x.shape
    cb = -(-c // v)
    xp = np.zeros((n, cb * v, h, w), x.dtype)
    xp[:, :c] = x
    return xp.reshape(n, cb, v, h * w).transpose(0, 1, 3, 2).copy()


def _unblocked(y, c, h, w):
    n, cb, p, v = y.shape
    return y.transpose(0, 1, 3, 2).reshape(n, cb * v, h, w)[:, :c]


def _conv_ref(x, w, stride, pad, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))).astype(np.float64)
    ho = (h + 2 * pad - kh) // stride + 1
    wo = (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    og = o // groups
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, i:i + stride * ho:stride, j:j + stride * wo:stride]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, w[g * og:(g + 1) * og, :, i, j])
    return out


# Each check builds one template's TE compute, has ``schedule(tensors, block, rule) -> IRModule``
# schedule it (CPU here; test_templates_cuda passes its CUDA schedules run on the CPU) and compares the
# result with numpy.
def check_pointwise(schedule, v, i_c, o_c, h, atol):
    rng = np.random.RandomState(0)
    data = te.placeholder((1, i_c // v, h * h, v), name="data")
    wt = te.placeholder((o_c // v, i_c // v, v, v), name="w")
    b = te.placeholder((o_c // v, v), name="b")
    out = pointwise_te(data, wt, b, ("clip", 0.0, 6.0))
    mod = schedule([data, wt, b, out], "conv_pw", RULE_PW)
    x = rng.randn(1, i_c // v, h * h, v).astype("float32")
    w = rng.randn(o_c // v, i_c // v, v, v).astype("float32")
    bb = rng.randn(o_c // v, v).astype("float32")
    got = _run(mod, [x, w, bb], (1, o_c // v, h * h, v))
    ref = np.clip(np.einsum("bpi,obiv->opv", x[0].astype(np.float64), w) + bb[:, None, :], 0, 6)
    np.testing.assert_allclose(got[0], ref, atol=atol, rtol=1e-5)


def check_depthwise(schedule, v, c, stride, h, atol):
    rng = np.random.RandomState(1)
    data = te.placeholder((1, c // v, h * h, v), name="data")
    wt = te.placeholder((c // v, 3, 3, v), name="w")
    b = te.placeholder((c // v, v), name="b")
    out = depthwise_te(data, wt, b, ("relu",), h, h, stride, (1, 1, 1, 1))
    ho = (h + 2 - 3) // stride + 1
    mod = schedule([data, wt, b, out], "conv_dw", RULE_DW)
    x = rng.randn(1, c, h, h).astype("float32")
    w = rng.randn(c, 1, 3, 3).astype("float32")
    bb = rng.randn(c).astype("float32")
    wp = w[:, 0].reshape(c // v, v, 3, 3).transpose(0, 2, 3, 1).copy()
    got = _run(mod, [_blocked(x, v), wp, bb.reshape(c // v, v)], (1, c // v, ho * ho, v))
    ref = np.maximum(_conv_ref(x, w, stride, 1, c) + bb[None, :, None, None], 0)
    np.testing.assert_allclose(_unblocked(got, c, ho, ho), ref, atol=atol, rtol=1e-5)


def check_dw_pointwise(schedule, v, c, o_c, stride, h, atol, extra=0):
    """The fused template against numpy: depthwise 3x3 (+bias, ReLU), then 1x1 (+bias, ReLU6), its
    convs computed ``extra`` positions past the map's end."""
    rng = np.random.RandomState(2)
    data = te.placeholder((1, c // v, h * h, v), name="data")
    wd = te.placeholder((c // v, 3, 3, v), name="wd")
    bd = te.placeholder((c // v, v), name="bd")
    wp = te.placeholder((o_c // v, c // v, v, v), name="wp")
    bp = te.placeholder((o_c // v, v), name="bp")
    out = dw_pointwise_te(data, wd, bd, ("relu",), h, h, stride, (1, 1, 1, 1), wp, bp, ("clip", 0.0, 6.0), extra)
    ho = (h + 2 - 3) // stride + 1
    mod = schedule([data, wd, bd, wp, bp, out], "conv_pw", RULE_DWPW)
    x = rng.randn(1, c, h, h).astype("float32")
    w1 = rng.randn(c, 1, 3, 3).astype("float32")
    b1 = rng.randn(c).astype("float32")
    w2 = rng.randn(o_c, c, 1, 1).astype("float32")
    b2 = rng.randn(o_c).astype("float32")
    w1p = w1[:, 0].reshape(c // v, v, 3, 3).transpose(0, 2, 3, 1).copy()
    w2p = w2[:, :, 0, 0].T.reshape(c // v, v, o_c // v, v).transpose(2, 0, 1, 3).copy()  # (OB, IB, Vi, Vo)
    got = _run(mod, [_blocked(x, v), w1p, b1.reshape(c // v, v), w2p, b2.reshape(o_c // v, v)],
               (1, o_c // v, ho * ho, v))
    mid = np.maximum(_conv_ref(x, w1, stride, 1, c) + b1[None, :, None, None], 0)
    ref = np.clip(_conv_ref(mid, w2, 1, 0, 1) + b2[None, :, None, None], 0, 6)
    np.testing.assert_allclose(_unblocked(got, o_c, ho, ho), ref, atol=atol, rtol=1e-5)


def check_stem(schedule, v, o, atol, extra=0, h=10):
    """The stem (3x3, stride 2, 3 input channels) against numpy, from a padded copy of its input
    where ``extra`` > 0."""
    c, ho = 3, h // 2
    rng = np.random.RandomState(2)
    data = te.placeholder((1, c, h, h), name="data")
    wt = te.placeholder((o // v, c, 3, 3, v), name="w")
    b = te.placeholder((o // v, v), name="b")
    out = stem_te(data, wt, b, ("clip", 0.0, 6.0), 2, (1, 1, 1, 1), extra)
    mod = schedule([data, wt, b, out], "conv_stem", RULE_STEM)
    x = rng.randn(1, c, h, h).astype("float32")
    w = rng.randn(o, c, 3, 3).astype("float32")
    bb = rng.randn(o).astype("float32")
    wp = w.reshape(o // v, v, c, 3, 3).transpose(0, 2, 3, 4, 1).copy()
    got = _run(mod, [x, wp, bb.reshape(o // v, v)], (1, o // v, ho * ho, v))
    ref = np.clip(_conv_ref(x, w, 2, 1, 1) + bb[None, :, None, None], 0, 6)
    np.testing.assert_allclose(_unblocked(got, o, ho, ho), ref, atol=atol, rtol=1e-5)


def check_dense_and_pool(schedule, v, k, n_out, c, atol):
    """FC with ``n_out`` outputs padded to blocks of ``v``; pool of ``c`` channels (last block padded)."""
    rng = np.random.RandomState(3)
    nb = -(-n_out // v)
    data = te.placeholder((1, k), name="data")
    wt = te.placeholder((nb, k, v), name="w")
    b = te.placeholder((n_out,), name="b")
    mod = schedule([data, wt, b, dense_te(data, wt, b, n_out)], "dense", RULE_DENSE)
    x = rng.randn(1, k).astype("float32")
    w = rng.randn(k, n_out).astype("float32")
    bb = rng.randn(n_out).astype("float32")
    wp = np.zeros((k, nb * v), "float32")
    wp[:, :n_out] = w
    got = _run(mod, [x, wp.reshape(k, nb, v).transpose(1, 0, 2).copy(), bb], (1, n_out))
    np.testing.assert_allclose(got, x.astype(np.float64) @ w + bb, atol=atol, rtol=1e-5)

    p, cb = 9, -(-c // v)
    data = te.placeholder((1, cb, p, v), name="data")
    mod = schedule([data, pool_te(data, c)], "pool_sum", RULE_POOL)
    x = rng.randn(1, cb, p, v).astype("float32")
    got = _run(mod, [x], (1, c, 1, 1))
    ref = x.transpose(0, 1, 3, 2).reshape(1, cb * v, p).mean(-1)[:, :c]
    np.testing.assert_allclose(got[:, :, 0, 0], ref, atol=1e-5, rtol=1e-5)


SEEDS = [None, 1, 2, 3]


def _by_seed(seed):
    return lambda tensors, block, rule: _schedule(tensors, block, rule, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("v", [16, 4])
def test_pointwise(seed, v):
    check_pointwise(_by_seed(seed), v, 2 * v, 3 * v, 6, atol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("stride,h", [(1, 6), (2, 8), (2, 7)])
def test_depthwise(seed, stride, h):
    check_depthwise(_by_seed(seed), 16, 32, stride, h, atol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("stride,h", [(1, 6), (2, 8), (2, 7)])
@pytest.mark.parametrize("extra", [0, RAGGED_EXTRA])
def test_dw_pointwise(seed, stride, h, extra):
    check_dw_pointwise(_by_seed(seed), 16, 32, 64, stride, h, atol=1e-4, extra=extra)


@pytest.mark.parametrize("cores", [1, 2, 4])
def test_dw_pointwise_default_knobs_share_tasks_evenly(cores):
    """For every fused layer of MobileNetV1 1.0/224 the default tasks (row blocks x output-channel
    groups) are a multiple of the threads, each covers at most 128 positions (or one row), and the
    decisions are a valid point of the template's space."""
    fam = family_for(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": cores}), 512)
    assert fam.cores == cores
    for c, o_c, ho in [(32, 64, 112), (64, 128, 56), (128, 128, 56), (128, 256, 28), (256, 256, 28),
                       (256, 512, 14), (512, 512, 14), (512, 1024, 7), (1024, 1024, 7)]:
        d = dw_pointwise_knobs(o_c // 16, ho, ho, c // 16, 16, fam)
        rows, groups = d["rows"][1], d["ob"][0]
        assert d["rows"][0] * rows == ho and groups * d["ob"][1] * d["ob"][2] == o_c // 16
        assert (ho // rows) * groups % cores == 0, (c, o_c, ho, d)
        assert rows == 1 or rows * ho <= 128
        assert d["p"][0] * d["p"][1] == rows * ho and d["w"][0] * d["w"][1] == ho


@pytest.mark.parametrize("stride,h,o_c", [(1, 7, 64), (2, 14, 64), (1, 6, 48), (1, 5, 40), (2, 8, 64),
                                          (1, 16, 64), (2, 28, 128)])
@pytest.mark.parametrize("extra", [0, RAGGED_EXTRA])
def test_dw_pointwise_avx2_defaults(stride, h, o_c, extra):
    """AVX2 (8 lanes) at its default knobs against numpy: ragged 4x3 tiles on 7x7 and 4x4 maps (the
    last one masked), 3x4 on 48 channels (positions outside the channel vectors), odd channel counts;
    with ``extra`` positions ragged tiles in bands of rows (16x16, 14x14), across rows."""
    def schedule(tensors, block, rule):
        return default_schedule(tvm.IRModule({"main": te.create_prim_func(tensors)}), TARGET, 256).mod

    check_dw_pointwise(schedule, 8, 32, o_c, stride, h, atol=1e-4, extra=extra)


@pytest.mark.parametrize("h,extra", [(7, 0), (7, RAGGED_EXTRA), (14, RAGGED_EXTRA), (10, RAGGED_EXTRA),
                                     (5, RAGGED_EXTRA)])
def test_dw_pointwise_avx2_chunked_reduction(h, extra):
    """AVX2, 512 -> 128 channels: a register tile of 4 channel vectors has a 64 KB weight panel, more
    than the family's ``chunk_panels``, so the default splits the reduction into chunks of 4 input
    blocks (4 KB of the panel) run outside the register tiles; it matches numpy, and computed past
    the map's end its reduction has no bounds mask. A 32 KB panel, and the AVX-512 family (no panel rule),
    keep the reduction whole, and so does a tile of 5 positions (its weights serve more FMAs). On the
    10x10 and 5x5 maps, where a 2x5 tile divides the positions, the chunked ragged 4x3 is chosen."""
    fam = family_for(TARGET, 256)
    v, c, o_c = 8, 512, 128
    d = dw_pointwise_knobs(o_c // v, h, h, c // v, v, fam, extra)
    assert d["ob"][2] == 4 and d["ragged"] == 3 and d["kc"] == 4 and 4 * 4 * v * v * 4 == CHUNK_BYTES, d
    assert reduction_chunk(4, 3, 32, v, fam) == 0 and reduction_chunk(4, 3, 64, v, family_for(TARGET, 512)) == 0
    assert reduction_chunk(2, 5, 128, v, fam) == 0 and reduction_chunk(2, 4, 128, v, fam) == 8
    # AVX-512 chunks by the layer's weights instead (2 MB and more: from L3), whatever the tile; a 4-vector
    # tile's input block alone holds 4 KB of weights: chunks of the fewest blocks that divide (2)
    avx512 = family_for(TARGET, 512)
    assert reduction_chunk(4, 5, 64, 16, avx512, 4 << 20) == 2 and reduction_chunk(2, 7, 64, 16, avx512, 4 << 20) == 2
    assert reduction_chunk(4, 6, 32, 16, avx512, 1 << 20) == 0 and reduction_chunk(2, 7, 32, 16, avx512, 1 << 20) == 0

    def schedule(tensors, block, rule):
        mod = default_schedule(tvm.IRModule({"main": te.create_prim_func(tensors)}), TARGET, 256).mod
        masked = [not isinstance(p, tvm.tirx.IntImm) for p in _predicates(mod["main"], "conv_pw_update")]
        assert masked == [not extra], masked
        return mod

    check_dw_pointwise(schedule, v, c, o_c, 1, h, atol=2e-3, extra=extra)


def _predicates(func, name):
    """The predicates of the blocks called ``name`` in a scheduled PrimFunc."""
    found = []

    def visit(node):
        if isinstance(node, tvm.s_tir.SBlockRealize) and node.block.name_hint == name:
            found.append(node.predicate)
        for c in getattr(node, "seq", None) or []:
            visit(c)
        for field in ("body", "block", "init", "then_case", "else_case"):
            if getattr(node, field, None) is not None:
                visit(getattr(node, field))

    visit(func.body)
    return found


def test_dw_pointwise_avx2_ragged_bands_have_no_mask():
    """With the convs computed past the map's end, the AVX2 defaults put a ragged 4x3 tile in each
    band of rows of a 56x56 map, and neither the pointwise reduction nor the depthwise conv under it
    has a bounds mask (the last tile of a band computes the next positions); only the stores are
    masked. Without the extra positions the reduction is masked by the buffer's end."""
    fam = family_for(TARGET, 256)
    assert ragged_extra_positions(fam) == RAGGED_EXTRA > 0
    assert ragged_extra_positions(family_for(TARGET, 512)) == 0
    v, c, o_c, h = 8, 64, 128, 56
    d = dw_pointwise_knobs(o_c // v, h, h, c // v, v, fam, RAGGED_EXTRA)
    assert d["ragged"] == 3 and d["rows"][0] > 1, d
    for extra in (RAGGED_EXTRA, 0):
        data = te.placeholder((1, c // v, h * h, v), name="data")
        wd = te.placeholder((c // v, 3, 3, v), name="wd")
        bd = te.placeholder((c // v, v), name="bd")
        wp = te.placeholder((o_c // v, c // v, v, v), name="wp")
        bp = te.placeholder((o_c // v, v), name="bp")
        out = dw_pointwise_te(data, wd, bd, ("relu",), h, h, 1, (1, 1, 1, 1), wp, bp, ("relu",), extra)
        mod = tvm.IRModule({"main": te.create_prim_func([data, wd, bd, wp, bp, out])})
        sch = Schedule(mod)
        block = sch.get_sblock("conv_pw")
        bands = {"rows": [2, h // 2], "p": [h // 2 * h // d["p"][1], d["p"][1]]}  # (p: unused, but must fit)
        scheduler("cpu", RULE_DWPW)(sch, block, {**d, **bands} if not extra else d)
        func = sch.mod["main"]
        masked = {name: [not isinstance(p, tvm.tirx.IntImm) for p in _predicates(func, name)]
                  for name in ("conv_pw_update", "conv_dw_update", "epilogue_1")}
        assert all(len(m) == 1 for m in masked.values()), masked
        assert masked["epilogue_1"] == [True]
        assert masked["conv_pw_update"] == [not extra] and masked["conv_dw_update"] == [not extra], (extra, masked)


@pytest.mark.parametrize("extra", [RAGGED_EXTRA, 0])
def test_dw_pointwise_avx2_knobs_use_twelve_accumulators(extra):
    """On AVX2 every fused layer of 1.0/224 gets a 12-accumulator tile where the convs run past the
    map's end (as lowered for AVX2): exact where the positions divide by 3 or 6 (resolution 192),
    else ragged, in bands of rows of at most RAGGED_POSITIONS. Without that only a whole map of at
    most 28x28 is ragged; the larger maps take two bands of rows with a 4x2 tile. The tile's loop
    order fits 16 registers."""
    fam = family_for(tvm.target.Target({"kind": "llvm", "mcpu": "znver2", "num-cores": 2}), 256)
    assert fam.vector_bits == 256 and fam.num_regs == 16
    for c, o_c, ho in [(32, 64, 112), (64, 128, 56), (128, 128, 56), (128, 256, 28), (256, 256, 28),
                       (256, 512, 14), (512, 512, 14), (512, 1024, 7), (1024, 1024, 7), (512, 512, 12),
                       (384, 384, 14), (768, 768, 7)]:
        d = dw_pointwise_knobs(o_c // 8, ho, ho, c // 8, 8, fam, extra)
        o_t, rows, pos = d["ob"][2], d["rows"][1], d["rows"][1] * ho
        p_t = d["ragged"] or d["p"][1]
        assert d["rows"][0] * rows == ho and d["ob"][0] * d["ob"][1] * o_t == o_c // 8
        assert d["p"][0] * d["p"][1] == pos  # the "p" knob stays a valid tile when unused
        assert (ho // rows) * d["ob"][0] % 2 == 0, d
        if extra or ho <= 28:
            assert o_t * p_t == 12, (c, o_c, ho, d)
            assert (d["ragged"] != 0) == (pos % p_t != 0) and (d["ragged"] == 0 or rows == ho or extra), d
            assert d["ragged"] == 0 or pos <= RAGGED_POSITIONS
        else:
            assert (o_t, p_t, d["ragged"]) == (4, 2, 0) and pos <= 128, d
        regs = o_t * p_t + 1 + (o_t if inner_positions_outside(o_t, p_t, 8) else p_t)
        assert regs <= 16, d
    # alpha 0.25 / 0.5 at 128 / 224: a ragged tile keeps both threads busy with two panels or more
    # per group; without the extra positions 64 output channels (a whole map in two groups of one
    # panel) stay in bands
    for c, o_c, ho in [(16, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16), (32, 64, 28), (64, 64, 32),
                       (64, 128, 8), (128, 128, 16)]:
        d = dw_pointwise_knobs(o_c // 8, ho, ho, c // 8, 8, fam, extra)
        if d["ragged"]:
            assert d["rows"][0] * d["ob"][0] % 2 == 0 and d["ob"][1] >= 2, (c, o_c, ho, d)
            assert extra or d["rows"] == [1, ho], (c, o_c, ho, d)
        assert o_c > 64 or extra or not d["ragged"], (c, o_c, ho, d)
    assert inner_positions_outside(2, 6, 8) and inner_positions_outside(3, 4, 8)
    assert not inner_positions_outside(4, 3, 8) and not inner_positions_outside(2, 5, 8)
    # 32 zmm: 3x8 needs 33 channels-outside, 28 positions-outside; 4x6 fits channels-outside (31)
    assert inner_positions_outside(3, 8, 16) and not inner_positions_outside(4, 6, 16)
    assert not inner_positions_outside(4, 4, 4)  # 4 lanes (NEON): the order never changes


def test_dw_pointwise_default_knobs_read_large_weights_once():
    """Pointwise weights larger than a core's L2 (the 1024-channel layers: 2-4 MB) are read by one
    band of rows, split into output-channel groups among the threads; small weights are not
    split (a group computes the depthwise rows again). 6x6 maps (resolution 192) get a 4x6
    register tile."""
    fam = family_for(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}), 512)
    for c, o_c, ho in [(512, 1024, 7), (1024, 1024, 7), (1024, 1024, 6), (768, 768, 6), (1024, 1024, 4)]:
        assert c * o_c * 4 > 1 << 20
        d = dw_pointwise_knobs(o_c // 16, ho, ho, c // 16, 16, fam)
        assert d["rows"] == [1, ho] and d["ob"][0] == 2, (c, o_c, ho, d)
    for c, o_c, ho in [(128, 128, 56), (256, 256, 28), (512, 512, 14), (256, 256, 6)]:
        d = dw_pointwise_knobs(o_c // 16, ho, ho, c // 16, 16, fam)
        assert d["ob"][0] == 1 and d["rows"][0] % 2 == 0, (c, o_c, ho, d)
    d = dw_pointwise_knobs(64, 6, 6, 64, 16, fam)
    assert (d["ob"][2], d["p"][1]) == (4, 6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("extra,h", [(0, 10), (STEM_EXTRA, 10), (STEM_EXTRA, 26)])
def test_stem(seed, extra, h):
    check_stem(_by_seed(seed), 16, 32, atol=1e-4, extra=extra, h=h)


def _avx2_defaults(tensors, block, rule):
    return default_schedule(tvm.IRModule({"main": te.create_prim_func(tensors)}), TARGET, 256).mod


@pytest.mark.parametrize("o", [32, 24, 16, 8])
def test_stem_avx2_defaults(o):
    """The padded stem at AVX2's defaults against numpy: 12 accumulators whatever the stem's width
    (4x3, 3x4, 2x6, 1x12 channel vectors x positions), over positions across rows (13x13 output:
    no row is a multiple of the tile), in tasks of whole rows shared evenly by the target's cores."""
    fam = family_for(TARGET, 256)
    for ho in (112, 96, 80, 64, 13):
        d = stem_flat_knobs(o // 8, ho, ho, fam)
        assert d["ob"] == [1, o // 8] and d["ob"][1] * d["ragged"] == 12, d
        rows = d["rows"][1]
        assert d["rows"][0] * rows == ho and rows <= 16
        assert ho == 13 or (ho // rows) % fam.cores == 0, (ho, d)
    check_stem(_avx2_defaults, 8, o, atol=1e-4, extra=STEM_EXTRA, h=26)


def _loads_under_test(func, name):
    """The if_then_else expressions in the bodies of the blocks called ``name`` of a PrimFunc."""
    found = []

    def expr(e):
        if isinstance(e, tvm.ir.expr.Call) and str(getattr(e.op, "name", "")).endswith("if_then_else"):
            found.append(e)
        for c in [*getattr(e, "args", []), getattr(e, "a", None), getattr(e, "b", None),
                  getattr(e, "value", None)]:
            if isinstance(c, tvm.ir.expr.Expr):
                expr(c)

    def visit(node, inside):
        if isinstance(node, tvm.s_tir.SBlockRealize):
            inside = node.block.name_hint == name
        if inside and isinstance(node, tvm.tirx.BufferStore):
            expr(node.value)
        for c in getattr(node, "seq", None) or []:
            visit(c, inside)
        for field in ("body", "block", "init"):
            if getattr(node, field, None) is not None:
                visit(getattr(node, field), inside)

    visit(func.body, False)
    return found


def test_padded_stem_taps_have_no_bounds_test():
    """The lowering gives AVX2's stem the padded copy (and no other family's): its taps then read with
    no bounds test, the copy alone tests the padding; the row-tiled stem tests it in its taps."""
    assert stem_extra_positions(family_for(TARGET, 256)) == STEM_EXTRA > 0
    assert stem_extra_positions(family_for(TARGET, 512)) == 0
    for extra in (STEM_EXTRA, 0):
        data = te.placeholder((1, 3, 32, 32), name="data")
        wt = te.placeholder((4, 3, 3, 3, 8), name="w")
        b = te.placeholder((4, 8), name="b")
        out = stem_te(data, wt, b, ("relu",), 2, (1, 1, 1, 1), extra)
        mod = tvm.IRModule({"main": te.create_prim_func([data, wt, b, out])})
        func = default_schedule(mod, TARGET, 256).mod["main"]
        tests = _loads_under_test(func, "conv_stem_update")
        assert (len(tests) == 0) == bool(extra), (extra, len(tests))
        assert (len(_loads_under_test(func, "stem_pad")) > 0) == bool(extra)


def _with_bias_init(seed):
    """Schedule ``tensors`` after :func:`bias_into_init` (the AVX2 defaults, or random knobs)."""
    def schedule(tensors, block, rule):
        func = bias_into_init(te.create_prim_func(tensors))
        assert func.attrs is not None and "mntvm_bias_init" in func.attrs
        mod = tvm.IRModule({"main": func})
        if seed is None:
            return default_schedule(mod, TARGET, 256).mod
        sch = Schedule(mod, seed=seed)
        scheduler("cpu", rule)(sch, sch.get_sblock(block), None)
        return sch.mod
    return schedule


@pytest.mark.parametrize("seed", [None, 1])
def test_bias_into_init(seed):
    """Each conv template with its bias moved into the start of its sum against numpy (biases drawn
    from N(0, 1): a lost or doubled bias is far outside the tolerance): fused depthwise + pointwise
    (both convs), pointwise, depthwise, the padded stem."""
    schedule = _with_bias_init(seed)
    check_dw_pointwise(schedule, 8, 32, 64, 1, 7, atol=1e-4, extra=RAGGED_EXTRA)
    check_pointwise(schedule, 8, 16, 24, 6, atol=1e-4)
    check_depthwise(schedule, 8, 16, 2, 8, atol=1e-4)
    check_stem(schedule, 8, 32, atol=1e-4, extra=STEM_EXTRA, h=26)


def test_bias_into_init_with_weight_prefetch():
    """The fused template's weight prefetch (knob ``prefetch``) still finds the weight panel when the
    pointwise sum also reads its bias (it took the bias for the weights: no prefetch, or a failed build)."""
    fam = family_for(TARGET, 256)

    def schedule(tensors, block, rule):
        sch = Schedule(tvm.IRModule({"main": bias_into_init(te.create_prim_func(tensors))}))
        d = {**dw_pointwise_knobs(8, 7, 7, 4, 8, fam, RAGGED_EXTRA), "prefetch": 1}
        scheduler("cpu", RULE_DWPW)(sch, sch.get_sblock(block), d)
        assert "prefetch(" in prefetch.inject(sch.mod).script()  # the prefetches were injected
        return sch.mod

    check_dw_pointwise(schedule, 8, 32, 64, 1, 7, atol=1e-4, extra=RAGGED_EXTRA)


def test_bias_into_init_rewrites_the_avx2_workloads_only():
    """The AVX2 lowering starts every conv's sum from its bias and its epilogues add none; the
    AVX-512 lowering's PrimFuncs are untouched (their tuned logs keep matching). A second rewrite
    changes nothing."""
    from mntvm.model.inference import inference_module
    from mntvm.model.network import MobileNetConfig
    from mntvm.model.weights import random_weights

    cfg = MobileNetConfig(alpha=0.25, resolution=32, num_classes=10)
    mod = inference_module(cfg, random_weights(cfg, 0))
    assert ragged_workloads(family_for(TARGET, 256)) and not ragged_workloads(family_for(TARGET, 512))
    for bits, rewritten in ((256, True), (512, False)):
        low = lower_blocked(mod, TARGET, bits, fuse_dw=True)
        convs = {n: f for n, f in tunable_tasks(low).items() if n.startswith(("mntvm_conv", "mntvm_dwpw"))}
        assert convs
        for name, f in convs.items():
            assert (f.attrs is not None and "mntvm_bias_init" in f.attrs) == rewritten, (bits, name)
            if rewritten:
                assert bias_into_init(f).same_as(f)
                epis = [b for b in all_blocks(f) if b.init is None and b.name_hint.startswith("epilogue")]
                assert epis and all(not any(len(r.source.shape) == 2 for r in b.reads) for b in epis), name
                inits = [b for b in all_blocks(f) if b.init is not None]
                assert inits and all(isinstance(b.init.value, tvm.ir.expr.TensorLoad) for b in inits), name



@pytest.mark.parametrize("seed", SEEDS)
def test_dense_and_pool(seed):
    # the pool has no knobs at its defaults: seed 7 samples its vector split
    def schedule(tensors, block, rule):
        return _schedule(tensors, block, rule, seed=7 if seed is None and rule == RULE_POOL else seed)

    check_dense_and_pool(schedule, 16, 64, 37, 40, atol=1e-4)  # 40 channels: 3 blocks of 16, 8 padded


def test_dense_avx2_defaults():
    """AVX2's FC default keeps several output blocks in flight for 1000 classes (125 blocks of 8,
    whose only divisors are powers of 5), and computes the FC right at it."""
    fam = family_for(TARGET, 256)
    t = fam.dense(125, 1024, 8, fam.num_regs)["nb"]
    assert t[0] * t[1] == 125 and 1 < t[1] <= 12, t

    def schedule(tensors, block, rule):
        return default_schedule(tvm.IRModule({"main": te.create_prim_func(tensors)}), TARGET, 256).mod

    check_dense_and_pool(schedule, 8, 64, 1000, 40, atol=1e-4)


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_net():
    from mntvm.model.inference import inference_module
    from mntvm.model.network import MobileNetConfig
    from mntvm.model.weights import random_weights

    # alpha 0.25: 8-channel stem / first block -> exercises the channel padding to V=16
    cfg = MobileNetConfig(alpha=0.25, resolution=64, num_classes=10)
    w = random_weights(cfg, 0)
    return cfg, w, inference_module(cfg, w)


def _kernel_names(mod):
    call_tir = tvm.ir.Op.get("relax.call_tir")
    out = []
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            if isinstance(b.value, relax.Call) and b.value.op.same_as(call_tir):
                out.append(b.value.args[0].name_hint)
    return out


@pytest.mark.parametrize("vector_bits,fuse_dw", [(512, False), (256, False), (512, True), (256, True)])
def test_lower_cpu_network(small_net, vector_bits, fuse_dw):
    from mntvm.model import reference

    cfg, w, mod = small_net
    low = lower_blocked(mod, TARGET, vector_bits, fuse_dw=fuse_dw)
    names = _kernel_names(low)
    # stem, 13 x (dw, pw) or 13 x dwpw, pool, (reshape), fc, softmax -- nothing else, no layout transforms
    assert sum(n.startswith("mntvm_conv") for n in names) == 1
    assert sum(n.startswith("mntvm_dwpw") for n in names) == (13 if fuse_dw else 0)
    assert sum(n.startswith("mntvm_dw") and not n.startswith("mntvm_dwpw") for n in names) == (0 if fuse_dw else 13)
    assert sum(n.startswith("mntvm_pw") for n in names) == (0 if fuse_dw else 13)
    assert not any("unblock" in n or "layout" in n or "conv2d" in n for n in names), names
    assert len(tunable_tasks(low)) >= 5
    sched = apply_default_schedules(low, TARGET, vector_bits)
    ex = tvm.compile(sched, target=TARGET)
    vm = relax.VirtualMachine(ex, DEV)
    x = np.random.RandomState(5).rand(*cfg.input_shape).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x, DEV)).numpy()
    ref = reference.forward(cfg, w, x)
    assert np.abs(got - ref).max() <= 1e-5


def test_blocked_output_is_unblocked():
    """A conv whose blocked result leaves the function is converted back to NCHW (mntvm_unblock)."""

    rng = np.random.RandomState(7)
    x = rng.rand(1, 24, 6, 6).astype("float32")
    wt = rng.rand(40, 24, 1, 1).astype("float32") - 0.5
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(xv, relax.const(wt)))
            y = bb.emit(relax.op.nn.relu(y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    low = lower_blocked(bb.get(), TARGET, 512)
    names = _kernel_names(low)
    assert names == ["mntvm_conv", "mntvm_unblock"], names  # conv from plain NCHW: the stem template
    ex = tvm.compile(apply_default_schedules(low, TARGET, 512), target=TARGET)
    got = relax.VirtualMachine(ex, DEV)["main"](tvm.runtime.tensor(x, DEV)).numpy()
    ref = np.maximum(np.einsum("oc,nchw->nohw", wt[:, :, 0, 0], x), 0)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_tune_one_task_and_apply(small_net, tmp_path):
    """One task tuned through the product's tuner (mntvm.tuning.tune_funcs), its record applied
    through the product's database, the rest on defaults: still numerically the network."""
    from mntvm.model import reference
    from mntvm.targets.profiles import get_profile
    from mntvm.tuning import open_schedules, tune_funcs

    cfg, w, mod = small_net
    profile = get_profile("x86")
    target = profile.tvm_target()
    low = lower_blocked(mod, target, profile.vector_bits, fuse_dw=True)
    tasks = tunable_tasks(low)
    name = sorted(n for n in tasks if n.startswith("mntvm_dwpw"))[-1]  # the fused template's knobs sampled
    tune_funcs({name: tasks[name]}, profile, tmp_path / "db", trials=4, chunk=4, progress=False)
    assert (tmp_path / "db" / "database_tuning_record.json").stat().st_size > 0
    from_db, covered = open_schedules(tmp_path / "db", profile).apply(low, target)
    tuned = apply_default_schedules(from_db, target, profile.vector_bits)
    assert covered == [name]  # the record came from the database, the rest from our defaults
    assert "tirx.is_scheduled" in tuned[name].attrs
    assert tuned[name].same_as(from_db[name]) and not from_db[name].same_as(low[name])
    ex = tvm.compile(tuned, target=target)
    vm = relax.VirtualMachine(ex, DEV)
    x = np.random.RandomState(6).rand(*cfg.input_shape).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x, DEV)).numpy()
    assert np.abs(got - reference.forward(cfg, w, x)).max() <= 1e-5


def test_importing_any_templates_module_registers_every_rule():
    """Each rule is registered where it is defined, and the package imports them all: a fresh
    process that imports only the registry finds every rule for CPU and CUDA targets."""
    import subprocess
    import sys

    code = ("import tvm\nfrom mntvm.templates.registry import RULE_DWPW, RULES\n"
            "rules = [f'{k}.{r}' for k in ('cpu', 'cuda') for r in RULES] + [f'cpu.{RULE_DWPW}']\n"
            "print(sorted(r for r in rules\n"
            "             if tvm.get_global_func(f's_tir.meta_schedule.{r}', allow_missing=True) is None))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr
