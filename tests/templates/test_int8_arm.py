"""int8 templates on Arm (mntvm.templates.arm_int8, the Arm branch of lowering_int8.dot_for, the
NEON int8 knobs of mntvm.templates.arm): which profiles get `sdot`, and the instructions in the
cross-compiled kernels — `sdot` in every pointwise and FC kernel where the profile has +dotprod,
widening multiplies (smull + saddw) without it, a 32-bit build for armv7; the libraries link with
the profiles' cross compilers. That these builds compute forward_int8 exactly is checked on the
emulated board (tests/remote/test_int8_board.py)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import tvm

from binaries import assert_cpu_lib
from mntvm.model.network import MobileNetConfig
from mntvm.model.quantize import quantize
from mntvm.model.weights import random_weights
from mntvm.targets.profiles import get_profile
from mntvm.templates.defaults import apply_default_schedules, apply_sampled_schedules
from mntvm.templates.lowering_int8 import dot_for, lower_int8
from mntvm.templates.registry import all_blocks, rule_of, tunable_tasks

EM_AARCH64, EM_ARM = 183, 40


@pytest.fixture(scope="module")
def net():
    cfg = MobileNetConfig(alpha=0.25, resolution=32, num_classes=10)
    cal = np.random.RandomState(0).rand(3, 3, 32, 32).astype("float32") * 2 - 0.5
    return quantize(cfg, random_weights(cfg, 0), cal, act_dtype="int8")


def _llvm_module(ex):
    """The LLVM (host code) module of a Relax executable."""
    mods = [ex.mod] + list(ex.mod.imports)
    (m,) = [m for m in mods if m.kind == "llvm"]
    return m


def _kernels(asm: str) -> dict[str, str]:
    """The generated assembly split into functions: label -> body."""
    out, name = {}, None
    for line in asm.splitlines():
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*):", line)
        if m:
            name = m.group(1)
            out[name] = ""
        elif name is not None:
            out[name] += line + "\n"
    return out


def _ops(body: str) -> set[str]:
    return set(re.findall(r"^\s+([a-z][a-z0-9.]*)", body, re.M))


def _build(net, profile, schedule=None):
    """Lower, schedule (default knobs, or ``schedule(mod)``), compile; returns (executable, the
    compute kernels' instructions by name)."""
    target = profile.tvm_target()
    mod = lower_int8(net, profile)
    if schedule is not None:
        mod = schedule(mod)
    ex = tvm.compile(apply_default_schedules(mod, target, profile.vector_bits), target=target)
    kernels = _kernels(_llvm_module(ex).inspect_source("asm"))
    return ex, {k[:-len("_compute_")]: _ops(v) for k, v in kernels.items() if k.endswith("_compute_")}


@pytest.mark.parametrize("name,mattr,dot", [
    ("aarch64-dotprod", None, "sdot"),
    ("aarch64", "+neon,+dotprod", "sdot"),  # the same as the profile file
    ("jetson-orin-cpu", None, "sdot"),  # Cortex-A78AE has the dot product
    ("aarch64", None, "none"),
    ("rpi4-aarch64", None, "none"),  # Cortex-A72: ARMv8.0
    ("rk3399", None, "none"),
    ("armv7", None, "none"),  # 32-bit: no sdot intrinsic of ours
])
def test_dot_instruction_per_arm_profile(name, mattr, dot):
    profile = get_profile(name, mattr=mattr)
    assert profile.int8_activations == "int8"
    assert dot_for(profile.tvm_target(), "int8") == dot
    assert dot_for(profile.tvm_target(), "uint8") == "none"  # sdot multiplies s8 x s8


def _sdot_kernels(mod) -> set[str]:
    """The PrimFuncs of a lowered module with a block annotated to use sdot."""
    return {name for name, f in tunable_tasks(mod).items()
            if any(str(b.annotations.get("mntvm_dot", "none")) == "sdot" for b in all_blocks(f))}


def _assert_fminnm_clamps(ops):
    """AArch64's requantization clamps with fmaxnm / fminnm, one instruction a bound, in every kernel
    that requantizes; never the compare-and-select (fcmgt + bif) that max / min of loaded bounds
    compile to there (exactness: the board tests)."""
    requant = [k for k in ops if k.startswith(("mntvm_pw8", "mntvm_dw8", "mntvm_stem8", "mntvm_pool8"))]
    assert len(requant) == 20, sorted(ops)
    for k in requant:
        assert {"fmaxnm", "fminnm"} <= ops[k], (k, sorted(ops[k]))
        assert not ops[k] & {"fcmgt", "fcmge", "bif", "bit"}, (k, sorted(ops[k]))


def test_sdot_profile_build_uses_sdot(net, tmp_path):
    """aarch64-dotprod: every pointwise and the FC block is annotated sdot, the pointwise weights
    packed as 16 x 4 tiles (OB, IB, 4, 16, 4); every kernel annotated sdot is sdot code (no
    widening multiplies left), the requantization vectorized, its clamps fmaxnm / fminnm; the
    library links for aarch64."""
    profile = get_profile("aarch64-dotprod")
    low = lower_int8(net, profile)
    tasks = tunable_tasks(low)
    pw = [b for f in tasks.values() for b in all_blocks(f) if rule_of(b) == "mntvm_pw8"]
    weights = [tuple(int(x) for x in r.source.shape) for b in pw for r in b.reads if len(r.source.shape) == 5]
    assert len(weights) == len(pw) > 0 and all(s[2:] == (4, 16, 4) for s in weights), weights
    sdot = _sdot_kernels(low)
    pw_kernels = {k for k in tasks if k.startswith("mntvm_pw8")}
    assert len(pw_kernels) == 9  # one PrimFunc per distinct pointwise shape at alpha 0.25 / 32
    assert pw_kernels | {"mntvm_dense8"} <= sdot
    ex, ops = _build(net, profile)
    for k in sdot:
        assert "sdot" in ops[k], k
        assert not ops[k] & {"smull", "smull2", "smlal", "smlal2"}, k
    assert {"frinti", "fmul", "fcvtzs"} <= ops["mntvm_pw8"]  # requantization on q registers
    _assert_fminnm_clamps(ops)
    path = profile.export_library(ex, tmp_path / "int8-dotprod.so")
    assert_cpu_lib(path, 64, EM_AARCH64)


def test_neon_profile_build_uses_widening_multiplies(net, tmp_path):
    """Without +dotprod: no sdot anywhere; the pointwise, depthwise, stem and FC kernels multiply
    s8 x s8 -> s16 (smull/smull2) and accumulate widening into s32 (saddw/saddw2); the
    requantization clamps with fmaxnm / fminnm."""
    profile = get_profile("aarch64")
    ex, ops = _build(net, profile)
    assert not any("sdot" in o for o in ops.values())
    for k in ("mntvm_pw8", "mntvm_pw88", "mntvm_dw8", "mntvm_stem8", "mntvm_dense8"):
        assert {"smull", "smull2", "saddw", "saddw2"} <= ops[k], (k, sorted(ops[k]))
    _assert_fminnm_clamps(ops)
    assert_cpu_lib(profile.export_library(ex, tmp_path / "int8-neon.so"), 64, EM_AARCH64)


def test_sdot_tensorizes_at_random_knobs(net):
    """Sampled register/cache tiles still end in the 16 x 4 tile the sdot intrinsic takes."""
    profile = get_profile("aarch64-dotprod")
    _, ops = _build(net, profile, lambda m: apply_sampled_schedules(m, profile.tvm_target(), 11))
    for k in _sdot_kernels(lower_int8(net, profile)):
        assert "sdot" in ops[k], k


def test_armv7_int8_builds(net, tmp_path):
    """32-bit Arm (compile-only: no board): NEON widening multiply-adds, a hard-float ELF."""
    profile = get_profile("armv7")
    ex, ops = _build(net, profile)
    every = set().union(*ops.values())
    assert {"vmull.s8", "vmlal.s16"} <= every
    assert "vsdot.s8" not in every
    path = profile.export_library(ex, tmp_path / "int8-armv7.so")
    assert_cpu_lib(path, 32, EM_ARM)
