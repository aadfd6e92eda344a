"""What LLVM makes of our register tiles (mntvm.templates.codegen): the hottest loop of a kernel's
assembly, its multiply-adds and its vector spills, on ISAs this machine cannot run (AVX-512, AArch64).

The reference for the parser is assembly written by hand; for the templates, LLVM's own register
allocator: a default register tile whose hottest loop moves vector registers to and from the stack
more than once per 8 multiply-adds fails (AVX-512 and AArch64, whose defaults are chosen by their code)."""
from __future__ import annotations

import pytest

from mntvm.model import MobileNetConfig
from mntvm.model.weights import random_weights
from mntvm.targets.profiles import get_profile
from mntvm.templates.codegen import hot_loop, isa_of, kernel_hot_loop
from mntvm.templates.defaults import apply_default_schedules, knob_schedule, knobs_of
from mntvm.templates.lowering import lower
from mntvm.templates.registry import RULE_DWPW, all_blocks, rule_of, tunable_tasks

X86 = """
main:
\tpushq %rbp
.LBB0_2:
\tvbroadcastss (%rcx), %zmm16
\tvmovups %zmm3, 112(%rsp)
\tvfmadd231ps %zmm16, %zmm17, %zmm10
\tvfmadd231ps 64(%rax), %zmm16, %zmm11
\tvmovups 560(%rsp), %zmm30   # reload
\tmovq 24(%rsp), %r14
\tvfmadd231ps %zmm30, %zmm16, %zmm12
\tvpdpbusd (%rdx), %zmm1, %zmm13
\taddq $64, %rcx
\tjne .LBB0_2
\tvfmadd231ps %zmm1, %zmm2, %zmm3
\tretq
"""
AARCH64 = """
.LBB4_3:
\tldp s1, s0, [x16, #-56]
\tldr q16, [x15]
\tfmla v17.4s, v16.4s, v1.s[0]
\tstr q17, [sp, #224]
\tldp q18, q19, [sp, #208]
\tfmla v18.4s, v16.4s, v0.s[0]
\tldr x8, [sp, #16]
\tfmla v19.4s, v16.4s, v0.s[0]
\tsdot v20.4s, v2.16b, v3.4b[1]
\tb.ne .LBB4_3
"""
ARM = """
.LBB4_23:
\tadd r4, sp, #272
\tvld1.32 {d16, d17}, [r3:128]!
\tvld1.32 {d4[], d5[]}, [r12:32]!
\tvstmia r4, {d4, d5}
\tvfma.f32 q5, q3, q8
\tadd r4, r10, #36
\tvld1.32 {d4[], d5[]}, [r4:32]!
\tvfma.f32 q1, q2, q8
\tvldr d0, [sp, #8]
\tvmla.f32 q1, q2, q0
\tbne .LBB4_23
"""


def test_hot_loop_reads_each_isa():
    """The block with the most multiply-adds (fp32 and int8), split at labels and after branches; only vector
    registers at stack addresses count as spills (not a general register's reload, nor a load
    through a register that was an sp offset and is now something else)."""
    x = hot_loop(X86, "x86")
    assert (x.fmas, x.vector_spills, len(x.instructions)) == (4, 2, 10)
    assert x.instructions[-1] == "jne .LBB0_2"
    a = hot_loop(AARCH64, "aarch64")
    assert (a.fmas, a.vector_spills) == (4, 2)
    r = hot_loop(ARM, "arm")
    assert (r.fmas, r.vector_spills) == (3, 2)
    with pytest.raises(ValueError, match="unknown ISA 'mips'"):
        hot_loop(X86, "mips")


# the families whose defaults no machine here can time, so are chosen by their code. Not AVX2: this
# machine times it, and there spills measured harmless: the stem's 1x12 tile of alpha 0.25 moves 74 ymm
# per 108 FMAs and is its fastest (Zen 2, 0.082 ms; 1x6 0.086, 1x4 0.106), the first fused layer of
# 0.5/224 (4x2, the reduction unrolled) 65 per 128 and runs within 1 % of 2x4 and 1x8 that move none.
PROFILES = ("x86-avx512", "rpi4-aarch64")


@pytest.fixture(scope="module", params=PROFILES)
def scheduled(request):
    """A target profile and, for two variants that between them hold every kind of register tile
    the families' defaults choose (3-vector tiles of 48 channels, the 5x5 maps of resolution 160,
    the 6x6 of 192), the distinct tasks at the defaults."""
    profile = get_profile(request.param)
    tasks = {}
    for alpha, res in ((0.75, 160), (0.5, 192)):
        cfg = MobileNetConfig(alpha=alpha, resolution=res)
        low = lower(cfg, random_weights(cfg, seed=0), profile)
        sched = apply_default_schedules(low, profile.tvm_target(), profile.vector_bits)
        tasks.update({f"{alpha}/{res} {n}": sched[n] for n in tunable_tasks(low) if n != "mntvm_pool"})
    return profile, tasks


