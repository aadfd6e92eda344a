"""ARM (NEON, 128-bit) default knobs for the CPU templates (:mod:`mntvm.templates.cpu`) and the int8
ones (:mod:`mntvm.templates.cpu_int8`, at the end).

AArch64 has 32 128-bit registers (4 fp32 lanes), but a register tile holds fewer accumulators than
AVX-512's: LLVM loads each input of the four unrolled reduction steps of a channel block as its own
scalar (``ldp s, s``) for ``fmla ... v.s[0]``, so a tile of ``p_t`` positions keeps up to ``2 p_t``
inputs live next to its accumulators. Only the defaults differ; the template logic is shared.
Not measured on a board: chosen by what LLVM made of them (:mod:`.codegen`, ``benchmarks/hot_loops.py``).
"""
from __future__ import annotations

from mntvm.templates.knobs import FamilyKnobs, largest_divisor_le, pointwise_tiles, split2


def _pw_defaults(ob: int, p: int, ib: int, vec: int, num_regs: int) -> dict:
    # At most 16 accumulators. The AArch64 code of the fused kernels of 1.0/224, 1.0/192 and 0.75/160
    # (Cortex-A72, :mod:`.codegen`): 4x7, 4x6, 3x8, 2x12, 2x10 moved 18-84 q registers to and from the
    # stack per 96-112 fmla in their hottest loop, and llvm-mca's Cortex-A72 model gives them 1.06-1.69
    # cycles an fmla; 4x4, 2x8, 3x5, 2x7, 2x6 spill none and run at its 1.01 (1 fmla a cycle by element).
    # The x5 tiles are for the 5x5 maps of resolution 160 (1x1 there before: 1.5-1.8 cycles an fmla).
    # With 1-2 input blocks (8 channels in: alpha 0.25's first layer) the whole reduction is one unrolled
    # block and LLVM loads all its inputs ahead: every tile but the smallest spills there, and the model
    # prefers the large ones (cycles an fmla, alpha 0.25 at 224 / 192 / 160 / 128): 4x7 1.26 (86 spilled
    # per 112), 4x6 1.11 (55 per 96), 1x8 1.46 everywhere (none), 4x4 1.50-1.62, 2x8 1.48.
    first = [(4, 6), (4, 7), (1, 8), (1, 7)] if ib <= 2 else []
    return pointwise_tiles(ob, p, first + [(4, 4), (2, 8), (3, 5), (2, 7), (2, 6), (3, 4), (2, 5), (1, 8), (1, 7),
                                           (2, 4), (1, 5), (1, 4), (1, 2), (1, 1)])


def _dw_defaults(cb: int, ho: int, wo: int, vec: int, num_regs: int) -> dict:
    wt = largest_divisor_le(wo, 8)
    c_t = 2 if cb % 2 == 0 else 1
    return {"cb": split2(cb, c_t), "w": split2(wo, wt)}


def _stem_defaults(ob: int, ho: int, wo: int, vec: int, num_regs: int) -> dict:
    # one output-channel vector x 8 columns: 2x8 spilled 5 q registers in its hottest loop (1.29 cycles
    # an fmla in llvm-mca's Cortex-A72 model), 1x8 none (1.00)
    return {"ob": split2(ob, 1), "w": split2(wo, largest_divisor_le(wo, 8))}


def _dense_defaults(nb: int, k: int, vec: int, num_regs: int) -> dict:
    t = largest_divisor_le(nb, 8)
    return {"nb": split2(nb, t)}


# the fused template prefetches pointwise weights of 1 MB and more, as AVX-512 did until 2026-12-04 (there the
# layers of 2 MB and more now chunk their reduction instead and none prefetches, :mod:`.x86`; not measured on a board)
NEON = FamilyKnobs(name="neon", vector_bits=128, num_regs=32, pw=_pw_defaults, dw=_dw_defaults,
                   stem=_stem_defaults, dense=_dense_defaults, prefetch_weights=1 << 20)


# -- int8 templates (:mod:`.cpu_int8`) ----------------------------------------------------------
# An int8 accumulator is one block of 16 int32 lanes: four q registers on NEON. Not measured on Arm
# hardware (the emulated board's times are qemu's, not a core's): chosen by what LLVM made of them,
# llvm-mca's models (LLVM 14: Cortex-A57's, which it also gives A72 / N1 / A76, and Cortex-A55's),
# cycles per 16 multiply-adds in the hottest loop of 1.0/224's and 1.0/192's pointwise layers:
#   sdot (aarch64-dotprod), A57 / A55 model: 1x6 0.73 / 1.86 (no spill; where 6 divides the positions,
#   the 192 and 96 maps), 1x4 0.78 / 2.08, 2x2 0.74 / 2.23, 1x7 0.90 / 2.16 (7 accumulators + weights +
#   input: 33 registers, 22 spilled per 112 sdot; the old default at 224, which no 6 divides), 1x8
#   1.06 / 2.67. With 1-2 input blocks (alpha 0.25-0.5's first layer, one unrolled block) every tile
#   spills and the long ones lead: 1x7 1.29 / 2.69, 1x8 1.38 / 2.77, 1x4 2.22 / 3.59 (1x6 0.74 / 1.76).
#   Widening multiplies (no +dotprod, A57 model for A72): 2x2 3.32-3.55, 1x4 3.53-3.78, 1x6 3.73-3.87,
#   1x7 3.97-4.12 (80-107 spilled); on the odd 7x7 / 5x5 maps 4x1 3.24, 2x1 3.37, 1x5 3.72, 1x7 4.12.
def int8_pw_defaults(ob: int, p: int, ib: int, dot: str, num_regs: int) -> dict:
    """int8 pointwise: (channel blocks x positions) register tiles, by the instruction they run on."""
    if dot == "none":
        return pointwise_tiles(ob, p, [(2, 2), (4, 1), (2, 1), (1, 4), (1, 2), (1, 1)])
    first = [(1, 7), (1, 8)] if ib <= 2 else []
    return pointwise_tiles(ob, p, [(1, 6)] + first + [(1, 4), (1, 5), (1, 7), (1, 3), (2, 2), (1, 2), (1, 1)])


def int8_dw_defaults(cb: int, ho: int, wo: int, num_regs: int) -> dict:
    # Columns x channel vectors of accumulators (4 q registers each), up to 8 rows a task, padded once
    # at its start (:func:`.cpu_int8.schedule_depthwise_int8`). llvm-mca, cycles per output vector (16
    # channels: 9 taps and the requantization) of 1.0/224's 9 layers, A57 / A55 model: 4x1 60-62 /
    # 89-96 (11-14 q registers spilled a tile), 2x2 63-65 / 95-99, 2x1 64-66 / 102-112, 1x2 67-69 /
    # 110-114, 1x1 68-70 / 107-116, and the old default's 7x1 70-74 / 97-108 (106-121 spilled).
    if wo % 4 == 0:
        wt, ct = 4, 1
    else:
        wt = 2 if wo % 2 == 0 else 1
        ct = 2 if cb % 2 == 0 else 1
    return {"cb": split2(cb, ct), "h": split2(ho, largest_divisor_le(ho, 8)), "w": split2(wo, wt)}


def int8_stem_defaults(ob: int, ho: int, wo: int, num_regs: int) -> dict:
    return {"ob": split2(ob, 1), "h": split2(ho, 1), "w": split2(wo, largest_divisor_le(wo, 4))}


def int8_dense_defaults(nb: int, dot: str, num_regs: int) -> dict:
    return {"nb": split2(nb, largest_divisor_le(nb, 4))}
