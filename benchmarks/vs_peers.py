"""Side by side: our compiled MobileNetV1 vs ONNX Runtime, same weights, same input, one run.

    python benchmarks/vs_peers.py [--alpha 1.0 --resolution 224] [--threads 1,2] [--rounds 20]
                                  [--per-round 5] [--schedules default|none|DIR]
                                  [--peers ort,openvino,tflite] [--json]

Compiles the model for this machine (shipped schedules unless told otherwise), then hands the
artifact to :func:`mntvm.bench.compare` (also ``mntvm bench ARTIFACT --compare ort``): the same
network with the same weights exported to ONNX, outputs checked to agree (<= 1e-5), then both
timed alternately (interleaved rounds, so drift on a shared machine hits both alike) at each
thread count, one process per thread count; prints medians, p90 and the ratio ours / ORT.
OpenVINO (``openvino``) and TFLite+XNNPACK (``ai-edge-litert``) join when installed.

For an fp32 x86 build it then measures this machine's FMA peak at the artifact's vector width and
thread count (:func:`mntvm.bench.measure_peak`) and prints the FMA floor (the paper's mult-adds x 2
at that peak), every runtime's share of the peak (floor / its median) and the share 0.8x ONNX Runtime
would need: a ratio target below floor / ONNX Runtime is not reachable by any kernel.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import model_options, timing_options  # noqa: E402
from mntvm import MntvmError  # noqa: E402
from mntvm.bench import compare, format_compare, measure_peak  # noqa: E402
from mntvm.compile import compile_model, load_artifact  # noqa: E402
from mntvm.model import MobileNetConfig  # noqa: E402
from mntvm.model.cost import cost_report  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(p)
    p.add_argument("--peers", default="ort,openvino,tflite",
                   help="ONNX Runtime is always measured; the others when installed")
    timing_options(p)
    a = p.parse_args(argv)
    counts = a.threads
    try:
        cfg = MobileNetConfig(alpha=a.alpha, resolution=a.resolution)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            art = compile_model(cfg, Path(tmp) / "art", schedules=a.schedules)
            compile_s = time.perf_counter() - t0
            results = compare(art, peers=[x for x in a.peers.split(",") if x], threads=counts,
                              rounds=a.rounds, per_round=a.per_round)
            bits = load_artifact(art).metadata["target"].get("vector_bits")
    except MntvmError as e:
        print(f"vs_peers: error: {e}", file=sys.stderr)
        return 2
    results.pop("artifact")  # a temporary directory, gone by now
    results["compile_s"] = compile_s
    floor = fma_floor(results, cfg, bits)
    if a.json:
        print(json.dumps(results))
        return 0
    print(f"compiled {results['model']} for {results['target']} in {compile_s:.1f}s")
    print(format_compare(results))
    if floor:
        print(floor)
    return 0


def fma_floor(results: dict, cfg: MobileNetConfig, bits) -> str:
    """Per thread count: the FMA peak measured now, the floor it sets, each runtime's share of it
    (added to ``results['threads'][n]``); "" where :func:`measure_peak` has no peak (not x86, not an
    AVX2/AVX-512 width) or the build is not fp32."""
    if results.get("dtype", "float32") != "float32":
        return ""
    flop = 2.0 * cost_report(cfg)["total_madds"]
    rows = []
    for n, t in results["threads"].items():
        peak = measure_peak(int(n), bits)
        if not peak:
            return ""
        floor_ms = flop / peak / 1e6
        share = {k[:-len("_median_ms")]: floor_ms / t[k] for k in t if k.endswith("_median_ms")}
        t.update(fma_peak_gflops=peak, fma_floor_ms=floor_ms, share_of_peak=share)
        rows.append(f"{n:>7}  FMA peak {peak:.0f} GFLOP/s ({bits}-bit): floor {floor_ms:.2f} ms = "
                    f"{floor_ms / t['ort_median_ms']:.2f}x ONNX Runtime; share of peak: "
                    + ", ".join(f"{k} {v:.0%}" for k, v in share.items())
                    + f"; 0.8x ONNX Runtime needs {floor_ms / (0.8 * t['ort_median_ms']):.0%}")
    return "\n".join(["FMA floor (the paper's mult-adds x 2 at the peak measured now):"] + rows)

if __name__ == "__main__":
    sys.exit(main())
