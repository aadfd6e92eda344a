"""How ``mntvm tune`` settles a task: its few best records timed again, side by side, before one is kept.

The search measures each candidate once (10 cold runs beside the template defaults, their ratios
scaled to the defaults' time: :mod:`mntvm.tuning.measure`); such a mean still carries a few percent
of noise, and the best of a few hundred of them is the luckiest as often as the fastest. On a Zen 3
(1.0/224, the 14x14 512->512 layer, 2 threads) the search's single timings put 16 KB chunks (``kc`` 16)
at 0.625 ms and no chunks (``kc`` 0) at 0.668 ms; settled, 40 timings each in the same minutes, 16 KB
chunks 0.613-0.633 ms (two tile orders), 8 KB 0.620, none 0.623, and the defaults' 4 KB 0.669-0.675:
the first three tie, and no chunks had been read 7 % slow.

So once a task's search ends, its finalists (the best records, up to :data:`FINALISTS`, within
:data:`WITHIN` of the best) are built again and measured in :data:`ROUNDS` rounds, all of them in
each round in a rotating order, against the same defaults; each gets a new record holding all its
new timings, which supersedes its earlier record of the same trace (the log keeps the last
measurement of a trace: :func:`mntvm.tuning.database.drop_superseded`). The lucky ones come out
slower than they were recorded, so records that were behind them may now look best on their single
timing: those within :data:`WITHIN` of the new best are timed again in turn, up to :data:`PASSES` times.
A task is settled when its best record holds the timings of a settling (:func:`is_settled`): read off
the log, so a log tuned before this, or one killed before its new records, is settled by the next tune.

Public entries: :func:`retime_finalists`, :func:`is_settled`, :func:`recorded_secs` (the time a log
holds for a trace: the defaults' is the scale of a task's costs, :mod:`mntvm.tuning.measure`).
"""
from __future__ import annotations

import math

from mntvm.tuning.measure import REPEATS, mean_secs

FINALISTS = 6  # records timed again at most
WITHIN = 1.10  # ... of those no slower than this times the best
ROUNDS = 4  # rounds of the runner's timings (mntvm.tuning.measure.REPEATS each)
PASSES = 3  # times the finalists are chosen again (their new timings may let others in)


def _key(trace) -> str:
    return str(trace.as_json())


def _records(db, mod) -> list:
    """``mod``'s records in ``db``, fastest first (none when it has no workload there)."""
    return db.get_top_k(db.commit_workload(mod), 1 << 30) if db.has_workload(mod) else []


def is_settled(db, mod, rounds: int = ROUNDS) -> bool:
    """Whether ``mod``'s best record in ``db`` was timed in a settling (``rounds`` x the runner's
    :data:`~mntvm.tuning.measure.REPEATS`), or it has no record to settle."""
    best = next((r for r in _records(db, mod) if math.isfinite(mean_secs(r.run_secs))), None)
    return best is None or len(best.run_secs) >= rounds * REPEATS


def recorded_secs(db, mod, trace) -> float | None:
    """The mean time ``db`` holds for ``trace`` (a trace of ``mod``): of its record of that trace
    with the most timings; None when it has none that ran."""
    key = _key(trace)
    recs = [r for r in _records(db, mod) if r.run_secs and _key(r.trace) == key]
    secs = mean_secs(max(recs, key=lambda r: len(r.run_secs)).run_secs) if recs else math.inf
    return secs if math.isfinite(secs) else None


def _finalists(db, mod, done: dict) -> list:
    """The records of ``mod``'s workload in ``db`` to time again: those no slower than :data:`WITHIN`
    times the best (up to :data:`FINALISTS`), leaving out the traces timed again already (``done``:
    trace -> its new mean, which counts for the best)."""
    best = min(done.values(), default=math.inf)
    fresh, seen = [], set(done)
    for rec in _records(db, mod):
        secs, key = mean_secs(rec.run_secs), _key(rec.trace)
        if math.isfinite(secs) and key not in seen:  # a trace twice (e.g. seeded twice): its best
            fresh.append((secs, rec))
            best = min(best, secs)
        seen.add(key)
        if len(fresh) == FINALISTS:
            break
    return [rec for secs, rec in fresh if secs <= WITHIN * best][:FINALISTS]


def _retime(db, mod, recs: list, target, builder, runner, rounds: int) -> dict:
    """Build ``recs`` again, time them in ``rounds`` rounds (all of them in each, in a rotating
    order), commit a record for each with all its new timings; returns {trace: new mean}, inf for
    one that no longer replays, builds or runs (it gets no record)."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from mntvm.tuning.space import drop_artifact

    out, traces, inputs = {}, [], []
    for rec in recs:
        sch = s_tir.Schedule(mod)
        try:
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
        except Exception:  # noqa: BLE001 - a record of an older template: it keeps its timing
            out[_key(rec.trace)] = math.inf
            continue
        traces.append(sch.trace)
        inputs.append(ms.builder.BuilderInput(sch.mod, target))
    built = builder.build(inputs)
    args = ArgInfo.from_prim_func(mod["main"])
    device = "cuda" if target.kind.name == "cuda" else "cpu"
    todo = [i for i, b in enumerate(built) if not b.error_msg]
    secs: dict[int, list | None] = {i: [] for i in todo}
    try:
        for r in range(rounds if todo else 0):
            order = todo[r % len(todo):] + todo[:r % len(todo)]
            ran = runner.run([ms.runner.RunnerInput(built[i].artifact_path, device, args) for i in order])
            for i, fut in zip(order, ran):
                res = fut.result()
                if res.error_msg or not res.run_secs or secs[i] is None:
                    secs[i] = None  # failed once: no new record
                else:
                    secs[i] += [float(s) for s in res.run_secs]
    finally:
        for b in built:
            drop_artifact(b.artifact_path)
    workload = db.commit_workload(mod)
    for i, trace in enumerate(traces):
        vals = secs.get(i)
        if vals:
            db.commit_tuning_record(ms.database.TuningRecord(trace, workload, vals, target, args))
        out[_key(trace)] = mean_secs(vals)
    return out


def retime_finalists(db, mod, target, builder, runner, rounds: int = ROUNDS) -> dict:
    """Time ``mod``'s finalists in ``db`` again with ``runner`` (built by ``builder``), in
    ``rounds`` rounds, and commit a record for each with all its new timings; then again for the
    records that now rank within :data:`WITHIN` of the best (their single timings now look better
    than the finalists' new ones), up to :data:`PASSES` times. Returns ``{"finalists": n timed
    again, "passes": n, "best_ms": the task's best mean now (its earlier records of the finalists
    left out), "before_ms": its best record's mean before}``. A best record far ahead of the others is timed again too: its one
    timing may be lucky too, or (in a log tuned before its task's costs shared one scale:
    :mod:`mntvm.tuning.measure`) scaled by another run's measure of the defaults."""
    done: dict[str, float] = {}
    before, passes = None, 0
    while passes < PASSES:
        recs = _finalists(db, mod, done)
        if not recs:
            break
        before = mean_secs(recs[0].run_secs) if before is None else before
        done.update(_retime(db, mod, recs, target, builder, runner, rounds))
        passes += 1
    timed = [s for s in done.values() if math.isfinite(s)]
    if not timed:
        return {"finalists": 0, "passes": passes}
    untouched = (mean_secs(r.run_secs) for r in _records(db, mod) if _key(r.trace) not in done)
    best = min(min(timed), next(untouched, math.inf))
    return {"finalists": len(timed), "passes": passes, "best_ms": 1e3 * best, "before_ms": 1e3 * before}
