"""The templates' TE computes, in the blocked layout (N, C/V, P, V) of :mod:`.lowering`.

Layout
------
Every activation between the stem and the pooling is kept in one blocked layout,
``(N, C/V, H*W, V)`` ("NCPc"): channels in blocks of ``V`` (the vector width in fp32 lanes:
16 on AVX-512, 8 on AVX2, 4 on NEON and CUDA), spatial H and W flattened into one axis ``P``
(the pointwise kernels tile it directly; depthwise kernels split it back into rows and columns).
Channel counts that are not a multiple of ``V`` are zero-padded (zero weights and bias, so the
padded channels stay 0 through ReLU/ReLU6 and the depthwise layers). The stem reads the NCHW
input directly and the global pooling writes NCHW ``(N, C, 1, 1)``: there is no layout
transform anywhere in the network. Weights (re-packed by the lowering):

* stem conv (groups=1, any kernel): ``(O/V, C, KH, KW, V)``
* depthwise: ``(C/V, KH, KW, V)``
* pointwise 1x1: ``(O/V, I/V, V_i, V_o)``
* FC (``matmul`` with a constant ``(K, N)`` weight): ``(N/V, K, V)``

Every template is a ``te.compute`` reduction block carrying ``schedule_rule`` (one of
:data:`.registry.RULES`) followed by one epilogue block (``+bias``, activation; for the FC the
un-padding as well). The exceptions: :func:`dw_pointwise_te` (rule ``mntvm_dwpw``, CPUs) is a
depthwise conv and the pointwise conv after it in one PrimFunc: the depthwise blocks carry no
rule, the pointwise reduction carries the fused rule, whose schedule places the depthwise output
tile by tile inside the pointwise loops; and the stem of the AVX2 lowering reads a padded copy of
its input made by a block before it (:func:`stem_te` with ``extra``). The AVX2 lowering also
starts each conv's sum from its bias (:mod:`.bias_init`), its epilogue then adds none.
"""
from __future__ import annotations

import tvm
from tvm import te, tirx

from mntvm.templates.registry import RULE_DENSE, RULE_DW, RULE_DWPW, RULE_POOL, RULE_PW, RULE_STEM


def _act(kind: str | None, x, dtype, lo=None, hi=None):
    if kind is None:
        return x
    if kind == "relu":
        return tvm.te.max(x, tirx.const(0.0, dtype))
    if kind == "clip":
        return tvm.te.min(tvm.te.max(x, tirx.const(lo, dtype)), tirx.const(hi, dtype))
    raise ValueError(kind)


def _epilogue(conv, bias, act, bias_index, shape=None):
    """``act(conv + bias)`` over ``shape`` (default: all of ``conv``)."""
    def f(*idx):
        v = conv(*idx)
        if bias is not None:
            v = v + bias[bias_index(idx)]
        return _act(act[0] if act else None, v, conv.dtype, *(act[1:] if act else ()))

    return te.compute(conv.shape if shape is None else shape, f, name="epilogue")


def pointwise_te(data, weight, bias=None, act=None, rule=RULE_PW, positions=None):
    """1x1 conv, stride 1. data (N, IB, P, V), weight (OB, IB, V, V), bias (OB, V). The output has
    the first ``positions`` of the P positions (default: all)."""
    n_, ib_, p_, v_ = data.shape
    ob_ = weight.shape[0]
    ib = te.reduce_axis((0, ib_), "ib")
    vi = te.reduce_axis((0, v_), "vi")
    conv = te.compute(
        (n_, ob_, p_, v_),
        lambda n, ob, p, vo: te.sum(data[n, ib, p, vi] * weight[ob, ib, vi, vo], axis=[ib, vi]),
        name="conv_pw",
        attrs={"schedule_rule": rule},
    )
    shape = None if positions is None else (n_, ob_, positions, v_)
    return _epilogue(conv, bias, act, lambda i: (i[1], i[3]), shape)


