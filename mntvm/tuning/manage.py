"""Inspecting, merging and pruning schedules databases (``mntvm schedules show|merge|prune``).

Reading never rewrites a source (a torn last line is only left out in memory); a result is built
in a temporary folder beside its destination, checked to load in MetaSchedule, then swapped in,
under the destination's writer lock (:mod:`mntvm.tuning.lock`: never into a folder being tuned).

Public entries: :func:`show`, :func:`merge`, :func:`prune`; :func:`record_seconds` (a record's time).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from mntvm.core.atomic import atomic_dir
from mntvm.core.errors import MntvmError, one_line
from mntvm.model.network import ALPHAS, RESOLUTIONS
from mntvm.tuning.database import (META, RECORDS, WORKLOADS, LoadedDB, check_destination_db, is_database_folder,
                                   load, log_hash, portable, target_diff, target_essentials, task_mod, task_rule)
from mntvm.templates.defaults import KNOBS
from mntvm.templates.registry import ALL_RULES
from mntvm.tuning.lock import db_lock
from mntvm.tuning.measure import mean_secs
from mntvm.tuning.verify import verdicts_here



def record_seconds(rec) -> float:
    """Mean measured seconds of a record (as JSON); inf for a failed or unmeasured one."""
    return mean_secs(rec[1])


def record_knobs(rec) -> list | None:
    """The knob values a record was made at (the ``mntvm_knobs`` annotation in its trace:
    :func:`mntvm.templates.defaults.annotate_knobs`), read from its JSON without TVM; None for a
    record without them (made before they were recorded, or not by our templates)."""
    try:
        for inst in rec[0][0]:
            if inst[0] == "Annotate" and list(inst[2]) == [KNOBS]:
                value = inst[1][1]  # TVM writes a string input quoted, its own quotes as they are
                return json.loads(value[1:-1] if value[:1] == value[-1:] == '"' else value)
    except (TypeError, IndexError, KeyError, ValueError):
        return None
    return None


def _target_summary(meta: dict) -> dict:
    t = meta.get("target", {})
    return {"name": t.get("name"), "tvm_target": target_essentials(t.get("tvm_target", {}))}


def _describe_workload(db: LoadedDB, line: int, w: list) -> dict:
    """Rule and argument shapes of a workload, read back from its serialized IRModule."""
    from tvm.s_tir import meta_schedule as ms

    try:
        func = ms.database.Workload.from_json(w).mod["main"]
        args = ms.arg_info.ArgInfo.from_prim_func(func)
        shapes = [[int(x) for x in a.shape] for a in args]
        rule = task_rule(func)
    except Exception as e:  # noqa: BLE001 - TVM raises several types for a bad workload
        raise MntvmError(f"corrupt schedules log {db.path / WORKLOADS}: line {line} does not deserialize "
                         f"({one_line(e)})") from None
    return {"rule": rule, "input_shape": shapes[0] if shapes else None,
            "output_shape": shapes[-1] if shapes else None}


def show(path) -> dict:
    """What a database holds: its target, TVM version and, per workload (task), its name when
    ``tune`` recorded it, rule, shapes, trials (record lines), failed trials and best time in ms
    (as tune measured it: one timing, possibly a lucky one), the best record's ``knobs`` (None for
    a record made before they were recorded), and ``here``: what this machine's
    check concluded (the log's schedule and the defaults timed in alternation, ms, and which one
    compile keeps), None where this machine has not checked the log (``checked_here`` False)."""
    db = load(path)
    verdicts = verdicts_here(log_hash(db.path)[0])
    names = db.meta.get("tasks", {}) if isinstance(db.meta.get("tasks"), dict) else {}
    tasks = []
    for i, (line, w) in enumerate(db.workloads):
        recs = [rec for _, wi, rec in db.records if wi == i]
        costs = [record_seconds(rec) for rec in recs]
        best = min(costs, default=float("inf"))
        knobs = record_knobs(recs[costs.index(best)]) if recs else None
        name = names.get(w[0])
        tasks.append({"workload": i, "hash": w[0],
                      "name": ", ".join(name) if isinstance(name, list) else name,
                      **_describe_workload(db, line, w), "trials": len(recs),
                      "failed": sum(c == float("inf") for c in costs),
                      "best_ms": 1e3 * best if best < float("inf") else None, "knobs": knobs,
                      "here": (verdicts or {}).get(w[0])})
    return {"path": str(db.path), "target": _target_summary(db.meta), "tvm_version": db.meta.get("tvm_version"),
            "tasks": tasks, "records": len(db.records), "checked_here": verdicts is not None}


def merge(sources, out, top_k: int = 1, drop_reverted: bool = False, drop_unused: bool = False,
          alphas=ALPHAS, resolutions=RESOLUTIONS, targets_dir=None, drop_rules=()) -> dict:
    """Write the ``top_k`` fastest records per workload over all ``sources`` to ``out``. A trace
    with several records counts by those with the most timings (a finalist that tune timed again:
    its earlier, single timing in another source is left out).

    ``drop_reverted``: leave out the records of each workload that this machine's check of a
    source (:func:`mntvm.tuning.verify.check_log`, run by tune and compile) sent back to the
    template defaults: a shipped log then holds only schedules that beat (or tie) the defaults
    where it was tuned. A source this machine has not checked is refused. ``drop_unused``: leave
    out the records of each workload that no variant ``alphas`` x ``resolutions`` produces for the
    sources' target (:func:`produced_workloads`; ``targets_dir``: where a user's profile of that
    name is), e.g. the tasks of a template that has since changed. A workload left with no
    record (every one failed, or dropped) is left out of the workload log too. ``drop_rules``: leave
    out the records of every workload of these template rules (e.g. ``mntvm_dwpw``): after a
    template gains a knob, its old records are still points of its space (the knob at the value that
    reproduces the old schedule) and no check can tell them from new ones, so they are dropped by
    rule, to be tuned again.

    Sources must be tuned for the same target. ``out`` (which may be one of the sources) is built
    in a temporary folder beside it, checked to load, then swapped in: an existing ``out`` is never
    half-written, and a failure leaves every file as it was; an ``out`` being tuned (or merged
    into) by another process is refused. ``out``'s ``mntvm-db.json`` names the sources by folder
    name only. Returns a summary.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise MntvmError("no schedules databases to merge")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise MntvmError(f"--top-k must be >= 1 (got {top_k})")
    out = Path(out).resolve() if Path(out).is_symlink() else Path(out)
    check_destination_db(out)  # a file, or a folder of something else, is refused before any work
    # one writer at a time: out (possibly a source, for prune in place) is read and replaced whole
    unused = {"alphas": list(alphas), "resolutions": list(resolutions), "targets_dir": targets_dir} if drop_unused else None
    drop_rules = sorted(set(drop_rules))
    bad = [r for r in drop_rules if r not in ALL_RULES]
    if bad:
        raise MntvmError(f"unknown template rule(s) {', '.join(bad)}: the rules are {', '.join(ALL_RULES)}")
    with db_lock(out) if out.is_dir() else contextlib.nullcontext():
        return _merge(sources, out, top_k, drop_reverted, unused, drop_rules)


