"""Importing a MobileNetV1 quantized by ONNX Runtime (QDQ form): the imported QuantizedNet's numpy
reference computes what ONNX Runtime computes for the same file, layer by layer, within one step."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ort_options
from onnx import helper, numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from mntvm.core.errors import MntvmError
from mntvm.export.onnx import export_onnx
from mntvm.export.onnx_qdq import export_qdq
from mntvm.model.network import MobileNetConfig
from mntvm.model.qdq_import import import_qdq, is_quantized_onnx
from mntvm.model.quantize import quantize
from mntvm.model.quantized import QTensor, forward_int8
from mntvm.model.weights import random_weights

logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs advice at WARNING

SMALL = MobileNetConfig(alpha=0.25, resolution=64, num_classes=10)  # a 2x2 map to pool
RELU = MobileNetConfig(alpha=0.25, resolution=64, num_classes=10, activation="relu")
WIDE = MobileNetConfig(alpha=1.0, resolution=32, num_classes=10)


class _Reader(CalibrationDataReader):
    def __init__(self, cfg, n=4, seed=1):
        rng = np.random.default_rng(seed)
        self.feed = iter([{"data": rng.standard_normal(cfg.input_shape).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.feed, None)


def _fp32(tmp: Path, cfg, pre=True) -> Path:
    """Our fp32 export (batchnorm unfolded), through ORT's pre-processing (which folds it) if ``pre``."""
    raw = tmp / f"fp32_{cfg.tag}.onnx"
    if not raw.exists():
        export_onnx(cfg, random_weights(cfg, 3), raw)
    if not pre:
        return raw
    out = tmp / f"pre_{cfg.tag}.onnx"
    if not out.exists():
        quant_pre_process(str(raw), str(out))
    return out


def _edit_fc(src: Path, dst: Path, kind: str) -> Path:
    """The fp32 model with its Gemm(transB=1) rewritten as Gemm(transB=0), MatMul + Add, or no Softmax."""
    m = onnx.load(str(src))
    g = m.graph
    init = {t.name: t for t in g.initializer}
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    w = numpy_helper.to_array(init[gemm.input[1]])
    at = list(g.node).index(gemm)
    if kind in ("transB0", "matmul"):
        g.initializer.remove(init[gemm.input[1]])
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), gemm.input[1]))
    if kind == "transB0":
        next(a for a in gemm.attribute if a.name == "transB").i = 0
    elif kind == "matmul":
        g.node.remove(gemm)
        g.node.insert(at, helper.make_node("Add", ["mm", gemm.input[2]], gemm.output, name="fc_add"))
        g.node.insert(at, helper.make_node("MatMul", gemm.input[:2], ["mm"], name="fc_matmul"))
    elif kind == "nosoftmax":
        sm = next(n for n in g.node if n.op_type == "Softmax")
        g.node.remove(sm)
        g.output[0].name = sm.input[0]
    elif kind == "avgpool":
        gap = next(n for n in g.node if n.op_type == "GlobalAveragePool")
        gap.op_type = "AveragePool"
        hw = g.input[0].type.tensor_type.shape.dim[2].dim_value // 32  # the last feature map
        gap.attribute.append(helper.make_attribute("kernel_shape", [hw, hw]))
    elif kind == "reducemean":
        gap = next(n for n in g.node if n.op_type == "GlobalAveragePool")
        g.node.remove(gap)
        g.node.insert(list(g.node).index(next(n for n in g.node if n.input and n.input[0] == gap.output[0])),
                      helper.make_node("ReduceMean", gap.input, gap.output, name="mean", axes=[2, 3]))
    onnx.save(m, str(dst))
    return dst


def _quantized(tmp: Path, cfg, name: str, edit=None, pre=True, **kw) -> Path:
    src = _fp32(tmp, cfg, pre)
    if edit:
        src = _edit_fc(src, tmp / f"edit_{name}.onnx", edit)
    args = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8)
    out = tmp / f"q_{name}.onnx"
    quantize_static(str(src), str(out), _Reader(cfg), **{**args, **kw})
    return out


