"""ARM (NEON, 128-bit) default knobs for the CPU templates (:mod:`mntvm.templates.cpu`) and the int8
ones (:mod:`mntvm.templates.cpu_int8`, at the end).

AArch64 has 32 128-bit registers (4 fp32 lanes): the pointwise register tile is up to 6
output-channel vectors x 4 positions or 4 x 6 (24 accumulators), like the x86 AVX-512 case
but with V=4. Only the defaults differ; the template logic is shared.
"""
from __future__ import annotations

from mntvm.templates.knobs import FamilyKnobs, largest_divisor_le, pointwise_tiles, split2


def _pw_defaults(ob: int, p: int, ib: int, vec: int, num_regs: int) -> dict:
    return pointwise_tiles(ob, p, [(4, 6), (4, 7), (3, 8), (2, 12), (4, 4), (2, 8), (2, 7), (1, 8), (1, 7), (1, 4),
                                   (1, 2), (1, 1)])


def _dw_defaults(cb: int, ho: int, wo: int, vec: int, num_regs: int) -> dict:
    wt = largest_divisor_le(wo, 8)
    c_t = 2 if cb % 2 == 0 else 1
    return {"cb": split2(cb, c_t), "w": split2(wo, wt)}


def _stem_defaults(ob: int, ho: int, wo: int, vec: int, num_regs: int) -> dict:
    wt = largest_divisor_le(wo, 8)
    o_t = largest_divisor_le(ob, 2)
    return {"ob": split2(ob, o_t), "w": split2(wo, wt)}


def _dense_defaults(nb: int, k: int, vec: int, num_regs: int) -> dict:
    t = largest_divisor_le(nb, 8)
    return {"nb": split2(nb, t)}


# the fused template prefetches pointwise weights of 1 MB and more, as on AVX-512 (not measured on a board)
NEON = FamilyKnobs(name="neon", vector_bits=128, num_regs=32, pw=_pw_defaults, dw=_dw_defaults,
                   stem=_stem_defaults, dense=_dense_defaults, prefetch_weights=1 << 20)


# -- int8 templates (:mod:`.cpu_int8`) ----------------------------------------------------------
# An int8 accumulator is one block of 16 int32 lanes: four q registers on NEON, so a register tile
# holds ~6 of them (24 of the 32 registers) next to one 16 x 4 weight tile (4 registers, 64 bytes)
# and the broadcast activations. Not measured on Arm hardware yet (the emulated board's times are
# qemu's, not a core's): chosen by register count.
def int8_pw_defaults(ob: int, p: int, ib: int, dot: str, num_regs: int) -> dict:
    """int8 pointwise: (channel blocks x positions) tiles of at most 7 accumulators (28 q registers
    with sdot, whose weights are read one q register at a time)."""
    return pointwise_tiles(ob, p, [(1, 6), (2, 3), (1, 7), (1, 4), (2, 2), (1, 5), (1, 3), (1, 2), (1, 1)])


def int8_dw_defaults(cb: int, ho: int, wo: int, num_regs: int) -> dict:
    wt = 7 if wo % 7 == 0 else largest_divisor_le(wo, 4)
    return {"cb": split2(cb, 1), "h": split2(ho, 1), "w": split2(wo, wt)}


def int8_stem_defaults(ob: int, ho: int, wo: int, num_regs: int) -> dict:
    return {"ob": split2(ob, 1), "h": split2(ho, 1), "w": split2(wo, largest_divisor_le(wo, 4))}


def int8_dense_defaults(nb: int, dot: str, num_regs: int) -> dict:
    return {"nb": split2(nb, largest_divisor_le(nb, 4))}
