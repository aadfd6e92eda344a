"""What LLVM made of each kernel's register tile, for any CPU target, without running it.

For boards and CPUs this machine cannot time (AArch64 boards, AVX-512), the one evidence of a
register tile's speed available here is its code: every distinct kernel of MobileNetV1 is compiled
for the target profile at the template defaults (or at a schedules log's records), and its hottest
loop (:func:`mntvm.templates.codegen.kernel_hot_loop`) is printed with its multiply-adds, the vector
registers it moves to and from the stack, and, where ``llvm-mca`` is installed (Debian: ``llvm``),
the cycles per multiply-add LLVM's model of ``--mca-cpu`` predicts for it, next to the model's own
best (a block of independent fp32 multiply-adds of the form our kernels use): an fp32 loop at 1.0x is
bound by the multiply-add units alone. ``--dtype int8`` reads the int8 kernels (multiply-adds: their
dot-product or widening multiplies, ``sdot``, ``vpdpbusd``, ``vpmaddwd``, ``smull``...).

    python benchmarks/hot_loops.py --target rpi4-aarch64 [--alpha 1.0] [--resolution 224] [--mca-cpu cortex-a72]
    python benchmarks/hot_loops.py --target aarch64-dotprod --dtype int8 --mca-cpu neoverse-n1
    python benchmarks/hot_loops.py --target x86-avx512 --mcpu sapphirerapids --schedules schedules/x86-emeraldrapids

A static check, not a timing: llvm-mca models neither caches nor memory (on Zen 2 its predictions for
the fused kernels' loops were 94-100 % of the FMA peak where the network runs them at 74-90 %).
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import model_options  # noqa: E402

MCA_TRIPLES = {"x86": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu", "arm": "armv7-linux-gnueabihf"}
# one multiply-add of the form LLVM emits in our kernels, per ISA: a block of these is the model's best
IDEAL = {"x86": "vfmadd231ps %{v}mm0, %{v}mm1, %{v}mm{r}", "aarch64": "fmla v{r}.4s, v0.4s, v1.s[0]",
         "arm": "vfma.f32 q{r}, q0, q1"}
IDEAL_REGS = {"x86": range(2, 16), "aarch64": range(2, 32), "arm": range(2, 16)}


def _mca() -> str | None:
    return shutil.which("llvm-mca") or next((shutil.which(f"llvm-mca-{v}") for v in range(20, 10, -1)
                                             if shutil.which(f"llvm-mca-{v}")), None)


def mca_cycles(mca: str, isa: str, cpu: str, instructions) -> float | None:
    """llvm-mca's cycles per iteration of ``instructions`` on ``cpu`` (None where it refuses them)."""
    extra = ["-mattr=+neon,+vfp4"] if isa == "arm" else []
    r = subprocess.run([mca, f"-mtriple={MCA_TRIPLES[isa]}", f"-mcpu={cpu}", "-iterations=100", *extra],
                       input="\n".join(instructions) + "\n", capture_output=True, text=True)
    m = re.search(r"Total Cycles:\s+(\d+)", r.stdout)
    return int(m.group(1)) / 100 if r.returncode == 0 and m else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_options(ap)
    ap.add_argument("--target", default="x86", help="target profile (default: x86, this machine)")
    ap.add_argument("--mcpu", default=None, help="the CPU to generate code for (default: the profile's)")
    ap.add_argument("--schedules", default=None, help="a schedules folder whose records to apply (default: none)")
    ap.add_argument("--mca-cpu", default=None, help="llvm-mca's CPU model (default: the code's CPU)")
    ap.add_argument("--dtype", choices=("float32", "int8"), default="float32",
                    help="int8: the quantized network's kernels (as `mntvm compile --dtype int8` quantizes them)")
    args = ap.parse_args(argv)

    from mntvm.compile.network import network_for
    from mntvm.core.errors import MntvmError
    from mntvm.model.network import MobileNetConfig
    from mntvm.model.quantized import QuantizedNet
    from mntvm.targets.profiles import get_profile
    from mntvm.templates.codegen import isa_of, kernel_hot_loop
    from mntvm.templates.defaults import apply_default_schedules, knobs_of
    from mntvm.templates.lowering import lower
    from mntvm.templates.lowering_int8 import lower_int8
    from mntvm.templates.registry import tunable_tasks

    profile = get_profile(args.target, mcpu=args.mcpu) if args.mcpu else get_profile(args.target)
    if profile.is_gpu:
        ap.error(f"'{profile.name}' is a GPU target: this reads CPU assembly")
    target = profile.tvm_target()
    isa = isa_of(target)
    cfg = MobileNetConfig(alpha=args.alpha, resolution=args.resolution)
    # what compile builds for --dtype: random weights, int8 quantized with its seeded calibration inputs
    try:
        w, _ = network_for(cfg, profile, dtype=args.dtype)
    except MntvmError as e:  # e.g. int8 on a target without an int8 path
        ap.error(str(e))
    low = lower_int8(w, profile) if isinstance(w, QuantizedNet) else lower(cfg, w, profile)
    mod = low
    if args.schedules:
        from mntvm.tuning import open_schedules

        # any log, as it is (its records are only read here, not judged against this target)
        mod, _ = open_schedules(args.schedules, profile, force=True).apply(low, target)
    mod = apply_default_schedules(mod, target, profile.vector_bits)
    mca = _mca()
    cpu = args.mca_cpu or (str(target.attrs["mcpu"]) if "mcpu" in target.attrs else "generic")
    ideal = None
    if mca:
        v = {512: "z", 256: "y"}.get(profile.vector_bits, "x")
        block = [IDEAL[isa].format(r=r, v=v) for r in IDEAL_REGS[isa]]
        ideal = (mca_cycles(mca, isa, cpu, block) or float("nan")) / len(block)
    print(f"{profile.name} ({target.attrs.get('mcpu', 'generic')}, {isa}), {cfg.alpha:g}/{cfg.resolution} "
          f"{args.dtype}; "
          + (f"llvm-mca model {cpu}: best {ideal:.2f} cycles a multiply-add" if mca else
             "llvm-mca not found (Debian: apt install llvm): no cycle predictions"))
    print(f"{'kernel':14s} {'instr':>5s} {'madds':>5s} {'spills':>6s} {'cyc/madd':>8s} {'x best':>6s}  knobs")
    for name in sorted(tunable_tasks(low)):
        loop = kernel_hot_loop(mod[name], target)
        if not loop.fmas:
            continue
        c = mca_cycles(mca, isa, cpu, loop.instructions) if mca else None
        per = f"{c / loop.fmas:8.2f} {c / loop.fmas / ideal:6.2f}" if c and ideal else f"{'-':>8s} {'-':>6s}"
        print(f"{name:14s} {len(loop.instructions):5d} {loop.fmas:5d} {loop.vector_spills:6d} {per}  "
              f"{knobs_of(mod[name])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
