"""Tune our templates' knobs (CPU and CUDA) with MetaSchedule into a schedules database.

Every task is searched over our templates' knobs (:func:`mntvm.tuning.search.knob_search`: the
template run at the knob values it tries), built by our builder, measured by our runner
(:mod:`mntvm.tuning.measure`) and logged in the database format of :mod:`mntvm.tuning.database`,
starting from a record of the template defaults. Measured here, each task ends settled: its best
records timed again side by side, the log then ranking them by the new timings
(:mod:`mntvm.tuning.settle`).

Tuning is resumable: records are appended per measured batch, a torn last line (kill -9) is dropped
on the next open, and a re-run tunes only the trials a task still lacks (and settles a task whose
best record was not timed again: a log from before settling, or a kill during it). One tune at a time per
folder (:mod:`mntvm.tuning.lock`); the output, its free space and the threads are checked before
any work, and each batch is checked to have reached the log (MetaSchedule's own writes ignore a
full disk).

Public entries: :func:`tune` (a model's tasks on a target profile: ``mntvm tune``) and
:func:`tune_funcs` (given task PrimFuncs, e.g. one layer in a benchmark; :func:`tune` uses it).
"""
from __future__ import annotations

import functools
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

from mntvm.core import arch
from mntvm.core.console import Progress
from mntvm.core.errors import MntvmError, one_line
from mntvm.core.machine import machine_facts
from mntvm.core.paths import data_dir
from mntvm.core.threads import check_threads
from mntvm.model import weights as W
from mntvm.model.calibration import load_calibration
from mntvm.model.quantize import quantize
from mntvm.targets.profiles import get_profile
from mntvm.templates.defaults import default_schedule
from mntvm.templates.lowering import has_templates, lower
from mntvm.templates.lowering_int8 import lower_int8
from mntvm.templates.registry import (RULE_DENSE, RULE_DENSE8, RULE_DW, RULE_DW8, RULE_DWPW, RULE_POOL, RULE_POOL8,
                                      RULE_PW, RULE_PW8, RULE_STEM, RULE_STEM8, tunable_tasks)
from mntvm.tuning.database import (META, RECORDS, ScheduleDB, check_destination_db, db_name, drop_superseded,
                                   open_schedules, task_mod, task_rule, write_meta)
from mntvm.tuning.lock import db_lock
from mntvm.tuning.measure import mean_secs, publish_reference, reference_base
from mntvm.tuning.measure import runner as measuring
from mntvm.tuning.search import knob_search
from mntvm.tuning.settle import is_settled, recorded_secs, retime_finalists
from mntvm.tuning.space import drop_artifact, ms_builder, tune_space, without_tvm_intrinsics
from mntvm.tuning.verify import apply_checked

MIN_FREE_BYTES = 50 << 20  # free space tune wants on the database's filesystem before it starts
# the fused depthwise + pointwise tasks (RULE_DWPW) are both "pw" and "dw"
OPS = {"pw": (RULE_PW, RULE_PW8, RULE_DWPW), "dw": (RULE_DW, RULE_DW8, RULE_DWPW), "stem": (RULE_STEM, RULE_STEM8),
       "fc": (RULE_DENSE, RULE_DENSE8), "pool": (RULE_POOL, RULE_POOL8)}


def _wanted_rules(ops: str) -> set:
    """The template rules that ``--ops`` (comma-separated keys of :data:`OPS`, or "all") selects."""
    wanted = set()
    for op in ops.split(","):
        if op == "all":
            wanted |= {r for rs in OPS.values() for r in rs}
        elif op in OPS:
            wanted |= set(OPS[op])
        else:
            raise MntvmError(f"unknown op '{op}' in --ops: choose from all, {', '.join(OPS)}")
    return wanted


