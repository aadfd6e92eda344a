"""Tuning the templates, applying the log in compile (proved by the applied trace), resume after
kill -9, torn/corrupt logs, foreign-target refusal, prune/merge, and remote tuning via the tracker."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mntvm import weights as W
from mntvm.artifact import load_artifact
from mntvm.compile import compile_model, lower
from mntvm.errors import MntvmError
from mntvm.export import build_onnx
from mntvm.model import MobileNetConfig
from mntvm.targets import get_profile
from mntvm.tune import RECORDS, _task_mod, open_schedules, prune, tune

from conftest import ROOT, ort_run, run_cli
from rpc_fixtures import Server, Tracker

CFG = MobileNetConfig(alpha=0.25, resolution=32)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("db") / "x86"
    summary = tune(CFG, "x86", trials=3, ops="pw,fc", out=out, progress=False, chunk=3)
    return out, summary


def test_tiny_tuning_writes_a_database(tuned):
    out, summary = tuned
    assert {t["rule"] for t in summary["tasks"].values()} == {"mntvm_pw", "mntvm_dense"}
    assert all(t["trials"] >= 3 and t["best_ms"] > 0 for t in summary["tasks"].values())
    assert (out / RECORDS).stat().st_size > 0 and (out / "mntvm-db.json").is_file()


def test_compile_applies_the_database(tuned, tmp_path):
    """Proved, not assumed: the tuned functions in the compiled module are exactly the best
    records' traces replayed on the workloads, and the result still matches ONNX Runtime."""
    import tvm
    from tvm import s_tir

    out, summary = tuned
    profile = get_profile("x86")
    db = open_schedules(out, profile)
    low = lower(CFG, W.random_weights(CFG), profile)
    mod, covered = db.apply(low, profile.tvm_target())
    assert covered == sorted(summary["tasks"])
    mdb = db.database()
    for name in covered:
        rec = mdb.get_top_k(mdb.commit_workload(_task_mod(low[name])), 1)[0]
        sch = s_tir.Schedule(_task_mod(low[name]))
        rec.trace.apply_to_schedule(sch, remove_postproc=False)
        tvm.ir.assert_structural_equal(sch.mod["main"].body, mod[name].body)
    art = load_artifact(compile_model(CFG, tmp_path / "a", schedules=out))
    s = art.metadata["schedules"]
    assert s["kind"] == "templates+database" and s["tuned"] == covered
    assert set(s["defaults"]) == {n for n in s["defaults"]} and not set(s["defaults"]) & set(covered)
    assert s["database"]["sha256"] == db.identity()["sha256"]
    x = np.random.default_rng(0).uniform(-1, 1, CFG.input_shape).astype(np.float32)
    assert np.abs(art.run(x) - ort_run(build_onnx(CFG, W.random_weights(CFG)), x)).max() <= 1e-5


def test_variants_share_workloads(tuned, tmp_path):
    out, _ = tuned
    p = run_cli("compile", "--alpha", "0.25", "--resolution", "64", "--schedules", str(out), "-o", str(tmp_path / "b"))
    meta = json.loads((tmp_path / "b" / "metadata.json").read_text())["schedules"]
    # the FC's workload depends only on channels and is reused; every spatial size differs, so the
    # pointwise tasks are not, and compile says which ran on template defaults
    assert meta["tuned"] == ["mntvm_dense"]
    assert meta["tasks"] == 1 + len(meta["defaults"]) and "mntvm_pw" in meta["defaults"]
    assert "1/21 tasks" in p.stdout and "template defaults for: mntvm_conv" in p.stdout


def test_refuses_a_foreign_target_unless_forced(tuned, tmp_path):
    out, _ = tuned
    with pytest.raises(MntvmError, match="tuned for target 'x86', not 'x86-avx2'.*--force-schedules"):
        compile_model(CFG, tmp_path / "c", target="x86-avx2", schedules=out)
    assert not (tmp_path / "c").exists()
    art = load_artifact(compile_model(CFG, tmp_path / "c", target="x86-avx2", schedules=out, force_schedules=True))
    assert art.metadata["schedules"]["database"]["name"] == out.name


def test_torn_and_corrupt_logs(tuned, tmp_path):
    import shutil

    out, _ = tuned
    db = tmp_path / "db"
    shutil.copytree(out, db)
    n = len((db / RECORDS).read_text().splitlines())
    with open(db / RECORDS, "a") as f:
        f.write('[0, [[["GetSBlock"')  # a kill -9 mid-write
    open_schedules(db, get_profile("x86")).database()
    assert len((db / RECORDS).read_text().splitlines()) == n  # torn line dropped, the rest kept
    lines = (db / RECORDS).read_text().splitlines()
    (db / RECORDS).write_text("\n".join(lines[:1] + ["{garbage"] + lines[1:]) + "\n")
    p = run_cli("compile", "--alpha", "0.25", "--resolution", "32", "--schedules", str(db), "-o",
                str(tmp_path / "x"), check=False)
    assert p.returncode == 2 and "corrupt schedules log" in p.stderr and p.stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_prune_and_merge_keep_the_best(tuned, tmp_path):
    out, _ = tuned
    other = tmp_path / "other"
    tune(CFG, "x86", trials=2, ops="fc", out=other, progress=False, chunk=2)

    def best_per_workload(path):
        wl = [json.dumps(json.loads(l), sort_keys=True) for l in (path / "database_workload.json").read_text().splitlines()]
        best = {}
        for line in (path / RECORDS).read_text().splitlines():
            wi, rec = json.loads(line)
            t = sum(map(float, rec[1])) / len(rec[1])
            best[wl[wi]] = min(best.get(wl[wi], float("inf")), t)
        return best

    want = best_per_workload(out)
    for k, v in best_per_workload(other).items():
        want[k] = min(want.get(k, float("inf")), v)
    merged = tmp_path / "merged"
    n = prune([out, other], keep=1, out=merged)
    assert n == len(want) and best_per_workload(merged) == pytest.approx(want)
    assert len((merged / RECORDS).read_text().splitlines()) == len(want)
    open_schedules(merged, get_profile("x86")).database()  # loads


def test_resume_after_kill(tmp_path):
    out = tmp_path / "db"
    cmd = [sys.executable, "-m", "mntvm.cli", "tune", "--alpha", "0.25", "--resolution", "32",
           "--trials", "6", "--ops", "stem,fc", "-o", str(out), "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not ((out / RECORDS).exists() and (out / RECORDS).stat().st_size > 0):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    have = len((out / RECORDS).read_text().splitlines())
    assert have > 0
    open_schedules(out, get_profile("x86")).database()  # what the kill left loads
    stdout = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    summary = json.loads(stdout.strip().splitlines()[-1])
    total = sum(t["trials"] for t in summary["tasks"].values())
    assert len(summary["tasks"]) == 2
    for name, t in summary["tasks"].items():  # each task got its trials, or its space ran out
        assert t["trials"] >= 6 or name in summary["exhausted"]
    assert summary["trials_run"] == total - have  # only what was missing ran


def test_remote_tuning_through_the_tracker(tmp_path):
    tracker = Tracker()
    try:
        server = Server(tracker, "mntvm-tune-x86")
        try:
            summary = tune(CFG, "x86", trials=2, ops="fc", out=tmp_path / "db", tracker=tracker.addr,
                           key="mntvm-tune-x86", progress=False, chunk=2)
        finally:
            server.stop()
    finally:
        tracker.stop()
    (task,) = summary["tasks"].values()
    assert task["rule"] == "mntvm_dense" and task["trials"] >= 2 and task["best_ms"] > 0
