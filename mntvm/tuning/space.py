"""MetaSchedule machinery for our template rules: the builder, the search space, applying records.

The space holds only our custom rules (``ApplyCustomRule``); the builder compiles with plain
``tvm.compile`` and exports a shared library linked here (cross compiler for boards, nvcc fatbin
for CUDA).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
import sys
import tempfile

import tvm
from tvm import relax

from mntvm.targets.fatbin import cuda_fatbin_packer
from mntvm.templates import prefetch
from mntvm.templates.gpu import nvcc_compile_mode


def _ms_build(mod, target, _params):
    """Builder f_build: plain tvm.compile (the default imports tensor intrinsics: 17-45 s)."""
    if target.kind.name == "cuda":
        with nvcc_compile_mode(), target:  # nvcc for the target's arch, where a CUDA runtime is loaded
            return tvm.compile(mod, target=target).mod
    return prefetch.compile_cpu(mod, target).mod


def _ms_export(cross_compiler, cuda_target, folder, mod) -> str:
    """Builder f_export: a shared library linked here (with the target's cross compiler, if any),
    so that a board needs no compiler of its own (MetaSchedule's default ships a .tar of objects
    that the board's RPC server links); CUDA kernels embedded as an nvcc fatbin for the target's
    arch (``cuda_target``: the target as JSON), as in compiled artifacts. Written in a new folder
    inside the builder's ``folder``."""
    from tvm.support import cc

    kwargs = {"fcompile": cc.cross_compiler(cross_compiler)} if cross_compiler else {}
    if cuda_target:
        kwargs["fpack_imports"] = cuda_fatbin_packer(tvm.target.Target(json.loads(cuda_target)))
    path = os.path.join(tempfile.mkdtemp(dir=folder), "kernel.so")
    mod.export_library(path, **kwargs)
    return path


def drop_artifact(path: str | None) -> None:
    """Remove a built candidate's library (and the folder :func:`_ms_export` made for it) once it
    has been measured: a tune builds thousands."""
    if path:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


# builds one build process serves before it is replaced (TVM's LocalBuilder starts a new process
# for every batch because of a memory leak in long-lived workers; starting one costs ~3 s here,
# the import of TVM, as much as building a batch)
BUILDS_PER_PROCESS = 64


def ms_builder(max_workers: int = 1, cross_compiler: str | None = None, target=None):
    """The MetaSchedule builder for our tasks (:mod:`mntvm.tuning.tune`): MetaSchedule's
    ``LocalBuilder`` work (same worker function, timeout, error results), but its build processes
    live across batches, each replaced after :data:`BUILDS_PER_PROCESS` builds. ``close()`` stops
    them (the pool also stops when the builder is garbage collected) and removes every library the
    builder made: they live in one temporary folder of its own (:func:`drop_artifact` removes one
    earlier)."""
    cuda = str(target) if target is not None and target.kind.name == "cuda" else None  # JSON text
    folder = tempfile.mkdtemp(prefix="mntvm-ms-")
    export = functools.partial(_ms_export, cross_compiler, cuda, folder)
    return _pooled_builder_class()(f_build=_ms_build, f_export=export, max_workers=max_workers, timeout_sec=120,
                                   folder=folder)


@functools.cache
def _pooled_builder_class():
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import local_builder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(ms.builder.PyBuilder):
        def __init__(self, *, f_build, f_export, max_workers: int, timeout_sec: float, folder: str):
            super().__init__()
            self.f_build, self.f_export, self.timeout_sec, self.folder = f_build, f_export, timeout_sec, folder
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec,
                                          maximum_process_uses=BUILDS_PER_PROCESS)

        def build(self, build_inputs):
            work = [(self.f_build, self.f_export, b.mod, b.target, local_builder._serialize_params(b.params))
                    for b in build_inputs]
            results = []
            for r in self.pool.map_with_error_catching(lambda x: local_builder._worker_func(*x), work):
                if r.status == StatusKind.COMPLETE:
                    results.append(ms.builder.BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    results.append(ms.builder.BuilderResult(
                        None, f"LocalBuilder: Timeout, killed after {self.timeout_sec} seconds"))
                else:
                    results.append(ms.builder.BuilderResult(None, f"LocalBuilder: An exception occurred\n{r.value}"))
            return results

        def close(self) -> None:
            self.pool.shutdown()
            shutil.rmtree(self.folder, ignore_errors=True)

    return PooledBuilder


TVM_INTRINSICS = "tvm.s_tir.tensor_intrin"


@contextlib.contextmanager
def without_tvm_intrinsics():
    """MetaSchedule's ``TuneContext`` imports :data:`TVM_INTRINSICS`, whose ``__init__`` parses every
    target's tensor intrinsics (~250 TVMScript functions: 5 s here even with
    :func:`mntvm.core.tvmscript.install`) before a tuning process measures anything. Our spaces
    (:func:`tune_space`) tensorize only with our own intrinsics, registered where they are defined,
    so while this is active that package is an unexecuted stand-in (its submodules still import on
    demand) and after it, as before: removed, unless the real package had been imported already."""
    if TVM_INTRINSICS in sys.modules:
        yield
        return
    stub = importlib.util.module_from_spec(importlib.util.find_spec(TVM_INTRINSICS))
    sys.modules[TVM_INTRINSICS] = stub
    try:
        yield
    finally:
        if sys.modules.get(TVM_INTRINSICS) is stub:
            del sys.modules[TVM_INTRINSICS]


def tune_space(target=None):
    """Space generator with only our custom rules (no ParallelVectorizeUnroll on the root block,
    whose postproc would reject our already-parallel schedules); for GPU targets, candidates that
    break the target's limits (threads per block, shared memory) are rejected before building.
    Our search (:mod:`mntvm.tuning.search`) takes its postprocs; it makes its own candidates, so
    the one design space MetaSchedule makes from it and its mutator go unused."""
    from tvm.s_tir import meta_schedule as ms

    postprocs = [ms.postproc.DisallowDynamicLoop()]
    if target is not None and "gpu" in target.keys:
        postprocs.append(ms.postproc.VerifyGPUCode())
    return ms.space_generator.PostOrderApply(
        sch_rules=[ms.schedule_rule.ApplyCustomRule()],
        postprocs=postprocs,
        mutator_probs={ms.mutator.MutateTileSize(): 1.0},
    )


def apply_records(mod: tvm.IRModule, db, target) -> tvm.IRModule:
    """Replace each task of a lowered module (:func:`mntvm.templates.lowering.lower`) that ``db``
    has a record for by its best trace (the rest is left unscheduled)."""
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    with target, db:
        return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
