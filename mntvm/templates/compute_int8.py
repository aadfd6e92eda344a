"""The int8 templates' TE computes: ONNX QLinear arithmetic in the blocked layout (N, C/V, P, V).

Activations between layers are 8-bit (the net's act dtype: uint8 on x86) in the same blocked
layout as the fp32 templates (:mod:`.compute`), with ``V`` = 16 channels per block (one zmm of
int32 accumulators). Every conv is one reduction block into int32 accumulators (``schedule_rule``
one of :data:`.registry.INT8_RULES`) followed by one epilogue block that requantizes::

    y = cast(clamp(nearbyint(float32(acc + bias) * mult[c]) + z_y, lo, hi))

No quantization value is an immediate: bias and multiplier are per-channel tensors and
``(z_y, lo, hi, z_x)`` a small float32 tensor per layer (``qp``, :data:`QP_LEN`, integers held
exactly; the pool's 4th entry is ``P * z_x``), so one tuned PrimFunc (and its tuning record)
serves every model of the same shapes and activation dtype. float32, not int32: the epilogue then
takes them as broadcast memory operands; int32 ones were converted again after every store (LLVM
cannot keep them across the 8-bit stores), ~6 more vector instructions per 16 outputs.

The stem reads the input quantized into a padded (N, H+2p, W+2p, 4) pixel-interleaved layout:
each 3x3 tap is then one 4-byte (lanes x 4) dot step like the pointwise ones (9 per output
vector, with the 4th channel's weights zero). The depthwise products are int16 (``|u8 x s8| <=
255 * 128`` fits, exactly; 32 lanes per ``vpmullw`` instead of ``vpmulld``'s slow 16), summed in int32; the pointwise and FC ones are
the dot instruction's (VNNI ``vpdpbusd``) or plain int32 multiply-adds.
``nearbyint`` rounds half to even (as ONNX Runtime's MLAS and numpy's ``rint``); the clamp is
in float32 before the cast, so huge values saturate. The kernels multiply the raw ``x_q`` (not
``x_q - z_x``): ``bias`` already holds ``bias_q - z_x * sum(w)``
(:meth:`QLayer.input_zero_correction`) and the padding holds ``z_x`` (``qp[3]``), which is
exactly ``sum((x_q - z_x) * w) + bias_q``.

Weights (re-packed by :mod:`.lowering_int8`), int8 (the stem and pointwise ones int16 on AVX2,
:func:`pw_pairs`: the values widened once when packed):

* stem (groups=1): ``(O/V, KH, KW, V, 4)`` (dot) or ``(O/V, KH, KW, 4, V)``; depthwise: ``(C/V, KH, KW, V)``,
  or ``(C/V, T2, 2, V)`` (:func:`dw_tap_pairs`: the KH*KW taps in row-major pairs, the last one's
  second zero), or ``(C/V, KH, V, 4)`` (:func:`dw_taps4`: a kernel row's taps, the 4th zero, per
  4-byte dot step), or ``(C/V, KH, 2, V, 2)`` (:func:`dw_pairs`: the same 4 taps as two pairs)
* pointwise ``(O/V, I/V, V/4, V, 4)`` when the block's dot instruction (``mntvm_dot``) takes the
  16 x 4 weight tile of ``dot_16x4_vnni`` (output lanes x 4 consecutive inputs, 64 bytes), else
  ``(O/V, I/V, V/4, 4, V)`` (the 16 output lanes contiguous for plain vector multiply-adds)
* FC: ``(N/V, K/4, V, 4)`` or ``(N/V, K/4, 4, V)`` alike.

Padded channels have zero weights, bias and multiplier: they hold ``z_y`` and never reach a real
output (the next layer's weights for them are zero).
"""
from __future__ import annotations

from tvm import te, tirx
from tvm.script import tirx as T

from mntvm.templates.registry import RULE_DENSE8, RULE_DW8, RULE_POOL8, RULE_PW8, RULE_STEM8

DOT_KEY = "mntvm_dot"  # block annotation: the dot instruction (a key of cpu_int8.DOT_INTRINSICS) or "none"
BITS_KEY = "mntvm_vector_bits"  # block annotation: the profile's vector width (default knob family)
QP_LEN = 4  # float32 params per layer: (z_y, lo, hi, z_x) (pool: P * z_x last)


