"""The int8 network: what a quantizer produces, an importer reads, the int8 templates compile.

A :class:`QuantizedNet` is MobileNetV1 in integer form, layer for layer as
:func:`mntvm.model.network.layer_specs`: batchnorm folded, each conv's and the FC's weights int8,
symmetric per output channel (zero point 0), their biases int32 at scale ``input.scale *
weight_scale``; activations per tensor, uint8 (x86: VNNI multiplies u8 x s8) or int8 (ARM
``sdot``: s8 x s8), each with a scale and a zero point. The arithmetic is ONNX's QLinear one, as
ONNX Runtime computes it, so our build, this reference and ONNX Runtime on the QDQ export agree
within one quantization step::

    x_q   = saturate(rint(x / s_in) + z_in)                         # the fp32 image, once
    acc   = sum((x_q - z_x) * w_q) + bias_q                          # int32; padding is z_x (= real 0)
    y_q   = clamp(rint(float32(acc) * M[c]) + z_y, lo_q, hi_q)       # M = float32(s_x * s_w[c]) / s_y
    pool  = clamp(rint(float32(sum_p x_q - P * z_x) * (s_x / (s_y * P))) + z_y)
    logits = float32(acc_fc) * float32(s_x * s_w[c])                # fp32 (or re-quantized: ``fc.output``)
    probs = softmax(logits)                                          # fp32

``rint`` rounds half to even (``nearbyint``, as ONNX Runtime's MLAS). ``lo_q``/``hi_q`` are the
type's range narrowed by the activation (ReLU: real 0; ReLU6: real 0 and 6).

Public entry: :class:`QuantizedNet`, :func:`forward_int8` (the numpy reference).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mntvm.core.errors import MntvmError
from mntvm.model.network import MobileNetConfig, layer_specs

ACT_DTYPES = ("uint8", "int8")
_RANGE = {"uint8": (0, 255), "int8": (-128, 127)}


def qrange(dtype: str) -> tuple[int, int]:
    """(min, max) of an 8-bit integer type."""
    return _RANGE[dtype]


@dataclasses.dataclass(frozen=True)
class QTensor:
    """Per-tensor quantization of an activation: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int
    dtype: str = "uint8"

    def __post_init__(self):
        if self.dtype not in ACT_DTYPES:
            raise MntvmError(f"activation dtype {self.dtype!r} is not one of {', '.join(ACT_DTYPES)}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise MntvmError(f"quantization scale {self.scale!r} is not a positive finite number")
        lo, hi = qrange(self.dtype)
        if not lo <= int(self.zero_point) <= hi:
            raise MntvmError(f"zero point {self.zero_point} is outside {self.dtype}'s range [{lo}, {hi}]")

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """ONNX QuantizeLinear: saturate(rint(x / scale) + zero_point)."""
        lo, hi = qrange(self.dtype)
        q = np.rint(np.asarray(x, np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, lo, hi).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((np.asarray(q, np.int32) - self.zero_point) * np.float32(self.scale)).astype(np.float32)

    def clamp(self, act: tuple[float, float] | None) -> tuple[int, int]:
        """The quantized range of this tensor narrowed by a real clamp ``act`` = (lo, hi)."""
        lo, hi = qrange(self.dtype)
        if act is None:
            return lo, hi
        a_lo, a_hi = act
        if np.isfinite(a_lo):
            lo = max(lo, int(np.rint(a_lo / self.scale)) + self.zero_point)
        if np.isfinite(a_hi):
            hi = min(hi, int(np.rint(a_hi / self.scale)) + self.zero_point)
        return lo, hi


@dataclasses.dataclass(frozen=True)
class QLayer:
    """One int8 conv or the FC. ``weight`` int8 in :attr:`LayerSpec.weight_shape`'s layout (OIHW, or
    (classes, in) for the FC); ``weight_scale`` float32 (out,); ``bias`` int32 (out,) at scale
    ``input.scale * weight_scale``; ``output`` None only for an FC with fp32 logits; ``act`` the
    real-valued clamp of the activation folded into the requantization (None: none)."""

    name: str
    kind: str  # conv | depthwise | pointwise | fc
    stride: int
    padding: int
    weight: np.ndarray
    weight_scale: np.ndarray
    bias: np.ndarray
    input: QTensor
    output: QTensor | None
    act: tuple[float, float] | None = None

    def multiplier(self) -> np.ndarray:
        """float32 (out,): the requantization multiplier M = float32(s_x * s_w) / s_y, computed in
        float32 as ONNX Runtime does (or s_x * s_w alone when the output is fp32)."""
        m = np.float32(self.input.scale) * self.weight_scale.astype(np.float32)
        if self.output is None:
            return m.astype(np.float32)
        return (m / np.float32(self.output.scale)).astype(np.float32)

    def out_range(self) -> tuple[int, int]:
        return self.output.clamp(self.act)

    def input_zero_correction(self) -> np.ndarray:
        """int32 (out,): ``z_x * sum(w)`` over each output channel's taps, which a kernel that
        multiplies raw ``x_q`` (not ``x_q - z_x``) subtracts; padding must then hold ``z_x``."""
        w = self.weight.astype(np.int64).reshape(self.weight.shape[0], -1)
        return (int(self.input.zero_point) * w.sum(axis=1)).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class QuantizedNet:
    """MobileNetV1 in int8: ``layers`` are stem, dw1, pw1, ..., dw13, pw13, fc (the order of
    :func:`layer_specs`); ``pool`` the quantization of the global average pool's output;
    ``calibration`` says how the activation ranges were found (``minmax``, ``percentile``,
    ``entropy``, or ``imported``). Each layer's ``input`` is the previous layer's ``output``
    (the stem's is :attr:`input`); the FC's ``input`` is the quantization of the global average
    pool's output (:attr:`pool`)."""

    cfg: MobileNetConfig
    input: QTensor
    layers: tuple[QLayer, ...]
    calibration: str = "minmax"

    def __post_init__(self):
        specs = layer_specs(self.cfg)
        names = [s.name for s in specs]
        if [l.name for l in self.layers] != names:
            raise MntvmError(f"quantized network has layers {[l.name for l in self.layers][:3]}..., "
                             f"expected {names[:3]}... ({len(names)} layers)")
        for s, l in zip(specs, self.layers):
            if tuple(l.weight.shape) != tuple(s.weight_shape):
                raise MntvmError(f"quantized layer {s.name}: weight shape {tuple(l.weight.shape)}, "
                                 f"expected {tuple(s.weight_shape)}")
            if l.weight.dtype != np.int8 or l.bias.dtype != np.int32:
                raise MntvmError(f"quantized layer {s.name}: weights must be int8 and bias int32, "
                                 f"got {l.weight.dtype} and {l.bias.dtype}")
            if l.bias.shape != (s.out_channels,) or l.weight_scale.shape != (s.out_channels,):
                raise MntvmError(f"quantized layer {s.name}: bias/scale must have {s.out_channels} entries")
            if not (np.all(np.isfinite(l.weight_scale)) and np.all(l.weight_scale > 0)):
                raise MntvmError(f"quantized layer {s.name}: weight scales must be positive and finite")
            if l.output is None and s.kind != "fc":
                raise MntvmError(f"quantized layer {s.name} has no output quantization")
        prev = self.input
        for l in self.layers[:-1]:
            if l.input != prev:
                raise MntvmError(f"quantized layer {l.name}: its input quantization {l.input} is not the "
                                 f"previous output's {prev}")
            prev = l.output
        dtypes = {self.input.dtype} | {t.dtype for l in self.layers for t in (l.input, l.output) if t is not None}
        if len(dtypes) != 1:
            raise MntvmError(f"quantized network mixes activation types {sorted(dtypes)}")

    @property
    def pool(self) -> QTensor:
        return self.layers[-1].input

    @property
    def act_dtype(self) -> str:
        return self.input.dtype

    def layer(self, name: str) -> QLayer:
        return {l.name: l for l in self.layers}[name]

    @property
    def weight_bytes(self) -> int:
        """Bytes of int8 weights + int32 biases + per-channel float32 scales."""
        return sum(l.weight.size + 4 * l.bias.size + 4 * l.weight_scale.size for l in self.layers)


def requantize(acc: np.ndarray, mult: np.ndarray, out: QTensor, rng: tuple[int, int], axis: int = 1) -> np.ndarray:
    """int32 accumulators -> ``out.dtype``: clamp(rint(float32(acc) * mult) + z, rng)."""
    shape = [1] * acc.ndim
    shape[axis] = -1
    v = acc.astype(np.float32) * np.asarray(mult, np.float32).reshape(shape)
    q = np.rint(v) + np.float32(out.zero_point)
    return np.clip(q, rng[0], rng[1]).astype(out.dtype)


def _windows_int(x: np.ndarray, k: int, stride: int, pad: int, fill: int) -> np.ndarray:
    from numpy.lib.stride_tricks import as_strided

    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    n, c, h, w = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    s = x.strides
    return as_strided(x, (n, c, ho, wo, k, k), (s[0], s[1], s[2] * stride, s[3] * stride, s[2], s[3]))


def conv_int8(layer: QLayer, xq: np.ndarray) -> np.ndarray:
    """int32 accumulators (bias included) of one conv layer on quantized input ``xq`` (N,C,H,W)."""
    z = int(layer.input.zero_point)
    x = xq.astype(np.int64)
    w = layer.weight.astype(np.int64)
    if layer.kind == "pointwise":
        acc = np.einsum("nchw,oc->nohw", x - z, w[:, :, 0, 0], optimize=True)
    else:
        win = _windows_int(x, w.shape[-1], layer.stride, layer.padding, z) - z
        if layer.kind == "depthwise":
            acc = np.einsum("nchwij,cij->nchw", win, w[:, 0], optimize=True)
        else:
            acc = np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    return (acc + layer.bias.astype(np.int64)[None, :, None, None]).astype(np.int32)


def pool_int8(x_in: QTensor, out: QTensor, xq: np.ndarray) -> np.ndarray:
    """Global average pool (N,C,H,W) -> (N,C) quantized at ``out``."""
    p = xq.shape[2] * xq.shape[3]
    acc = xq.astype(np.int64).sum(axis=(2, 3)) - p * int(x_in.zero_point)
    mult = np.float32(x_in.scale) / (np.float32(out.scale) * np.float32(p))
    return requantize(acc.astype(np.int32), np.full(acc.shape[1], mult, np.float32), out, qrange(out.dtype))


def forward_int8(net: QuantizedNet, x: np.ndarray, *, logits: bool = False,
                 capture: dict | None = None) -> np.ndarray:
    """The int8 network on fp32 input ``x`` (N, 3, R, R): softmax probabilities (or the fp32
    logits). ``capture``, if given, receives each layer's quantized output by layer name (and
    ``"input"``, ``"pool"``)."""
    xq, layer_in = net.input.quantize(x), net.input  # layer_in: what xq is quantized as
    if capture is not None:
        capture["input"] = xq
    for layer in net.layers:
        if layer.kind == "fc":
            pq = pool_int8(layer_in, layer.input, xq)
            if capture is not None:
                capture["pool"] = pq
            acc = (pq.astype(np.int64) - int(layer.input.zero_point)) @ layer.weight.astype(np.int64).T
            acc = (acc + layer.bias.astype(np.int64)[None, :]).astype(np.int32)
            if layer.output is None:
                z = acc.astype(np.float32) * layer.multiplier()[None, :]
            else:
                z = layer.output.dequantize(requantize(acc, layer.multiplier(), layer.output, layer.out_range()))
            if capture is not None:
                capture["fc"] = z
            if logits:
                return z
            z = z - z.max(axis=-1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=-1, keepdims=True)
        acc = conv_int8(layer, xq)
        xq = requantize(acc, layer.multiplier(), layer.output, layer.out_range())
        layer_in = layer.output
        if capture is not None:
            capture[layer.name] = xq
    raise MntvmError("quantized network has no fc layer")


def conv_layers(net: QuantizedNet) -> Sequence[QLayer]:
    return [l for l in net.layers if l.kind != "fc"]
