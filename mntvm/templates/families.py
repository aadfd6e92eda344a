"""Which CPU knob family (:mod:`.x86`, :mod:`.arm`) a target gets."""
from __future__ import annotations

import dataclasses

import tvm

from mntvm.templates import arm, x86
from mntvm.templates.knobs import FamilyKnobs


def family_for(target: tvm.target.Target, vector_bits: int | None = None) -> FamilyKnobs:
    """Pick the knob family from the target (x86 vs arm) and the vector width; its ``cores`` from the
    target's ``num-cores``."""
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    attrs = target.attrs
    triple = str(attrs.get("mtriple", "")) if "mtriple" in attrs else ""
    mcpu = str(attrs.get("mcpu", "")) if "mcpu" in attrs else ""
    is_arm = any(k in triple for k in ("aarch64", "arm")) or "cortex" in mcpu or target.kind.name != "llvm"
    if vector_bits is None:
        vector_bits = 128 if is_arm else 512
    if is_arm:
        fam = arm.NEON
    else:
        fam = x86.AVX512 if vector_bits >= 512 else x86.AVX2
    cores = int(attrs["num-cores"]) if "num-cores" in attrs else 1
    if fam.vector_bits != vector_bits or fam.cores != cores:
        fam = dataclasses.replace(fam, vector_bits=vector_bits, cores=cores)
    return fam
