"""The int8 pointwise (1x1 conv) as one hand-written Intel AMX-INT8 kernel (fixed schedule, no knobs).

:func:`pointwise_int8_amx` is a drop-in for the VNNI template (:func:`.compute_int8.pointwise_int8_te`
scheduled by :func:`.cpu_int8.schedule_pointwise_int8`): the same parameters and output, so
:mod:`.lowering_int8` emits either under the name ``mntvm_pw8``::

    data (N, IB, P, 16) uint8, weight (OB, IB, 4, 16, 4) int8 (the VNNI packing, unchanged),
    bias (OB, 16) int32, mult (OB, 16) float32, qp (4,) float32  ->  (N, OB, P, 16) uint8

and the same requantization, bit for bit (:func:`.compute_int8.requant`)::

    y = uint8(min(max(nearbyint(float32(acc + bias) * mult) + qp[0], qp[1]), qp[2]))

TVM 0.27 ships no AMX tensor intrinsics: the kernel is TIR calling LLVM's ``llvm.x86.ldtilecfg``,
``tileloadd64``, ``tdpbusd`` (u8 x s8 -> int32), ``tilestored64`` and ``tilerelease`` (the legacy
forms, tile registers as immediates), which LLVM compiles for any target with ``+amx-tile,+amx-int8``
(``mcpu`` sapphirerapids, emeraldrapids, ...). Linux on x86-64 only. Its structure:

* Once per call, ``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`` through libc's ``syscall``
  (Linux >= 5.16 grants the AMX state per process on request only; without it the first tile
  instruction raises SIGILL): the artifact needs nothing from its loader. Repeating it is harmless
  and cheap (no measurable cost, < 0.1 us a call); it is asserted to succeed, so a kernel refusing
  AMX fails the call with an error instead of killing the process.
* One parallel task per worker thread (the pool's size read at run time, ``runtime.NumThreads``):
  each loads the tile configuration once (``ldtilecfg`` is per-thread state; ~0.1 us, too much to
  repeat per work item), does a contiguous range of the work items, then ``tilerelease``. An item
  is one block of ``MR`` = 32 positions (16 where P < 32) x ``CT`` = 2 output blocks (1 where OB is
  odd), items ordered position-block major.
* A tile row of the A operand is one position's ``KC`` contiguous input channels, which the
  (N, IB, P, 16) layout does not have: when its position block changes, a thread gathers the
  block's ``MR`` x ``16 IB`` activations into a local (IB/G, MR, KC) panel (16-byte copies), ``KC``
  = 64 bytes (G = 4 input blocks per K step) or, where IB is not a multiple of 4, 16 gcd(IB, 4)
  bytes (the B tiles then KC/4 rows; the 48 and 96 channels of alpha 0.75). The B tiles are the
  packed weights as they are: for one output block, (IB, 4, 16, 4) are the 64-byte rows (4
  consecutive inputs x 16 lanes) a ``tdpbusd`` B operand wants.
* Per item up to 2 x 2 int32 C tiles (16 positions x 16 lanes), started at the bias (a stride-0
  tile load repeats ``bias[ob]`` in every row: no add in the epilogue); per K step 2 A loads, 2 B
  loads, 4 ``tdpbusd``; stored (``tilestored64``) to a local buffer and requantized from there in
  explicit 16-lane vectors (TIR's VectorizeLoop scalarizes ``nearbyint``; LLVM then re-vectorized
  it at 8 lanes), four rows (64 contiguous output bytes) at a time narrowed by ``vpackssdw`` /
  ``vpackuswb`` / ``vpermd`` (exact: the values are integers in [lo, hi] by then; 4 port-5 uops
  instead of 4 ``vpmovdb``'s 8).
* Positions past the last full block: the last block is shifted back to end at P (overlapping the
  one before) and writes only its new rows, so every tile is full, nothing is written twice and
  nothing outside the buffers is read. Hence P >= 16 (:func:`amx_supported`): smaller layers keep
  the VNNI template.

The requantization is the cost left: ~9 vector uops per 16 outputs on ports 0/5 (``vrndscaleps``
alone 2), the same as the VNNI template's, so the widest layers (pw1: 12544 positions, 32 -> 64
channels, a short reduction) gain least.

Measured on this machine (Emerald Rapids VM, 2 cores, shared; noisy), 1.0/224 uint8, template
defaults, per-layer report, 1 thread, interleaved runs against the same build with
``--mattr=-amx-int8,-amx-tile`` (the VNNI template), ms::

    pw1 0.17-0.18 (VNNI 0.21)   pw2 0.09 (0.14)    pw3 0.11 (0.22)   pw4 0.055 (0.105)
    pw5 0.08 (0.19)             pw6 0.044 (0.095)  pw7-11 0.065-0.07 each (0.17-0.175)
    pw12 0.048 (0.10)           pw13 0.10 (0.19)   all 13: 1.04 (2.1); network 2.04 ms (3.0)

2 threads: network 1.40 ms (VNNI 2.37), outputs exact. Alone with its weights in cache (1 thread,
us): 196 x 512 -> 512 51-54 (VNNI ~157), 3136 x 64 -> 128 71-75, 12544 x 32 -> 64 143-150,
49 x 1024 -> 1024 57 (1 MB of weights; flushed from cache before each call 115-285).

The PrimFunc is marked scheduled (:func:`.registry.mark_scheduled`: the default schedules and the
tuner leave it alone; it carries no schedule rule, so it is no tuning task), opaque to operator
fusion (``op_pattern`` 8) and tagged :data:`AMX_ATTR` (:func:`is_amx_kernel`).
"""
from __future__ import annotations

