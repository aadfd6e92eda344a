"""Shared fixtures. Tests use small variants (alpha 0.25, low resolution); full size only where needed."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m mntvm.cli ARGS`` in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-m", "mntvm.cli", *args], capture_output=True, text=True,
                       env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"mntvm {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def cli_run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``mntvm ARGS`` in this process (``mntvm.cli.main``, stdout and stderr captured): the same
    parsing and printing as :func:`run_cli` without a new process importing TVM (~3 s) each time."""
    import contextlib
    import io

    from mntvm import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(list(args))
        except SystemExit as e:  # argparse's usage errors
            rc = e.code if isinstance(e.code, int) else 2
    p = subprocess.CompletedProcess(["mntvm", *args], rc, out.getvalue(), err.getvalue())
    if check and rc != 0:
        raise AssertionError(f"mntvm {' '.join(args)} failed ({rc}):\n{p.stdout}\n{p.stderr}")
    return p


def ort_options(threads: int = 1, exact_uint8: bool = True):
    """ONNX Runtime session options for using it as the reference. ``exact_uint8``: its exact kernels
    for uint8 activations on x86 CPUs without VNNI (``session.x64quantprecision``: by default their
    uint8 x int8 pairs saturate in int16); leave it off for int8 activations (exact anyway, and ORT
    1.32 fails to build such a model with it and ``session.qdqisint8allowed``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if exact_uint8:
        so.add_session_config_entry("session.x64quantprecision", "1")
    return so


def ort_run(onnx_model, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run an ONNX model (ModelProto or path) in ONNX Runtime, the independent reference."""
    import onnxruntime as ort

    so = ort_options(threads)
    data = onnx_model if isinstance(onnx_model, (str, Path)) else onnx_model.SerializeToString()
    sess = ort.InferenceSession(str(data) if isinstance(data, Path) else data, so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="session")
def small_cfg():
    from mntvm.model.network import MobileNetConfig

    return MobileNetConfig(alpha=0.25, resolution=96)


@pytest.fixture(scope="module")
def tracker():
    """``mntvm rpc tracker`` on a free loopback port for one test module, stopped by PID."""
    from rpc_fixtures import Tracker

    t = Tracker()
    yield t
    t.stop()


# Processes the suite starts (RPC trackers/servers, emulated boards, TVM's popen workers for
# tuning) carry this marker in their environment, inherited from the test process.
_MARK = "MNTVM_TEST_SESSION"
_KINDS = ("tvm.exec.popen_worker", "mntvm.cli rpc", "mntvm rpc", "board_server", "rpc_server", "mntvm.cli board")


def _strays(mark: str) -> list[str]:
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid != os.getpid() and any(k in cmd for k in _KINDS) and p.environ().get(_MARK) == mark:
                out.append(f"{p.pid}: {cmd[:100]}")
        except psutil.Error:
            continue
    return out


@pytest.fixture(scope="session", autouse=True)
def a_cache_of_the_suites_own(tmp_path_factory):
    """``MNTVM_CACHE`` is a folder of the suite's own (one per test worker), for this process and
    every process it starts: tests neither find what earlier runs or the user left in the cache
    (log verdicts, measured peaks, artifacts: a first compile on a fresh machine is what CI runs)
    nor leave theirs behind (each tuned test log's verdicts, in the user's cache, piled up run by
    run). The emulated board's userland (a minute to build, read-only once built) stays in the
    user's cache, linked in, so it is built once per machine."""
    from mntvm.core.paths import cache_dir
    from mntvm.remote.userland import board_dir

    user, own = cache_dir(), tmp_path_factory.mktemp("cache")
    shared = board_dir("aarch64", user)
    try:
        shared.mkdir(parents=True, exist_ok=True)  # built there, under its lock, by the first test that needs it
        board_dir("aarch64", own).symlink_to(shared, target_is_directory=True)
    except OSError:  # a user cache we cannot write: the board tests build theirs in the suite's (root only)
        pass
    saved = os.environ.get("MNTVM_CACHE")
    os.environ["MNTVM_CACHE"] = str(own)
    yield
    if saved is None:
        os.environ.pop("MNTVM_CACHE", None)
    else:
        os.environ["MNTVM_CACHE"] = saved


@pytest.fixture(scope="session", autouse=True)
def temporary_files_in_the_test_area(tmp_path_factory):
    """The suite's temporary files, and those of every process it starts, go to a folder of pytest's
    own temporary area (which pytest prunes), not to /tmp: tests that SIGKILL a tune, an RPC server
    or a board leave the folders those processes had open (their builds, uploaded libraries), which
    a normal exit removes."""
    import tempfile

    folder = str(tmp_path_factory.mktemp("tmpdir"))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    yield
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]
    tempfile.tempdir = saved[1]


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """After the whole suite, no tracker, server, board or popen worker it started is running."""
    mark = os.environ.setdefault(_MARK, uuid.uuid4().hex)
    yield
    deadline = time.time() + 15
    while (left := _strays(mark)) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, "processes started by the tests are still running: " + "; ".join(left)
