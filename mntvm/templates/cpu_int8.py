"""CPU schedules of the int8 templates (:mod:`.compute_int8`), registered as ``s_tir.meta_schedule.cpu.<rule>``.

Same shape as the fp32 ones (:mod:`.cpu`): each is ``(sch, block, decisions=None)``, its knobs
sampled or replayed at ``decisions``. The pointwise and FC reductions end in a (16 output lanes x
4 inputs) tile; where the block's ``mntvm_dot`` annotation (set by :mod:`.lowering_int8` from the
target) names a dot instruction, that tile is tensorized with it (:data:`DOT_INTRINSICS`: the
annotation -> the registered TensorIntrin; ARM adds its ``sdot`` entry here), else the 16 lanes
are plain widening int32 multiply-adds (exact on any ISA). x86 without VNNI has its own (``avx2``):
the 4 activations widened to int16 and repeated, one ``vpmaddwd`` on 4 lanes' 4 int16 weights gives
each lane two pair sums: exact, unlike ``vpmaddubsw`` (which saturates int16 and is never used).
The pointwise conv and the stem keep those pair sums apart in their accumulators
(:func:`.compute_int8.pw_pairs`, tile :data:`PAIRS_INTRIN`) and add them once in the epilogue, their
weights packed as int16 (``vpmaddwd``'s memory operand); the FC sign-extends its int8 weights
(``vpmovsxbw``) and folds the pairs in each step (``vphaddd``, then ``vpermd`` for the lane order).
The depthwise conv pairs its taps (:data:`DW_PAIRS_INTRIN`).
1.0/224 uint8 on a Zen 2, template defaults, 1 thread: 26.1 ms with the fold in every layer (the
pointwise ones at 46-48 GOP/s), 16.4 ms with the pointwise pairs kept (76-86 GOP/s), 14.4 ms with
int16 pointwise weights, the depthwise taps in pairs and the stem on pairs too (ONNX Runtime int8:
14.5-14.9 ms in the same runs).
The accumulator tile is in "local" scope (registers after unrolling): the intrinsics here declare it so.

The dot instructions are registered here under our own names, with the description of TVM's
``dot_16x4_vnni``: importing ``tvm.s_tir.tensor_intrin`` loads every target's intrinsics (CUDA's
included) and takes 25-40 s, and TVM's body passes ``vpdpbusd.512`` i32 vectors where the LLVM
it is built with (>= 20) declares ``<64 x i8>`` operands (it fails to compile).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import tvm
from tvm.s_tir import Schedule, TensorIntrin
from tvm.script import tirx as T

from mntvm.templates.compute_int8 import BITS_KEY, DOT_KEY, dot_16x4_desc, dw_pairs, pw_pairs
from mntvm.templates.knobs import FamilyKnobs, buffer_shape, cat, rows_and_columns, single_consumer_epilogue, \
    taps_outside, tile
from mntvm.templates.registry import RULE_DENSE8, RULE_DW8, RULE_POOL8, RULE_PW8, RULE_STEM8, mark_scheduled, rule
from mntvm.templates import arm, x86
from mntvm.templates.cpu import schedule_pool
from mntvm.templates.arm_int8 import SDOT, SDOT_INTRIN


@T.prim_func(s_tir=True)
def _dot_16x4_u8i8i32_vnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16), dtype="uint8x64")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"), a, B.vload([0, 0], dtype="int8x64"), dtype="int32x16")


@T.prim_func(s_tir=True)
def _dot_16x4_u8i8i32_avx2(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        # (a0, a1, a2, a3) as int16, repeated: vpmaddwd pairs them with a lane's 4 weights
        a = T.reinterpret(T.broadcast(T.reinterpret(T.Cast("int16x4", A.vload([0], "uint8x4")), dtype="int64"), 4),
                          dtype="int16x16")
        i = T.ramp(T.int32(0), 1, 8)
        q = i // T.broadcast(T.int32(2), 8)
        two = T.broadcast(T.int32(2), 8)
        perm = i % two + two * (q % two * two + q // two)  # (0, 1, 4, 5, 2, 3, 6, 7): undoes phadd's order
        for h in T.unroll(2):  # output lanes 8h .. 8h+7 (one ymm of int32)
            lo = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                                         a, T.Cast("int16x16", B.vload([h * 8, 0], dtype="int8x16")),
                                         dtype="int32x8")  # lanes 8h..8h+3, two half sums each
            hi = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                                         a, T.Cast("int16x16", B.vload([h * 8 + 4, 0], dtype="int8x16")),
                                         dtype="int32x8")
            sums = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.phadd.d"), lo, hi,
                                           dtype="int32x8")  # lanes (0, 1, 4, 5 | 2, 3, 6, 7) of the 8
            C[T.ramp(h * 8, 1, 8)] = C.vload([h * 8], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.permd"), sums, perm, dtype="int32x8")


@T.prim_func(s_tir=True)
def _pairs_16x4_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int16", offset_factor=1),
    C: T.Buffer((16, 2), "int32", offset_factor=1, scope="local"),
) -> None:
    # the pointwise / stem tile of :func:`.compute_int8.pw_pairs`: C[i, h] += sum_j A[2h + j] * B[i, 2h + j]
    with T.sblock("root"):
        T.reads(C[0:16, 0:2], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16, 0:2])
        for i, h, j in T.grid(16, 2, 2):
            with T.sblock("update"):
                vi, vh, vj = T.axis.remap("SSR", [i, h, j])
                C[vi, vh] = C[vi, vh] + T.cast(A[vh * 2 + vj], "int32") * T.cast(B[vi, vh * 2 + vj], "int32")


@T.prim_func(s_tir=True)
def _pairs_16x4_u8i16i32_avx2(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int16", offset_factor=1),
    C: T.Buffer((16, 2), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16, 0:2], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16, 0:2])
        # (a0, a1, a2, a3) as int16, repeated: vpmaddwd pairs them with 4 lanes' 4 (int16) weights,
        # giving (lane, pair) sums in C's own order: accumulated as they come, no horizontal add
        a = T.reinterpret(T.broadcast(T.reinterpret(T.Cast("int16x4", A.vload([0], "uint8x4")), dtype="int64"), 4),
                          dtype="int16x16")
        for q in T.unroll(4):  # lanes 4q .. 4q+3
            C[q * 4, T.ramp(T.int32(0), 1, 8)] = C.vload([q * 4, 0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a, B.vload([q * 4, 0], dtype="int16x16"),
                dtype="int32x8")


@T.prim_func(s_tir=True)
def _dw_4taps_desc(
    A: T.Buffer((4, 16), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4, 0:16], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk, vi], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dw_4taps_vnni(
    A: T.Buffer((4, 16), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4, 0:16], B[0:16, 0:4])
        T.writes(C[0:16])
        r = T.ramp(T.int32(0), 1, 64)  # byte 4i + k of the dot operand <- column k, channel i
        a = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.permvar.qi.512"),
                                    A.vload([0, 0], dtype="uint8x64"), T.Cast("int8x64", (r % 4) * 16 + r // 4),
                                    dtype="uint8x64")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"), a, B.vload([0, 0], dtype="int8x64"), dtype="int32x16")


@T.prim_func(s_tir=True)
def _dw_pairs_desc(
    A: T.Buffer((16,), "int32", offset_factor=1),
    B: T.Buffer((16, 2), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:16], B[0:16, 0:2])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            with T.sblock("update"):
                vi = T.axis.remap("S", [i])
                C[vi] = C[vi] + (T.bitwise_and(A[vi], 65535) * T.cast(B[vi, 0], "int32")
                                 + T.shift_right(A[vi], 16) * T.cast(B[vi, 1], "int32"))


@T.prim_func(s_tir=True)
def _dw_pairs_avx2(
    A: T.Buffer((16,), "int32", offset_factor=1),
    B: T.Buffer((16, 2), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:16], B[0:16, 0:2])
        T.writes(C[0:16])
        for h in T.unroll(2):  # channels 8h .. 8h+7: (column, next column) as the int16 halves of a lane
            C[T.ramp(h * 8, 1, 8)] = C.vload([h * 8], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(A.vload([h * 8], dtype="int32x8"), dtype="int16x16"),
                T.Cast("int16x16", B.vload([h * 8, 0], dtype="int8x16")), dtype="int32x8")


VNNI = "vnni"
AVX2 = "avx2"  # no VNNI: vpmaddwd on int16-widened pairs, exact (never vpmaddubsw, which saturates)
# the depthwise 4-tap step (:func:`.compute_int8.dw_taps4`): 4 columns x 16 channels (64 contiguous
# bytes) transposed by ``vpermb`` into 16 lanes x 4 taps, then one ``vpdpbusd``
DW_4TAPS_INTRIN = "mntvm_dw_4taps_vnni"
TensorIntrin.register(DW_4TAPS_INTRIN, _dw_4taps_desc, _dw_4taps_vnni, override=True)
# the depthwise pair of taps (:func:`.compute_int8.dw_pairs`, AVX2): 16 channels x (a column, the next)
# as int16 from the ``pad_pairs`` block, one ``vpmaddwd`` per 8 channels
DW_PAIRS_INTRIN = "mntvm_dw_pairs_avx2"
TensorIntrin.register(DW_PAIRS_INTRIN, _dw_pairs_desc, _dw_pairs_avx2, override=True)
DW_INTRINSICS = {VNNI: DW_4TAPS_INTRIN, AVX2: DW_PAIRS_INTRIN}  # mntvm_dot of a depthwise block -> its tile
# mntvm_dot annotation -> (TensorIntrin name, output lanes, activation dtype). "none": no entry.
DOT_INTRINSICS = {VNNI: ("mntvm_dot_16x4_vnni", 16, "uint8"), AVX2: ("mntvm_dot_16x4_avx2", 16, "uint8"),
                  SDOT: (SDOT_INTRIN, 16, "int8")}  # sdot: .arm_int8
TensorIntrin.register(DOT_INTRINSICS[VNNI][0], dot_16x4_desc("uint8"), _dot_16x4_u8i8i32_vnni, override=True)
TensorIntrin.register(DOT_INTRINSICS[AVX2][0], dot_16x4_desc("uint8"), _dot_16x4_u8i8i32_avx2, override=True)
# the pointwise tile where :func:`.compute_int8.pw_pairs` (AVX2): 16 lanes x 2 pair sums
PAIRS_INTRIN = "mntvm_pairs_16x4_avx2"
TensorIntrin.register(PAIRS_INTRIN, _pairs_16x4_desc, _pairs_16x4_u8i16i32_avx2, override=True)


def dot_of(sch: Schedule, block) -> str:
    """The dot instruction a block's ``mntvm_dot`` annotation names ("none": plain multiply-adds)."""
    ann = sch.get(block).annotations
    return str(ann[DOT_KEY]) if DOT_KEY in ann else "none"


