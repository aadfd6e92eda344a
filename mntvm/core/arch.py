"""The one table of CPU architecture names, and what runs where.

Names are ``uname -m`` spellings reduced to one canonical word per architecture:
``x86_64``, ``aarch64``, ``armv7``. Target profiles' families use ``x86`` for ``x86_64``.
"""
from __future__ import annotations

import platform

from mntvm.core import machine

CANONICAL = {"x86_64": "x86_64", "amd64": "x86_64", "x86": "x86_64",
             "aarch64": "aarch64", "arm64": "aarch64",
             "armv7": "armv7", "armv7l": "armv7", "armv7a": "armv7", "armv8l": "armv7", "arm": "armv7"}
FAMILY = {"x86_64": "x86", "aarch64": "aarch64", "armv7": "armv7"}  # canonical arch -> profile family


def canonical(name: str) -> str:
    """``arm64`` → ``aarch64``, ``amd64`` → ``x86_64``, ...; unknown names are returned as given."""
    return CANONICAL.get(name, name)


def family(name: str) -> str | None:
    """The target-profile family of an architecture name (``x86``, ``aarch64``, ``armv7``) or None."""
    return FAMILY.get(canonical(name))


def local() -> str:
    """This machine's architecture, canonical."""
    return canonical(platform.machine())


def same(a: str, b: str) -> bool:
    return canonical(a) == canonical(b)


def of_triple(triple: str) -> str:
    """``aarch64-linux-gnu`` → ``aarch64``."""
    return canonical(triple.split("-", 1)[0]) if triple else ""


def artifact_arch(meta: dict) -> str:
    """CPU architecture an artifact's host code is built for, from its target's triple."""
    tgt = meta["target"]
    t = tgt.get("tvm_target") or tgt.get("target") or tgt.get("target_dict") or {}
    host = t.get("host") if isinstance(t.get("host"), dict) else None
    triple = (host or t).get("mtriple") or ""
    return of_triple(triple) if triple else "x86_64"


def foreign_arch(meta: dict) -> tuple[str, str] | None:
    """``(its arch, this machine's)`` when code described by ``meta`` (artifact metadata, or
    ``{"target": profile.to_metadata()}``) cannot run on this machine; None when it can."""
    want, here = artifact_arch(meta), platform.machine()
    return None if same(want, here) else (want, here)


def missing_cpu_features(meta: dict) -> str | None:
    """What this machine's CPU lacks of what an artifact's kernels use beyond its architecture (today:
    an int8 build whose pointwise layers run on AMX-INT8 needs ``amx_int8`` in /proc/cpuinfo; without
    it the first tile instruction kills the process with SIGILL); None when nothing is missing."""
    if (meta.get("quantization") or {}).get("pointwise") == "amx" and "amx_int8" not in machine.cpu_flags():
        mcpu = (meta.get("target", {}).get("tvm_target") or {}).get("mcpu", "?")
        return (f"its int8 pointwise layers use AMX-INT8 (compiled for mcpu {mcpu}) and this CPU has no "
                "amx_int8: compile it on (or for) this machine")
    return None


def is_cuda(meta: dict) -> bool:
    """Whether the artifact's kernels run on an NVIDIA GPU (its VM then lives on the CUDA device)."""
    return meta["target"].get("family") == "cuda"


def local_cuda() -> bool:
    """Whether this machine has a CUDA GPU that TVM can use (bench and tune ask the same)."""
    import tvm

    return bool(tvm.cuda(0).exist)
