"""What the compiler made of a template kernel: the hottest loop of its assembly.

Our CPU templates keep a register tile of accumulators live across a reduction; whether it fits the
register file is decided by LLVM's register allocator, not by the template. Where it does not,
accumulators or inputs go to the stack and back at every step of the reduction: on a board nobody
can time here (Arm, AVX-512 in this project's machines) that is the one loss visible without the
hardware. :func:`kernel_hot_loop` compiles one scheduled PrimFunc for a target and returns its
hottest loop (:class:`HotLoop`, from :func:`hot_loop`): the basic block with the most
multiply-adds, how many it does, and how many vector registers it moves to or from the stack.
"""
from __future__ import annotations

import dataclasses
import re

# multiply-add instructions per ISA, fp32 and those of our int8 kernels: x86 FMA3, VNNI vpdpbusd and
# vpmaddwd (AVX2 / AVX-512 without VNNI); AArch64 fmla (vector / by element), fmadd, sdot / udot, and
# the widening multiplies smull / smlal of NEON without dot products; 32-bit Arm vfma / vmla (fp32) and
# vmull / vmlal (int8)
_FMA = {"x86": re.compile(r"^(v?f[n]?m(add|sub)\d{3}[ps][sd]|vpdpbusds?|vpdpwssds?|vpmaddwd|vpmaddubsw)\b"),
        "aarch64": re.compile(r"^(fmla|fmadd|[su]dot|usdot|[su]mlal2?|[su]mull2?)\b"),
        "arm": re.compile(r"^((vfma|vmla)\.f32|vmull\.[su](8|16)|vmlal\.[su](8|16))\b")}
# instructions that end a basic block (its branch, a call or a return)
_BRANCH = {"x86": re.compile(r"^(j[a-z]+|call|ret)\b"),
           "aarch64": re.compile(r"^(b|b\.[a-z]+|bl|br|blr|cbn?z|tbn?z|ret)\b"),
           "arm": re.compile(r"^(b|b[a-z]{2}|bl|blx|bx|cbn?z)\b|^pop\s.*\bpc\b")}
_LABEL = re.compile(r"^[.$\w]+:")
_X86_VEC = re.compile(r"%[xyz]mm\d+")
_A64_VEC = re.compile(r"\b[qdsbhv]\d+\b")
_ARM_VEC = re.compile(r"\b[qd]\d+\b")
_ARM_VMEM = re.compile(r"^(vldm|vstm|vld1|vst1|vldr|vstr|vpush|vpop)")


@dataclasses.dataclass(frozen=True)
class HotLoop:
    """The basic block of a kernel's assembly with the most multiply-adds."""

    isa: str  # "x86", "aarch64" or "arm"
    instructions: tuple[str, ...]
    fmas: int  # multiply-add instructions in it
    vector_spills: int  # loads / stores of vector registers from / to the stack in it

    def __str__(self) -> str:
        return (f"{len(self.instructions)} instructions, {self.fmas} multiply-adds, "
                f"{self.vector_spills} vector spills")


def isa_of(target) -> str:
    """``"x86"``, ``"aarch64"`` or ``"arm"`` (32-bit) for an LLVM ``target``, from its triple."""
    attrs = target.attrs
    triple = str(attrs["mtriple"]) if "mtriple" in attrs else ""
    if triple.startswith("aarch64") or triple.startswith("arm64"):
        return "aarch64"
    if triple.startswith("arm") or triple.startswith("thumb"):
        return "arm"
    return "x86"


def _blocks(asm: str, isa: str) -> list[list[str]]:
    """The assembly's instructions in basic blocks (split at labels and after branches)."""
    blocks, cur = [], []
    for line in asm.splitlines():
        s = re.split(r"\s(//|@|#)\s|^(//|@|#)", line.strip())[0].strip()
        if not s:
            continue
        if _LABEL.match(s):
            blocks.append(cur)
            cur = []
        elif not s.startswith("."):
            cur.append(" ".join(s.split()))
            if _BRANCH[isa].match(s):
                blocks.append(cur)
                cur = []
    blocks.append(cur)
    return [b for b in blocks if b]


def _vector_spills(block: list[str], isa: str) -> int:
    """Instructions of ``block`` that load or store a vector register at a stack address."""
    n = 0
    if isa == "x86":  # spill slots are rsp-relative; LLVM uses rbp as a general register in our kernels
        return sum(1 for ins in block if _X86_VEC.search(ins) and re.search(r"\(%rsp[,)]", ins))
    if isa == "aarch64":
        for ins in block:
            op, _, args = ins.partition(" ")
            if re.match(r"^(ld|st)(r|p|ur)\b", op) and "[sp" in args and _A64_VEC.match(args):
                n += 1
        return n
    from_sp: set[str] = set()  # 32-bit Arm addresses a spill slot through a register set from sp
    for ins in block:
        op, _, args = ins.partition(" ")
        regs = [a.strip() for a in args.split(",")]
        if op in ("add", "sub", "mov") and len(regs) >= 2 and regs[1] == "sp":
            from_sp.add(regs[0])
            continue
        if regs and regs[0] in from_sp and op not in ("vldmia", "vstmia", "vld1.64", "vst1.64"):
            from_sp.discard(regs[0])  # the register is written with something else
        if _ARM_VMEM.match(op) and _ARM_VEC.search(args):
            base = re.search(r"\[(\w+)", args) or re.match(r"(\w+)!?,", args)
            base = base.group(1) if base else ""
            if base == "sp" or base in from_sp:
                n += 1
    return n


def hot_loop(asm: str, isa: str) -> HotLoop:
    """The basic block of ``asm`` (LLVM's assembly for ``isa``: "x86", "aarch64" or "arm") with
    the most multiply-adds: the innermost reduction of a register-tiled kernel."""
    if isa not in _FMA:
        raise ValueError(f"unknown ISA {isa!r}: one of {', '.join(_FMA)}")
    fma = _FMA[isa]
    best = max(_blocks(asm, isa), key=lambda b: sum(1 for ins in b if fma.match(ins)), default=[])
    return HotLoop(isa=isa, instructions=tuple(best), fmas=sum(1 for ins in best if fma.match(ins)),
                   vector_spills=_vector_spills(best, isa))


def kernel_hot_loop(func, target) -> HotLoop:
    """The hottest loop of one scheduled PrimFunc compiled for the LLVM ``target`` (as the network
    compiles it: :func:`.prefetch.compile_cpu`)."""
    import tvm

    from mntvm.templates import prefetch

    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    asm = prefetch.compile_cpu(mod, target).mod.inspect_source("s")
    return hot_loop(asm, isa_of(target))
