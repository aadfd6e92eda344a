"""mntvm.export.tflite: our network as a TFLite flatbuffer (what `mntvm bench --compare tflite` runs)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from mntvm import MntvmError
from mntvm.export import build_tflite, export_tflite
from mntvm.model import reference
from mntvm.model import weights as W


def test_export_tflite(small_cfg, tmp_path):
    w = W.random_weights(small_cfg, 0)
    path = tmp_path / "model.tflite"
    if importlib.util.find_spec("ai_edge_litert") is None:
        # without the schema it is written with: one line that says what to install, and no file
        with pytest.raises(MntvmError, match="needs ai-edge-litert's flatbuffer schema .*: pip install ai-edge-litert") as e:
            export_tflite(small_cfg, w, path)
        assert len(str(e.value).splitlines()) == 1
        assert not path.exists()
        return
    from ai_edge_litert.interpreter import Interpreter

    data = export_tflite(small_cfg, w, path).read_bytes()
    assert data[4:8] == b"TFL3"  # the flatbuffer's file identifier
    assert build_tflite(small_cfg, W.fold_batchnorm(w)) == data  # batchnorm folded or not: the same model
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    r = small_cfg.resolution
    assert list(inp["shape"]) == [1, r, r, 3] and list(out["shape"]) == list(small_cfg.output_shape)
    x = np.random.default_rng(0).standard_normal(small_cfg.input_shape).astype(np.float32)
    it.set_tensor(inp["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    it.invoke()
    assert np.abs(it.get_tensor(out["index"]) - reference.forward(small_cfg, w, x)).max() <= 1e-4


@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_export_tflite_int8_computes_the_integer_network(act, tmp_path):
    """The int8 flatbuffer (what `bench --compare tflite` runs for an int8 artifact) is TFLite's int8
    scheme with our scales, and TFLite (XNNPACK) computes forward_int8 on it."""
    from ai_edge_litert.interpreter import Interpreter

    from mntvm.export import export_tflite_int8
    from mntvm.model.calibration import load_calibration
    from mntvm.model.network import MobileNetConfig
    from mntvm.model.quantize import quantize
    from mntvm.model.quantized import forward_int8

    cfg = MobileNetConfig(alpha=0.25, resolution=64)
    w = W.random_weights(cfg, 2)
    net = quantize(cfg, w, load_calibration(None, cfg, count=8), act_dtype=act)
    path = export_tflite_int8(net, tmp_path / "q.tflite")
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    details = {d["name"]: d for d in it.get_tensor_details()}
    shift = -128 if act == "uint8" else 0
    pw1 = details["pw1_out"]
    assert pw1["dtype"] == np.int8 and pw1["quantization"] == pytest.approx(
        (net.layers[2].output.scale, net.layers[2].output.zero_point + shift))
    assert details["dw1.weight"]["dtype"] == np.int8 and len(details["dw1.weight"]["quantization_parameters"]["scales"]) \
        == net.layers[1].weight.shape[0]
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    for seed in range(3):
        x = load_calibration(None, cfg, count=1, seed=50 + seed)
        it.set_tensor(inp["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        it.invoke()
        got = it.get_tensor(out["index"])
        want = forward_int8(net, x)
        assert np.abs(got - want).max() <= 1e-4
        assert np.abs(want - reference.forward(cfg, w, x)).max() > 1e-3  # int8, not float in disguise
