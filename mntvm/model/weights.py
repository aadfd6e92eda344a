"""Weights for :mod:`mntvm.model`: seeded random initialisation, ``.npz`` files, folding, ONNX import.

A weights dict maps the model's parameter names (``stem.weight``, ``dw3.bn.gamma``, ``fc.bias``, …;
see :func:`mntvm.model.param_shapes`) to float32 arrays, plus an optional 0-d ``bn_eps``.

Public entry: :func:`load` (file or seed → validated weights for a config).
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from mntvm.core.atomic import atomic_path
from mntvm.core.errors import MntvmError, one_line
from mntvm.model.network import DEFAULT_BN_EPS, MobileNetConfig, layer_specs, param_shapes

Weights = dict[str, np.ndarray]


def random_weights(cfg: MobileNetConfig, seed: int = 0) -> Weights:
    """Deterministic random weights with realistic scales.

    Convs use He-normal init (std = sqrt(2 / fan_in)) so activations keep their scale through the
    13 blocks; batchnorm statistics are near identity with small perturbations; the FC layer is
    scaled so logits spread over a few units and the softmax is neither one-hot nor uniform.
    """
    rng = np.random.default_rng(seed)
    w: Weights = {}
    for s in layer_specs(cfg):
        fan_in = int(np.prod(s.weight_shape[1:]))
        if s.kind == "fc":
            w["fc.weight"] = rng.normal(0.0, 4.0 / np.sqrt(fan_in), s.weight_shape)
            w["fc.bias"] = rng.normal(0.0, 0.1, s.out_channels)
            continue
        w[f"{s.name}.weight"] = rng.normal(0.0, np.sqrt(2.0 / fan_in), s.weight_shape)
        c = s.out_channels
        w[f"{s.name}.bn.gamma"] = rng.uniform(0.7, 1.3, c)
        w[f"{s.name}.bn.beta"] = rng.normal(0.1, 0.1, c)
        w[f"{s.name}.bn.mean"] = rng.normal(0.0, 0.1, c)
        w[f"{s.name}.bn.var"] = rng.uniform(0.8, 1.2, c)
    w = {k: v.astype(np.float32) for k, v in w.items()}
    w["bn_eps"] = np.array(DEFAULT_BN_EPS, dtype=np.float32)
    return w


def bn_eps(weights: Mapping[str, np.ndarray]) -> float:
    return float(weights["bn_eps"]) if "bn_eps" in weights else DEFAULT_BN_EPS


def is_folded(weights: Mapping[str, np.ndarray]) -> bool:
    return "stem.bias" in weights


def validate(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray]) -> Weights:
    """Check every parameter against the config; error names the first mismatched layer and shapes."""
    expected = param_shapes(cfg, folded=is_folded(weights))
    for name, shape in expected.items():
        if name not in weights:
            raise MntvmError(f"weights do not fit {cfg.tag}: layer {name.split('.')[0]} has no '{name}'")
        got = tuple(np.shape(weights[name]))
        if got != shape:
            raise MntvmError(
                f"weights do not fit {cfg.tag}: layer {name.split('.')[0]} '{name}' has shape "
                f"{got}, the model expects {shape}"
            )
    for name in expected:
        check_values(name, weights[name])
    out = {k: np.ascontiguousarray(weights[k], dtype=np.float32) for k in expected}
    if "bn_eps" in weights:
        out["bn_eps"] = np.asarray(weights["bn_eps"], dtype=np.float32)
    return out


def check_values(name: str, value) -> None:
    """One parameter's values: numbers, all finite; batchnorm variances not negative."""
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise MntvmError(f"weights: '{name}' holds {a.dtype} values, not numbers")
    if not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise MntvmError(f"weights: '{name}' holds {bad} NaN or infinite value{'s' * (bad != 1)}")
    if name.endswith(".bn.var") and (a < 0).any():
        raise MntvmError(f"weights: '{name}' has negative batchnorm variances (min {a.min():g})")


