"""How a tune settles a task (``mntvm.tuning.settle``): its best records are timed again side by side,
a record that was lucky loses its place, the log keeps one record per trace (the last measurement:
``mntvm.tuning.database.drop_superseded``), a settled log is not timed again, and a merge prefers a
trace's record with the most timings over an older single one."""
from __future__ import annotations

import json
import shutil

import pytest

from mntvm.model import weights as W
from mntvm.model.network import MobileNetConfig
from mntvm.targets.profiles import get_profile
from mntvm.templates.lowering import lower
from mntvm.templates.registry import tunable_tasks
from mntvm.templates.defaults import default_schedule
from mntvm.tuning.database import RECORDS, drop_superseded, open_schedules, task_mod
from mntvm.tuning.manage import merge
from mntvm.tuning.measure import REPEATS, mean_secs
from mntvm.tuning.settle import ROUNDS
from mntvm.tuning.tune import tune_funcs

CFG = MobileNetConfig(alpha=0.25, resolution=32)
TASK = "mntvm_dwpw5"  # 2x2 positions, 64 -> 128 channels: a fast task with a knob space of many points


def _rows(path):
    """The records file's rows: [(trace JSON, mean seconds, number of timings)]."""
    out = []
    for line in (path / RECORDS).read_text().splitlines():
        _, rec = json.loads(line)
        out.append((json.dumps(rec[0]), sum(rec[1]) / len(rec[1]), len(rec[1])))
    return out


def test_drop_superseded_keeps_the_last_record_of_each_trace(tmp_path):
    trace = lambda i: [[["Instr", i]], []]  # noqa: E731 - as MetaSchedule writes one: [insts, decisions]
    rec = lambda i, secs: [0, [trace(i), secs, None, None]]  # noqa: E731
    lines = [rec(1, [1.0]), rec(2, [2.0]), rec(1, [3.0, 3.0]), rec(3, [4.0])]
    (tmp_path / RECORDS).write_text("".join(json.dumps(r) + "\n" for r in lines) + '[0, [[[')  # a torn last line
    assert drop_superseded(tmp_path) == 1
    got = [json.loads(line) for line in (tmp_path / RECORDS).read_text().splitlines()]
    assert got == [lines[1], lines[2], lines[3]]  # trace 1's earlier record gone, the torn line with it
    before = (tmp_path / RECORDS).stat()
    assert drop_superseded(tmp_path) == 0  # nothing to drop: not rewritten
    after = (tmp_path / RECORDS).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.fixture(scope="module")
def task():
    profile = get_profile("x86")
    return profile, {TASK: tunable_tasks(lower(CFG, W.random_weights(CFG), profile))[TASK]}


def test_a_lucky_record_is_timed_again_and_loses_its_place(task, tmp_path):
    profile, funcs = task
    out = tmp_path / "db"
    first = tune_funcs(funcs, profile, out, 4, progress=False)
    rows = _rows(out)
    assert len({t for t, _, _ in rows}) == len(rows) == first["tasks"][TASK]["trials"]  # one record per trace
    # a log from before settling (or merged from another run) whose worst record had one lucky
    # timing: 30 % of the best, scaled by another run's measure of the defaults
    best = min(m for _, m, _ in rows)
    # (not the defaults' record: its time is the scale the task's costs are recorded in, every run)
    mod = task_mod(funcs[TASK])
    mdb = open_schedules(out, profile).database()
    key = str(default_schedule(mod, profile.tvm_target(), profile.vector_bits).trace.as_json())
    defaults = [mean_secs(r.run_secs) for r in mdb.get_top_k(mdb.commit_workload(mod), 1 << 30)
                if str(r.trace.as_json()) == key]
    assert len(defaults) == 1
    lucky = max((i for i in range(len(rows)) if rows[i][1] != defaults[0]), key=lambda i: rows[i][1])
    lines = (out / RECORDS).read_text().splitlines()
    wi, rec = json.loads(lines[lucky])
    rec[1] = [0.3 * best] * 10
    lines[lucky] = json.dumps([wi, rec])
    (out / RECORDS).write_text("\n".join(lines) + "\n")
    older = tmp_path / "older"
    shutil.copytree(out, older)

    r = tune_funcs(funcs, profile, out, 4, progress=False)
    assert r["trials_run"] == 0 and r["tasks"][TASK]["trials"] == len(rows)  # timed again, not searched
    s = r["tasks"][TASK]["settled"]
    assert s["finalists"] >= 1 and s["passes"] >= 1 and s["before_ms"] == pytest.approx(0.3e3 * best)
    after = {t: (m, n) for t, m, n in _rows(out)}
    assert len(after) == len(rows)  # the new record replaced the old one
    mean, n = after[rows[lucky][0]]
    assert n == ROUNDS * REPEATS and mean > 0.6 * best  # its own time, not the lucky one
    assert r["tasks"][TASK]["best_ms"] == pytest.approx(1e3 * min(m for m, _ in after.values()))
    assert r["tasks"][TASK]["best_ms"] > 0.6e3 * best

    # settled: a tune with the same trials times nothing again
    text = (out / RECORDS).read_text()
    r = tune_funcs(funcs, profile, out, 4, progress=False)
    assert r["skipped"] == [TASK] and (out / RECORDS).read_text() == text

    # merged with its older copy, the trace counts by its new timings, not by the lucky one
    merged = merge([older, out], tmp_path / "merged", top_k=1)
    assert merged["records"] == 1
    (_, mean, n), = _rows(tmp_path / "merged")
    assert n > 10 and mean > 0.6 * best
