"""CUDA schedules of our templates, registered as ``s_tir.meta_schedule.cuda.<rule>``.

The network is lowered exactly as for CPUs (:func:`mntvm.templates.lowering.lower_blocked`), with
a channel block of 4 (:data:`VECTOR_BITS` = 128: one float4 per load/store), so its convolutions,
pooling and FC are PrimFuncs carrying our ``schedule_rule`` block attributes. For a CUDA target
those names resolve to the rules here, so that ``mntvm tune`` and plain MetaSchedule tuning
(``ApplyCustomRule``) both use them:

* ``mntvm_pw`` — :func:`schedule_pointwise_gpu`: 1x1 conv as a GEMM, register tile per thread,
  input channels staged through shared memory by all threads (cooperative, float4).
* ``mntvm_dw`` / ``mntvm_stem`` — :func:`schedule_depthwise_gpu` / :func:`schedule_stem_gpu`:
  rows x column tiles per thread block, taps unrolled, float4 channel vectors.
* ``mntvm_dense`` — :func:`schedule_dense_gpu`: rfactor + cross-thread reduction (GEMV).
* ``mntvm_pool`` — :func:`schedule_pool_gpu`.

Each takes ``(sch, block, decisions=None)``; :func:`default_knobs` gives the knob values used
without a log. Kernels without a rule (softmax, reshape) get DLight's rules (:mod:`.gpu`).
"""
from __future__ import annotations

from tvm.s_tir import Schedule

from mntvm.templates.knobs import (buffer_shape, cat, largest_divisor_le, rows_and_columns,
                                   single_consumer_epilogue, split2, taps_outside, tile)
from mntvm.templates.registry import RULE_DENSE, RULE_DW, RULE_POOL, RULE_PW, RULE_STEM, rule

VECTOR_BITS = 128  # the lowering's channel block on GPUs: 4 fp32 = one 16-byte (float4) access


def _unroll(sch, loop, d, key="unroll"):
    """Knob: how far nvcc unrolls the loop nest under ``loop`` (TVM's auto-unroll step)."""
    step = cat(sch, [0, 16, 64, 512], d, key)
    sch.annotate(loop, "pragma_auto_unroll_max_step", step)
    sch.annotate(loop, "pragma_unroll_explicit", 0)


def _fetch_to_shared(sch, block, index, at, ty, tx, vec):
    """Stage read ``index`` of ``block`` in shared memory at loop ``at``; every thread of the
    (``ty`` x ``tx``) block copies ``vec``-wide pieces (cooperative fetch)."""
    sh = sch.cache_read(block, index, "shared")
    sch.compute_at(sh, at, preserve_unit_loops=True)
    loops = sch.get_loops(sh)
    depth = [sch.get(lp).same_as(sch.get(at)) for lp in loops].index(True) + 1
    fused = sch.fuse(*loops[depth:])
    _, y, x, v = sch.split(fused, [None, ty, tx, vec])
    sch.bind(y, "threadIdx.y")
    sch.bind(x, "threadIdx.x")
    sch.vectorize(v)


