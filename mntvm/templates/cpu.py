"""CPU conv templates for MobileNetV1: blocked-layout TE computes, MetaSchedule rules, lowering.

Layout
------
Every activation between the stem and the pooling is kept in one blocked layout,
``(N, C/V, H*W, V)`` ("NCPc"): channels in blocks of ``V`` (the vector width in fp32 lanes:
16 on AVX-512, 8 on AVX2, 4 on NEON), spatial H and W flattened into one axis ``P`` (the
pointwise kernels tile it directly; depthwise kernels split it back into rows and columns).
Channel counts that are not a multiple of ``V`` are zero-padded (zero weights and bias, so
the padded channels stay 0 through ReLU/ReLU6 and the depthwise layers). The stem reads the
NCHW input directly and the global pooling writes NCHW ``(N, C, 1, 1)``: there is no layout
transform anywhere in the network. Weights are re-packed with numpy at compile time and bound
as constants:

* stem conv (groups=1, any kernel): ``(O/V, C, KH, KW, V)``
* depthwise: ``(C/V, KH, KW, V)``
* pointwise 1x1: ``(O/V, I/V, V_i, V_o)``
* FC (``matmul`` with a constant ``(K, N)`` weight): ``(N/V, K, V)``

Every template is a ``te.compute`` reduction block (carrying ``schedule_rule``) followed by one
epilogue block (``+bias``, activation; for the FC the un-padding as well).

Rules (MetaSchedule custom rules, registered as ``s_tir.meta_schedule.cpu.<name>``)
----------------------------------------------------------------------------------
``mntvm_pw``, ``mntvm_dw``, ``mntvm_stem``, ``mntvm_dense``, ``mntvm_pool``. Each rule is a
function ``(sch, block, decisions=None)``: tunable knobs come from ``sch.sample_perfect_tile`` /
``sch.sample_categorical``; passing ``decisions`` (a dict, see ``sched_x86``/``sched_arm``)
replays them at fixed values, which is how the defaults are applied without any tuning.

Public entry points
-------------------
``lower_cpu(mod, target, vector_bits)``
    Relax MobileNet (after BN folding, weights bound as constants) -> module of ``call_tir``s:
    ``mntvm_conv`` (stem), 13 x (``mntvm_dw*``, ``mntvm_pw*``), ``mntvm_pool``, a reshape,
    ``mntvm_dense`` and TOPI's softmax. A Relax rewrite (``_Lowerer``, a PyExprMutator) matches
    ``conv2d -> add(const bias) -> clip/relu`` chains, ``mean``/global ``avg_pool2d`` and
    ``matmul(x, permute_dims(const))`` (+ bias) and emits our computes with ``bb.call_te``;
    anything else goes through ``LegalizeOps`` as usual (if such an op consumes a blocked value,
    an ``unblock`` kernel is inserted for it). Then AnnotateTIROpPattern, FoldConstant,
    FuseOps, FuseTIR, DeadCodeElimination.
``apply_default_schedules(mod, target, vector_bits=None)``
    Schedules every PrimFunc carrying one of our rules at the family's default knobs (no
    tuning); functions already scheduled (``tirx.is_scheduled``, e.g. from a database) are left
    alone; other PrimFuncs (softmax, reshape) get a small generic schedule or none.
``tunable_tasks(mod)`` / ``tune_tasks(funcs, target, work_dir, trials)`` / ``apply_records`` /
``apply_database(mod, db, target)``
    MetaSchedule over our knobs. ``tune_tasks`` runs ``ms.tune_tir`` with ``tune_space()`` (a
    PostOrderApply with only ``ApplyCustomRule``, postproc ``DisallowDynamicLoop`` (and
    ``VerifyGPUCode`` for CUDA), mutator ``MutateTileSize``), a LocalBuilder whose ``f_build`` is plain ``tvm.compile`` and a
    LocalRunner; the JSON database lands in ``work_dir``. ``apply_database`` runs
    ``relax.transform.MetaScheduleApplyDatabase`` on the *lowered* module (its PrimFuncs are the
    task workloads, so records match: ``apply_records``) and then ``apply_default_schedules``
    for the rest. ``mntvm tune`` (:mod:`mntvm.tune`) drives the same space and builder.

Build
-----
::

    target = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2})
    mod = lower_cpu(mod, target, vector_bits=512)     # 256 for AVX2, 128 for NEON
    mod = apply_default_schedules(mod, target)         # or apply_database(mod, db, target)
    ex = tvm.compile(mod, target=target)               # default relax_pipeline is fine: its
                                                       # LegalizeOps finds nothing left, and
                                                       # RewriteDataflowReshape turns the reshape
                                                       # into a view
    vm = relax.VirtualMachine(ex, tvm.cpu())

Do not pass ``relax_pipeline="zero"`` (it would re-run FuseOps/FuseTIR, harmless, but pointless).

Threads: the TVM runtime pool reads ``TVM_NUM_THREADS`` at start-up; at run time
``set_num_threads(n)`` (``runtime.config_threadpool(0, n)``) resizes it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.s_tir import Schedule

RULE_PW = "mntvm_pw"
RULE_DW = "mntvm_dw"
RULE_STEM = "mntvm_stem"
RULE_DENSE = "mntvm_dense"
RULE_POOL = "mntvm_pool"
RULES = (RULE_PW, RULE_DW, RULE_STEM, RULE_DENSE, RULE_POOL)


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def largest_divisor_le(n: int, bound: int) -> int:
    return max(d for d in divisors(n) if d <= max(1, bound))


@dataclasses.dataclass(frozen=True)
class FamilyKnobs:
    """Per-ISA-family vector width and default-knob functions (see sched_x86 / sched_arm)."""

    name: str
    vector_bits: int
    num_regs: int
    pw: Callable  # (ob, p, ib, vec, num_regs) -> decisions
    dw: Callable  # (cb, ho, wo, vec, num_regs) -> decisions
    stem: Callable  # (ob, ho, wo, vec, num_regs) -> decisions
    dense: Callable  # (nb, k, vec, num_regs) -> decisions

    @property
    def vec(self) -> int:
        return self.vector_bits // 32


def family_for(target: tvm.target.Target, vector_bits: int | None = None) -> FamilyKnobs:
    """Pick the knob family from the target (x86 vs arm) and the vector width."""
    from mntvm.templates import arm as sched_arm
    from mntvm.templates import x86 as sched_x86

    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    attrs = target.attrs
    triple = str(attrs.get("mtriple", "")) if "mtriple" in attrs else ""
    mcpu = str(attrs.get("mcpu", "")) if "mcpu" in attrs else ""
    is_arm = any(k in triple for k in ("aarch64", "arm")) or "cortex" in mcpu or target.kind.name != "llvm"
    if vector_bits is None:
        vector_bits = 128 if is_arm else 512
    if is_arm:
        fam = sched_arm.NEON
    else:
        fam = sched_x86.AVX512 if vector_bits >= 512 else sched_x86.AVX2
    if fam.vector_bits != vector_bits:
        fam = dataclasses.replace(fam, vector_bits=vector_bits)
    return fam


def _act(kind: str | None, x, dtype, lo=None, hi=None):
    if kind is None:
        return x
    if kind == "relu":
        return tvm.te.max(x, tirx.const(0.0, dtype))
    if kind == "clip":
        return tvm.te.min(tvm.te.max(x, tirx.const(lo, dtype)), tirx.const(hi, dtype))
    raise ValueError(kind)


def _epilogue(conv, bias, act, bias_index):
    def f(*idx):
        v = conv(*idx)
        if bias is not None:
            v = v + bias[bias_index(idx)]
        return _act(act[0] if act else None, v, conv.dtype, *(act[1:] if act else ()))

    return te.compute(conv.shape, f, name="epilogue")


# ----------------------------------------------------------------------------------------------
# TE compute definitions (blocked layout (N, C/V, P, V))
# ----------------------------------------------------------------------------------------------
def pointwise_te(data, weight, bias=None, act=None):
    """1x1 conv, stride 1. data (N, IB, P, V), weight (OB, IB, V, V), bias (OB, V)."""
    n_, ib_, p_, v_ = data.shape
    ob_ = weight.shape[0]
    ib = te.reduce_axis((0, ib_), "ib")
    vi = te.reduce_axis((0, v_), "vi")
    conv = te.compute(
        (n_, ob_, p_, v_),
        lambda n, ob, p, vo: te.sum(data[n, ib, p, vi] * weight[ob, ib, vi, vo], axis=[ib, vi]),
        name="conv_pw",
        attrs={"schedule_rule": RULE_PW},
    )
    return _epilogue(conv, bias, act, lambda i: (i[1], i[3]))


def _window(h, w, kh_, kw_, stride, pad):
    """(ho, wo, tap) of a strided, zero-padded KHxKW window; ``tap(p, kh, kw)`` gives the input row,
    column and whether it is inside the image for output position ``p`` (= row * wo + col)."""
    pt, pl, pb, pr = pad
    ho = (h + pt + pb - kh_) // stride + 1
    wo = (w + pl + pr - kw_) // stride + 1

    def tap(p, kh, kw):
        ih = (p // wo) * stride + kh - pt
        iw = (p % wo) * stride + kw - pl
        return ih, iw, tirx.all(ih >= 0, ih < h, iw >= 0, iw < w)

    return ho, wo, tap


def depthwise_te(data, weight, bias, act, h, w, stride, pad):
    """Depthwise KHxKW conv. data (N, CB, H*W, V), weight (CB, KH, KW, V); pad = (top, left)."""
    n_, cb_, _, v_ = data.shape
    _, kh_, kw_, _ = weight.shape
    ho, wo, tap = _window(h, w, kh_, kw_, stride, pad)
    kh = te.reduce_axis((0, kh_), "kh")
    kw = te.reduce_axis((0, kw_), "kw")

    def f(n, cb, p, v):
        ih, iw, inside = tap(p, kh, kw)
        x = tirx.if_then_else(inside, data[n, cb, ih * w + iw, v], tirx.const(0.0, data.dtype))
        return te.sum(x * weight[cb, kh, kw, v], axis=[kh, kw])

    conv = te.compute((n_, cb_, ho * wo, v_), f, name="conv_dw",
                      attrs={"schedule_rule": RULE_DW, "mntvm_wo": wo})
    return _epilogue(conv, bias, act, lambda i: (i[1], i[3]))


def stem_te(data, weight, bias, act, stride, pad):
    """groups=1 conv from plain NCHW input. data (N, C, H, W), weight (OB, C, KH, KW, V)."""
    n_, c_, h, w = (int(x) for x in data.shape)
    ob_, _, kh_, kw_, v_ = (int(x) for x in weight.shape)
    ho, wo, tap = _window(h, w, kh_, kw_, stride, pad)
    c = te.reduce_axis((0, c_), "c")
    kh = te.reduce_axis((0, kh_), "kh")
    kw = te.reduce_axis((0, kw_), "kw")

    def f(n, ob, p, v):
        ih, iw, inside = tap(p, kh, kw)
        x = tirx.if_then_else(inside, data[n, c, ih, iw], tirx.const(0.0, data.dtype))
        return te.sum(x * weight[ob, c, kh, kw, v], axis=[c, kh, kw])

    conv = te.compute((n_, ob_, ho * wo, v_), f, name="conv_stem",
                      attrs={"schedule_rule": RULE_STEM, "mntvm_wo": wo})
    return _epilogue(conv, bias, act, lambda i: (i[1], i[3]))


def dense_te(data, weight, bias, n_out):
    """FC. data (N, K), weight (NB, K, V), bias (n_out,) -> (N, n_out)."""
    n_, k_ = data.shape
    nb_, _, v_ = weight.shape
    k = te.reduce_axis((0, k_), "k")
    acc = te.compute((n_, nb_, v_), lambda n, nb, v: te.sum(data[n, k] * weight[nb, k, v], axis=k),
                     name="dense", attrs={"schedule_rule": RULE_DENSE})
    v = int(v_)

    def f(n, j):
        x = acc[n, j // v, j % v]
        return x + bias[j] if bias is not None else x

    return te.compute((n_, n_out), f, name="epilogue")


def pool_te(data, c_out):
    """Global average pool of (N, CB, P, V) -> NCHW (N, c_out, 1, 1)."""
    n_, _, p_, v_ = data.shape
    v = int(v_)
    p = te.reduce_axis((0, p_), "p")
    s = te.compute((n_, c_out), lambda n, c: te.sum(data[n, c // v, p, c % v], axis=p),
                   name="pool_sum", attrs={"schedule_rule": RULE_POOL})
    inv = 1.0 / float(int(p_))
    return te.compute((n_, c_out, 1, 1), lambda n, c, i, j: s[n, c] * tirx.const(inv, data.dtype),
                      name="epilogue")


def unblock_te(data, c, h, w):
    """(N, CB, H*W, V) -> NCHW (N, c, h, w): only for consumers we do not lower ourselves."""
    v = int(data.shape[3])
    return te.compute((data.shape[0], c, h, w),
                      lambda n, ci, y, x: data[n, ci // v, y * w + x, ci % v], name="unblock")


def block_te(data, v):
    """NCHW (N, C, H, W) -> (N, ceil(C/V), H*W, V), zero-padded channels."""
    n_, c_, h, w = (int(x) for x in data.shape)
    cb = -(-c_ // v)

    def f(n, b, p, vi):
        ci = b * v + vi
        return tirx.if_then_else(ci < c_, data[n, tirx.min(ci, c_ - 1), p // w, p % w],
                                 tirx.const(0.0, data.dtype))

    return te.compute((n_, cb, h * w, v), f, name="block")


# ----------------------------------------------------------------------------------------------
# schedule rules
# ----------------------------------------------------------------------------------------------
def _single_consumer_epilogue(sch: Schedule, block):
    """Collapse the blocks after ``block`` into one epilogue block and return it.

    Our computes always have exactly one; FuseOps may add injective consumers (which we
    inline into a single epilogue). If there is none, a cache_write block is created.
    """
    consumers = sch.get_consumers(block)
    if len(consumers) == 0:
        return sch.cache_write(block, 0, "global")
    epi = consumers[0]
    while True:
        nxt = sch.get_consumers(epi)
        if len(nxt) != 1:
            break
        sch.compute_inline(epi)  # elementwise producer into its consumer
        epi = nxt[0]
    return epi


def _tile(sch, loop, n, max_inner, d, key):
    dec = d.get(key) if d else None
    return sch.sample_perfect_tile(loop, n=n, max_innermost_factor=max_inner, decision=dec)


def _cat(sch, cands, d, key):
    dec = d.get(key) if d else None
    # the decision is an index into cands
    return sch.sample_categorical(cands, [1.0 / len(cands)] * len(cands),
                                  decision=None if dec is None else cands.index(dec))


def schedule_pointwise(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Register-tiled 1x1 conv: tile (ob_t vectors x p_t positions) accumulators in registers."""
    conv = block
    epi = _single_consumer_epilogue(sch, conv)
    n, ob, p, v = sch.get_loops(epi)[-4:]
    ob0, ob1 = sch.split(ob, _tile(sch, ob, 2, 4, d, "ob"))
    p0, p1, p2 = sch.split(p, _tile(sch, p, 3, 16, d, "p"))
    order = _cat(sch, [0, 1], d, "order")
    # sample_categorical returns an ExprRV; its value is known at this point of the trace
    if int(sch.get(order)) == 0:
        sch.reorder(n, ob0, p0, p1, ob1, p2, v)
    else:
        sch.reorder(n, p0, ob0, p1, ob1, p2, v)
    outer = sch.get_loops(epi)[-7:-4]
    fused = sch.fuse(*outer)
    sch.parallel(fused)
    sch.compute_at(conv, p1, preserve_unit_loops=True)
    sch.vectorize(v)
    sch.unroll(p2)
    sch.unroll(ob1)
    loops = sch.get_loops(conv)
    c_n, c_ob, c_p, c_v, c_ib, c_vi = loops[-6:]
    sch.reorder(c_ib, c_vi, c_n, c_ob, c_p, c_v)
    sch.set_scope(conv, 0, "local")
    sch.vectorize(c_v)
    sch.unroll(c_p)
    sch.unroll(c_ob)
    sch.unroll(c_n)
    sch.unroll(c_vi)
    sch.decompose_reduction(conv, c_ib)
    return sch


