"""ARM (NEON, 128-bit) knob spaces and defaults for the CPU conv templates in :mod:`mntvm.sched_cpu`.

AArch64 has 32 128-bit registers (4 fp32 lanes): the pointwise register tile is up to 6
output-channel vectors x 4 positions or 4 x 6 (24 accumulators), like the x86 AVX-512 case
but with V=4. Only the defaults differ; the template logic is shared.
"""
from __future__ import annotations

from mntvm.templates.cpu import FamilyKnobs, largest_divisor_le


def _pw_defaults(ob: int, p: int, ib: int, vec: int, num_regs: int) -> dict:
    prefs = [(4, 6), (4, 7), (3, 8), (2, 12), (4, 4), (2, 8), (2, 7), (1, 8), (1, 7), (1, 4), (1, 2), (1, 1)]
    for o_t, p_t in prefs:
        if ob % o_t == 0 and p % p_t == 0:
            break
    rest = p // p_t
    p_mid = largest_divisor_le(rest, max(1, 64 // p_t))
    return {"ob": [ob // o_t, o_t], "p": [rest // p_mid, p_mid, p_t], "order": 0}


def _dw_defaults(cb: int, ho: int, wo: int, vec: int, num_regs: int) -> dict:
    wt = largest_divisor_le(wo, 8)
    c_t = 2 if cb % 2 == 0 else 1
    return {"cb": [cb // c_t, c_t], "w": [wo // wt, wt]}


def _stem_defaults(ob: int, ho: int, wo: int, vec: int, num_regs: int) -> dict:
    wt = largest_divisor_le(wo, 8)
    o_t = largest_divisor_le(ob, 2)
    return {"ob": [ob // o_t, o_t], "w": [wo // wt, wt]}


def _dense_defaults(nb: int, k: int, vec: int, num_regs: int) -> dict:
    t = largest_divisor_le(nb, 8)
    return {"nb": [nb // t, t]}


NEON = FamilyKnobs(name="neon", vector_bits=128, num_regs=32, pw=_pw_defaults, dw=_dw_defaults,
                   stem=_stem_defaults, dense=_dense_defaults)
