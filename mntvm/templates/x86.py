"""x86 (AVX2 / AVX-512) default knobs for the CPU templates (:mod:`mntvm.templates.cpu`).

The template logic is shared; a family only chooses the vector width and the default register
tiles. With AVX-512 there are 32 zmm registers: the pointwise default keeps
up to ~28 accumulators (output-channel vectors x spatial positions) live; with AVX2 (16 ymm)
10-12, as in the notes.
"""
from __future__ import annotations

from mntvm.templates.knobs import FamilyKnobs, largest_divisor_le, pointwise_tiles, split2


def _pw_defaults(ob: int, p: int, ib: int, vec: int, num_regs: int) -> dict:
    # (oc vectors, spatial) register tiles by preference; the first whose sizes divide is taken.
    if num_regs >= 32:
        # Measured on Sapphire/Emerald Rapids, 1 thread: 2x8, 2x7, 4x4 reach 86-97 % of the zmm FMA
        # peak; 4x7 / 2x12 (28 / 24 accumulators) spill (52-59 %). With 1-2 input blocks (Cin <= 32)
        # 4x4 is 7-10 % faster. The 5-wide tiles are for the 5x5 layers of resolution 160 (P = 25:
        # without them the tile fell to 1x1, 12-16 % of peak; 4x5 / 2x5 reach 62-96 %), the 3-wide
        # ones for 48 output channels (alpha 0.75: 1x8 gave 47 %, 3x8 61 %). 4x6 is for the 6x6 layers
        # of resolution 192 (P = 36, which took 4x4): fused, 1 thread, interleaved, 8-15 % faster on
        # all four of its shapes (1024->1024 0.85/0.93 -> 0.71/0.81 ms; 2 threads 0.47 -> 0.42 ms).
        # 4x6 goes first where it divides (the maps of resolution 192, all multiples of 6 positions): an
        # Emerald Rapids-class VM, 1.0/192 in the network, interleaved against 2x8 (both without the weight
        # prefetch, :data:`AVX512`), 1 / 2 threads: 0.939 / 0.950 (the 12x12 512->512 layer alone, hot, 0.93).
        first = [(4, 4)] if ib <= 2 else [(4, 6)]
        return pointwise_tiles(ob, p, first + [(2, 8), (2, 7), (4, 5), (2, 5), (4, 6), (4, 4), (3, 8), (3, 7), (1, 8),
                                               (1, 7), (2, 4), (1, 5), (1, 4), (1, 2), (1, 1)])
    # AVX2 (16 ymm), measured on Zen 2, 1 thread, GFLOP/s at a 93 GFLOP/s FMA-loop peak: 12 accumulators
    # run at 97-102 (4x3, 3x4 and 2x6, each in the loop order that fits: cpu.inner_positions_outside),
    # 10 at 94-101 (2x5), 8 at 70-80 (4x2, 2x4: FMA latency), 7 at 64-66 (1x7, the 7x7 layers); 2x7
    # spills (46-54, the old default on every 224 / 112 map) and 1x14 too (64-73).
    return pointwise_tiles(ob, p, [(4, 3), (3, 4), (2, 6), (2, 5), (4, 2), (2, 4), (1, 7), (1, 8), (1, 4), (1, 2),
                                   (1, 1)])


def _pw_ragged(ob: int, p: int, ib: int, vec: int, num_regs: int,
               chunk_panels: int | None = None) -> tuple[int, int] | None:
    """AVX2, fused template: a 12-accumulator tile whose positions need not divide ``p``, where the
    best tile that divides has fewer than 10 accumulators (every map of resolutions 224 and 128: 2^k
    or 7 x 2^k positions), or fewer than 12 where a 4-vector panel of the weights is chunked (more
    than ``chunk_panels`` bytes: the 10x10 / 5x5 maps of resolution 160 from 512 input channels).
    Measured on Zen 2, 1 thread: 4x3 over 196 / 784 / 49 positions with the last tile masked 96-102
    GFLOP/s (4x2 there: 70-80, 1x7 on 49: 64-66). 1.0/160 with 4x3 chunked instead of 2x5 on its
    10x10 512->512 and 5x5 layers, in the network, interleaved: 0.97-0.99 at 1 thread, 0.94 at 2;
    0.75/160 0.98-1.00, 0.5/160 1.00-1.01 (2x5 everywhere a 4x3 tile would not be chunked: on the
    larger maps of resolution 160 4x3 ran 0-3 % slower)."""
    d = _pw_defaults(ob, p, ib, vec, num_regs)
    acc = d["ob"][1] * d["p"][2]
    if acc >= 12 or (acc >= 10 and (chunk_panels is None or 4 * ib * vec * vec * 4 <= chunk_panels)):
        return None
    for o_t, p_t in ((4, 3), (3, 4), (2, 6)):
        if ob % o_t == 0 and p > p_t:
            return o_t, p_t
    return None


