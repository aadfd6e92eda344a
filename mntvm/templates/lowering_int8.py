"""A :class:`QuantizedNet` lowered to a Relax module of our int8 template PrimFuncs.

``lower_int8(net, profile)`` builds Relax ``main(data fp32 (N, 3, R, R)) -> probs fp32 (N, classes)``
directly (no pattern matching: the net is already a list of integer layers)::

    quantize (fp32 NCHW -> 8-bit NCHW) -> stem -> 13 x (depthwise, pointwise) -> pool -> FC -> softmax

every conv a template of :mod:`.compute_int8` with its requantization in the same PrimFunc, the
activations 8-bit in the blocked layout (N, C/16, H*W, 16) in between. It computes
:func:`mntvm.model.quantized.forward_int8`'s arithmetic exactly (same float32 multipliers,
round half to even, saturating clamps, padding at the input zero point).

The dot instruction of the pointwise and FC reductions is chosen here from the target
(:func:`dot_for`) and recorded on their blocks (``mntvm_dot``), since MetaSchedule rules do not
see the target; the weights are packed to match it. Where the target has AMX-INT8 (:func:`amx_for`)
the pointwise layers of P >= 16 positions are the hand-written AMX kernel instead
(:func:`.amx_int8.pointwise_int8_amx`: same name ``mntvm_pw8``, parameters, weight packing and
output; scheduled, no knobs, no tuning task). The module is unscheduled but for the input
quantization (:func:`.cpu_int8.schedule_quantize`, no knobs) and those AMX kernels: ready for
:func:`.defaults.apply_default_schedules`, a tuning database, task extraction
(:func:`.registry.tunable_tasks`) or ``tvm.compile``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tvm
from tvm import relax

from mntvm.core.errors import MntvmError
from mntvm.model.quantized import QLayer, QuantizedNet, qrange
from mntvm.templates.amx_int8 import amx_supported, pointwise_int8_amx
from mntvm.templates.compute_int8 import (dense_int8_te, depthwise_int8_te, dot_packs_k4, dw_pairs, dw_tap_pairs, dw_taps4,
                                          pointwise_int8_te, pool_int8_te, pw_pairs, quantize_te, stem_int8_te)
from mntvm.templates.arm_int8 import SDOT
from mntvm.templates.cpu_int8 import AVX2, DOT_INTRINSICS, VNNI, schedule_quantize
from mntvm.templates.lowering import legalize_and_fuse

V = 16  # channels per block: one vector of 16 int32 accumulators

# target feature(s) -> dot instruction, first match wins; activation dtype must match the entry's
_DOT_FEATURES = ((("avx512vnni",), VNNI), (("avx2",), AVX2))


def _is_aarch64(target: tvm.target.Target) -> bool:
    return bool(target.attrs.get("feature.is_aarch64", False))


def dot_for(target, act_dtype: str) -> str:
    """The dot instruction (a key of :data:`.cpu_int8.DOT_INTRINSICS`) for ``target`` multiplying
    ``act_dtype`` activations, or "none" (plain widening multiply-adds)."""
    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    if target.kind.name != "llvm":
        return "none"
    if _is_aarch64(target):  # Arm: sdot (s8 x s8) where +dotprod
        has = tvm.target.codegen.llvm_cpu_has_features(["dotprod"], target)
        return SDOT if has and act_dtype == DOT_INTRINSICS[SDOT][2] else "none"
    for feats, dot in _DOT_FEATURES:
        if DOT_INTRINSICS[dot][2] == act_dtype and all(
                tvm.target.codegen.llvm_cpu_has_features([f], target) for f in feats):
            return dot
    return "none"


_AMX_FEATURES = ("amx-tile", "amx-int8")  # tdpbusd: u8 x s8 -> int32 tiles


def amx_for(target, act_dtype: str) -> bool:
    """Whether the pointwise layers for ``target`` with ``act_dtype`` activations use the AMX-INT8
    kernel (:mod:`.amx_int8`): an x86 LLVM target with ``amx-tile`` and ``amx-int8`` (e.g. mcpu
    sapphirerapids, emeraldrapids) for Linux (the kernel requests the AMX state with a Linux
    syscall) and uint8 activations (``tdpbusd`` multiplies u8 x s8)."""
    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    if target.kind.name != "llvm" or act_dtype != "uint8" or _is_aarch64(target):
        return False
    triple = str(target.attrs.get("mtriple", ""))
    if triple and (not triple.startswith("x86_64") or "linux" not in triple):
        return False
    return all(tvm.target.codegen.llvm_cpu_has_features([f], target) for f in _AMX_FEATURES)


def pointwise_kernel(target, act_dtype: str) -> str:
    """What the pointwise layers of an int8 build for ``target`` run on: "amx" (:func:`amx_for`;
    layers of fewer than 16 positions keep the dot template), else the dot instruction
    (:func:`dot_for`: "vnni", "avx2", "sdot") or "none"."""
    return "amx" if amx_for(target, act_dtype) else dot_for(target, act_dtype)


def _pad(a: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """``a`` zero-padded along ``axis`` to ``n``."""
    width = [(0, 0)] * a.ndim
    width[axis] = (0, n - a.shape[axis])
    return np.pad(a, width)


def _up(n: int) -> int:
    return -(-n // V) * V


def _lanes(a: np.ndarray) -> np.ndarray:
    """(C, ...) -> (C'/V, ..., V) with C zero-padded to C' (a multiple of V), lanes innermost."""
    a = _pad(a, _up(a.shape[0]))
    return np.moveaxis(a.reshape((-1, V) + a.shape[1:]), 1, -1).copy()


def _k4(w: np.ndarray, packed: bool) -> np.ndarray:
    """(O, I) int8 -> (O'/V, I'/4, V, 4) (``packed``: dot tiles) or (O'/V, I'/4, 4, V)."""
    o, i = w.shape
    w = _pad(_pad(w, _up(o), 0), _up(i), 1)
    w = w.reshape(_up(o) // V, V, _up(i) // 4, 4)
    return np.ascontiguousarray(w.transpose(0, 2, 1, 3) if packed else w.transpose(0, 2, 3, 1))


def _epilogue_consts(layer: QLayer):
    """(bias - z_x * sum(w), multiplier) per output channel, lane-blocked, padded with zeros."""
    bias = layer.bias.astype(np.int64) - layer.input_zero_correction().astype(np.int64)
    return (relax.const(_lanes(bias.astype(np.int32))), relax.const(_lanes(layer.multiplier().astype(np.float32))))


def _qp(out_zp: int, lo: int, hi: int, last: int):
    """A layer's params tensor (:data:`.compute_int8.QP_LEN`): (z_y, lo, hi, z_x or P * z_x), integers
    held exactly in float32 (the requantization uses them as floats: an embedded broadcast operand)."""
    return relax.const(np.array([out_zp, lo, hi, last], np.float32))


def _layer_qp(layer: QLayer):
    return _qp(int(layer.output.zero_point), *layer.out_range(), int(layer.input.zero_point))


def _f32(v):
    return relax.const(np.array([v], np.float32))


def _stem_weight(w: np.ndarray, packed: bool) -> np.ndarray:
    """(O, C <= 4, KH, KW) -> (O'/V, KH, KW, V, 4) (``packed``) or (O'/V, KH, KW, 4, V), C padded to 4."""
    w = _pad(_pad(w, _up(w.shape[0]), 0), 4, 1)
    w = w.reshape((-1, V) + w.shape[1:])  # (OB, V, 4, KH, KW)
    return np.ascontiguousarray(w.transpose(0, 3, 4, 1, 2) if packed else w.transpose(0, 3, 4, 2, 1))


def _emit_layer(bb: relax.BlockBuilder, layer: QLayer, x, hw: int, dot: str, bits: int, amx: bool = False,
                fminnm: bool = False):
    """One conv layer on blocked (or, for the stem, NCHW) ``x`` of spatial size ``hw``; ``amx``:
    pointwise layers the AMX kernel supports are that kernel; ``fminnm``: the requantization's
    clamp as :func:`.compute_int8.requant` takes it on AArch64."""
    bias, mult = _epilogue_consts(layer)
    qp = _layer_qp(layer)
    p = layer.padding
    w = layer.weight
    if layer.kind == "conv":  # x: the padded (N, H+2p, W+2p, 4) input of quantize_te
        ws = _stem_weight(w, dot_packs_k4(dot))
        wp = relax.const(ws.astype(np.int16) if pw_pairs(dot) else ws)  # pairs: int16, as the pointwise
        return bb.emit_te(lambda d, w_, b, m, q: stem_int8_te(d, w_, b, m, q, layer.output.dtype, layer.stride,
                                                              dot, bits, fminnm),
                          x, wp, bias, mult, qp, primfunc_name_hint="mntvm_stem8")
    if layer.kind == "depthwise":
        wl = _lanes(w[:, 0])  # (CB, KH, KW, V)
        dw_dot = dot if (dw_taps4(dot) or dw_pairs(dot)) and w.shape[2] == w.shape[3] <= 4 else "none"
        if dw_dot != "none":  # (CB, KH, V, 4): a kernel row's taps per dot step, those past KW zero
            wl = _pad(wl.transpose(0, 1, 3, 2), 4, axis=3)
            if dw_pairs(dw_dot):  # (CB, KH, 2, V, 2): the row's two pairs of taps, each 16 lanes x 2
                wl = wl.reshape(wl.shape[:3] + (2, 2)).transpose(0, 1, 3, 2, 4)
        k = int(w.shape[2])
        pairs = dw_dot == "none" and w.shape[2] == w.shape[3] and dw_tap_pairs(layer.input.dtype, w)
        if pairs:  # (CB, T2, 2, V): the k*k taps in row-major pairs, the last one's second zero
            taps = wl.reshape(wl.shape[0], k * k, V)
            wl = _pad(taps, 2 * ((k * k + 1) // 2), axis=1).reshape(wl.shape[0], -1, 2, V)
        wp = relax.const(np.ascontiguousarray(wl))
        return bb.emit_te(lambda d, w_, b, m, q: depthwise_int8_te(d, w_, b, m, q, hw, hw, layer.stride,
                                                                   (p, p, p, p), bits, dw_dot, k, pairs,
                                                                   fminnm),
                          x, wp, bias, mult, qp, primfunc_name_hint="mntvm_dw8")
    n_, ib_, p_, _ = (int(v) for v in x.ty.shape.values)
    ob_ = _up(w.shape[0]) // V
    use_amx = amx and amx_supported(n_, ib_, p_, ob_)
    wk = _k4(w[:, :, 0, 0], use_amx or dot_packs_k4(dot))  # (OB, IB*4, ...) -> (OB, IB, 4, ...)
    wk = wk.reshape((wk.shape[0], -1, V // 4) + wk.shape[2:])
    # pairs (AVX2): int16, vpmaddwd's operand as loaded (:func:`.compute_int8.pointwise_int8_te`)
    wp = relax.const(wk.astype(np.int16) if pw_pairs(dot) and not use_amx else wk)
    if use_amx:  # the AMX kernel: VNNI-packed weights (OB, IB, 4, V, 4), same parameters and output
        gv = bb.add_func(pointwise_int8_amx(n_, ib_, p_, ob_), "mntvm_pw8")
        return bb.emit(relax.call_tir(gv, [x, wp, bias, mult, qp],
                                      relax.TensorType((n_, ob_, p_, V), layer.output.dtype)))
    return bb.emit_te(lambda d, w_, b, m, q: pointwise_int8_te(d, w_, b, m, q, dot, bits, fminnm),
                      x, wp, bias, mult, qp, primfunc_name_hint="mntvm_pw8")


def lower_int8(net: QuantizedNet, profile, expose: Sequence[str] = ()) -> tvm.IRModule:
    """The int8 network for ``profile``'s target as an unscheduled Relax module of our templates.

    ``expose`` (layer names, ``"input"`` or ``"pool"``): ``main`` returns ``(probs, *those
    outputs)`` instead of ``probs``, each quantized output as computed (conv layers blocked
    (N, C'/16, H*W, 16), the input padded and pixel-interleaved (N, H+2p, W+2p, 4), the pool
    (N, C')) — for checking layer by layer.
    """
    if profile.is_gpu:
        raise MntvmError(f"target '{profile.name}' is a GPU: the int8 templates are CPU only")
    target = profile.tvm_target()
    dot = dot_for(target, net.act_dtype)
    amx = amx_for(target, net.act_dtype)
    bits = int(profile.vector_bits)
    fminnm = _is_aarch64(target)  # the requantization's clamp as fmaxnm / fminnm
    cfg = net.cfg
    known = {"input", "pool"} | {l.name for l in net.layers}
    unknown = [n for n in expose if n not in known]
    if unknown:
        raise MntvmError(f"cannot expose {unknown[0]!r}: not a layer of the quantized network")
    bb = relax.BlockBuilder()
    data = relax.Var("data", relax.TensorType(cfg.input_shape, "float32"))
    seen = {}
    with bb.function("main", [data]):
        with bb.dataflow():
            q_in = net.input
            lo, hi = qrange(q_in.dtype)
            z_in = int(q_in.zero_point)
            x = bb.emit_te(quantize_te, data, _f32(q_in.scale), _qp(z_in, lo, hi, z_in), q_in.dtype,
                           net.layers[0].padding, primfunc_name_hint="mntvm_quantize")
            seen["input"] = x
            hw = cfg.resolution
            for layer in net.layers[:-1]:
                x = _emit_layer(bb, layer, x, hw, dot, bits, amx, fminnm)
                hw = (hw + 2 * layer.padding - layer.weight.shape[-1]) // layer.stride + 1
                seen[layer.name] = x
            fc = net.layers[-1]
            last = net.layers[-2].output
            p_mult = np.float32(last.scale) / (np.float32(fc.input.scale) * np.float32(hw * hw))
            pool_qp = _qp(int(fc.input.zero_point), *qrange(fc.input.dtype), hw * hw * int(last.zero_point))
            x = bb.emit_te(pool_int8_te, x, _f32(p_mult), pool_qp, fc.input.dtype, bits,
                           fminnm, primfunc_name_hint="mntvm_pool8")
            seen["pool"] = x
            n_out = fc.weight.shape[0]
            bias = fc.bias.astype(np.int64) - fc.input_zero_correction().astype(np.int64)
            wfc = relax.const(_k4(fc.weight, dot_packs_k4(dot)))
            fc_args = [x, wfc, relax.const(bias.astype(np.int32)), relax.const(fc.multiplier().astype(np.float32))]
            if fc.output is None:
                logits = bb.emit_te(dense_int8_te, *fc_args, n_out, None, dot, bits, primfunc_name_hint="mntvm_dense8")
            else:
                logits = bb.emit_te(lambda d, w_, b, m, q, s_: dense_int8_te(d, w_, b, m, n_out, (q, fc.output.dtype, s_),
                                                                             dot, bits, fminnm),
                                    *fc_args, _layer_qp(fc), _f32(fc.output.scale), primfunc_name_hint="mntvm_dense8")
            seen["fc"] = logits
            probs = bb.emit(relax.op.nn.softmax(logits, axis=-1))
            out = probs if not expose else relax.Tuple([probs] + [seen[n] for n in expose])
            out = bb.emit_output(out)
        bb.emit_func_output(out)
    mod = legalize_and_fuse(bb.get())
    gv = mod.get_global_var("mntvm_quantize")
    mod[gv] = schedule_quantize(mod[gv])  # fixed schedule, not a tuning task
    return mod