def _ort(model, x: np.ndarray, extra: list[str]) -> dict[str, np.ndarray]:
    """ONNX Runtime on a copy of ``model`` with a free batch size and ``extra`` tensors as outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    for name in extra:
        m.graph.output.append(helper.make_empty_tensor_value_info(name))
    so = ort_options()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))


def _quantized_tensors(model) -> dict[str, str]:
    """Our capture key -> the file's tensor holding it quantized, read off the graph: the Q output
    that the DQ in front of each Conv/pool/Gemm/Softmax (or the graph output) dequantizes."""
    prod = {o: n for n in model.graph.node for o in n.output}

    def q_before(tensor):
        dq = prod.get(tensor)
        return dq.input[0] if dq is not None and dq.op_type == "DequantizeLinear" else None

    ops = [n for n in model.graph.node
           if n.op_type in ("Conv", "GlobalAveragePool", "AveragePool", "ReduceMean", "Gemm", "MatMul")]
    keys = ["input", "stem"] + [f"{k}{i}" for i in range(1, 14) for k in ("dw", "pw")] + ["pool"]
    out = {k: q_before(n.input[0]) for k, n in zip(keys, ops, strict=True)}
    sm = [n for n in model.graph.node if n.op_type == "Softmax"]
    out["fc"] = q_before(sm[0].input[0] if sm else model.graph.output[0].name)
    return {k: v for k, v in out.items() if v}


def _assert_matches_ort(path: Path, cfg, x: np.ndarray):
    """Every quantized tensor within one integer step of ORT's, the logits and probabilities within
    the bounds one step implies; returns the imported net and the max differences measured."""
    net = import_qdq(path, cfg)
    model = onnx.load(str(path))
    tensors = _quantized_tensors(model)
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    logits = softmax[0].input[0] if softmax else model.graph.output[0].name
    got = _ort(model, x, list(tensors.values()) + [logits])
    cap: dict = {}
    probs = forward_int8(net, x, capture=cap)
    fc = net.layers[-1]
    worst: dict[str, float] = {}
    for key, t in tensors.items():
        ours = fc.output.quantize(cap["fc"]) if key == "fc" else cap[key]
        worst[key] = int(np.abs(ours.astype(np.int32) - got[t].astype(np.int32)).max())
        assert worst[key] <= 1, f"{key}: ours vs ORT differ by {worst[key]} steps"
    if fc.output is None:
        # fp32 logits: d pool steps move logit c by d * s_pool * sum|w_c|; the bias is rounded to s_x*s_w.
        w_real = np.abs(fc.weight.astype(np.float64) * fc.weight_scale[:, None]).sum(axis=1)
        tol = worst["pool"] * fc.input.scale * w_real + 0.5 * fc.input.scale * fc.weight_scale + 1e-5
        worst["logits"] = float(np.abs(cap["fc"] - got[logits]).max())
        assert np.all(np.abs(cap["fc"] - got[logits]) <= tol)
        d_logit = float(tol.max())
    else:
        d_logit = worst["fc"] * fc.output.scale
    if softmax:
        # Softmax moves p by at most p * (exp(2 d) - 1) for logits off by d. Where the file re-quantizes
        # p, ORT's table-driven quantized softmax rounds to within one step of the exact one (the
        # exact one is ours): compare in steps of that Q.
        final, bound = got[model.graph.output[0].name], np.expm1(2 * d_logit)
        last = model.graph.node[-1]
        if last.op_type == "DequantizeLinear":
            init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
            p_q = QTensor(float(init[last.input[1]]), int(init[last.input[2]]), init[last.input[2]].dtype.name)
            ort_q = np.rint(final / p_q.scale).astype(np.int32) + p_q.zero_point
            worst["prob"] = int(np.abs(p_q.quantize(probs).astype(np.int32) - ort_q).max())
            assert worst["prob"] <= 1 + np.ceil(bound / p_q.scale), worst
        else:
            worst["prob"] = float(np.abs(probs - final).max())
            assert worst["prob"] <= bound + 1e-6, worst
    return net, worst


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("qdq")


CASES = {
    "u8_minmax": (SMALL, {}),
    "s8_minmax": (SMALL, dict(activation_type=QuantType.QInt8)),
    "entropy": (SMALL, dict(calibrate_method=CalibrationMethod.Entropy)),
    "percentile": (SMALL, dict(calibrate_method=CalibrationMethod.Percentile)),
    "relu": (RELU, {}),
    "per_tensor": (SMALL, dict(per_channel=False)),
    "float_bias": (SMALL, dict(extra_options={"QuantizeBias": False})),
    "kept_clip": (SMALL, dict(extra_options={"QDQKeepRemovableActivations": True})),
    "kept_relu_s8": (RELU, dict(activation_type=QuantType.QInt8,
                                extra_options={"QDQKeepRemovableActivations": True})),
    "qdq_weights": (SMALL, dict(extra_options={"AddQDQPairToWeight": True})),
    "symmetric_s8": (SMALL, dict(activation_type=QuantType.QInt8, extra_options={"ActivationSymmetric": True})),
    "gemm_transB0": (SMALL, dict(edit="transB0")),
    "gemm_fp32_out": (SMALL, dict(nodes_to_exclude=["softmax"],
                                  extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]})),
    "matmul_add_fp32": (SMALL, dict(edit="matmul", nodes_to_exclude=["fc_add", "softmax"],
                                    extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]})),
    "no_softmax": (SMALL, dict(edit="nosoftmax")),
    "reducemean": (SMALL, dict(edit="reducemean")),
    "averagepool": (SMALL, dict(edit="avgpool")),
    "wide_1.0": (WIDE, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ort_quantized_model_matches_ort(tmp, case):
    cfg, kw = CASES[case]
    x = np.random.default_rng(7).standard_normal((3,) + cfg.input_shape[1:]).astype(np.float32)
    path = _quantized(tmp, cfg, case, **kw)
    assert is_quantized_onnx(path)
    net, worst = _assert_matches_ort(path, cfg, x)
    assert len(worst) >= 30  # input, 27 convs, pool; fc's logits; (probabilities)
    assert net.calibration == "imported"
    assert net.act_dtype == ("int8" if kw.get("activation_type") == QuantType.QInt8 else "uint8")


def test_kept_activations_become_the_clamp(tmp):
    """ORT removes Clip(0, 6) into the Q range by default; kept, it becomes QLayer.act, and the rest of
    the network is the same one."""
    removed = import_qdq(_quantized(tmp, SMALL, "removed"), SMALL)
    kept = import_qdq(_quantized(tmp, SMALL, "kept", extra_options={"QDQKeepRemovableActivations": True}), SMALL)
    for a, b in zip(removed.layers, kept.layers):
        assert a.act is None and b.act == ((0.0, 6.0) if b.kind != "fc" else None)
        assert (a.input, a.output) == (b.input, b.output)
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.bias, b.bias)
        np.testing.assert_array_equal(a.weight_scale, b.weight_scale)


def test_clip_bounds_as_attributes_and_relu(tmp):
    """Clip with min/max attributes (opset < 11) and Relu both set the clamp."""
    m = onnx.load(str(_quantized(tmp, SMALL, "kept", extra_options={"QDQKeepRemovableActivations": True})))
    clips = [n for n in m.graph.node if n.op_type == "Clip"]
    clips[0].input[:] = clips[0].input[:1]
    clips[0].attribute.extend([helper.make_attribute("min", 0.0), helper.make_attribute("max", 4.0)])
    clips[1].op_type = "Relu"
    clips[1].input[:] = clips[1].input[:1]
    path = tmp / "clip_attrs.onnx"
    onnx.save(m, str(path))
    net = import_qdq(path, SMALL)
    assert net.layers[0].act == (0.0, 4.0) and net.layers[1].act == (0.0, float("inf"))
    assert net.layers[2].act == (0.0, 6.0)


def test_matmul_with_quantized_add(tmp):
    """ORT quantizes a standalone Add: MatMul -> Q -> DQ -> Add(DQ(uint8 bias)) -> Q. One requantization
    cannot round twice, so the logits may differ from ORT's by the intermediate Q's half step
    (s1 / (2 s2) of the final step) on top of the usual one step; inputs are the calibration
    inputs so that the intermediate Q does not saturate."""
    path = _quantized(tmp, SMALL, "matmul_add", edit="matmul")
    net = import_qdq(path, SMALL)
    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q1 = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "mm")
    bound = int(np.floor(float(init[q1.input[1]]) / (2 * net.layers[-1].output.scale) + 1.0)) + 1
    calib = np.concatenate([d["data"] for d in iter(_Reader(SMALL).get_next, None)])
    tensors = _quantized_tensors(model)
    got = _ort(model, calib, [tensors["fc"]])[tensors["fc"]]
    cap: dict = {}
    forward_int8(net, calib, capture=cap)
    ours = net.layers[-1].output.quantize(cap["fc"])
    diff = np.abs(ours.astype(int) - got.astype(int)).max()
    assert diff <= bound


def test_bias_at_another_scale_is_requantized(tmp):
    """A conv bias stored at a scale other than s_x * s_w is requantized to it."""
    path = _quantized(tmp, SMALL, "removed")
    m = onnx.load(str(path))
    init = {t.name: t for t in m.graph.initializer}
    conv = next(n for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 2)
    dq = next(n for n in m.graph.node if n.output[0] == conv.input[2])
    b, s = numpy_helper.to_array(init[dq.input[0]]), numpy_helper.to_array(init[dq.input[1]])
    b2 = np.rint(b / 3.0).astype(np.int32)
    for name, arr in ((dq.input[0], b2), (dq.input[1], (s * 3).astype(np.float32))):
        init[name].CopyFrom(numpy_helper.from_array(arr, name))
    edited = tmp / "bias_scale.onnx"
    onnx.save(m, str(edited))
    orig, net = import_qdq(path, SMALL).layers[0], import_qdq(edited, SMALL).layers[0]
    s_xw = np.float32(orig.input.scale) * orig.weight_scale
    want = np.rint(b2.astype(np.float64) * (s * 3).astype(np.float32) / s_xw)
    np.testing.assert_array_equal(net.bias, want.astype(np.int32))
    assert np.abs(net.bias - orig.bias).max() <= 1  # b rounded to a 3x coarser grid and back


# ---- refusals: one line naming the problem -------------------------------------------------

def _refused(path, cfg, *words) -> str:
    with pytest.raises(MntvmError) as e:
        import_qdq(path, cfg)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


def test_fp32_model_is_refused(tmp):
    fp32 = _fp32(tmp, SMALL, pre=False)
    assert not is_quantized_onnx(fp32)
    _refused(fp32, SMALL, "not quantized", "--weights", "mntvm quantize")


def test_qoperator_model_is_refused(tmp):
    path = _quantized(tmp, SMALL, "qop", quant_format=QuantFormat.QOperator)
    assert is_quantized_onnx(path)
    _refused(path, SMALL, "QOperator format is not supported", "QLinearConv", "export QDQ")


def test_shape_mismatch_names_the_layer(tmp):
    path = _quantized(tmp, SMALL, "removed")
    _refused(path, MobileNetConfig(alpha=0.5, resolution=64, num_classes=10), "layer stem", "weight shape",
             "(8, 3, 3, 3)", "(16, 3, 3, 3)")
    _refused(path, MobileNetConfig(alpha=0.25, resolution=64, num_classes=7), "layer fc", "(10, 256)", "(7, 256)")
    _refused(path, MobileNetConfig(alpha=0.25, resolution=96, num_classes=10), "input", "3, 96, 96")


def test_garbage_and_missing_files_are_refused(tmp):
    junk = tmp / "junk.onnx"
    junk.write_bytes(b"\x00\x01this is not a protobuf" * 50)
    with pytest.raises(MntvmError, match="junk.onnx"):
        is_quantized_onnx(junk)
    _refused(junk, SMALL, "junk.onnx")
    _refused(tmp / "absent.onnx", SMALL, "not found", "absent.onnx")


def test_unfolded_batchnorm_is_refused(tmp):
    path = _quantized(tmp, SMALL, "bn", pre=False)
    _refused(path, SMALL, "BatchNormalization", "quant_pre_process")


def test_uint8_weights_are_refused(tmp):
    path = _quantized(tmp, SMALL, "u8w", weight_type=QuantType.QUInt8)
    _refused(path, SMALL, "layer stem", "uint8", "only int8 weights")


def test_nonzero_weight_zero_point_is_refused(tmp):
    m = onnx.load(str(_quantized(tmp, SMALL, "removed")))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    dq = next(n for n in m.graph.node if n.output[0] == conv.input[1])
    zp = next(t for t in m.graph.initializer if t.name == dq.input[2])
    zp.CopyFrom(numpy_helper.from_array(np.ones(numpy_helper.to_array(zp).shape, np.int8), zp.name))
    path = tmp / "zp.onnx"
    onnx.save(m, str(path))
    _refused(path, SMALL, "layer stem", "nonzero zero points")


def test_unmappable_node_is_named(tmp):
    m = onnx.load(str(_quantized(tmp, SMALL, "removed")))
    gap = next(n for n in m.graph.node if n.op_type == "GlobalAveragePool")
    gap.op_type, gap.name = "GlobalMaxPool", "the_max_pool"
    path = tmp / "maxpool.onnx"
    onnx.save(m, str(path))
    _refused(path, SMALL, "'the_max_pool'", "GlobalMaxPool", "after layer pw13")


# ---- round trip through our own QDQ export ----------------------------------------------------

@pytest.mark.parametrize("activation,act_dtype", [("relu6", "uint8"), ("relu", "int8")])
def test_our_qdq_export_imports_as_the_same_net(tmp, activation, act_dtype):
    cfg = MobileNetConfig(alpha=0.25, resolution=32, num_classes=10, activation=activation)
    calib = np.random.default_rng(2).standard_normal((4,) + cfg.input_shape[1:]).astype(np.float32)
    net = quantize(cfg, random_weights(cfg, 5), calib, act_dtype=act_dtype)
    back = import_qdq(export_qdq(net, tmp / f"ours_{activation}.onnx"), cfg)
    assert (back.cfg, back.input, back.calibration) == (cfg, net.input, "imported")
    for a, b in zip(net.layers, back.layers, strict=True):
        assert (a.name, a.kind, a.stride, a.padding, a.input, a.output, a.act) == \
               (b.name, b.kind, b.stride, b.padding, b.input, b.output, b.act)
        for f in ("weight", "weight_scale", "bias"):
            assert getattr(a, f).dtype == getattr(b, f).dtype
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f"{a.name}.{f}")
