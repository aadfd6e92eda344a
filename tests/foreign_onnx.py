"""Writes MobileNetV1 ONNX files the way other frameworks lay them out, independently of mntvm.export.

``style="torch"``: torchvision-like names, Conv without bias + BatchNormalization (eps 1e-5),
Clip(0, 6) with min/max initializers, GlobalAveragePool, Flatten, Gemm(transB=1), no Softmax.
``style="folded"``: a converter that already folded BN into the conv bias, Relu activations,
AveragePool(7x7-like kernel), Reshape, MatMul + Add, and a final Softmax.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (in, out, stride) of the 13 separable blocks at alpha=1, written out independently of mntvm.model
BLOCKS = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
          (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 1024, 2),
          (1024, 1024, 1)]


def make(alpha: float, resolution: int, classes: int, style: str, seed: int = 0):
    """Return (onnx ModelProto, dict of the arrays written, keyed by our layer names for checking)."""
    rng = np.random.default_rng(seed)
    c = lambda n: int(n * alpha)  # noqa: E731
    inits, nodes, truth = [], [], {}
    eps = 1e-5

    def t(name, arr):
        arr = np.asarray(arr, np.float32)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    convs = [("stem", 3, c(32), 3, 2, 1)]
    for i, (ci, co, s) in enumerate(BLOCKS, 1):
        convs.append((f"dw{i}", c(ci), c(ci), 3, s, c(ci)))
        convs.append((f"pw{i}", c(ci), c(co), 1, 1, 1))
    x = "input.1"
    for idx, (ours, ci, co, k, s, g) in enumerate(convs):
        w = rng.normal(0, np.sqrt(2 / (ci // g * k * k)), (co, ci // g, k, k)).astype(np.float32)
        prefix = f"features.{idx}"
        truth[f"{ours}.weight"] = w
        if style == "torch":
            gamma, beta = rng.uniform(0.5, 1.5, co), rng.normal(0, 0.1, co)
            mean, var = rng.normal(0, 0.1, co), rng.uniform(0.5, 1.5, co)
            for p, a in zip(("gamma", "beta", "mean", "var"), (gamma, beta, mean, var)):
                truth[f"{ours}.bn.{p}"] = a.astype(np.float32)
            nodes.append(helper.make_node("Conv", [x, t(f"{prefix}.0.weight", w)], [f"/{prefix}/Conv_output_0"],
                                          name=f"/{prefix}/Conv", group=g, kernel_shape=[k, k],
                                          strides=[s, s], pads=[k // 2] * 4, dilations=[1, 1]))
            nodes.append(helper.make_node(
                "BatchNormalization",
                [f"/{prefix}/Conv_output_0", t(f"{prefix}.1.weight", gamma), t(f"{prefix}.1.bias", beta),
                 t(f"{prefix}.1.running_mean", mean), t(f"{prefix}.1.running_var", var)],
                [f"/{prefix}/bn_out"], name=f"/{prefix}/BatchNormalization", epsilon=eps, momentum=0.9))
            nodes.append(helper.make_node("Clip", [f"/{prefix}/bn_out", t(f"/{prefix}/min", np.array(0.0)),
                                                   t(f"/{prefix}/max", np.array(6.0))],
                                          [f"/{prefix}/Clip_output_0"], name=f"/{prefix}/Clip"))
            x = f"/{prefix}/Clip_output_0"
        else:
            b = rng.normal(0, 0.1, co).astype(np.float32)
            truth[f"{ours}.bias"] = b
            nodes.append(helper.make_node("Conv", [x, t(f"conv{idx}_W", w), t(f"conv{idx}_B", b)], [f"c{idx}"],
                                          group=g, kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4))
            nodes.append(helper.make_node("Relu", [f"c{idx}"], [f"r{idx}"]))
            x = f"r{idx}"
    fin = c(1024)
    fw = rng.normal(0, 1 / np.sqrt(fin), (classes, fin)).astype(np.float32)
    fb = rng.normal(0, 0.1, classes).astype(np.float32)
    truth["fc.weight"], truth["fc.bias"] = fw, fb
    hw = resolution // 32
    if style == "torch":
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["/pool/out"]))
        nodes.append(helper.make_node("Flatten", ["/pool/out"], ["/flat/out"], axis=1))
        nodes.append(helper.make_node("Gemm", ["/flat/out", t("classifier.weight", fw), t("classifier.bias", fb)],
                                      ["logits"], alpha=1.0, beta=1.0, transB=1))
        out = "logits"
    else:
        nodes.append(helper.make_node("AveragePool", [x], ["pool"], kernel_shape=[hw, hw]))
        nodes.append(helper.make_node("Reshape", ["pool", t("shape", np.array([1, fin]))], ["flat"]))
        inits[-1] = numpy_helper.from_array(np.array([1, fin], np.int64), "shape")
        nodes.append(helper.make_node("MatMul", ["flat", t("fc_W", fw.T.copy())], ["mm"]))
        nodes.append(helper.make_node("Add", ["mm", t("fc_B", fb)], ["logits"]))
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, resolution, resolution])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    truth["bn_eps"] = np.array(eps, np.float32)
    return model, truth
