"""`mntvm bench`: locally and through TVM's tracker (x86 server on loopback, and the emulated
aarch64 board), the JSON contract, per-layer timing and its plot, and the board faults (killed,
hung, wrong architecture), each a one-line error in bounded time."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import run_cli
from rpc_fixtures import Server, bench_json, cli_popen, free_port, stop_group, tracker_status, wait_for

from mntvm import MntvmError
from mntvm.bench import RESULT_KEYS, artifact_arch, benchmark
from mntvm.compile import compile_model
from mntvm.model import MobileNetConfig

KEY = "mntvm-test-x86-bench"


@pytest.fixture(scope="module")
def x86_art(tmp_path_factory):
    return compile_model(MobileNetConfig(alpha=0.25, resolution=64), tmp_path_factory.mktemp("x86") / "a",
                         target="x86")


@pytest.fixture(scope="module")
def a64_art(tmp_path_factory):
    return compile_model(MobileNetConfig(alpha=0.25, resolution=64), tmp_path_factory.mktemp("a64") / "a",
                         target="aarch64")


@pytest.fixture(scope="module")
def server(tracker):
    s = Server(tracker, KEY)
    yield s
    s.stop()


@pytest.fixture
def doomed_server(tracker):
    """A server of its own (own key) for the tests that kill or stop it."""
    s = Server(tracker, f"mntvm-test-doomed-{free_port()}")
    yield s
    s.stop()


def _check_result(r: dict, repeat: int) -> None:
    missing = [k for k in RESULT_KEYS if k not in r]
    assert not missing, missing
    assert r["repeat"] == repeat and len(r["runs_ms"]) == repeat  # repeat = number of timed runs
    assert r["max_abs_diff"] <= 1e-5, r["max_abs_diff"]
    assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["min_ms"] <= r["mean_ms"] <= r["max_ms"] and r["std_ms"] >= 0
    assert np.isclose(r["median_ms"], np.median(r["runs_ms"]))
    assert r["first_run_ms"] > 0 and r["load_s"] >= 0 and r["upload_s"] >= 0
    assert isinstance(r["threads"], int) and r["threads"] >= 1


def _check_png(path, min_w=600, min_h=300) -> None:
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h, (w, h)
    rgb = img[..., :3]
    assert rgb.std() > 0.05, "the plot is blank"
    assert (rgb.min(axis=2) < 0.9).mean() > 0.01  # some ink: bars and text


def test_bench_through_tracker_json(tracker, server, x86_art, tmp_path):
    png = tmp_path / "layers.png"
    p = run_cli("bench", str(x86_art), "--tracker", tracker.addr, "--key", KEY, "--repeat", "7",
                "--warmup", "2", "--threads", "1", "--json", "--per-layer", "--per-layer-runs", "3",
                "--plot", str(png), timeout=300)
    r = bench_json(p.stdout)
    _check_result(r, 7)
    assert r["threads"] == 1
    assert r["target"] == "x86"
    assert r["board"] == f"127.0.0.1:{server.port}" and r["board_arch"] == "x86_64"
    assert r["upload_s"] > 0
    pl = r["per_layer"]
    assert pl["runs"] == 3 and pl["mapped_to_layers"]
    main = [k for k in pl["kernels"] if k["main"]]
    assert [k["layer"] for k in main][:3] == ["stem", "dw1", "pw1"] and main[-1]["layer"] == "fc"
    assert len(main) == 28 and all(k["gflops"] > 0 for k in main)
    assert abs(sum(k["share"] for k in pl["kernels"]) - 1) < 1e-6
    assert [ly["layer"] for ly in pl["layers"]][-3:] == ["pool", "fc", "softmax"]
    _check_png(png)
    # the board is handed back to the tracker afterwards
    wait_for(lambda: tracker_status(tracker.addr)["keys"][KEY]["free"] == 1, 20, "board handed back")


def test_bench_local_per_layer_and_plot(x86_art, tmp_path):
    png = tmp_path / "local.png"
    p = run_cli("bench", str(x86_art), "--repeat", "5", "--warmup", "1", "--per-layer-runs", "2",
                "--plot", str(png), timeout=300)
    assert "median" in p.stdout and "max |output - numpy reference|" in p.stdout
    assert "pw13" in p.stdout and "GFLOP/s" in p.stdout and f"wrote {png}" in p.stdout
    _check_png(png)
    r = benchmark(x86_art, repeat=4, warmup=0, threads=1, progress=False)
    _check_result(r, 4)
    assert r["board"] == "local" and r["upload_s"] == 0.0


def test_bad_repeat_is_refused(x86_art):
    with pytest.raises(MntvmError, match="repeat must be >= 1"):
        benchmark(x86_art, repeat=0)


def test_foreign_arch_is_refused_locally(a64_art):
    with pytest.raises(MntvmError, match="is built for aarch64 .* cannot run on this x86_64 machine"):
        benchmark(a64_art, repeat=1)


def test_wrong_arch_is_refused_before_upload(tracker, server, a64_art):
    assert artifact_arch(__import__("json").loads((a64_art / "metadata.json").read_text())) == "aarch64"
    t0 = time.monotonic()
    p = run_cli("bench", str(a64_art), "--tracker", tracker.addr, "--key", KEY, "--json",
                check=False, timeout=120)
    assert p.returncode == 2
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "is built for aarch64" in err and "is x86_64" in err and "nothing was uploaded" in err
    assert p.stdout == ""
    assert time.monotonic() - t0 < 30
    wait_for(lambda: tracker_status(tracker.addr)["keys"][KEY]["free"] == 1, 20, "board handed back")


def _start_long_bench(tracker, key, art):
    return cli_popen("bench", str(art), "--tracker", tracker.addr, "--key", key, "--repeat", "200000",
                     "--warmup", "0", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_until_benchmarking(tracker, key, bench):
    # the board is taken (free 0), then give upload, load and the first run a moment
    wait_for(lambda: tracker_status(tracker.addr)["keys"][key]["free"] == 0, 60, "bench session", bench)
    time.sleep(3)
    assert bench.poll() is None, bench.stderr.read().decode()


def test_board_killed_during_benchmark(tracker, doomed_server, x86_art):
    bench = _start_long_bench(tracker, doomed_server.key, x86_art)
    try:
        _wait_until_benchmarking(tracker, doomed_server.key, bench)
        os.killpg(doomed_server.proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        out, err = bench.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        stop_group(bench)
    err = err.decode().strip()
    assert bench.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert f"board 127.0.0.1:{doomed_server.port} stopped answering during the benchmark" in err
    assert out == b""
    assert elapsed < 15, elapsed


def test_board_hung_during_benchmark(tracker, doomed_server, x86_art):
    bench = _start_long_bench(tracker, doomed_server.key, x86_art)
    try:
        _wait_until_benchmarking(tracker, doomed_server.key, bench)
        os.killpg(doomed_server.proc.pid, signal.SIGSTOP)  # alive, connected, silent
        t0 = time.monotonic()
        out, err = bench.communicate(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        stop_group(bench)
        os.killpg(doomed_server.proc.pid, signal.SIGCONT)
    err = err.decode().strip()
    assert bench.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert f"board 127.0.0.1:{doomed_server.port} stopped answering during the benchmark" in err
    assert "no reply to the timed runs within" in err
    # deadline = 10 s + 5x the expected time of one chunk of ms-long runs
    assert elapsed < 25, elapsed


# ----------------------------------------------------------------------------------------------
# the emulated aarch64 board (prepared userland cached; see tests/test_board.py)


def test_bench_on_emulated_aarch64_board(tracker, a64_art, tmp_path):
    from mntvm import board

    missing = [t for t in ("debootstrap", "qemu-aarch64-static", "aarch64-linux-gnu-g++")
               if not (shutil.which(t) or shutil.which(t, path="/usr/sbin:/sbin"))]
    if missing:
        pytest.fail(f"missing {missing}: apt-get install {' '.join(board.APT_PACKAGES)}")
    board.prepare("aarch64")
    key = f"mntvm-test-aarch64-{free_port()}"
    handle = board.start("127.0.0.1", tracker.port, key=key, arch="aarch64", port=free_port())
    try:
        png = tmp_path / "board.png"
        p = run_cli("bench", str(a64_art), "--tracker", tracker.addr, "--key", key, "--repeat", "5",
                    "--warmup", "1", "--json", "--per-layer-runs", "2", "--plot", str(png), timeout=600)
        r = bench_json(p.stdout)
        _check_result(r, 5)
        assert r["target"] == "aarch64" and r["board_arch"] == "aarch64"
        assert r["board"] == f"127.0.0.1:{handle.port}"
        assert r["per_layer"]["mapped_to_layers"] and len(r["per_layer"]["layers"]) >= 28
        _check_png(png)
        print(f"emulated aarch64, alpha 0.25/64: median {r['median_ms']:.1f} ms, first run "
              f"{r['first_run_ms']:.1f} ms, load {r['load_s']:.2f} s, max_abs_diff {r['max_abs_diff']:.1e}")
        # and an x86 artifact is refused by the aarch64 board before upload
        x86 = compile_model(MobileNetConfig(alpha=0.25, resolution=64), tmp_path / "x86", target="x86")
        p = run_cli("bench", str(x86), "--tracker", tracker.addr, "--key", key, check=False, timeout=120)
        assert p.returncode == 2 and "is built for x86_64" in p.stderr and "is aarch64" in p.stderr
    finally:
        board.stop(handle)
