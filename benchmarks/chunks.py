"""What the fused kernel's chunked pointwise reduction buys (``kc`` in mntvm/templates/cpu.py): one run,
one process.

Two builds of MobileNetV1 for this machine's ``x86`` profile at the template defaults
(``--schedules none``), timed in interleaved rounds with the same weights and input:

- ``chunked``: register tiles of at most the family's ``chunk_positions`` (AVX2 4, AVX-512 8)
  whose weight panel (their output-channel vectors x every input channel) is over 32 KB run the
  reduction in chunks of 4 KB of weights, outside the tiles (what ``mntvm compile`` builds on AVX2;
  AVX-512 builds chunk only the layers of 2 MB of weights and more, as this build does too: there
  the rest is the experiment);
- ``whole``: the same templates with every reduction whole inside its register tile (no chunks by
  panel or by weights).

    python benchmarks/chunks.py [--alpha 1.0] [--resolution 224] [--threads 1] [--json]

Prints median and p90 per build, the ratio chunked / whole, how many of the network's distinct fused
kernels each build chunks (the five 14x14 layers of 1.0/224 are one), and each build's max |diff|
against the numpy float64 reference.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import single_build_options  # noqa: E402
from mntvm.templates.x86 import AVX2  # noqa: E402

PANELS = AVX2.chunk_panels  # the panel rule of the AVX2 defaults, for both families


def _chunked_kernels(cfg, w, profile) -> int:
    """Distinct fused kernels whose default ``kc`` is not 0 for ``profile``, the families as they are now."""
    import tvm
    from tvm.s_tir import Schedule

    from mntvm.templates.cpu import default_knobs
    from mntvm.templates.families import family_for
    from mntvm.templates.lowering import lower
    from mntvm.templates.registry import RULE_DWPW, all_blocks, rule_of, tunable_tasks

    target = profile.tvm_target()
    fam = family_for(target, profile.vector_bits)
    n = 0
    for func in tunable_tasks(lower(cfg, w, profile)).values():
        for b in all_blocks(func):
            if rule_of(b) == RULE_DWPW:
                sch = Schedule(tvm.IRModule({"main": func}))
                n += default_knobs(sch, sch.get_sblock(b.name_hint), RULE_DWPW, fam)["kc"] > 0
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    single_build_options(ap, threads=1, rounds=20)
    a = ap.parse_args(argv)

    from benchmarks.common import family_comparison, print_builds
    from mntvm.targets import get_profile

    profile = get_profile("x86")
    cfg, rows = family_comparison(a, (("chunked", {"chunk_panels": PANELS}),
                                      ("whole", {"chunk_panels": None, "chunk_weights": None})), "whole",
                                  lambda out, cfg, w: {"chunked_kernels": _chunked_kernels(cfg, w, profile)})
    if a.json:
        print(json.dumps({"model": cfg.tag, "threads": a.threads, "chunk_panels_bytes": PANELS, "builds": rows},
                         indent=1))
        return 0
    print(f"MobileNetV1 {a.alpha}/{a.resolution}, {a.threads} thread(s), x86 profile ({profile.vector_bits}-bit), "
          f"template defaults; chunked: panels over {PANELS >> 10} KB")
    print_builds(rows, "whole", [("chunked kernels", lambda r: str(r["chunked_kernels"]))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
