"""The trained digits model (tests/data/digits, scripts/train_digits.py) built as users build it:
fp32, int8 quantized here from a calibration folder, and int8 imported from ONNX Runtime's own
quantization of the same file. Held-out top-1 of each compiled artifact: int8 within one point
of fp32 (issue 16)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import cli_run, ort_run
from mntvm.compile import load_artifact

DATA = Path(__file__).resolve().parents[1] / "data" / "digits"
MODEL = DATA / "mobilenet_v1_0.25_32_digits.onnx"
ARGS = ["--alpha", "0.25", "--resolution", "32", "--num-classes", "10"]


@pytest.fixture(scope="module")
def split():
    with np.load(DATA / "digits_split.npz") as z:
        return z["x_test"].astype(np.float32), z["y_test"], z["x_calib"].astype(np.float32)


def _predict(art_dir, x):
    art = load_artifact(art_dir)
    vm = art.load_vm()
    return np.array([art.run(x[i:i + 1], vm).argmax() for i in range(len(x))])


def test_compiled_int8_top1_within_a_point_of_fp32(split, tmp_path):
    x_test, y_test, x_calib = split
    cal = tmp_path / "calibration"
    cal.mkdir()
    for i, img in enumerate(x_calib):
        np.save(cal / f"{i:03d}.npy", img)
    cli_run("compile", *ARGS, "--weights", str(MODEL), "-o", str(tmp_path / "fp32"))
    p = cli_run("compile", *ARGS, "--weights", str(MODEL), "--dtype", "int8", "--calibration", str(cal),
                "--calibration-count", "0", "-o", str(tmp_path / "int8"))
    assert "calibration minmax on calibration/ x 64" in p.stdout
    fp32 = _predict(tmp_path / "fp32", x_test)
    int8 = _predict(tmp_path / "int8", x_test)
    top1_fp32, top1_int8 = (fp32 == y_test).mean(), (int8 == y_test).mean()
    assert top1_fp32 >= 0.96
    assert top1_int8 >= top1_fp32 - 0.01, (top1_fp32, top1_int8)
    assert (int8 == fp32).mean() >= 0.98


def test_onnx_runtime_quantized_digits_import_and_build(split, tmp_path):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    x_test, y_test, x_calib = split
    pre, q = tmp_path / "pre.onnx", tmp_path / "ort-q.onnx"
    quant_pre_process(str(MODEL), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"data": x_calib[i:i + 1]} for i in range(len(x_calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    cli_run("compile", *ARGS, "--weights", str(q), "-o", str(tmp_path / "art"))
    ours = _predict(tmp_path / "art", x_test)
    theirs = np.array([ort_run(q, x_test[i:i + 1]).argmax() for i in range(len(x_test))])
    fp32 = np.array([ort_run(MODEL, x_test[i:i + 1]).argmax() for i in range(len(x_test))])
    assert (ours == theirs).mean() >= 0.99  # ORT re-quantizes its probabilities: ties may break apart
    assert (ours == y_test).mean() >= (fp32 == y_test).mean() - 0.01