def _dw_defaults(cb: int, ho: int, wo: int, vec: int, num_regs: int) -> dict:
    # Depthwise is memory/overhead bound: tiles matter little (+-10 % in a sweep on SPR);
    # 7 or 8 output columns, and 2 channel blocks per tile on the small 14x14 / 7x7 layers.
    wt = 7 if wo % 7 == 0 else largest_divisor_le(wo, 8)
    ct = 2 if wo <= 14 and cb % 2 == 0 else 1
    return {"cb": split2(cb, ct), "w": split2(wo, wt)}


def _stem_defaults(ob: int, ho: int, wo: int, vec: int, num_regs: int) -> dict:
    # The row-tiled stem (AVX-512; AVX2's is the padded one, :func:`.cpu.stem_flat_knobs`). AVX-512, 1.0/224,
    # LLVM's code (:mod:`.codegen`): 2 channel vectors x 8 columns moved 18 zmm to and from the stack
    # in its hottest loop (0.70 cycles an FMA in llvm-mca's Skylake-SP model), 1 x 16 none (0.57); not
    # timed on an AVX-512 machine yet
    if num_regs >= 32:
        return {"ob": split2(ob, 1), "w": split2(wo, largest_divisor_le(wo, 16))}
    return {"ob": split2(ob, 2 if ob % 2 == 0 else 1), "w": split2(wo, largest_divisor_le(wo, 4))}


def _dense_defaults(nb: int, k: int, vec: int, num_regs: int) -> dict:
    # AVX2: up to 12 accumulators. 1000 classes are 125 blocks of 8, whose largest divisor <= 4 is 1:
    # one accumulator waits on the FMA latency at every step (Zen 2, 1 thread, in the network:
    # 0.30 ms; 5 accumulators 0.165 ms, 25 spill: 0.32)
    t = largest_divisor_le(nb, 4 if num_regs >= 32 else 12)
    return {"nb": split2(nb, t)}


# AVX-512 (Emerald Rapids-class VM, 2026-12-04; in the network, interleaved, 1 / 2 threads): the fused layers
# of 2 MB of pointwise weights and more (the 512->1024 and 1024->1024 layers, more than a core's 2 MB L2 holds
# beside the activations: read from L3) run their reduction in chunks (:func:`.cpu.reduction_chunk`: 2 input
# blocks), and no layer prefetches its next weight panel (:mod:`.prefetch`; until that day every layer of 1 MB
# and more did). Chunked against prefetched (from 2 MB on): 1.0/224 0.999 / 0.999, 1.0/192 0.983 / 0.992,
# 1.0/160 0.989 / 0.992, 1.0/128 0.986 / 0.961, 0.75/224 0.998 / 1.003; alone, caches cold, those layers 0.83-0.95x.
# Prefetch from 2 MB against from 1 MB (on 1-2-vector tiles; 4x6 / 4x5 lost with it): 1.0/224 0.991 / 1.002,
# 1.0/192 0.994 / 0.995, 1.0/160 0.975 / 0.990; the 12x12 512->512 layer of 1.0/192 (1 MB, 4x6) alone 0.85x
# without it. Chunks on the 1 MB layers lose: 1.0/224 with 8-16 KB chunks on its 14x14 ones 1.008-1.012 /
# 0.998, alone 12x12 512->512 (4x6) 1.03-1.05x. A tile qualifies for chunks by its panel (``chunk_panels``,
# AVX2's rule; a build that turns it on: ``benchmarks/chunks.py``) with up to 8 positions (2x7, 2x8: 8-9
# bytes of weights an FMA, as AVX2's 4x3).
# AVX2: no prefetch. On Zen 2 (512 KB L2) with the ragged 4x3 tiles they cost: 1.0/224, 1 thread, in the
# network, 12.25-12.33 ms without, 12.50-12.60 with (14x14 512->512: 1.08 against 1.12 ms);
# 2 threads the same within noise.
AVX512 = FamilyKnobs(name="avx512", vector_bits=512, num_regs=32, pw=_pw_defaults, dw=_dw_defaults,
                     stem=_stem_defaults, dense=_dense_defaults, chunk_positions=8, chunk_weights=2 << 20)
# AVX2: the fused template's reduction in chunks where a weight panel is more than Zen 2's 32 KB L1
# (:func:`.cpu.reduction_chunk`), for register tiles of at most 4 positions: each weight vector serves
# that many FMAs, so a panel from L2 costs 32 / p_t bytes an FMA (4x3: 11 B, 64 KB panels and larger, in
# the network, chunked / not: 1.0/128 0.93-0.95, 1.0/192 0.97, 0.75/224 0.98; 3x4 on 0.75/128 0.95); with
# 5 (2x5: 6 B) chunks cost more than they save (1.0/160: 1.01-1.02, alone 7x7 1024->1024 at 5x5 1.00-1.04)
AVX2 = FamilyKnobs(name="avx2", vector_bits=256, num_regs=16, pw=_pw_defaults, dw=_dw_defaults,
                   stem=_stem_defaults, dense=_dense_defaults, pw_ragged=_pw_ragged, chunk_panels=32 << 10,
                   chunk_positions=4)


