"""TFLite export of our MobileNetV1 with its weights, so TFLite (+XNNPACK) can run the identical network.

The flatbuffer is written with ai_edge_litert's generated schema (``schema_py_generated``, object
API) and ``flatbuffers``: batchnorm folded into the convs, NHWC, CONV_2D / DEPTHWISE_CONV_2D with
the activation fused, MEAN, FULLY_CONNECTED, SOFTMAX. Stride-2 convs get an explicit PAD
(TFLite's SAME pads 0/1 there; ours, PyTorch-style, pads 1/1).

Public entries: :func:`build_tflite`, :func:`export_tflite`.
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


def build_tflite(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray]) -> bytes:
    """The TFLite flatbuffer (``TFL3``) of MobileNetV1 for ``cfg`` carrying ``weights`` (folded or not).

    Needs ai-edge-litert for the schema; without it, a one-line :class:`MntvmError`.
    """
    try:
        import flatbuffers
        from ai_edge_litert import schema_py_generated as fb
    except ImportError as e:
        raise MntvmError(f"writing TFLite needs ai-edge-litert's flatbuffer schema ({one_line(e)}): "
                         "pip install ai-edge-litert") from None

    folded = fold_batchnorm(validate(cfg, weights))
    op_t, opt_t, f32, i32 = fb.BuiltinOperator, fb.BuiltinOptions, fb.TensorType.FLOAT32, fb.TensorType.INT32
    act = fb.ActivationFunctionType.RELU6 if cfg.activation == "relu6" else fb.ActivationFunctionType.RELU
    tensors, buffers, ops, codes, code_index = [], [fb.BufferT()], [], [], {}

    def tensor(name, shape, data=None, dtype=f32):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, [int(d) for d in shape], dtype, 0
        if data is not None:
            b = fb.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    def op(code, ins, outs, opt_type, opts):
        if code not in code_index:
            c = fb.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
            code_index[code] = len(codes)
            codes.append(c)
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = code_index[code], ins, outs
        o.builtinOptionsType, o.builtinOptions = opt_type, opts
        ops.append(o)

    r = cfg.resolution
    x = data = tensor("data", (1, r, r, 3))
    for s in layer_specs(cfg):
        if s.kind == "fc":
            pooled = tensor("pool", (1, s.in_channels))
            o = fb.ReducerOptionsT()
            o.keepDims = False
            op(op_t.MEAN, [x, tensor("pool_axes", (2,), np.array([1, 2], np.int32), i32)], [pooled],
               opt_t.ReducerOptions, o)
            logits = tensor("logits", (1, s.out_channels))
            op(op_t.FULLY_CONNECTED, [pooled, tensor("fc.weight", (s.out_channels, s.in_channels), folded["fc.weight"]),
                                      tensor("fc.bias", (s.out_channels,), folded["fc.bias"])],
               [logits], opt_t.FullyConnectedOptions, fb.FullyConnectedOptionsT())
            prob = tensor("prob", (1, s.out_channels))
            o = fb.SoftmaxOptionsT()
            o.beta = 1.0
            op(op_t.SOFTMAX, [logits], [prob], opt_t.SoftmaxOptions, o)
            x = prob
            continue
        pad, hw = s.padding, s.in_hw
        if pad and (s.stride != 1 or s.kernel != 2 * pad + 1):
            hw = s.in_hw + 2 * pad
            padded = tensor(f"{s.name}_pad", (1, hw, hw, s.in_channels))
            op(op_t.PAD, [x, tensor(f"{s.name}_pads", (4, 2), np.array([[0, 0], [pad, pad], [pad, pad], [0, 0]],
                                                                       np.int32), i32)],
               [padded], opt_t.PadOptions, fb.PadOptionsT())
            x, padding = padded, fb.Padding.VALID
        else:
            padding = fb.Padding.SAME if pad else fb.Padding.VALID
        wt = folded[f"{s.name}.weight"]
        if s.kind == "depthwise":
            o = fb.DepthwiseConv2DOptionsT()
            o.depthMultiplier = 1
            code, opt_type, wt = op_t.DEPTHWISE_CONV_2D, opt_t.DepthwiseConv2DOptions, wt.transpose(1, 2, 3, 0)
        else:
            o = fb.Conv2DOptionsT()
            code, opt_type, wt = op_t.CONV_2D, opt_t.Conv2DOptions, wt.transpose(0, 2, 3, 1)
        o.padding, o.strideW, o.strideH, o.fusedActivationFunction = padding, s.stride, s.stride, act
        o.dilationWFactor = o.dilationHFactor = 1
        y = tensor(f"{s.name}_out", (1, s.out_hw, s.out_hw, s.out_channels))
        op(code, [x, tensor(f"{s.name}.weight", wt.shape, wt), tensor(f"{s.name}.bias", (s.out_channels,),
                                                                     folded[f"{s.name}.bias"])],
           [y], opt_type, o)
        x = y
    sub = fb.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs, sub.operators, sub.name = tensors, [data], [x], ops, "main"
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [sub], buffers
    model.description = f"mntvm {cfg.tag}"
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def export_tflite(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write the TFLite model to ``path`` atomically."""
    return write_bytes(path, build_tflite(cfg, weights))
