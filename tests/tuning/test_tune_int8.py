"""`mntvm tune --dtype int8`: the int8 templates tune like the fp32 ones, and compile applies the
records to any int8 model of the same shapes (other weights, other calibration), still exact."""
from __future__ import annotations

import numpy as np

from mntvm.compile import deterministic_input, load_artifact
from mntvm.compile.build import compile_model
from mntvm.model.network import MobileNetConfig
from mntvm.model.qdq_import import import_qdq
from mntvm.model.quantized import forward_int8
from mntvm.tuning import format_tune
from mntvm.tuning.tune import tune

from conftest import cli_run

CFG = MobileNetConfig(alpha=0.25, resolution=32)


def test_int8_tuning_writes_records_that_compile_applies_to_another_model(tmp_path):
    out = tmp_path / "db"
    summary = tune(CFG, "x86", trials=2, ops="fc,pool", out=out, progress=False, chunk=2, dtype="int8")
    assert {t["rule"] for t in summary["tasks"].values()} == {"mntvm_dense8", "mntvm_pool8"}
    assert all(t["best_ms"] > 0 for t in summary["tasks"].values())
    trials = {t["rule"]: t["trials"] for t in summary["tasks"].values()}
    # the pool template has no knobs: its one point (the defaults) is measured once, not again
    pool = [n for n, t in summary["tasks"].items() if t["rule"] == "mntvm_pool8"]
    assert trials == {"mntvm_dense8": 2, "mntvm_pool8": 1} and summary["exhausted"] == pool
    said = [line for line in format_tune(summary).splitlines() if "every point of its space measured" in line]
    assert [line.split()[0] for line in said] == pool
    # a model tune never saw: other weights, other calibration inputs
    q = tmp_path / "q.onnx"
    cal = tmp_path / "cal"
    cal.mkdir()
    for i in range(3):
        np.save(cal / f"{i}.npy", deterministic_input((1,) + CFG.input_shape[1:], seed=40 + i)[0] * 0.5)
    cli_run("quantize", "--alpha", "0.25", "--resolution", "32", "--seed", "7", "--calibration", str(cal),
            "-o", str(q))
    art = load_artifact(compile_model(CFG, tmp_path / "art", weights=q, schedules=out, check_log=False))
    s = art.metadata["schedules"]
    assert sorted(s["tuned"]) == sorted(summary["tasks"]) and s["kind"] == "templates+database"
    x = deterministic_input(CFG.input_shape, seed=3)
    np.testing.assert_allclose(art.run(x), forward_int8(import_qdq(q, CFG), x), rtol=0, atol=1e-6)
