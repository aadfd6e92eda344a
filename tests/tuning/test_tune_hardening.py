"""Tuning hardening (issue 17): one writer per database folder (a lock holding the owner's pid;
a dead owner's lock blocks nobody), outputs that are a file or another folder, a full disk before
and while tuning, a broken log line named by file and line wherever a database is opened, threads
beyond this machine's cores."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from mntvm import cli
from mntvm.core import threads as threads_module
from mntvm.core.errors import MntvmError
from mntvm.model.network import MobileNetConfig
from mntvm.tuning import merge, prune, show, tune
from mntvm.tuning.database import META, RECORDS, WORKLOADS

from conftest import ROOT, cli_run

CFG = MobileNetConfig(alpha=0.25, resolution=32)
TINY = ["--alpha", "0.25", "--resolution", "32"]
MARK = "MNTVM_TUNE_HARDENING_TEST"  # in the environment of the tunes this file starts
HOLD = ("import sys, time\nfrom mntvm.tuning.lock import db_lock\nwith db_lock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n    time.sleep(600)\n")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A database with the FC task's default-knob record only (trials=1: no search)."""
    out = tmp_path_factory.mktemp("db") / "seeded"
    tune(CFG, "x86", trials=1, ops="fc", out=out, progress=False)
    return out


def _lock_file(db):
    from mntvm.tuning.lock import LOCK

    return db / LOCK


def _env(mark: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), MARK: mark}


def _workers_left(mark: str) -> list:
    """TVM popen workers still running that a process started with ``_env(mark)`` spawned."""
    import psutil

    deadline, left = time.time() + 15, []
    while time.time() < deadline:
        left = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if "tvm.exec.popen_worker" in " ".join(p.info["cmdline"] or []) and p.environ().get(MARK) == mark:
                    left.append(p.pid)
            except psutil.Error:
                continue
        if not left:
            break
        time.sleep(0.5)
    return left


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_two_tunes_of_one_folder_never_corrupt_it(tmp_path):
    """A second `mntvm tune` of a folder being tuned is refused in one line naming the owner's
    pid (or, if the first one was done, continues it); either way the database ends with every
    workload once and every task's trials. The owner killed mid-way leaves its lock file behind,
    naming a dead pid: the next tune takes it over."""
    out, mark = tmp_path / "db", uuid.uuid4().hex
    cmd = [sys.executable, "-m", "mntvm.cli", "tune", *TINY, "--ops", "pool,fc", "--trials", "2", "-o", str(out),
           "--json"]
    a = subprocess.Popen(cmd, env=_env(mark), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (out / META).exists() and a.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert (out / META).exists(), a.communicate()[1] if a.poll() is not None else "no database after 240 s"
        # a stopped where it is: it cannot finish (and release its lock) between b's refusal and the kill
        with contextlib.suppress(ProcessLookupError):
            os.killpg(a.pid, signal.SIGSTOP)
        b = subprocess.run(cmd, env=_env(mark), capture_output=True, text=True, timeout=600)
        if b.returncode == 2:  # refused while a tunes, before doing anything
            assert b.stdout == ""
            assert b.stderr == f"mntvm: error: {out} is being tuned by pid {a.pid}; wait for it or use another -o\n"
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
            assert _lock_file(out).read_text().strip() == str(a.pid)  # a dead owner's lock, left behind
        else:  # a was already done: b continued it
            assert b.returncode == 0, b.stderr
            with contextlib.suppress(ProcessLookupError):
                os.killpg(a.pid, signal.SIGCONT)
            assert a.wait(timeout=600) == 0, a.stderr.read()
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
    summary = tune(CFG, "x86", trials=1, ops="pool,fc", out=out, progress=False)
    hashes = [json.loads(line)[0] for line in (out / WORKLOADS).read_text().splitlines()]
    assert len(hashes) == len(set(hashes)) == 2  # pool and fc, once each
    r = show(out)
    assert r["records"] == len((out / RECORDS).read_text().splitlines())
    assert [t["trials"] >= 1 for t in r["tasks"]] == [True, True]
    assert all(t["trials"] >= 1 for t in summary["tasks"].values())
    assert not _lock_file(out).exists()
    assert _workers_left(mark) == []


def test_a_held_database_is_refused_and_a_dead_owners_lock_is_not(seeded, tmp_path, capsys):
    """tune, merge and prune refuse a folder another live process holds, touching nothing; the lock
    file of a writer that died (here: SIGKILL) blocks nobody, in a database or in a new folder."""
    db = tmp_path / "db"
    shutil.copytree(seeded, db)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdout=subprocess.PIPE, text=True,
                              env=_env(uuid.uuid4().hex))
    try:
        assert holder.stdout.readline() == "locked\n"
        before = _snapshot(db)
        msg = f"{db} is being tuned by pid {holder.pid}; wait for it or use another -o"
        with pytest.raises(MntvmError, match=re.escape(msg)):
            tune(CFG, "x86", trials=2, ops="fc", out=db, progress=False)
        with pytest.raises(MntvmError, match=re.escape(msg)):
            merge([seeded], db)
        with pytest.raises(MntvmError, match=re.escape(msg)):
            prune(db, keep=1)
        capsys.readouterr()
        assert cli.main(["schedules", "prune", str(db), "--top-k", "1"]) == 2
        assert capsys.readouterr().err == f"mntvm: error: {msg}\n"
        assert _snapshot(db) == before
    finally:
        holder.kill()
        holder.wait()
    assert _lock_file(db).read_text().strip() == str(holder.pid)
    assert prune(db, keep=1) == 1 and not _lock_file(db).exists()

    new = tmp_path / "new"
    new.mkdir()
    _lock_file(new).write_text(f"{_dead_pid()}\n")
    summary = tune(CFG, "x86", trials=1, ops="fc", out=new, progress=False)
    assert summary["tasks"]["mntvm_dense"]["trials"] == 1 and not _lock_file(new).exists()


