"""The int8 templates' TE computes: ONNX QLinear arithmetic in the blocked layout (N, C/V, P, V).

Activations between layers are 8-bit (the net's act dtype: uint8 on x86) in the same blocked
layout as the fp32 templates (:mod:`.compute`), with ``V`` = 16 channels per block (one zmm of
int32 accumulators). Every conv is one reduction block into int32 accumulators (``schedule_rule``
one of :data:`.registry.INT8_RULES`) followed by one epilogue block that requantizes::

    y = cast(clamp(nearbyint(float32(acc + bias) * mult[c]) + z_y, lo, hi))

The stem and depthwise products are int16 (``|u8 x s8| <= 255 * 128`` fits, exactly; 32 lanes
per ``vpmullw`` instead of ``vpmulld``'s slow 16), summed in int32; the pointwise and FC ones are
the dot instruction's (VNNI ``vpdpbusd``) or plain int32 multiply-adds.
``nearbyint`` rounds half to even (as ONNX Runtime's MLAS and numpy's ``rint``); the clamp is
in float32 before the cast, so huge values saturate. The kernels multiply the raw ``x_q`` (not
``x_q - z_x``): ``bias`` already holds ``bias_q - z_x * sum(w)``
(:meth:`QLayer.input_zero_correction`) and the padding holds ``z_x`` (``pad_value``), which is
exactly ``sum((x_q - z_x) * w) + bias_q``.

Weights (re-packed by :mod:`.lowering_int8`), int8:

* stem (groups=1): ``(O/V, C, KH, KW, V)``; depthwise: ``(C/V, KH, KW, V)``
* pointwise ``(O/V, I/V, V/4, V, 4)`` when the block's dot instruction (``mntvm_dot``) takes the
  16 x 4 weight tile of ``dot_16x4_vnni`` (output lanes x 4 consecutive inputs, 64 bytes), else
  ``(O/V, I/V, V/4, 4, V)`` (the 16 output lanes contiguous for plain vector multiply-adds)
* FC: ``(N/V, K/4, V, 4)`` or ``(N/V, K/4, 4, V)`` alike.

Padded channels have zero weights, bias and multiplier: they hold ``z_y`` and never reach a real
output (the next layer's weights for them are zero).
"""
from __future__ import annotations

from tvm import te, tirx

from mntvm.templates.registry import RULE_DENSE8, RULE_DW8, RULE_POOL8, RULE_PW8, RULE_STEM8

DOT_KEY = "mntvm_dot"  # block annotation: the dot instruction (a key of cpu_int8.DOT_INTRINSICS) or "none"
BITS_KEY = "mntvm_vector_bits"  # block annotation: the profile's vector width (default knob family)


def dot_packs_k4(dot: str) -> bool:
    """Whether dot instruction ``dot`` takes weights as (lanes, 4 inputs) tiles ("none": no)."""
    return dot != "none"


def requant(acc, mult, zp: int, lo: int, hi: int, dtype: str):
    """int32 ``acc`` (bias included) -> ``dtype``: clamp(nearbyint(float32(acc) * mult) + zp, lo, hi)."""
    v = tirx.nearbyint(acc.astype("float32") * mult) + tirx.const(float(zp), "float32")
    v = te.min(te.max(v, tirx.const(float(lo), "float32")), tirx.const(float(hi), "float32"))
    return v.astype(dtype)


def quantize_te(x, scale: float, zp: int, lo: int, hi: int, dtype: str):
    """ONNX QuantizeLinear of fp32 ``x``: saturate(nearbyint(x / scale) + zp) (a true division, as
    numpy's reference does)."""
    s = tirx.const(scale, "float32")
    z, l_, h_ = (tirx.const(float(v), "float32") for v in (zp, lo, hi))

    def f(*i):
        v = tirx.nearbyint(x(*i) / s) + z
        return te.min(te.max(v, l_), h_).astype(dtype)

    return te.compute(x.shape, f, name="quantize")


def _attrs(rule: str, dot: str, bits: int, **extra) -> dict:
    return {"schedule_rule": rule, DOT_KEY: dot, BITS_KEY: int(bits), **extra}


def _epilogue(acc, bias, mult, q):
    """(N, CB, P, V) int32 -> requantized 8-bit; ``q`` = (zp, lo, hi, dtype)."""
    return te.compute(acc.shape, lambda n, cb, p, v: requant(acc[n, cb, p, v] + bias[cb, v], mult[cb, v], *q),
                      name="epilogue")


