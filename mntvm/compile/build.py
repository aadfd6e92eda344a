"""Compile MobileNetV1 for a target profile into a deployable artifact directory.

Pipeline: weights → batchnorm folded numerically (float64) → Relax graph with weights bound as
constants → per-family lowering and scheduling → ``tvm.compile`` → ``model.so`` exported with the
profile's toolchain, plus ``metadata.json``. The directory is written atomically.

int8 (``dtype="int8"``, or a quantized ONNX file as ``weights``: the dtype follows the file): the
network is a :class:`~mntvm.model.quantized.QuantizedNet`, imported from the QDQ file or quantized
here from the fp32 weights and calibration inputs, lowered by :func:`~mntvm.templates.lowering_int8.
lower_int8`; the artifact also holds ``model.qdq.onnx``, the same quantized network in ONNX QDQ
form, which ``bench --compare`` runs the peers on. Input and output stay float32.

Public entry: :func:`compile_model`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Mapping


from mntvm.compile.artifact import (LIB_NAME, META_NAME, QDQ_NAME, check_artifact_dir, library_record,
                                    load_artifact, write_artifact, write_json_atomic)
from mntvm.compile.network import network_for, quantized_digest
from mntvm.export.onnx_qdq import export_qdq
from mntvm.model import weights as W
from mntvm.model.inference import inference_module
from mntvm.model.network import MobileNetConfig
from mntvm.model.quantized import QuantizedNet
from mntvm.targets import get_profile
from mntvm.templates import prefetch
from mntvm.templates.defaults import apply_default_schedules
from mntvm.templates.gpu import compile_gpu
from mntvm.templates.lowering import has_templates, lower
from mntvm.templates.lowering_int8 import lower_int8, pointwise_kernel
from mntvm.templates.registry import tunable_tasks
from mntvm.tuning import open_schedules
from mntvm.tuning import verify
from mntvm.tuning.report import format_network_times


def build(cfg: MobileNetConfig, weights, profile, schedules=None, check_log: bool = True, libs=None):
    """Lower, schedule and build; returns ``(built, schedule_info dict)``: ``built`` a
    ``relax.Executable``, or the path of the library the log's network check just exported for the
    network it chose (in the folder ``libs``, when given: the same build, not made a third time).

    ``weights``: fp32 weights (a dict) or a :class:`QuantizedNet` (int8, CPU targets only).
    CPU families and CUDA: our templates (:mod:`mntvm.templates`), with tuned records from
    ``schedules`` (a :class:`mntvm.tuning.database.ScheduleDB` or None) where they exist and
    template defaults elsewhere. Other GPU families: DLight rules (:mod:`mntvm.templates.gpu`).
    When the profile is this machine's CPU and ``check_log``, each tuned task is timed against
    its template defaults here (:func:`mntvm.tuning.verify.apply_checked`) and the faster one kept.
    """
    target = profile.tvm_target()
    int8 = isinstance(weights, QuantizedNet)
    if int8:
        profile.check_int8()
    if not has_templates(profile):
        ex, rules = compile_gpu(inference_module(cfg, weights), target)
        return ex, {"kind": "gpu-dlight", "rules": rules}
    low = lower_int8(weights, profile) if int8 else lower(cfg, weights, profile)
    tasks = sorted(tunable_tasks(low))
    info = {"kind": "templates", "tasks": len(tasks), "tuned": [], "defaults": tasks, "database": None}
    mod, lib = low, None
    if schedules is not None:
        mod, tuned, check, lib = verify.apply_checked(schedules, low, profile, check_log, libs)
        if check:
            info["log_check"] = check
        info.update(kind="templates+database", tuned=tuned, database=schedules.identity(),
                    defaults=[t for t in tasks if t not in tuned])
    if profile.is_gpu:
        # kernels without a template (softmax, reshape) get DLight rules, recorded in "rules"
        ex, info["rules"] = compile_gpu(apply_default_schedules(mod, target), target)
        return ex, info
    if lib is not None:  # the network check built and exported this very network already
        return lib, info
    mod = apply_default_schedules(mod, target, profile.vector_bits)
    return prefetch.compile_cpu(mod, target), info


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
    dtype: str | None = None,
    calibration: str | os.PathLike | None = None,
    method: str = "minmax",
    calibration_count: int = 16,
    check_log: bool = True,
) -> Path:
    """Compile ``cfg`` for ``target`` into ``out_dir`` and return its path.

    ``schedules``: "default" (the target's shipped database in ``schedules/<target>/``, if any),
    a database folder, or None/"none" (template defaults only). A database tuned for another
    target is refused unless ``force_schedules``. Compiling for this machine's CPU, the log's tasks
    are checked against the template defaults here unless ``check_log`` is False (see
    :func:`build`). ``dtype``/``calibration``/``method``: see :func:`network_for`.
    """
    import tvm
    import tvm_ffi

    check_artifact_dir(out_dir)
    profile = get_profile(target, targets_dir=targets_dir, mcpu=mcpu, mattr=mattr)
    profile.check_toolchain()

    db = open_schedules(schedules, profile, force=force_schedules) if has_templates(profile) else None
    w, quant = network_for(cfg, profile, weights, seed, dtype, calibration, method, calibration_count)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mntvm-") as libs:
        built, sched_info = build(cfg, w, profile, db, check_log=check_log, libs=libs)
        build_s = time.perf_counter() - t0
        out_dir = Path(out_dir)
        with write_artifact(out_dir) as tmp:
            if isinstance(built, Path):  # the network check's export of this very network
                shutil.copyfile(built, tmp / LIB_NAME)
            else:
                profile.export_library(built, tmp / LIB_NAME)
            int8 = isinstance(w, QuantizedNet)
            if int8:
                export_qdq(w, tmp / QDQ_NAME)
                quant = {**quant, "pointwise": pointwise_kernel(profile.tvm_target(), w.act_dtype)}
            meta = {
                "format": 1,
                "library": library_record(tmp / LIB_NAME),
                "model": cfg.to_dict(),
                "target": profile.to_metadata(),
                "tvm_version": tvm.__version__,
                "tvm_ffi_version": tvm_ffi.__version__,
                "dtype": quant["dtype"],
                "quantization": {k: v for k, v in quant.items() if k != "dtype"} or None,
                "weights_sha256": quantized_digest(w) if int8 else W.digest(w),
                # relative to the artifact: no absolute path in what we write; bench --compare finds it
                "weights_source": os.path.relpath(os.path.abspath(weights), out_dir.resolve())
                                  if isinstance(weights, (str, os.PathLike)) else
                                  ("dict" if weights is not None else f"random(seed={seed})"),
                "input": {"name": "data", "shape": list(cfg.input_shape), "dtype": cfg.dtype},
                "output": {"name": "prob", "shape": list(cfg.output_shape), "dtype": cfg.dtype},
                "schedules": sched_info,
                "build_seconds": round(build_s, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_json_atomic(tmp / META_NAME, meta)
    return out_dir


def format_compiled(out: str | os.PathLike) -> str:
    """What ``mntvm compile`` prints about the artifact at ``out``: target, build time, and which
    tasks came from a tuned database (and which log stood in for this CPU's)."""
    meta = load_artifact(out, verify=False).metadata
    s = meta["schedules"]
    q = meta.get("quantization") or {}
    kind = (f"int8, {q['activations']} activations, calibration {q['calibration']}"
            + (f" on {q['calibration_inputs']}" if q.get("calibration_inputs") else "")) if q else "float32"
    lines = [f"wrote {out} ({meta['target']['name']}, {kind}, built in {meta['build_seconds']:.1f}s, "
             f"schedules: {s['kind']})"]
    if "tasks" in s:
        db = s["database"]
        lines.append(f"schedules: {len(s['tuned'])}/{s['tasks']} tasks from "
                     f"{db['name'] + ' (' + db['sha256'] + ')' if db else 'no database'}; "
                     f"template defaults for: {', '.join(s['defaults']) or 'none'}")
        if db and db.get("stand_in"):
            lines.append(f"schedules: no log for this CPU ({meta['target']['tvm_target'].get('mcpu')}) in "
                         f"schedules/; used the one tuned on {db['mcpu']} ({db.get('stand_in_reason') or 'same ISA'}). "
                         f"`mntvm tune --target {meta['target']['name']}` makes one for this CPU")
        c = s.get("log_check")
        if c:
            how = f"timed {c['measured']} task(s) in {c['seconds']:.1f}s" if c["measured"] else "verdicts from an earlier check"
            net = c.get("network")
            passed = c["kept"] + len((net or {}).get("reverted", []))
            lines.append(f"schedules: checked here against the template defaults ({how}): {passed} task(s) kept "
                         f"from the log, {len(c['reverted'])} back to defaults (faster here): "
                         f"{', '.join(c['reverted']) or 'none'}; tasks sum {c['log_ms']:.3f} ms with the log vs "
                         f"{c['default_ms']:.3f} ms with defaults")
            if net:
                verdict = ("so the log's tasks are kept" if net["keep"] == "log" else
                           f"slower with the log, so its {len(net['reverted'])} task(s) go back to the defaults too")
                lines.append(f"schedules: the network checked too ({'timed now' if net['measured'] else 'an earlier verdict'}"
                             f"): with the log vs the defaults {format_network_times(net)}: {verdict}")
    return "\n".join(lines)
