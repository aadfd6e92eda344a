"""What the peer benchmarks (vs_peers.py, int8.py, variants.py) share: their timing options."""
from __future__ import annotations

import argparse


def timing_options(p: argparse.ArgumentParser, rounds: int = 20) -> None:
    """``--threads 1,2 --rounds N --per-round 5 --schedules default|none|DIR --json``."""
    p.add_argument("--threads", type=thread_counts, default="1,2", help="comma-separated thread counts")
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--schedules", default="default", help="default (shipped), none (template defaults) or a folder")
    p.add_argument("--json", action="store_true")


def thread_counts(text: str) -> list[int]:
    """``"1,2"`` -> [1, 2]; anything else is refused by argparse in one line."""
    try:
        counts = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return counts


def model_and_reference(alpha: float, resolution: int, threads: int):
    """For the single-build benchmarks (schedules_effect.py, prefetch.py): ``threads`` set for
    TVM, and ``(cfg, weights, x, ref)``: MobileNetV1 alpha/resolution, its random weights (seed 0),
    the deterministic input and the numpy float64 reference output."""
    from mntvm.compile.artifact import deterministic_input
    from mntvm.core.threads import set_threads
    from mntvm.model import reference
    from mntvm.model import weights as W
    from mntvm.model.network import MobileNetConfig

    cfg = MobileNetConfig(alpha=alpha, resolution=resolution)
    set_threads(threads)
    w = W.random_weights(cfg, 0)
    x = deterministic_input(cfg.input_shape)
    return cfg, w, x, reference.forward(cfg, w, x)
