"""Software prefetch of the next pointwise weight panel (fused dw+pw template, CPUs).

Inside the network a layer's pointwise weights come from L3 or memory: the other layers have
pushed them out of L2 since the last inference. With the fused template's loop order (per task:
``ob0`` weight panels of ``o_t`` output-channel vectors, each reused over ``p1`` position tiles)
only the first position tile of a panel reads it from L3; the others hit L2. So the core streams
a panel, then computes with no memory traffic, then streams the next one. The schedule marks
its loops (:func:`mark`) and :func:`inject` (a PrimFunc pass, run before ``tvm.compile`` by
:func:`compile_cpu`) adds
to each iteration of the reduction over input-channel blocks a few ``prefetcht1`` of the *next*
panel, spread so that the whole panel is requested over the current one's position tiles.

The marks are loop annotations, so they are part of a schedule's trace (tuning logs replay them);
:func:`inject` reads every number it needs from the loops themselves (extents, the weight
buffer's shape), so a trace whose tiles were mutated still prefetches the right panel.
"""
from __future__ import annotations

import tvm
from tvm import tirx
from tvm.s_tir import SBlock, SBlockRealize
from tvm.tirx import For, SeqStmt

KEY = "mntvm_prefetch"
LINE = 64  # bytes of a cache line
LOCALITY_L2 = 2  # llvm.prefetch locality 2: prefetcht1 (into L2) on x86, pldl2keep on AArch64
AHEAD = 1  # which panel to prefetch: the next (2 or 3 panels ahead measured no better on 4x4..14x14 maps)


def mark(sch, task, ob0, p1, ob1, ib, weight: str) -> None:
    """Mark the fused template's loops: the parallel ``task`` loop (output-channel group innermost
    in it), the panel loop ``ob0``, the position-tile loop ``p1``, the reduction over input blocks
    ``ib``, which carries the name of the weight buffer ``(OB, IB, V, V)``, and inside it the
    register tile's channel-vector loop ``ob1`` (its extent is the panel width)."""
    for loop, role in ((task, "task"), (ob0, "ob0"), (p1, "p1"), (ob1, "ob1")):
        sch.annotate(loop, KEY, role)
    sch.annotate(ib, KEY, "ib:" + weight)


def _role(loop: For) -> str | None:
    v = loop.annotations.get(KEY) if loop.annotations else None
    return None if v is None else str(v)


def _first(stmt, pick):
    """The first ``pick(node)`` that is not None over the loops and blocks under ``stmt``, depth first."""
    got = pick(stmt)
    if got is not None:
        return got
    if isinstance(stmt, For):
        return _first(stmt.body, pick)
    if isinstance(stmt, SeqStmt):
        for s in stmt.seq:
            got = _first(s, pick)
            if got is not None:
                return got
        return None
    if isinstance(stmt, SBlockRealize):
        return _first(stmt.block.body, pick)
    return None


def _find(stmt, role: str):
    """The first loop with annotation ``role`` under ``stmt``, or None."""
    return _first(stmt, lambda s: s if isinstance(s, For) and _role(s) == role else None)


def _buffer(stmt, name: str):
    """The buffer called ``name`` that a block under ``stmt`` reads, or None."""
    def reads(s):
        if isinstance(s, SBlockRealize):
            return next((r.source for r in s.block.reads if r.source.name == name), None)
        return None

    return _first(stmt, reads)


def _prefetches(weight, loops: dict, ib_loop: For) -> list:
    """The prefetch calls for one iteration of ``ib_loop``. The next panel is, per input block
    ``ib``, ``o_t x V_i`` weight rows of ``V_o`` values (one cache line on AVX-512; on AVX2 and
    NEON one line holds several rows, and one row per line is prefetched); iteration ``(p1, ib)``
    prefetches the lines ``p1 * lines + k`` (k < lines) of block ``ib``, so the ``p1`` position
    tiles request the whole panel once, and the indices need only shifts."""
    ob_total, ib_total, v_i, v_o = (int(x) for x in weight.shape)
    ot = int(loops["ob1"].extent)
    ob0_n = int(loops["ob0"].extent)
    p1_n = int(loops["p1"].extent)
    groups = ob_total // (ot * ob0_n)
    row_bytes = v_o * tvm.DataType(weight.dtype).bits // 8
    if groups * ot * ob0_n != ob_total or int(ib_loop.extent) != ib_total or LINE % row_bytes:
        return []
    step = min(v_i, LINE // row_bytes)  # rows of one cache line
    per_q = v_i // step  # lines of one channel vector's weights for one input block
    n_lines = ot * per_q
    lines = -(-n_lines // p1_n)
    og = loops["task"].loop_var % groups if groups > 1 else 0
    nxt = (og * ob0_n + loops["ob0"].loop_var + AHEAD) * ot  # first channel vector of the panel to prefetch
    calls = []
    for k in range(lines):
        line = tirx.min(loops["p1"].loop_var * lines + k, n_lines - 1)
        ob = tirx.min(nxt + line // per_q, ob_total - 1)
        load = tirx.BufferLoad(weight, [ob, ib_loop.loop_var, (line % per_q) * step, 0])
        addr = tirx.call_intrin("handle", "tirx.address_of", load)
        calls.append(tirx.Evaluate(tirx.call_intrin("void", "tirx.prefetch", addr, 0, LOCALITY_L2, 1)))
    return calls


def _with_body(loop: For, body) -> For:
    return For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding, loop.annotations,
               loop.step)


def _rewrite(stmt, loops: dict):
    if isinstance(stmt, For):
        role = _role(stmt)
        inner = dict(loops)
        if role in ("task", "ob0", "p1"):
            inner[role] = stmt
        if role is not None and role.startswith("ib:") and all(k in loops for k in ("task", "ob0", "p1")):
            weight = _buffer(stmt.body, role[3:])
            ob1 = _find(stmt.body, "ob1")
            if weight is not None and ob1 is not None:
                calls = _prefetches(weight, {**loops, "ob1": ob1}, stmt)
                if calls:
                    return _with_body(stmt, SeqStmt(calls + [stmt.body]))
            return stmt
        body = _rewrite(stmt.body, inner)
        return stmt if body.same_as(stmt.body) else _with_body(stmt, body)
    if isinstance(stmt, SeqStmt):
        seq = [_rewrite(s, loops) for s in stmt.seq]
        if all(a.same_as(b) for a, b in zip(seq, stmt.seq)):
            return stmt
        return SeqStmt(seq)
    if isinstance(stmt, SBlockRealize):
        b = stmt.block
        body = _rewrite(b.body, loops)
        if body.same_as(b.body):
            return stmt
        blk = SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, body, b.init, b.alloc_buffers, b.match_buffers,
                     b.annotations)
        return SBlockRealize(stmt.iter_values, stmt.predicate, blk)
    return stmt


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="mntvm.InjectWeightPrefetch")
def _pass(func, _mod, _ctx):
    if _find(func.body, "task") is None:
        return func
    body = _rewrite(func.body, {})
    return func if body.same_as(func.body) else func.with_body(body)


def inject(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with the prefetches of every marked PrimFunc added (unmarked ones unchanged)."""
    return _pass(mod)


def compile_cpu(mod: tvm.IRModule, target):
    """``tvm.compile`` of a module holding our CPU kernels, after :func:`inject`: the one way they
    are compiled (the network, tuning's candidates and references, the log check, the benchmarks),
    so that none of them loses its prefetch. TVM 0.27's ``tvm.compile`` takes only a registered
    TIR pipeline name, and registering one would be a global side effect."""
    return tvm.compile(inject(mod), target=target)
