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

Public entry: :func:`retime_finalists`.
"""
from __future__ import annotations

import math

from mntvm.tuning.measure import mean_secs

FINALISTS = 6  # records timed again at most
WITHIN = 1.10  # ... of those no slower than this times the best
ROUNDS = 4  # rounds of the runner's timings (mntvm.tuning.measure.REPEATS each)
PASSES = 3  # times the finalists are chosen again (their new timings may let others in)


def _key(trace) -> str:
    return str(trace.as_json())


def finalists(db, mod, done: dict | None = None) -> list:
    """The records of ``mod``'s workload in ``db`` to time again: those no slower than :data:`WITHIN`
    times the best (up to :data:`FINALISTS`), leaving out the traces timed again already (``done``:
    trace -> its new mean, which counts for the best)."""
    done = done or {}
    if not db.has_workload(mod):
        return []
    best = min(done.values(), default=math.inf)
    fresh, seen = [], set(done)
    for rec in db.get_top_k(db.commit_workload(mod), 1 << 30):
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
    """Time ``mod``'s :func:`finalists` in ``db`` again with ``runner`` (built by ``builder``), in
    ``rounds`` rounds, and commit a record for each with all its new timings; then again for the
    records that now rank within :data:`WITHIN` of the best (their single timings now look better
    than the finalists' new ones), up to :data:`PASSES` times. Returns ``{"finalists": n timed
    again, "passes": n, "traces": the workload's distinct traces (its records once the earlier
    ones of the finalists are dropped), "best_ms": the fastest new mean, "before_ms": the best
    record's mean before}``. A best record far ahead of the others is timed again too: its one
    timing may be lucky too, or (in a log tuned before its task's costs shared one scale:
    :mod:`mntvm.tuning.measure`) scaled by another run's measure of the defaults."""
    done: dict[str, float] = {}
    before, passes = None, 0
    while passes < PASSES:
        recs = finalists(db, mod, done)
        if not recs:
            break
        before = mean_secs(recs[0].run_secs) if before is None else before
        done.update(_retime(db, mod, recs, target, builder, runner, rounds))
        passes += 1
    timed = [s for s in done.values() if math.isfinite(s)]
    traces = len({_key(r.trace) for r in db.get_top_k(db.commit_workload(mod), 1 << 30)})
    if not timed:
        return {"finalists": 0, "passes": passes, "traces": traces}
    return {"finalists": len(timed), "passes": passes, "traces": traces, "best_ms": 1e3 * min(timed),
            "before_ms": 1e3 * before}