def _check_measurable(profile, tracker: str | None, threads: int | None) -> None:
    """Refuse what cannot be tuned here: a family our templates don't cover, a missing toolchain,
    CUDA kernels without a GPU, another architecture's code without a board, threads < 1 or, when
    measured here, more than this machine's cores."""
    if not has_templates(profile):
        raise MntvmError(f"'{profile.name}' ({profile.family}) cannot be tuned: it is scheduled by TVM's DLight "
                         "rules; our templates cover CPUs and CUDA")
    profile.check_toolchain()
    if not tracker and profile.is_gpu:
        if not arch.local_cuda():
            raise MntvmError(f"no CUDA GPU on this machine to measure '{profile.name}' kernels: tune where "
                             "one is, or on a GPU board with --tracker HOST:PORT --key KEY")
    elif not tracker:
        foreign = arch.foreign_arch({"target": profile.to_metadata()})
        if foreign:
            want, here = foreign
            raise MntvmError(f"'{profile.name}' code is for {want} and cannot be measured on this {here} "
                             "machine: tune on its board with --tracker HOST:PORT --key KEY")
    if threads is not None and threads < 1:
        raise MntvmError(f"threads must be >= 1 (got {threads})")
    if not tracker:
        check_threads(threads)


def _check_output(path: Path) -> None:
    """Refuse, before any work, an output that tune must not write into (a file, a folder holding
    something else), one another process is tuning, or one on a filesystem with under
    :data:`MIN_FREE_BYTES` free."""
    check_destination_db(path)
    if path.is_dir():
        with db_lock(path):  # only a probe: tune_funcs holds it while it writes
            pass
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # not ours to judge: the write itself will say
    if free < MIN_FREE_BYTES:
        raise MntvmError(f"cannot write {path}: No space left on device ({free >> 20} MB free, tuning wants "
                         f"{MIN_FREE_BYTES >> 20} MB)")


