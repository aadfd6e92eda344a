"""ONNX export of our MobileNetV1 with its weights, so ONNX Runtime can run the identical network.

The graph mirrors :func:`mntvm.model.build_relax` layer for layer: Conv (+ BatchNormalization, or
the folded bias) + Clip(0, 6) / Relu, GlobalAveragePool, Flatten, Gemm, Softmax.

Public entry: :func:`export_onnx`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from mntvm.core.atomic import atomic_path
from mntvm.model.network import MobileNetConfig, layer_specs
from mntvm.model.weights import bn_eps, is_folded, validate

OPSET = 17


def build_onnx(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray]):
    """Return an ``onnx.ModelProto`` of MobileNetV1 for ``cfg`` carrying ``weights``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = validate(cfg, weights)
    folded = is_folded(weights)
    eps = bn_eps(weights)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    x = "data"
    lo, hi = const("clip_min", np.array(0.0)), const("clip_max", np.array(6.0))
    for s in layer_specs(cfg):
        if s.kind == "fc":
            nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
            nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten", axis=1))
            nodes.append(helper.make_node(
                "Gemm", ["flat", const("fc.weight", weights["fc.weight"]), const("fc.bias", weights["fc.bias"])],
                ["logits"], name="fc", transB=1))
            x = "logits"
            continue
        conv_in = [x, const(f"{s.name}.weight", weights[f"{s.name}.weight"])]
        if folded:
            conv_in.append(const(f"{s.name}.bias", weights[f"{s.name}.bias"]))
        nodes.append(helper.make_node(
            "Conv", conv_in, [f"{s.name}_out"], name=s.name, group=s.groups,
            kernel_shape=[s.kernel, s.kernel], strides=[s.stride, s.stride], pads=[s.padding] * 4))
        x = f"{s.name}_out"
        if not folded:
            bn_in = [x] + [const(f"{s.name}.bn.{p}", weights[f"{s.name}.bn.{p}"])
                           for p in ("gamma", "beta", "mean", "var")]
            nodes.append(helper.make_node("BatchNormalization", bn_in, [f"{s.name}_bn"],
                                          name=f"{s.name}_bn", epsilon=eps))
            x = f"{s.name}_bn"
        if cfg.activation == "relu6":
            nodes.append(helper.make_node("Clip", [x, lo, hi], [f"{s.name}_act"], name=f"{s.name}_relu6"))
        else:
            nodes.append(helper.make_node("Relu", [x], [f"{s.name}_act"], name=f"{s.name}_relu"))
        x = f"{s.name}_act"
    nodes.append(helper.make_node("Softmax", [x], ["prob"], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes, cfg.tag, [helper.make_tensor_value_info("data", TensorProto.FLOAT, list(cfg.input_shape))],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, list(cfg.output_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mntvm")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def export_onnx(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write the ONNX model to ``path`` atomically."""
    import onnx

    model = build_onnx(cfg, weights)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path