def _dot_tail(sch: Schedule, block, lane_loop, k_loop, dot: str, reduce_loop, pairs: bool = False):
    """The innermost (lanes x 4 inputs) tile: tensorized with ``dot``'s intrinsic (``pairs``: the
    split pair accumulators' :data:`PAIRS_INTRIN`), or the 4 inputs unrolled around 16-lane vector
    multiply-adds; the accumulators' init split off at ``reduce_loop``."""
    if pairs:
        sch.decompose_reduction(block, reduce_loop)
        sch.tensorize(lane_loop, PAIRS_INTRIN)
    elif dot in DOT_INTRINSICS:
        sch.decompose_reduction(block, reduce_loop)
        sch.tensorize(lane_loop, DOT_INTRINSICS[dot][0])
    else:
        sch.reorder(k_loop, lane_loop)
        sch.unroll(k_loop)
        sch.vectorize(lane_loop)
        sch.decompose_reduction(block, reduce_loop)


def _reduction_outside(sch: Schedule, conv, dot: str):
    """The last loops of a pointwise or stem conv computed at its register tile, ``(n, o, p, v[,
    h], r0, r1, i)`` (``h``: the pair sums of :func:`.compute_int8.pw_pairs`), reordered to ``(r0,
    r1, n, o, p, v[, h], i)``: the reductions over the tile. Returns ``(r0, r1, n, o, p, v, i,
    pairs)``."""
    pairs = pw_pairs(dot)
    loops = sch.get_loops(conv)[-(7 + pairs):]
    n, o, p, v = loops[:4]
    r0, r1, i = loops[-3:]
    sch.reorder(r0, r1, n, o, p, v, *loops[4:4 + pairs], i)
    return r0, r1, n, o, p, v, i, pairs