class _LogCheck:
    """Checks that every record MetaSchedule committed to ``db`` reached the log file in ``path``:
    its C++ appends ignore write errors, so a full disk would lose trials without a word."""

    def __init__(self, path: Path, db):
        self.path, self.db = path, db
        self.offset = self.lines = 0
        self._count()
        self.base = (self.lines, len(db))

    def _count(self) -> None:
        """Count the log's lines written since the last call (a log that is gone or no longer a
        regular file has none)."""
        file = self.path / RECORDS
        try:
            st = os.stat(file)
        except FileNotFoundError:
            return
        if not stat.S_ISREG(st.st_mode):
            return
        if st.st_size < self.offset:
            raise MntvmError(f"cannot write {self.path}: {file.name} shrank while tuning")
        with open(file, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        self.lines += data.count(b"\n")

    def __call__(self) -> None:
        self._count()
        lost = (len(self.db) - self.base[1]) - (self.lines - self.base[0])
        if lost > 0:
            try:
                full = shutil.disk_usage(self.path).free < (1 << 20)
            except OSError:
                full = False
            why = "No space left on device" if full else "measured trials did not reach the log"
            raise MntvmError(f"cannot write {self.path}: {why} ({RECORDS} lacks {lost} of them)")


def _start_record(sdb, mod):
    """``mod`` scheduled as the best record for its workload in the MetaSchedule database ``sdb``
    (another log), or None when it has none or its trace no longer replays on the template."""
    from tvm import s_tir

    if not sdb.has_workload(mod):
        return None
    top = sdb.get_top_k(sdb.commit_workload(mod), 1)
    if not top:
        return None
    try:
        sch = s_tir.Schedule(mod)
        top[0].trace.apply_to_schedule(sch, remove_postproc=False)
        return sch
    except Exception:  # noqa: BLE001 - a record of an older template: the search goes on without it
        return None


def _build(builder, sch, target):
    """``sch`` built as the search builds its candidates: ``(library path, None)`` or ``(None, error)``."""
    from tvm.s_tir import meta_schedule as ms

    built = builder.build([ms.builder.BuilderInput(sch.mod, target)])[0]
    return (None, built.error_msg) if built.error_msg else (built.artifact_path, None)


def _seed(db, mod, target, runner, sch, built, what: str) -> bool:
    """Measure ``sch`` (a schedule of ``mod``, ``built`` by :func:`_build`) here and commit it to
    ``db``: the search starts from the database's best (MetaSchedule's initial population takes it);
    seeded with the template defaults, the log can never pick something slower than what compile
    does without it. False (and a line on stderr) when it cannot be built or measured."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    lib, err = built
    if not err:
        args = ArgInfo.from_prim_func(mod["main"])
        device = "cuda" if target.kind.name == "cuda" else "cpu"
        ran = runner.run([ms.runner.RunnerInput(lib, device, args)])[0].result()
        drop_artifact(lib)
        err = ran.error_msg or (None if ran.run_secs else "no timings")
    if err:  # the search still runs, from random knobs
        sys.stderr.write(f"tune: could not measure {what} ({one_line(RuntimeError(err))})\n")
        return False
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(mod), ran.run_secs,
                                                     target, args))
    return True


def _progress_callback(fn):
    """A MetaSchedule measure callback calling ``fn()`` after each measured batch (after the
    default callbacks, so the batch is already in the database), once the batch's libraries are
    removed."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for built in builder_results:  # measured: their libraries are no longer needed
                drop_artifact(built.artifact_path)
            fn()

    return _Progress()


def _best_ms(db, mod) -> float | None:
    if not db.has_workload(mod):
        return None
    top = db.get_top_k(db.commit_workload(mod), 1)
    secs = mean_secs(top[0].run_secs) if top else math.inf
    return 1e3 * secs if math.isfinite(secs) else None


def _count(db, mod) -> int:
    if not db.has_workload(mod):
        return 0
    return len(db.get_top_k(db.commit_workload(mod), 1 << 30))


def _open_or_create(path: Path, profile, force: bool) -> ScheduleDB:
    """The database in ``path`` (an existing folder), continued (it must be for ``profile`` unless
    ``force``) or new."""
    import tvm

    if (path / META).exists():
        return open_schedules(path, profile, force=force)
    meta = write_meta(path, {"format": 1, "target": profile.to_metadata(), "tvm_version": tvm.__version__,
                             "trials": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return ScheduleDB(path, meta)


def tune_funcs(funcs: Mapping, profile, out: str | os.PathLike, trials: int, *, label: str | None = None,
               tracker: str | None = None, key: str | None = None, chunk: int = 8, progress: bool = True,
               force: bool = False, threads: int | None = None, start=None, network=None) -> dict:
    """Tune ``funcs`` ({task name: PrimFunc} of a module lowered for ``profile``, e.g. from
    :func:`mntvm.templates.registry.tunable_tasks`) up to ``trials`` measured trials each, into the
    schedules database folder ``out`` (created, or continued); returns a summary.

    The database records each workload's task name as ``label/name`` (``name`` without a label).
    Measuring: locally on ``threads`` threads (1 by default), or on the board a tracker hands out
    for ``key``; each measured batch of ``chunk`` trials is committed before the next starts.
    A folder another process is tuning is refused (one writer per database).

    A task with no records yet starts from the template defaults and, with ``start`` (a
    :class:`~mntvm.tuning.database.ScheduleDB`: e.g. another CPU's log), from that log's best
    record for its workload, both measured here first; the summary's ``started_from`` names the
    log and the tasks it seeded.

    Tuned here, the log ends checked as compile checks it (:func:`mntvm.tuning.verify.apply_checked`):
    its tasks against their defaults and, with ``network`` (the lowered module they come from), the
    whole network too; the summary's ``check`` says what compile will use.
    """
    if trials < 1:
        raise MntvmError(f"trials must be >= 1 (got {trials})")
    _check_measurable(profile, tracker, threads)
    path, t0 = Path(out), time.time()
    _check_output(path)
    summary = {"database": str(path), "tasks": {}, "trials_run": 0, "skipped": [], "exhausted": []}
    if start is not None and Path(start.path).resolve() == path.resolve():
        start = None  # continuing the log itself
    if start is not None:
        summary["started_from"] = {"database": start.path.name, "stand_in": start.stand_in, "tasks": []}
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MntvmError(f"cannot write {path}: {e.strerror or e}") from None
    local_cpu = not tracker and not profile.is_gpu
    with db_lock(path), tempfile.TemporaryDirectory(prefix="mntvm-ref-") as ref, without_tvm_intrinsics():
        drop_superseded(path)  # finalists timed anew before a kill: their earlier records go
        with measuring(tracker, key, threads or 1, gpu=profile.is_gpu, reference=ref if local_cpu else None) as runner:
            sdb = _open_or_create(path, profile, force)
            db = sdb.database()
            mods = _search(db, funcs, profile, trials, runner, chunk, progress, summary, _LogCheck(path, db),
                           start.database() if start is not None else None, ref if local_cpu else None,
                           busy_threads=profile.threads if not profile.is_gpu and (threads or 1) < profile.threads
                           else None)
        drop_superseded(path)  # the finalists' earlier records: the log now ranks by their new timings
        meta = sdb.meta
        meta.setdefault("trials", {}).update({n: t["trials"] for n, t in summary["tasks"].items()})
        if not tracker and profile.detected.get("mcpu"):  # measured here: what compile picks stand-ins by
            meta.setdefault("machine", machine_facts())
        names = meta.setdefault("tasks", {})  # workload hash -> "<label>/<task>", for `mntvm schedules show`
        for name, mod in mods.items():
            if db.has_workload(mod):
                shash = str(db.commit_workload(mod).as_json()[0])
                names[shash] = sorted(set(names.get(shash, [])) | {f"{label}/{name}" if label else name})
        meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        sdb.meta = write_meta(path, meta)
    if summary["tasks"] and not tracker:
        check = _check_against_defaults(sdb, profile, funcs, network)
        if check is not None:
            summary["check"] = check
    summary["seconds"] = time.time() - t0
    return summary


def _check_against_defaults(sdb: ScheduleDB, profile, funcs: Mapping, network=None) -> dict | None:
    """The finished log's tasks timed against their template defaults here, in alternation, as
    compile does before it uses a log on this CPU (:func:`mntvm.tuning.verify.apply_checked`, which
    decides when a check applies; same verdict cache: compile then times nothing); with ``network``
    (a lowered network holding ``funcs``), the whole network with the tasks kept, too. Each task's
    best record was picked from single timings taken minutes apart; this says which of them really
    beat the defaults (``log`` / ``defaults``: the tasks' own verdicts), and ``network`` whether the
    network with them does (where not, compile uses the defaults for all). None when there was
    nothing to check here."""
    import tvm

    _, kept, c, _ = apply_checked(sdb, network if network is not None else tvm.IRModule(dict(funcs)), profile)
    if c is None:
        return None
    kept = kept + (c.get("network") or {}).get("reverted", [])  # the tasks' own verdicts
    if network is not None:  # the network holds tasks of other ops too: report this tune's
        kept, c["reverted"] = [n for n in kept if n in funcs], [n for n in c["reverted"] if n in funcs]
    return {"log": sorted(kept), "defaults": c["reverted"], "measured": c["measured"], "seconds": c["seconds"],
            "network": c.get("network")}


def _publish_defaults(folder: str, name: str, mod, built, base_s: float | None = None) -> None:
    """The task's template defaults, ``built`` by :func:`_build` (the build its seed is measured
    from), copied into ``folder`` and published as the reference its candidates are timed against
    (:func:`mntvm.tuning.measure.publish_reference`), their costs scaled by ``base_s`` (the time
    the log holds for the defaults) if given; none if they did not build."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    lib, err = built
    if err:
        publish_reference(folder, None)
        return
    ref = Path(folder) / f"{name}.so"
    shutil.copyfile(lib, ref)  # the runner deletes the build once it has measured it
    publish_reference(folder, ref, ArgInfo.from_prim_func(mod["main"]), base_s)


def _search(db, funcs: Mapping, profile, trials: int, runner, chunk: int, progress: bool, summary: dict,
            check, start_db=None, reference: str | None = None, busy_threads: int | None = None) -> dict:
    """Search each task's knobs until it has ``trials`` records in ``db`` or its space runs out;
    fills ``summary`` (tasks, trials_run, skipped, exhausted); returns {name: workload module}.
    ``check()`` runs after each commit (:class:`_LogCheck`); ``start_db``: the MetaSchedule database
    of the log named in ``summary["started_from"]``, whose best record for a new task is measured
    and committed right after the defaults' (:func:`tune_funcs`). ``reference``: the local runner's
    reference folder, where each task's template defaults are published before its measurements.
    Locally (with ``reference``), a task whose search added records, or whose best record was not
    timed again (:func:`mntvm.tuning.settle.is_settled`), ends with its finalists timed again side by
    side (:func:`mntvm.tuning.settle.retime_finalists`; ``summary``'s task ``settled``); the new records
    supersede the old ones in the file once the tune ends. ``busy_threads``: the profile's threads when
    kernels are timed on fewer (:func:`mntvm.tuning.search.knob_search`)."""
    import logging

    from tvm.s_tir import meta_schedule as ms

    # MetaSchedule echoes its task tables and XGB iterations to stdout at its logger's level (DEBUG
    # when unset), and each tune_tir's logging config sets that level back to DEBUG: so WARNING is
    # set before every run. They stay in its work-dir log files; our progress bar is on stderr.
    quiet = functools.partial(logging.getLogger("tvm.s_tir.meta_schedule").setLevel, logging.WARNING)
    ttarget = profile.tvm_target()
    schedule = functools.partial(default_schedule, target=ttarget,
                                 vector_bits=None if profile.is_gpu else profile.vector_bits)
    builder = ms_builder(cross_compiler=profile.cross_compiler, target=ttarget)
    mods = {n: task_mod(f) for n, f in funcs.items()}
    todo = {n: max(0, trials - _count(db, m)) for n, m in mods.items()}
    total = sum(todo.values())
    start = sum(_count(db, m) for m in mods.values())
    not_needed = 0  # trials an exhausted task's space could not supply (counted as done, for the bar)
    retimed = 0  # records of finalists timed again (not trials)

    def measured() -> int:
        return sum(_count(db, m) for m in mods.values()) - start - retimed

    try:
        with Progress(total, "tune", enabled=progress and total > 0) as bar:
            def show(name, mod):
                if bar.enabled:
                    best = _best_ms(db, mod)
                    bar.update(measured() + not_needed)
                    bar.postfix(f"{name}: best {best if best is not None else float('nan'):.4f} ms")

            for name, mod in mods.items():
                left = todo[name]
                before = _count(db, mod)
                unsettled = reference is not None and not is_settled(db, mod)
                if left == 0 and not unsettled:
                    summary["skipped"].append(name)
                    continue
                defaults = schedule(mod)
                built = _build(builder, defaults, ttarget) if before == 0 or reference is not None else None
                if reference is not None:  # scaled by the defaults' time in the log: one scale over runs
                    _publish_defaults(reference, name, mod, built, recorded_secs(db, mod, defaults.trace))
                if before == 0 and _seed(db, mod, ttarget, runner, defaults, built, "the default knobs"):
                    check()
                    left -= 1
                    show(name, mod)
                if before == 0 and left > 0 and start_db is not None:
                    sch = _start_record(start_db, mod)
                    what = f"{summary['started_from']['database']}'s record"
                    if sch is not None and _seed(db, mod, ttarget, runner, sch, _build(builder, sch, ttarget), what):
                        check()
                        left -= 1
                        summary["started_from"]["tasks"].append(name)
                        show(name, mod)
                # One MetaSchedule run per task, so that its cost model learns across batches; each
                # measured batch (``chunk`` trials) is committed to the JSON database before the next
                # one starts (a kill loses at most the batch in flight).
                if left > 0:
                    quiet()
                    with tempfile.TemporaryDirectory() as work:
                        ms.tune_tir(mod, ttarget, work, max_trials_global=left, num_trials_per_iter=min(chunk, left),
                                    builder=builder, runner=runner, database=db, space=tune_space(ttarget),
                                    strategy=knob_search(vector_bits=None if profile.is_gpu else profile.vector_bits,
                                                         busy_threads=busy_threads),
                                    measure_callbacks=list(ms.measure_callback.MeasureCallback.create("default"))
                                    + [_progress_callback(lambda name=name, mod=mod: (check(), show(name, mod)))])
                added = _count(db, mod) - before
                if added < todo[name]:  # the search ran out of new candidates: this task's space is exhausted
                    summary["exhausted"].append(name)
                    not_needed += todo[name] - added
                count = _count(db, mod)
                summary["tasks"][name] = {"rule": task_rule(funcs[name]), "trials": count,
                                          "best_ms": _best_ms(db, mod)}
                if reference is not None and (count != before or unsettled):  # new records, or not settled
                    s = retime_finalists(db, mod, ttarget, builder, runner)
                    check()
                    retimed += s["finalists"]
                    summary["tasks"][name]["settled"] = s
                    if "best_ms" in s:  # the log's best once the finalists' earlier records go
                        summary["tasks"][name]["best_ms"] = s["best_ms"]
                show(name, mod)
                if reference is not None:  # the scale of this task's costs: its defaults, timed by the runner
                    base = reference_base(reference)
                    summary["tasks"][name]["defaults_ms"] = None if base is None else 1e3 * base
    finally:
        builder.close()
    summary["trials_run"] = measured()
    return mods


def tune(cfg, target: str = "x86", trials: int = 32, ops: str = "all", out: str | os.PathLike | None = None,
         tracker: str | None = None, key: str | None = None, targets_dir=None, chunk: int = 8,
         progress: bool = True, force: bool = False, threads: int | None = None,
         mcpu: str | None = None, mattr=None, dtype: str = "float32", start_from: str | None = "default") -> dict:
    """Tune each task of ``cfg`` on ``target`` up to ``trials`` measured trials; returns a summary.

    ``dtype="int8"`` tunes the int8 templates (the network quantized from seeded weights and
    inputs: a task depends on the layer shapes only, so the records serve any int8 model of
    that shape). Both dtypes' records can live in one database.

    Kernels are measured locally on ``threads`` threads, 1 by default: on a 2-core Zen4 VM the
    log tuned on 1 thread ran the network faster at 1 *and* 2 threads (10.7/5.6-5.9 ms) than the
    one tuned on 2 (11.0-11.1/5.9-6.0 ms); tile choice is a per-core matter and 2-thread timings
    on a shared VM are noisier. Where that is fewer threads than the profile's, the search leaves
    out the points that would keep fewer of the profile's threads busy than the template defaults
    do (:func:`mntvm.tuning.search.knob_search`). Through a tracker, the board decides.

    Writes (or continues) the database in ``out`` (default ``schedules/<db_name>/``). Each new
    task starts from the template defaults and from ``start_from``'s best record for it:
    "default" is the log compile would use (the target's shipped one, or another CPU's that
    stands in for it), None none, or a database folder (of this target unless ``force``).
    """
    if trials < 1:
        raise MntvmError(f"trials must be >= 1 (got {trials})")
    wanted = _wanted_rules(ops)
    profile = get_profile(target, targets_dir=targets_dir, mcpu=mcpu, mattr=mattr)
    _check_measurable(profile, tracker, threads)  # before lowering: refusals come at once
    out = Path(out) if out else data_dir("schedules") / db_name(profile)
    _check_output(out)
    if dtype == "int8":
        act = profile.check_int8()
        net = quantize(cfg, W.random_weights(cfg), load_calibration(None, cfg), act_dtype=act)
        low = lower_int8(net, profile)
    elif dtype == "float32":
        low = lower(cfg, W.random_weights(cfg), profile)
    else:
        raise MntvmError(f"--dtype {dtype!r}: choose float32 or int8")
    tasks = {n: f for n, f in tunable_tasks(low).items() if task_rule(f) in wanted}
    start = open_schedules(start_from, profile, force=force)
    return tune_funcs(tasks, profile, out, trials,
                      label=cfg.tag, tracker=tracker, key=key, chunk=chunk, progress=progress, force=force,
                      threads=threads, start=start, network=low)
