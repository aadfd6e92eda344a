"""mntvm.model.quantize: post-training quantization (minmax, percentile, entropy calibration) keeps
the network's answers, and the clipping methods behave."""
from __future__ import annotations

import numpy as np
import pytest

from mntvm import MntvmError
from mntvm.model.network import MobileNetConfig
from mntvm.model.quantize import METHODS, quantize
from mntvm.model.quantized import forward_int8
from mntvm.model.reference import forward
from mntvm.model.weights import random_weights

CFG = MobileNetConfig(alpha=0.25, resolution=32, num_classes=10)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + CFG.input_shape[1:]).astype(np.float32)


def _tensors(net):
    """Every activation's quantization: the input, each conv's output, the pool."""
    return {"input": net.input, **{l.name: l.output for l in net.layers if l.output is not None}, "pool": net.pool}


@pytest.fixture(scope="module")
def calibrated():
    w = random_weights(CFG, 0)
    cal = _images(16, 1)
    return w, {(m, dt): quantize(CFG, w, cal, method=m, act_dtype=dt) for m in METHODS for dt in ("uint8", "int8")}


# Agreement bound: each of the 28 requantizations rounds by up to half a step, 1/510 of the tensor's
# range, and the int8 weights add as much again; through 28 layers that noise grows like sqrt(28), a
# few percent of an activation's spread (measured: max |d logit| 6-9 % of the logits' std, max |d p|
# 0.01). The bounds below are 2-3x that. Entropy calibration clips tails on purpose (16 inputs make
# sparse histograms and it saturates, e.g., dw13 at 40 % of its min/max range), so its fp32
# agreement is looser (measured: 0.66 logits, |d p| 0.10, top-1 59 of 64).
BOUNDS = {"minmax": (0.2, 0.03, 0.9), "percentile": (0.2, 0.03, 0.9), "entropy": (1.0, 0.2, 0.8)}


@pytest.mark.parametrize("method", METHODS)
def test_int8_agrees_with_fp32(calibrated, method):
    w, nets = calibrated
    net = nets[method, "uint8"]
    assert net.calibration == method and net.act_dtype == "uint8"
    x = _images(64, 2)
    p32 = forward(CFG, w, x)
    l32 = np.log(p32)
    l32 -= l32.mean(axis=1, keepdims=True)  # the fp32 logits up to each row's constant
    l8 = forward_int8(net, x, logits=True).astype(np.float64)
    l8 -= l8.mean(axis=1, keepdims=True)
    p8 = forward_int8(net, x)
    logit_rel, prob_abs, top1 = BOUNDS[method]
    assert np.abs(l8 - l32).max() <= logit_rel * l32.std()
    assert np.abs(p8 - p32).max() <= prob_abs
    assert (p8.argmax(axis=1) == p32.argmax(axis=1)).mean() >= top1
    # int8 activations are uint8's shifted by 128 (zero points too): the same arithmetic, exactly
    assert np.array_equal(forward_int8(nets[method, "int8"], x), p8)


def test_clipping_methods_never_widen_minmax(calibrated):
    _, nets = calibrated
    for dt in ("uint8", "int8"):
        ref = _tensors(nets["minmax", dt])
        for method in ("percentile", "entropy"):
            narrower = 0
            for name, q in _tensors(nets[method, dt]).items():
                assert q.scale <= ref[name].scale * (1 + 1e-6), f"{method} {name}: wider than min/max"
                narrower += q.scale < ref[name].scale * 0.999
            assert narrower >= 10, f"{method} clipped only {narrower} tensors"


def test_outliers_are_clipped_by_percentile_and_entropy():
    """A few huge values in an otherwise [-1, 1] tensor (here the image): min/max spends the whole
    grid on them, percentile 99.99 and entropy keep the step near the bulk's."""
    w = random_weights(CFG, 0)
    cal = _images(16, 3)
    cal[0, 0, 0, :3] = [60.0, -50.0, 55.0]  # 3 of 49152 values: 0.006 % of the tensor
    scales = {m: quantize(CFG, w, cal, method=m).input.scale for m in METHODS}
    assert scales["minmax"] == pytest.approx(110 / 255, rel=1e-6)
    assert scales["percentile"] <= (2 + 2 * 60 / 2048) / 255  # the bulk's [-1, 1], to a histogram bin
    # the KL search starts at 128 of 2048 bins over [0, 60] (|x| <= 3.75): 15x finer than min/max
    assert scales["entropy"] <= scales["minmax"] / 10
    # the 100th percentile is min/max
    assert quantize(CFG, w, cal, method="percentile", percentile=100).input.scale == pytest.approx(scales["minmax"])


def test_bad_arguments_are_one_line_errors():
    w = random_weights(CFG, 0)
    cal = _images(2, 0)
    for kwargs, msg in [({"method": "kl"}, "unknown calibration method 'kl'; choose one of minmax, percentile, entropy"),
                        ({"method": "percentile", "percentile": 0}, "calibration percentile 0 is not a number in"),
                        ({"method": "percentile", "percentile": "x"}, "calibration percentile 'x' is not"),
                        ({"act_dtype": "int4"}, "activation dtype 'int4' is not one of uint8, int8")]:
        with pytest.raises(MntvmError) as e:
            quantize(CFG, w, cal, **kwargs)
        assert str(e.value).startswith(msg) and len(str(e.value).splitlines()) == 1
    bad = cal.copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(MntvmError, match="calibration inputs hold NaN"):
        quantize(CFG, w, bad)
    with pytest.raises(MntvmError, match=r"calibration inputs have shape \(2, 3, 64, 64\)"):
        quantize(CFG, w, np.zeros((2, 3, 64, 64), np.float32))
