"""Post-training static quantization of our MobileNetV1 into a :class:`QuantizedNet`.

Batchnorm is folded first; weights become int8, symmetric per output channel; each activation
gets a per-tensor scale and zero point from its range over the calibration inputs (``method``:
see :data:`METHODS`), uint8 or int8 (``act_dtype``: what the target's dot-product instruction
multiplies); biases int32 at ``s_x * s_w``; ReLU/ReLU6 become the requantization clamp.

Calibration methods (each tensor observed as exact min/max plus a histogram of ``|x|``, so memory
does not grow with the number of inputs): ``minmax`` covers every value seen; ``percentile`` clips
at a percentile of ``|x|`` (99.99 by default); ``entropy`` clips where the KL divergence between
the clipped and the quantized distribution is least (TensorRT's method). The last two only ever
narrow the min/max range: rare outliers saturate instead of coarsening every other value's step.

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

METHODS = ("minmax", "percentile", "entropy")
HIST_BINS = 2048  # bins of each tensor's |x| histogram (TensorRT's and ONNX Runtime's entropy default)
_SMOOTH = 1e-4    # count given to empty bins before the KL divergence (ONNX Runtime's smooth_distribution)


class _Observer:
    """One tensor's calibration statistics in bounded memory: exact min and max, the count of exact
    zeros, and a :data:`HIST_BINS`-bin histogram of the other values' ``|x|`` over ``[0, top]``.
    When a value beyond ``top`` arrives, ``top`` doubles and bin pairs merge, so the histogram stays
    exact (no re-binning guess) and keeps at least ``HIST_BINS / 2`` bins over the observed range."""

    def __init__(self):
        self.lo, self.hi, self.top, self.zeros = np.inf, -np.inf, 0.0, 0
        self.hist = np.zeros(HIST_BINS, np.int64)

    def add(self, x: np.ndarray) -> None:
        a = np.abs(np.asarray(x, np.float64)).ravel()
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        a = a[a > 0]
        self.zeros += int(x.size - a.size)
        if a.size == 0:
            return
        amax = float(a.max())
        if self.top == 0.0:
            self.top = amax
        while amax > self.top:
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(HIST_BINS // 2, np.int64)])
            self.top *= 2
        idx = np.minimum((a * (HIST_BINS / self.top)).astype(np.int64), HIST_BINS - 1)
        self.hist += np.bincount(idx, minlength=HIST_BINS)

    def edge(self, bins: int) -> float:
        """The upper edge of the first ``bins`` bins."""
        return bins * self.top / HIST_BINS

    def clipped(self, threshold: float) -> tuple[float, float]:
        """(lo, hi) clipped to ``[-threshold, threshold]``: never wider than min/max."""
        return max(self.lo, -threshold), min(self.hi, threshold)


def _percentile_threshold(obs: _Observer, percentile: float) -> float:
    """The smallest bin edge with at least ``percentile`` % of all ``|x|`` (zeros included) below it."""
    cdf = (obs.zeros + np.cumsum(obs.hist)) / (obs.zeros + obs.hist.sum())
    idx = int(np.searchsorted(cdf, percentile / 100.0 * (1 - 1e-12)))
    return obs.edge(min(idx, HIST_BINS - 1) + 1)


def _smooth(v: np.ndarray) -> np.ndarray:
    """Empty bins get a tiny count taken from the others, so the KL divergence stays finite."""
    nonzero = np.count_nonzero(v)
    return np.where(v > 0, v - _SMOOTH * (v.size - nonzero) / nonzero, _SMOOTH)


def _entropy_threshold(obs: _Observer, levels: int) -> float:
    """TensorRT's KL-divergence calibration on the ``|x|`` histogram: for each candidate of ``i >=
    levels`` bins, P is the first ``i`` bins with everything beyond added to the last (what clipping
    at that edge does), Q those ``i`` bins (without the clipped mass) merged into ``levels``
    quantization levels and spread back over P's non-empty bins; the edge with the least KL(P||Q).
    Exact zeros (half of a ReLU output) are left out: real 0 is on the grid, so quantization never
    moves them, and counted in the first level they would drive the search to clip far too hard."""
    hist = obs.hist.astype(np.float64)
    used = int(np.flatnonzero(hist)[-1]) + 1 if hist.any() else 0
    if used <= levels:
        return obs.edge(used)
    csum = np.concatenate([[0.0], np.cumsum(hist)])
    nzsum = np.concatenate([[0], np.cumsum(hist > 0)])
    steps = np.arange(levels + 1)
    best, best_i = np.inf, used
    for i in range(levels, used + 1):
        edges = (steps * i) // levels
        p = hist[:i].copy()
        p[-1] += csum[-1] - csum[i]
        count = np.diff(nzsum[edges]).astype(np.float64)
        count[-1] += p[-1] > 0 and hist[i - 1] == 0
        q = np.repeat(np.diff(csum[edges]) / np.maximum(count, 1), np.diff(edges)) * (p > 0)
        p, q = _smooth(p), _smooth(q)
        p, q = p / p.sum(), q / q.sum()
        kl = float(np.dot(p, np.log(p / q)))
        if kl < best:
            best, best_i = kl, i
    return obs.edge(best_i)


def _observe(cfg: MobileNetConfig, folded: Mapping[str, np.ndarray], inputs: np.ndarray) -> dict[str, _Observer]:
    """Statistics of the input, every layer's activated output and the pool, over ``inputs``
    (run one at a time through the fp64 reference: memory stays one image's activations)."""
    obs: dict[str, _Observer] = {}

    def seen(name, v):
        obs.setdefault(name, _Observer()).add(v)

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
    return obs


def _range(obs: _Observer, method: str, percentile: float, act_dtype: str) -> tuple[float, float]:
    """One tensor's real range by ``method``; percentile and entropy only ever narrow min/max."""
    if method == "minmax":
        return obs.lo, obs.hi
    if method == "percentile":
        return obs.clipped(_percentile_threshold(obs, percentile))
    # |x| in [0, T] gets all the type's levels when x has one sign (asymmetric), half when both
    qmin, qmax = qrange(act_dtype)
    levels = (qmax - qmin + 1) // (2 if obs.lo < 0 < obs.hi else 1)
    return obs.clipped(_entropy_threshold(obs, levels))


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
             method: str = "minmax", act_dtype: str = "uint8", percentile: float = 99.99) -> QuantizedNet:
    """``cfg`` with ``weights`` quantized, activation ranges from ``calibration`` (N, 3, R, R) fp32
    by ``method`` (``percentile`` clips each tensor at that percentile of its ``|x|``)."""
    if method not in METHODS:
        raise MntvmError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    try:
        pct = float(percentile)
    except (TypeError, ValueError):
        pct = float("nan")
    if not 0 < pct <= 100:
        raise MntvmError(f"calibration percentile {percentile!r} is not a number in (0, 100]")
    if act_dtype not in ACT_DTYPES:
        raise MntvmError(f"activation dtype {act_dtype!r} is not one of {', '.join(ACT_DTYPES)}")
    calibration = np.asarray(calibration, np.float32)
    if calibration.ndim != 4 or calibration.shape[1:] != cfg.input_shape[1:] or calibration.shape[0] < 1:
        raise MntvmError(f"calibration inputs have shape {calibration.shape}, expected (N, "
                         f"{', '.join(map(str, cfg.input_shape[1:]))}) with N >= 1")
    folded = fold_batchnorm(validate(cfg, weights))
    if not np.all(np.isfinite(calibration)):
        raise MntvmError("calibration inputs hold NaN or infinite values")
    ranges = {k: _range(o, method, pct, act_dtype)
              for k, o in _observe(cfg, folded, calibration).items()}
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
