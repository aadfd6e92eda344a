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
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import timing_options  # noqa: E402
from mntvm import MntvmError  # noqa: E402
from mntvm.bench import compare, format_compare  # noqa: E402
from mntvm.compile import compile_model  # noqa: E402
from mntvm.model import MobileNetConfig  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=224)
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
    except MntvmError as e:
        print(f"vs_peers: error: {e}", file=sys.stderr)
        return 2
    results.pop("artifact")  # a temporary directory, gone by now
    results["compile_s"] = compile_s
    if a.json:
        print(json.dumps(results))
        return 0
    print(f"compiled {results['model']} for {results['target']} in {compile_s:.1f}s")
    print(format_compare(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
