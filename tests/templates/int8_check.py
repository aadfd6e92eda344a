"""What the int8 template tests share: small quantized networks (one with a chosen zero point inside),
and a whole network compiled at given knobs, checked layer by layer against the integer reference
(mntvm.model.quantized.forward_int8), exactly."""
from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import relax

from mntvm.model.network import MobileNetConfig
from mntvm.model.quantize import quantize
from mntvm.model.quantized import QTensor, forward_int8
from mntvm.model.weights import random_weights
from mntvm.templates.defaults import apply_default_schedules
from mntvm.templates.lowering_int8 import lower_int8

DEV = tvm.cpu()


def small_net(alpha, res, seed=0, act_dtype="uint8", spread=2.0):
    """A 10-class network quantized from seeded random weights and calibration inputs."""
    cfg = MobileNetConfig(alpha=alpha, resolution=res, num_classes=10)
    cal = np.random.RandomState(seed).rand(3, 3, res, res).astype("float32") * spread - 0.5
    return quantize(cfg, random_weights(cfg, seed), cal, act_dtype=act_dtype)


def with_zero_point(net, name, zp):
    """``net`` with layer ``name``'s output (= the next layer's input) at zero point ``zp`` (ReLU6
    uint8 outputs otherwise all have zero point 0)."""
    i = [l.name for l in net.layers].index(name)
    a, b = net.layers[i:i + 2]
    out = QTensor(a.output.scale, zp, a.output.dtype)
    layers = net.layers[:i] + (dataclasses.replace(a, output=out), dataclasses.replace(b, input=out)) \
        + net.layers[i + 2:]
    return dataclasses.replace(net, layers=tuple(layers))


def check_network(net, profile, schedule=None, seed=5, inspect=None):
    """Compile ``net`` for ``profile`` (``schedule(mod)``: the template knobs; default: the family's
    defaults) and compare probabilities and every layer's quantized output with forward_int8;
    ``inspect(mod)`` sees the lowered module first (its result is returned)."""
    target = profile.tvm_target()
    names = ["input"] + [l.name for l in net.layers] + ["pool"]
    mod = lower_int8(net, profile, expose=names)
    seen = inspect(mod) if inspect is not None else None
    if schedule is not None:
        mod = schedule(mod)
    ex = tvm.compile(apply_default_schedules(mod, target), target=target)
    x = np.random.RandomState(seed).rand(*net.cfg.input_shape).astype("float32") * 2 - 0.5
    outs = [o.numpy() for o in relax.VirtualMachine(ex, DEV)["main"](tvm.runtime.tensor(x, DEV))]
    cap = {}
    probs = forward_int8(net, x, capture=cap)
    np.testing.assert_allclose(outs[0], probs, rtol=1e-5, atol=1e-7)
    for name, got in zip(names, outs[1:]):
        ref = cap[name]
        if name == "input":  # padded, pixel-interleaved (N, H+2p, W+2p, 4) -> NCHW
            pad = net.layers[0].padding
            got = got[:, pad:got.shape[1] - pad, pad:got.shape[2] - pad].transpose(0, 3, 1, 2)
        elif got.ndim == 4:  # blocked (N, C'/16, P, 16) -> (N, C, P)
            n, cb, p, v = got.shape
            got = got.transpose(0, 1, 3, 2).reshape(n, cb * v, p)[:, :ref.shape[1]]
        got = got[:, :ref.shape[1]].reshape(ref.shape)
        assert got.dtype == ref.dtype, name
        diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
        assert diff.max() == 0, f"{name}: {np.count_nonzero(diff)} of {diff.size} differ, max {diff.max()}"
    return seen
