"""mntvm.export.onnx_qdq: the int8 network as a QDQ ONNX model, run by ONNX Runtime, agrees with
the numpy reference of the integer arithmetic (mntvm.model.quantized.forward_int8)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ort_options
from onnx import helper, numpy_helper

from mntvm import MntvmError
from mntvm.export import build_qdq, export_qdq, quantized_tensor
from mntvm.model.calibration import load_calibration
from mntvm.model.network import MobileNetConfig, layer_specs
from mntvm.model.quantize import METHODS, quantize
from mntvm.model.quantized import forward_int8
from mntvm.model.weights import random_weights

CFG = MobileNetConfig(alpha=0.25, resolution=32, num_classes=10)
CONVS = [s.name for s in layer_specs(CFG) if s.kind != "fc"]
_NETS: dict = {}


def _net(method: str, dtype: str, activation: str = "relu6"):
    """The quantized test network, made once per (method, dtype, activation)."""
    key = (method, dtype, activation)
    if key not in _NETS:
        cfg = MobileNetConfig(alpha=0.25, resolution=32, num_classes=10, activation=activation)
        _NETS[key] = quantize(cfg, random_weights(cfg, 0), load_calibration(None, cfg, 8, seed=1),
                              method=method, act_dtype=dtype)
    return _NETS[key]


def _session(net, opt_path, int8_kernels: bool):
    """ORT on the export, every Q node's output and the fp32 logits exposed as graph outputs."""
    model = build_qdq(net)
    for name in ["data"] + CONVS + ["pool"]:
        model.graph.output.append(helper.make_empty_tensor_value_info(quantized_tensor(name)))
    model.graph.output.append(helper.make_empty_tensor_value_info("logits"))
    so = ort_options(exact_uint8=not int8_kernels)
    so.optimized_model_filepath = str(opt_path)
    if int8_kernels:  # on x86 ORT fuses s8 activations into QLinearConv only when told to
        so.add_session_config_entry("session.qdqisint8allowed", "1")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# int8 activations: on x86 ORT fuses them into its integer kernels only with session.qdqisint8allowed;
# without it, it runs float Conv on dequantized values, which rounds near-ties differently and, one
# step compounding into the next layer, drifts several steps deep in the network: not the arithmetic.
@pytest.mark.parametrize("method,activation", [(m, "relu6") for m in METHODS] + [("minmax", "relu")])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_ort_runs_the_export_as_forward_int8(method, activation, dtype, tmp_path):
    net = _net(method, dtype, activation)
    sess = _session(net, tmp_path / "opt.onnx", int8_kernels=dtype == "int8")
    fused = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    # ORT's integer kernels ran, not float Conv on dequantized values
    assert fused["QLinearConv"] == len(CONVS) and fused["Conv"] == 0
    assert fused["QLinearGlobalAveragePool"] == 1 and fused["QGemm"] == 1
    fc = net.layer("fc")
    w_real = np.abs(fc.weight.astype(np.float64)) * fc.weight_scale[:, None]
    for seed in range(3):
        x = load_calibration(None, net.cfg, 1, seed=50 + seed)
        x = x + np.random.default_rng(seed).uniform(-0.3, 0.3, x.shape).astype(np.float32)  # saturate some
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"data": x})))
        cap = {}
        probs = forward_int8(net, x, capture=cap)
        for name in ["data"] + CONVS + ["pool"]:
            want = cap["input" if name == "data" else name]
            q = got[quantized_tensor(name)]
            assert q.dtype == np.dtype(dtype)
            steps = np.abs(q.reshape(want.shape).astype(np.int32) - want.astype(np.int32)).max()
            assert steps <= 1, f"{name}: ORT differs from forward_int8 by {steps} steps"
        # the FC is exact integer arithmetic on the pool: its logits can differ only through the pool's
        # steps, by at most s_pool * sum_k |w_ck| * |dq_k|, plus float32 rounding
        dpool = np.abs(got[quantized_tensor("pool")].reshape(cap["pool"].shape).astype(np.float64)
                       - cap["pool"].astype(np.float64))
        bound = net.pool.scale * dpool @ w_real.T + 1e-5 * (1 + np.abs(cap["fc"]))
        assert np.all(np.abs(got["logits"] - cap["fc"]) <= bound)
        # softmax: logits moved by at most d change each probability by a factor within e^(+-2d)
        d = float(np.max(bound))
        assert np.all(np.abs(got["prob"] - probs) <= probs * np.expm1(2 * d) + 1e-6)
        assert got["prob"].argmax() == probs.argmax()


def test_qdq_graph_is_readable_and_written_atomically(tmp_path):
    net = _net("minmax", "uint8")
    model = build_qdq(net)
    assert model.opset_import[0].version == 17
    g = model.graph
    assert [i.name for i in g.input] == ["data"] and [o.name for o in g.output] == ["prob"]
    nodes = {n.name: n for n in g.node}
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for layer in net.layers:  # each layer's node carries its name and its exact integers
        assert nodes[layer.name].op_type == ("Gemm" if layer.kind == "fc" else "Conv")
        assert np.array_equal(inits[f"{layer.name}.weight_q"], layer.weight)
        assert inits[f"{layer.name}.weight_q"].dtype == np.int8
        assert np.array_equal(inits[f"{layer.name}.bias_q"], layer.bias)
        assert inits[f"{layer.name}.bias_q"].dtype == np.int32
        assert np.array_equal(inits[f"{layer.name}.weight_scale"], layer.weight_scale)
        # the bias's scale is the accumulator's: s_x * s_w (what DequantizeLinear on it must give)
        assert np.allclose(inits[f"{layer.name}.bias_scale"], layer.input.scale * layer.weight_scale.astype(np.float64),
                           rtol=1e-6, atol=0)
        assert nodes[f"{layer.name}.weight_dequant"].attribute[0].i == 0  # per-channel on axis 0
        if layer.output is not None:
            assert nodes[f"{layer.name}_relu6"].op_type == "Clip"
            assert inits[f"{layer.name}_scale"] == np.float32(layer.output.scale)
            assert inits[f"{layer.name}_zero_point"] == layer.output.zero_point
    chain = [nodes[n] for n in ("pool", "pool_quant", "pool_dequant", "flatten", "flat_quant", "flat_dequant", "fc")]
    assert [n.op_type for n in chain] == ["GlobalAveragePool", "QuantizeLinear", "DequantizeLinear", "Flatten",
                                          "QuantizeLinear", "DequantizeLinear", "Gemm"]
    assert all(b.input[0] == a.output[0] for a, b in zip(chain, chain[1:]))
    assert list(nodes["fc"].input[1:]) == ["fc.weight", "fc.bias"] and nodes["softmax"].input == ["logits"]

    path = export_qdq(net, tmp_path / "q.onnx")
    assert onnx.load(str(path)).SerializeToString() == model.SerializeToString()
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(MntvmError, match="is a folder") as e:
        export_qdq(net, tmp_path / "dir.onnx")
    assert len(str(e.value).splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.onnx", "q.onnx"]  # no temp file left
