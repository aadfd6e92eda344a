"""The network lowered for our templates: every conv, the pooling and the FC become template PrimFuncs.

``lower_blocked(mod, target, vector_bits)``
    Relax MobileNet (after BN folding, weights bound as constants) -> module of ``call_tir``s in
    the blocked layout of :mod:`.compute`: ``mntvm_conv`` (stem), 13 x (``mntvm_dw*``,
    ``mntvm_pw*``) or, with ``fuse_dw``, 13 x ``mntvm_dwpw*`` (each depthwise conv with the
    pointwise conv that consumes it), ``mntvm_pool``, a reshape, ``mntvm_dense`` and TOPI's softmax. A Relax
    rewrite (``_Lowerer``, a PyExprMutator) matches ``conv2d -> add(const bias) -> clip/relu``
    chains, ``mean``/global ``avg_pool2d`` and ``matmul(x, permute_dims(const))`` (+ bias) and
    emits our computes with ``bb.call_te``, re-packing the weights with numpy; anything else goes
    through ``LegalizeOps`` as usual (if such an op consumes a blocked value, an ``unblock``
    kernel is inserted for it). Then AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR,
    DeadCodeElimination.
``lower(cfg, weights, profile)``
    The same for a target profile: its vector width on CPUs, float4 channel blocks on CUDA.

Build (CPU)::

    target = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2})
    mod = lower_blocked(mod, target, vector_bits=512)   # 256 for AVX2, 128 for NEON
    mod = apply_default_schedules(mod, target)          # after a tuning database's records, if any
    ex = tvm.compile(mod, target=target)                # default relax_pipeline is fine: its
                                                        # LegalizeOps finds nothing left, and
                                                        # RewriteDataflowReshape turns the reshape
                                                        # into a view
    vm = relax.VirtualMachine(ex, tvm.cpu())

Do not pass ``relax_pipeline="zero"`` (it would re-run FuseOps/FuseTIR, harmless, but pointless).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import tvm
from tvm import relax

from mntvm.model.inference import inference_module
from mntvm.model.network import MobileNetConfig
from mntvm.templates.compute import (dense_te, depthwise_te, dw_pointwise_te, pointwise_te, pool_te, stem_te,
                                     unblock_te)
from mntvm.templates.bias_init import bias_into_init
from mntvm.templates.cpu import ragged_extra_positions, ragged_workloads, stem_extra_positions
from mntvm.templates.cuda import VECTOR_BITS
from mntvm.templates.families import family_for


_OP = {}


def _op(name):
    if name not in _OP:
        try:
            _OP[name] = tvm.ir.Op.get(name)
        except Exception:  # noqa: BLE001 - op not registered in this TVM build
            _OP[name] = None
    return _OP[name]


def _is_call(e, name):
    op = _op(name)
    return op is not None and isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.same_as(op)


def _sinfo_shape(e):
    si = e.ty
    return [int(x) for x in si.shape.values]


def _is_pointwise(call, w) -> bool:
    """Whether a conv2d call with constant weight ``w`` (numpy, OIHW) is a 1x1, stride-1, unpadded,
    ungrouped NCHW conv: what :func:`.compute.pointwise_te` computes."""
    a = call.attrs
    return (w is not None and w.shape[2:] == (1, 1) and int(a.groups) == 1
            and str(a.data_layout) == "NCHW" and str(a.kernel_layout) == "OIHW"
            and all(int(x) == 1 for x in (*a.strides, *a.dilation)) and not any(int(x) for x in a.padding))


def _pad_to(n, v):
    return -(-n // v) * v


def _channel_blocked(a: np.ndarray, v: int) -> np.ndarray:
    """``a`` (float32) with axis 0 zero-padded to a multiple of ``v`` and split into blocks of ``v``
    lanes, the lanes innermost: ``(A, ...) -> (A/v, ..., v)``."""
    n = a.shape[0]
    out = np.zeros((_pad_to(n, v),) + a.shape[1:], "float32")
    out[:n] = a
    return np.moveaxis(out.reshape((-1, v) + a.shape[1:]), 1, -1).copy()


@dataclasses.dataclass
class _Blocked:
    var: relax.Expr  # new (N, CB, P, V) value
    c: int
    h: int
    w: int
    nchw: relax.Expr | None = None


class _Graph:
    """The bindings of Relax functions: their values, their consumers, constants behind vars."""

    def __init__(self):
        self.bindings = {}  # var -> value
        self.consumers = {}  # var -> [binding var]

    def add(self, func):
        """Record the bindings of a Relax function."""
        body = func.body
        for blk in body.blocks:
            for b in blk.bindings:
                self.bindings[b.var] = b.value
                for fv in relax.analysis.free_vars(b.value):
                    self.consumers.setdefault(fv, []).append(b.var)
        for fv in relax.analysis.free_vars(body.body):
            self.consumers.setdefault(fv, []).append(None)

    def const(self, e):
        """numpy value of e if it is (a var bound to) a constant, possibly transposed."""
        if isinstance(e, tvm.ir.expr.Constant):
            return e.value.numpy()
        if isinstance(e, relax.Var) and e in self.bindings:
            return self.const(self.bindings[e])
        if _is_call(e, "relax.reshape"):
            a = self.const(e.args[0])
            return None if a is None else a.reshape(_sinfo_shape(e))
        if _is_call(e, "relax.permute_dims"):
            a = self.const(e.args[0])
            if a is None:
                return None
            axes = e.attrs.axes
            return np.transpose(a, None if axes is None else [int(x) for x in axes])
        return None

    def single_consumer(self, var):
        cons = self.consumers.get(var, [])
        if len(cons) != 1 or cons[0] is None:
            return None
        return cons[0]

    def epilogue_chain(self, head, c):
        """Follow head -> add(const bias) -> clip/relu; return (end, bias, act, absorbed)."""
        cur, bias, act, absorbed = head, None, None, []
        nxt = self.single_consumer(cur)
        if nxt is not None and _is_call(self.bindings[nxt], "relax.add"):
            a, b = self.bindings[nxt].args
            other = b if a.same_as(cur) else a
            val = self.const(other) if not other.same_as(cur) else None
            if val is not None and val.size == c and (val.ndim <= 1 or val.shape[-1] == c
                                                      or val.shape[1] == c):
                bias = val.reshape(-1).astype("float32")
                absorbed.append(cur)
                cur = nxt
                nxt = self.single_consumer(cur)
        if nxt is not None:
            val = self.bindings[nxt]
            if _is_call(val, "relax.nn.relu"):
                act = ("relu",)
            elif _is_call(val, "relax.clip"):
                lo, hi = (float(x.value.value) if hasattr(x.value, "value") else float(x.value)
                          for x in val.args[1:3])
                act = ("clip", lo, hi)
            elif _is_call(val, "relax.nn.relu6"):
                act = ("clip", 0.0, 6.0)
            if act is not None:
                absorbed.append(cur)
                cur = nxt
        return cur, bias, act, absorbed


@relax.expr_functor.mutator
class _Lowerer(relax.PyExprMutator):
    """Rewrites a Relax MobileNet's conv/pool/FC chains into calls of our TE computes."""

    def __init__(self, mod: tvm.IRModule, vec: int, fuse_dw: bool = False, dw_extra: int = 0, stem_extra: int = 0,
                 bias_init: bool = False):
        super().__init__(mod)
        self.mod_ = mod
        self.V = vec
        self.fuse_dw = fuse_dw
        self.dw_extra = dw_extra  # positions the fused template computes past the map's end
        self.stem_extra = stem_extra  # and the stem (from a padded copy of its input where > 0)
        self.bias_init = bias_init  # convs start their sums from their bias (:func:`.bias_init.bias_into_init`)
        self.graph = _Graph()
        self.blocked = {}  # old var -> _Blocked
        self.skip = set()  # old vars absorbed into fused ops
        self.pending_dw = {}  # old var -> depthwise TE arguments, emitted fused with its pointwise consumer

    # -- emission helpers ----------------------------------------------------------------------

    def _conv_call(self, fn, *args, primfunc_name_hint: str):
        """``call_te`` of a conv template, its PrimFunc rewritten by :func:`.bias_init.bias_into_init`
        where ``self.bias_init`` (before it is added to the module: identical layers still share one)."""
        if not self.bias_init:
            return self.builder_.call_te(fn, *args, primfunc_name_hint=primfunc_name_hint)
        func, call_args, out = relax.utils.gen_call_tir_inputs(fn, *args)
        gv = self.builder_.add_func(bias_into_init(func), primfunc_name_hint)
        return relax.call_tir(gv, call_args, out)

    def _nchw_of(self, old):
        info = self.blocked[old]
        if info.nchw is None:
            call = self.builder_.call_te(unblock_te, info.var, info.c, info.h, info.w,
                                         primfunc_name_hint="mntvm_unblock")
            info.nchw = self.builder_.emit(call, name_hint=old.name + "_nchw")
        return info.nchw

    def _finish(self, end_var, new_val, c, h, w):
        self.blocked[end_var] = _Blocked(new_val, c, h, w)
        if not isinstance(end_var, relax.DataflowVar):
            out = self.builder_.emit_output(self._nchw_of(end_var), name_hint=end_var.name)
            self.set_var_remap(end_var, out)

    def _vec_bias(self, bias, c):
        return relax.const(_channel_blocked(np.zeros((c,), "float32") if bias is None else bias, self.V))

    def _pointwise_consumer(self, var) -> bool:
        """Whether ``var``'s only consumer is a conv2d that :meth:`_lower_conv` lowers to
        ``pointwise_te`` (:func:`_is_pointwise`), with ``var`` as its data."""
        nxt = self.graph.single_consumer(var)
        if nxt is None or not _is_call(self.graph.bindings[nxt], "relax.nn.conv2d"):
            return False
        call = self.graph.bindings[nxt]
        return call.args[0].same_as(var) and _is_pointwise(call, self.graph.const(call.args[1]))

    # -- per-op lowering -----------------------------------------------------------------------
    def _lower_conv(self, binding) -> bool:
        call = binding.value
        x, wexpr = call.args
        a = call.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
            return False
        if any(int(d) != 1 for d in a.dilation):
            return False
        w = self.graph.const(wexpr)
        if w is None:
            return False
        w = w.astype("float32")
        o, ci_g, kh, kw = w.shape
        groups = int(a.groups)
        strides = [int(s) for s in a.strides]
        pad = [int(p) for p in a.padding]
        if len(pad) == 2:
            pad = pad + pad
        V = self.V
        end, bias, act, absorbed = self.graph.epilogue_chain(binding.var, o)
        is_blocked = x in self.blocked
        n, c, h, wd = _sinfo_shape(x)
        ho = (h + pad[0] + pad[2] - kh) // strides[0] + 1
        wo = (wd + pad[1] + pad[3] - kw) // strides[1] + 1
        bconst = self._vec_bias(bias, o)
        pending = self.pending_dw.pop(x, None)
        if _is_pointwise(call, w) and (is_blocked or pending):
            wi = np.zeros((o, _pad_to(c, V)), "float32")
            wi[:, :c] = w[:, :, 0, 0]
            wp = _channel_blocked(wi, V).reshape(_pad_to(o, V) // V, -1, V, V)  # (OB, IB, Vi, Vo)
            if pending:
                xin, dw_args, wd_, bd_ = pending
                te_call = self._conv_call(
                    lambda d_, w1, b1, w2, b2: dw_pointwise_te(d_, w1, b1, *dw_args, w2, b2, act, self.dw_extra),
                    xin, wd_, bd_, relax.const(wp), bconst, primfunc_name_hint="mntvm_dwpw")
            else:
                xin = self.blocked[x].var
                te_call = self._conv_call(lambda d_, w_, b_: pointwise_te(d_, w_, b_, act), xin,
                                          relax.const(wp), bconst, primfunc_name_hint="mntvm_pw")
        elif groups > 1 and groups == c and ci_g == 1 and o == c and is_blocked and strides[0] == strides[1]:
            wp = _channel_blocked(w[:, 0], V)  # (CB, KH, KW, V)
            xin = self.blocked[x].var
            dw_args = (act, h, wd, strides[0], pad)
            if self.fuse_dw and isinstance(end, relax.DataflowVar) and self._pointwise_consumer(end):
                # emitted with its pointwise consumer (``dw_pointwise_te``)
                self.pending_dw[end] = (xin, dw_args, relax.const(wp), bconst)
                self.skip.update(absorbed)
                self.skip.add(end)
                return True
            te_call = self._conv_call(
                lambda d_, w_, b_: depthwise_te(d_, w_, b_, *dw_args), xin,
                relax.const(wp), bconst, primfunc_name_hint="mntvm_dw")
        elif groups == 1 and strides[0] == strides[1]:
            xin = self._nchw_of(x) if is_blocked else self.visit_expr(x)
            wp = _channel_blocked(w, V)  # (OB, C, KH, KW, V)
            te_call = self._conv_call(
                lambda d_, w_, b_: stem_te(d_, w_, b_, act, strides[0], pad, self.stem_extra), xin,
                relax.const(wp), bconst, primfunc_name_hint="mntvm_conv")
        else:
            return False
        new = self.builder_.emit(te_call, name_hint=end.name)
        self.skip.update(absorbed)
        self.skip.add(end)
        self._finish(end, new, o, ho, wo)
        return True

    def _lower_pool(self, binding) -> bool:
        call = binding.value
        x = call.args[0]
        if x not in self.blocked:
            return False
        info = self.blocked[x]
        keep = True
        if _is_call(call, "relax.mean"):
            axes = sorted(int(i) % 4 for i in call.attrs.axis) if call.attrs.axis is not None else None
            if axes != [2, 3]:
                return False
            keep = bool(call.attrs.keepdims)
        else:  # avg_pool2d
            a = call.attrs
            if str(a.layout) != "NCHW" or [int(p) for p in a.pool_size] != [info.h, info.w] or any(
                    int(p) for p in a.padding):
                return False
        te_call = self.builder_.call_te(pool_te, info.var, info.c, primfunc_name_hint="mntvm_pool")
        new = self.builder_.emit(te_call, name_hint=binding.var.name)
        if not keep:
            new = self.builder_.emit(relax.op.reshape(new, (_sinfo_shape(new)[0], info.c)))
        if isinstance(binding.var, relax.DataflowVar):
            self.set_var_remap(binding.var, new)
        else:
            out = self.builder_.emit_output(new, name_hint=binding.var.name)
            self.set_var_remap(binding.var, out)
        return True

    def _lower_matmul(self, binding) -> bool:
        call = binding.value
        x, wexpr = call.args
        if x in self.blocked:
            return False
        w = self.graph.const(wexpr)
        if w is None or w.ndim != 2 or len(_sinfo_shape(x)) != 2:
            return False
        nout = w.shape[1]
        wp = _channel_blocked(w.T, self.V)  # (NB, K, V)
        end, bias = binding.var, None
        nxt = self.graph.single_consumer(binding.var)
        absorbed = []
        if nxt is not None and _is_call(self.graph.bindings[nxt], "relax.add"):
            a, b = self.graph.bindings[nxt].args
            other = b if a.same_as(binding.var) else a
            val = self.graph.const(other)
            if val is not None and val.size == nout:
                bias = val.reshape(-1).astype("float32")
                absorbed.append(binding.var)
                end = nxt
        xin = self.visit_expr(x)
        te_call = self.builder_.call_te(
            lambda d_, w_, b_: dense_te(d_, w_, b_, nout), xin, relax.const(wp),
            relax.const(bias if bias is not None else np.zeros((nout,), "float32")),
            primfunc_name_hint="mntvm_dense")
        if isinstance(end, relax.DataflowVar):
            new = self.builder_.emit(te_call, name_hint=end.name)
        else:
            new = self.builder_.emit_output(te_call, name_hint=end.name)
        self.skip.update(absorbed)
        self.skip.add(end)
        self.set_var_remap(end, new)
        return True

    # -- visitor -------------------------------------------------------------------------------
    def visit_var_binding_(self, binding):
        var, val = binding.var, binding.value
        if var in self.skip:
            return
        if _is_call(val, "relax.nn.conv2d") and self._lower_conv(binding):
            return
        if (_is_call(val, "relax.mean") or _is_call(val, "relax.nn.avg_pool2d")) and self._lower_pool(binding):
            return
        if _is_call(val, "relax.matmul") and self._lower_matmul(binding):
            return
        for fv in relax.analysis.free_vars(val):
            if fv in self.blocked:
                self.set_var_remap(fv, self._nchw_of(fv))
        super().visit_var_binding_(binding)

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod_.functions.items():
            if isinstance(func, relax.Function):
                self.graph.add(func)
                new = self.visit_expr(func)
                self.builder_.update_func(gv, new)
        if self.pending_dw:  # a deferred depthwise conv whose pointwise consumer was not lowered
            raise RuntimeError(f"depthwise convs left unfused: {[v.name_hint for v in self.pending_dw]}")
        return self.builder_.get()


def lower_blocked(mod: tvm.IRModule, target, vector_bits: int, fuse_dw: bool = False) -> tvm.IRModule:
    """Lower a Relax MobileNet to our blocked-layout templates, legalize the rest and fuse.

    With ``fuse_dw`` every depthwise conv whose only consumer is a pointwise conv is lowered
    together with it (``mntvm_dwpw``, :func:`.compute.dw_pointwise_te`), past the map's end by the
    positions the ragged tiles of the target's knob family need (:func:`.cpu.ragged_extra_positions`);
    the stem likewise, from a padded copy of its input (:func:`.cpu.stem_extra_positions`); for those
    families every conv's sum starts from its bias (:func:`.cpu.ragged_workloads`).
    Returns a module ready for :func:`.defaults.apply_default_schedules`, a tuning database or
    MetaSchedule task extraction (:func:`.registry.tunable_tasks`).
    """
    vec = int(vector_bits) // 32
    fam = family_for(target, vector_bits)
    extra = ragged_extra_positions(fam) if fuse_dw else 0
    mod = relax.transform.Normalize()(mod)
    mod = _Lowerer(mod, vec, fuse_dw, extra, stem_extra_positions(fam), ragged_workloads(fam)).transform()
    mod = relax.transform.DeadCodeElimination()(mod)
    return legalize_and_fuse(mod)


def legalize_and_fuse(mod: tvm.IRModule) -> tvm.IRModule:
    """The Relax ops left after our lowering legalized to TIR, constants folded, elementwise
    epilogues fused into the template PrimFuncs (fp32 and int8 alike)."""
    seq = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])
    return seq(mod)


def has_templates(profile) -> bool:
    """Whether the profile's family is scheduled by our templates (CPUs and CUDA; the other GPU
    families use DLight rules only)."""
    return not profile.is_gpu or profile.family == "cuda"


def lower(cfg: MobileNetConfig, weights: Mapping[str, np.ndarray], profile, fuse_dw: bool | None = None):
    """The templates' lowered module: every conv, the pooling and the FC are template PrimFuncs
    (unscheduled), in the channel-blocked layout of the profile's vector width (float4 on CUDA).
    On CPUs each depthwise conv is fused into the pointwise conv after it (``mntvm_dwpw``) unless
    ``fuse_dw`` is False (None: fused on CPUs, not on GPUs, which have no fused template)."""
    bits = VECTOR_BITS if profile.is_gpu else profile.vector_bits
    if fuse_dw is None:
        fuse_dw = not profile.is_gpu
    elif fuse_dw and profile.is_gpu:
        raise ValueError(f"'{profile.name}': the fused depthwise+pointwise template is CPU-only")
    return lower_blocked(inference_module(cfg, weights), profile.tvm_target(), bits, fuse_dw=fuse_dw)
