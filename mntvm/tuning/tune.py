"""Tune our templates' knobs (CPU and CUDA) with MetaSchedule and keep the results as shipped, reusable logs.

A schedules database is a folder holding MetaSchedule's JSON database (``database_workload.json``,
``database_tuning_record.json``) plus ``mntvm-db.json``: the target profile and full TVM target it
was tuned for, the TVM version, and the trials spent per task. ``schedules/<name>/`` in the
repository holds the shipped ones; ``<name>`` is the profile name, followed by the detected CPU for
profiles that describe "this machine" (e.g. ``x86-emeraldrapids``), since a log tuned on one CPU
says nothing about another.

Tuning is resumable: records are appended per measured batch, a torn last line (kill -9) is dropped
on the next open, and a re-run tunes only the trials a task still lacks.

Public entries: :func:`tune`; :func:`show`, :func:`merge` and :func:`prune` (``mntvm schedules``)
inspect, merge and prune databases; compile uses :func:`open_schedules`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mntvm.core import arch
from mntvm.core.atomic import atomic_dir, write_text
from mntvm.core.errors import MntvmError
from mntvm.core.paths import data_dir

META = "mntvm-db.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
OPS = {"pw": ("mntvm_pw",), "dw": ("mntvm_dw",), "stem": ("mntvm_stem",), "fc": ("mntvm_dense",),
       "pool": ("mntvm_pool",)}
TARGET_KEYS = ("kind", "arch", "mtriple", "mcpu", "mattr", "mabi", "mfloat-abi")


def db_name(profile) -> str:
    """Folder name of a profile's database under ``schedules/``."""
    if not profile.detected:
        return profile.name
    # "this machine" profiles: the CPU the code is for (detected, or set with --mcpu)
    mcpu = profile.to_metadata()["tvm_target"].get("mcpu") or profile.detected.get("mcpu")
    return f"{profile.name}-{mcpu}" if mcpu else profile.name


def _target_essentials(tvm_target: dict) -> dict:
    return {k: tvm_target.get(k) for k in TARGET_KEYS if tvm_target.get(k) not in (None, "", [])}


def _parse_lines(path: Path) -> tuple[list, bool]:
    """``([(line number, row), ...], torn)`` of a JSON-lines database file, without touching it: a
    torn final line (a kill mid-write) is left out and reported; any other bad line is a corrupt log."""
    if not path.exists():
        return [], False
    raw = path.read_text().splitlines()
    rows, torn = [], False
    for i, line in enumerate(raw):
        if not line.strip():
            continue
        try:
            rows.append((i + 1, json.loads(line)))
        except json.JSONDecodeError:
            if i == len(raw) - 1:
                torn = True
                continue
            raise MntvmError(f"corrupt schedules log {path}: line {i + 1} is not JSON") from None
    return rows, torn


def _read_lines(path: Path) -> list:
    """JSON lines of a database file; a torn final line (a kill mid-write) is dropped and the file
    rewritten atomically; any other bad line is a corrupt log."""
    numbered, torn = _parse_lines(path)
    rows = [r for _, r in numbered]
    if torn:
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


@dataclass
class ScheduleDB:
    """A schedules database folder."""

    path: Path
    meta: dict
    stand_in: bool = False  # the shipped log of another CPU of the same ISA (see _stand_in)

    def _check_consistency(self) -> tuple[list, list]:
        workloads = _read_lines(self.path / WORKLOADS)
        records = _read_lines(self.path / RECORDS)
        for i, r in enumerate(records):
            if not (isinstance(r, list) and len(r) == 2 and isinstance(r[0], int) and 0 <= r[0] < len(workloads)):
                raise MntvmError(f"corrupt schedules log {self.path / RECORDS}: record {i + 1} "
                                 "does not refer to a known workload")
        return workloads, records

    def database(self):
        from tvm.s_tir import meta_schedule as ms

        self._check_consistency()
        try:
            return ms.database.JSONDatabase(work_dir=str(self.path), allow_missing=True)
        except Exception as e:  # noqa: BLE001 - TVM raises several types for a bad file
            raise MntvmError(f"corrupt schedules log in {self.path}: {str(e).splitlines()[-1]}") from None

    def identity(self) -> dict:
        h = hashlib.sha256()
        n = 0
        for name in (WORKLOADS, RECORDS):
            p = self.path / name
            if p.exists():
                data = p.read_bytes()
                h.update(data)
                n += data.count(b"\n") if name == RECORDS else 0
        tgt = self.meta.get("target", {})
        return {"path": str(self.path), "name": self.path.name, "sha256": h.hexdigest()[:16], "records": n,
                "target": tgt.get("name"), "mcpu": (tgt.get("tvm_target") or {}).get("mcpu"),
                "stand_in": self.stand_in}

    def apply(self, low, target):
        """Apply tuned records to a lowered module; returns (module, names of the tasks covered)."""
        from mntvm.templates.cpu import tunable_tasks
        from mntvm.tuning.space import apply_records

        mod = apply_records(low, self.database(), target)
        covered = []
        for name, func in tunable_tasks(low).items():
            new = mod[name]
            if new.attrs is not None and "tirx.is_scheduled" in new.attrs and not func.same_as(new):
                covered.append(name)
        return mod, sorted(covered)