import math

import tvm
from tvm.script import tirx as T

from mntvm.templates.registry import mark_scheduled

V = 16  # channels per block (lanes of a C tile row: 16 int32)
AMX_ATTR = "mntvm_amx"  # PrimFunc attribute marking the kernel (value 1)
OP_PATTERN_OPAQUE = 8  # relax op pattern kind kOpaque: FuseOps leaves the call alone

# Linux: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18


def amx_supported(n: int, ib: int, p: int, ob: int) -> bool:
    """Whether :func:`pointwise_int8_amx` takes this shape (P >= 16: one full 16-row tile)."""
    return n >= 1 and ib >= 1 and ob >= 1 and p >= V


def is_amx_kernel(func) -> bool:
    """Whether PrimFunc ``func`` is the AMX pointwise kernel."""
    return func.attrs is not None and AMX_ATTR in func.attrs and bool(func.attrs[AMX_ATTR])


def _intrin(name: str):
    return T.llvm_lookup_intrinsic_id(name)


def _tile(name: str, *args):
    """``T.evaluate``-able call of tile instruction ``llvm.x86.<name>`` (tile registers immediates)."""
    return T.call_llvm_intrin("void", _intrin("llvm.x86." + name), *args)


def _requant(acc, mult, qp, j, r, o0):
    """Row ``r`` of output block ``j``'s int32 accumulators (bias included) requantized: 16 float32
    lanes, integral, in [lo, hi] (:func:`.compute_int8.requant`'s arithmetic)."""
    v = T.nearbyint(T.Cast(f"float32x{V}", acc.vload([j, r, 0], f"int32x{V}"))
                    * mult.vload([o0 + j, 0], f"float32x{V}"))
    return T.min(T.max(v + T.Broadcast(qp[0], V), T.Broadcast(qp[1], V)), T.Broadcast(qp[2], V))


def _pack4(a, b, c, d):
    """Four int32x16 rows holding 0..255 -> their 64 bytes in order (saturating packs are exact
    here): packssdw / packuswb interleave per 128-bit lane, vpermd puts the dwords back."""
    ab = T.call_llvm_pure_intrin("int16x32", _intrin("llvm.x86.avx512.packssdw.512"), a, b)
    cd = T.call_llvm_pure_intrin("int16x32", _intrin("llvm.x86.avx512.packssdw.512"), c, d)
    x = T.reinterpret("int32x16", T.call_llvm_pure_intrin("uint8x64", _intrin("llvm.x86.avx512.packuswb.512"), ab, cd))
    i = T.ramp(0, 1, V)
    idx = (i % T.Broadcast(4, V)) * T.Broadcast(4, V) + i // T.Broadcast(4, V)  # dword 4k + l <- 4l + k
    return T.reinterpret("uint8x64",
                         T.call_llvm_pure_intrin("int32x16", _intrin("llvm.x86.avx512.permvar.si.512"), x, idx))


