"""Our artifact side by side with other runtimes on the same weights and input, and the table of it.

:func:`compare` times a local artifact and ONNX Runtime (plus OpenVINO and TFLite+XNNPACK where
installed; :mod:`mntvm.bench.peers`) interleaved, one process per thread count
(:mod:`mntvm.bench.comparison_worker`); :func:`format_compare` prints it.

Public entries: :func:`compare`, :func:`format_compare`, :func:`disturbed`, :data:`COMPARE_KEYS`,
:data:`COMPARE_TOL`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from mntvm.bench.checks import artifact_weights
from mntvm.bench.peers import OURS_LABEL, PEERS, REFERENCE
from mntvm.compile.artifact import QDQ_NAME, load_artifact
from mntvm.core import arch
from mntvm.core.errors import MntvmError, one_line
from mntvm.export.onnx import export_onnx
from mntvm.export.tflite import export_tflite, export_tflite_int8
from mntvm.model.network import MobileNetConfig
from mntvm.model.qdq_import import import_qdq

COMPARE_TOL = 1e-5  # max |ours - ORT| allowed (float32)
# int8: ORT runs the artifact's own QDQ model; its kernels round as ours do, but a 1-step
# difference in one layer can move later layers by a step too: probabilities agree to ~1e-2.
COMPARE_TOL_INT8 = 2e-2
COMPARE_KEYS = ("ours_median_ms", "ours_p90_ms", "ort_median_ms", "ort_p90_ms", "ratio", "max_abs_diff")
WARMUP = 10  # untimed runs of each runtime before the interleaved rounds
WORKER = "mntvm.bench.comparison_worker"  # run as `python -m WORKER SPEC_JSON`, once per thread count
_EXPORTERS = {"onnx": export_onnx, "tflite": export_tflite}  # a peer's model format -> its writer
_INT8_EXPORTERS = {"tflite": export_tflite_int8}  # int8: ONNX peers run the artifact's QDQ file itself


def compare(
    artifact_dir: str | Path,
    peers=("ort",),
    threads=(1, 2),
    rounds: int = 20,
    per_round: int = 5,
    weights=None,
    tracker: str | None = None,
    input_seed: int = 0,
    timeout_s: float = 1800.0,
) -> dict:
    """Time a local artifact against ONNX Runtime (and optional peers) on the same weights and input.

    The weights the artifact was compiled from are rebuilt (:func:`artifact_weights`; ``weights``
    is needed when they came from a file that is not at its recorded path) and exported to ONNX
    (and, for TFLite, to a ``.tflite`` flatbuffer). Each thread count runs in a fresh process
    (TVM's pool does not re-pin cleanly when resized in-process): ``TVM_NUM_THREADS``, ORT's
    ``intra_op_num_threads``, OpenVINO's ``INFERENCE_NUM_THREADS`` and TFLite's ``num_threads``
    all set to it. There the outputs are compared first (ours vs ORT must agree within 1e-5, else
    :class:`MntvmError`), then every runtime gets 10 untimed runs and ``rounds`` interleaved
    rounds of ``per_round`` timed runs each (so drift on a shared machine hits all alike), each
    round after untimed runs until the other runtime's pool has stopped spinning
    (:func:`mntvm.core.threads.settle`).

    ``peers``: any of ``"ort"``, ``"openvino"``, ``"tflite"``; ONNX Runtime is always measured
    (the reference for ``ratio`` and the agreement check). A peer whose module is not installed
    is skipped and listed in ``not_installed``; one that is installed but fails is reported in
    ``peer_errors``.

    Returns ``{"model": tag, "threads": {"1": {...}, ...}, ...}`` where each thread count has
    :data:`COMPARE_KEYS` (``ratio`` = ours median / ORT median, ``max_abs_diff`` = max |ours -
    ORT|) plus, per measured optional peer P, ``P_median_ms``, ``P_p90_ms``, ``ratio_P`` (ours /
    P) and ``P_max_abs_diff`` (vs ours).
    """
    if tracker:
        raise MntvmError("--compare runs here only (ONNX Runtime and the peers run on this machine): "
                         "drop --tracker/--key, or bench the board without --compare")
    peers = [peers] if isinstance(peers, str) else list(peers)
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise MntvmError(f"unknown peer {unknown[0]!r} for --compare: choose from {', '.join(PEERS)}")
    counts = [threads] if isinstance(threads, int) else list(threads)
    if not counts:
        raise MntvmError("--compare needs at least one thread count")
    for n in counts:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise MntvmError(f"thread counts must be integers >= 1 (got {n!r})")
    counts = list(dict.fromkeys(int(n) for n in counts))
    if rounds < 1 or per_round < 1:
        raise MntvmError(f"rounds and per-round must be >= 1 (got {rounds} and {per_round})")

    art = load_artifact(artifact_dir)
    meta = art.metadata
    tgt = meta["target"]
    family = tgt.get("family")
    if family in ("cuda", "opencl", "vulkan"):
        raise MntvmError(f"{art.path} is a {family} GPU artifact ({tgt.get('name')}): --compare times "
                         "CPU runtimes, so compile for this machine's CPU (e.g. --target x86)")
    foreign = arch.foreign_arch(meta)
    if foreign:
        want, here = foreign
        raise MntvmError(f"{art.path} is built for {want} ({tgt.get('name')}) and cannot run on this "
                         f"{here} machine: --compare runs only here")
    missing = arch.missing_cpu_features(meta)
    if missing:
        raise MntvmError(f"{art.path} cannot run on this machine: {missing}")
    if importlib.util.find_spec("onnxruntime") is None:
        raise MntvmError("--compare needs ONNX Runtime, which is not installed: pip install onnxruntime")
    wanted = [REFERENCE] + [p for p in dict.fromkeys(peers) if p != REFERENCE]
    measured = [p for p in wanted if importlib.util.find_spec(PEERS[p].module) is not None]
    not_installed = [p for p in wanted if p not in measured]

    cfg = MobileNetConfig.from_dict(meta["model"])
    int8 = meta.get("dtype") == "int8"
    if int8 and weights is not None:
        raise MntvmError("--weights does not apply to an int8 artifact: the peers run the quantized model "
                         f"it carries ({QDQ_NAME})")
    if int8 and not (art.path / QDQ_NAME).is_file():
        raise MntvmError(f"{art.path} is an int8 artifact without its {QDQ_NAME}: compile it again")
    w = None if int8 else artifact_weights(art, weights)
    sched = meta.get("schedules") or {}
    result = {
        "artifact": str(art.path), "model": cfg.tag, "config": cfg.to_dict(), "target": tgt.get("name"),
        "schedules": sched.get("kind"), "tuned_tasks": len(sched.get("tuned") or []),
        "tasks": sched.get("tasks"), "dtype": meta.get("dtype", "float32"), "weights_source": meta.get("weights_source"),
        "weights_sha256": meta.get("weights_sha256"), "input_seed": input_seed, "rounds": rounds,
        "per_round": per_round, "warmup": WARMUP, "peers": measured, "not_installed": not_installed,
        "peer_errors": {}, "versions": {}, "threads": {},
    }
    with tempfile.TemporaryDirectory(prefix="mntvm-compare-") as tmp:
        models = {}
        for fmt in dict.fromkeys(PEERS[p].model for p in measured):
            users = [p for p in measured if PEERS[p].model == fmt]
            try:
                models[fmt] = _peer_model(fmt, art.path, cfg, w, Path(tmp) / f"model.{fmt}")
            except Exception as e:  # noqa: BLE001 - e.g. an installed but incompatible ai_edge_litert
                if REFERENCE in users:
                    raise
                for p in users:
                    result["peer_errors"][p] = one_line(e, with_type=True)
        spec = {"artifact": str(Path(art.path).resolve()), "models": models, "input_seed": input_seed,
                "tol": COMPARE_TOL_INT8 if int8 else COMPARE_TOL, "warmup": WARMUP, "rounds": rounds, "per_round": per_round,
                "peers": [p for p in measured if PEERS[p].model in models]}
        for n in counts:
            r = _run_worker({**spec, "threads": n}, timeout_s)
            for p, msg in r.pop("peer_errors").items():
                result["peer_errors"].setdefault(p, msg)
            result["versions"].update(r.pop("versions"))
            result["threads"][str(n)] = r
    result["peers"] = [p for p in measured if p not in result["peer_errors"]]
    result["disturbed"] = disturbed(result)  # for --json readers; the table prints it too
    return result


def _peer_model(fmt: str, art_path: Path, cfg: MobileNetConfig, weights, dest: Path) -> str:
    """The model file a peer of format ``fmt`` runs: the artifact's network exported with ``weights``
    (float32), or for an int8 artifact (``weights`` None) its own QDQ model (ONNX) or that model in
    TFLite's int8 scheme."""
    qdq = (Path(art_path) / QDQ_NAME).resolve()
    if weights is not None:
        return str(_EXPORTERS[fmt](cfg, weights, dest))
    if fmt == "onnx":
        return str(qdq)
    return str(_INT8_EXPORTERS[fmt](import_qdq(qdq, cfg), dest))


def _run_worker(spec: dict, timeout_s: float) -> dict:
    """Run the compare worker in a fresh process for one thread count and return its result."""
    return run_in_fresh_process(["-m", WORKER], spec, timeout_s, "comparison")


def run_in_fresh_process(command: list[str], spec: dict, timeout_s: float, what: str) -> dict:
    """Run ``python <command> <spec as JSON>`` for ``spec["threads"]`` threads in a fresh process (TVM's
    pool does not re-pin cleanly when resized in-process) and return the JSON object its last line
    of output holds; its ``error``, a timeout, a signal or a failure are a one-line error naming
    ``what`` ran."""
    n = spec["threads"]
    root = str(Path(__file__).resolve().parents[2])  # the folder that holds the mntvm package
    env = {**os.environ, "TVM_NUM_THREADS": str(n),
           "PYTHONPATH": os.pathsep.join(x for x in (root, os.environ.get("PYTHONPATH")) if x)}
    try:
        p = subprocess.run([sys.executable, *command, json.dumps(spec)], capture_output=True, text=True,
                           env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise MntvmError(f"the {what} at {n} thread{'s' * (n != 1)} took longer than {timeout_s:.0f} s") from None
    last = (p.stdout.strip().splitlines() or [""])[-1]
    try:
        r = json.loads(last)
    except json.JSONDecodeError:
        r = None
    if isinstance(r, dict) and "error" in r:
        raise MntvmError(r["error"])
    if p.returncode == 0 and isinstance(r, dict):
        return r
    if p.returncode < 0:
        sig = signal.Signals(-p.returncode).name
        hint = (": the artifact may use instructions this CPU lacks (compile it with --target x86)"
                if sig == "SIGILL" else "")
        raise MntvmError(f"the {what} process at {n} thread{'s' * (n != 1)} died of {sig}{hint}")
    err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    raise MntvmError(f"the {what} process at {n} thread{'s' * (n != 1)} failed (exit {p.returncode}): "
                     f"{err[-1].strip() if err else 'no message'}")


# a runtime this much slower on n threads than on 1 was disturbed (see :func:`disturbed`)
DISTURBED_FACTOR = 1.5


def disturbed(r: dict) -> list[str]:
    """Why :func:`compare`'s result ``r`` cannot be right on an idle machine: ours or ONNX Runtime
    more than :data:`DISTURBED_FACTOR` times slower on more threads than on one. On 2 idle cores both
    run 1.8-1.9x faster on 1.0/224, while the smallest variant can run a little slower (0.25/128,
    three tries here: ours 0.350 -> 0.372 ms, ORT 0.613 -> 0.634; synchronizing the threads costs about
    what the second core gives). TFLite+XNNPACK, slower on 2 threads here anyway, is left out. On a
    shared host another process took a core for part of the run: one 2-thread run read 6.05 ms for
    ours against 0.55 ms on 1 thread, another 6.27 ms for ORT against 2.09. Empty when nothing is
    implausible."""
    t = r["threads"]
    if "1" not in t:
        return []
    out = []
    for n in sorted((k for k in t if k != "1"), key=int):
        for key, label in (("ours_median_ms", OURS_LABEL), ("ort_median_ms", PEERS[REFERENCE].label)):
            if t[n][key] > DISTURBED_FACTOR * t["1"][key]:
                out.append(f"{label} took {t[n][key]:.3f} ms on {n} threads, {t['1'][key]:.3f} ms on 1")
    return out


def format_compare(r: dict) -> str:
    """The side-by-side table of :func:`compare`'s result, one row per runtime and thread count."""
    rows = [f"{r['model']} {r.get('dtype', 'float32')} ({r['target']}, schedules {r['schedules']}, {r['tuned_tasks']}/{r['tasks']} tasks "
            f"tuned): {r['rounds']}x{r['per_round']} interleaved runs each, one process per thread count"]
    rows.append(f"{'threads':>7}  {'runtime':<15} {'median ms':>10} {'p90 ms':>10} {'ours/it':>8} {'max|diff|':>10}")
    for n, t in r["threads"].items():
        rows.append(f"{n:>7}  {OURS_LABEL:<15} {t['ours_median_ms']:>10.3f} {t['ours_p90_ms']:>10.3f}")
        for p in r["peers"]:
            if p == "ort":
                med, p90, ratio, diff = t["ort_median_ms"], t["ort_p90_ms"], t["ratio"], t["max_abs_diff"]
            elif f"{p}_median_ms" in t:
                med, p90, ratio, diff = t[f"{p}_median_ms"], t[f"{p}_p90_ms"], t[f"ratio_{p}"], t[f"{p}_max_abs_diff"]
            else:
                continue
            rows.append(f"{'':>7}  {PEERS[p].label:<15} {med:>10.3f} {p90:>10.3f} {ratio:>8.3f} {diff:>10.1e}")
    rows.append("ours/it = our median / its median (< 1: ours is faster); max|diff| = max |its output - ours|")
    for why in disturbed(r):
        rows.append(f"disturbed: {why} (something else used a core: run it again)")
    for p, msg in r.get("peer_errors", {}).items():
        rows.append(f"{PEERS[p].label} is installed but failed: {msg}")
    if r.get("not_installed"):
        rows.append("not installed (skipped): " + ", ".join(
            f"{PEERS[p].label} (pip install {PEERS[p].pip})" for p in r["not_installed"]))
    return "\n".join(rows)
