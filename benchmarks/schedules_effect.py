"""What our templates and the shipped log buy: one run, same weights and input, same threads.

Three builds of MobileNetV1 for this machine's ``x86`` profile, timed in interleaved rounds:

- ``tvm-default``: ``tvm.compile`` of our Relax module with TVM's own default pipeline (no
  schedules at all: what TVM 0.27 gives without templates or tuning);
- ``templates``: ``mntvm compile --schedules none`` (our templates at their default knobs);
- ``shipped``: ``mntvm compile`` (templates + the log shipped in ``schedules/``);
- ``log``, with ``--log DIR``: ``mntvm compile --schedules DIR`` (e.g. a log ``mntvm tune`` just wrote).

    python benchmarks/schedules_effect.py [--alpha 1.0] [--resolution 224] [--threads 2] [--log DIR] [--json]

Prints median and p90 per build, the ratio to the shipped build, and each build's max |diff|
against the numpy float64 reference.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import single_build_options  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    single_build_options(ap, threads=2, rounds=15)
    ap.add_argument("--default-runs", type=int, default=5,
                    help="runs of TVM's unscheduled build (slow; 0: leave that build out)")
    ap.add_argument("--log", help="also a build from this tuned database folder")
    a = ap.parse_args(argv)

    import tvm
    from tvm import relax

    from benchmarks.common import build_rows, model_and_reference, print_builds
    from mntvm.compile.artifact import load_artifact
    from mntvm.compile.build import compile_model
    from mntvm.core.threads import time_interleaved
    from mntvm.model.inference import inference_module
    from mntvm.targets.profiles import get_profile

    cfg, w, x, ref = model_and_reference(a.alpha, a.resolution, a.threads)
    profile = get_profile("x86")
    dev = tvm.cpu()
    runners, info = {}, {}

    if a.default_runs > 0:
        t0 = time.perf_counter()
        ex = tvm.compile(inference_module(cfg, w), target=profile.tvm_target())
        info["tvm-default"] = {"build_s": time.perf_counter() - t0, "schedules": "none (TVM default pipeline)"}
        vm = relax.VirtualMachine(ex, dev)
        xd = tvm.runtime.tensor(x, dev)
        runners["tvm-default"] = lambda: vm["main"](xd).numpy()

    with tempfile.TemporaryDirectory() as tmp:
        builds = [("templates", "none"), ("shipped", "default")] + ([("log", a.log)] if a.log else [])
        for name, sched in builds:
            out = compile_model(cfg, Path(tmp) / name, target="x86", weights=w, schedules=sched)
            art = load_artifact(out)
            meta = art.metadata["schedules"]
            db = meta.get("database")
            info[name] = {"build_s": art.metadata["build_seconds"],
                          "schedules": f"{len(meta.get('tuned', []))}/{meta.get('tasks')} tasks from "
                                       f"{db['name'] + ' ' + db['sha256'] if db else 'no database'}"}
            avm = art.load_vm()
            runners[name] = (lambda art=art, avm=avm: art.run(x, avm))

        diffs = {k: float(np.abs(f() - ref).max()) for k, f in runners.items()}  # also warms up
        # TVM's unscheduled build: ~0.5 s a run, one block of runs is enough; the others interleaved
        slow = {k: runners.pop(k) for k in ["tvm-default"] if k in runners}
        times = time_interleaved(slow, 1, a.default_runs, pinned=tuple(slow))
        times.update(time_interleaved(runners, a.rounds, a.per_round, pinned=tuple(runners)))

    rows = build_rows(times, diffs, info, "shipped")
    if a.json:
        print(json.dumps({"model": cfg.tag,
                          "threads": a.threads, "builds": rows}, indent=1))
        return 0
    print(f"MobileNetV1 {a.alpha}/{a.resolution}, {a.threads} threads, x86 profile "
          f"({profile.to_metadata()['tvm_target'].get('mcpu')})")
    print_builds(rows, "shipped", [("build s", lambda r: f"{r['build_s']:.1f}"), (" schedules", lambda r: r["schedules"])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
