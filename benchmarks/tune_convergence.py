"""How fast `mntvm tune` converges on this machine: from nothing, and from a stand-in log.

Tunes one variant twice into fresh folders, as ``mntvm tune --target x86 --trials N --threads T``
does: ``--start-from none`` (each task starts from the template defaults only) and
``--start-from LOG`` (default: the log compile would use here, e.g. another CPU's standing in;
each new task also starts from that log's best record for it, measured here first). Then reads
each run's records in the order they were measured and prints, after k trials per task, the
network's estimated time relative to the template defaults, and after how many trials each run
is at or below the final estimate of the run from nothing::

    sum over tasks of (calls in the network x defaults' time x best-so-far / defaults) / sum of (calls x defaults' time)

Each task's first trial is its defaults, and tune times every candidate side by side with them
(ratios, not raw times: a slow minute does not look like a bad candidate), so the curve is the
search's own claim, to about 2 %. The defaults' time is the scale tune reports per task (its summary's
``defaults_ms``), not the log's first record: once tune has timed a task's finalists again, their new
records (the defaults' often among them) replace the old ones at the end of the log, and the first
record left is a drawn candidate (on an Emerald Rapids-class VM, read as the baseline, 2-3x slower than
the defaults: a claimed 0.375x). The closing check of each run (tasks kept from the log vs back
to the defaults, timed side by side at the profile's threads) is printed too; a whole-network
A/B of a log is ``schedules_effect.py --log DIR``.

    python benchmarks/tune_convergence.py [--alpha 1.0] [--resolution 224] [--trials 16] [--threads 2]
        [--start-from default|DIR] [--keep DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import kernel_calls, model_options  # noqa: E402
from mntvm.model import weights as W  # noqa: E402
from mntvm.model.network import MobileNetConfig  # noqa: E402
from mntvm.targets.profiles import get_profile  # noqa: E402
from mntvm.templates.lowering import lower  # noqa: E402
from mntvm.tuning import tune  # noqa: E402
from mntvm.tuning.database import load  # noqa: E402
from mntvm.tuning.manage import record_seconds  # noqa: E402

CHECKPOINTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def task_costs(folder: Path) -> dict[str, list[float]]:
    """{task name: [seconds of each record, in the order measured]} of a database folder (failed
    measurements left out)."""
    db = load(folder)
    names = db.meta["tasks"]  # {structural hash: ["label/name", ...]}
    costs: dict[str, list[float]] = {}
    for _, widx, rec in db.records:
        secs = record_seconds(rec)
        if secs == float("inf"):
            continue
        for name in {label.split("/")[-1] for label in names[db.workloads[widx][1][0]]}:  # one task, many variants
            costs.setdefault(name, []).append(secs)
    return costs


def curve(costs: dict[str, list[float]], calls: Counter, trials: int,
          defaults: dict[str, float] | None = None) -> list[tuple[int, float]]:
    """[(k, network estimate relative to the defaults after k trials per task)]: ``defaults`` holds each
    task's defaults' time (the scale tune recorded its costs in: its summary's ``defaults_ms``), measured as
    its first trial; a task without one takes its first record. A task with fewer than k records keeps
    its best. The finalists that tune timed again (:mod:`mntvm.tuning.settle`, usually with the defaults
    among them) are at the end of the log, so before the last k the curve is on the slow side."""
    base = {t: (defaults or {}).get(t) or c[0] for t, c in costs.items()}
    weight = {t: calls[t] * base[t] for t in costs if t in calls}
    total = sum(weight.values())
    out = []
    for k in (*[k for k in CHECKPOINTS if k < trials], trials):
        est = sum(w * min(base[t], *costs[t][:k]) / base[t] for t, w in weight.items()) / total
        out.append((k, est))
    return out


def first_at(points: list[tuple[int, float]], level: float) -> int | None:
    """The first k whose estimate is at or below ``level`` (None: never, in these trials)."""
    return next((k for k, e in points if e <= level), None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(p)
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--start-from", default="default", help="the stand-in log: default (compile's choice) or a folder")
    p.add_argument("--keep", help="write the two logs under this new folder (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.start_from == "none":
        p.error("--start-from: the stand-in log to compare with starting from nothing (a folder or default), not none")
    if a.keep and Path(a.keep).exists():
        p.error(f"--keep: {a.keep} exists; give a new folder (tune would continue the logs in it)")
    cfg = MobileNetConfig(alpha=a.alpha, resolution=a.resolution)
    calls = Counter(name for name, _ in kernel_calls(lower(cfg, W.random_weights(cfg), get_profile("x86"))))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.keep or tmp)
        runs = {}
        for start in ("none", a.start_from):
            out = root / f"from-{'none' if start == 'none' else 'stand-in'}"
            s = tune(cfg, target="x86", trials=a.trials, out=out, threads=a.threads, start_from=start, progress=False)
            defaults = {n: t["defaults_ms"] / 1e3 for n, t in s["tasks"].items() if t.get("defaults_ms")}
            points = curve(task_costs(out), calls, a.trials, defaults)
            check = s.get("check") or {}
            runs[start] = {"seconds": s["seconds"], "trials_run": s["trials_run"],
                           "started_from": (s.get("started_from") or {}).get("database"),
                           "seeded_tasks": len((s.get("started_from") or {}).get("tasks", [])),
                           "curve": points, "final": points[-1][1],
                           "check_kept": len(check.get("log", [])), "check_reverted": len(check.get("defaults", []))}
    none, stand = runs["none"], runs[a.start_from]
    for r in runs.values():
        r["reaches_none_final_at"] = first_at(r["curve"], none["final"])
    if a.json:
        print(json.dumps({"model": cfg.tag, "trials": a.trials, "threads": a.threads, "runs": runs}, indent=1))
        return 0
    print(f"{cfg.tag}: `mntvm tune --trials {a.trials} --threads {a.threads}`, twice; the network's estimated "
          f"time after k trials per task, relative to the template defaults (the search's claims)")
    print(f"  stand-in: {stand['started_from']} (its record measured for {stand['seeded_tasks']} tasks)")
    print(f"  {'k':>4}  {'from none':>10}  {'from stand-in':>13}")
    for (k, e0), (_, e1) in zip(none["curve"], stand["curve"]):
        print(f"  {k:>4}  {e0:>10.3f}  {e1:>13.3f}")
    for label, r in (("from none", none), ("from stand-in", stand)):
        print(f"  {label}: {r['seconds']:.0f} s, {r['trials_run']} trials; final {r['final']:.3f}; at or below from "
              f"none's final ({none['final']:.3f}) after {r['reaches_none_final_at']} trial(s) per task; closing "
              f"check: {r['check_kept']} tasks kept from the log, {r['check_reverted']} back to the defaults")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
