"""Tune our CPU templates' knobs with MetaSchedule and keep the results as shipped, reusable logs.

A schedules database is a folder holding MetaSchedule's JSON database (``database_workload.json``,
``database_tuning_record.json``) plus ``mntvm-db.json``: the target profile and full TVM target it
was tuned for, the TVM version, and the trials spent per task. ``schedules/<name>/`` in the
repository holds the shipped ones; ``<name>`` is the profile name, followed by the detected CPU for
profiles that describe "this machine" (e.g. ``x86-emeraldrapids``), since a log tuned on one CPU
says nothing about another.

Tuning is resumable: records are appended per measured batch, a torn last line (kill -9) is dropped
on the next open, and a re-run tunes only the trials a task still lacks.

Public entry: :func:`tune`; compile uses :func:`open_schedules`.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import MntvmError
from .paths import data_dir

META = "mntvm-db.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
OPS = {"pw": ("mntvm_pw",), "dw": ("mntvm_dw",), "stem": ("mntvm_stem",), "fc": ("mntvm_dense",),
       "pool": ("mntvm_pool",)}
TARGET_KEYS = ("kind", "mtriple", "mcpu", "mattr", "mabi", "mfloat-abi")


def db_name(profile) -> str:
    """Folder name of a profile's database under ``schedules/``."""
    mcpu = (profile.detected or {}).get("mcpu")
    return f"{profile.name}-{mcpu}" if mcpu else profile.name


def _target_essentials(tvm_target: dict) -> dict:
    return {k: tvm_target.get(k) for k in TARGET_KEYS if tvm_target.get(k) not in (None, "", [])}


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_lines(path: Path) -> list:
    """JSON lines of a database file; a torn final line (a kill mid-write) is dropped and the file
    rewritten atomically; any other bad line is a corrupt log."""
    if not path.exists():
        return []
    raw = path.read_text().splitlines()
    rows, torn = [], False
    for i, line in enumerate(raw):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(raw) - 1:
                torn = True
                continue
            raise MntvmError(f"corrupt schedules log {path}: line {i + 1} is not JSON") from None
    if torn:
        _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


@dataclass
class ScheduleDB:
    """A schedules database folder."""

    path: Path
    meta: dict

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
        return {"path": str(self.path), "name": self.path.name, "sha256": h.hexdigest()[:16], "records": n,
                "target": self.meta.get("target", {}).get("name")}

    def apply(self, low, target):
        """Apply tuned records to a lowered module; returns (module, names of the tasks covered)."""
        from tvm import relax

        from .sched_cpu import tunable_tasks

        db = self.database()
        with target, db:
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(low)
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
    if str(spec) == "default":
        path = data_dir("schedules") / db_name(profile)
        if not (path / META).is_file():
            return None
    else:
        path = Path(spec)
        if not (path / META).is_file():
            raise MntvmError(f"{path} is not a schedules database (no {META}); "
                             "make one with `mntvm tune -o DIR`")
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as e:
        raise MntvmError(f"corrupt schedules database {path / META}: {e}") from None
    db = ScheduleDB(path, meta)
    mine = _target_essentials(profile.to_metadata()["tvm_target"])
    theirs = _target_essentials(meta.get("target", {}).get("tvm_target", {}))
    if mine != theirs and not force:
        diff = ", ".join(f"{k}: {theirs.get(k)!r} vs {mine.get(k)!r}" for k in sorted(set(mine) | set(theirs))
                         if mine.get(k) != theirs.get(k))
        raise MntvmError(f"schedules {path} were tuned for target '{meta.get('target', {}).get('name')}', "
                         f"not '{profile.name}' ({diff}); pass --force-schedules to apply them anyway")
    return db


def _rule_of_func(func) -> str | None:
    from .sched_cpu import _all_blocks, _rule_of

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


def _builder():
    from tvm.s_tir import meta_schedule as ms

    from .sched_cpu import _ms_build

    return ms.builder.LocalBuilder(f_build=_ms_build, max_workers=1, timeout_sec=120)


