"""The README's main job: compile MobileNetV1 for this machine with the shipped logs, time it, and
show its top-5 for the deterministic input."""
from __future__ import annotations

import os

from mntvm.bench.timing import benchmark
from mntvm.compile import compile_model, load_artifact
from mntvm.model.network import MobileNetConfig


def demo(cfg: MobileNetConfig, out: str | os.PathLike, repeat: int = 50, threads: int | None = None) -> dict:
    """Compile ``cfg`` for the ``x86`` profile (this CPU) into ``out`` and benchmark it here."""
    path = compile_model(cfg, out, target="x86")
    meta = load_artifact(path, verify=False).metadata
    r = benchmark(path, repeat=repeat, warmup=5, threads=threads)
    return {"model": cfg.tag, "artifact": str(out), "target": meta["target"]["name"],
            "mcpu": meta["target"]["tvm_target"].get("mcpu", "?"), "build_seconds": meta["build_seconds"],
            "bench": r}


def format_demo(d: dict) -> str:
    r = d["bench"]
    return "\n".join([
        f"compiled {d['model']} for {d['target']} (mcpu {d['mcpu']}) in {d['build_seconds']:.1f}s -> {d['artifact']}",
        f"latency on this machine ({r['threads']} threads, {r['repeat']} runs): median {r['median_ms']:.2f} ms, "
        f"p90 {r['p90_ms']:.2f} ms, min {r['min_ms']:.2f} ms",
        f"max |output - numpy reference| = {r['max_abs_diff']:.2e}",
        "top-5 for the deterministic input: " + "  ".join(f"class {c}: {p:.4f}" for c, p in r["output_top5"]),
    ])