# -- int8 templates (:mod:`.cpu_int8`) ----------------------------------------------------------
def int8_pw_defaults(ob: int, p: int, ib: int, dot: str, num_regs: int) -> dict:
    """int8 pointwise: each accumulator is one vector of 16 int32 (a zmm; two ymm on AVX2)."""
    if dot != "none" and num_regs >= 32:
        # VNNI: ob_t * p_t accumulators + ob_t weight tiles in the 32 zmm (activations are
        # broadcast from memory by vpdpbusd itself). Measured on Emerald Rapids, 1 thread, 1.0/224,
        # interleaved A/B (GMAC/s, 4x4 / 4x7 / 2x7): 56^2 128->128 254 / 217 / -, 28^2 256->256
        # 280 / 254 / 268, 14^2 512->512 342 / 319 / 330, 7^2 1024->1024 - / 313 / 341; 4x8 and
        # 2x14 spill (69-98). A cache tile of ~256 positions beats ~64 by 5-30 %.
        d = pointwise_tiles(ob, p, [(4, 4), (2, 7), (4, 5), (4, 7), (3, 8), (2, 8), (3, 7), (1, 14), (1, 8),
                                    (1, 7), (2, 4), (1, 4), (1, 2), (1, 1)])
        rest, p_t = d["p"][0] * d["p"][1], d["p"][2]
        p_mid = largest_divisor_le(rest, max(1, 256 // p_t))
        return {**d, "p": [rest // p_mid, p_mid, p_t]}
    if num_regs >= 32:
        return pointwise_tiles(ob, p, [(2, 8), (2, 7), (4, 4), (1, 8), (1, 7), (2, 4), (1, 4), (1, 2), (1, 1)])
    if dot != "none":
        # AVX2 vpmaddwd on split (lane, pair) accumulators, int16 weights as its memory operand: 4
        # ymm per (16 lanes x 1 position). Zen 2, 1 thread, alone (GOP/s, 2x1 / 1x1 / 1x2 / 2x2):
        # 56^2 128->128 87 / 78 / 74 / 73, 28^2 256->256 93 / 88 / 80 / 77, 7^2 1024->1024 93 / 96 /
        # - / -; 112^2 32->64 57 / 53 / 54 / 49 (the epilogue's share). The one multiply pipe (1
        # vpmaddwd a cycle: 105 GOP/s at 3.3 GHz) is the limit.
        return pointwise_tiles(ob, p, [(2, 1), (1, 1)])
    return pointwise_tiles(ob, p, [(1, 7), (1, 6), (1, 4), (1, 2), (1, 1)])


def int8_dw_defaults(cb: int, ho: int, wo: int, num_regs: int) -> dict:
    # Up to 8 rows per task (AVX-512): with VNNI the task's input rows are padded once at its start
    # (:func:`.cpu_int8.schedule_depthwise_int8`). Measured on Emerald Rapids, interleaved A/B over
    # the 9 distinct layers of 1.0/224: 1 thread 0.97 ms (1 row, padded per row) -> 0.66 ms (8 rows),
    # 2 threads 0.37 (4 rows) / 0.32 (8) / 0.32 ms (16).
    # AVX2 (the pairs of taps, :func:`.compute_int8.dw_pairs`, also padded per task), Zen 2, 1 thread,
    # alone: 8 rows a task (7 on 7x7 and 14x14 maps) 1.2-2x faster than 1 over the 9 distinct layers
    wt = 7 if wo % 7 == 0 else largest_divisor_le(wo, 8 if num_regs >= 32 else 4)
    ct = 2 if wo <= 14 and cb % 2 == 0 and num_regs >= 32 else 1
    ht = largest_divisor_le(ho, 8)
    return {"cb": split2(cb, ct), "h": split2(ho, ht), "w": split2(wo, wt)}


def int8_stem_defaults(ob: int, ho: int, wo: int, num_regs: int) -> dict:
    # AVX2 (split pair accumulators, 4 ymm a column): 4 columns, 7-8 rows a task; 1.0/224 on Zen 2,
    # 1 thread, alone: 1 row 520 us, 7 rows 487 (the fold in each step before: 593 / 537-555)
    wt = largest_divisor_le(wo, 8 if num_regs >= 32 else 4)
    o_t = 2 if ob % 2 == 0 and num_regs >= 32 else 1
    ht = 1 if num_regs >= 32 else largest_divisor_le(ho, 8)
    return {"ob": split2(ob, o_t), "h": split2(ho, ht), "w": split2(wo, wt)}


def int8_dense_defaults(nb: int, dot: str, num_regs: int) -> dict:
    return {"nb": split2(nb, largest_divisor_le(nb, 4))}
