"""What the fused kernel's weight prefetch buys (mntvm/templates/prefetch.py): one run, one process.

Two builds of MobileNetV1 for this machine's ``x86`` profile at the template defaults
(``--schedules none``), timed in interleaved rounds with the same weights and input:

- ``prefetch``: layers with 2 MB of pointwise weights or more prefetch the next weight panel, none
  chunks its reduction (the best prefetching defaults an Emerald Rapids-class VM measured; ``mntvm
  compile`` builds neither on AVX2, and on AVX-512 chunks those layers instead: ``mntvm/templates/x86.py``);
- ``no-prefetch``: the same templates without prefetches or chunks.

    python benchmarks/prefetch.py [--alpha 1.0] [--resolution 224] [--threads 1] [--json]

Prints median and p90 per build, the ratio prefetch / no-prefetch, the prefetch instructions in
each library, and each build's max |diff| against the numpy float64 reference.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import single_build_options  # noqa: E402


def _prefetch_instructions(lib: Path) -> int | None:
    try:
        dis = subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum(line.split("\t")[-1].startswith(("prefetch", "prfm", "pld")) for line in dis.splitlines()
               if "\t" in line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    single_build_options(ap, threads=1, rounds=20)
    a = ap.parse_args(argv)

    from benchmarks.common import family_comparison, print_builds

    threshold = 2 << 20
    cfg, rows = family_comparison(
        a, (("prefetch", {"prefetch_weights": threshold, "chunk_weights": None}),
            ("no-prefetch", {"prefetch_weights": None, "chunk_weights": None})), "no-prefetch",
        lambda out, cfg, w: {"prefetch_instructions": _prefetch_instructions(Path(out) / "model.so")})
    if a.json:
        print(json.dumps({"model": cfg.tag, "threads": a.threads, "threshold_bytes": threshold, "builds": rows},
                         indent=1))
        return 0
    print(f"MobileNetV1 {a.alpha}/{a.resolution}, {a.threads} thread(s), x86 profile, template defaults; "
          f"prefetch on layers with >= {threshold / 2**20:g} MB of pointwise weights")
    print_builds(rows, "no-prefetch", [("prefetches", lambda r: "?" if r["prefetch_instructions"] is None
                                        else str(r["prefetch_instructions"]))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