def open_schedules(spec, profile, force: bool = False) -> ScheduleDB | None:
    """Resolve ``--schedules``: "default" (shipped, if any), None/"none", or a folder."""
    if spec is None or str(spec) == "none":
        return None
    stand_in = None
    if str(spec) == "default":
        path = data_dir("schedules") / db_name(profile)
        if not (path / META).is_file():
            path = _stand_in(profile)
            if path is None:
                return None
            stand_in = path.name
    else:
        path = Path(spec)
        if not (path / META).is_file():
            raise MntvmError(f"{path} is not a schedules database (no {META}); "
                             "make one with `mntvm tune -o DIR`")
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as e:
        raise MntvmError(f"corrupt schedules database {path / META}: {e}") from None
    db = ScheduleDB(path, meta, stand_in=stand_in is not None)
    mine = _target_essentials(profile.to_metadata()["tvm_target"])
    theirs = _target_essentials(meta.get("target", {}).get("tvm_target", {}))
    if mine != theirs and not force and stand_in is None:
        diff = ", ".join(f"{k}: {theirs.get(k)!r} vs {mine.get(k)!r}" for k in sorted(set(mine) | set(theirs))
                         if mine.get(k) != theirs.get(k))
        raise MntvmError(f"schedules {path} were tuned for target '{meta.get('target', {}).get('name')}', "
                         f"not '{profile.name}' ({diff}); pass --force-schedules to apply them anyway")
    return db


def _stand_in(profile) -> Path | None:
    """A shipped log that can stand in for a "this machine" profile whose CPU has none of its own:
    same profile and target except ``mcpu``, same vector width (the templates' tiles are sized
    to it). A log tuned on another CPU of the same ISA beats template defaults by far more than it
    loses to a log of the CPU's own (MobileNetV1 1.0/224 on a Zen4: 20.0 ms on defaults, 12.5 ms
    with the Emerald Rapids log at 1 thread), so compile uses it and says so; ``--schedules DIR``
    with a foreign log is still refused unless forced. The log with the most records wins."""
    mine = _target_essentials(profile.to_metadata()["tvm_target"])
    mine.pop("mcpu", None)
    bits = profile.vector_bits
    best = None
    for path in sorted(data_dir("schedules").glob(f"{profile.name}-*")):
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        tgt = meta.get("target", {})
        theirs = _target_essentials(tgt.get("tvm_target", {}))
        theirs.pop("mcpu", None)
        if theirs != mine or tgt.get("name") != profile.name or tgt.get("vector_bits") != bits:
            continue
        n = ScheduleDB(path, meta).identity()["records"]
        if best is None or n > best[0]:
            best = (n, path)
    return best[1] if best else None


def _rule_of_func(func) -> str | None:
    from mntvm.templates.cpu import _all_blocks, _rule_of

    for b in _all_blocks(func):
        r = _rule_of(b)
        if r:
            return r
    return None


