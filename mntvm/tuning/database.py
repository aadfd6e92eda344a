"""The schedules database format: a folder of MetaSchedule's JSON database plus ``mntvm-db.json``.

A schedules database is a folder holding MetaSchedule's JSON database (``database_workload.json``,
``database_tuning_record.json``) plus ``mntvm-db.json``: the target profile and full TVM target it
was tuned for, the TVM version, and the trials spent per task. ``schedules/<name>/`` in the
repository holds the shipped ones; ``<name>`` is the profile name, followed by the detected CPU for
profiles that describe "this machine" (e.g. ``x86-emeraldrapids``), since a log tuned on one CPU
says nothing about another.

Nothing written into a database names an absolute path (:func:`write_meta`), and its identity
(:meth:`ScheduleDB.identity`, recorded by compile) is its name and content hash: a database means
the same wherever it is.

Every reader checks both logs line by line as MetaSchedule will read them (:func:`read_logs`), so
a corrupt one is named by file and line, whoever opens it (compile, tune, show, merge, prune).

Public entries: :func:`open_schedules` (compile), :class:`ScheduleDB`, :func:`db_name`,
:func:`load` (read-only, for show/merge/prune), :func:`read_logs`, :func:`drop_superseded` (tune's
rewrite after settling), :func:`check_destination_db`
(where tune/merge may write a database), :func:`task_mod` / :func:`task_rule` (a task's workload as
MetaSchedule keys it, and its template rule), :func:`log_hash` (a folder's identity).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mntvm.core.atomic import check_destination, write_text
from mntvm.core.errors import MntvmError, one_line
from mntvm.core.machine import DECISIVE_FLAGS, machine_facts
from mntvm.core.paths import data_dir
from mntvm.templates.registry import all_blocks, is_scheduled, rule_of, tunable_tasks
from mntvm.tuning.lock import LOCK, db_lock
from mntvm.tuning.space import apply_records

META = "mntvm-db.json"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
TARGET_KEYS = ("kind", "arch", "mtriple", "mcpu", "mattr", "mabi", "mfloat-abi")


def db_name(profile) -> str:
    """Folder name of a profile's database under ``schedules/``."""
    if not profile.detected:
        return profile.name
    # "this machine" profiles: the CPU the code is for (detected, or set with --mcpu)
    mcpu = profile.to_metadata()["tvm_target"].get("mcpu") or profile.detected.get("mcpu")
    return f"{profile.name}-{mcpu}" if mcpu else profile.name


def target_essentials(tvm_target: dict) -> dict:
    """The keys of a TVM target (as JSON) that decide whether a log fits it."""
    return {k: tvm_target.get(k) for k in TARGET_KEYS if tvm_target.get(k) not in (None, "", [])}


def target_diff(mine: dict, theirs: dict) -> str:
    """``"key: theirs vs mine, ..."`` over the keys where two essentials differ."""
    return ", ".join(f"{k}: {theirs.get(k)!r} vs {mine.get(k)!r}" for k in sorted(set(mine) | set(theirs))
                     if mine.get(k) != theirs.get(k))


def portable(value):
    """``value`` (JSON data) with every absolute path replaced by its folder and name, as profiles
    name their source (``/.../targets/x86.toml (as triple ...)`` -> ``targets/x86.toml (as triple ...)``)."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        head, sep, tail = value.partition(" ")
        return "/".join(Path(head).parts[1:][-2:]) + sep + tail
    return value


def write_meta(path, meta: dict) -> dict:
    """Write ``meta`` as the database folder ``path``'s ``mntvm-db.json`` (atomically, without any
    absolute path); returns what was written."""
    meta = portable(copy.deepcopy(meta))
    write_text(Path(path) / META, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def read_meta(path: Path) -> dict:
    """A database folder's ``mntvm-db.json``; a bad one is a corrupt database."""
    try:
        return json.loads((path / META).read_text())
    except json.JSONDecodeError as e:
        raise MntvmError(f"corrupt schedules database {path / META}: {e}") from None


