"""The Arm dot-product instruction ``sdot`` (ARMv8.2-A ``+dotprod``) as a TensorIntrin of ours.

The int8 pointwise and FC templates (:mod:`.compute_int8`) end in a 16 output lanes x 4 inputs
tile, weights packed (16, 4): 64 bytes, output lane ``o``'s 4 inputs at ``B[o, 0:4]``. One
128-bit ``sdot`` adds to each of 4 int32 lanes the dot product of 4 signed-byte pairs: with the
tile's 4 activations broadcast to all 4 lanes and ``B[4q:4q+4, 0:4]`` (16 consecutive bytes) as
the other operand it computes output lanes ``4q..4q+3``, so the whole tile is four ``sdot``
(``q`` = 0..3), each on one q register of weights and one of accumulators. The description is
the same (lanes x 4) reduction as the VNNI one (:func:`.compute_int8.dot_16x4_desc`), with s8 activations (sdot
multiplies s8 x s8; the Arm profiles quantize activations to int8).

Our own copy rather than TVM's ``dot_4x4_i8i8s32_sdot``: importing ``tvm.s_tir.tensor_intrin``
loads every target's intrinsics (25-40 s), and a 4 x 4 intrinsic would need the 16 lanes split
before tensorizing. AArch64 only: the intrinsic is ``llvm.aarch64.neon.sdot`` (AArch32's is
another one).
"""
from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from mntvm.templates.compute_int8 import dot_16x4_desc

SDOT = "sdot"  # the ``mntvm_dot`` annotation value (a key of cpu_int8.DOT_INTRINSICS)
SDOT_INTRIN = "mntvm_dot_16x4_sdot"  # the registered TensorIntrin


@T.prim_func(s_tir=True)
def _dot_16x4_i8i8i32_sdot(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4), dtype="int8x16")
        for q in T.unroll(4):
            C[T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                C.vload([q * 4], dtype="int32x4"), a, B.vload([q * 4, 0], dtype="int8x16"), dtype="int32x4")


TensorIntrin.register(SDOT_INTRIN, dot_16x4_desc("int8"), _dot_16x4_i8i8i32_sdot, override=True)