def dot_16x4_desc(act_dtype: str):
    """The (16 output lanes x 4 inputs) reduction tile the pointwise, stem and FC reductions end in,
    as a TensorIntrin description: ``C[i] += int32(A[k]) * int32(B[i, k])``, ``A`` the 4 activations
    (``act_dtype``: uint8 for VNNI's u8 x s8, int8 for Arm's sdot), ``B`` the (16, 4) weight tile."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), act_dtype, offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i in T.serial(0, 16):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def dot_packs_k4(dot: str) -> bool:
    """Whether dot instruction ``dot`` takes weights as (lanes, 4 inputs) tiles ("none": no)."""
    return dot != "none"


def requant(acc, mult, qp, dtype: str, fminnm: bool = False):
    """int32 ``acc`` (bias included) -> ``dtype``: clamp(nearbyint(float32(acc) * mult) + z_y, lo, hi)
    with ``(z_y, lo, hi)`` = ``qp[0:3]`` (a float32 params tensor, :data:`QP_LEN`).

    ``fminnm``: clamp with ``llvm.maxnum`` / ``llvm.minnum`` (AArch64 ``fmaxnm`` / ``fminnm``, one
    instruction each) instead of max / min, which TVM emits as compare-and-select: the bounds are
    loaded (not constants), so LLVM cannot prove them not NaN and AArch64 gets ``fcmgt`` + ``bif``
    per bound. The same values (the bounds are integers, never NaN). Not on x86, where ``maxps``
    is the select as it is and ``maxnum`` adds a NaN fix-up."""
    z, lo, hi = (qp[i] for i in range(3))
    v = tirx.nearbyint(acc.astype("float32") * mult) + z
    if fminnm:
        return tirx.call_llvm_pure_intrin("float32", "llvm.minnum",
                                          tirx.call_llvm_pure_intrin("float32", "llvm.maxnum", v, lo), hi).astype(dtype)
    return te.min(te.max(v, lo), hi).astype(dtype)


def quantize_te(x, scale, qp, dtype: str, pad: int = 0):
    """ONNX QuantizeLinear of fp32 NCHW ``x`` (C <= 4): saturate(nearbyint(x / scale[0]) + z) (a true
    division, as numpy's reference does), written as (N, H + 2 pad, W + 2 pad, 4): the stem's
    input, padded with ``z`` (= qp[0]) around and in the channels past C, 4 channels (one dot
    step) per pixel."""
    n_, c_, h, w = (int(v) for v in x.shape)
    z, lo, hi = (qp[i] for i in range(3))

    def f(b, i, j, k):
        inside = tirx.all(i >= pad, i < h + pad, j >= pad, j < w + pad, k < c_)
        v = te.min(te.max(tirx.nearbyint(x[b, k, i - pad, j - pad] / scale[0]) + z, lo), hi)
        return tirx.if_then_else(inside, v, z).astype(dtype)

    return te.compute((n_, h + 2 * pad, w + 2 * pad, 4), f, name="quantize")


def _attrs(rule: str, dot: str, bits: int, **extra) -> dict:
    return {"schedule_rule": rule, DOT_KEY: dot, BITS_KEY: int(bits), **extra}


def _epilogue(acc, bias, mult, qp, dtype, fminnm=False):
    """(N, CB, P, V) int32 -> requantized 8-bit ``dtype`` (``qp``: the layer's params); an (N, CB, P,
    V, 2) ``acc`` holds each lane's two pair sums (:func:`pw_pairs`), added here."""
    def total(n, cb, p, v):
        return acc[n, cb, p, v, 0] + acc[n, cb, p, v, 1] if len(acc.shape) == 5 else acc[n, cb, p, v]

    return te.compute(acc.shape[:4], lambda n, cb, p, v: requant(total(n, cb, p, v) + bias[cb, v], mult[cb, v], qp,
                                                                 dtype, fminnm), name="epilogue")


def _out_size(h, w, kh_, kw_, stride, pad):
    """(ho, wo): the output rows and columns of a KHxKW window over (h, w) padded by ``pad``."""
    pt, pl, pb, pr = pad
    return (h + pt + pb - kh_) // stride + 1, (w + pl + pr - kw_) // stride + 1


def stem_int8_te(data, weight, bias, mult, qp, dtype, stride, dot="none", bits=512, fminnm=False):
    """groups=1 KHxKW conv of the padded 8-bit (N, Hp, Wp, 4) ``data`` (:func:`quantize_te`): per
    tap one (lanes x 4 channels) dot step, as the pointwise one; weight (OB, KH, KW, V, 4) (``dot``
    packs k4; int16 with :func:`pw_pairs`, whose accumulators are split in pairs as the pointwise
    conv's) or (OB, KH, KW, 4, V), its 4th input channel zero."""
    n_, hp, wp, _ = (int(x) for x in data.shape)
    ob_, kh_, kw_ = (int(x) for x in weight.shape[:3])
    ho, wo = _out_size(hp, wp, kh_, kw_, stride, (0, 0, 0, 0))
    kh = te.reduce_axis((0, kh_), "kh")
    kw = te.reduce_axis((0, kw_), "kw")
    if pw_pairs(dot):  # split (lane, pair) accumulators and int16 weights, as the pointwise conv
        j = te.reduce_axis((0, 2), "j")
        acc = te.compute((n_, ob_, ho * wo, int(weight.shape[3]), 2), lambda n, ob, p, o, h: te.sum(
            data[n, (p // wo) * stride + kh, (p % wo) * stride + kw, h * 2 + j].astype("int32")
            * weight[ob, kh, kw, o, h * 2 + j].astype("int32"), axis=[kh, kw, j]),
            name="conv_stem", attrs=_attrs(RULE_STEM8, dot, bits, mntvm_wo=wo))
        return _epilogue(acc, bias, mult, qp, dtype, fminnm)
    i4 = te.reduce_axis((0, 4), "i4")
    packed = dot_packs_k4(dot)

    def f(n, ob, p, o):
        x = data[n, (p // wo) * stride + kh, (p % wo) * stride + kw, i4]
        wv = weight[ob, kh, kw, o, i4] if packed else weight[ob, kh, kw, i4, o]
        return te.sum(x.astype("int32") * wv.astype("int32"), axis=[kh, kw, i4])

    acc = te.compute((n_, ob_, ho * wo, weight.shape[3 if packed else 4]), f, name="conv_stem",
                     attrs=_attrs(RULE_STEM8, dot, bits, mntvm_wo=wo))
    return _epilogue(acc, bias, mult, qp, dtype, fminnm)


def dw_taps4(dot: str) -> bool:
    """Whether the depthwise kernel takes its taps four at a time with dot instruction ``dot``: a
    row's 3 (+1 zero-weight) taps of 16 channels as one ``vpdpbusd`` (VNNI only; Arm keeps the
    per-tap widening multiply-adds)."""
    return dot == "vnni"


def dw_pairs(dot: str) -> bool:
    """Whether the depthwise kernel takes its taps two at a time with dot instruction ``dot``: a
    kernel row's 3 (+1 zero-weight) taps as two pairs of columns, each one ``vpmaddwd`` per 8
    channels on the two columns' values interleaved as int16 (AVX2)."""
    return dot == "avx2"


def dw_tap_pairs(act_dtype: str, weight) -> bool:
    """Whether the plain (no dot instruction) depthwise kernel may add two taps' products in int16
    before widening them: exact where |x * w| <= 128 * 127 (int8 activations, weights in
    [-127, 127], as our quantizer makes them; an imported model's -128 weight keeps single taps)."""
    return act_dtype == "int8" and int(weight.min()) >= -127


def depthwise_int8_te(data, weight, bias, mult, qp, h, w, stride, pad, bits=512, dot="none", k=3,
                      tap_pairs=False, fminnm=False):
    """Depthwise KHxKW conv of (N, CB, H*W, V) 8-bit ``data``; the padding holds the input's zero
    point ``qp[3]``, in a block ``pad_dw`` (N, CB, Hp, Wp, V) that the schedule fills per task (its
    rows), so the taps read no bounds check. Weight (CB, KH, KW, V): each tap's int16 product
    widened and added; with ``tap_pairs`` (:func:`dw_tap_pairs`; weight (CB, T2, 2, V), a ``k`` x
    ``k`` kernel) two taps' products added in int16 first, then widened once (AArch64: ``smull`` +
    ``smlal`` and one ``saddw`` per 4 lanes for two taps, instead of two of each). With
    :func:`dw_taps4` (CB, KH, V, 4), with :func:`dw_pairs` (CB, KH, 2, V, 2) (KW <= 4, the taps past
    KW zero): a kernel row's 4 consecutive padded columns are 64 contiguous bytes, one dot step.
    ``fminnm``: the requantization's clamp (:func:`requant`)."""
    if dw_taps4(dot) or dw_pairs(dot):
        return _depthwise_taps4(data, weight, bias, mult, qp, h, w, stride, pad, bits, dot, fminnm)
    n_, cb_, _, v_ = data.shape
    kh_, kw_ = (k, k) if tap_pairs else (int(weight.shape[1]), int(weight.shape[2]))
    ho, wo = _out_size(h, w, kh_, kw_, stride, pad)
    pt, pl = pad[0], pad[1]
    hp, wp = (ho - 1) * stride + kh_, (wo - 1) * stride + kw_
    fill = qp[3].astype(data.dtype)

    def padded(n, cb, i, j, v):
        inside = tirx.all(i >= pt, i < h + pt, j >= pl, j < w + pl)
        return tirx.if_then_else(inside, data[n, cb, (i - pt) * w + j - pl, v], fill)

    xp = te.compute((n_, cb_, hp, wp, v_), padded, name="pad_dw")
    if tap_pairs:
        taps = kh_ * kw_
        t2 = te.reduce_axis((0, (taps + 1) // 2), "t2")

        def x_at(n, p, cb, v, t):
            t = tirx.min(t, taps - 1)  # past the last tap: its weight is zero
            return xp[n, cb, (p // wo) * stride + t // kw_, (p % wo) * stride + t % kw_, v].astype("int16")

        def f(n, cb, p, v):
            two = (x_at(n, p, cb, v, 2 * t2) * weight[cb, t2, 0, v].astype("int16")
                   + x_at(n, p, cb, v, 2 * t2 + 1) * weight[cb, t2, 1, v].astype("int16"))
            return te.sum(two.astype("int32"), axis=[t2])
    else:
        kh = te.reduce_axis((0, kh_), "kh")
        kw = te.reduce_axis((0, kw_), "kw")

        def f(n, cb, p, v):
            x = xp[n, cb, (p // wo) * stride + kh, (p % wo) * stride + kw, v]
            return te.sum((x.astype("int16") * weight[cb, kh, kw, v].astype("int16")).astype("int32"), axis=[kh, kw])

    acc = te.compute((n_, cb_, ho * wo, v_), f, name="conv_dw",
                     attrs=_attrs(RULE_DW8, "none", bits, mntvm_wo=wo))
    return _epilogue(acc, bias, mult, qp, data.dtype, fminnm)


def _depthwise_taps4(data, weight, bias, mult, qp, h, w, stride, pad, bits, dot, fminnm=False):
    """:func:`depthwise_int8_te` with weight (CB, K, V, 4) (a square K x K kernel): a padding
    block ``pad_dw`` (N, CB, Hp, Wp, V) (Wp also covers the zero-weight 4th tap of the last
    column), then per kernel row one dot step over 4 consecutive padded columns. With
    :func:`dw_pairs` (weight (CB, K, 2, V, 2)) the padding block is ``pad_pairs`` (N, CB, Hp, Wp - 1,
    V) int32: at column ``j`` each lane's value there (low 16 bits) and in the next column (high), the
    operand of ``vpmaddwd`` as it is loaded; a kernel row is then two steps (columns ``j`` and
    ``j + 2``)."""
    n_, cb_, _, v_ = data.shape
    k_ = int(weight.shape[1])
    ho, wo = _out_size(h, w, k_, k_, stride, pad)
    pt, pl = pad[0], pad[1]
    hp, wp = (ho - 1) * stride + k_, max((wo - 1) * stride + 4, w + pl)
    fill = qp[3].astype(data.dtype)

    def padded(n, cb, i, j, v):
        inside = tirx.all(i >= pt, i < h + pt, j >= pl, j < w + pl)
        return tirx.if_then_else(inside, data[n, cb, (i - pt) * w + j - pl, v], fill)

    kh = te.reduce_axis((0, k_), "kh")
    if dw_pairs(dot):
        def pair(n, cb, i, j, v):  # the 8-bit values at columns j and j + 1 as two int16 halves
            return padded(n, cb, i, j, v).astype("int32") | (padded(n, cb, i, j + 1, v).astype("int32") << 16)

        xp = te.compute((n_, cb_, hp, wp - 1, v_), pair, name="pad_pairs")
        t2 = te.reduce_axis((0, 2), "t2")

        def f(n, cb, p, v):
            x = xp[n, cb, (p // wo) * stride + kh, (p % wo) * stride + 2 * t2, v]
            return te.sum((x & 0xFFFF) * weight[cb, kh, t2, v, 0].astype("int32")
                          + (x >> 16) * weight[cb, kh, t2, v, 1].astype("int32"), axis=[kh, t2])
    else:
        xp = te.compute((n_, cb_, hp, wp, v_), padded, name="pad_dw")
        k4 = te.reduce_axis((0, 4), "k4")

        def f(n, cb, p, v):
            x = xp[n, cb, (p // wo) * stride + kh, (p % wo) * stride + k4, v]
            return te.sum(x.astype("int32") * weight[cb, kh, v, k4].astype("int32"), axis=[kh, k4])

    acc = te.compute((n_, cb_, ho * wo, v_), f, name="conv_dw",
                     attrs=_attrs(RULE_DW8, dot, bits, mntvm_wo=wo))
    return _epilogue(acc, bias, mult, qp, data.dtype, fminnm)


def pw_pairs(dot: str) -> bool:
    """Whether the pointwise conv with dot instruction ``dot`` sums input pairs into split
    accumulators (:func:`pointwise_int8_te`): AVX2's ``vpmaddwd`` (x86 without VNNI)."""
    return dot == "avx2"


def pointwise_int8_te(data, weight, bias, mult, qp, dot="none", bits=512, fminnm=False):
    """1x1 conv of (N, IB, P, V) 8-bit ``data``; weight (OB, IB, V/4, V, 4) (``dot`` packs k4) or
    (OB, IB, V/4, 4, V); the reduction axes are (ib, k4, i4), input channel ib*V + 4*k4 + i4.

    With :func:`pw_pairs` the int32 accumulators are (N, OB, P, V, 2): lane ``o``'s sums over the
    first and the second pair of each 4 inputs (axes (ib, k4, j), input channel ib*V + 4*k4 + 2h + j),
    added in the epilogue. That is ``vpmaddwd``'s output as it comes (two pair sums per lane), so
    the reduction needs no horizontal add; and the weights come int16 (the int8 values widened when
    packed, :mod:`.lowering_int8`), ``vpmaddwd``'s memory operand as they are. 1.0/224's pointwise
    layers on Zen 2, 1 thread, alone: 46-48 GOP/s folding the pairs in each step, 76-89 with split
    accumulators, 87-95 with int16 weights too (exact in every case)."""
    n_, ib_, p_, v_ = data.shape
    ob_, _, k4_ = weight.shape[:3]
    ib = te.reduce_axis((0, ib_), "ib")
    k4 = te.reduce_axis((0, k4_), "k4")
    if pw_pairs(dot):
        j = te.reduce_axis((0, 2), "j")
        acc = te.compute((n_, ob_, p_, v_, 2), lambda n, ob, p, o, h: te.sum(
            data[n, ib, p, k4 * 4 + h * 2 + j].astype("int32") * weight[ob, ib, k4, o, h * 2 + j].astype("int32"),
            axis=[ib, k4, j]), name="conv_pw", attrs=_attrs(RULE_PW8, dot, bits))
        return _epilogue(acc, bias, mult, qp, data.dtype, fminnm)
    i4 = te.reduce_axis((0, 4), "i4")
    packed = dot_packs_k4(dot)

    def f(n, ob, p, o):
        wv = weight[ob, ib, k4, o, i4] if packed else weight[ob, ib, k4, i4, o]
        return te.sum(data[n, ib, p, k4 * 4 + i4].astype("int32") * wv.astype("int32"), axis=[ib, k4, i4])

    acc = te.compute((n_, ob_, p_, v_), f, name="conv_pw", attrs=_attrs(RULE_PW8, dot, bits))
    return _epilogue(acc, bias, mult, qp, data.dtype, fminnm)


def pool_int8_te(data, mult, qp, dtype, bits=512, fminnm=False):
    """Global average pool of (N, CB, P, V) 8-bit -> (N, CB*V) ``dtype`` at the pool's quantization:
    requant(sum_p x - qp[3]) with ``qp[3]`` = P * z_x and the scalar ``mult[0]`` = s_x / (s_y * P)."""
    n_, cb_, p_, v_ = data.shape
    v = int(v_)
    p = te.reduce_axis((0, p_), "p")
    s = te.compute((n_, cb_ * v_), lambda n, c: te.sum(data[n, c // v, p, c % v].astype("int32"), axis=p),
                   name="pool_sum", attrs=_attrs(RULE_POOL8, "none", bits))
    return te.compute(s.shape, lambda n, c: requant(s[n, c] - qp[3].astype("int32"), mult[0], qp, dtype, fminnm), name="epilogue")


def dense_int8_te(data, weight, bias, mult, n_out, out_q=None, dot="none", bits=512, fminnm=False):
    """FC of (N, K) 8-bit ``data``; weight (NB, K/4, V, 4) (``dot`` packs k4) or (NB, K/4, 4, V);
    bias/mult (n_out,) -> fp32 (N, n_out): float32(acc) * mult, or with ``out_q`` = (qp, dtype,
    scale) (int32 params, the output dtype, a float32 (1,) scale tensor) requantized and
    dequantized again."""
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
        qp, dtype, scale = out_q
        yq = requant(a, mult[j], qp, dtype, fminnm)
        return (yq.astype("float32") - qp[0]) * scale[0]

    return te.compute((n_, n_out), g, name="epilogue")