def rows_and_columns(sch: Schedule, conv, wo: int | None = None):
    """The epilogue of a depthwise/stem block (N, C/V, P, V) with its position loop split back
    into rows and columns: its loops ``(n, cb, h, w, v)``. Shared by the CPU and CUDA templates."""
    if wo is None:
        wo = int(sch.get(conv).annotations["mntvm_wo"])
    epi = _single_consumer_epilogue(sch, conv)
    n, cb, p, v = sch.get_loops(epi)[-4:]
    h, w = sch.split(p, [None, wo])
    return n, cb, h, w, v


def _row_tiled(sch: Schedule, conv, d: dict | None, wo: int | None, ch_key: str):
    """Shared outer structure of the depthwise and stem templates: the epilogue's (channel block,
    P) loops become rows × column tiles; ``ch_t`` channel vectors × ``w_t`` columns accumulate in
    registers; the conv is computed there, into registers."""
    n, cb, h, w, v = rows_and_columns(sch, conv, wo)
    cb0, cb1 = sch.split(cb, _tile(sch, cb, 2, 4, d, ch_key))
    w0, w1 = sch.split(w, _tile(sch, w, 2, 16, d, "w"))
    sch.reorder(n, cb0, h, w0, cb1, w1, v)
    sch.parallel(sch.fuse(n, cb0, h))
    sch.compute_at(conv, w0, preserve_unit_loops=True)
    sch.vectorize(v)
    sch.unroll(w1)
    sch.unroll(cb1)
    sch.set_scope(conv, 0, "local")


