"""The bias of a template's conv added where its sum starts, not in its epilogue (a PrimFunc rewrite).

A template conv is a reduction block (init 0) followed by an epilogue ``act(conv + bias)``. Where
:func:`bias_into_init` applies, the reduction starts from ``bias`` instead and the epilogue
computes ``act(conv)``: one add less per output vector, for the price of loading the bias into
the accumulators instead of zeroing them. TE cannot say this (``te.sum(..., init=)`` is dropped by
``te.create_prim_func`` in TVM 0.27), so the lowering rewrites the PrimFunc it gets from TE.

The rewrite changes a workload: the lowering applies it only for the knob families whose workloads
it already changes (:func:`.cpu.ragged_workloads`), so the tuning logs of the others keep matching.
"""
from __future__ import annotations

import tvm
from tvm import tirx
from tvm.s_tir import SBlock, SBlockRealize
from tvm.ir.expr import TensorLoad
from tvm.tirx import For, SeqStmt

KEY = "mntvm_bias_init"  # PrimFunc attribute: the rewrite was applied (it is not applied twice)


_FIELDS = ("iter_vars", "reads", "writes", "name_hint", "body", "init", "alloc_buffers", "match_buffers",
           "annotations")  # SBlock's constructor arguments, in order


def _block(b: SBlock, **changes) -> SBlock:
    """``b`` with some of its fields replaced (``reads``, ``body``, ``init``)."""
    return SBlock(*(changes.get(k, getattr(b, k)) for k in _FIELDS))


def _map(stmt, fn):
    """``stmt`` with ``fn(block)`` (a new SBlock or the same) applied to every block under it, inner first."""
    if isinstance(stmt, SBlockRealize):
        b = stmt.block
        body = _map(b.body, fn)
        if not body.same_as(b.body):
            b = _block(b, body=body)
        nb = fn(b)
        return stmt if nb.same_as(stmt.block) else SBlockRealize(stmt.iter_values, stmt.predicate, nb)
    if isinstance(stmt, For):
        body = _map(stmt.body, fn)
        return stmt if body.same_as(stmt.body) else For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body,
                                                          stmt.thread_binding, stmt.annotations, stmt.step)
    if isinstance(stmt, SeqStmt):
        seq = [_map(s, fn) for s in stmt.seq]
        return stmt if all(a.same_as(b) for a, b in zip(seq, stmt.seq)) else SeqStmt(seq)
    return stmt


def _bias_add(expr, sums: dict):
    """The ``conv[...] + bias[...]`` in ``expr`` (an epilogue value) whose ``conv`` is one of ``sums``
    (buffer -> its reduction block) and whose ``bias`` is 2-D, or None."""
    if isinstance(expr, tirx.Add) and isinstance(expr.a, TensorLoad) and isinstance(expr.b, TensorLoad):
        if expr.a.source in sums and len(expr.b.source.shape) == 2:
            return expr
    for child in (getattr(expr, "a", None), getattr(expr, "b", None)):
        if child is not None:
            got = _bias_add(child, sums)
            if got is not None:
                return got
    return None


def _replace(expr, old, new):
    if expr.same_as(old):
        return new
    if isinstance(expr, tirx.Min | tirx.Max | tirx.Add | tirx.Sub | tirx.Mul):
        a, b = _replace(expr.a, old, new), _replace(expr.b, old, new)
        return expr if a.same_as(expr.a) and b.same_as(expr.b) else type(expr)(a, b)
    return expr


def bias_into_init(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every reduction block whose epilogue adds a per-channel bias to it
    (``conv[n, c, p, v] + bias[c, v]``) started from that bias, and the add dropped from the
    epilogue. Reductions with another init, epilogues of another form: unchanged."""
    if func.attrs is not None and KEY in func.attrs:
        return func
    sums = {}  # conv buffer -> its reduction block (init 0)

    def collect(b):
        if b.init is not None and isinstance(b.init, tirx.BufferStore) and len(b.writes) == 1:
            v = b.init.value
            if isinstance(v, tirx.FloatImm) and v.value == 0.0 and len(b.init.indices) == 4:
                sums[b.writes[0].source] = b
        return b

    _map(func.body, collect)
    biases = {}  # conv buffer -> (bias load in the epilogue)

    def epilogue(b):
        if not isinstance(b.body, tirx.BufferStore) or b.init is not None:
            return b
        add = _bias_add(b.body.value, sums)
        if add is None or add.a.source in biases:
            return b
        ci, bi = [str(x) for x in add.a.indices], [str(x) for x in add.b.indices]
        if bi != [ci[1], ci[3]]:  # bias[c, v] of conv[n, c, p, v]
            return b
        biases[add.a.source] = add.b
        store = tirx.BufferStore(b.body.buffer, _replace(b.body.value, add, add.a), b.body.indices)
        reads = [r for r in b.reads if not r.source.same_as(add.b.source)]
        return _block(b, reads=reads, body=store)

    body = _map(func.body, epilogue)
    if not biases:
        return func

    def reduction(b):
        if len(b.writes) != 1 or b.writes[0].source not in biases or b.init is None:
            return b
        bias = biases[b.writes[0].source].source
        idx = b.init.indices
        init = tirx.BufferStore(b.init.buffer, tirx.BufferLoad(bias, [idx[1], idx[3]]), idx)
        region = tirx.BufferRegion(bias, [tvm.ir.Range.from_min_extent(idx[1], 1),
                                              tvm.ir.Range.from_min_extent(idx[3], 1)])
        return _block(b, reads=[*b.reads, region], init=init)

    body = _map(body, reduction)
    return func.with_body(body).with_attr(KEY, 1)