def parse_lines(path: Path) -> tuple[list, bool]:
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


def _is_record(rec) -> bool:
    """A tuning record as MetaSchedule reads it: [trace, run_secs, target, args_info]."""
    if not (isinstance(rec, list) and len(rec) == 4):
        return False
    trace, secs, target, args = rec
    return (isinstance(trace, list) and len(trace) == 2 and all(isinstance(x, list) for x in trace)
            and (secs is None or isinstance(secs, list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in secs))
            and (target is None or isinstance(target, dict)) and (args is None or isinstance(args, list)))


def read_logs(path) -> tuple[list, list, bool]:
    """``(workloads, records, torn)`` of the database folder ``path``, each line checked as
    MetaSchedule will read it; anything corrupt is one error naming its file and line. Workloads:
    ``[(line, [structural hash, serialized IRModule]), ...]``; records: ``[(line, workload index,
    [trace, run_secs, target, args_info]), ...]``; ``torn``: a torn final line was left out. Reads only."""
    path = Path(path)
    workloads, wtorn = parse_lines(path / WORKLOADS)
    for line, w in workloads:
        if not (isinstance(w, list) and len(w) == 2 and all(isinstance(x, str) for x in w)):
            raise MntvmError(f"corrupt schedules log {path / WORKLOADS}: line {line} is not a workload")
    rows, rtorn = parse_lines(path / RECORDS)
    records = []
    for line, r in rows:
        if not (isinstance(r, list) and len(r) == 2 and isinstance(r[0], int) and not isinstance(r[0], bool)
                and 0 <= r[0] < len(workloads)):
            raise MntvmError(f"corrupt schedules log {path / RECORDS}: line {line} does not refer to a known workload")
        if not _is_record(r[1]):
            raise MntvmError(f"corrupt schedules log {path / RECORDS}: line {line} is not a tuning record")
        records.append((line, r[0], r[1]))
    return workloads, records, wtorn or rtorn


def drop_superseded(path) -> int:
    """Drop from the database folder ``path``'s records every one whose trace was measured again
    later (a finalist that tune timed again: :mod:`mntvm.tuning.settle`): the last measurement of a
    trace is the one the log ranks by. The records file is rewritten atomically, only when there
    is something to drop; the caller holds the writer's lock. Returns the number dropped."""
    file = Path(path) / RECORDS
    rows, _ = parse_lines(file)  # a torn last line (a kill mid-write) goes with the rewrite
    last = {}
    for i, (_, row) in enumerate(rows):
        last[(row[0], json.dumps(row[1][0]))] = i
    keep = sorted(last.values())
    if len(keep) == len(rows):
        return 0
    write_text(file, "".join(json.dumps(rows[i][1]) + "\n" for i in keep))
    return len(rows) - len(keep)


def is_database_folder(path: Path) -> bool:
    """A schedules database folder, or an empty one (nothing in it but a writer's lock)."""
    return (path / META).is_file() or all(p.name == LOCK for p in path.iterdir())


def check_destination_db(path) -> Path:
    """The absolute folder that tune or merge may write a schedules database into, or a one-line
    error: a file, the current folder, a folder holding something else."""
    return check_destination(Path(path), "a schedules database", is_database_folder, folder=True)


def task_rule(func) -> str | None:
    """The template rule of a task's PrimFunc (None: not one of ours)."""
    for b in all_blocks(func):
        r = rule_of(b)
        if r:
            return r
    return None


