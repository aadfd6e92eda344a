"""All 16 MobileNetV1 variants (alpha in 1, 0.75, 0.5, 0.25 x resolution 224, 192, 160, 128) side by
side with ONNX Runtime, one run.

    python benchmarks/variants.py [--alphas 1.0,0.75,0.5,0.25] [--resolutions 224,192,160,128]
                                  [--threads 1,2] [--rounds 10] [--per-round 5]
                                  [--schedules default|none|DIR] [--dtype float32|int8|both] [--json]

Each variant is compiled for this machine (the shipped schedules where they cover it, template
defaults elsewhere) and handed to :func:`mntvm.bench.compare`: same weights and input exported to
ONNX, outputs checked to agree, then ours and ONNX Runtime timed in interleaved rounds, one
process per thread count. Prints per variant and thread count the two medians and the ratio
ours / ORT (below 1: we are faster), then the worst ratio per thread count. A variant whose
comparison is implausible (:func:`mntvm.bench.disturbed`: ours or ORT over 1.5x slower on more
threads than on one, i.e. something else took a core) is compared again, up to ``--retries``
times, and marked with how many tries it took and what the first one read; the last try is the
one counted. ``--dtype int8``
builds each variant in int8 (quantized from seeded inputs) and ORT runs the artifact's own QDQ
model; ``both`` prints the int8 row next to the fp32 one, with ours fp32 / ours int8.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import timing_options  # noqa: E402
from mntvm import MntvmError  # noqa: E402
from mntvm.bench import compare, disturbed  # noqa: E402
from mntvm.compile import compile_model, load_artifact  # noqa: E402
from mntvm.model import MobileNetConfig  # noqa: E402
from mntvm.model.network import ALPHAS, RESOLUTIONS  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS))
    p.add_argument("--resolutions", default=",".join(map(str, RESOLUTIONS)))
    p.add_argument("--dtype", default="float32", choices=("float32", "int8", "both"))
    p.add_argument("--retries", type=int, default=2,
                   help="compare a variant again when its run was disturbed (default 2; 0: never)")
    timing_options(p, rounds=10)
    a = p.parse_args(argv)
    if a.retries < 0:
        p.error(f"--retries must be >= 0 (got {a.retries})")
    counts = a.threads
    dtypes = ["float32", "int8"] if a.dtype == "both" else [a.dtype]
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for alpha in (float(x) for x in a.alphas.split(",")):
                for res in (int(x) for x in a.resolutions.split(",")):
                    cfg = MobileNetConfig(alpha=alpha, resolution=res)
                    for dtype in dtypes:
                        art = compile_model(cfg, Path(tmp) / f"{cfg.tag}-{dtype}", schedules=a.schedules, dtype=dtype)
                        sched = load_artifact(art, verify=False).metadata["schedules"]
                        r, first = compare_settled(art, counts, a.rounds, a.per_round, a.retries)
                        rows.append({"variant": f"{alpha:g}/{res}", "dtype": dtype, "tuned": f"{len(sched.get('tuned', []))}/"
                                     f"{sched.get('tasks', '-')}", "threads": r["threads"], **first})
                        if not a.json:
                            fp32 = rows[-2] if dtype == "int8" and len(dtypes) == 2 else None
                            print(_row(rows[-1], counts, fp32), flush=True)
    except MntvmError as e:
        print(f"variants: error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(rows))
        return 0
    for dtype in dtypes:
        mine = [r for r in rows if r["dtype"] == dtype]
        for n in counts:
            worst = max(mine, key=lambda r: r["threads"][str(n)]["ratio"])
            print(f"{dtype} {n} thread{'s' * (n != 1)}: worst ours/ORT {worst['threads'][str(n)]['ratio']:.3f} "
                  f"({worst['variant']}); variants <= 0.9: "
                  f"{sum(r['threads'][str(n)]['ratio'] <= 0.9 for r in mine)}/{len(mine)}")
        again = [r for r in mine if "tries" in r]
        if again:
            still = [r["variant"] for r in again if "still_disturbed" in r]
            print(f"{dtype}: {len(again)} variant(s) compared again after a disturbed run"
                  + (f"; still disturbed after {a.retries} retries: {', '.join(still)}" if still else ""))
    return 0


def compare_settled(art, counts, rounds: int, per_round: int, retries: int) -> tuple[dict, dict]:
    """:func:`mntvm.bench.compare` against ONNX Runtime, again while :func:`mntvm.bench.disturbed`
    finds the run implausible, at most ``retries`` more times. Returns the last result and, when it
    took more than one try, ``{"tries": k, "first": {n: ratio}, "disturbed": reasons of the first}``
    (also when the last try is still disturbed: ``"still_disturbed"``)."""
    r = compare(art, peers=("ort",), threads=counts, rounds=rounds, per_round=per_round)
    why, tries, first = disturbed(r), 1, {}
    if why:
        first = {"first": {n: t["ratio"] for n, t in r["threads"].items()}, "disturbed": why}
    while why and tries <= retries:
        r = compare(art, peers=("ort",), threads=counts, rounds=rounds, per_round=per_round)
        why, tries = disturbed(r), tries + 1
    if first:
        first["tries"] = tries
        if why:
            first["still_disturbed"] = why
    return r, first


def _row(r: dict, counts, fp32: dict | None = None) -> str:
    cells = "  ".join(f"{n}T ours {r['threads'][str(n)]['ours_median_ms']:7.3f} ms  ORT "
                      f"{r['threads'][str(n)]['ort_median_ms']:7.3f} ms  ratio {r['threads'][str(n)]['ratio']:.3f}"
                      + (f"  fp32/int8 {fp32['threads'][str(n)]['ours_median_ms'] / r['threads'][str(n)]['ours_median_ms']:.2f}x"
                         if fp32 else "")
                      for n in counts)
    note = ""
    if "tries" in r:
        note = (f"  [{r['tries']} tries; the first read " + ", ".join(f"{n}T {v:.3f}" for n, v in r["first"].items())
                + f": {r['disturbed'][0]}" + ("; STILL DISTURBED" if "still_disturbed" in r else "") + "]")
    return f"{r['variant']:>9} {r['dtype']:<7} (tuned {r['tuned']:>5})  {cells}{note}"


if __name__ == "__main__":
    sys.exit(main())
