"""Side by side: our compiled MobileNetV1 vs ONNX Runtime, same weights, same input, one run.

    python benchmarks/vs_peers.py [--alpha 1.0 --resolution 224] [--threads 1,2] [--rounds 20]
                                  [--per-round 5] [--schedules default|none|DIR] [--json]

Compiles the model for this machine (shipped schedules unless told otherwise), exports the same
network with the same weights to ONNX, checks that the outputs agree (<= 1e-5), then times both
alternately (interleaved rounds, so drift on a shared machine hits both alike) at each thread
count and prints medians, p90 and the ratio ours / ORT.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mntvm import weights as W  # noqa: E402
from mntvm.artifact import deterministic_input, load_artifact, set_threads  # noqa: E402
from mntvm.compile import compile_model  # noqa: E402
from mntvm.export import build_onnx  # noqa: E402
from mntvm.model import MobileNetConfig  # noqa: E402


def _time(fn, n):
    # Between blocks, let the other runtime's spinning worker threads park (both pools spin after
    # work; on 2 cores they would steal each other's cycles), then one untimed call.
    time.sleep(0.05)
    fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--schedules", default="default")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    counts = [int(t) for t in a.threads.split(",")]
    if len(counts) > 1:
        # One process per thread count: TVM's pool does not re-pin cleanly when resized in-process
        # (2 threads after 1 ran ~3x slower here), and TVM_NUM_THREADS is read at start-up.
        import subprocess

        merged = None
        for n in counts:
            args = [sys.executable, __file__, *[x for x in (argv or sys.argv[1:])], "--threads", str(n), "--json"]
            r = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            merged = merged or {**r, "threads": {}}
            merged["threads"].update(r["threads"])
        return _print(merged, a)
    import os

    os.environ["TVM_NUM_THREADS"] = str(counts[0])

    import onnxruntime as ort
    import tvm

    cfg = MobileNetConfig(alpha=a.alpha, resolution=a.resolution)
    w = W.random_weights(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        art = load_artifact(compile_model(cfg, Path(tmp) / "art", schedules=a.schedules))
        compile_s = time.perf_counter() - t0
        vm = art.load_vm()
        x = deterministic_input(cfg.input_shape)
        xt = tvm.runtime.tensor(x)
        onnx_bytes = build_onnx(cfg, w).SerializeToString()
        results = {"model": cfg.tag, "compile_s": compile_s, "schedules": art.metadata["schedules"].get("kind"),
                   "tuned_tasks": len(art.metadata["schedules"].get("tuned", [])),
                   "tasks": art.metadata["schedules"].get("tasks"), "threads": {}}
        for n in [int(t) for t in a.threads.split(",")]:
            set_threads(n)
            so = ort.SessionOptions()
            so.intra_op_num_threads = n
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
            ours_out = vm["main"](xt).numpy()
            ort_out = sess.run(None, {"data": x})[0]
            diff = float(np.abs(ours_out - ort_out).max())
            if diff > 1e-5:
                raise SystemExit(f"outputs disagree at {n} threads: max abs diff {diff:.2e}")
            _time(lambda: vm["main"](xt), 10)
            _time(lambda: sess.run(None, {"data": x}), 10)
            ours, theirs = [], []
            for _ in range(a.rounds):
                ours += _time(lambda: vm["main"](xt), a.per_round)
                theirs += _time(lambda: sess.run(None, {"data": x}), a.per_round)
            r = {"ours_median_ms": float(np.median(ours)), "ours_p90_ms": float(np.percentile(ours, 90)),
                 "ort_median_ms": float(np.median(theirs)), "ort_p90_ms": float(np.percentile(theirs, 90)),
                 "max_abs_diff": diff}
            r["ratio"] = r["ours_median_ms"] / r["ort_median_ms"]
            results["threads"][str(n)] = r
    return _print(results, a)


def _print(results, a) -> int:
    if a.json:
        print(json.dumps(results))
        return 0
    print(f"{results['model']}: compiled in {results['compile_s']:.1f}s, schedules {results['schedules']} "
          f"({results['tuned_tasks']}/{results['tasks']} tasks tuned); {a.rounds}x{a.per_round} interleaved runs each, one process per thread count")
    print(f"{'threads':>7} {'ours med':>9} {'ours p90':>9} {'ORT med':>9} {'ORT p90':>9} {'ours/ORT':>9} {'max|diff|':>10}")
    for n, r in results["threads"].items():
        print(f"{n:>7} {r['ours_median_ms']:>9.3f} {r['ours_p90_ms']:>9.3f} {r['ort_median_ms']:>9.3f} "
              f"{r['ort_p90_ms']:>9.3f} {r['ratio']:>9.3f} {r['max_abs_diff']:>10.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
