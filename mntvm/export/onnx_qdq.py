"""ONNX export of a :class:`QuantizedNet` as a standard QDQ model, so ONNX Runtime (and any importer
of QDQ files) runs our int8 network.

QDQ is the form ONNX Runtime's own ``quantize_static`` writes: the graph stays float Conv/Gemm, with
QuantizeLinear/DequantizeLinear pairs on every activation and DequantizeLinear on the int8 weights
and int32 biases; a runtime fuses ``DQ -> Conv -> Q`` into its integer kernel (QLinearConv)::

    data -> Q -> DQ -> Conv(DQ(w int8, per-channel, axis 0), DQ(b int32, s_x * s_w)) -> Clip(0, 6)|Relu
         -> Q -> DQ -> ... -> GlobalAveragePool -> Q -> DQ -> Flatten -> Q -> DQ
         -> Gemm(DQ(w), DQ(b), transB=1) -> logits (fp32) -> Softmax -> prob

Names follow our layers so people and importers can read the file: layer ``L``'s Conv node is ``L``,
its activation ``L_relu6``/``L_relu``, its quantized output ``L_q`` (scale ``L_scale``, zero point
``L_zero_point``), dequantized ``L_dq``; weights ``L.weight_q``/``L.weight_scale``/
``L.weight_zero_point`` -> ``L.weight``, biases likewise ``L.bias_*`` -> ``L.bias``. The image's
quantization is ``data_q``, the pool's ``pool_q`` (and ``flat_q`` after Flatten, same parameters, as
ONNX Runtime writes it), the fp32 logits ``logits``, the output ``prob``.

Public entry: :func:`export_qdq`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mntvm.core.atomic import atomic_path
from mntvm.model.network import layer_specs
from mntvm.model.quantized import QLayer, QTensor, QuantizedNet

OPSET = 17


def quantized_tensor(name: str) -> str:
    """The graph tensor holding a layer's quantized output (``name``: a layer, ``data`` or ``pool``)."""
    return f"{name}_q"


def build_qdq(net: QuantizedNet):
    """Return an ``onnx.ModelProto``: ``net`` as a QDQ graph, input ``data`` fp32 (N, 3, R, R),
    output ``prob`` fp32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg = net.cfg
    inits, nodes = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def qdq(x: str, name: str, q: QTensor, params: str | None = None) -> str:
        """Quantize ``x`` at ``q`` into ``name_q`` and dequantize it into ``name_dq``; ``params``
        reuses another tensor's scale/zero-point initializers."""
        params = params or name
        if params == name:
            const(f"{name}_scale", np.float32(q.scale))
            const(f"{name}_zero_point", np.array(q.zero_point, q.dtype))
        args = [f"{params}_scale", f"{params}_zero_point"]
        nodes.append(helper.make_node("QuantizeLinear", [x] + args, [f"{name}_q"], name=f"{name}_quant"))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q"] + args, [f"{name}_dq"],
                                      name=f"{name}_dequant"))
        return f"{name}_dq"

    def dq_const(name: str, values: np.ndarray, scale: np.ndarray) -> str:
        """An int8 weight or int32 bias initializer, dequantized per output channel (zero point 0)."""
        const(f"{name}_q", values)
        const(f"{name}_scale", scale.astype(np.float32))
        const(f"{name}_zero_point", np.zeros(scale.shape, values.dtype))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero_point"],
                                      [name], name=f"{name}_dequant", axis=0))
        return name

    def params(layer: QLayer) -> list[str]:
        bias_scale = np.float32(layer.input.scale) * layer.weight_scale.astype(np.float32)
        return [dq_const(f"{layer.name}.weight", layer.weight, layer.weight_scale),
                dq_const(f"{layer.name}.bias", layer.bias, bias_scale)]

    x = qdq("data", "data", net.input)
    if cfg.activation == "relu6":
        lo, hi = const("clip_min", np.float32(0.0)), const("clip_max", np.float32(6.0))
    for s, layer in zip(layer_specs(cfg), net.layers):
        if s.kind == "fc":
            nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
            x = qdq("pool", "pool", net.pool)
            nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
            x = qdq("flat", "flat", net.pool, params="pool")
            nodes.append(helper.make_node("Gemm", [x] + params(layer), ["logits"], name="fc", transB=1))
            x = "logits"
            if layer.output is not None:
                x = qdq(x, "fc", layer.output)
            break
        nodes.append(helper.make_node(
            "Conv", [x] + params(layer), [f"{s.name}_out"], name=s.name, group=s.groups,
            kernel_shape=[s.kernel, s.kernel], strides=[s.stride, s.stride], pads=[s.padding] * 4))
        if cfg.activation == "relu6":
            nodes.append(helper.make_node("Clip", [f"{s.name}_out", lo, hi], [f"{s.name}_act"],
                                          name=f"{s.name}_relu6"))
        else:
            nodes.append(helper.make_node("Relu", [f"{s.name}_out"], [f"{s.name}_act"], name=f"{s.name}_relu"))
        x = qdq(f"{s.name}_act", s.name, layer.output)
    nodes.append(helper.make_node("Softmax", [x], ["prob"], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes, f"{cfg.tag}_int8",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, list(cfg.input_shape))],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, list(cfg.output_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mntvm")
    model.ir_version = 8
    model.doc_string = f"int8 QDQ, {net.act_dtype} activations, calibration: {net.calibration}"
    onnx.checker.check_model(model)
    return model


def export_qdq(net: QuantizedNet, path: str | os.PathLike) -> Path:
    """Write ``net`` as a QDQ ONNX model to ``path`` atomically."""
    import onnx

    model = build_qdq(net)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path
