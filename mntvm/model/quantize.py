"""Post-training static quantization of our MobileNetV1 into a :class:`QuantizedNet`.

Batchnorm is folded first; weights become int8, symmetric per output channel; each activation
gets a per-tensor scale and zero point from its range over the calibration inputs (``method``:
see :data:`METHODS`), uint8 or int8 (``act_dtype``: what the target's dot-product instruction
multiplies); biases int32 at ``s_x * s_w``; ReLU/ReLU6 become the requantization clamp.

Public entry: :func:`quantize`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from mntvm.core.errors import MntvmError
from mntvm.model.network import MobileNetConfig, layer_specs
from mntvm.model.quantized import ACT_DTYPES, QLayer, QTensor, QuantizedNet, qrange
from mntvm.model.reference import conv_float
from mntvm.model.weights import fold_batchnorm, validate

METHODS = ("minmax",)


def _activation_ranges(cfg: MobileNetConfig, folded: Mapping[str, np.ndarray], inputs: np.ndarray,
                       method: str) -> dict[str, tuple[float, float]]:
    """Real-valued (lo, hi) of the input, every layer's activated output and the pool, over ``inputs``."""
    obs: dict[str, list[np.ndarray]] = {}

    def seen(name, v):
        obs.setdefault(name, []).append(np.asarray(v, np.float32))

    for i in range(inputs.shape[0]):
        x = inputs[i:i + 1].astype(np.float64)
        seen("input", x)
        for s in layer_specs(cfg):
            if s.kind == "fc":
                seen("pool", x.mean(axis=(2, 3)))
                break
            x = conv_float(s, folded[f"{s.name}.weight"], folded[f"{s.name}.bias"], x)
            x = np.clip(x, 0, 6) if cfg.activation == "relu6" else np.maximum(x, 0)
            seen(s.name, x)
    if method != "minmax":
        raise MntvmError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    return {k: (float(min(a.min() for a in v)), float(max(a.max() for a in v))) for k, v in obs.items()}


def activation_qparams(lo: float, hi: float, dtype: str) -> QTensor:
    """Asymmetric per-tensor quantization covering [min(lo, 0), max(hi, 0)] (real 0 exact)."""
    qmin, qmax = qrange(dtype)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        hi = lo + 1e-6
    scale = float(np.float32((hi - lo) / (qmax - qmin)))
    zp = int(np.clip(np.rint(qmin - lo / scale), qmin, qmax))
    return QTensor(scale, zp, dtype)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 symmetric per output channel (axis 0): (w_q, scale float32)."""
    w = np.asarray(w, np.float64)
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def quantize(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray], calibration: np.ndarray,
             method: str = "minmax", act_dtype: str = "uint8") -> QuantizedNet:
    """``cfg`` with ``weights`` quantized, activation ranges from ``calibration`` (N, 3, R, R) fp32."""
    if act_dtype not in ACT_DTYPES:
        raise MntvmError(f"activation dtype {act_dtype!r} is not one of {', '.join(ACT_DTYPES)}")
    calibration = np.asarray(calibration, np.float32)
    if calibration.ndim != 4 or calibration.shape[1:] != cfg.input_shape[1:] or calibration.shape[0] < 1:
        raise MntvmError(f"calibration inputs have shape {calibration.shape}, expected (N, "
                         f"{', '.join(map(str, cfg.input_shape[1:]))}) with N >= 1")
    folded = fold_batchnorm(validate(cfg, weights))
    ranges = _activation_ranges(cfg, folded, calibration, method)
    act = (0.0, 6.0) if cfg.activation == "relu6" else (0.0, float("inf"))
    x_in = activation_qparams(*ranges["input"], act_dtype)
    net_in, layers = x_in, []
    for s in layer_specs(cfg):
        w_q, w_s = quantize_weight(folded[f"{s.name}.weight"])
        out = None if s.kind == "fc" else activation_qparams(*ranges[s.name], act_dtype)
        if s.kind == "fc":
            x_in = activation_qparams(*ranges["pool"], act_dtype)
        bias_scale = np.float64(x_in.scale) * w_s.astype(np.float64)
        b_q = np.clip(np.rint(np.asarray(folded[f"{s.name}.bias"], np.float64) / bias_scale),
                      -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        layers.append(QLayer(s.name, s.kind, s.stride, s.padding, w_q, w_s, b_q, x_in, out,
                             None if s.kind == "fc" else act))
        x_in = out
    return QuantizedNet(cfg, net_in, tuple(layers), calibration=method)
