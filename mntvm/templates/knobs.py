"""What the CPU and CUDA templates share: knob sampling, the family knob table, loop structure.

A knob is a ``sample_perfect_tile`` / ``sample_categorical`` instruction: with ``decisions``
(a dict, key -> value) it replays at a fixed value, which is how the defaults are applied
without tuning and how ``mntvm tune`` makes its candidates (:func:`.defaults.knob_schedule`); with
none it samples. Every knob goes through :func:`tile` or :func:`cat`, which is how its value is
found again (by key) in the trace.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

from tvm.s_tir import Schedule
from tvm.tirx import ForKind


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def largest_divisor_le(n: int, bound: int) -> int:
    return max(d for d in divisors(n) if d <= max(1, bound))


def split2(n: int, inner: int) -> list[int]:
    """A two-factor tile decision: ``n`` as ``[n // inner, inner]``."""
    return [n // inner, inner]


def buffer_shape(buf) -> list[int]:
    return [int(x) for x in buf.shape]


def balance(tasks: int, cores: int) -> float:
    """The share of ``cores`` threads' time that ``tasks`` equal tasks keep busy (1.0: evenly shared)."""
    return tasks / (-(-tasks // cores) * cores)


def parallel_tasks(sch: Schedule) -> int:
    """The tasks a scheduled "main" hands the thread pool: over its blocks, the largest product of
    the extents of the parallel loops around one (1: nothing parallel)."""
    most = 1
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        n = 1
        for lp in sch.get_loops(block):
            loop = sch.get(lp)
            if loop.kind == ForKind.PARALLEL:
                n *= int(loop.extent)
        most = max(most, n)
    return most


def pointwise_tiles(ob: int, p: int, prefs: list[tuple[int, int]]) -> dict:
    """Pointwise decisions: the first (channel vectors, positions) register tile of ``prefs`` that
    divides ``(ob, p)`` (end ``prefs`` with ``(1, 1)``), under a cache tile of up to ~64 positions
    (enough spatial tiles that one weight panel is reused from L1/L2)."""
    for o_t, p_t in prefs:
        if ob % o_t == 0 and p % p_t == 0:
            break
    rest = p // p_t
    p_mid = largest_divisor_le(rest, max(1, 64 // p_t))
    return {"ob": split2(ob, o_t), "p": [rest // p_mid, p_mid, p_t], "order": 0}


@dataclasses.dataclass(frozen=True)
class FamilyKnobs:
    """Per-ISA-family vector width and default-knob functions (see :mod:`.x86` / :mod:`.arm`)."""

    name: str
    vector_bits: int
    num_regs: int
    pw: Callable  # (ob, p, ib, vec, num_regs) -> decisions
    dw: Callable  # (cb, ho, wo, vec, num_regs) -> decisions
    stem: Callable  # (ob, ho, wo, vec, num_regs) -> decisions
    dense: Callable  # (nb, k, vec, num_regs) -> decisions
    # (ob, p, ib, vec, num_regs, chunk_panels) -> (o_t, p_t) or None: a fused-template register tile
    # whose ``p_t`` need not divide the ``p`` positions (the last tile of a task is partly masked),
    # where the family prefers it to the best tile that divides (``pw``); ``chunk_panels``: the
    # family's own (below)
    pw_ragged: Callable | None = None
    # bytes of fp32 pointwise weights from which the fused template prefetches the next weight
    # panel (:mod:`.prefetch`); None: never
    prefetch_weights: int | None = None
    # bytes of a fused-template weight panel (the register tile's output-channel vectors x every input
    # channel) above which the default splits the pointwise reduction into chunks whose weights stay
    # in L1 (:func:`.cpu.reduction_chunk`); None: never
    chunk_panels: int | None = None
    # register tiles of at most this many positions get their reduction chunked where their panel is
    # over ``chunk_panels``: each weight vector serves that many FMAs (:func:`.cpu.reduction_chunk`)
    chunk_positions: int = 4
    # fused layers with at least this many bytes of pointwise weights chunk their reduction whatever the
    # tile (:func:`.cpu.reduction_chunk`); None: never
    chunk_weights: int | None = None
    cores: int = 1  # the threads the target runs on (its ``num-cores``): for splitting work evenly


def tile(sch: Schedule, loop, n: int, max_inner: int, d: dict | None, key: str):
    """Knob ``key``: ``loop`` split into ``n`` factors (``d[key]``: the factor list, which must
    multiply to the loop's extent: ValueError otherwise)."""
    dec = d.get(key) if d else None
    if dec is not None:
        extent = int(sch.get(loop).extent)
        if len(dec) != n or math.prod(dec) != extent:
            raise ValueError(f"knob {key}: {list(dec)} is not a {n}-factor tiling of {extent}")
    return sch.sample_perfect_tile(loop, n=n, max_innermost_factor=max_inner, decision=dec)


def cat(sch: Schedule, cands: list, d: dict | None, key: str):
    """Knob ``key``: one of ``cands`` (``d[key]``: the value, not its index; ValueError if it is not
    one of them)."""
    dec = d.get(key) if d else None
    if dec is not None and dec not in cands:
        raise ValueError(f"knob {key}: {dec} is not one of {list(cands)}")
    return sch.sample_categorical(cands, [1.0 / len(cands)] * len(cands),
                                  decision=None if dec is None else cands.index(dec))


def single_consumer_epilogue(sch: Schedule, block):
    """Collapse the blocks after ``block`` into one epilogue block and return it.

    Our computes always have exactly one; FuseOps may add injective consumers (which we
    inline into a single epilogue). If there is none, a cache_write block is created.
    """
    consumers = sch.get_consumers(block)
    if len(consumers) == 0:
        return sch.cache_write(block, 0, "global")
    epi = consumers[0]
    while True:
        nxt = sch.get_consumers(epi)
        if len(nxt) != 1:
            break
        sch.compute_inline(epi)  # elementwise producer into its consumer
        epi = nxt[0]
    return epi


def rows_and_columns(sch: Schedule, conv, wo: int | None = None):
    """The epilogue of a depthwise/stem block (N, C/V, P, V) with its position loop split back
    into rows and columns: its loops ``(n, cb, h, w, v)``."""
    if wo is None:
        wo = int(sch.get(conv).annotations["mntvm_wo"])
    epi = single_consumer_epilogue(sch, conv)
    n, cb, p, v = sch.get_loops(epi)[-4:]
    h, w = sch.split(p, [None, wo])
    return n, cb, h, w, v


def taps_outside(sch: Schedule, block, n_reduce: int):
    """Inner loops of a depthwise/stem block (after ``compute_at``): its ``n_reduce`` reduction
    loops (input channels, then the kh x kw taps) moved outside the register tile, the channel
    vector vectorized, tile and taps unrolled, the accumulator's init split off. Returns the
    outermost reduction loop."""
    loops = sch.get_loops(block)[-(4 + n_reduce):]
    tile_loops, red = loops[:4], loops[4:]
    sch.reorder(*red, *tile_loops)
    sch.vectorize(tile_loops[-1])
    for loop in (*red[-2:], *tile_loops[:-1]):
        sch.unroll(loop)
    sch.decompose_reduction(block, red[0])
    return red[0]

