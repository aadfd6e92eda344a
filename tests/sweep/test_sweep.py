"""`mntvm sweep` (issue #8): variants spread over two loopback boards by TVM's tracker, a board
killed mid-sweep, a killed sweep resumed, the plot and HTML report rendered, bad input refused.

Everything runs for real: TVM's tracker and two `mntvm rpc server` processes on 127.0.0.1 (their
own process groups, stopped by PID), the CLI in subprocesses, Chromium for the report. Small
variants only (α ∈ {0.25, 0.5} × resolution ∈ {96, 128}); compiled artifacts are cached in one
temporary MNTVM_CACHE for the module, so only the first sweep compiles.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli_run, run_cli
from rpc_fixtures import listening

ALPHAS, RESOLUTIONS = (0.25, 0.5), (96, 128)
VARIANTS = {f"{a:g}/{r}" for a in ALPHAS for r in RESOLUTIONS}
SMALL = ["--alphas", "0.25,0.5", "--resolutions", "96,128"]


def _env(cache: Path) -> dict:
    return {**os.environ, "MNTVM_CACHE": str(cache),
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _free_port(span: int = 1) -> int:
    """A port P with P..P+span-1 free right now (loopback)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + span >= 65000:
            continue
        ok = True
        for q in range(p + 1, p + span):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", q))
                except OSError:
                    ok = False
                    break
        if ok:
            return p
    raise RuntimeError("no free port range")


class Boards:
    """TVM's tracker plus N `mntvm rpc server` boards on loopback under one key."""

    def __init__(self, tmp: Path, cache: Path, n: int = 2, key: str = "sweep-x86"):
        self.key, self.procs, self.servers = key, [], {}
        self.tport = _free_port(11)
        self.tracker = f"127.0.0.1:{self.tport}"
        env = _env(cache)
        self.procs.append(self._start([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                       "--port", str(self.tport), "--port-end", str(self.tport + 10)],
                                      tmp / "tracker.log", env))
        _wait(lambda: listening(self.tport), 30, "the tracker to listen")
        for i in range(n):
            port = _free_port(11)
            p = self._start([sys.executable, "-m", "mntvm.cli", "rpc", "server", "--tracker", self.tracker,
                             "--key", key, "--port", str(port), "--port-end", str(port + 10)],
                            tmp / f"server{i}.log", env)
            self.procs.append(p)
            self.servers[f"127.0.0.1:{port}"] = p
        _wait(lambda: self.total() == n, 60, f"{n} boards under '{key}'")

    @staticmethod
    def _start(cmd, log: Path, env) -> subprocess.Popen:
        with open(log, "wb") as f:
            return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=_die_with_parent)

    def total(self) -> int:
        from mntvm.remote.rpc import status

        try:
            return status(self.tracker)["keys"].get(self.key, {}).get("total", 0)
        except Exception:  # noqa: BLE001 - not up yet
            return 0

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL the process group we started (the server and the session child it forked)."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)

    def stop(self) -> None:
        for p in reversed(self.procs):
            self.kill(p)


