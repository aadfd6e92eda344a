"""GPU schedules: our CUDA templates (MetaSchedule custom rules with knobs) and TVM's DLight rules.

CUDA (NVIDIA) — templates
-------------------------
The network is lowered exactly as for CPUs (:func:`mntvm.sched_cpu.lower_cpu`), with a channel
block of 4 (``VECTOR_BITS`` = 128: one float4 per load/store), so its convolutions, pooling and FC
are PrimFuncs carrying our ``schedule_rule`` block attributes. For a CUDA target those names
resolve to the rules here, registered as ``s_tir.meta_schedule.cuda.<rule>``, so that
``mntvm tune`` and plain MetaSchedule tuning (``ApplyCustomRule``) both use them:

* ``mntvm_pw`` — :func:`schedule_pointwise_gpu`: 1x1 conv as a GEMM, register tile per thread,
  input channels staged through shared memory by all threads (cooperative, float4).
* ``mntvm_dw`` / ``mntvm_stem`` — :func:`schedule_depthwise_gpu` / :func:`schedule_stem_gpu`:
  rows x column tiles per thread block, taps unrolled, float4 channel vectors.
* ``mntvm_dense`` — :func:`schedule_dense_gpu`: rfactor + cross-thread reduction (GEMV).
* ``mntvm_pool`` — :func:`schedule_pool_gpu`.

Each takes ``(sch, block, decisions=None)``; :func:`default_decisions` gives the knob values used
without a log (:func:`apply_default_schedules`). Kernels without a rule (softmax, reshape) get
DLight's rules, as below.

OpenCL (Mali, Adreno) and the rest — DLight
--------------------------------------------
TVM 0.27's DLight rules (``tvm.s_tir.dlight``), the same ones TVM's own default GPU pipelines
apply, but applied here so that we know *which* rule scheduled each kernel (recorded in the
artifact metadata):

* generic GPUs (Mali, …): ``gpu.Matmul`` (convolutions become implicit GEMMs), ``gpu.GEMV``,
  ``gpu.Reduction``, ``gpu.GeneralReduction``, ``gpu.Fallback`` (elementwise and depthwise
  kernels: thread-bound loops).
* Adreno (target key ``adreno``): ``adreno.Conv2d``, ``adreno.LayoutTransform``, ``adreno.Pool2D``
  first, then ``gpu.Reduction``, ``gpu.GeneralReduction``, ``gpu.Fallback``.

Public entries:

* :func:`apply_default_schedules` — our CUDA templates at their default knobs on a lowered module.
* :func:`schedule_gpu` — DLight on every unscheduled PrimFunc of a legalized Relax module;
  returns the rule names used.
* :func:`compile_gpu` — the whole GPU build: TVM's default Relax pipeline for the target with our
  recording DLight scheduler in place of ``ApplyDefaultSchedule`` (kernels already scheduled by
  our templates are left alone), then ``tvm.compile``. On a machine with a CUDA runtime it makes
  TVM compile kernels with ``nvcc`` (fatbin) unless ``TVM_CUDA_COMPILE_MODE`` says otherwise
  (the default NVRTC path needs ``cuda-bindings``).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import tvm
from tvm import tirx
from tvm.s_tir import Schedule

from mntvm.core.errors import MntvmError
from mntvm.templates.cpu import (RULE_DENSE, RULE_DW, RULE_POOL, RULE_PW, RULE_STEM, _all_blocks, _cat, _rule_of,
                        _single_consumer_epilogue, _tile, largest_divisor_le, rows_and_columns, taps_outside)


# ----------------------------------------------------------------------------------------------
# CUDA templates: MetaSchedule custom rules over the blocked (N, C/4, P, 4) layout of lower_cpu
# ----------------------------------------------------------------------------------------------
VECTOR_BITS = 128  # the lowering's channel block on GPUs: 4 fp32 = one 16-byte (float4) access


def _unroll(sch, loop, d, key="unroll"):
    """Knob: how far nvcc unrolls the loop nest under ``loop`` (TVM's auto-unroll step)."""
    step = _cat(sch, [0, 16, 64, 512], d, key)
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


def schedule_pointwise_gpu(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """1x1 conv as a GEMM (output channels x positions, reduced over input channels).

    Knobs: a thread accumulates ``ob_r`` channel vectors (4 channels each) x ``p_r`` neighbouring
    positions, times ``p_v`` virtual threads (position tiles a thread block apart, so that
    neighbouring threads touch neighbouring 16-byte vectors); a thread block is ``ob_t`` x
    ``p_t`` threads (threadIdx.y x threadIdx.x); input channels are reduced in chunks of ``k``
    vectors that all threads stage in shared memory (float4 copies); ``unroll``."""
    conv = block
    epi = _single_consumer_epilogue(sch, conv)
    n, ob, p, v = sch.get_loops(epi)[-4:]
    ob_hi, ob_r = sch.split(ob, _tile(sch, ob, 2, 4, d, "ob_r"))
    ob_f = _tile(sch, ob_hi, 2, 16, d, "ob_t")
    ob_b, ob_t = sch.split(ob_hi, ob_f)
    p_hi, p_r = sch.split(p, _tile(sch, p, 2, 8, d, "p_r"))
    p_f = _tile(sch, p_hi, 2, 64, d, "p_t")
    p_hi, p_t = sch.split(p_hi, p_f)
    p_b, p_v = sch.split(p_hi, _tile(sch, p_hi, 2, 4, d, "p_v"))
    sch.reorder(n, ob_b, p_b, p_v, ob_t, p_t, ob_r, p_r, v)
    sch.bind(sch.fuse(n, ob_b, p_b), "blockIdx.x")
    sch.bind(p_v, "vthread.x")
    sch.bind(ob_t, "threadIdx.y")
    sch.bind(p_t, "threadIdx.x")
    sch.compute_at(conv, p_t, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")
    sch.vectorize(v)
    c_n, c_ob, c_p, c_v, c_ib, c_vi = sch.get_loops(conv)[-6:]
    k_o, k_i = sch.split(c_ib, _tile(sch, c_ib, 2, 16, d, "k"))
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
    cb_b, cb_t = sch.split(cb, _tile(sch, cb, 2, 16, d, ch_key))
    h_b, h_t = sch.split(h, _tile(sch, h, 2, 16, d, "h_t"))
    w_o, w_r = sch.split(w, _tile(sch, w, 2, 8, d, "w_r"))
    sch.reorder(n, cb_b, h_b, cb_t, h_t, w_o, w_r, v)
    sch.bind(sch.fuse(n, cb_b, h_b), "blockIdx.x")
    sch.bind(cb_t, "threadIdx.y")
    tx = sch.fuse(h_t, w_o)
    sch.bind(tx, "threadIdx.x")
    sch.compute_at(conv, tx, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")
    sch.vectorize(v)
    sch.unroll(w_r)


def schedule_depthwise_gpu(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Depthwise: taps read straight from global memory (L1-cached), float4 channel vectors,
    ``w_r`` columns accumulated in registers, taps unrolled."""
    _row_tiled_gpu(sch, block, d, "cb_t")
    taps_outside(sch, block, 2)
    return sch


def schedule_stem_gpu(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Stem: as depthwise, reducing over the input channels (outermost) and the taps."""
    _row_tiled_gpu(sch, block, d, "ob_t")
    _unroll(sch, taps_outside(sch, block, 3), d)
    return sch


def schedule_dense_gpu(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """FC (a GEMV, memory bound): ``k_t`` threads (threadIdx.x) split each output's dot product
    and combine it with a warp/shared-memory reduction; ``nb_t`` output vectors x 4 outputs per
    thread block (threadIdx.y)."""
    acc = block
    epi = _single_consumer_epilogue(sch, acc)
    n, nb, v, k = sch.get_loops(acc)[-4:]
    k_o, k_t = sch.split(k, _tile(sch, k, 2, 256, d, "k_t"))
    rf = sch.rfactor(k_t, 0)
    n, nb, v, k_t = sch.get_loops(acc)[-4:]
    nb_b, nb_t = sch.split(nb, _tile(sch, nb, 2, 8, d, "nb_t"))
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


def schedule_pool_gpu(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Global average pool: one thread per channel sums its positions; ``c_t`` threads a block."""
    s = block
    epi = _single_consumer_epilogue(sch, s)
    c_f = _tile(sch, sch.get_loops(s)[-2], 2, 256, d, "c_t")
    sch.compute_at(s, _flat_threads(sch, epi, c_f[1]), preserve_unit_loops=True)
    sch.set_scope(s, 0, "local")
    sch.decompose_reduction(s, sch.get_loops(s)[-1])
    return sch


SCHEDULERS = {RULE_PW: schedule_pointwise_gpu, RULE_DW: schedule_depthwise_gpu, RULE_STEM: schedule_stem_gpu,
              RULE_DENSE: schedule_dense_gpu, RULE_POOL: schedule_pool_gpu}


def _register():
    def wrap(fn):
        def rule(sch, block):
            fn(sch, block, None)
            return [sch]

        return rule

    for name, fn in SCHEDULERS.items():
        tvm.register_global_func(f"s_tir.meta_schedule.cuda.{name}", wrap(fn), override=True)


_register()


def _shape(buf) -> list[int]:
    return [int(x) for x in buf.shape]


def _split2(n: int, inner: int) -> list[int]:
    return [n // inner, inner]


def default_decisions(sch: Schedule, block, rule: str) -> dict:
    """Knob values used with no log: ~100-128 threads a block, float4 everywhere, a few
    accumulators per thread (decisions of ``sample_perfect_tile`` are the full factor lists)."""
    b = sch.get(block)
    out = _shape(b.writes[0].source)
    if rule == RULE_PW:
        _, ob, p, _v = out
        ib = _shape(b.reads[0].source)[1]
        ob_r = 2 if ob % 2 == 0 and ob >= 8 else 1
        p_t = largest_divisor_le(p, 32)
        p_v = largest_divisor_le(p // p_t, 4)
        ob_t = largest_divisor_le(ob // ob_r, min(16, max(1, 128 // p_t)))
        return {"ob_r": _split2(ob, ob_r), "ob_t": _split2(ob // ob_r, ob_t), "p_r": _split2(p, 1),
                "p_t": _split2(p, p_t), "p_v": _split2(p // p_t, p_v),
                "k": _split2(ib, largest_divisor_le(ib, 4)), "unroll": 64}
    if rule in (RULE_DW, RULE_STEM):
        _, cb, p, _v = out
        wo = int(b.annotations["mntvm_wo"])
        ho = p // wo
        w_r = largest_divisor_le(wo, 4)
        w_o = wo // w_r
        h_t = largest_divisor_le(ho, max(1, 64 // w_o))
        ch_t = largest_divisor_le(cb, min(16, max(1, 128 // (h_t * w_o))))
        return {"cb_t" if rule == RULE_DW else "ob_t": _split2(cb, ch_t), "h_t": _split2(ho, h_t),
                "w_r": _split2(wo, w_r), "unroll": 64}
    if rule == RULE_DENSE:
        _, nb, _v = out
        k = [_shape(r.source) for r in b.reads if len(r.source.shape) == 3][0][1]
        k_t = largest_divisor_le(k, 32)
        return {"k_t": _split2(k, k_t), "nb_t": _split2(nb, largest_divisor_le(nb, 2)), "unroll": 16}
    if rule == RULE_POOL:
        c = out[1]
        return {"c_t": _split2(c, largest_divisor_le(c, 64))}
    raise ValueError(rule)


def schedule_with_rule(sch: Schedule, block_name: str, rule: str, decisions: dict | None = None) -> Schedule:
    """Apply our CUDA ``rule`` to ``block_name`` at ``decisions`` (default: :func:`default_decisions`)."""
    block = sch.get_sblock(block_name)
    if decisions is None:
        decisions = default_decisions(sch, block, rule)
    return SCHEDULERS[rule](sch, block, decisions)


def default_schedule(mod: tvm.IRModule) -> Schedule:
    """``mod``'s "main" with each block that carries one of our rules at the default knobs (its trace
    replays like a tuning record's; ``mntvm tune`` seeds each task with it)."""
    sch = Schedule(mod)
    for b in _all_blocks(mod["main"]):
        rule = _rule_of(b)
        if rule:
            schedule_with_rule(sch, b.name_hint, rule)
    return sch


def apply_default_schedules(mod: tvm.IRModule) -> tvm.IRModule:
    """Schedule each PrimFunc of a lowered module that carries one of our rules and is not yet
    scheduled (e.g. from a tuning log) at the default knobs; marks them ``tirx.is_scheduled`` so
    that DLight leaves them alone."""
    new = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        if any(_rule_of(b) for b in _all_blocks(func)):
            new[gv] = default_schedule(tvm.IRModule({"main": func})).mod["main"].with_attr("tirx.is_scheduled", True)
    mod = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, f in new.items():
        mod[gv] = f
    return mod


# ----------------------------------------------------------------------------------------------
# DLight (OpenCL, Vulkan; CUDA kernels without a rule of ours)
# ----------------------------------------------------------------------------------------------
def _rule_groups(target) -> list[list]:
    """The DLight rule groups TVM 0.27's default pipeline uses for ``target``, in order."""
    from tvm.s_tir import dlight as dl

    if target.kind.name == "opencl" and "adreno" in target.keys:
        return [
            [dl.adreno.Conv2d(), dl.adreno.LayoutTransform(), dl.adreno.Pool2D()],
            [dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()],
        ]
    return [[dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
             dl.gpu.Fallback()]]


def _rule_name(rule) -> str:
    """``dlight.<family>.<Rule>``, e.g. ``dlight.gpu.Matmul``."""
    family = type(rule).__module__.split(".dlight.")[-1].split(".")[0]
    return f"dlight.{family}.{type(rule).__name__}"


def _is_scheduled(func) -> bool:
    return "tirx.is_scheduled" in func.attrs and bool(func.attrs["tirx.is_scheduled"])


def _apply_group(mod, target, rules: Sequence, used: dict[str, list[str]], strict: bool):
    """Schedule each unscheduled PrimFunc with the first rule of ``rules`` that applies."""
    from tvm import s_tir, tirx

    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        func_target = func.attrs["target"] if "target" in func.attrs else target
        for rule in rules:
            space = rule.apply(func, func_target, False)
            if space is None:
                continue
            sch = space if isinstance(space, s_tir.Schedule) else space[0]
            updates[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            used.setdefault(_rule_name(rule), []).append(gvar.name_hint)
            break
        else:
            if strict:
                raise MntvmError(f"no GPU schedule rule applies to kernel '{gvar.name_hint}' "
                                 f"for target {target.kind.name}")
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod


def _schedule(mod, target, used: dict[str, list[str]]):
    groups = _rule_groups(target)
    for i, rules in enumerate(groups):
        mod = _apply_group(mod, target, rules, used, strict=i == len(groups) - 1)
    return mod


def schedule_gpu(mod, target) -> tuple:
    """Schedule all PrimFuncs of a legalized Relax module for a GPU target.

    ``mod`` is a Relax ``IRModule`` after ``relax.transform.LegalizeOps()`` (and usually
    ``FuseOps``/``FuseTIR``); ``target`` is a ``tvm.target.Target`` of kind cuda or opencl.
    PrimFuncs already marked ``tirx.is_scheduled`` are left alone. Returns ``(module, rules)``:
    the names of the rules that were used (``dlight.gpu.Matmul``, …), in rule order.
    Raises :class:`MntvmError` if a kernel matches no rule (it would fail later with
    "did not bind threads").
    """
    used: dict[str, list[str]] = {}
    with target:
        mod = _schedule(mod, target, used)
    return mod, _ordered(target, used)


def _ordered(target, used: dict[str, list[str]]) -> list[str]:
    order = [_rule_name(r) for group in _rule_groups(target) for r in group]
    return [name for name in dict.fromkeys(order) if name in used]


def gpu_pipeline(target, used: dict[str, list[str]]):
    """TVM 0.27's default Relax pipeline for ``target`` with DLight's ``ApplyDefaultSchedule``
    passes replaced by our recording scheduler; ``used`` is filled (rule → kernels) as it runs."""
    import tvm
    from tvm.relax.backend.adreno import pipeline as adreno
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.relax.backend.gpu_generic import pipeline as generic

    if target.kind.name == "cuda":
        stages = cuda
    elif target.kind.name == "opencl" and "adreno" in target.keys:
        stages = adreno
    else:
        stages = generic

    @tvm.transform.module_pass(opt_level=0, name="MntvmScheduleGPU")
    def schedule_pass(mod, _ctx):
        return _schedule(mod, target, used)

    @tvm.transform.module_pass(opt_level=0, name="MntvmGPUPipeline")
    def pipeline(mod, _ctx):
        with target:
            legalize = [p for p in stages.legalize_passes(target)
                        if p.info.name != "ApplyDefaultSchedule"]
            seq = tvm.transform.Sequential(
                list(stages.library_dispatch_passes(target)) + legalize + [schedule_pass]
                + list(stages.dataflow_lower_passes(target)) + list(stages.finalize_passes(target)))
            return seq(mod)

    return pipeline


@contextlib.contextmanager
def nvcc_compile_mode() -> Iterator[None]:
    """Make TVM compile CUDA kernels with nvcc (fatbin) while inside, unless the user chose a mode
    with ``TVM_CUDA_COMPILE_MODE`` or NVRTC's Python bindings are installed.

    Only matters where TVM's CUDA runtime is loaded (a machine with a driver): elsewhere TVM keeps
    CUDA source and :meth:`mntvm.targets.Profile.export_library` compiles it with nvcc.
    """
    key = "TVM_CUDA_COMPILE_MODE"
    if key in os.environ:
        yield
        return
    try:
        import cuda.bindings.nvrtc  # noqa: F401

        yield
        return
    except ImportError:
        pass
    os.environ[key] = "nvcc"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def compile_gpu(mod, target) -> tuple:
    """Build a Relax module (before legalization) for a GPU target.

    Returns ``(relax.Executable, rules)`` where ``rules`` are the schedule rules used. Kernels
    that no rule schedules raise :class:`MntvmError`.
    """
    import tvm

    used: dict[str, list[str]] = {}
    with target:
        mod = gpu_pipeline(target, used)(mod)
    # The target scope lets TVM's nvcc callback pick the target's arch, not the local GPU's.
    with nvcc_compile_mode(), target:
        ex = tvm.compile(mod, target=target, relax_pipeline=None)
    return ex, _ordered(target, used)