def taps_outside(sch: Schedule, block, n_reduce: int):
    """Inner loops of a depthwise/stem block (after ``compute_at``): its ``n_reduce`` reduction
    loops (input channels, then the kh x kw taps) moved outside the register tile, the channel
    vector vectorized, tile and taps unrolled, the accumulator's init split off. Returns the
    outermost reduction loop. Shared by the CPU and CUDA templates."""
    loops = sch.get_loops(block)[-(4 + n_reduce):]
    tile, red = loops[:4], loops[4:]
    sch.reorder(*red, *tile)
    sch.vectorize(tile[-1])
    for loop in (*red[-2:], *tile[:-1]):
        sch.unroll(loop)
    sch.decompose_reduction(block, red[0])
    return red[0]


def schedule_depthwise(sch: Schedule, block, d: dict | None = None, wo: int | None = None) -> Schedule:
    """Depthwise: rows x column tiles, w_t output columns (x cb_t channel vectors) accumulate
    in registers, taps unrolled, channels vectorized, padding predicated inline."""
    _row_tiled(sch, block, d, wo, "cb")
    taps_outside(sch, block, 2)
    return sch


def schedule_stem(sch: Schedule, block, d: dict | None = None, wo: int | None = None) -> Schedule:
    """Stem: as depthwise, reducing over input channels and taps (input channels outermost)."""
    _row_tiled(sch, block, d, wo, "ob")
    taps_outside(sch, block, 3)
    return sch