def _window(h, w, kh_, kw_, stride, pad):
    """(ho, wo, tap) of a strided, zero-padded KHxKW window; ``tap(p, kh, kw)`` gives the input row,
    column and whether it is inside the image for output position ``p`` (= row * wo + col)."""
    pt, pl, pb, pr = pad
    ho = (h + pt + pb - kh_) // stride + 1
    wo = (w + pl + pr - kw_) // stride + 1

    def tap(p, kh, kw):
        ih = (p // wo) * stride + kh - pt
        iw = (p % wo) * stride + kw - pl
        return ih, iw, tirx.all(ih >= 0, ih < h, iw >= 0, iw < w)

    return ho, wo, tap


def depthwise_te(data, weight, bias, act, h, w, stride, pad, rule=RULE_DW, extra=0):
    """Depthwise KHxKW conv. data (N, CB, H*W, V), weight (CB, KH, KW, V); pad = (top, left).
    ``rule=None``: the block carries no rule (the fused template schedules it). ``extra``
    positions past the map's end are computed too, from the zero padding below it."""
    n_, cb_, _, v_ = data.shape
    _, kh_, kw_, _ = weight.shape
    ho, wo, tap = _window(h, w, kh_, kw_, stride, pad)
    kh = te.reduce_axis((0, kh_), "kh")
    kw = te.reduce_axis((0, kw_), "kw")

    def f(n, cb, p, v):
        ih, iw, inside = tap(p, kh, kw)
        x = tirx.if_then_else(inside, data[n, cb, ih * w + iw, v], tirx.const(0.0, data.dtype))
        return te.sum(x * weight[cb, kh, kw, v], axis=[kh, kw])

    attrs = {"mntvm_wo": wo} if rule is None else {"schedule_rule": rule, "mntvm_wo": wo}
    conv = te.compute((n_, cb_, ho * wo + extra, v_), f, name="conv_dw", attrs=attrs)
    return _epilogue(conv, bias, act, lambda i: (i[1], i[3]))


def dw_pointwise_te(data, w_dw, b_dw, act_dw, h, w, stride, pad, w_pw, b_pw, act_pw, extra=0):
    """A depthwise conv (+bias, activation) and the pointwise conv that consumes it, in one
    PrimFunc: ``conv_dw``, its epilogue, ``conv_pw`` (rule ``mntvm_dwpw``), its epilogue. The
    schedule computes the depthwise output a few rows at a time, right before the pointwise
    tiles that read it, so it never leaves the cache. With ``extra`` > 0 both convs run that many
    positions past the map's end (values the epilogue never reads): a register tile or a
    depthwise tile that runs past the end of a band of rows then stays inside their buffers,
    with no bounds mask in its loops (the ragged tiles of :func:`.cpu.schedule_dw_pointwise`)."""
    dw = depthwise_te(data, w_dw, b_dw, act_dw, h, w, stride, pad, rule=None, extra=extra)
    return pointwise_te(dw, w_pw, b_pw, act_pw, rule=RULE_DWPW,
                        positions=int(dw.shape[2]) - extra if extra else None)


def stem_te(data, weight, bias, act, stride, pad, extra=0):
    """groups=1 conv from plain NCHW input. data (N, C, H, W), weight (OB, C, KH, KW, V).

    With ``extra`` > 0 (the families with ragged register tiles, :func:`.cpu.stem_extra_positions`)
    the conv reads a zero-padded copy of the input instead (:func:`_stem_padded`) and runs ``extra``
    positions past the map's end, so that its register tiles may run across rows with no bounds
    test in their taps."""
    if extra:
        return _stem_padded(data, weight, bias, act, stride, pad, extra)
    n_, c_, h, w = (int(x) for x in data.shape)
    ob_, _, kh_, kw_, v_ = (int(x) for x in weight.shape)
    ho, wo, tap = _window(h, w, kh_, kw_, stride, pad)
    c = te.reduce_axis((0, c_), "c")
    kh = te.reduce_axis((0, kh_), "kh")
    kw = te.reduce_axis((0, kw_), "kw")

    def f(n, ob, p, v):
        ih, iw, inside = tap(p, kh, kw)
        x = tirx.if_then_else(inside, data[n, c, ih, iw], tirx.const(0.0, data.dtype))
        return te.sum(x * weight[ob, c, kh, kw, v], axis=[c, kh, kw])

    conv = te.compute((n_, ob_, ho * wo, v_), f, name="conv_stem",
                      attrs={"schedule_rule": RULE_STEM, "mntvm_wo": wo})
    return _epilogue(conv, bias, act, lambda i: (i[1], i[3]))


def _stem_padded(data, weight, bias, act, stride, pad, extra):
    """The stem conv over its flat output positions and ``extra`` more, from ``stem_pad``: the input
    with its zero padding written out (the rows the positions reach; ``V`` zero columns before each
    row, so that the copy moves whole aligned vectors, and a row length that is a multiple of ``V``).
    The taps then read it with no bounds test, and the epilogue stores the map's positions only."""
    n_, c_, h, w = (int(x) for x in data.shape)
    ob_, _, kh_, kw_, v_ = (int(x) for x in weight.shape)
    ho, wo, _ = _window(h, w, kh_, kw_, stride, pad)
    pt, pl = pad[0], pad[1]
    rows = -(-(ho * wo + extra) // wo)
    left = v_
    hp = (rows - 1) * stride + kh_
    wp = -(-max((wo - 1) * stride + kw_ - pl + left, w + left) // v_) * v_
    padded = te.compute(
        (n_, c_, hp, wp),
        lambda n, c, i, j: tirx.if_then_else(tirx.all(i >= pt, i < h + pt, j >= left, j < w + left),
                                             data[n, c, i - pt, j - left], tirx.const(0.0, data.dtype)),
        name="stem_pad")
    c = te.reduce_axis((0, c_), "c")
    kh = te.reduce_axis((0, kh_), "kh")
    kw = te.reduce_axis((0, kw_), "kw")
    conv = te.compute(
        (n_, ob_, ho * wo + extra, v_),
        lambda n, ob, p, v: te.sum(
            padded[n, c, (p // wo) * stride + kh, (p % wo) * stride + kw - pl + left] * weight[ob, c, kh, kw, v],
            axis=[c, kh, kw]),
        name="conv_stem", attrs={"schedule_rule": RULE_STEM, "mntvm_wo": wo})
    return _epilogue(conv, bias, act, lambda i: (i[1], i[3]), (n_, ob_, ho * wo, v_))


def dense_te(data, weight, bias, n_out):
    """FC. data (N, K), weight (NB, K, V), bias (n_out,) -> (N, n_out)."""
    n_, k_ = data.shape
    nb_, _, v_ = weight.shape
    k = te.reduce_axis((0, k_), "k")
    acc = te.compute((n_, nb_, v_), lambda n, nb, v: te.sum(data[n, k] * weight[nb, k, v], axis=k),
                     name="dense", attrs={"schedule_rule": RULE_DENSE})
    v = int(v_)

    def f(n, j):
        x = acc[n, j // v, j % v]
        return x + bias[j] if bias is not None else x

    return te.compute((n_, n_out), f, name="epilogue")


def pool_te(data, c_out):
    """Global average pool of (N, CB, P, V) -> NCHW (N, c_out, 1, 1)."""
    n_, _, p_, v_ = data.shape
    v = int(v_)
    p = te.reduce_axis((0, p_), "p")
    s = te.compute((n_, c_out), lambda n, c: te.sum(data[n, c // v, p, c % v], axis=p),
                   name="pool_sum", attrs={"schedule_rule": RULE_POOL})
    inv = 1.0 / float(int(p_))
    return te.compute((n_, c_out, 1, 1), lambda n, c, i, j: s[n, c] * tirx.const(inv, data.dtype),
                      name="epilogue")


def unblock_te(data, c, h, w):
    """(N, CB, H*W, V) -> NCHW (N, c, h, w): only for consumers we do not lower ourselves."""
    v = int(data.shape[3])
    return te.compute((data.shape[0], c, h, w),
                      lambda n, ci, y, x: data[n, ci // v, y * w + x, ci % v], name="unblock")

