"""Issue #17 hardening of the sweep: ``--resume`` refuses results measured with other settings, and the
artifact cache is bounded (least recently used artifacts pruned, never the board userland).

No compile here: results files and artifact folders are written by hand into a temporary MNTVM_CACHE
(the real sweeps that record settings, refuse a resume and prune after running are in test_sweep.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mntvm.core.errors import MntvmError

BASE = {"target": "x86", "mcpu": None, "mattr": None, "repeat": 5, "warmup": 3, "threads": 1, "seed": 0}
KIB = 1024


def _row(settings: dict | None) -> dict:
    """One finished 0.25/96 line, as a sweep with ``settings`` writes it (None: an older mntvm's line)."""
    r = {"alpha": 0.25, "resolution": 96, "madds": 1, "params": 1, "top1": None, "median_ms": 1.0, "p90_ms": 1.1,
         "gflops": 1.0, "board": "local", "max_abs_diff": 0.0, "pareto": None, "retried": [], "repeat": 5,
         "threads": 1, "target": "x86", "artifact": "artifacts/gone", "cached": True}
    if settings is not None:
        r["settings"] = settings
    return r


def _resume(out: Path, **kw):
    from mntvm.sweep import sweep

    args = dict(repeat=BASE["repeat"], warmup=BASE["warmup"], threads=BASE["threads"], seed=BASE["seed"])
    args.update(kw)
    return sweep(args.pop("target", "x86"), [0.25], [96], out=out, resume=True, progress=False, **args)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MNTVM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MNTVM_CACHE_MAX_MB", raising=False)
    return tmp_path / "cache"


@pytest.mark.parametrize("change, message", [
    ({"repeat": 10}, "was measured with --repeat 5, this run asks for 10"),
    ({"warmup": 0}, "was measured with --warmup 3, this run asks for 0"),
    ({"threads": None}, "was measured with --threads 1, this run asks for none (the default)"),
    ({"threads": 2}, "was measured with --threads 1, this run asks for 2"),
    ({"seed": 7}, "was measured with --seed 0, this run asks for 7"),
    ({"mcpu": "skylake"}, "was measured with --mcpu none (the default), this run asks for skylake"),
    ({"mattr": ["+avx2"]}, "was measured with --mattr none (the default), this run asks for +avx2"),
    ({"target": "x86-64"}, "was measured with --target x86, this run asks for x86-64"),
    ({"dtype": "int8"}, "was measured with --dtype float32, this run asks for int8"),
])
def test_resume_with_other_settings_is_refused(change, message, cache, tmp_path):
    """A results file measured with --repeat 5 is not resumed by a run asking for --repeat 10 (and so on
    for each setting that shapes a measurement): one line naming the setting, the file untouched."""
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(_row(BASE)) + "\n")
    before = out.read_bytes()
    with pytest.raises(MntvmError) as e:
        _resume(out, **change)
    assert str(e.value) == f"--resume: {out} {message}; use another --output or the same settings"
    assert out.read_bytes() == before and not (cache / "artifacts").exists()


def test_resume_with_the_same_settings_and_old_lines(cache, tmp_path):
    """The same settings resume (nothing to run); a line that does not say how it was measured is refused;
    so is a file where any line differs."""
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(_row(BASE)) + "\n")
    r = _resume(out)
    assert r["ran"] == [] and r["resumed"] == ["0.25/96"] and r["repeat"] == 5 and r["threads"] == 1
    assert r["mcpu"] is None and r["mattr"] is None and r["seed"] == 0

    out.write_text(json.dumps(_row(BASE)) + "\n" + json.dumps({**_row({**BASE, "seed": 3}), "resolution": 128})
                   + "\n")
    with pytest.raises(MntvmError, match="was measured with --seed 3, this run asks for 0"):
        _resume(out)

    out.write_text(json.dumps(_row(None)) + "\n")
    with pytest.raises(MntvmError, match=r"do not record their settings \(written by an older mntvm\)"):
        _resume(out)


def test_run_settings_normalises_mattr():
    from mntvm.sweep.results import run_settings

    assert run_settings("x86", None, "+avx2, +fma", 5, 3, None, 0)["mattr"] == ["+avx2", "+fma"]
    assert run_settings("x86", "skylake", ["+avx2"], 5, 3, 2, 1) == {
        "target": "x86", "mcpu": "skylake", "mattr": ["+avx2"], "repeat": 5, "warmup": 3, "threads": 2, "seed": 1,
        "dtype": "float32"}