def task_mod(func):
    """The workload module of a task's PrimFunc exactly as MetaSchedule keys it (what tune
    records and compile's ``MetaScheduleApplyDatabase`` looks up)."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    if func.attrs is not None and "global_symbol" in func.attrs:
        func = func.without_attr("global_symbol")
    return _normalize_mod(func)


def log_hash(path) -> tuple[str, int]:
    """A database folder's identity: the hash of its two logs (16 hex digits) and its record count."""
    h = hashlib.sha256()
    n = 0
    for name in (WORKLOADS, RECORDS):
        p = Path(path) / name
        if p.exists():
            data = p.read_bytes()
            h.update(data)
            n += data.count(b"\n") if name == RECORDS else 0
    return h.hexdigest()[:16], n


@dataclass
class ScheduleDB:
    """A schedules database folder."""

    path: Path
    meta: dict
    stand_in: bool = False  # the shipped log of another CPU of the same ISA (see _stand_in)
    stand_in_reason: str | None = None  # why that log: the facts it was chosen by

    def _repair(self) -> None:
        """Check both logs (:func:`read_logs`); drop a torn last line (a kill mid-write) from a file,
        rewriting it atomically, under the writer's lock (a live writer's half line is left to it)."""
        if not read_logs(self.path)[2]:
            return
        with db_lock(self.path, "wait for it"):
            for name in (WORKLOADS, RECORDS):
                rows, torn = parse_lines(self.path / name)
                if torn:
                    write_text(self.path / name, "".join(json.dumps(r) + "\n" for _, r in rows))

    def database(self):
        """The MetaSchedule JSON database (a torn last line dropped first; a corrupt log refused,
        naming its file and line)."""
        from tvm.s_tir import meta_schedule as ms

        self._repair()
        try:
            return ms.database.JSONDatabase(work_dir=str(self.path), allow_missing=True)
        except Exception as e:  # noqa: BLE001 - TVM raises several types for a bad file
            if "Cannot create new file" in str(e):  # a new database's logs, on a full or read-only disk
                raise MntvmError(f"cannot write {self.path}: {one_line(e)}") from None
            raise MntvmError(f"corrupt schedules log in {self.path}: {one_line(e)}") from None

    def identity(self) -> dict:
        """What compile records of the database: its folder name, whether it is a shipped one, a
        hash of its logs and its target; no path (the same log means the same anywhere)."""
        sha, n = log_hash(self.path)
        tgt = self.meta.get("target", {})
        shipped = self.path.resolve().parent == data_dir("schedules").resolve()
        return {"name": self.path.name, "shipped": shipped, "sha256": sha, "records": n,
                "target": tgt.get("name"), "mcpu": (tgt.get("tvm_target") or {}).get("mcpu"),
                "stand_in": self.stand_in, **({"stand_in_reason": self.stand_in_reason} if self.stand_in else {})}

    def apply(self, low, target):
        """Apply tuned records to a lowered module; returns (module, names of the tasks covered)."""
        mod = apply_records(low, self.database(), target)
        covered = []
        for name, func in tunable_tasks(low).items():
            new = mod[name]
            if is_scheduled(new) and not func.same_as(new):
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
            path, stand_in = _stand_in(profile)
            if path is None:
                return None
    else:
        path = Path(spec)
        if not (path / META).is_file():
            raise MntvmError(f"{path} is not a schedules database (no {META}); "
                             "make one with `mntvm tune -o DIR`")
    meta = read_meta(path)
    db = ScheduleDB(path, meta, stand_in=stand_in is not None, stand_in_reason=stand_in)
    mine = target_essentials(profile.to_metadata()["tvm_target"])
    theirs = target_essentials(meta.get("target", {}).get("tvm_target", {}))
    if mine != theirs and not force and stand_in is None:
        raise MntvmError(f"schedules {path} were tuned for target '{meta.get('target', {}).get('name')}', "
                         f"not '{profile.name}' ({target_diff(mine, theirs)}); pass --force-schedules "
                         "to apply them anyway")
    return db