def schedule_dense(sch: Schedule, block, d: dict | None = None) -> Schedule:
    acc = block
    _single_consumer_epilogue(sch, acc)
    n, nb, v, k = sch.get_loops(acc)[-4:]
    nb0, nb1 = sch.split(nb, _tile(sch, nb, 2, 8, d, "nb"))
    sch.reorder(n, nb0, k, nb1, v)
    fused = sch.fuse(n, nb0)
    sch.parallel(fused)
    wb = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(wb, fused, preserve_unit_loops=True)
    sch.vectorize(v)
    sch.unroll(nb1)
    wl = sch.get_loops(wb)
    sch.vectorize(wl[-1])
    sch.decompose_reduction(acc, k)
    # epilogue: (N, n_out), small
    return sch


def schedule_pool(sch: Schedule, block, d: dict | None = None, vec: int | None = None) -> Schedule:
    s = block
    epi = _single_consumer_epilogue(sch, s)
    n, c, p = sch.get_loops(s)[-3:]
    if vec is None:
        vec = 1
    c0, c1 = sch.split(c, [None, vec])
    sch.reorder(n, c0, p, c1)
    fused = sch.fuse(n, c0)
    sch.parallel(fused)
    wb = sch.cache_write(s, 0, "local")
    sch.reverse_compute_at(wb, fused, preserve_unit_loops=True)
    sch.vectorize(c1)
    sch.reverse_compute_at(epi, fused, preserve_unit_loops=True)
    sch.decompose_reduction(s, p)
    return sch


