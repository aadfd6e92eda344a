"""The GPU build: TVM's DLight rules for what our templates leave, then ``tvm.compile``.

TVM 0.27's DLight rules (``tvm.s_tir.dlight``), the same ones TVM's own default GPU pipelines
apply, but applied here so that we know *which* rule scheduled each kernel (recorded in the
artifact metadata):

* generic GPUs (Mali, …): ``gpu.Matmul`` (convolutions become implicit GEMMs), ``gpu.GEMV``,
  ``gpu.Reduction``, ``gpu.GeneralReduction``, ``gpu.Fallback`` (elementwise and depthwise
  kernels: thread-bound loops).
* Adreno (target key ``adreno``): ``adreno.Conv2d``, ``adreno.LayoutTransform``, ``adreno.Pool2D``
  first, then ``gpu.Reduction``, ``gpu.GeneralReduction``, ``gpu.Fallback``.
* CUDA: our templates (:mod:`.cuda`) schedule the convolutions, pooling and FC first
  (:func:`mntvm.templates.defaults.apply_default_schedules` or a tuning log); DLight the rest.

Public entries:

* :func:`schedule_gpu` — DLight on every unscheduled PrimFunc of a legalized Relax module;
  returns the rule names used.
* :func:`compile_gpu` — the whole GPU build: TVM's default Relax pipeline for the target with our
  recording DLight scheduler in place of ``ApplyDefaultSchedule`` (kernels already scheduled by
  our templates are left alone), then ``tvm.compile``.
* :func:`nvcc_compile_mode` — on a machine with a CUDA runtime, makes TVM compile kernels with
  ``nvcc`` (fatbin) unless ``TVM_CUDA_COMPILE_MODE`` says otherwise (the default NVRTC path needs
  ``cuda-bindings``).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import tvm
from tvm import s_tir, tirx

from mntvm.core.errors import MntvmError
from mntvm.templates.registry import is_scheduled, mark_scheduled


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


def _apply_group(mod, target, rules: Sequence, used: dict[str, list[str]], strict: bool):
    """Schedule each unscheduled PrimFunc with the first rule of ``rules`` that applies."""
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        func_target = func.attrs["target"] if "target" in func.attrs else target
        for rule in rules:
            space = rule.apply(func, func_target, False)
            if space is None:
                continue
            sch = space if isinstance(space, s_tir.Schedule) else space[0]
            updates[gvar] = mark_scheduled(sch.mod["main"])
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
    PrimFuncs already scheduled (:func:`.registry.is_scheduled`) are left alone. Returns
    ``(module, rules)``: the names of the rules that were used (``dlight.gpu.Matmul``, …), in
    rule order.
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


def _pipeline(target, used: dict[str, list[str]]):
    """TVM 0.27's default Relax pipeline for ``target`` with DLight's ``ApplyDefaultSchedule``
    passes replaced by our recording scheduler; ``used`` is filled (rule → kernels) as it runs."""
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
    used: dict[str, list[str]] = {}
    with target:
        mod = _pipeline(target, used)(mod)
    # The target scope lets TVM's nvcc callback pick the target's arch, not the local GPU's.
    with nvcc_compile_mode(), target:
        ex = tvm.compile(mod, target=target, relax_pipeline=None)
    return ex, _ordered(target, used)
