"""Benchmark a compiled artifact, here or on a board reached through TVM's RPC tracker.

Each inference is timed on its own (``time_evaluator`` with ``number=1``), after ``warmup``
untimed runs; the output is compared with the host's numpy reference for the same weights and
input (``max_abs_diff``).

Public entry: :func:`benchmark`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .artifact import Artifact, deterministic_input, load_artifact, set_threads
from .errors import MntvmError

STAT_KEYS = ("median_ms", "mean_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms")


def summarize(times_ms) -> dict:
    t = np.asarray(times_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(t)), "mean_ms": float(t.mean()),
        "p90_ms": float(np.percentile(t, 90)), "p99_ms": float(np.percentile(t, 99)),
        "min_ms": float(t.min()), "max_ms": float(t.max()), "std_ms": float(t.std()),
    }


def reference_output(art: Artifact, x: np.ndarray) -> np.ndarray:
    """The host-side numpy reference for the artifact's model and weights."""
    from . import reference
    from . import weights as W
    from .model import MobileNetConfig

    cfg = MobileNetConfig.from_dict(art.metadata["model"])
    src = art.metadata.get("weights_source", "")
    if src.startswith("random(seed="):
        w = W.random_weights(cfg, int(src[len("random(seed="):-1]))
    else:
        w = W.load(cfg, src)
    if W.digest(w) != art.metadata["weights_sha256"]:
        raise MntvmError(f"{art.path}: weights {src} no longer match the artifact's sha256")
    return reference.forward(cfg, w, x)


class _Progress:
    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.enabled, self.t0 = total, label, enabled and sys.stderr.isatty(), time.time()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        frac = done / max(self.total, 1)
        bar = "#" * int(30 * frac)
        eta = (time.time() - self.t0) / max(frac, 1e-9) * (1 - frac)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {done}/{self.total} eta {eta:5.1f}s")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def benchmark(
    artifact_dir: str | Path,
    repeat: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    tracker: str | None = None,
    key: str | None = None,
    wait_s: float = 60.0,
    input_seed: int = 0,
    progress: bool = True,
) -> dict:
    """Time ``repeat`` single inferences of the artifact and return the statistics as a dict."""
    import tvm
    from tvm import relax

    if repeat < 1:
        raise MntvmError(f"repeat must be >= 1 (got {repeat})")
    if warmup < 0:
        raise MntvmError(f"warmup must be >= 0 (got {warmup})")
    art = load_artifact(artifact_dir)
    x = deterministic_input(art.input_shape, input_seed)
    result = {"target": art.metadata["target"]["name"], "repeat": repeat, "warmup": warmup}

    if tracker:
        from .rpc import open_session

        from .board import board_arch

        session = open_session(tracker, key, wait_s=wait_s)
        want, have = artifact_arch(art.metadata), board_arch(session.remote)
        if not _same_arch(want, have):
            raise MntvmError(f"{art.path} is built for {want} ({art.metadata['target']['name']}), "
                             f"but board {session.board} under key '{key}' is {have}")
        t0 = time.perf_counter()
        session.upload(str(art.lib_path))
        result["upload_s"] = time.perf_counter() - t0
        result["board"] = session.board
        t0 = time.perf_counter()
        lib = session.load_module(art.lib_path.name)
        dev = session.cpu()
        if threads:
            session.get_function("runtime.config_threadpool")(1, threads)
    else:
        set_threads(threads)
        result["upload_s"] = 0.0
        result["board"] = "local"
        t0 = time.perf_counter()
        lib = tvm.runtime.load_module(str(art.lib_path))
        dev = tvm.cpu()
    vm = relax.VirtualMachine(lib, dev)
    result["load_s"] = time.perf_counter() - t0

    inp = tvm.runtime.tensor(x, dev)
    t0 = time.perf_counter()
    out = vm["main"](inp).numpy()
    result["first_run_ms"] = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        vm["main"](inp)

    bar = _Progress(repeat, f"bench {art.metadata['model'].get('alpha')}/{art.metadata['model'].get('resolution')}",
                    progress)
    times = []
    chunk = max(1, min(repeat, 10))
    while len(times) < repeat:
        n = min(chunk, repeat - len(times))
        timer = vm.time_evaluator("main", dev, number=1, repeat=n)
        times += [t * 1e3 for t in timer(inp).results]
        bar.update(len(times))
    result.update(summarize(times))
    if threads is None:
        threads = int(art.metadata["target"].get("threads") or 0) or None
    result["threads"] = threads if threads else _runtime_threads(tracker is None)
    result["max_abs_diff"] = float(np.abs(out - reference_output(art, x)).max())
    result["output_top5"] = [[i, p] for i, p in _top(out)]
    return result


def artifact_arch(meta: dict) -> str:
    """CPU architecture an artifact's host code is built for, from its target's triple."""
    t = meta["target"]["target"]
    host = t.get("host") if isinstance(t.get("host"), dict) else None
    triple = (host or t).get("mtriple") or ""
    return triple.split("-", 1)[0] if triple else "x86_64"


def _same_arch(a: str, b: str) -> bool:
    canon = {"arm64": "aarch64", "amd64": "x86_64", "armv7l": "armv7", "armv7a": "armv7", "arm": "armv7"}
    return canon.get(a, a) == canon.get(b, b)


def _top(out, k=5):
    from .artifact import top_k

    return top_k(out, k)[0]


def _runtime_threads(local: bool):
    if not local:
        return None
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())