def _stand_in(profile) -> tuple[Path | None, str | None]:
    """A shipped log that can stand in for a "this machine" profile whose CPU has none of its own,
    and why it was chosen. Candidates: same profile and target except ``mcpu``, same vector width
    (the templates' tiles are sized to it). A log tuned on another CPU of the same ISA beats
    template defaults by far more than it loses to a log of the CPU's own (MobileNetV1 1.0/224 on
    a Zen4: 20.0 ms on defaults, 12.5 ms with the Emerald Rapids log at 1 thread), so compile uses
    it and says so; ``--schedules DIR`` with a foreign log is still refused unless forced.

    Among candidates, the one whose tuning machine is most like this one wins, by measured facts
    rather than LLVM's CPU name (wrong in virtual machines): the number of 512-bit FMA ports (a
    tile sized for two ports is not the best for one), then the decisive CPU flags (VNNI, AMX),
    as :func:`mntvm.core.machine.machine_facts` gives them here and the log's ``machine`` record
    says of its own; then the most records."""
    mine = target_essentials(profile.to_metadata()["tvm_target"])
    mine.pop("mcpu", None)
    bits = profile.vector_bits
    candidates = []
    for path in sorted(data_dir("schedules").glob(f"{profile.name}-*")):
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        tgt = meta.get("target", {})
        theirs = target_essentials(tgt.get("tvm_target", {}))
        theirs.pop("mcpu", None)
        if theirs != mine or tgt.get("name") != profile.name or tgt.get("vector_bits") != bits:
            continue
        candidates.append((path, meta))
    if not candidates:
        return None, None
    here = machine_facts() if len(candidates) > 1 else {}
    scored = []
    for path, meta in candidates:
        ports, shared, differ = _likeness(here, meta.get("machine") or {})
        scored.append(((ports, len(shared) - differ, ScheduleDB(path, meta).identity()["records"]), path, meta, shared))
    (ports, _, records), path, meta, shared = max(scored, key=lambda t: t[0])
    mcpu = (meta.get("target", {}).get("tvm_target") or {}).get("mcpu")
    why = [f"same {bits}-bit vectors"]
    if len(candidates) > 1:
        if ports:
            why.append(f"{here['fma512_ports']} 512-bit FMA port(s) measured here, as on {mcpu}")
        if shared:
            why.append(f"{'/'.join(shared)} on both")
        why.append("preferred to " + ", ".join(p.name for _, p, _, _ in scored if p != path))
    return path, f"{path.name}: " + "; ".join(why) + f" ({records} records)"


def _likeness(here: dict, there: dict) -> tuple[bool, list[str], int]:
    """How like this machine (``here``) a log's tuning machine (``there``) is: same measured 512-bit
    FMA ports, the decisive flags both have, and how many of them only one has (0 when the log
    does not say)."""
    mine, theirs = set(here.get("flags", ())), set(there.get("flags", ()))
    ports = here.get("fma512_ports") is not None and there.get("fma512_ports") == here.get("fma512_ports")
    shared = [f for f in DECISIVE_FLAGS if f in mine and f in theirs]
    differ = sum((f in mine) != (f in theirs) for f in DECISIVE_FLAGS) if "flags" in there else 0
    return ports, shared, differ


# ---- read-only loading, for show/merge/prune -----------------------------------------------------

@dataclass
class LoadedDB:
    """A database read for show/merge/prune: nothing in its folder is ever rewritten by reading it
    (a torn last line is only left out in memory)."""

    path: Path
    meta: dict
    workloads: list  # [(line, [structural hash, serialized IRModule]), ...]
    records: list  # [(line, workload index, record), ...]; record = [trace, run_secs, target, args_info]


def load(path) -> LoadedDB:
    """Read and check a database folder, naming the file and line of anything corrupt."""
    path = Path(path)
    if not (path / META).is_file():
        raise MntvmError(f"{path} is not a schedules database (no {META})")
    meta = read_meta(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("target"), dict):
        raise MntvmError(f"corrupt schedules database {path / META}: no target")
    workloads, records, _ = read_logs(path)
    return LoadedDB(path, meta, workloads, records)
