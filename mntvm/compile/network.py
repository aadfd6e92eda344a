"""What a build compiles: fp32 weights or an int8 :class:`~mntvm.model.quantized.QuantizedNet`.

``network_for`` decides from ``--dtype`` and the weights file (a quantized ONNX file builds as
int8: the dtype follows the file), imports or quantizes, and describes what it did (recorded in
the artifact's metadata). ``write_quantized`` is ``mntvm quantize``: the same network written as
an ONNX QDQ model for ONNX Runtime, other tools, or a later ``mntvm compile --weights q.onnx``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mntvm.core.errors import MntvmError
from mntvm.export.onnx_qdq import export_qdq
from mntvm.model import weights as W
from mntvm.model.calibration import load_calibration
from mntvm.model.network import MobileNetConfig
from mntvm.model.qdq_import import import_qdq, is_quantized_onnx
from mntvm.model.quantize import quantize
from mntvm.model.quantized import QuantizedNet
from mntvm.targets import get_profile

DTYPES = ("float32", "int8")


def network_for(cfg: MobileNetConfig, profile, weights=None, seed: int = 0, dtype: str | None = None,
                calibration=None, method: str = "minmax", count: int = 16):
    """What gets built: fp32 weights (a dict) or a :class:`QuantizedNet`, and a description of it.

    ``dtype`` None follows ``weights``: a quantized (QDQ) ONNX file gives int8, anything else
    float32. ``dtype="int8"`` with fp32 weights (or random ones) quantizes them here with
    ``calibration`` (a folder of images/.npy, or None: ``count`` seeded inputs) and ``method``.
    """
    if dtype is not None and dtype not in DTYPES:
        raise MntvmError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    qdq = isinstance(weights, (str, os.PathLike)) and str(weights).endswith(".onnx") and is_quantized_onnx(weights)
    if qdq and dtype == "float32":
        raise MntvmError(f"{weights} is a quantized (QDQ) model: it builds as int8; drop --dtype float32")
    if qdq and calibration is not None:
        raise MntvmError(f"{weights} is quantized already: --calibration does not apply")
    if not qdq and (dtype or "float32") == "float32":
        if calibration is not None:
            raise MntvmError("--calibration applies to int8 builds only (add --dtype int8)")
        return W.load(cfg, weights, seed), {"dtype": "float32"}
    act = profile.check_int8()
    if qdq:
        net = import_qdq(weights, cfg)
        if net.act_dtype != act:
            raise MntvmError(f"{weights} has {net.act_dtype} activations; target '{profile.name}' multiplies "
                             f"{act} (quantize for it with `mntvm quantize --target {profile.name}`)")
        return net, {"dtype": "int8", "activations": act, "calibration": "imported"}
    calib = load_calibration(calibration, cfg, count=count, seed=seed)
    net = quantize(cfg, W.load(cfg, weights, seed), calib, method=method, act_dtype=act)
    where = f"random(seed={seed})" if calibration is None else os.path.basename(os.path.normpath(str(calibration))) + "/"
    src = f"{where} x {len(calib)}"
    return net, {"dtype": "int8", "activations": act, "calibration": method, "calibration_inputs": src}


def quantized_digest(net: QuantizedNet) -> str:
    """sha256 of a quantized network's integer weights, biases and all scales/zero points."""
    arrays = {"input": np.array([net.input.scale, net.input.zero_point], np.float64)}
    for l in net.layers:
        arrays[f"{l.name}.weight"] = l.weight
        arrays[f"{l.name}.bias"] = l.bias
        arrays[f"{l.name}.weight_scale"] = l.weight_scale
        arrays[f"{l.name}.qparams"] = np.array([l.input.scale, l.input.zero_point] + (
            [l.output.scale, l.output.zero_point] if l.output is not None else []), np.float64)
    return W.digest(arrays)


def write_quantized(cfg: MobileNetConfig, out: str | os.PathLike, target: str = "x86", weights=None, seed: int = 0,
                    calibration=None, method: str = "minmax", count: int = 16, targets_dir=None, mcpu=None,
                    mattr=None) -> tuple[Path, dict]:
    """Quantize ``cfg``'s fp32 ``weights`` for ``target``'s int8 path (its activation type) and write
    the ONNX QDQ model to ``out`` (atomically). Returns the path and what :func:`network_for` says."""
    profile = get_profile(target, targets_dir=targets_dir, mcpu=mcpu, mattr=mattr)
    if isinstance(weights, (str, os.PathLike)) and str(weights).endswith(".onnx") and is_quantized_onnx(weights):
        raise MntvmError(f"{weights} is quantized already: give fp32 weights to quantize")
    net, info = network_for(cfg, profile, weights, seed, "int8", calibration, method, count)
    return export_qdq(net, out), info


def format_quantized(path: Path, info: dict, cfg: MobileNetConfig) -> str:
    """What ``mntvm quantize`` prints."""
    return (f"wrote {path} ({cfg.tag}, int8 QDQ: {info['activations']} activations, int8 per-channel weights, "
            f"calibration {info['calibration']} on {info['calibration_inputs']})")