def produced_workloads(target_meta: dict, alphas=ALPHAS, resolutions=RESOLUTIONS, targets_dir=None) -> set[str]:
    """The workloads (structural hashes, as a log's workload lines key them) that compiling
    MobileNetV1 at every ``alphas`` x ``resolutions`` (batch 1) produces for the target a log was
    tuned for (``target_meta``: its ``mntvm-db.json`` ``target``), in float32 and, where the target
    has an int8 path, int8. The tasks do not depend on the weights or on the quantization, so
    random ones serve."""
    import numpy as np
    import tvm_ffi

    from mntvm.model.network import MobileNetConfig
    from mntvm.model.quantize import quantize
    from mntvm.model.weights import random_weights
    from mntvm.targets.profiles import get_profile
    from mntvm.templates.lowering import has_templates, lower
    from mntvm.templates.lowering_int8 import lower_int8
    from mntvm.templates.registry import tunable_tasks

    tvm_target = target_meta.get("tvm_target") or {}
    profile = get_profile(str(target_meta.get("name")), targets_dir, mcpu=tvm_target.get("mcpu"),
                          mattr=tvm_target.get("mattr"))
    rebuilt = target_essentials(profile.to_metadata()["tvm_target"])
    if rebuilt != target_essentials(tvm_target):
        raise MntvmError(f"cannot tell which workloads target '{profile.name}' produces: its profile here is not the "
                         f"one the log was tuned for ({target_diff(rebuilt, target_essentials(tvm_target))})")
    if not has_templates(profile):
        raise MntvmError(f"target '{profile.name}' builds without our templates: no workload of a log applies to it")
    int8 = profile.int8_activations is not None and not profile.is_gpu
    out = set()
    for alpha in alphas:
        for res in resolutions:
            cfg = MobileNetConfig(alpha=float(alpha), resolution=int(res))
            w = random_weights(cfg)
            mods = [lower(cfg, w, profile)]
            if int8:
                calib = np.random.default_rng(0).uniform(-1, 1, (2, *cfg.input_shape[1:])).astype(np.float32)
                mods.append(lower_int8(quantize(cfg, w, calib, act_dtype=profile.int8_activations), profile))
            for mod in mods:
                out |= {str(tvm_ffi.structural_hash(task_mod(f))) for f in tunable_tasks(mod).values()}
    return out