def test_tune_output_must_be_a_new_or_a_database_folder(seeded, tmp_path, capsys):
    """`tune -o` onto a file or onto a folder of something else: one line naming it, nothing
    written; merge refuses such a folder with the same words (one check)."""
    f = tmp_path / "notes.txt"
    f.write_text("mine\n")
    d = tmp_path / "photos"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"jpeg")
    capsys.readouterr()
    for out, want in ((f, f"{f} exists and is not a folder; not replacing it with a schedules database"),
                      (d, f"{d} exists and is not a schedules database; not replacing it")):
        assert cli.main(["tune", *TINY, "--ops", "fc", "--trials", "1", "-o", str(out)]) == 2
        assert capsys.readouterr().err == f"mntvm: error: {want}\n"
        assert cli.main(["schedules", "merge", str(seeded), "-o", str(out)]) == 2
        assert capsys.readouterr().err == f"mntvm: error: {want}\n"
    assert f.read_text() == "mine\n" and _snapshot(d) == {"a.jpg": b"jpeg"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]


def test_tune_refuses_a_full_disk_before_tuning(tmp_path, monkeypatch, capsys):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 << 20))
    out = tmp_path / "sub" / "db"
    capsys.readouterr()
    t0 = time.time()
    assert cli.main(["tune", *TINY, "--ops", "fc", "--trials", "1", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mntvm: error: cannot write {out}: No space left on device (10 MB free")
    assert err.count("\n") == 1 and not (tmp_path / "sub").exists() and time.time() - t0 < 60


def test_tune_stops_when_its_log_is_not_written(tmp_path, monkeypatch):
    """MetaSchedule's appends ignore write errors: a log that stops taking records (here: turned
    into /dev/full, which answers every write with ENOSPC) stops tune at once, in one line naming
    the folder, instead of losing every trial silently."""
    tune_module = importlib.import_module("mntvm.tuning.tune")  # the package exports the function
    out = tmp_path / "db"
    real = tune_module.ms_builder

    def builder_then_full_disk(*args, **kwargs):  # called once the database is open, before the first trial
        (out / RECORDS).unlink(missing_ok=True)
        os.symlink("/dev/full", out / RECORDS)
        return real(*args, **kwargs)

    monkeypatch.setattr(tune_module, "ms_builder", builder_then_full_disk)
    with pytest.raises(MntvmError) as e:
        tune(CFG, "x86", trials=1, ops="fc", out=out, progress=False)
    assert str(e.value).startswith(f"cannot write {out}: ") and "\n" not in str(e.value)
    assert "lacks 1 of them" in str(e.value) and not _lock_file(out).exists()
    (out / RECORDS).unlink()
    assert show(out)["records"] == 0  # what did reach the folder still loads


def test_tune_refuses_more_threads_than_cores(tmp_path, monkeypatch, capsys):
    out = tmp_path / "db"
    capsys.readouterr()
    monkeypatch.setattr(threads_module, "cores", lambda: 1)
    assert cli.main(["tune", *TINY, "--ops", "fc", "--trials", "1", "--threads", "2", "-o", str(out)]) == 2
    assert capsys.readouterr().err == "mntvm: error: threads 2 > the 1 cores of this machine\n"
    monkeypatch.undo()
    n = threads_module.cores()
    assert cli.main(["tune", *TINY, "--ops", "fc", "--trials", "1", "--threads", str(n + 1), "-o", str(out)]) == 2
    assert capsys.readouterr().err == f"mntvm: error: threads {n + 1} > the {n} cores of this machine\n"
    assert not out.exists()


@pytest.mark.parametrize("broken", ["record of 3 fields", "record not a list", "workload"])
def test_compile_names_the_line_of_a_broken_log(seeded, tmp_path, broken):
    """compile opens a database with the same line checks as `schedules show`: a broken line is
    one error naming its file and line, not TVM's internal check."""
    db = tmp_path / "db"
    shutil.copytree(seeded, db)
    (line,) = (db / RECORDS).read_text().splitlines()
    wi, rec = json.loads(line)
    if broken == "workload":
        (db / WORKLOADS).write_text((db / WORKLOADS).read_text() + '["abc"]\n')
        want = f"{db / WORKLOADS}: line 2 is not a workload"
    else:
        bad = [wi, rec[:3]] if broken == "record of 3 fields" else [wi, "x"]
        (db / RECORDS).write_text("\n".join([line, json.dumps(bad), line]) + "\n")
        want = f"{db / RECORDS}: line 2 is not a tuning record"
    p = cli_run("compile", *TINY, "--schedules", str(db), "-o", str(tmp_path / "art"), check=False)
    assert p.returncode == 2 and p.stdout == "" and p.stderr == f"mntvm: error: corrupt schedules log {want}\n"
    assert not (tmp_path / "art").exists()
    p = cli_run("schedules", "show", str(db), check=False)
    assert p.returncode == 2 and p.stderr == f"mntvm: error: corrupt schedules log {want}\n"
