"""Our int8 MobileNetV1 vs ONNX Runtime's int8 and vs our own fp32, default knobs, one run.

    python benchmarks/int8.py [--alpha 1.0 --resolution 224] [--threads 1,2] [--rounds 20]
                              [--per-round 5] [--schedules default|none|DIR] [--json]

TFLite+XNNPACK runs the same int8 network too (its int8 .tflite) when ai-edge-litert is installed.
Compiles the model twice for this machine, with the shipped schedules (``--schedules default``:
their int8 and fp32 records where they cover the model, template defaults elsewhere) or with
template defaults only (``none``):
int8 (quantized on the fly, :func:`mntvm.compile.compile_model` with ``dtype="int8"``) and
fp32. Each artifact goes to :func:`mntvm.bench.compare`: the int8 one is timed against ONNX
Runtime on the artifact's own QDQ model (ORT's integer kernels), the fp32 one against ORT fp32,
interleaved in fresh processes per thread count. Prints the medians, the ratios ours int8 / ORT
int8 (goal <= 0.9) and ours fp32 / ours int8 (goal >= 2.5), and the load average before and
after (the machine is shared: read the ratios, not the absolute times, and rerun when the load
moved).
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
from mntvm.bench import compare  # noqa: E402
from mntvm.compile import compile_model  # noqa: E402
from mntvm.model import MobileNetConfig  # noqa: E402


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(p)
    timing_options(p)
    a = p.parse_args(argv)
    counts = a.threads
    out = {"load_before": _load()}
    try:
        cfg = MobileNetConfig(alpha=a.alpha, resolution=a.resolution)
        with tempfile.TemporaryDirectory() as tmp:
            for dtype in ("int8", "float32"):
                t0 = time.perf_counter()
                art = compile_model(cfg, Path(tmp) / dtype, target="x86", dtype=dtype,
                                    schedules=None if a.schedules == "none" else a.schedules)
                out[f"compile_s_{dtype}"] = round(time.perf_counter() - t0, 1)
                r = compare(art, peers=("ort", "tflite"), threads=counts, rounds=a.rounds, per_round=a.per_round)
                keys = ("ours_median_ms", "ort_median_ms", "ratio", "tflite_median_ms", "ratio_tflite")
                out[dtype] = {n: {k: r["threads"][n][k] for k in keys if k in r["threads"][n]} for n in r["threads"]}
                out[f"peer_errors_{dtype}"] = r["peer_errors"]
    except MntvmError as e:
        print(f"int8: error: {e}", file=sys.stderr)
        return 2
    out["load_after"] = _load()
    for n in out["int8"]:
        q, f = out["int8"][n], out["float32"][n]
        out["int8"][n]["fp32_over_int8"] = f["ours_median_ms"] / q["ours_median_ms"]
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"{cfg.tag}, schedules {a.schedules}; load before {out['load_before']}, after {out['load_after']}")
    tfl = all("tflite_median_ms" in out["int8"][n] for n in out["int8"])
    print("threads  ours int8   ORT int8  int8/ORT" + ("  TFLite int8  int8/TFLite" if tfl else "")
          + "   ours fp32   ORT fp32  fp32/int8 (ours)")
    for n in out["int8"]:
        q, f = out["int8"][n], out["float32"][n]
        peer = f"   {q['tflite_median_ms']:7.3f} ms  {q['ratio_tflite']:9.2f}x" if tfl else ""
        print(f"{n:>7}  {q['ours_median_ms']:7.3f} ms {q['ort_median_ms']:7.3f} ms  {q['ratio']:7.2f}x{peer}  "
              f"{f['ours_median_ms']:7.3f} ms {f['ort_median_ms']:7.3f} ms  {q['fp32_over_int8']:7.2f}x")
    if not tfl:
        print(f"TFLite: {out['peer_errors_int8'].get('tflite', 'not installed (pip install ai-edge-litert)')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