def _runner(tracker: str | None, key: str | None):
    from tvm.s_tir import meta_schedule as ms

    # Measure as the kernel runs inside the network: its input was just written by the previous
    # layer (warm), its weights were last touched an inference ago (cold: 4-17 MB of weights do not
    # stay in L2). TVM's "cache_flush_cpu_non_first_arg" flushes every argument but the first
    # before each repeat, so number=1; warm-cache timing favoured tiles that lose 10-50 % in the
    # network (pw12/pw13 ran 0.33 ms alone, 0.55 ms in the network).
    cfg = ms.runner.EvaluatorConfig(number=1, repeat=10, min_repeat_ms=0, enable_cpu_cache_flush=True)
    if not tracker:
        return ms.runner.LocalRunner(evaluator_config=cfg, timeout_sec=60)
    from .rpc import open_session, parse_addr

    host, port = parse_addr(tracker)
    open_session(tracker, key, wait_s=30).remote  # fail fast: unreachable tracker / no board
    return ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                       session_timeout_sec=120),
        evaluator_config=cfg, max_workers=1)


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
         progress: bool = True, force: bool = False) -> dict:
    """Tune each task of ``cfg`` on ``target`` up to ``trials`` measured trials; returns a summary.

    Writes (or continues) the database in ``out`` (default ``schedules/<db_name>/``).
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from . import weights as W
    from .compile import lower
    from .sched_cpu import tunable_tasks, tune_space
    from .targets import get_profile

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
    profile = get_profile(target, targets_dir=targets_dir)
    if profile.is_gpu:
        raise MntvmError(f"tuning GPU profiles is not supported yet ('{profile.name}' uses DLight rules)")
    runner = _runner(tracker, key)
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
        _write_atomic(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        sdb = ScheduleDB(path, meta)
    db = sdb.database()

    ttarget = profile.tvm_target()
    low = lower(cfg, W.random_weights(cfg), profile)
    tasks = {n: f for n, f in tunable_tasks(low).items() if _rule_of_func(f) in wanted}
    mods = {n: _task_mod(f) for n, f in tasks.items()}
    todo = {n: max(0, trials - _count(db, m)) for n, m in mods.items()}
    total, done, t0 = sum(todo.values()), 0, time.time()
    summary = {"database": str(path), "tasks": {}, "trials_run": 0, "skipped": [], "exhausted": []}
    for name, mod in mods.items():
        left = todo[name]
        if left == 0:
            summary["skipped"].append(name)
        while left > 0:
            n = min(chunk, left)
            before = _count(db, mod)
            with tempfile.TemporaryDirectory() as work:
                ms.tune_tir(mod, ttarget, work, max_trials_global=n, num_trials_per_iter=n,
                            builder=_builder(), runner=runner, database=db, space=tune_space())
            added = _count(db, mod) - before
            done += added
            left -= added
            if added == 0:  # the search found no new candidate: this task's space is exhausted
                summary["exhausted"].append(name)
                total -= left
                left = 0
            if progress:
                frac = done / max(total, 1)
                eta = (time.time() - t0) / max(frac, 1e-9) * (1 - frac)
                best = _best_ms(db, mod)
                sys.stderr.write(f"\rtune [{'#' * int(30 * frac):<30}] {done}/{total} trials  "
                                 f"{name}: best {best if best is not None else float('nan'):.4f} ms  "
                                 f"eta {eta:5.0f}s   ")
                sys.stderr.flush()
        summary["tasks"][name] = {"rule": _rule_of_func(tasks[name]), "trials": _count(db, mod),
                                  "best_ms": _best_ms(db, mod)}
    if progress and total:
        sys.stderr.write("\n")
    summary["trials_run"] = done
    meta.setdefault("trials", {}).update({n: t["trials"] for n, t in summary["tasks"].items()})
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write_atomic(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    summary["seconds"] = time.time() - t0
    return summary


def prune(path: str | os.PathLike, keep: int = 1, out: str | os.PathLike | None = None) -> int:
    """Keep the ``keep`` fastest records per workload (merging sources if ``path`` is a list)."""
    srcs = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    workloads: dict[str, int] = {}
    wl_rows: list = []
    per: dict[int, list] = {}
    meta = None
    for src in srcs:
        if not (src / META).is_file():
            raise MntvmError(f"{src} is not a schedules database (no {META})")
        m = json.loads((src / META).read_text())
        if meta and _target_essentials(m["target"]["tvm_target"]) != _target_essentials(meta["target"]["tvm_target"]):
            raise MntvmError(f"cannot merge {src}: tuned for '{m['target']['name']}', not '{meta['target']['name']}'")
        meta = meta or m
        sdb = ScheduleDB(src, m)
        wls, recs = sdb._check_consistency()
        remap = {}
        for i, w in enumerate(wls):
            k = json.dumps(w, sort_keys=True)
            if k not in workloads:
                workloads[k] = len(wl_rows)
                wl_rows.append(w)
            remap[i] = workloads[k]
        for wi, rec in recs:
            per.setdefault(remap[wi], []).append(rec)

    def cost(rec):
        secs = [float(s) for s in (rec[1] or [])]
        return sum(secs) / len(secs) if secs else float("inf")

    dest = Path(out) if out else srcs[0]
    dest.mkdir(parents=True, exist_ok=True)
    kept = [[wi, r] for wi in sorted(per) for r in sorted(per[wi], key=cost)[:keep] if cost(r) < float("inf")]
    _write_atomic(dest / WORKLOADS, "".join(json.dumps(w) + "\n" for w in wl_rows))
    _write_atomic(dest / RECORDS, "".join(json.dumps(r) + "\n" for r in kept))
    if dest != srcs[0] or not (dest / META).exists():
        _write_atomic(dest / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return len(kept)