# ----------------------------------------------------------------------------------------------
# registration as MetaSchedule custom rules
# ----------------------------------------------------------------------------------------------
def _pool_vec(sch, block):
    # the vector width is the inner extent of the blocked input's last axis
    buf = sch.get(block).reads[0].source
    return int(buf.shape[-1])


def _register():
    def wrap(fn, extra=None):
        def rule(sch, block):
            if extra is not None:
                fn(sch, block, None, extra(sch, block))
            else:
                fn(sch, block, None)
            return [sch]

        return rule

    table = {
        RULE_PW: wrap(schedule_pointwise),
        RULE_DW: wrap(schedule_depthwise),
        RULE_STEM: wrap(schedule_stem),
        RULE_DENSE: wrap(schedule_dense),
        RULE_POOL: wrap(schedule_pool, _pool_vec),
    }
    for name, fn in table.items():
        tvm.register_global_func(f"s_tir.meta_schedule.cpu.{name}", fn, override=True)


_register()


# ----------------------------------------------------------------------------------------------
# default knobs (no tuning)
# ----------------------------------------------------------------------------------------------
def _shape(buf):
    return [int(x) for x in buf.shape]


def default_decisions(sch: Schedule, block, rule: str, fam: FamilyKnobs) -> dict:
    """The family's default knob values for ``block`` (a block carrying ``rule``)."""
    b = sch.get(block)
    out = _shape(b.writes[0].source)
    if rule == RULE_PW:
        _, ob, p, v = out
        ib = _shape(b.reads[0].source)[1] if len(b.reads) else ob
        for r in b.reads:
            s = _shape(r.source)
            if len(s) == 4 and s[2] == p:
                ib = s[1]
        return fam.pw(ob, p, ib, v, fam.num_regs)
    if rule in (RULE_DW, RULE_STEM):
        _, cb, p, v = out
        wo = int(b.annotations["mntvm_wo"])
        f = fam.dw if rule == RULE_DW else fam.stem
        return f(cb, p // wo, wo, v, fam.num_regs)
    if rule == RULE_DENSE:
        _, nb, v = out
        k = [_shape(r.source) for r in b.reads if len(r.source.shape) == 3][0][1]
        return fam.dense(nb, k, v, fam.num_regs)
    return {}


def _rule_of(block_stmt) -> str | None:
    r = block_stmt.annotations.get("schedule_rule") if block_stmt.annotations else None
    return str(r) if r is not None and str(r) in RULES else None


def _all_blocks(func):
    """The (unscheduled) blocks of ``func`` directly under its root block."""
    sch = Schedule(tvm.IRModule({"main": func}))
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001
        return []
    return [sch.get(b) for b in sch.get_child_blocks(root)]


def schedule_with_rule(sch: Schedule, block_name: str, rule: str, fam: FamilyKnobs | None,
                       decisions: dict | None = None) -> Schedule:
    """Apply ``rule`` to ``block_name`` at ``decisions`` (default: the family's defaults)."""
    block = sch.get_sblock(block_name)
    if decisions is None and fam is not None:
        decisions = default_decisions(sch, block, rule, fam)
    if rule == RULE_PW:
        return schedule_pointwise(sch, block, decisions)
    if rule == RULE_DW:
        return schedule_depthwise(sch, block, decisions)
    if rule == RULE_STEM:
        return schedule_stem(sch, block, decisions)
    if rule == RULE_DENSE:
        return schedule_dense(sch, block, decisions)
    if rule == RULE_POOL:
        return schedule_pool(sch, block, decisions, _pool_vec(sch, block))
    raise ValueError(rule)


def default_schedule(mod: tvm.IRModule, fam: FamilyKnobs) -> Schedule:
    """``mod``'s "main" with every block that carries one of our rules scheduled at the family's
    default knobs. The schedule's trace replays like a tuning record's (``mntvm tune`` seeds each
    task's search with it)."""
    sch = Schedule(mod)
    for b in _all_blocks(mod["main"]):
        rule = _rule_of(b)
        if rule:
            schedule_with_rule(sch, b.name_hint, rule, fam)
    return sch


def _generic_schedule(func: tirx.PrimFunc, target) -> tirx.PrimFunc:
    """Fallback for PrimFuncs without our rule (softmax, reshape, bias adds, ...).

    These are small in MobileNet (softmax over 1000 classes, a reshape): TVM's unscheduled
    lowering is serial and cheap for them. Large elementwise blocks get their loops fused,
    the outer part parallel and the inner part vectorized. (DLight's CPU Reduction rule is not
    used: for softmax it parallelizes the outer 1000 and recomputes max/sum per element.)
    """
    try:
        sch = Schedule(tvm.IRModule({"main": func}))
        root = sch.get_sblock("root")
        for blk in sch.get_child_blocks(root):
            stmt = sch.get(blk)
            if any(int(iv.iter_type) != 0 for iv in stmt.iter_vars):
                continue  # reduction: leave serial
            loops = sch.get_loops(blk)
            if not loops:
                continue
            ext = 1
            for lp in loops:
                ext *= int(sch.get(lp).extent)
            if ext < 4096:
                continue
            fused = sch.fuse(*loops)
            if ext % 16 == 0:
                o, i_ = sch.split(fused, [None, 16])
                sch.vectorize(i_)
                fused = o
            if ext >= 65536:
                sch.parallel(fused)
        return sch.mod["main"]
    except Exception:  # noqa: BLE001 - unscheduled code is still correct
        return func


def _infer_vector_bits(mod: tvm.IRModule) -> int | None:
    """The V that lower_cpu used, read off a blocked (N, C/V, P, V) conv output (V * 32 bits)."""
    for func in mod.functions.values():
        if not isinstance(func, tirx.PrimFunc):
            continue
        for b in _all_blocks(func):
            if _rule_of(b) in (RULE_PW, RULE_DW, RULE_STEM):
                return int(b.writes[0].source.shape[-1]) * 32
    return None


def apply_default_schedules(mod: tvm.IRModule, target, vector_bits: int | None = None) -> tvm.IRModule:
    """Schedule every PrimFunc carrying one of our rules at the family's default knobs."""
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    if vector_bits is None:
        vector_bits = _infer_vector_bits(mod)
    fam = family_for(target, vector_bits)
    mod = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    new = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if func.attrs is not None and ("mntvm_scheduled" in func.attrs or "tirx.is_scheduled" in func.attrs):
            continue  # ours already, or applied from a tuning database
        if any(_rule_of(b) for b in _all_blocks(func)):
            f2 = default_schedule(tvm.IRModule({"main": func}), fam).mod["main"]
        else:
            f2 = _generic_schedule(func, target)
        new[gv] = f2.with_attr("mntvm_scheduled", 1)
    for gv, f in new.items():
        mod[gv] = f
    return mod


def set_num_threads(n: int) -> None:
    """Resize the TVM runtime thread pool (TVM_NUM_THREADS sets it at start-up)."""
    tvm.get_global_func("runtime.config_threadpool")(0, int(n))


# ----------------------------------------------------------------------------------------------
# Relax lowering
# ----------------------------------------------------------------------------------------------
_OP = {}


def _op(name):
    if name not in _OP:
        try:
            _OP[name] = tvm.ir.Op.get(name)
        except Exception:  # noqa: BLE001 - op not registered in this TVM build
            _OP[name] = None
    return _OP[name]


def _is_call(e, name):
    op = _op(name)
    return op is not None and isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.same_as(op)


def _sinfo_shape(e):
    si = e.ty
    return [int(x) for x in si.shape.values]


def _pad_to(n, v):
    return -(-n // v) * v


@dataclasses.dataclass
class _Blocked:
    var: relax.Expr  # new (N, CB, P, V) value
    c: int
    h: int
    w: int
    nchw: relax.Expr | None = None


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, vec: int):
        super().__init__(mod)
        self.mod_ = mod
        self.V = vec
        self.bindings = {}  # var -> value
        self.consumers = {}  # var -> [binding var]
        self.blocked = {}  # old var -> _Blocked
        self.skip = set()  # old vars absorbed into fused ops
        self.fused_end = {}  # head var -> end var

    # -- analysis ------------------------------------------------------------------------------
    def _analyze(self, func):
        body = func.body
        for blk in body.blocks:
            for b in blk.bindings:
                self.bindings[b.var] = b.value
                for fv in relax.analysis.free_vars(b.value):
                    self.consumers.setdefault(fv, []).append(b.var)
        for fv in relax.analysis.free_vars(body.body):
            self.consumers.setdefault(fv, []).append(None)

    def _const(self, e):
        """numpy value of e if it is (a var bound to) a constant, possibly transposed."""
        if isinstance(e, tvm.ir.expr.Constant):
            return e.value.numpy()
        if isinstance(e, relax.Var) and e in self.bindings:
            return self._const(self.bindings[e])
        if _is_call(e, "relax.reshape"):
            a = self._const(e.args[0])
            return None if a is None else a.reshape(_sinfo_shape(e))
        if _is_call(e, "relax.permute_dims"):
            a = self._const(e.args[0])
            if a is None:
                return None
            axes = e.attrs.axes
            return np.transpose(a, None if axes is None else [int(x) for x in axes])
        return None

    def _single_consumer(self, var):
        cons = self.consumers.get(var, [])
        if len(cons) != 1 or cons[0] is None:
            return None
        return cons[0]

    def _epilogue_chain(self, head, c):
        """Follow head -> add(const bias) -> clip/relu; return (end, bias, act, absorbed)."""
        cur, bias, act, absorbed = head, None, None, []
        nxt = self._single_consumer(cur)
        if nxt is not None and _is_call(self.bindings[nxt], "relax.add"):
            a, b = self.bindings[nxt].args
            other = b if a.same_as(cur) else a
            val = self._const(other) if not other.same_as(cur) else None
            if val is not None and val.size == c and (val.ndim <= 1 or val.shape[-1] == c
                                                      or val.shape[1] == c):
                bias = val.reshape(-1).astype("float32")
                absorbed.append(cur)
                cur = nxt
                nxt = self._single_consumer(cur)
        if nxt is not None:
            val = self.bindings[nxt]
            if _is_call(val, "relax.nn.relu"):
                act = ("relu",)
            elif _is_call(val, "relax.clip"):
                lo, hi = (float(x.value.value) if hasattr(x.value, "value") else float(x.value)
                          for x in val.args[1:3])
                act = ("clip", lo, hi)
            elif _is_call(val, "relax.nn.relu6"):
                act = ("clip", 0.0, 6.0)
            if act is not None:
                absorbed.append(cur)
                cur = nxt
        return cur, bias, act, absorbed

    # -- emission helpers ----------------------------------------------------------------------
    def _nchw_of(self, old):
        info = self.blocked[old]
        if info.nchw is None:
            call = self.builder_.call_te(unblock_te, info.var, info.c, info.h, info.w,
                                         primfunc_name_hint="mntvm_unblock")
            info.nchw = self.builder_.emit(call, name_hint=old.name + "_nchw")
        return info.nchw

    def _finish(self, end_var, new_val, c, h, w):
        self.blocked[end_var] = _Blocked(new_val, c, h, w)
        if not isinstance(end_var, relax.DataflowVar):
            out = self.builder_.emit_output(self._nchw_of(end_var), name_hint=end_var.name)
            self.set_var_remap(end_var, out)

    def _vec_bias(self, bias, c):
        V = self.V
        cp = _pad_to(c, V)
        b = np.zeros((cp,), "float32")
        if bias is not None:
            b[:c] = bias
        return relax.const(b.reshape(cp // V, V))

    # -- per-op lowering -----------------------------------------------------------------------
    def _lower_conv(self, binding) -> bool:
        call = binding.value
        x, wexpr = call.args
        a = call.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
            return False
        if any(int(d) != 1 for d in a.dilation):
            return False
        w = self._const(wexpr)
        if w is None:
            return False
        w = w.astype("float32")
        o, ci_g, kh, kw = w.shape
        groups = int(a.groups)
        strides = [int(s) for s in a.strides]
        pad = [int(p) for p in a.padding]
        if len(pad) == 2:
            pad = pad + pad
        V = self.V
        end, bias, act, absorbed = self._epilogue_chain(binding.var, o)
        ob = _pad_to(o, V) // V
        is_blocked = x in self.blocked
        n, c, h, wd = _sinfo_shape(x)
        ho = (h + pad[0] + pad[2] - kh) // strides[0] + 1
        wo = (wd + pad[1] + pad[3] - kw) // strides[1] + 1
        bconst = self._vec_bias(bias, o)
        if groups == 1 and kh == 1 and kw == 1 and strides == [1, 1] and sum(pad) == 0 and is_blocked:
            ib = _pad_to(c, V) // V
            wp = np.zeros((ob * V, ib * V), "float32")
            wp[:o, :c] = w[:, :, 0, 0]
            wp = wp.reshape(ob, V, ib, V).transpose(0, 2, 3, 1).copy()  # (OB, IB, Vi, Vo)
            xin = self.blocked[x].var
            te_call = self.builder_.call_te(lambda d_, w_, b_: pointwise_te(d_, w_, b_, act), xin,
                                            relax.const(wp), bconst, primfunc_name_hint="mntvm_pw")
        elif groups > 1 and groups == c and ci_g == 1 and o == c and is_blocked and strides[0] == strides[1]:
            cb = _pad_to(c, V) // V
            wp = np.zeros((cb * V, kh, kw), "float32")
            wp[:c] = w[:, 0]
            wp = wp.reshape(cb, V, kh, kw).transpose(0, 2, 3, 1).copy()  # (CB, KH, KW, V)
            xin = self.blocked[x].var
            te_call = self.builder_.call_te(
                lambda d_, w_, b_: depthwise_te(d_, w_, b_, act, h, wd, strides[0], pad), xin,
                relax.const(wp), bconst, primfunc_name_hint="mntvm_dw")
        elif groups == 1 and strides[0] == strides[1]:
            xin = self._nchw_of(x) if is_blocked else self.visit_expr(x)
            wp = np.zeros((ob * V, c, kh, kw), "float32")
            wp[:o] = w
            wp = wp.reshape(ob, V, c, kh, kw).transpose(0, 2, 3, 4, 1).copy()  # (OB, C, KH, KW, V)
            te_call = self.builder_.call_te(
                lambda d_, w_, b_: stem_te(d_, w_, b_, act, strides[0], pad), xin,
                relax.const(wp), bconst, primfunc_name_hint="mntvm_conv")
        else:
            return False
        new = self.builder_.emit(te_call, name_hint=end.name)
        self.skip.update(absorbed)
        self.skip.add(end)
        self._finish(end, new, o, ho, wo)
        return True

    def _lower_pool(self, binding) -> bool:
        call = binding.value
        x = call.args[0]
        if x not in self.blocked:
            return False
        info = self.blocked[x]
        keep = True
        if _is_call(call, "relax.mean"):
            axes = sorted(int(i) % 4 for i in call.attrs.axis) if call.attrs.axis is not None else None
            if axes != [2, 3]:
                return False
            keep = bool(call.attrs.keepdims)
        else:  # avg_pool2d
            a = call.attrs
            if str(a.layout) != "NCHW" or [int(p) for p in a.pool_size] != [info.h, info.w] or any(
                    int(p) for p in a.padding):
                return False
        te_call = self.builder_.call_te(pool_te, info.var, info.c, primfunc_name_hint="mntvm_pool")
        new = self.builder_.emit(te_call, name_hint=binding.var.name)
        if not keep:
            new = self.builder_.emit(relax.op.reshape(new, (_sinfo_shape(new)[0], info.c)))
        if isinstance(binding.var, relax.DataflowVar):
            self.set_var_remap(binding.var, new)
        else:
            out = self.builder_.emit_output(new, name_hint=binding.var.name)
            self.set_var_remap(binding.var, out)
        return True

    def _lower_matmul(self, binding) -> bool:
        call = binding.value
        x, wexpr = call.args
        if x in self.blocked:
            return False
        w = self._const(wexpr)
        if w is None or w.ndim != 2 or len(_sinfo_shape(x)) != 2:
            return False
        k, nout = w.shape
        V = self.V
        nb = _pad_to(nout, V) // V
        wp = np.zeros((k, nb * V), "float32")
        wp[:, :nout] = w
        wp = wp.reshape(k, nb, V).transpose(1, 0, 2).copy()  # (NB, K, V)
        end, bias, _ = binding.var, None, None
        nxt = self._single_consumer(binding.var)
        absorbed = []
        if nxt is not None and _is_call(self.bindings[nxt], "relax.add"):
            a, b = self.bindings[nxt].args
            other = b if a.same_as(binding.var) else a
            val = self._const(other)
            if val is not None and val.size == nout:
                bias = val.reshape(-1).astype("float32")
                absorbed.append(binding.var)
                end = nxt
        xin = self.visit_expr(x)
        te_call = self.builder_.call_te(
            lambda d_, w_, b_: dense_te(d_, w_, b_, nout), xin, relax.const(wp),
            relax.const(bias if bias is not None else np.zeros((nout,), "float32")),
            primfunc_name_hint="mntvm_dense")
        if isinstance(end, relax.DataflowVar):
            new = self.builder_.emit(te_call, name_hint=end.name)
        else:
            new = self.builder_.emit_output(te_call, name_hint=end.name)
        self.skip.update(absorbed)
        self.skip.add(end)
        self.set_var_remap(end, new)
        return True

    # -- visitor -------------------------------------------------------------------------------
    def visit_var_binding_(self, binding):
        var, val = binding.var, binding.value
        if var in self.skip:
            return
        if _is_call(val, "relax.nn.conv2d") and self._lower_conv(binding):
            return
        if (_is_call(val, "relax.mean") or _is_call(val, "relax.nn.avg_pool2d")) and self._lower_pool(binding):
            return
        if _is_call(val, "relax.matmul") and self._lower_matmul(binding):
            return
        for fv in relax.analysis.free_vars(val):
            if fv in self.blocked:
                self.set_var_remap(fv, self._nchw_of(fv))
        super().visit_var_binding_(binding)

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions.items():
            if isinstance(func, relax.Function):
                self._analyze(func)
                new = self.visit_expr(func)
                self.builder_.update_func(gv, new)
        return self.builder_.get()


def lower_cpu(mod: tvm.IRModule, target, vector_bits: int) -> tvm.IRModule:
    """Lower a Relax MobileNet to our blocked-layout templates, legalize the rest and fuse.

    Returns a module ready for ``apply_default_schedules`` or MetaSchedule task extraction.
    """
    vec = int(vector_bits) // 32
    mod = relax.transform.Normalize()(mod)
    mod = _Lowerer(mod, vec).transform()
    mod = relax.transform.DeadCodeElimination()(mod)
    seq = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])
    return seq(mod)


def tunable_tasks(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    """The PrimFuncs of a ``lower_cpu`` module that carry one of our rules, by name."""
    out = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and any(_rule_of(b) for b in _all_blocks(func)):
            out[gv.name_hint] = func
    return out