@rule("cpu", RULE_PW8)
def schedule_pointwise_int8(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Register-tiled int8 1x1 conv: (ob_t vectors x p_t positions) int32 accumulators in registers,
    4 input channels per dot step; requantized in the epilogue, vectorized over the 16 lanes."""
    conv, dot = block, dot_of(sch, block)
    epi = single_consumer_epilogue(sch, conv)
    n, ob, p, v = sch.get_loops(epi)[-4:]
    ob0, ob1 = sch.split(ob, tile(sch, ob, 2, 8, d, "ob"))
    p0, p1, p2 = sch.split(p, tile(sch, p, 3, 16, d, "p"))
    order = cat(sch, [0, 1], d, "order")
    if int(sch.get(order)) == 0:
        sch.reorder(n, ob0, p0, p1, ob1, p2, v)
    else:
        sch.reorder(n, p0, ob0, p1, ob1, p2, v)
    fused = sch.fuse(*sch.get_loops(epi)[-7:-4])
    sch.parallel(fused)
    sch.compute_at(conv, p1, preserve_unit_loops=True)
    sch.vectorize(v)
    sch.unroll(p2)
    sch.unroll(ob1)
    sch.set_scope(conv, 0, "local")
    c_ib, c_k4, c_n, c_ob, c_p, c_v, c_i4, pairs = _reduction_outside(sch, conv, dot)
    sch.unroll(c_p)
    sch.unroll(c_ob)
    sch.unroll(c_n)
    sch.unroll(c_k4)
    _dot_tail(sch, conv, c_v, c_i4, dot, c_ib, pairs)
    return sch


def _row_tiles(sch: Schedule, conv, d: dict | None, ch_key: str):
    """Depthwise / stem: the epilogue's positions as rows x column tiles, ``h_t`` rows per parallel
    task, ``ch_key`` channel vectors x ``w_t`` columns of int32 accumulators in registers (the
    reduction computed at each column tile, in "local" scope). Returns the parallel task loop."""
    n, cb, h, w, v = rows_and_columns(sch, conv)
    cb0, cb1 = sch.split(cb, tile(sch, cb, 2, 4, d, ch_key))
    h0, h1 = sch.split(h, tile(sch, h, 2, 4, d, "h"))
    w0, w1 = sch.split(w, tile(sch, w, 2, 16, d, "w"))
    sch.reorder(n, cb0, h0, h1, w0, cb1, w1, v)
    task = sch.fuse(n, cb0, h0)
    sch.parallel(task)
    sch.compute_at(conv, w0, preserve_unit_loops=True)
    sch.vectorize(v)
    sch.unroll(w1)
    sch.unroll(cb1)
    sch.set_scope(conv, 0, "local")
    return task


@rule("cpu", RULE_DW8)
def schedule_depthwise_int8(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Depthwise: ``h_t`` rows per parallel task, ``w_t`` columns x ``cb_t`` channel vectors of
    int32 accumulators, from the padded rows of the task (its ``h_t`` output rows + 2), padded once
    at the start of the task: widening multiply-adds per tap or pair of taps (no dot instruction:
    Arm, :func:`.compute_int8.dw_tap_pairs`), or (``mntvm_dot`` VNNI,
    :func:`.compute_int8.dw_taps4`) one ``vpdpbusd`` per kernel row of each output vector
    (AVX2, :func:`.compute_int8.dw_pairs`: two ``vpmaddwd`` steps per kernel row and 8 channels,
    from the task's ``pad_pairs`` rows). The plain kernel checked each tap's bounds inline before
    (a branch per tap and column: on AArch64 its 7-column tile's hottest block held 42 of its 126
    multiplies, with 52-66 q registers spilled). Padding per task rather than before each output row (the
    3 rows it reads, each padded again for the next row) is 25-35 % faster over the 13 layers of
    1.0/224 (1 thread, interleaved A/B, 8 rows a task): fewer copies, and (we think most of it; no
    counters in these VMs) the dot step's 64-byte loads span four 16-byte pad stores, which the
    CPU cannot forward while they are in flight: now they were stored rows earlier."""
    conv, dot = block, dot_of(sch, block)
    (pad,) = [p for p in sch.get_producers(conv) if sch.get(p).name_hint in ("pad_dw", "pad_pairs")]
    task = _row_tiles(sch, conv, d, "cb")
    sch.compute_at(pad, task, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(pad)[-1])
    if dot not in DW_INTRINSICS:
        taps_outside(sch, conv, len(sch.get(conv).iter_vars) - 4)
        return sch
    if dw_pairs(dot):
        c_n, c_cb, c_p, c_v, c_kh, c_t2 = sch.get_loops(conv)[-6:]
        sch.reorder(c_kh, c_t2, c_n, c_cb, c_p, c_v)
        outer = (c_kh, c_t2, c_n, c_cb, c_p)
    else:
        c_n, c_cb, c_p, c_v, c_kh, c_k4 = sch.get_loops(conv)[-6:]
        sch.reorder(c_kh, c_n, c_cb, c_p, c_v, c_k4)
        outer = (c_kh, c_n, c_cb, c_p)
    for loop in outer:
        sch.unroll(loop)
    sch.decompose_reduction(conv, c_kh)
    sch.tensorize(c_v, DW_INTRINSICS[dot])
    return sch


@rule("cpu", RULE_STEM8)
def schedule_stem_int8(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Stem: ``ob_t`` output vectors x ``w_t`` columns of int32 accumulators in registers, ``h_t``
    rows per parallel task; each tap one (lanes x 4 channels) dot step, taps unrolled outside."""
    conv, dot = block, dot_of(sch, block)
    _row_tiles(sch, conv, d, "ob")
    c_kh, c_kw, c_n, c_ob, c_p, c_v, c_i4, pairs = _reduction_outside(sch, conv, dot)
    for loop in (c_kh, c_kw, c_n, c_ob, c_p):
        sch.unroll(loop)
    _dot_tail(sch, conv, c_v, c_i4, dot, c_kh, pairs)
    return sch


@rule("cpu", RULE_DENSE8)
def schedule_dense_int8(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """FC: ``nb_t`` output vectors of int32 accumulators in registers, 4 inputs per dot step."""
    acc, dot = block, dot_of(sch, block)
    single_consumer_epilogue(sch, acc)
    n, nb, v, k4, i4 = sch.get_loops(acc)[-5:]
    nb0, nb1 = sch.split(nb, tile(sch, nb, 2, 8, d, "nb"))
    sch.reorder(n, nb0, k4, nb1, v, i4)
    fused = sch.fuse(n, nb0)
    sch.parallel(fused)
    wb = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(wb, fused, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(wb)[-1])
    sch.unroll(nb1)
    _dot_tail(sch, acc, v, i4, dot, k4)
    return sch


@rule("cpu", RULE_POOL8)
def schedule_pool_int8(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Global average pool: 16 channels of int32 sums vectorized in registers, requantized there."""
    return schedule_pool(sch, block, d, vector_epilogue=True)


def schedule_quantize(func):
    """The input quantization (:func:`.compute_int8.quantize_te`, no knobs) scheduled: parallel
    over rows, the 4 channels of a pixel unrolled, scalar (vectorizing over pixels or channels
    scatters the interleaved stores: 3-4x slower, 0.25-0.37 ms vs 0.08 ms at 224^2, 1 thread)."""
    sch = Schedule(tvm.IRModule({"main": func}))
    b = sch.get_sblock("quantize")
    n, i, _, k = sch.get_loops(b)
    sch.unroll(k)
    sch.parallel(sch.fuse(n, i))
    return mark_scheduled(sch.mod["main"])


@dataclasses.dataclass(frozen=True)
class Int8Knobs:
    """A family's int8 default-knob functions."""

    pw: Callable  # (ob, p, ib, dot, num_regs) -> decisions
    dw: Callable  # (cb, ho, wo, num_regs) -> decisions
    stem: Callable  # (ob, ho, wo, num_regs) -> decisions
    dense: Callable  # (nb, dot, num_regs) -> decisions


_X86 = Int8Knobs(x86.int8_pw_defaults, x86.int8_dw_defaults, x86.int8_stem_defaults, x86.int8_dense_defaults)
# knob family name (:func:`.families.family_for`) -> the int8 default-knob table of that family
INT8_FAMILIES = {"avx512": _X86, "avx2": _X86,
                 "neon": Int8Knobs(arm.int8_pw_defaults, arm.int8_dw_defaults, arm.int8_stem_defaults,
                                   arm.int8_dense_defaults)}


def default_knobs(sch: Schedule, block, name: str, fam: FamilyKnobs) -> dict:
    """The family's default int8 knob values for ``block`` (a block carrying int8 rule ``name``)."""
    b = sch.get(block)
    table = INT8_FAMILIES[fam.name]
    dot = dot_of(sch, block)
    # the AVX2 kernels are 256-bit code, their tiles sized for 16 ymm (measured on a Zen 2), also
    # where an AVX-512 CPU without VNNI (Skylake-X: family "avx512", 32 registers) runs them: the
    # VNNI tiles would need four times the registers with pair sums kept apart
    num_regs = min(fam.num_regs, 16) if dot == AVX2 else fam.num_regs
    out = buffer_shape(b.writes[0].source)
    if name == RULE_PW8:
        ob, p = out[1], out[2]  # (N, OB, P, V), or (N, OB, P, V, 2) with pair sums
        ib = buffer_shape(b.reads[0].source)[1]
        for r in b.reads:
            if r.source.dtype in ("uint8", "int8") and len(r.source.shape) == 4:
                ib = buffer_shape(r.source)[1]
        return table.pw(ob, p, ib, dot, num_regs)
    if name in (RULE_DW8, RULE_STEM8):
        cb, p = out[1], out[2]  # (N, CB, P, V), or (N, OB, P, V, 2) with pair sums
        wo = int(b.annotations["mntvm_wo"])
        f = table.dw if name == RULE_DW8 else table.stem
        return f(cb, p // wo, wo, num_regs)
    if name == RULE_DENSE8:
        return table.dense(out[1], dot, num_regs)
    return {}


def vector_bits_of(block_stmt) -> int | None:
    """The profile vector width the lowering recorded on an int8 block (None: not one)."""
    ann = block_stmt.annotations
    return int(ann[BITS_KEY]) if ann is not None and BITS_KEY in ann else None