def fold_batchnorm(weights: Mapping[str, np.ndarray]) -> Weights:
    """Fold each conv's batchnorm into its weight and a bias (computed in float64, stored float32).

    BN(conv(x, W)) = conv(x, W * s) + (beta - mean * s), with s = gamma / sqrt(var + eps).
    """
    if is_folded(weights):
        return {k: v for k, v in weights.items() if k != "bn_eps"}
    eps = bn_eps(weights)
    out: Weights = {}
    for key, value in weights.items():
        if key == "bn_eps" or ".bn." in key:
            continue
        name, kind = key.rsplit(".", 1)
        if kind == "weight" and f"{name}.bn.gamma" in weights:
            g, b, m, v = (weights[f"{name}.bn.{p}"].astype(np.float64) for p in ("gamma", "beta", "mean", "var"))
            scale = g / np.sqrt(v + eps)
            out[key] = (value.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
            out[f"{name}.bias"] = (b - m * scale).astype(np.float32)
        else:
            out[key] = np.asarray(value, dtype=np.float32)
    return out


def digest(weights: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, shapes and bytes, independent of dict order."""
    h = hashlib.sha256()
    for k in sorted(weights):
        a = np.ascontiguousarray(weights[k], dtype=np.float32)
        h.update(f"{k}:{a.shape}:".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_npz(weights: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write weights to ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    with atomic_path(path, "a weights .npz", is_ours=zipfile.is_zipfile) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in weights.items()})
    return path


def load_npz(path: str | os.PathLike) -> Weights:
    path = Path(path)
    if not path.is_file():
        raise MntvmError(f"weights file not found: {path}" if not path.exists() else
                         f"weights file {path} is not a file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"
        raise MntvmError(f"cannot read weights file {path}: " + ("truncated or corrupt (no zip directory)"
                                                                  if zip_start else "not an .npz archive"))
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise MntvmError(f"cannot read weights file {path}: truncated or corrupt ({one_line(e)})") from None


def load(cfg: MobileNetConfig, source: str | os.PathLike | Mapping | None = None, seed: int = 0) -> Weights:
    """Weights for ``cfg`` from an ``.npz`` or ``.onnx`` file, a dict, or (None) the seeded random init."""
    if source is None:
        return random_weights(cfg, seed)
    if isinstance(source, Mapping):
        return validate(cfg, source)
    path = Path(source)
    if path.suffix == ".onnx":
        return import_onnx(path, cfg)
    if path.suffix == ".npz":
        return validate(cfg, load_npz(path))
    raise MntvmError(f"unknown weights format '{path.suffix}' for {path}: expected .npz or .onnx")


# --------------------------------------------------------------------------------------------
# ONNX import: map a MobileNetV1 exported by another framework onto our layers, by structure.
# --------------------------------------------------------------------------------------------

def import_onnx(path: str | os.PathLike, cfg: MobileNetConfig) -> Weights:
    """Read a trained MobileNetV1 from an ONNX file written by another framework.

    Accepts Conv (with ``group``), BatchNormalization or BN already folded into the conv bias, Relu
    or Clip(0, 6), GlobalAveragePool or AveragePool, Flatten/Reshape, Gemm or MatMul+Add and an
    optional Softmax. Convs are matched to ``stem, dw1, pw1, … pw13`` in graph order, the dense
    layer to ``fc``; names in the file do not matter.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise MntvmError(f"ONNX file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - protobuf raises several types
        raise MntvmError(f"cannot read ONNX file {path}: {e}") from None
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:  # constants written as Constant nodes
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    inits[n.output[0]] = numpy_helper.to_array(a.t)
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def attr(node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def next_op(tensor):
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 else None

    specs = [s for s in layer_specs(cfg) if s.kind != "fc"]
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if len(convs) != len(specs):
        raise MntvmError(
            f"{path}: has {len(convs)} Conv nodes, {cfg.tag} has {len(specs)} conv layers "
            "(stem + 13 depthwise + 13 pointwise): not a MobileNetV1"
        )
    out: Weights = {}
    eps_seen: set[float] = set()
    for spec, conv in zip(specs, convs):
        wname = conv.input[1]
        if wname not in inits:
            raise MntvmError(f"{path}: conv for layer {spec.name} has a non-constant weight '{wname}'")
        w = inits[wname].astype(np.float32)
        _check(path, cfg, spec.name, "weight", w.shape, spec.weight_shape)
        group = int(attr(conv, "group", 1))
        if group != spec.groups:
            raise MntvmError(f"{path}: layer {spec.name} has group={group}, {cfg.tag} expects {spec.groups}")
        stride = tuple(attr(conv, "strides", [1, 1]))
        if stride != (spec.stride, spec.stride):
            raise MntvmError(f"{path}: layer {spec.name} has strides {stride}, {cfg.tag} expects {spec.stride}")
        bias = inits[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else None
        out[f"{spec.name}.weight"] = w
        bn = next_op(conv.output[0])
        if bn is not None and bn.op_type == "BatchNormalization":
            g, b, m, v = (inits[bn.input[i]].astype(np.float64) for i in range(1, 5))
            for p, arr in zip(("gamma", "beta", "mean", "var"), (g, b, m, v)):
                _check(path, cfg, spec.name, f"bn.{p}", arr.shape, (spec.out_channels,))
            if bias is not None:  # BN(conv + b) == BN'(conv) with mean' = mean - b
                m = m - bias
            for p, arr in zip(("gamma", "beta", "mean", "var"), (g, b, m, v)):
                out[f"{spec.name}.bn.{p}"] = arr.astype(np.float32)
            eps_seen.add(float(attr(bn, "epsilon", 1e-5)))
        else:
            if bias is None:
                bias = np.zeros(spec.out_channels)
            _check(path, cfg, spec.name, "bias", bias.shape, (spec.out_channels,))
            out[f"{spec.name}.bias"] = bias.astype(np.float32)

    has_bn = [f"{s.name}.bn.gamma" in out for s in specs]
    if any(has_bn) and not all(has_bn):
        # Mixed file: fold the BN layers so every layer is in bias form.
        eps = eps_seen.pop() if len(eps_seen) == 1 else DEFAULT_BN_EPS
        out = fold_batchnorm({**out, "bn_eps": np.array(eps, np.float32)})
        for s in specs:
            out.setdefault(f"{s.name}.bias", np.zeros(s.out_channels, np.float32))
    elif any(has_bn):
        if len(eps_seen) > 1:
            raise MntvmError(f"{path}: batchnorm layers use different epsilons {sorted(eps_seen)}")
        out["bn_eps"] = np.array(eps_seen.pop(), dtype=np.float32)

    fc = _import_dense(path, cfg, graph, inits, attr)
    out.update(fc)
    return validate(cfg, out)


def _check(path, cfg, layer, what, got, want) -> None:
    if tuple(got) != tuple(want):
        raise MntvmError(
            f"{path}: weights do not fit {cfg.tag}: layer {layer} {what} has shape {tuple(got)}, "
            f"the model expects {tuple(want)}"
        )


def _import_dense(path, cfg, graph, inits, attr) -> Weights:
    spec = layer_specs(cfg)[-1]
    for n in graph.node:
        if n.op_type == "Gemm":
            w = inits[n.input[1]].astype(np.float32)
            if attr(n, "transB", 0) == 0:
                w = w.T
            b = inits[n.input[2]] if len(n.input) > 2 else np.zeros(w.shape[0])
            alpha, beta = attr(n, "alpha", 1.0), attr(n, "beta", 1.0)
            w, b = w * alpha, np.asarray(b, np.float64) * beta
            break
        if n.op_type == "MatMul" and n.input[1] in inits:
            w = inits[n.input[1]].astype(np.float32).T
            add = [m for m in graph.node if m.op_type == "Add" and n.output[0] in m.input]
            b = np.zeros(w.shape[0])
            if add:
                other = [i for i in add[0].input if i != n.output[0]][0]
                b = inits[other]
            break
    else:
        raise MntvmError(f"{path}: no Gemm or MatMul (fully connected layer) found")
    b = np.asarray(b).reshape(-1)
    _check(path, cfg, "fc", "weight", w.shape, spec.weight_shape)
    _check(path, cfg, "fc", "bias", b.shape, (spec.out_channels,))
    return {"fc.weight": np.ascontiguousarray(w, np.float32), "fc.bias": b.astype(np.float32)}
