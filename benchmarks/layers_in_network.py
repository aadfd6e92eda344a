"""Per layer inside the network: ours vs ONNX Runtime, each by its own profiler, in one process.

    python benchmarks/layers_in_network.py [--alpha 1.0] [--resolution 224] [--threads 1,2]
        [--rounds 8] [--per-round 20] [--schedules default|none|DIR] [--json]

Compiles MobileNetV1 for this machine (shipped schedules unless told otherwise) and exports the
same weights to ONNX. Per thread count, in a fresh process, in interleaved rounds: ``--per-round`` inferences of ours
under the Relax VM's instrument hook (:func:`mntvm.remote.vm_profile.profile_vm`, mapped to layers
by :func:`mntvm.bench.per_layer_report`), then as many of ONNX Runtime with its profiler on
(:func:`mntvm.bench.per_layer.ort_per_layer`). Each layer: our median over rounds, ORT's median over
runs, the ratio, and both as GFLOP/s and % of the FMA peak measured now at the artifact's vector
width (:func:`mntvm.bench.measure_peak`).

Unlike ``benchmarks/layers.py`` (each kernel compiled and timed alone, its weights in cache), this
times the layers where they run: inside the network, weights coming from wherever the previous
inference left them. Both profilers add a little per call; compare the rows, and the whole
network with ``vs_peers.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import model_options, timing_options  # noqa: E402
from mntvm import MntvmError  # noqa: E402


def run(alpha: float, resolution: int, threads: list[int], rounds: int, per_round: int, schedules: str) -> dict:
    """Compile and export here, then time each thread count in a fresh process
    (:func:`mntvm.bench.comparison.run_in_fresh_process`, as :func:`mntvm.bench.compare` does)."""
    from mntvm.bench.comparison import run_in_fresh_process
    from mntvm.compile import compile_model, load_artifact
    from mntvm.export.onnx import export_onnx
    from mntvm.model import MobileNetConfig
    from mntvm.model import weights as W

    cfg = MobileNetConfig(alpha=alpha, resolution=resolution)
    w = W.random_weights(cfg, 0)
    out = {"model": cfg.tag, "schedules": schedules, "rounds": rounds, "per_round": per_round, "threads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        art = compile_model(cfg, Path(tmp) / "art", weights=w, schedules=schedules)
        sched = load_artifact(art).metadata["schedules"]
        out["tasks_from_log"] = f"{len(sched.get('tuned', []))}/{sched.get('tasks', '?')}"
        spec = {"artifact": str(art), "onnx": str(export_onnx(cfg, w, Path(tmp) / "model.onnx")),
                "alpha": alpha, "resolution": resolution, "rounds": rounds, "per_round": per_round, "tmp": tmp}
        for n in threads:
            out["threads"][str(n)] = run_in_fresh_process([__file__, "--worker"], {**spec, "threads": n}, 1800,
                                                          "profiling")
    return out


def _worker(spec: dict) -> dict:
    """One thread count: ours and ORT profiled in interleaved rounds; the rows of the table."""
    import onnxruntime as ort
    import tvm

    from mntvm.bench import measure_peak, per_layer_report
    from mntvm.bench.peers import ort_session_options
    from mntvm.bench.per_layer import ort_per_layer
    from mntvm.compile import load_artifact
    from mntvm.compile.artifact import deterministic_input
    from mntvm.core.threads import caller_pinned, set_threads, settle
    from mntvm.model import MobileNetConfig
    from mntvm.remote.vm_profile import profile_vm

    n, rounds, per_round = spec["threads"], spec["rounds"], spec["per_round"]
    cfg = MobileNetConfig(alpha=spec["alpha"], resolution=spec["resolution"])
    set_threads(n)
    art = load_artifact(spec["artifact"])
    x = deterministic_input(cfg.input_shape)
    vm = art.load_vm()
    xin = tvm.runtime.tensor(x)
    so = ort_session_options(n)
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(spec["tmp"], f"ort{n}")
    sess = ort.InferenceSession(spec["onnx"], so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    reports, ort_runs = [], []
    best_ours = best_ort = float("inf")
    for _ in range(rounds):
        # first untimed calls until the other runtime's pool has stopped spinning (settle); ours with
        # the calling thread off TVM's workers' cores, as in vs_peers.py
        with caller_pinned():
            settle(lambda: vm["main"](xin), best_ours)
            prof = json.loads(profile_vm(vm.module, xin, runs=per_round))
        best_ours = min(best_ours, 1e3 * min(prof["run_s"]))
        reports.append(per_layer_report(prof, cfg))
        settle(lambda: sess.run(None, feed), best_ort)
        for _ in range(per_round):
            t0 = time.perf_counter()
            sess.run(None, feed)
            ort_runs.append(1e3 * (time.perf_counter() - t0))
        best_ort = min(ort_runs)
    events = json.loads(Path(sess.end_profiling()).read_text())
    if not reports[0]["mapped_to_layers"]:
        raise MntvmError("our kernels could not be mapped to the model's layers")
    first = reports[0]["layers"]
    names = [ly["layer"] for ly in first]
    ours = {name: float(np.median([{ly["layer"]: ly["mean_ms"] for ly in r["layers"]}[name] for r in reports]))
            for name in names}
    theirs = ort_per_layer(events, names)["layers"]
    bits = art.metadata["target"].get("vector_bits")
    peak = measure_peak(n, bits) if bits else None
    rows = []
    for ly in first:
        name, madds = ly["layer"], ly["madds"]
        o, t = ours[name], theirs.get(name)
        row = {"layer": name, "type": ly["type"], "madds": madds, "ours_ms": o, "ort_ms": t,
               "ratio": o / t if t else None}
        for who, ms in (("ours", o), ("ort", t)):
            g = 2 * madds / (ms * 1e-3) / 1e9 if madds and ms else None
            row[f"{who}_gflops"] = g
            row[f"{who}_pct_peak"] = 100 * g / peak if g and peak else None
        rows.append(row)
    if theirs.get("other"):
        rows.append({"layer": "other", "type": "other", "madds": 0, "ours_ms": 0.0, "ort_ms": theirs["other"],
                     "ratio": None})
    return {"peak_gflops": peak, "layers": rows,
            "ours_layers_ms": sum(r["ours_ms"] for r in rows), "ort_layers_ms": sum(r["ort_ms"] or 0 for r in rows),
            "ours_instrumented_run_ms": float(np.median([r["instrumented_run_ms"] for r in reports])),
            "ort_profiled_run_ms": float(np.median(ort_runs))}


def format_table(r: dict) -> str:
    lines = [f"{r['model']}, schedules: {r['schedules']} ({r['tasks_from_log']} tasks from the log); per layer "
             f"inside the network, ours (VM instrument) vs ONNX Runtime (its profiler), {r['rounds']} interleaved "
             f"rounds of {r['per_round']}"]
    for n, t in r["threads"].items():
        pk = t["peak_gflops"]
        lines.append(f"\n{n} thread(s); FMA peak measured now: {f'{pk:.0f} GFLOP/s' if pk else 'n/a'}")
        lines.append(f"  {'layer':<10} {'ours ms':>8} {'ORT ms':>8} {'ours/ORT':>9} {'ours %pk':>9} {'ORT %pk':>8}")
        for row in t["layers"]:
            ort_ms = f"{row['ort_ms']:.4f}" if row["ort_ms"] else "-"
            ratio = f"{row['ratio']:.3f}" if row["ratio"] else "-"
            pct = [f"{row[k]:.0f}%" if row.get(k) else "-" for k in ("ours_pct_peak", "ort_pct_peak")]
            lines.append(f"  {row['layer']:<10} {row['ours_ms']:>8.4f} {ort_ms:>8} {ratio:>9} {pct[0]:>9} {pct[1]:>8}")
        lines.append(f"  {'sum':<10} {t['ours_layers_ms']:>8.4f} {t['ort_layers_ms']:>8.4f} "
                     f"{t['ours_layers_ms'] / t['ort_layers_ms']:>9.3f}")
        lines.append(f"  whole runs while profiled: ours {t['ours_instrumented_run_ms']:.3f} ms, "
                     f"ORT {t['ort_profiled_run_ms']:.3f} ms")
        slower = [row["layer"] for row in t["layers"] if row["ratio"] and row["ratio"] > 1]
        lines.append(f"  layers where ours is slower: {', '.join(slower) if slower else 'none'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(p)
    timing_options(p, rounds=8, per_round=20)
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one thread count, in a fresh process
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(json.loads(a.worker))))
        return 0
    try:
        r = run(a.alpha, a.resolution, a.threads, a.rounds, a.per_round, a.schedules)
    except MntvmError as e:
        print(f"layers_in_network: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r) if a.json else format_table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
