"""TFLite export of our MobileNetV1 with its weights, so TFLite (+XNNPACK) can run the identical network.

The flatbuffer is written with ai_edge_litert's generated schema (``schema_py_generated``, object
API) and ``flatbuffers``: batchnorm folded into the convs, NHWC, CONV_2D / DEPTHWISE_CONV_2D with
the activation fused, MEAN, FULLY_CONNECTED, SOFTMAX. Stride-2 convs get an explicit PAD
(TFLite's SAME pads 0/1 there; ours, PyTorch-style, pads 1/1).

Int8 (:func:`build_tflite_int8`): a :class:`mntvm.model.quantized.QuantizedNet` in TFLite's int8
scheme, QUANTIZE in, DEQUANTIZE + SOFTMAX out.

Public entries: :func:`build_tflite`, :func:`export_tflite`, :func:`build_tflite_int8`,
:func:`export_tflite_int8`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from mntvm.core.atomic import write_bytes
from mntvm.core.errors import MntvmError, one_line
from mntvm.model.network import MobileNetConfig, layer_specs
from mntvm.model.weights import fold_batchnorm, validate


def _schema():
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as fb
    except ImportError as e:
        raise MntvmError(f"writing TFLite needs ai-edge-litert's flatbuffer schema ({one_line(e)}): "
                         "pip install ai-edge-litert") from None
    return flatbuffers, fb


class _Model:
    """One TFLite subgraph being written: tensors (with their buffers and quantization), operators."""

    def __init__(self):
        self.flatbuffers, self.fb = _schema()
        self.tensors, self.buffers, self.ops, self.codes, self.code_index = [], [self.fb.BufferT()], [], [], {}

    def tensor(self, name, shape, data=None, dtype=None, quant=None) -> int:
        """A tensor (constant when ``data`` is given); ``quant`` = (scales, zero_points, axis)."""
        fb = self.fb
        t = fb.TensorT()
        t.name, t.shape, t.buffer = name, [int(d) for d in shape], 0
        t.type = fb.TensorType.FLOAT32 if dtype is None else dtype
        if data is not None:
            b = fb.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        if quant is not None:
            q = fb.QuantizationParametersT()
            scales, zps, axis = quant
            q.scale = [float(v) for v in np.atleast_1d(scales)]
            q.zeroPoint = [int(v) for v in np.atleast_1d(zps)]
            q.quantizedDimension = axis
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code, ins, outs, opt_type=0, opts=None) -> None:
        fb = self.fb
        if code not in self.code_index:
            c = fb.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
            self.code_index[code] = len(self.codes)
            self.codes.append(c)
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.code_index[code], ins, outs
        o.builtinOptionsType, o.builtinOptions = opt_type, opts
        self.ops.append(o)

    def conv(self, s, x, weight, bias, act, out_quant=None) -> int:
        """Stem / depthwise / pointwise conv ``s`` on NHWC ``x``; ``weight`` OIHW (the quantized
        tensors' (data, dtype, quant) tuples for int8). Stride-2 convs get an explicit PAD (TFLite's
        SAME pads 0/1 there; ours pads 1/1); an int8 PAD fills with the zero point."""
        fb = self.fb
        pad, padding = s.padding, (fb.Padding.SAME if s.padding else fb.Padding.VALID)
        if pad and (s.stride != 1 or s.kernel != 2 * pad + 1):
            hw = s.in_hw + 2 * pad
            xt = self.tensors[x]
            padded = self.tensor(f"{s.name}_pad", (1, hw, hw, s.in_channels), dtype=xt.type,
                                 quant=None if xt.quantization is None else
                                 (xt.quantization.scale, xt.quantization.zeroPoint, 0))
            pads = np.array([[0, 0], [pad, pad], [pad, pad], [0, 0]], np.int32)
            self.op(fb.BuiltinOperator.PAD, [x, self.tensor(f"{s.name}_pads", (4, 2), pads, fb.TensorType.INT32)],
                    [padded], fb.BuiltinOptions.PadOptions, fb.PadOptionsT())
            x, padding = padded, fb.Padding.VALID
        w_data, w_dtype, w_quant = weight
        if s.kind == "depthwise":
            o = fb.DepthwiseConv2DOptionsT()
            o.depthMultiplier = 1
            code, opt_type, w_data = fb.BuiltinOperator.DEPTHWISE_CONV_2D, fb.BuiltinOptions.DepthwiseConv2DOptions, \
                w_data.transpose(1, 2, 3, 0)
            if w_quant is not None:
                w_quant = (*w_quant[:2], 3)  # (1, H, W, C): per channel along the last axis
        else:
            o = fb.Conv2DOptionsT()
            code, opt_type, w_data = fb.BuiltinOperator.CONV_2D, fb.BuiltinOptions.Conv2DOptions, w_data.transpose(0, 2, 3, 1)
        o.padding, o.strideW, o.strideH, o.fusedActivationFunction = padding, s.stride, s.stride, act
        o.dilationWFactor = o.dilationHFactor = 1
        y = self.tensor(f"{s.name}_out", (1, s.out_hw, s.out_hw, s.out_channels),
                        dtype=None if out_quant is None else fb.TensorType.INT8, quant=out_quant)
        b_data, b_dtype, b_quant = bias
        self.op(code, [x, self.tensor(f"{s.name}.weight", w_data.shape, w_data, w_dtype, w_quant),
                       self.tensor(f"{s.name}.bias", (s.out_channels,), b_data, b_dtype, b_quant)], [y], opt_type, o)
        return y

    def finish(self, inputs, outputs, description: str) -> bytes:
        fb = self.fb
        sub = fb.SubGraphT()
        sub.tensors, sub.inputs, sub.outputs, sub.operators, sub.name = self.tensors, inputs, outputs, self.ops, "main"
        model = fb.ModelT()
        model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, self.codes, [sub], self.buffers
        model.description = description
        b = self.flatbuffers.Builder(1024)
        b.Finish(model.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _activation(fb, cfg: MobileNetConfig):
    return fb.ActivationFunctionType.RELU6 if cfg.activation == "relu6" else fb.ActivationFunctionType.RELU


def build_tflite(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray]) -> bytes:
    """The TFLite flatbuffer (``TFL3``) of MobileNetV1 for ``cfg`` carrying ``weights`` (folded or not).

    Needs ai-edge-litert for the schema; without it, a one-line :class:`MntvmError`.
    """
    m = _Model()
    fb = m.fb
    folded = fold_batchnorm(validate(cfg, weights))
    r = cfg.resolution
    x = data = m.tensor("data", (1, r, r, 3))
    for s in layer_specs(cfg):
        if s.kind == "fc":
            pooled = m.tensor("pool", (1, s.in_channels))
            o = fb.ReducerOptionsT()
            o.keepDims = False
            m.op(fb.BuiltinOperator.MEAN, [x, m.tensor("pool_axes", (2,), np.array([1, 2], np.int32),
                                                       fb.TensorType.INT32)], [pooled], fb.BuiltinOptions.ReducerOptions, o)
            x = _fc_softmax(m, s, pooled, m.tensor("fc.weight", (s.out_channels, s.in_channels), folded["fc.weight"]),
                            m.tensor("fc.bias", (s.out_channels,), folded["fc.bias"]))
            continue
        x = m.conv(s, x, (folded[f"{s.name}.weight"], None, None), (folded[f"{s.name}.bias"], None, None),
                   _activation(fb, cfg))
    return m.finish([data], [x], f"mntvm {cfg.tag}")


def _fc_softmax(m: _Model, s, x: int, weight: int, bias: int, logits_quant=None) -> int:
    """FULLY_CONNECTED into ``logits`` (int8 when ``logits_quant``, then dequantized), then SOFTMAX."""
    fb = m.fb
    logits = m.tensor("logits", (1, s.out_channels), dtype=None if logits_quant is None else fb.TensorType.INT8,
                      quant=logits_quant)
    m.op(fb.BuiltinOperator.FULLY_CONNECTED, [x, weight, bias], [logits], fb.BuiltinOptions.FullyConnectedOptions,
         fb.FullyConnectedOptionsT())
    if logits_quant is not None:
        real = m.tensor("logits_float", (1, s.out_channels))
        m.op(fb.BuiltinOperator.DEQUANTIZE, [logits], [real])
        logits = real
    prob = m.tensor("prob", (1, s.out_channels))
    o = fb.SoftmaxOptionsT()
    o.beta = 1.0
    m.op(fb.BuiltinOperator.SOFTMAX, [logits], [prob], fb.BuiltinOptions.SoftmaxOptions, o)
    return prob


def build_tflite_int8(net) -> bytes:
    """The int8 TFLite flatbuffer of a :class:`mntvm.model.quantized.QuantizedNet`: TFLite's int8
    scheme (activations int8 per tensor, weights int8 per output channel, int32 biases), the same
    scales as ``net``; uint8 activations become int8 with their zero points moved by -128 (the same
    real values, the same arithmetic). Float32 input (QUANTIZE inside) and float32 probabilities.
    An FC with fp32 logits (ours) runs as a float FC on the dequantized pool (DEQUANTIZE, then the
    weights and bias at their real values): ``float32(acc) * s_x * s_w``, as ``forward_int8``.
    TFLite requantizes with fixed-point multipliers (ours: float32), so a layer may differ by a
    step here and there."""
    from mntvm.model.quantized import QTensor

    m = _Model()
    fb = m.fb
    i8, i32 = fb.TensorType.INT8, fb.TensorType.INT32
    cfg = net.cfg
    shift = -128 if net.act_dtype == "uint8" else 0

    def q(t: QTensor):
        return ([t.scale], [int(t.zero_point) + shift], 0)

    r = cfg.resolution
    data = m.tensor("data", (1, r, r, 3))
    x = m.tensor("data_q", (1, r, r, 3), dtype=i8, quant=q(net.input))
    m.op(fb.BuiltinOperator.QUANTIZE, [data], [x])
    specs = {s.name: s for s in layer_specs(cfg)}
    for layer in net.layers:
        s = specs[layer.name]
        w_scale = layer.weight_scale.astype(np.float32)
        if layer.kind == "fc":
            pooled = m.tensor("pool", (1, s.in_channels), dtype=i8, quant=q(layer.input))
            o = fb.ReducerOptionsT()
            o.keepDims = False
            m.op(fb.BuiltinOperator.MEAN, [x, m.tensor("pool_axes", (2,), np.array([1, 2], np.int32), i32)], [pooled],
                 fb.BuiltinOptions.ReducerOptions, o)
            if layer.output is None:
                real = m.tensor("pool_float", (1, s.in_channels))
                m.op(fb.BuiltinOperator.DEQUANTIZE, [pooled], [real])
                w = (layer.weight.astype(np.float32) * w_scale[:, None]).astype(np.float32)
                b = (layer.bias.astype(np.float32) * np.float32(layer.input.scale) * w_scale).astype(np.float32)
                prob = _fc_softmax(m, s, real, m.tensor("fc.weight", w.shape, w), m.tensor("fc.bias", b.shape, b))
            else:
                w = m.tensor("fc.weight", layer.weight.shape, layer.weight.astype(np.int8), i8,
                             (w_scale, np.zeros(len(w_scale), np.int64), 0))
                b = m.tensor("fc.bias", layer.bias.shape, layer.bias.astype(np.int32), i32,
                             (np.float32(layer.input.scale) * w_scale, np.zeros(len(w_scale), np.int64), 0))
                prob = _fc_softmax(m, s, pooled, w, b, q(layer.output))
            return m.finish([data], [prob], f"mntvm {cfg.tag} int8")
        zeros = np.zeros(len(w_scale), np.int64)
        x = m.conv(s, x, (layer.weight.astype(np.int8), i8, (w_scale, zeros, 0)),
                   (layer.bias.astype(np.int32), i32, (np.float32(layer.input.scale) * w_scale, zeros, 0)),
                   _activation(fb, cfg), out_quant=q(layer.output))
    raise MntvmError("quantized network has no fc layer")


def export_tflite(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write the TFLite model to ``path`` atomically."""
    return write_bytes(path, build_tflite(cfg, weights))


def export_tflite_int8(net, path: str | os.PathLike) -> Path:
    """Write the int8 TFLite model of a :class:`QuantizedNet` to ``path`` atomically."""
    return write_bytes(path, build_tflite_int8(net))