def pointwise_int8_amx(n: int, ib: int, p: int, ob: int) -> tvm.tirx.PrimFunc:
    """The AMX pointwise kernel for (N, IB, P, 16) uint8 activations and OB output blocks (see the
    module docstring), scheduled. Raises ValueError where :func:`amx_supported` is false."""
    if not amx_supported(n, ib, p, ob):
        raise ValueError(f"AMX pointwise: unsupported shape N={n} IB={ib} P={p} OB={ob} (needs P >= {V})")
    g = math.gcd(ib, 4)  # input blocks per K step
    kc = V * g  # K bytes per tdpbusd (A tile columns; B tile rows = kc / 4)
    kt_ = ib // g
    rt = 2 if p >= 2 * V else 1  # row (position) tiles per item
    ct = 2 if ob % 2 == 0 else 1  # column (output block) tiles per item
    mr = V * rt
    pb_ = -(-p // mr)
    obi = ob // ct
    nw = n * pb_ * obi

    @T.prim_func(private=True)
    def amx_pw(
        data: T.Buffer((n, ib, p, V), "uint8"),
        weight: T.Buffer((ob, ib, 4, V, 4), "int8"),
        bias: T.Buffer((ob, V), "int32"),
        mult: T.Buffer((ob, V), "float32"),
        qp: T.Buffer((4,), "float32"),
        out: T.Buffer((n, ob, p, V), "uint8"),
    ):
        T.func_attr({"tirx.noalias": True})
        # (plain ``x = expr`` would be a mutable local scalar here; T.Bind: an immutable binding)
        assert T.call_extern("int64", "syscall", T.int64(_SYS_ARCH_PRCTL), T.int64(_ARCH_REQ_XCOMP_PERM),
                             T.int64(_XFEATURE_XTILEDATA)) == T.int64(0), \
            "AMX: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) refused (Linux >= 5.16 with AMX needed)"
        # one task per worker thread (the pool's size at run time: each gets one iteration)
        nt = T.Bind(T.max(T.Cast("int32", T.call_packed("runtime.NumThreads")), 1))
        ch = T.Bind((nw + nt - 1) // nt)  # work items per task
        for t in T.parallel(nt):
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            for i in range(64):
                cfg[i] = T.uint8(0)
            cfg[0] = T.uint8(1)  # palette 1
            for i in range(4):  # tmm0-3: C, 16 rows x 64 bytes (16 int32)
                cfg[16 + 2 * i] = T.uint8(64)
                cfg[48 + i] = T.uint8(16)
            for i in range(2):  # tmm4-5: A, 16 rows (positions) x kc bytes (input channels)
                cfg[16 + 2 * (4 + i)] = T.uint8(kc)
                cfg[48 + 4 + i] = T.uint8(16)
            for i in range(2):  # tmm6-7: B, kc/4 rows (input quads) x 64 bytes (16 lanes x 4 inputs)
                cfg[16 + 2 * (6 + i)] = T.uint8(64)
                cfg[48 + 6 + i] = T.uint8(kc // 4)
            T.evaluate(_tile("ldtilecfg", T.address_of(cfg[0])))
            xa = T.alloc_buffer((kt_, mr, kc), "uint8", scope="local", align=64)
            acc = T.alloc_buffer((ct, mr, V), "int32", scope="local", align=64)
            cur = T.alloc_buffer((1,), "int32", scope="local")
            cur[0] = -1
            for w in range(T.min(t * ch, nw), T.min(t * ch + ch, nw)):
                b = T.Bind(w // obi)  # batch * pb_ + position block
                nn = T.Bind(b // pb_)
                p0 = T.Bind(T.min((b % pb_) * mr, p - mr))
                o0 = T.Bind((w % obi) * ct)
                r0 = T.Bind((b % pb_) * mr - p0)  # first row written: > 0 in the shifted last block
                if cur[0] != b:  # gather the block's activations into 64-byte (kc) rows
                    for k, j, r in T.grid(kt_, g, mr):
                        for c in T.vectorized(V):
                            xa[k, r, j * V + c] = data[nn, k * g + j, p0 + r, c]
                    cur[0] = b
                # accumulators start at the bias: every row of a C tile = bias[ob] (a stride-0 load)
                T.evaluate(_tile("tileloadd64", T.uint8(0), T.address_of(bias[o0, 0]), T.int64(0)))
                if ct == 2:
                    T.evaluate(_tile("tileloadd64", T.uint8(1), T.address_of(bias[o0 + 1, 0]), T.int64(0)))
                if rt == 2:
                    T.evaluate(_tile("tileloadd64", T.uint8(2), T.address_of(bias[o0, 0]), T.int64(0)))
                if rt == 2 and ct == 2:
                    T.evaluate(_tile("tileloadd64", T.uint8(3), T.address_of(bias[o0 + 1, 0]), T.int64(0)))
                for k in range(kt_):
                    T.evaluate(_tile("tileloadd64", T.uint8(4), T.address_of(xa[k, 0, 0]), T.int64(kc)))
                    T.evaluate(_tile("tileloadd64", T.uint8(6), T.address_of(weight[o0, k * g, 0, 0, 0]),
                                     T.int64(64)))
                    T.evaluate(_tile("tdpbusd", T.uint8(0), T.uint8(4), T.uint8(6)))
                    if ct == 2:
                        T.evaluate(_tile("tileloadd64", T.uint8(7), T.address_of(weight[o0 + 1, k * g, 0, 0, 0]),
                                         T.int64(64)))
                        T.evaluate(_tile("tdpbusd", T.uint8(1), T.uint8(4), T.uint8(7)))
                    if rt == 2:
                        T.evaluate(_tile("tileloadd64", T.uint8(5), T.address_of(xa[k, V, 0]), T.int64(kc)))
                        T.evaluate(_tile("tdpbusd", T.uint8(2), T.uint8(5), T.uint8(6)))
                    if rt == 2 and ct == 2:
                        T.evaluate(_tile("tdpbusd", T.uint8(3), T.uint8(5), T.uint8(7)))
                T.evaluate(_tile("tilestored64", T.uint8(0), T.address_of(acc[0, 0, 0]), T.int64(64)))
                if ct == 2:
                    T.evaluate(_tile("tilestored64", T.uint8(1), T.address_of(acc[1, 0, 0]), T.int64(64)))
                if rt == 2:
                    T.evaluate(_tile("tilestored64", T.uint8(2), T.address_of(acc[0, V, 0]), T.int64(64)))
                if rt == 2 and ct == 2:
                    T.evaluate(_tile("tilestored64", T.uint8(3), T.address_of(acc[1, V, 0]), T.int64(64)))
                # requantized 16 lanes at a time, written as explicit 16-lane vectors: TIR's
                # VectorizeLoop scalarizes nearbyint (LLVM then re-vectorized it at 8 lanes, ymm).
                # Rows in fours (4 positions x 16 lanes: 64 contiguous output bytes), packed by
                # vpackssdw / vpackuswb / vpermd (4 port-5 uops instead of 4 vpmovdb's 8); the
                # first (mr - r0) % 4 rows singly.
                for j in range(ct):
                    for r in range(r0, r0 + (mr - r0) % 4):
                        out[nn, o0 + j, p0 + r, T.ramp(0, 1, V)] = T.Cast(f"uint8x{V}",
                                                                          _requant(acc, mult, qp, j, r, o0))
                    for r4 in range((mr - r0) // 4):
                        out[nn, o0 + j, p0 + mr - 4 * r4 - 4, T.ramp(0, 1, 4 * V)] = _pack4(
                            T.Cast(f"int32x{V}", _requant(acc, mult, qp, j, mr - 4 * r4 - 4, o0)),
                            T.Cast(f"int32x{V}", _requant(acc, mult, qp, j, mr - 4 * r4 - 3, o0)),
                            T.Cast(f"int32x{V}", _requant(acc, mult, qp, j, mr - 4 * r4 - 2, o0)),
                            T.Cast(f"int32x{V}", _requant(acc, mult, qp, j, mr - 4 * r4 - 1, o0)))
            T.evaluate(_tile("tilerelease"))

    func = amx_pw.with_attr("op_pattern", OP_PATTERN_OPAQUE).with_attr(AMX_ATTR, 1)
    return mark_scheduled(func)