def _window(h, w, kh_, kw_, stride, pad):
    """(ho, wo, tap): ``tap(p, kh, kw)`` = input row, column and whether inside, for output ``p``."""
    pt, pl, pb, pr = pad
    ho = (h + pt + pb - kh_) // stride + 1
    wo = (w + pl + pr - kw_) // stride + 1

    def tap(p, kh, kw):
        ih = (p // wo) * stride + kh - pt
        iw = (p % wo) * stride + kw - pl
        return ih, iw, tirx.all(ih >= 0, ih < h, iw >= 0, iw < w)

    return ho, wo, tap


def stem_int8_te(data, weight, bias, mult, q, stride, pad, pad_value, bits=512):
    """groups=1 conv from 8-bit NCHW ``data``; weight (OB, C, KH, KW, V); bias/mult (OB, V)."""
    n_, c_, h, w = (int(x) for x in data.shape)
    ob_, _, kh_, kw_, v_ = (int(x) for x in weight.shape)
    ho, wo, tap = _window(h, w, kh_, kw_, stride, pad)
    c = te.reduce_axis((0, c_), "c")
    kh = te.reduce_axis((0, kh_), "kh")
    kw = te.reduce_axis((0, kw_), "kw")
    fill = tirx.const(pad_value, data.dtype)

    def f(n, ob, p, v):
        ih, iw, inside = tap(p, kh, kw)
        x = tirx.if_then_else(inside, data[n, c, ih, iw], fill)
        return te.sum((x.astype("int16") * weight[ob, c, kh, kw, v].astype("int16")).astype("int32"), axis=[c, kh, kw])

    acc = te.compute((n_, ob_, ho * wo, v_), f, name="conv_stem",
                     attrs=_attrs(RULE_STEM8, "none", bits, mntvm_wo=wo))
    return _epilogue(acc, bias, mult, q)


def depthwise_int8_te(data, weight, bias, mult, q, h, w, stride, pad, pad_value, bits=512):
    """Depthwise KHxKW conv of (N, CB, H*W, V) 8-bit ``data``; weight (CB, KH, KW, V)."""
    n_, cb_, _, v_ = data.shape
    _, kh_, kw_, _ = weight.shape
    ho, wo, tap = _window(h, w, kh_, kw_, stride, pad)
    kh = te.reduce_axis((0, kh_), "kh")
    kw = te.reduce_axis((0, kw_), "kw")
    fill = tirx.const(pad_value, data.dtype)

    def f(n, cb, p, v):
        ih, iw, inside = tap(p, kh, kw)
        x = tirx.if_then_else(inside, data[n, cb, ih * w + iw, v], fill)
        return te.sum((x.astype("int16") * weight[cb, kh, kw, v].astype("int16")).astype("int32"), axis=[kh, kw])

    acc = te.compute((n_, cb_, ho * wo, v_), f, name="conv_dw",
                     attrs=_attrs(RULE_DW8, "none", bits, mntvm_wo=wo))
    return _epilogue(acc, bias, mult, q)


def pointwise_int8_te(data, weight, bias, mult, q, dot="none", bits=512):
    """1x1 conv of (N, IB, P, V) 8-bit ``data``; weight (OB, IB, V/4, V, 4) (``dot`` packs k4) or
    (OB, IB, V/4, 4, V); the reduction axes are (ib, k4, i4), input channel ib*V + 4*k4 + i4."""
    n_, ib_, p_, v_ = data.shape
    ob_, _, k4_ = weight.shape[:3]
    ib = te.reduce_axis((0, ib_), "ib")
    k4 = te.reduce_axis((0, k4_), "k4")
    i4 = te.reduce_axis((0, 4), "i4")
    packed = dot_packs_k4(dot)

    def f(n, ob, p, o):
        wv = weight[ob, ib, k4, o, i4] if packed else weight[ob, ib, k4, i4, o]
        return te.sum(data[n, ib, p, k4 * 4 + i4].astype("int32") * wv.astype("int32"), axis=[ib, k4, i4])

    acc = te.compute((n_, ob_, p_, v_), f, name="conv_pw", attrs=_attrs(RULE_PW8, dot, bits))
    return _epilogue(acc, bias, mult, q)


def pool_int8_te(data, p_zero: int, mult: float, q, bits=512):
    """Global average pool of (N, CB, P, V) 8-bit -> (N, CB*V) at the pool's quantization:
    requant(sum_p x - P * z_x) with the scalar ``mult`` = s_x / (s_y * P)."""
    n_, cb_, p_, v_ = data.shape
    v = int(v_)
    p = te.reduce_axis((0, p_), "p")
    s = te.compute((n_, cb_ * v_), lambda n, c: te.sum(data[n, c // v, p, c % v].astype("int32"), axis=p),
                   name="pool_sum", attrs=_attrs(RULE_POOL8, "none", bits))
    m = tirx.const(mult, "float32")
    off = tirx.const(int(p_) * p_zero, "int32")
    return te.compute(s.shape, lambda n, c: requant(s[n, c] - off, m, *q), name="epilogue")


def dense_int8_te(data, weight, bias, mult, n_out, out_q=None, dot="none", bits=512):
    """FC of (N, K) 8-bit ``data``; weight (NB, K/4, V, 4) (``dot`` packs k4) or (NB, K/4, 4, V);
    bias/mult (n_out,) -> fp32 (N, n_out): float32(acc) * mult, or with ``out_q`` = (zp, lo, hi,
    dtype, scale) requantized and dequantized again."""
    n_, k_ = data.shape
    nb_, k4_ = weight.shape[:2]
    v_ = weight.shape[2] if dot_packs_k4(dot) else weight.shape[3]
    k4 = te.reduce_axis((0, k4_), "k4")
    i4 = te.reduce_axis((0, 4), "i4")
    packed = dot_packs_k4(dot)

    def f(n, nb, o):
        wv = weight[nb, k4, o, i4] if packed else weight[nb, k4, i4, o]
        return te.sum(data[n, k4 * 4 + i4].astype("int32") * wv.astype("int32"), axis=[k4, i4])

    acc = te.compute((n_, nb_, v_), f, name="dense", attrs=_attrs(RULE_DENSE8, dot, bits))
    v = int(v_)

    def g(n, j):
        a = acc[n, j // v, j % v] + bias[j]
        if out_q is None:
            return a.astype("float32") * mult[j]
        zp, lo, hi, dtype, scale = out_q
        yq = requant(a, mult[j], zp, lo, hi, dtype)
        return (yq.astype("int32") - zp).astype("float32") * tirx.const(scale, "float32")

    return te.compute((n_, n_out), g, name="epilogue")