def _die_with_parent() -> None:
    """In the child: SIGKILL it if this test process dies without its teardown (Linux prctl)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass



def _wait(cond, timeout: float, what: str) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _sweep(cache: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mntvm.cli", "sweep", *args], capture_output=True, text=True,
                          env=_env(cache), timeout=timeout)


def _lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mntvm-cache")


@pytest.fixture(scope="module")
def boards(tmp_path_factory, cache):
    b = Boards(tmp_path_factory.mktemp("boards"), cache)
    yield b
    b.stop()


@pytest.fixture(scope="module")
def swept(boards, cache, tmp_path_factory):
    """The four small variants over two boards, with --out, --plot, --report and --budget-ms."""
    d = tmp_path_factory.mktemp("sweep")
    p = _sweep(cache, "--target", "x86", *SMALL, "--tracker", boards.tracker, "--key", boards.key,
               "--repeat", "15", "--threads", "1", "--budget-ms", "1000", "--json",
               "--out", str(d / "out.jsonl"), "--plot", str(d / "sweep.png"), "--report", str(d / "report.html"))
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", "--json turns the progress bar off"
    return json.loads(p.stdout), d


def test_two_boards_every_variant_once(swept, boards, cache):
    r, d = swept
    got = [f"{v['alpha']:g}/{v['resolution']}" for v in r["variants"]]
    assert sorted(got) == sorted(VARIANTS) and len(got) == len(set(got))
    assert sorted(r["compiled"]) == sorted(VARIANTS) and r["ran"] and not r["resumed"]
    assert r["retried"] == [] and r["failed"] == []
    # the tracker handed variants to both boards
    assert set(r["boards"]) == set(boards.servers) == set(r["servers"])
    assert {v["board"] for v in r["variants"]} == set(boards.servers)
    # the results file: one line per variant, the same numbers
    lines = _lines(d / "out.jsonl")
    assert sorted(f"{x['alpha']:g}/{x['resolution']}" for x in lines) == sorted(VARIANTS)
    by = {(x["alpha"], x["resolution"]): x for x in lines}
    for v in r["variants"]:
        assert by[(v["alpha"], v["resolution"])]["median_ms"] == v["median_ms"]
    # each line records the settings that measured it (what --resume checks)
    for x in lines:
        assert x["settings"] == {"target": "x86", "mcpu": None, "mattr": None, "repeat": 15, "warmup": 3,
                                 "threads": 1, "seed": 0, "dtype": "float32"}
    # artifacts cached by config + target + weights + schedules identity
    for v in r["variants"]:
        meta = json.loads((Path(v["artifact"]) / "metadata.json").read_text())
        assert meta["model"]["alpha"] == v["alpha"] and meta["model"]["resolution"] == v["resolution"]
        assert meta["target"]["name"] == "x86" and Path(v["artifact"]).parent == cache / "artifacts"


def test_numbers_cost_accuracy_pareto(swept):
    r, _ = swept
    recs = {(v["alpha"], v["resolution"]): v for v in r["variants"]}
    for (a, res), v in recs.items():
        cost = json.loads(run_cli("cost", "--alpha", str(a), "--resolution", str(res), "--json").stdout)
        assert (v["madds"], v["params"]) == (cost["total_madds"], cost["total_params"])
        assert v["max_abs_diff"] <= 1e-5
        assert v["median_ms"] > 0 and v["p90_ms"] >= v["median_ms"]
        assert v["gflops"] == pytest.approx(2 * v["madds"] / (v["median_ms"] * 1e-3) / 1e9)
    # published TF-slim top-1 where a checkpoint exists, null otherwise
    assert recs[(0.25, 128)]["top1"] == 41.5 and recs[(0.5, 128)]["top1"] == 56.3
    assert recs[(0.25, 96)]["top1"] is None and recs[(0.5, 96)]["top1"] is None
    # Pareto flags consistent with the numbers
    for v in recs.values():
        if v["top1"] is None:
            assert v["pareto"] is None
            continue
        dominated = any(o["top1"] is not None and o["median_ms"] < v["median_ms"] and o["top1"] > v["top1"]
                        for o in recs.values())
        assert v["pareto"] is (not dominated)
    # the variant with ~5x the mult-adds is measured slower
    big, small = recs[(0.5, 128)], recs[(0.25, 96)]
    assert big["madds"] / small["madds"] > 5
    assert big["median_ms"] > small["median_ms"]
    # --budget-ms 1000: every variant fits; the most accurate is named, with its margin
    b = r["budget"]
    assert b["fits"] and b["variant"] == "0.5/128"
    assert b["margin_ms"] == pytest.approx(1000 - big["median_ms"])
    # report metadata
    assert r["tvm_version"].startswith("0.27") and r["schedules"]["id"].startswith("schedules-")


def test_rerun_reuses_cache_and_prints_table(swept, boards, cache):
    """Same sweep again without --json: nothing recompiled, the table and the board each ran on."""
    p = _sweep(cache, "--target", "x86", "--alphas", "0.25", "--resolutions", "96,128", "--tracker",
               boards.tracker, "--key", boards.key, "--repeat", "5", "--threads", "1", "--budget-ms", "0.001")
    assert p.returncode == 0, p.stderr
    assert "compiling" in p.stderr and "running on 127.0.0.1:" in p.stderr and "2/2" in p.stderr
    assert "alpha  res" in p.stdout and "no variant fits 0.001 ms" in p.stdout
    p = _sweep(cache, "--target", "x86", "--alphas", "0.25", "--resolutions", "96", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["compiled"] == [] and r["variants"][0]["cached"] is True


def test_results_and_report_hold_no_absolute_path(swept, cache):
    """Moving the checkout or the cache strands nothing: the results file names each artifact relative
    to the cache, and neither it nor the report holds the checkout's, the cache's or any /tmp/ path."""
    r, d = swept
    for name in ("out.jsonl", "report.html"):
        text = (d / name).read_text()
        for absolute in (str(ROOT), str(cache), "/tmp/"):
            assert absolute not in text, f"{absolute} in {name}"
    for x in _lines(d / "out.jsonl"):
        assert not Path(x["artifact"]).is_absolute() and (cache / x["artifact"] / "metadata.json").is_file()
    assert not Path(r["schedules"]["dir"]).is_absolute()


def test_artifact_cache_key_survives_moving_the_checkout(tmp_path, monkeypatch):
    """The artifact cache key (profile, schedules and code identities) is the same for a copy of the
    checkout elsewhere, and changes with what shapes the code."""
    from mntvm.model import MobileNetConfig
    from mntvm.sweep.cache import artifact_dir, schedules_identity
    from mntvm.targets import get_profile

    code = ("import json; from mntvm.model import MobileNetConfig; from mntvm.targets import get_profile; "
            "from mntvm.sweep.cache import artifact_dir, schedules_identity; s = schedules_identity(); "
            "print(json.dumps([str(artifact_dir(MobileNetConfig(alpha=0.25, resolution=96), "
            "get_profile('x86').to_metadata(), 'w', s)), s]))")
    moved = tmp_path / "elsewhere"
    for name in ("mntvm", "schedules", "targets"):
        shutil.copytree(ROOT / name, moved / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", moved / "pyproject.toml")
    env = {**os.environ, "MNTVM_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(moved)}
    p = subprocess.run([sys.executable, "-c", code], cwd=moved, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    there, sched_there = json.loads(p.stdout)

    monkeypatch.setenv("MNTVM_CACHE", str(tmp_path / "cache"))
    cfg, sched = MobileNetConfig(alpha=0.25, resolution=96), schedules_identity()
    meta = get_profile("x86").to_metadata()
    here = artifact_dir(cfg, meta, "w", sched)
    assert sched == sched_there and sched["dir"] == "schedules"
    assert str(here) == there
    assert artifact_dir(cfg, {**meta, "source": "/somewhere/else.toml"}, "w", sched) == here
    assert artifact_dir(cfg, {**meta, "threads": 99}, "w", sched) != here
    assert artifact_dir(cfg, meta, "w2", sched) != here
    assert artifact_dir(cfg, meta, "w", {**sched, "code_sha256": "0"}) != here


def test_plot_and_html_report_render(swept, tmp_path):
    import matplotlib.image as mpimg
    import numpy as np

    r, d = swept
    png = mpimg.imread(d / "sweep.png")
    assert png.shape[1] > 1000 and png.std() > 0.05
    html = (d / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    assert "src=\"http" not in html and "<script" not in html  # self-contained
    for needle in ("x86", r["tvm_version"], r["schedules"]["id"], r["date"], *r["boards"], "0.25", "56.3"):
        assert needle in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is part of the test setup (apt-get install chromium)"
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
                    (d / "report.html").as_uri()], capture_output=True, timeout=120, check=True)
    img = (mpimg.imread(shot)[..., :3] * 255).round().astype(int)
    assert img.shape[:2] == (1600, 1200)
    nonwhite = (img < 235).any(axis=-1).mean()
    assert nonwhite > 0.03, f"screenshot nearly blank ({nonwhite:.1%} non-white)"
    # the table: Pareto rows highlighted #fff1d6; the plot: the crimson Pareto line (220, 20, 60)
    table_px = (np.abs(img - [255, 241, 214]).sum(axis=-1) <= 6).sum()
    line_px = (np.abs(img - [220, 20, 60]).sum(axis=-1) <= 40).sum()
    assert table_px > 2000, f"no highlighted table rows in the screenshot ({table_px} px)"
    assert line_px > 50, f"no Pareto front line in the screenshot ({line_px} px)"


def test_board_killed_mid_sweep_is_retried(tmp_path, cache, swept):
    """Kill the board running the first variant; the sweep finishes on the other, reporting the retry."""
    b = Boards(tmp_path, cache, key="sweep-kill")
    try:
        out = tmp_path / "out.jsonl"
        cmd = [sys.executable, "-m", "mntvm.cli", "sweep", "--target", "x86", "--alphas", "0.25",
               "--resolutions", "96,128", "--tracker", b.tracker, "--key", b.key, "--repeat", "150",
               "--threads", "1", "--timeout", "60", "--out", str(out)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(cache),
                             start_new_session=True)
        killed = None
        log = []
        for line in p.stderr:
            log.append(line)
            if killed is None and " running on " in line:
                killed = line.rsplit(" running on ", 1)[1].strip()
                b.kill(b.servers[killed])
        stdout = p.stdout.read()
        assert p.wait(timeout=240) == 0, "".join(log)
        assert killed, "".join(log)
        survivor = (set(b.servers) - {killed}).pop()
        assert any("retrying" in ln and killed in ln for ln in log), "".join(log)
        assert "retried:" in stdout
        lines = _lines(out)
        assert sorted(f"{x['alpha']:g}/{x['resolution']}" for x in lines) == ["0.25/128", "0.25/96"]
        retried = [x for x in lines if x["retried"]]
        assert len(retried) == 1 and retried[0]["board"] == survivor
        assert retried[0]["retried"][0]["board"] == killed and retried[0]["max_abs_diff"] <= 1e-5
    finally:
        b.stop()


def test_killed_sweep_resumes_only_missing(tmp_path, cache, swept):
    """SIGKILL a local sweep after its first result line; --resume runs only what is missing."""
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "mntvm.cli", "sweep", "--target", "x86", *SMALL, "--repeat", "40",
           "--threads", "1", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(cache),
                         start_new_session=True)
    try:
        _wait(lambda: out.exists() and out.read_text().count("\n") >= 1 or p.poll() is not None, 120,
              "the first result line")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
    assert p.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    before = _lines(out)  # every line whole: written atomically
    done = {f"{x['alpha']:g}/{x['resolution']}" for x in before}
    assert 1 <= len(done) < len(VARIANTS) and len(before) == len(done)

    # without --resume an existing results file is refused, untouched
    q = _sweep(cache, "--target", "x86", *SMALL, "--out", str(out))
    assert q.returncode == 2 and "--resume" in q.stderr and _lines(out) == before

    q = _sweep(cache, "--target", "x86", *SMALL, "--repeat", "40", "--threads", "1", "--out", str(out),
               "--resume", "--json")
    assert q.returncode == 0, q.stderr
    r = json.loads(q.stdout)
    assert set(r["resumed"]) == done
    assert set(r["ran"]) == VARIANTS - done
    after = _lines(out)
    assert after[:len(before)] == before
    assert sorted(f"{x['alpha']:g}/{x['resolution']}" for x in after) == sorted(VARIANTS)
    assert len(r["variants"]) == len(VARIANTS) and all(v["pareto"] in (True, False, None) for v in r["variants"])

    # resuming a complete sweep runs nothing
    q = _sweep(cache, "--target", "x86", *SMALL, "--repeat", "40", "--threads", "1", "--out", str(out), "--resume",
               "--json")
    r = json.loads(q.stdout)
    assert r["ran"] == [] and len(r["resumed"]) == 4 and _lines(out) == after


def test_resume_with_another_repeat_is_refused(swept, cache, tmp_path):
    """The results of a --repeat 15 sweep are not passed off as --repeat 10 ones: --resume with other
    settings is refused in one line naming the setting, the file untouched; the same settings resume."""
    out = tmp_path / "out.jsonl"
    shutil.copy(swept[1] / "out.jsonl", out)
    before = out.read_bytes()
    for args, differs in ((["--repeat", "10", "--threads", "1"], "--repeat 15, this run asks for 10"),
                          (["--repeat", "15"], "--threads 1, this run asks for none (the default)"),
                          (["--repeat", "15", "--threads", "1", "--warmup", "1"], "--warmup 3, this run asks for 1")):
        q = _sweep(cache, "--target", "x86", *SMALL, *args, "--out", str(out), "--resume")
        assert q.returncode == 2 and q.stderr == (f"mntvm: error: --resume: {out} was measured with {differs}; "
                                                  "use another --output or the same settings\n"), q.stderr
        assert out.read_bytes() == before
    q = _sweep(cache, "--target", "x86", *SMALL, "--repeat", "15", "--threads", "1", "--out", str(out), "--resume",
               "--json")
    assert q.returncode == 0, q.stderr
    r = json.loads(q.stdout)
    assert r["ran"] == [] and sorted(r["resumed"]) == sorted(VARIANTS) and r["repeat"] == 15 and r["threads"] == 1
    assert out.read_bytes() == before


def test_sweep_touches_what_it_uses_and_prunes_the_cache(swept, tmp_path):
    """After a sweep the artifact cache is pruned to MNTVM_CACHE_MAX_MB, least recently used first: the
    artifact the sweep reused is touched and kept, the oldest other one goes, the board userland stays."""
    r, _ = swept
    art = Path(next(v["artifact"] for v in r["variants"] if (v["alpha"], v["resolution"]) == (0.25, 96)))
    moved = tmp_path / "cache"
    mine = moved / "artifacts" / art.name
    shutil.copytree(art, mine)  # the cache key holds no absolute path: a moved cache still serves
    size = sum(f.stat().st_size for f in mine.rglob("*") if f.is_file())
    now = time.time()
    for name, age in (("old", 2000), ("newer", 1000)):
        (moved / "artifacts" / name).mkdir()
        (moved / "artifacts" / name / "model.so").write_bytes(b"\0" * (1 << 20))
        os.utime(moved / "artifacts" / name, (now - age,) * 2)
    os.utime(mine, (now - 3000,) * 2)  # the least recently used before this sweep
    (moved / "board-aarch64").mkdir()
    (moved / "board-aarch64" / "rootfs.img").write_bytes(b"\0" * (3 << 20))
    env = {**_env(moved), "MNTVM_CACHE_MAX_MB": str((size + (1 << 20) + (1 << 19)) / (1 << 20))}
    p = subprocess.run([sys.executable, "-m", "mntvm.cli", "sweep", "--target", "x86", "--alphas", "0.25",
                        "--resolutions", "96", "--repeat", "3", "--threads", "1"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "artifact cache: removed 1 least recently used artifacts (1.0 MB)" in p.stdout, p.stdout
    assert sorted(x.name for x in (moved / "artifacts").iterdir()) == sorted([art.name, "newer"])
    assert mine.stat().st_mtime >= now - 1, "the reused artifact was touched"
    assert (moved / "board-aarch64" / "rootfs.img").stat().st_size == 3 << 20


@pytest.mark.parametrize("args, message", [
    (["--target", "x86", "--alphas", "0.25,0"], "alpha"),
    (["--target", "x86", "--alphas", "0.01"], "alpha"),
    (["--target", "x86", "--resolutions", "128,100"], "resolution"),
    (["--target", "x86", "--alphas", "a"], "--alphas"),
    (["--target", "no-such-board"], "unknown target 'no-such-board'"),
    (["--target", "x86", "--tracker", "127.0.0.1:{closed}", "--key", "k"], "cannot reach the RPC tracker"),
    (["--target", "x86", "--tracker", "{tracker}", "--key", "nobody-here"], "no board is registered under key"),
    (["--target", "x86", "--tracker", "{tracker}"], "--tracker and --key"),
    (["--target", "x86", "--resume"], "--resume needs --out"),
    (["--target", "rpi4-aarch64"], "benchmark it on its board with --tracker"),
])
def test_bad_input_one_line_before_compiling(args, message, boards, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MNTVM_CACHE", str(cache))
    out = tmp_path / "out.jsonl"
    args = [a.format(closed=_free_port(), tracker=boards.tracker) for a in args]
    if "--resume" not in args:
        args += ["--out", str(out)]
    # in this process (the CLI's own parsing and printing, without a TVM import per case)
    p = cli_run("sweep", *args, *(["--resolutions", "96"] if "--resolutions" not in args else []), check=False)
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mntvm: error:") and message in err[0], p.stderr
    assert not out.exists(), "nothing written to --out"
    assert not (cache / "artifacts").exists(), "no compile started"


def test_pareto_budget_and_top1_data():
    from mntvm.sweep.results import budget_pick, pareto_flags, top1, top1_table

    t = top1_table()
    assert "tensorflow/models" in t["source"]["url"] and "mobilenet_v1.md" in t["source"]["url"]
    assert len(t["top1"]) == 16 and top1(1.0, 224) == 70.9 and top1(0.25, 128) == 41.5 and top1(1.0, 96) is None
    # transcription check: accuracy falls with α and with resolution
    for a in (1.0, 0.75, 0.5, 0.25):
        accs = [top1(a, r) for r in (224, 192, 160, 128)]
        assert accs == sorted(accs, reverse=True)
    for r in (224, 192, 160, 128):
        accs = [top1(a, r) for a in (1.0, 0.75, 0.5, 0.25)]
        assert accs == sorted(accs, reverse=True)
    recs = [dict(alpha=a, resolution=r, median_ms=m, top1=t1, madds=1)
            for a, r, m, t1 in [(1, 224, 10, 70), (1, 192, 8, 69), (0.5, 224, 9, 60), (0.5, 96, 1, None)]]
    pareto_flags(recs)
    assert [x["pareto"] for x in recs] == [True, True, False, None]
    b = budget_pick(recs, 9.5)
    assert b["variant"] == "1.0/192" and b["margin_ms"] == pytest.approx(1.5)
    assert budget_pick(recs, 0.5)["fits"] is False