def _of_rules(db: LoadedDB, rules) -> set[str]:
    """Workload hashes of ``db`` whose task is one of the template ``rules``."""
    from tvm.s_tir import meta_schedule as ms

    return {w[0] for _, w in db.workloads if task_rule(ms.database.Workload.from_json(w).mod["main"]) in rules}


def _reverted(db: LoadedDB) -> set[str]:
    """Workload hashes of ``db`` whose schedule lost to the template defaults in this machine's check."""
    verdicts = verdicts_here(log_hash(db.path)[0])
    if verdicts is None:
        raise MntvmError(f"{db.path} has not been checked on this machine, so there is nothing to drop by: "
                         f"compile with it here first (or run mntvm tune, which ends with the check)")
    return {h for h, v in verdicts.items() if v.get("keep") == "default"}


def _best_known(recs: dict) -> list:
    """Of one trace's distinct records ({JSON: record}), those with the most timings: a finalist
    timed again (:mod:`mntvm.tuning.settle`) counts by its new timings, not by the single, lucky
    one another source kept."""
    most = max(len(r[1] or []) for r in recs.values())
    return [r for r in recs.values() if len(r[1] or []) == most]


def _merge(sources, out: Path, top_k: int, drop_reverted: bool = False, unused: dict | None = None,
           drop_rules=()) -> dict:
    dbs = [load(s) for s in sources]  # every source parsed and checked before anything is written
    first = dbs[0]
    want = target_essentials(first.meta["target"].get("tvm_target", {}))
    for db in dbs[1:]:
        theirs = target_essentials(db.meta["target"].get("tvm_target", {}))
        if theirs != want:
            raise MntvmError(f"cannot merge {db.path}: tuned for target '{db.meta['target'].get('name')}', "
                             f"not '{first.meta['target'].get('name')}' like {first.path} "
                             f"({target_diff(want, theirs)})")
    produced = None if unused is None else produced_workloads(first.meta["target"], unused["alphas"],
                                                              unused["resolutions"], unused["targets_dir"])
    index: dict[str, int] = {}  # structural hash -> output workload index
    wl_rows: list = []
    per: dict[int, dict] = {}  # output workload index -> {trace JSON: {record JSON: record}}
    meta = json.loads(json.dumps(first.meta))
    names = meta["tasks"] if isinstance(meta.get("tasks"), dict) else {}
    dropped: set[str] = set()  # workload hashes whose records were left out (drop_reverted)
    not_produced: set[str] = set()  # ... because no variant produces them (unused)
    by_rule: set[str] = set()  # ... because their template rule is one of drop_rules
    for db in dbs:
        gone = _reverted(db) if drop_reverted else set()
        dropped |= gone
        if produced is not None:
            dead = {w[0] for _, w in db.workloads} - produced
            not_produced |= dead
            gone = gone | dead
        if drop_rules:
            ruled = _of_rules(db, drop_rules)
            by_rule |= ruled
            gone = gone | ruled
        remap = {}
        for i, (_, w) in enumerate(db.workloads):
            if w[0] not in index:
                index[w[0]] = len(wl_rows)
                wl_rows.append(w)
            remap[i] = index[w[0]]
        for _, wi, rec in db.records:
            if db.workloads[wi][1][0] in gone:
                continue
            traces = per.setdefault(remap[wi], {})
            traces.setdefault(json.dumps(rec[0], sort_keys=True), {}).setdefault(json.dumps(rec, sort_keys=True), rec)
        if db is not first:
            theirs = db.meta.get("tasks") if isinstance(db.meta.get("tasks"), dict) else {}
            for h, n in theirs.items():
                names[h] = sorted(set(names.get(h, [])) | set(n))
            for n, t in (db.meta.get("trials") or {}).items():
                meta.setdefault("trials", {}).setdefault(n, t)
    kept = [[wi, r] for wi in sorted(per)
            for r in sorted((r for t in per[wi].values() for r in _best_known(t)), key=record_seconds)[:top_k]
            if record_seconds(r) < float("inf")]
    # a workload left with no record (all failed, or dropped) is left out too: the workload log
    # holds each task's whole IRModule, most of a database's size
    used = sorted({wi for wi, _ in kept})
    new_index = {wi: i for i, wi in enumerate(used)}
    kept = [[new_index[wi], r] for wi, r in kept]
    n_workloads = len(wl_rows)
    wl_rows = [wl_rows[wi] for wi in used]
    if names:
        hashes = {w[0] for w in wl_rows}
        meta["tasks"] = {h: n for h, n in names.items() if h in hashes}
    # "merged" describes this merge/prune; the earlier ones (what they dropped and why) stay in
    # "merge_history", oldest first
    history = [db.meta["merged"] for db in dbs if isinstance(db.meta.get("merged"), dict)]
    history = [h for db in dbs for h in (db.meta.get("merge_history") or [])] + history
    if history:
        meta["merge_history"] = history
    meta["merged"] = {"sources": [db.path.name for db in dbs], "top_k": top_k,
                      "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if drop_reverted:
        meta["merged"]["dropped_reverted"] = sorted(dropped)
    if drop_rules:
        meta["merged"]["dropped_rules"] = {"rules": list(drop_rules), "workloads": sorted(by_rule)}
    if unused is not None:
        meta["merged"]["dropped_unused"] = {"alphas": unused["alphas"], "resolutions": unused["resolutions"],
                                            "workloads": sorted(not_produced)}
    out = _replace_db(out, {WORKLOADS: "".join(json.dumps(w) + "\n" for w in wl_rows),
                            RECORDS: "".join(json.dumps(r) + "\n" for r in kept),
                            META: json.dumps(portable(meta), indent=2, sort_keys=True) + "\n"})
    return {"path": str(out), "sources": [str(db.path) for db in dbs], "top_k": top_k,
            "workloads": len(wl_rows), "workloads_without_records": n_workloads - len(wl_rows),
            "records_in": sum(len(db.records) for db in dbs), "records": len(kept),
            "dropped_reverted": len(dropped) if drop_reverted else None,
            "dropped_unused": len(not_produced) if unused is not None else None,
            "dropped_rules": {"rules": list(drop_rules), "workloads": len(by_rule)} if drop_rules else None}


def prune(path, keep: int = 1, out=None, drop_reverted: bool = False, drop_unused: bool = False,
          drop_rules=()) -> int:
    """Keep the ``keep`` fastest records per workload of ``path`` (a list of paths is merged), in
    place or into ``out``, atomically (``drop_reverted``, ``drop_unused`` for the 16 variants,
    ``drop_rules``: see :func:`merge`); returns the number of records kept."""
    srcs = list(path) if isinstance(path, (list, tuple)) else [path]
    return merge(srcs, out if out is not None else srcs[0], top_k=keep, drop_reverted=drop_reverted,
                 drop_unused=drop_unused, drop_rules=drop_rules)["records"]


def _replace_db(out, files: dict) -> Path:
    """Write ``files`` as the database folder ``out``: built in a temp folder beside it, checked to
    load with MetaSchedule, then renamed over it (other files already in ``out`` are carried over)."""
    from tvm.s_tir import meta_schedule as ms

    with atomic_dir(out, "a schedules database", is_database_folder) as tmp:
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
                             f"({one_line(e)}); nothing written") from None
    return out