def _task_mod(func):
    """The workload module exactly as MetaSchedule keys it (``tune_context._normalize_mod``)."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    if func.attrs is not None and "global_symbol" in func.attrs:
        func = func.without_attr("global_symbol")
    return _normalize_mod(func)


_EVICT: dict = {}
EVICT_BYTES_PER_THREAD = 2 << 20  # read + written: 4 MB per core, > the L2s we target (1-2 MB), << L3


def _evict_private_caches(*args) -> None:
    """Runner f_preproc: every pool thread streams its own 2 x EVICT_BYTES_PER_THREAD, which pushes
    L1/L2 out on each core but leaves the L3 (where a network's weights live between inferences);
    then the first argument (the layer's input, just written by the previous layer in the
    network) is read back in."""
    import numpy as np
    import tvm
    from tvm import te

    if "f" not in _EVICT:
        nt = max(1, int(tvm.get_global_func("runtime.NumThreads")()))
        a = te.placeholder((nt, EVICT_BYTES_PER_THREAD // 4), "float32", name="a")
        b = te.compute(a.shape, lambda i, j: a[i, j] + 1.0, name="b")
        sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
        i, j = sch.get_loops(sch.get_sblock("b"))
        sch.parallel(i)
        sch.vectorize(sch.split(j, [None, 16])[1])
        _EVICT["f"] = tvm.compile(sch.mod, target="llvm")["main"]
        _EVICT["bufs"] = [tvm.runtime.tensor(np.zeros((nt, EVICT_BYTES_PER_THREAD // 4), "float32")) for _ in range(2)]
    _EVICT["f"](*_EVICT["bufs"])
    if args and hasattr(args[0], "numpy"):
        args[0].numpy()


def _network_like_evaluator(rt_mod, device, evaluator_config, repeated_args):
    """LocalRunner f_run_evaluator: each repeat starts with private caches cold, L3 warm, input
    warm (:func:`_evict_private_caches`), as a layer finds them inside the network."""
    import tvm

    tvm.register_global_func("mntvm.evict_private_caches", _evict_private_caches, override=True)
    f = rt_mod.time_evaluator(rt_mod.entry_name, device, number=evaluator_config.number,
                              repeat=evaluator_config.repeat, min_repeat_ms=evaluator_config.min_repeat_ms,
                              f_preproc="mntvm.evict_private_caches")
    costs = []
    for args in repeated_args:
        device.sync()
        costs += [float(c) for c in f(*args).results]
    return costs


def _alloc_args_remote(session, device, args_info, alloc_repeat):
    """RPCRunner f_alloc_argument: seeded uniform data made here and copied to the board (the
    default fills on the board with ``tvm.contrib.random``, which runtime-only installs lack)."""
    import numpy as np
    import tvm

    rng = np.random.default_rng(0)
    repeated = []
    for _ in range(alloc_repeat):
        args = []
        for kind, dtype, shape in args_info:
            if kind != "TENSOR":
                raise ValueError(f"unsupported argument kind {kind}")
            a = tvm.runtime.empty(shape=shape, dtype=dtype, device=device)
            a.copyfrom(rng.uniform(-1, 1, shape).astype(dtype))
            args.append(a)
        repeated.append(args)
    return repeated


def _runner(tracker: str | None, key: str | None, threads: int = 1, gpu: bool = False):
    from tvm.s_tir import meta_schedule as ms

    # Measure as the kernel runs inside the network: its input was just written by the previous
    # layer (warm); its weights were last touched an inference ago, so they are out of L1/L2 but
    # (4-17 MB of them) in L3. Locally, each repeat evicts the private caches first
    # (_network_like_evaluator). Warm-cache timing favoured tiles that lose 10-50 % in the network
    # (pw12/pw13 ran 0.33 ms alone, 0.55 ms in the network); flushing everything to DRAM
    # (TVM's cache_flush_cpu_non_first_arg, still used on boards through RPC, where our evaluator
    # cannot run) made weight streaming from DRAM look like the bottleneck it is not.
    # GPU kernels: TVM's default timing (back-to-back launches; weights stay in the L2, as
    # between a network's inferences).
    cfg = ms.runner.EvaluatorConfig(number=1 if not gpu else 10, repeat=10, min_repeat_ms=0,
                                    enable_cpu_cache_flush=not gpu)
    if not tracker and gpu:
        return ms.runner.LocalRunner(evaluator_config=cfg, timeout_sec=60)
    if not tracker:
        import functools

        from mntvm.core.threads import set_threads

        # the measuring process's pool gets ``threads`` (TVM's own default halves the x86 cores,
        # assuming SMT: 1 thread on a 2-core VM)
        return ms.runner.LocalRunner(evaluator_config=cfg, timeout_sec=60,
                                     f_run_evaluator=_network_like_evaluator,
                                     initializer=functools.partial(set_threads, threads))
    from mntvm.remote.rpc import open_session, parse_addr

    host, port = parse_addr(tracker)
    open_session(tracker, key, wait_s=30).remote  # fail fast: unreachable tracker / no board
    return ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                       session_timeout_sec=120),
        evaluator_config=cfg, max_workers=1, f_alloc_argument=_alloc_args_remote)


def _seed_with_defaults(db, mod, target, builder, runner, default_schedule) -> bool:
    """Measure ``mod`` at the templates' default knobs and commit it as the task's first record:
    the search starts from it (MetaSchedule's initial population takes the database's best) and
    the log can never pick something slower than what compile does without it."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    sch = default_schedule(mod)
    built = builder.build([ms.builder.BuilderInput(sch.mod, target)])[0]
    err = built.error_msg
    if not err:
        args = ArgInfo.from_prim_func(mod["main"])
        device = "cuda" if target.kind.name == "cuda" else "cpu"
        ran = runner.run([ms.runner.RunnerInput(built.artifact_path, device, args)])[0].result()
        err = ran.error_msg or (None if ran.run_secs else "no timings")
    if err:  # the search still runs, from random knobs
        sys.stderr.write(f"tune: could not measure the default knobs ({err.strip().splitlines()[-1]})\n")
        return False
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(mod), ran.run_secs,
                                                     target, args))
    return True


