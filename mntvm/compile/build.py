"""Compile MobileNetV1 for a target profile into a deployable artifact directory.

Pipeline: weights → batchnorm folded numerically (float64) → Relax graph with weights bound as
constants → per-family lowering and scheduling → ``tvm.compile`` → ``model.so`` exported with the
profile's toolchain, plus ``metadata.json``. The directory is written atomically.

Public entry: :func:`compile_model`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from mntvm.model import weights as W
from mntvm.tuning.tune import open_schedules
from mntvm.compile.artifact import LIB_NAME, META_NAME, write_artifact, write_json_atomic
from mntvm.model.inference import inference_module
from mntvm.model.network import MobileNetConfig
from mntvm.templates.lowering import has_templates, lower


def build(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray], profile, schedules=None):
    """Lower, schedule and build; returns ``(relax.Executable, schedule_info dict)``.

    CPU families and CUDA: our templates (:mod:`mntvm.sched_cpu`, :mod:`mntvm.sched_gpu`), with
    tuned records from ``schedules`` (a :class:`mntvm.tune.ScheduleDB` or None) where they exist
    and template defaults elsewhere. Other GPU families: DLight rules (:mod:`mntvm.sched_gpu`).
    """
    import tvm

    from mntvm.templates.cpu import apply_default_schedules, tunable_tasks
    from mntvm.templates.cuda import compile_gpu

    target = profile.tvm_target()
    if not has_templates(profile):
        ex, rules = compile_gpu(inference_module(cfg, weights), target)
        return ex, {"kind": "gpu-dlight", "rules": rules}
    low = lower(cfg, weights, profile)
    tasks = sorted(tunable_tasks(low))
    info = {"kind": "templates", "tasks": len(tasks), "tuned": [], "defaults": tasks, "database": None}
    mod = low
    if schedules is not None:
        mod, tuned = schedules.apply(low, target)
        info.update(kind="templates+database", tuned=tuned, database=schedules.identity(),
                    defaults=[t for t in tasks if t not in tuned])
    if profile.is_gpu:
        from mntvm.templates.cuda import apply_default_schedules as gpu_defaults

        # kernels without a template (softmax, reshape) get DLight rules, recorded in "rules"
        ex, info["rules"] = compile_gpu(gpu_defaults(mod), target)
        return ex, info
    mod = apply_default_schedules(mod, target, profile.vector_bits)
    return tvm.compile(mod, target=target), info


def compile_model(
    cfg: MobileNetConfig,
    out_dir: str | os.PathLike,
    target: str = "x86",
    weights: str | os.PathLike | Mapping | None = None,
    seed: int = 0,
    targets_dir: str | os.PathLike | None = None,
    mcpu: str | None = None,
    mattr: list[str] | None = None,
    schedules: str | os.PathLike | None = "default",
    force_schedules: bool = False,
) -> Path:
    """Compile ``cfg`` for ``target`` into ``out_dir`` and return its path.

    ``schedules``: "default" (the target's shipped database in ``schedules/<target>/``, if any),
    a database folder, or None/"none" (template defaults only). A database tuned for another
    target is refused unless ``force_schedules``.
    """
    import tvm
    import tvm_ffi

    from mntvm.targets.profiles import get_profile

    profile = get_profile(target, targets_dir=targets_dir, mcpu=mcpu, mattr=mattr)
    profile.check_toolchain()

    db = open_schedules(schedules, profile, force=force_schedules) if has_templates(profile) else None
    w = W.load(cfg, weights, seed)
    t0 = time.perf_counter()
    ex, sched_info = build(cfg, w, profile, db)
    build_s = time.perf_counter() - t0
    out_dir = Path(out_dir)
    with write_artifact(out_dir) as tmp:
        profile.export_library(ex, tmp / LIB_NAME)
        meta = {
            "format": 1,
            "model": cfg.to_dict(),
            "target": profile.to_metadata(),
            "tvm_version": tvm.__version__,
            "tvm_ffi_version": tvm_ffi.__version__,
            "weights_sha256": W.digest(w),
            "weights_source": str(weights) if isinstance(weights, (str, os.PathLike)) else
                              ("dict" if weights is not None else f"random(seed={seed})"),
            "input": {"name": "data", "shape": list(cfg.input_shape), "dtype": cfg.dtype},
            "output": {"name": "prob", "shape": list(cfg.output_shape), "dtype": cfg.dtype},
            "schedules": sched_info,
            "build_seconds": round(build_s, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(tmp / META_NAME, meta)
    return out_dir