@rule("cuda", RULE_PW)
def schedule_pointwise_gpu(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """1x1 conv as a GEMM (output channels x positions, reduced over input channels).

    Knobs: a thread accumulates ``ob_r`` channel vectors (4 channels each) x ``p_r`` neighbouring
    positions, times ``p_v`` virtual threads (position tiles a thread block apart, so that
    neighbouring threads touch neighbouring 16-byte vectors); a thread block is ``ob_t`` x
    ``p_t`` threads (threadIdx.y x threadIdx.x); input channels are reduced in chunks of ``k``
    vectors that all threads stage in shared memory (float4 copies); ``unroll``."""
    conv = block
    epi = single_consumer_epilogue(sch, conv)
    n, ob, p, v = sch.get_loops(epi)[-4:]
    ob_hi, ob_r = sch.split(ob, tile(sch, ob, 2, 4, d, "ob_r"))
    ob_f = tile(sch, ob_hi, 2, 16, d, "ob_t")
    ob_b, ob_t = sch.split(ob_hi, ob_f)
    p_hi, p_r = sch.split(p, tile(sch, p, 2, 8, d, "p_r"))
    p_f = tile(sch, p_hi, 2, 64, d, "p_t")
    p_hi, p_t = sch.split(p_hi, p_f)
    p_b, p_v = sch.split(p_hi, tile(sch, p_hi, 2, 4, d, "p_v"))
    sch.reorder(n, ob_b, p_b, p_v, ob_t, p_t, ob_r, p_r, v)
    sch.bind(sch.fuse(n, ob_b, p_b), "blockIdx.x")
    sch.bind(p_v, "vthread.x")
    sch.bind(ob_t, "threadIdx.y")
    sch.bind(p_t, "threadIdx.x")
    sch.compute_at(conv, p_t, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")
    sch.vectorize(v)
    c_n, c_ob, c_p, c_v, c_ib, c_vi = sch.get_loops(conv)[-6:]
    k_o, k_i = sch.split(c_ib, tile(sch, c_ib, 2, 16, d, "k"))
    sch.reorder(k_o, k_i, c_vi, c_n, c_ob, c_p, c_v)
    for index in (0, 1):  # the input tile and the weight panel
        _fetch_to_shared(sch, conv, index, k_o, ob_f[1], p_f[1], 4)
    sch.vectorize(c_v)
    _unroll(sch, k_i, d)
    sch.decompose_reduction(conv, k_o)
    return sch


def _row_tiled_gpu(sch: Schedule, conv, d: dict | None, ch_key: str) -> None:
    """Outer structure of the depthwise and stem templates: a thread computes ``w_r`` output
    columns x one channel vector of one row; a thread block is ``ch_t`` channel vectors
    (threadIdx.y) x ``h_t`` rows x the row's column tiles (threadIdx.x)."""
    n, cb, h, w, v = rows_and_columns(sch, conv)
    cb_b, cb_t = sch.split(cb, tile(sch, cb, 2, 16, d, ch_key))
    h_b, h_t = sch.split(h, tile(sch, h, 2, 16, d, "h_t"))
    w_o, w_r = sch.split(w, tile(sch, w, 2, 8, d, "w_r"))
    sch.reorder(n, cb_b, h_b, cb_t, h_t, w_o, w_r, v)
    sch.bind(sch.fuse(n, cb_b, h_b), "blockIdx.x")
    sch.bind(cb_t, "threadIdx.y")
    tx = sch.fuse(h_t, w_o)
    sch.bind(tx, "threadIdx.x")
    sch.compute_at(conv, tx, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")
    sch.vectorize(v)
    sch.unroll(w_r)


@rule("cuda", RULE_DW)
def schedule_depthwise_gpu(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Depthwise: taps read straight from global memory (L1-cached), float4 channel vectors,
    ``w_r`` columns accumulated in registers, taps unrolled."""
    _row_tiled_gpu(sch, block, d, "cb_t")
    taps_outside(sch, block, 2)
    return sch


@rule("cuda", RULE_STEM)
def schedule_stem_gpu(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Stem: as depthwise, reducing over the input channels (outermost) and the taps."""
    _row_tiled_gpu(sch, block, d, "ob_t")
    _unroll(sch, taps_outside(sch, block, 3), d)
    return sch


@rule("cuda", RULE_DENSE)
def schedule_dense_gpu(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """FC (a GEMV, memory bound): ``k_t`` threads (threadIdx.x) split each output's dot product
    and combine it with a warp/shared-memory reduction; ``nb_t`` output vectors x 4 outputs per
    thread block (threadIdx.y)."""
    acc = block
    epi = single_consumer_epilogue(sch, acc)
    n, nb, v, k = sch.get_loops(acc)[-4:]
    k_o, k_t = sch.split(k, tile(sch, k, 2, 256, d, "k_t"))
    rf = sch.rfactor(k_t, 0)
    n, nb, v, k_t = sch.get_loops(acc)[-4:]
    nb_b, nb_t = sch.split(nb, tile(sch, nb, 2, 8, d, "nb_t"))
    sch.reorder(n, nb_b, nb_t, v, k_t)
    sch.bind(sch.fuse(n, nb_b), "blockIdx.x")
    sch.bind(sch.fuse(nb_t, v), "threadIdx.y")
    sch.bind(k_t, "threadIdx.x")
    sch.compute_at(rf, k_t, preserve_unit_loops=True)
    sch.set_scope(rf, 0, "local")
    _unroll(sch, sch.get_loops(rf)[-1], d)
    sch.decompose_reduction(rf, sch.get_loops(rf)[-1])
    _flat_threads(sch, epi, 128)
    return sch


def _flat_threads(sch: Schedule, block, threads):
    """A spatial block as a flat grid of ``threads``-thread blocks (an int or a sampled factor);
    returns the thread loop."""
    fused = sch.fuse(*sch.get_loops(block))
    bx, tx = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return tx


@rule("cuda", RULE_POOL)
def schedule_pool_gpu(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Global average pool: one thread per channel sums its positions; ``c_t`` threads a block."""
    s = block
    epi = single_consumer_epilogue(sch, s)
    c_f = tile(sch, sch.get_loops(s)[-2], 2, 256, d, "c_t")
    sch.compute_at(s, _flat_threads(sch, epi, c_f[1]), preserve_unit_loops=True)
    sch.set_scope(s, 0, "local")
    sch.decompose_reduction(s, sch.get_loops(s)[-1])
    return sch


def default_knobs(sch: Schedule, block, name: str) -> dict:
    """Knob values used with no log: ~100-128 threads a block, float4 everywhere, a few
    accumulators per thread (decisions of ``sample_perfect_tile`` are the full factor lists)."""
    b = sch.get(block)
    out = buffer_shape(b.writes[0].source)
    if name == RULE_PW:
        _, ob, p, _v = out
        ib = buffer_shape(b.reads[0].source)[1]
        ob_r = 2 if ob % 2 == 0 and ob >= 8 else 1
        p_t = largest_divisor_le(p, 32)
        p_v = largest_divisor_le(p // p_t, 4)
        ob_t = largest_divisor_le(ob // ob_r, min(16, max(1, 128 // p_t)))
        return {"ob_r": split2(ob, ob_r), "ob_t": split2(ob // ob_r, ob_t), "p_r": split2(p, 1),
                "p_t": split2(p, p_t), "p_v": split2(p // p_t, p_v),
                "k": split2(ib, largest_divisor_le(ib, 4)), "unroll": 64}
    if name in (RULE_DW, RULE_STEM):
        _, cb, p, _v = out
        wo = int(b.annotations["mntvm_wo"])
        ho = p // wo
        w_r = largest_divisor_le(wo, 4)
        w_o = wo // w_r
        h_t = largest_divisor_le(ho, max(1, 64 // w_o))
        ch_t = largest_divisor_le(cb, min(16, max(1, 128 // (h_t * w_o))))
        return {"cb_t" if name == RULE_DW else "ob_t": split2(cb, ch_t), "h_t": split2(ho, h_t),
                "w_r": split2(wo, w_r), "unroll": 64}
    if name == RULE_DENSE:
        _, nb, _v = out
        k = [buffer_shape(r.source) for r in b.reads if len(r.source.shape) == 3][0][1]
        k_t = largest_divisor_le(k, 32)
        return {"k_t": split2(k, k_t), "nb_t": split2(nb, largest_divisor_le(nb, 2)), "unroll": 16}
    if name == RULE_POOL:
        c = out[1]
        return {"c_t": split2(c, largest_divisor_le(c, 64))}
    raise ValueError(name)
