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