def _strategy():
    """Evolutionary search sized for our spaces (tens to a few hundred points per task, not the
    millions of a generic MetaSchedule space): TVM's default population of 512 x 4 generations
    costs more time per batch than building and measuring it."""
    from tvm.s_tir import meta_schedule as ms

    return ms.search_strategy.EvolutionarySearch(population_size=128, init_min_unmeasured=32,
                                                 genetic_num_iters=2)


def _progress_callback(fn):
    """A MetaSchedule measure callback calling ``fn()`` after each measured batch (after the
    default callbacks, so the batch is already in the database)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            fn()

    return _Progress()


def _best_ms(db, mod) -> float | None:
    if not db.has_workload(mod):
        return None
    top = db.get_top_k(db.commit_workload(mod), 1)
    if not top or not top[0].run_secs:
        return None
    secs = [float(s) for s in top[0].run_secs]
    return 1e3 * sum(secs) / len(secs)


def _count(db, mod) -> int:
    if not db.has_workload(mod):
        return 0
    return len(db.get_top_k(db.commit_workload(mod), 1 << 30))


def tune(cfg, target: str = "x86", trials: int = 32, ops: str = "all", out: str | os.PathLike | None = None,
         tracker: str | None = None, key: str | None = None, targets_dir=None, chunk: int = 8,
         progress: bool = True, force: bool = False, threads: int | None = None,
         mcpu: str | None = None, mattr=None) -> dict:
    """Tune each task of ``cfg`` on ``target`` up to ``trials`` measured trials; returns a summary.

    Kernels are measured locally on ``threads`` threads, 1 by default: on a 2-core Zen4 VM the
    log tuned on 1 thread ran the network faster at 1 *and* 2 threads (10.7/5.6-5.9 ms) than the
    one tuned on 2 (11.0-11.1/5.9-6.0 ms); tile choice is a per-core matter and 2-thread timings
    on a shared VM are noisier. Through a tracker, the board decides.

    Writes (or continues) the database in ``out`` (default ``schedules/<db_name>/``).
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from mntvm.model import weights as W
    from mntvm.templates.lowering import has_templates, lower
    from mntvm.templates.cpu import family_for, tunable_tasks
    from mntvm.tuning.space import ms_builder, tune_space
    from mntvm.targets.profiles import get_profile

    if trials < 1:
        raise MntvmError(f"trials must be >= 1 (got {trials})")
    wanted = set()
    for op in ops.split(","):
        if op == "all":
            wanted |= {r for rs in OPS.values() for r in rs}
        elif op in OPS:
            wanted |= set(OPS[op])
        else:
            raise MntvmError(f"unknown op '{op}' in --ops: choose from all, {', '.join(OPS)}")
    profile = get_profile(target, targets_dir=targets_dir, mcpu=mcpu, mattr=mattr)
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
    runner = _runner(tracker, key, threads or 1, gpu=profile.is_gpu)
    path = Path(out) if out else data_dir("schedules") / db_name(profile)
    path.mkdir(parents=True, exist_ok=True)
    meta_path = path / META
    tmeta = profile.to_metadata()
    if meta_path.exists():
        sdb = open_schedules(path, profile, force=force)
        meta = sdb.meta
    else:
        meta = {"format": 1, "target": tmeta, "tvm_version": tvm.__version__, "trials": {},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        sdb = ScheduleDB(path, meta)
    db = sdb.database()

    # MetaSchedule echoes its task tables and XGB iterations to stdout at the logger's level
    # (DEBUG when unset); they stay in its work-dir log files. Our progress bar is on stderr.
    import logging

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    ttarget = profile.tvm_target()
    if profile.is_gpu:
        from mntvm.templates.cuda import default_schedule
    else:
        import functools

        from mntvm.templates.cpu import default_schedule as cpu_default

        default_schedule = functools.partial(cpu_default, fam=family_for(ttarget, profile.vector_bits))
    builder = ms_builder(cross_compiler=profile.cross_compiler, target=ttarget)
    low = lower(cfg, W.random_weights(cfg), profile)
    tasks = {n: f for n, f in tunable_tasks(low).items() if _rule_of_func(f) in wanted}
    mods = {n: _task_mod(f) for n, f in tasks.items()}
    todo = {n: max(0, trials - _count(db, m)) for n, m in mods.items()}
    total, t0 = sum(todo.values()), time.time()
    summary = {"database": str(path), "tasks": {}, "trials_run": 0, "skipped": [], "exhausted": []}
    start = sum(_count(db, m) for m in mods.values())

    def measured() -> int:
        return sum(_count(db, m) for m in mods.values()) - start

    def show(name, mod):
        if not progress:
            return
        done = measured()
        frac = done / max(total, 1)
        eta = (time.time() - t0) / max(frac, 1e-9) * (1 - frac)
        best = _best_ms(db, mod)
        sys.stderr.write(f"\rtune [{'#' * int(30 * frac):<30}] {done}/{total} trials  "
                         f"{name}: best {best if best is not None else float('nan'):.4f} ms  "
                         f"eta {eta:5.0f}s   ")
        sys.stderr.flush()

    for name, mod in mods.items():
        left = todo[name]
        if left == 0:
            summary["skipped"].append(name)
            continue
        before = _count(db, mod)
        if before == 0 and _seed_with_defaults(db, mod, ttarget, builder, runner, default_schedule):
            left -= 1
            show(name, mod)
        # One MetaSchedule run per task, so that its cost model learns across batches; each
        # measured batch (``chunk`` trials) is committed to the JSON database before the next
        # one starts (a kill loses at most the batch in flight).
        if left > 0:
            with tempfile.TemporaryDirectory() as work:
                ms.tune_tir(mod, ttarget, work, max_trials_global=left, num_trials_per_iter=min(chunk, left),
                            builder=builder, runner=runner, database=db, space=tune_space(ttarget),
                            strategy=_strategy(),
                            measure_callbacks=list(ms.measure_callback.MeasureCallback.create("default"))
                            + [_progress_callback(lambda name=name, mod=mod: show(name, mod))])
        added = _count(db, mod) - before
        if added < todo[name]:  # the search ran out of new candidates: this task's space is exhausted
            summary["exhausted"].append(name)
            total -= todo[name] - added
        show(name, mod)
        summary["tasks"][name] = {"rule": _rule_of_func(tasks[name]), "trials": _count(db, mod),
                                  "best_ms": _best_ms(db, mod)}
    if progress and total:
        sys.stderr.write("\n")
    summary["trials_run"] = measured()
    meta.setdefault("trials", {}).update({n: t["trials"] for n, t in summary["tasks"].items()})
    names = meta.setdefault("tasks", {})  # workload hash -> "<model>/<task>", for `mntvm schedules show`
    for name, mod in mods.items():
        if db.has_workload(mod):
            shash = str(db.commit_workload(mod).as_json()[0])
            names[shash] = sorted(set(names.get(shash, [])) | {f"{cfg.tag}/{name}"})
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    summary["seconds"] = time.time() - t0
    return summary


# ---- inspecting, merging and pruning databases (``mntvm schedules show|merge|prune``) -------------

FAILED_SECS = 1e10  # what MetaSchedule records as the run time of a candidate that failed to build/run


@dataclass
class _Loaded:
    """A database read for show/merge/prune: nothing in its folder is ever rewritten by reading it
    (a torn last line is only left out in memory)."""

    path: Path
    meta: dict
    workloads: list  # [(line, [structural hash, serialized IRModule]), ...]
    records: list  # [(line, workload index, record), ...]; record = [trace, run_secs, target, args_info]


def _load(path) -> _Loaded:
    path = Path(path)
    if not (path / META).is_file():
        raise MntvmError(f"{path} is not a schedules database (no {META})")
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as e:
        raise MntvmError(f"corrupt schedules database {path / META}: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("target"), dict):
        raise MntvmError(f"corrupt schedules database {path / META}: no target")
    workloads, _ = _parse_lines(path / WORKLOADS)
    for line, w in workloads:
        if not (isinstance(w, list) and len(w) == 2 and all(isinstance(x, str) for x in w)):
            raise MntvmError(f"corrupt schedules log {path / WORKLOADS}: line {line} is not a workload")
    records = []
    for line, r in _parse_lines(path / RECORDS)[0]:
        if not (isinstance(r, list) and len(r) == 2 and isinstance(r[0], int) and not isinstance(r[0], bool)
                and 0 <= r[0] < len(workloads)):
            raise MntvmError(f"corrupt schedules log {path / RECORDS}: line {line} does not refer to a known workload")
        rec = r[1]
        secs = rec[1] if isinstance(rec, list) and len(rec) >= 2 else False
        if secs is not None and not (isinstance(secs, list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in secs)):
            raise MntvmError(f"corrupt schedules log {path / RECORDS}: line {line} is not a tuning record")
        records.append((line, r[0], rec))
    return _Loaded(path, meta, workloads, records)


def _mean_secs(rec) -> float:
    """Mean measured seconds of a record; inf for a failed or unmeasured one (MetaSchedule's IsValid)."""
    secs = [float(s) for s in (rec[1] or [])]
    if not secs or all(s >= FAILED_SECS for s in secs):
        return float("inf")
    return sum(secs) / len(secs)


def _target_summary(meta: dict) -> dict:
    t = meta.get("target", {})
    return {"name": t.get("name"), "tvm_target": _target_essentials(t.get("tvm_target", {}))}


def _describe_workload(db: _Loaded, line: int, w: list) -> dict:
    """Rule and argument shapes of a workload, read back from its serialized IRModule."""
    from tvm.s_tir import meta_schedule as ms

    try:
        func = ms.database.Workload.from_json(w).mod["main"]
        args = ms.arg_info.ArgInfo.from_prim_func(func)
        shapes = [[int(x) for x in a.shape] for a in args]
        rule = _rule_of_func(func)
    except Exception as e:  # noqa: BLE001 - TVM raises several types for a bad workload
        raise MntvmError(f"corrupt schedules log {db.path / WORKLOADS}: line {line} does not deserialize "
                         f"({str(e).splitlines()[-1] if str(e) else type(e).__name__})") from None
    return {"rule": rule, "input_shape": shapes[0] if shapes else None,
            "output_shape": shapes[-1] if shapes else None}


def show(path) -> dict:
    """What a database holds: its target, TVM version and, per workload (task), its name when
    ``tune`` recorded it, rule, shapes, trials (record lines), failed trials and best time in ms."""
    db = _load(path)
    names = db.meta.get("tasks", {}) if isinstance(db.meta.get("tasks"), dict) else {}
    tasks = []
    for i, (line, w) in enumerate(db.workloads):
        recs = [rec for _, wi, rec in db.records if wi == i]
        costs = [_mean_secs(rec) for rec in recs]
        best = min(costs, default=float("inf"))
        name = names.get(w[0])
        tasks.append({"workload": i, "hash": w[0],
                      "name": ", ".join(name) if isinstance(name, list) else name,
                      **_describe_workload(db, line, w), "trials": len(recs),
                      "failed": sum(c == float("inf") for c in costs),
                      "best_ms": 1e3 * best if best < float("inf") else None})
    return {"path": str(db.path), "target": _target_summary(db.meta), "tvm_version": db.meta.get("tvm_version"),
            "tasks": tasks, "records": len(db.records)}


def merge(sources, out, top_k: int = 1) -> dict:
    """Write the ``top_k`` fastest records per workload over all ``sources`` to ``out``.

    Sources must be tuned for the same target. ``out`` (which may be one of the sources) is built
    in a temporary folder beside it, checked to load, then swapped in: an existing ``out`` is never
    half-written, and a failure leaves every file as it was. Returns a summary.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise MntvmError("no schedules databases to merge")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise MntvmError(f"--top-k must be >= 1 (got {top_k})")
    dbs = [_load(s) for s in sources]  # every source parsed and checked before anything is written
    first = dbs[0]
    want = _target_essentials(first.meta["target"].get("tvm_target", {}))
    for db in dbs[1:]:
        theirs = _target_essentials(db.meta["target"].get("tvm_target", {}))
        if theirs != want:
            diff = ", ".join(f"{k}: {theirs.get(k)!r} vs {want.get(k)!r}" for k in sorted(set(want) | set(theirs))
                             if want.get(k) != theirs.get(k))
            raise MntvmError(f"cannot merge {db.path}: tuned for target '{db.meta['target'].get('name')}', "
                             f"not '{first.meta['target'].get('name')}' like {first.path} ({diff})")
    index: dict[str, int] = {}  # structural hash -> output workload index
    wl_rows: list = []
    per: dict[int, dict] = {}  # output workload index -> {record JSON: record}
    meta = json.loads(json.dumps(first.meta))
    names = meta["tasks"] if isinstance(meta.get("tasks"), dict) else {}
    for db in dbs:
        remap = {}
        for i, (_, w) in enumerate(db.workloads):
            if w[0] not in index:
                index[w[0]] = len(wl_rows)
                wl_rows.append(w)
            remap[i] = index[w[0]]
        for _, wi, rec in db.records:
            per.setdefault(remap[wi], {}).setdefault(json.dumps(rec, sort_keys=True), rec)
        if db is not first:
            theirs = db.meta.get("tasks") if isinstance(db.meta.get("tasks"), dict) else {}
            for h, n in theirs.items():
                names[h] = sorted(set(names.get(h, [])) | set(n))
            for n, t in (db.meta.get("trials") or {}).items():
                meta.setdefault("trials", {}).setdefault(n, t)
    if names:
        meta["tasks"] = names
    kept = [[wi, r] for wi in sorted(per) for r in sorted(per[wi].values(), key=_mean_secs)[:top_k]
            if _mean_secs(r) < float("inf")]
    meta["merged"] = {"sources": [str(db.path) for db in dbs], "top_k": top_k,
                      "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = _replace_db(out, {WORKLOADS: "".join(json.dumps(w) + "\n" for w in wl_rows),
                            RECORDS: "".join(json.dumps(r) + "\n" for r in kept),
                            META: json.dumps(meta, indent=2, sort_keys=True) + "\n"})
    return {"path": str(out), "sources": [str(db.path) for db in dbs], "top_k": top_k,
            "workloads": len(wl_rows), "records_in": sum(len(db.records) for db in dbs), "records": len(kept)}


def prune(path, keep: int = 1, out=None) -> int:
    """Keep the ``keep`` fastest records per workload of ``path`` (a list of paths is merged), in
    place or into ``out``, atomically; returns the number of records kept."""
    srcs = list(path) if isinstance(path, (list, tuple)) else [path]
    return merge(srcs, out if out is not None else srcs[0], top_k=keep)["records"]


def _replace_db(out, files: dict) -> Path:
    """Write ``files`` as the database folder ``out``: built in a temp folder beside it, checked to
    load with MetaSchedule, then renamed over it (other files already in ``out`` are carried over)."""
    from tvm.s_tir import meta_schedule as ms

    out = Path(out)
    if out.is_symlink():
        out = out.resolve()
    if out.exists() and not (out / META).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise MntvmError(f"{out} exists and is not a schedules database; not replacing it")
    with atomic_dir(out) as tmp:
        if out.is_dir():
            shutil.copymode(out, tmp)
            for p in out.iterdir():
                if p.name not in files and p.is_file() and not p.name.startswith("."):
                    shutil.copy2(p, tmp / p.name)
        for name, text in files.items():
            with open(tmp / name, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        try:
            ms.database.JSONDatabase(work_dir=str(tmp), allow_missing=False)
        except Exception as e:  # noqa: BLE001 - TVM raises several types for a bad file
            raise MntvmError(f"the result for {out} does not load in MetaSchedule "
                             f"({str(e).splitlines()[-1] if str(e) else type(e).__name__}); nothing written") from None
    return out