# ---------------------------------------------------------------------------------------------
# The bounded artifact cache
# ---------------------------------------------------------------------------------------------
def _fake(cache: Path, sizes: dict[str, int], age_s: dict[str, float]) -> Path:
    """Artifact folders of known sizes (one file each), last used ``age_s`` seconds ago."""
    root = cache / "artifacts"
    now = time.time()
    for name, size in sizes.items():
        (root / name).mkdir(parents=True)
        (root / name / "model.so").write_bytes(b"\0" * size)
        os.utime(root / name, (now - age_s[name],) * 2)
    return root


def _board(cache: Path) -> Path:
    board = cache / "board-aarch64"
    (board / "usr" / "lib").mkdir(parents=True)
    (board / "usr" / "lib" / "libtvm_runtime.so").write_bytes(b"\0" * (4 << 20))
    return board


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_prune_cache_least_recently_used_first(cache):
    from mntvm.sweep.cache import prune_cache, touch_artifact

    root = _fake(cache, {"a": 100 * KIB, "b": 200 * KIB, "c": 300 * KIB, "d": 100 * KIB},
                 {"a": 400, "b": 300, "c": 200, "d": 100})
    board = _board(cache)
    stale = root / f".c.tmp-{_dead_pid()}-x1"  # a compile killed mid-way
    stale.mkdir()
    (stale / "model.so").write_bytes(b"\0" * KIB)

    # under the limit: nothing goes (the board userland does not count)
    r = prune_cache(700 * KIB)
    assert r["removed"] == [] and r["before_bytes"] == r["after_bytes"] == 700 * KIB and not r["over"]
    assert not stale.exists(), "a dead writer's temp folder is cleaned up"

    # b is used again now: the oldest use is now a, then c
    touch_artifact(root / "b")
    # a is in use by this sweep (kept although oldest); c goes, then d, then the limit holds
    r = prune_cache(350 * KIB, keep=[root / "a"])
    assert r["removed"] == ["c", "d"] and r["freed_bytes"] == 400 * KIB
    assert r["after_bytes"] == 300 * KIB and r["kept"] == 2 and not r["over"] and r["errors"] == []
    assert sorted(p.name for p in root.iterdir()) == ["a", "b"]
    assert (board / "usr" / "lib" / "libtvm_runtime.so").stat().st_size == 4 << 20

    # what is kept may exceed the limit: said so, nothing else removed
    r = prune_cache(0, keep=[root / "a", root / "b"])
    assert r["removed"] == [] and r["over"] and r["after_bytes"] == 300 * KIB


def test_clear_show_and_the_limit(cache, monkeypatch):
    from mntvm.sweep import DEFAULT_CACHE_MAX_MB, cache_limit, clear_cache, format_cache, show_cache

    root = _fake(cache, {"old": 3 * KIB, "new": 5 * KIB}, {"old": 60, "new": 10})
    _board(cache)
    s = show_cache()
    assert [e["name"] for e in s["artifacts"]] == ["old", "new"] and s["artifact_bytes"] == 8 * KIB
    assert s["other"] == [{"name": "board-aarch64", "bytes": 4 << 20}]
    assert s["max_bytes"] == DEFAULT_CACHE_MAX_MB << 20 == 2 << 30
    text = format_cache(s)
    assert "2 artifacts" in text and "not pruned: board-aarch64 (4.0 MB)" in text and " new" in text

    r = clear_cache()
    assert r["removed"] == ["old", "new"] and list(root.iterdir()) == [] and (cache / "board-aarch64").is_dir()
    assert format_cache(r).startswith("removed 2 artifacts (0.0 MB); 0 left")

    monkeypatch.setenv("MNTVM_CACHE_MAX_MB", "1.5")
    assert cache_limit() == 3 << 19 and cache_limit(10) == 10
    for bad in ("lots", "-1", "inf", "nan"):
        monkeypatch.setenv("MNTVM_CACHE_MAX_MB", bad)
        with pytest.raises(MntvmError, match="MNTVM_CACHE_MAX_MB must be a number of MiB >= 0"):
            cache_limit()


def test_bad_cache_limit_refused_before_compiling(cache, tmp_path, monkeypatch):
    from mntvm.sweep import sweep

    monkeypatch.setenv("MNTVM_CACHE_MAX_MB", "lots")
    with pytest.raises(MntvmError, match="MNTVM_CACHE_MAX_MB"):
        sweep("x86", [0.25], [96], out=tmp_path / "out.jsonl", progress=False)
    assert not (cache / "artifacts").exists() and not (tmp_path / "out.jsonl").exists()
