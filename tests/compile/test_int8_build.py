"""int8 builds end to end, as a user runs them: `mntvm quantize`, `mntvm compile --dtype int8` or
`--weights q.onnx`, `mntvm run`, against the numpy reference of the integer arithmetic and against
ONNX Runtime running the same QDQ file; the refusals, in one line, with nothing written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tvm

from conftest import cli_run, ort_run, run_cli
from mntvm.compile import deterministic_input, load_artifact
from mntvm.model.calibration import load_calibration
from mntvm.model.network import MobileNetConfig
from mntvm.model.qdq_import import import_qdq
from mntvm.model.quantize import quantize
from mntvm.model.quantized import forward_int8
from mntvm.model.weights import random_weights
from mntvm.templates.lowering_int8 import pointwise_kernel

CFG = MobileNetConfig(alpha=0.25, resolution=64)
SMALL = ["--alpha", "0.25", "--resolution", "64"]


def _inputs(n=3):
    return [deterministic_input(CFG.input_shape, seed=s) for s in range(n)]


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "art"
    p = cli_run("compile", *SMALL, "--dtype", "int8", "-o", str(out))
    assert "int8, uint8 activations, calibration minmax" in p.stdout
    return out


def test_int8_build_computes_the_integer_reference_and_what_ort_computes_on_its_qdq(int8_artifact):
    art = load_artifact(int8_artifact)
    meta = art.metadata
    assert meta["dtype"] == "int8" and meta["quantization"]["activations"] == "uint8"
    # the same quantization, made independently of the build: seeded calibration, minmax
    net = quantize(CFG, random_weights(CFG, 0), load_calibration(None, CFG), act_dtype="uint8")
    qdq = int8_artifact / "model.qdq.onnx"
    vm = art.load_vm()
    for x in _inputs():
        ours = art.run(x, vm)
        ref = forward_int8(net, x)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours, ort_run(qdq, x), rtol=0, atol=1e-6)
    # an int8 build is not a float32 build in disguise: it differs from the fp32 network
    from mntvm.model.reference import forward

    assert np.abs(art.run(_inputs(1)[0], vm) - forward(CFG, random_weights(CFG, 0), _inputs(1)[0])).max() > 1e-5


def test_quantize_then_compile_the_file_builds_the_same_network(int8_artifact, tmp_path):
    q = tmp_path / "q.onnx"
    p = cli_run("quantize", *SMALL, "-o", str(q))
    assert "int8 QDQ: uint8 activations" in p.stdout and q.is_file()
    out = tmp_path / "from-file"
    p = cli_run("compile", *SMALL, "--weights", str(q), "-o", str(out))  # no --dtype: follows the file
    assert "calibration imported" in p.stdout
    a, b = load_artifact(out), load_artifact(int8_artifact)
    assert a.metadata["dtype"] == "int8"
    assert a.metadata["weights_sha256"] == b.metadata["weights_sha256"]
    x = _inputs(1)[0]
    np.testing.assert_array_equal(a.run(x), b.run(x))


def test_a_model_quantized_by_onnx_runtime_builds_and_agrees_with_it(tmp_path):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    from mntvm.export.onnx import export_onnx

    fp32, pre, q = tmp_path / "fp32.onnx", tmp_path / "pre.onnx", tmp_path / "ort-q.onnx"
    export_onnx(CFG, random_weights(CFG, 3), fp32)
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"data": x} for x in load_calibration(None, CFG, count=8, seed=5)[:, None]])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    out = tmp_path / "art"
    cli_run("compile", *SMALL, "--weights", str(q), "-o", str(out))
    art = load_artifact(out)
    net = import_qdq(q, CFG)
    for x in _inputs(2):
        ours = art.run(x)
        np.testing.assert_allclose(ours, forward_int8(net, x), rtol=0, atol=1e-6)
        # ORT re-quantizes the probabilities (1/255 steps): one step
        assert np.abs(ours - ort_run(q, x)).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("args,needle", [
    (["--target", "cuda-sm80", "--dtype", "int8"], "has no int8 path"),
    (["--calibration", "CAL"], "--calibration applies to int8 builds only"),
    (["--dtype", "int8", "--calibration", "EMPTY"], "EMPTY"),
    (["--dtype", "int8", "--calibration-method", "kl"], "invalid choice"),
])
def test_int8_refusals_are_one_line_and_write_nothing(tmp_path, args, needle):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "CAL").mkdir()
    args = [str(tmp_path / a) if a in ("EMPTY", "CAL") else a for a in args]
    needle = str(tmp_path / needle) if needle == "EMPTY" else needle
    out = tmp_path / "art"
    p = cli_run("compile", *SMALL, *args, "-o", str(out), check=False)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert not out.exists()


def test_a_quantized_file_refuses_float32_and_quantize_refuses_it(tmp_path):
    q = tmp_path / "q.onnx"
    cli_run("quantize", *SMALL, "-o", str(q))
    for cmd in (["compile", *SMALL, "--weights", str(q), "--dtype", "float32", "-o", str(tmp_path / "a")],
                ["quantize", *SMALL, "--weights", str(q), "-o", str(tmp_path / "q2.onnx")]):
        p = cli_run(*cmd, check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "quantized" in p.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "q2.onnx").exists()


def test_bench_compare_runs_the_peers_on_the_artifacts_quantized_model(int8_artifact):
    p = run_cli("bench", str(int8_artifact), "--compare", "ort,tflite", "--threads", "1", "--json")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["dtype"] == "int8" and r["peers"] == ["ort", "tflite"], r["peer_errors"]
    t = r["threads"]["1"]
    assert t["max_abs_diff"] <= 1e-6 and t["ours_median_ms"] > 0 and t["ort_median_ms"] > 0
    # TFLite (XNNPACK) runs the same quantized network in its int8 scheme
    assert t["tflite_max_abs_diff"] <= 1e-4 and t["tflite_median_ms"] > 0


def test_bench_checks_an_int8_artifact_against_the_network_it_carries(int8_artifact, tmp_path):
    import shutil

    p = run_cli("bench", str(int8_artifact), "--repeat", "3", "--warmup", "1", "--json")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["max_abs_diff"] <= 1e-6
    # the carried QDQ file swapped for another quantization: refused in one line, not mis-measured
    fake = tmp_path / "art"
    shutil.copytree(int8_artifact, fake)
    cli_run("quantize", *SMALL, "--seed", "9", "-o", str(tmp_path / "other.onnx"))
    shutil.copy(tmp_path / "other.onnx", fake / "model.qdq.onnx")
    p = run_cli("bench", str(fake), "--repeat", "3", check=False)
    assert p.returncode == 2 and "does not match" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_per_layer_of_an_int8_artifact_maps_every_layer(int8_artifact):
    p = run_cli("bench", str(int8_artifact), "--per-layer", "--repeat", "3", "--warmup", "1", "--json")
    pl = json.loads(p.stdout.strip().splitlines()[-1])["per_layer"]
    assert pl["dtype"] == "int8" and pl["mapped_to_layers"]
    named = {ly["layer"] for ly in pl["layers"]}
    assert {"stem", "dw1", "pw1", "dw13", "pw13", "fc"} <= named
    assert all(ly["gflops"] > 0 for ly in pl["layers"] if ly["type"] in ("conv", "depthwise", "pointwise", "fc"))
    # the pointwise kernel the build used is recorded; an AMX build's pointwise layers are measured
    # against the AMX peak, the rest against the VNNI one
    meta = json.loads((int8_artifact / "metadata.json").read_text())
    target = tvm.target.Target(meta["target"]["tvm_target"])
    assert meta["quantization"]["pointwise"] == pointwise_kernel(target, meta["quantization"]["activations"])
    amx = meta["quantization"]["pointwise"] == "amx"
    if pl["peak_gflops"]:
        assert bool(pl["pointwise_peak_gflops"]) == amx
        for ly in pl["layers"]:
            if ly.get("pct_peak"):
                peak = pl["pointwise_peak_gflops"] if amx and ly["type"] == "pointwise" else pl["peak_gflops"]
                assert ly["pct_peak"] == pytest.approx(100 * ly["gflops"] / peak)


def test_an_amx_build_is_refused_in_one_line_where_the_cpu_has_no_amx(int8_artifact, tmp_path, monkeypatch):
    """An artifact whose pointwise layers run on AMX-INT8, loaded on a CPU without amx_int8: a one-line
    error naming the missing feature instead of a SIGILL at the first tile instruction."""
    import shutil

    from mntvm.compile import infer
    from mntvm.core import machine
    from mntvm.core.errors import MntvmError

    art = tmp_path / "art"
    shutil.copytree(int8_artifact, art)
    meta = json.loads((art / "metadata.json").read_text())
    meta["quantization"]["pointwise"] = "amx"
    (art / "metadata.json").write_text(json.dumps(meta))
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    with pytest.raises(MntvmError, match="amx_int8") as e:
        infer(art)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx512f", "avx512_vnni", "amx_int8"})
    meta["quantization"]["pointwise"] = "vnni"
    (art / "metadata.json").write_text(json.dumps(meta))
    assert infer(art).shape == tuple(meta["output"]["shape"])  # a non-AMX build runs as before