# vector spills per multiply-add in a default's hottest loop, at most. The AVX-512 tiles that machines of
# that kind ran at 86-97 % of their FMA peak (4x6) move up to 14 zmm per 384 FMAs (0.04); over all 16
# alpha x resolution variants the defaults now move at most 0.036 (AVX-512) and 0.048 (AArch64) per
# multiply-add. Those llvm-mca calls slow moved more: NEON's 4x7 52-86 q registers per 112 fmla (1.23-1.68
# cycles an fmla in its Cortex-A72 model against 1.01 without), 4x6 18-21 per 96 (1.06-1.10), AVX-512's
# 3x8 80-118 zmm per 384 FMAs and its 2x8 stem 18 per 48 (0.70 cycles an FMA against 0.57).
SPILLS_PER_FMA = 1 / 8


def test_default_register_tiles_stay_in_registers(scheduled):
    """Each conv and FC kernel's hottest loop at the family's defaults multiply-adds and moves at
    most one vector register to or from the stack per 8 multiply-adds (:data:`SPILLS_PER_FMA`).
    (Not alpha 0.25's first NEON layer: its 2 input blocks make the whole reduction one unrolled
    block, where every tile but the smallest spills and llvm-mca prefers the large ones, :mod:`mntvm.templates.arm`.)"""
    profile, tasks = scheduled
    target = profile.tvm_target()
    assert isa_of(target) == ("aarch64" if "aarch64" in profile.name else "x86")
    for name, func in tasks.items():
        loop = kernel_hot_loop(func, target)
        assert loop.fmas > 0, name
        assert loop.vector_spills <= loop.fmas * SPILLS_PER_FMA, f"{profile.name} {name} {knobs_of(func)}: {loop}"


def test_a_tile_too_large_for_the_register_file_is_seen():
    """The check can fail: NEON's former default, 4 channel vectors x 7 positions (28 accumulators
    next to the 7-14 inputs LLVM keeps), spills in every step of its reduction (alpha 0.25/224's second
    fused layer, 4 input blocks); the default there (4x4) does not."""
    import tvm

    profile = get_profile("rpi4-aarch64")
    cfg = MobileNetConfig(alpha=0.25, resolution=224)
    low = lower(cfg, random_weights(cfg, seed=0), profile)
    name, func = next((n, f) for n, f in sorted(tunable_tasks(low).items())
                      if any(rule_of(b) == RULE_DWPW for b in all_blocks(f)) and int(f.params[0].shape[1]) > 2
                      and int(f.params[-1].shape[1]) % 4 == 0 and int(f.params[-1].shape[2]) % 7 == 0)
    target = profile.tvm_target()
    sch, knobs = knob_schedule(tvm.IRModule({"main": func}), target, None, vector_bits=profile.vector_bits)
    k = dict(knobs[0])
    ob = k["ob"][0] * k["ob"][1] * k["ob"][2]
    pos = k["p"][0] * k["p"][1]
    k.update(ob=[k["ob"][0], ob // (k["ob"][0] * 4), 4], p=[pos // 7, 7], ragged=0)
    big, _ = knob_schedule(tvm.IRModule({"main": func}), target, [k])
    loop, fits = kernel_hot_loop(big.mod["main"], target), kernel_hot_loop(sch.mod["main"], target)
    assert loop.vector_spills > loop.fmas * SPILLS_PER_FMA, (name, loop)
    assert fits.vector_spills == 0 and knobs[0]["ob"][2] * knobs[0]["p"][1] == 16, (name, knobs, fits)


@pytest.mark.parametrize("name", ["aarch64-dotprod", "rpi4-aarch64"])
def test_neon_int8_tiles_stay_in_registers(name):
    """int8 on AArch64 (sdot; widening multiplies without +dotprod), alpha 0.5 at 224, whose maps
    no 6 divides: each pointwise kernel past the first (1-2 input blocks, one unrolled block) on
    maps larger than 7x7 (there only x7 tiles divide, and llvm-mca prefers sdot's 1x7 that spills:
    :mod:`mntvm.templates.arm`) moves at most one q register to or from the stack per 8 multiply
    instructions (the former 1x7 tiles: 22 per 112 sdot, 107 per 112 smull); each depthwise kernel
    holds its whole tile (every tap of each output vector: 4 pairs of taps x 4 multiplies) in its
    hottest block, which the former per-tap bounds checks split (42 of the 7-column tile's 126)."""
    from int8_check import small_net
    from mntvm.templates.lowering_int8 import lower_int8

    profile = get_profile(name)
    target = profile.tvm_target()
    low = lower_int8(small_net(0.5, 224, act_dtype="int8"), profile)
    sched = apply_default_schedules(low, target, profile.vector_bits)
    seen = {"pw": 0, "dw": 0}
    for n in sorted(tunable_tasks(low)):
        func, kind = sched[n], n[len("mntvm_"):][:2]
        if kind not in seen:
            continue
        (block,) = [b for b in all_blocks(low[n]) if rule_of(b) == f"mntvm_{kind}8"]
        loop = kernel_hot_loop(func, target)
        if kind == "pw":
            if int(block.reads[0].source.shape[1]) <= 2 or int(block.writes[0].source.shape[2]) <= 49:
                continue
            assert loop.vector_spills <= loop.fmas * SPILLS_PER_FMA, f"{name} {n} {knobs_of(func)}: {loop}"
        else:
            (k,) = knobs_of(func)
            assert loop.fmas >= 16 * k["w"][1] * k["cb"][1], f"{name} {n} {k}: {loop}"
        seen[kind] += 1
    assert seen["pw"] >= 5 and seen["dw"] >= 9, seen
