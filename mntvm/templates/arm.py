"""ARM (NEON, 128-bit) default knobs for the CPU templates (:mod:`mntvm.templates.cpu`).

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


NEON = FamilyKnobs(name="neon", vector_bits=128, num_regs=32, pw=_pw_defaults, dw=_dw_defaults,
                   stem=_stem_defaults, dense=_dense_defaults)
