"""Shared fixtures. Tests use small variants (alpha 0.25, low resolution); full size only where needed."""
from __future__ import annotations

import os
import subprocess
import sys
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


def ort_run(onnx_model, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Run an ONNX model (ModelProto or path) in ONNX Runtime, the independent reference."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
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
