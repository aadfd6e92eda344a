"""benchmarks/tune_convergence.py: a log's records read back in the order measured, and the network
estimate after k trials per task weighted by calls x the defaults' time (synthetic logs: running
the script tunes a network twice, which is a benchmark's job, not the suite's)."""
from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from mntvm.tuning.database import META, RECORDS, WORKLOADS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def conv():
    spec = importlib.util.spec_from_file_location("tune_convergence", ROOT / "benchmarks" / "tune_convergence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _log(folder: Path, costs: list[tuple[str, list[float] | None]], names: dict[str, list[str]]) -> Path:
    """A database folder: one workload per hash of ``names`` ({hash: ["label/task", ...]}), records in order."""
    folder.mkdir()
    hashes = list(names)
    (folder / WORKLOADS).write_text("".join(json.dumps([h, "mod"]) + "\n" for h in hashes))
    (folder / RECORDS).write_text("".join(json.dumps([hashes.index(h), [[[], []], secs, None, None]]) + "\n"
                                          for h, secs in costs))
    (folder / META).write_text(json.dumps({"target": {}, "tasks": names}))
    return folder


def test_records_read_in_the_order_measured(conv, tmp_path):
    log = _log(tmp_path / "db", [("h1", [1.0, 1.0]), ("h2", [1.9, 2.1]), ("h1", [0.8, 1.0]), ("h2", None), ("h1", [1e10]),
                                 ("h2", [2.2, 2.2]), ("h1", [0.95, 0.95]), ("h2", [1.8, 1.8])],
               {"h1": ["m_224/a"], "h2": ["m_224/b", "m_128/b"]})
    costs = conv.task_costs(log)
    assert costs == {"a": pytest.approx([1.0, 0.9, 0.95]), "b": pytest.approx([2.0, 2.2, 1.8])}


def test_network_estimate_weights_tasks_by_calls_and_defaults_time(conv):
    costs = {"a": [1.0, 0.9, 0.95], "b": [2.0, 2.2, 1.8], "unused": [5.0, 1.0, 1.0]}
    calls = Counter({"a": 1, "b": 5})
    points = conv.curve(costs, calls, 3)
    # weights: a 1 x 1.0, b 5 x 2.0; best-so-far / defaults: a 1, 0.9, 0.9; b 1, 1, 0.9
    assert points == [(1, pytest.approx(1.0)), (2, pytest.approx((0.9 + 10) / 11)), (3, pytest.approx(0.9))]
    assert conv.first_at(points, 0.995) == 2 and conv.first_at(points, 0.9) == 3
    assert conv.first_at(points, 0.89) is None


def test_the_defaults_time_is_the_baseline_not_the_first_record_left(conv):
    """After settling, a task's defaults record is at the end of its log and its first record is a drawn
    candidate: with the defaults' time given, the estimate starts at 1 and never claims more than the records."""
    costs = {"a": [2.0, 0.9, 1.0]}  # a slow candidate, a fast one, the defaults timed again last
    points = conv.curve(costs, Counter({"a": 1}), 3, {"a": 1.0})
    assert points == [(1, pytest.approx(1.0)), (2, pytest.approx(0.9)), (3, pytest.approx(0.9))]
    assert conv.curve(costs, Counter({"a": 1}), 3)[-1] == (3, pytest.approx(0.45))  # read off the first record
