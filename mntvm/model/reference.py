"""A plain-numpy forward pass of MobileNetV1 (float64), independent of TVM: the host-side reference
that benchmarks compare compiled outputs with (``max_abs_diff``).

Public entry: :func:`forward`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from numpy.lib.stride_tricks import as_strided

from mntvm.model.network import LayerSpec, MobileNetConfig, layer_specs
from mntvm.model.weights import bn_eps, is_folded


def _windows(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """(N, C, H, W) → (N, C, Ho, Wo, k, k) view of the zero-padded sliding windows."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, w = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    s = x.strides
    return as_strided(x, (n, c, ho, wo, k, k), (s[0], s[1], s[2] * stride, s[3] * stride, s[2], s[3]))


def conv_float(spec: LayerSpec, w: np.ndarray, bias: np.ndarray | None, x: np.ndarray) -> np.ndarray:
    """One conv layer of ``spec`` (float64): ``x`` (N, C, H, W) with weight ``w`` (+ ``bias``)."""
    w = np.asarray(w, dtype=np.float64)
    if spec.kind == "pointwise":
        x = np.einsum("nchw,oc->nohw", x, w[:, :, 0, 0], optimize=True)
    elif spec.kind == "depthwise":
        x = np.einsum("nchwij,cij->nchw", _windows(x, spec.kernel, spec.stride, spec.padding), w[:, 0],
                      optimize=True)
    else:
        x = np.einsum("nchwij,ocij->nohw", _windows(x, spec.kernel, spec.stride, spec.padding), w, optimize=True)
    if bias is not None:
        x = x + np.asarray(bias, np.float64)[None, :, None, None]
    return x


def forward(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Softmax probabilities of ``cfg`` with ``weights`` on input ``x`` (N, 3, R, R)."""
    x = np.asarray(x, dtype=np.float64)
    eps = bn_eps(weights)
    folded = is_folded(weights)
    for s in layer_specs(cfg):
        w = np.asarray(weights[f"{s.name}.weight"], dtype=np.float64)
        if s.kind == "fc":
            x = x.mean(axis=(2, 3)) @ w.T + weights["fc.bias"]
            break
        x = conv_float(s, w, weights[f"{s.name}.bias"] if folded else None, x)
        if not folded:
            g, b, m, v = (np.asarray(weights[f"{s.name}.bn.{p}"], np.float64)[None, :, None, None]
                          for p in ("gamma", "beta", "mean", "var"))
            x = (x - m) / np.sqrt(v + eps) * g + b
        x = np.clip(x, 0, 6) if cfg.activation == "relu6" else np.maximum(x, 0)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)
