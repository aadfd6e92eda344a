"""set_threads sizes TVM's thread pool: any thread count up to the machine's cores, in any order in one
process. Run in a fresh process: in the test session the pool was made long ago. settle waits out a stalled
runtime."""
from __future__ import annotations

import os
import subprocess
import itertools
import sys
import time

import pytest

from conftest import ROOT

from mntvm.core.errors import MntvmError
from mntvm.core.threads import SETTLE_MAX_S, cores, set_threads, settle, time_interleaved

BODY = r'''
import os, sys
os.environ.pop("TVM_NUM_THREADS", None)
import tvm
from mntvm.core.threads import cores, set_threads

n = cores()
assert n >= 2, "this test needs 2 CPUs (CI machines have 2)"
got = []
for want in (1, n, 1, n):
    set_threads(want)
    got.append((want, int(tvm.get_global_func("runtime.NumThreads")()), os.environ["TVM_NUM_THREADS"]))
print(got)
assert all(w == t and e == str(w) for w, t, e in got), got
print("ok")
'''


def test_more_threads_after_fewer():
    """TVM's pool gets its workers when it is made (as many as TVM_NUM_THREADS says then) and never
    more: sized to 1 thread first, it ran every later 2-thread request on 1 (tune's check of a log on
    1 thread, then 2; benchmarks/layers.py --threads 1,2). Worker processes inherit the count asked."""
    p = subprocess.run([sys.executable, "-c", BODY], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"})
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stdout + p.stderr


RESTORED = r'''
import os
os.environ.pop("TVM_NUM_THREADS", None)
import tvm
from mntvm.core.threads import cores, current_threads, restored_threads, set_threads

pool = tvm.get_global_func("runtime.NumThreads")
with restored_threads():  # none set before: back to the machine's cores, TVM_NUM_THREADS unset again
    set_threads(1)
    assert pool() == 1
assert (pool(), current_threads(), os.environ.get("TVM_NUM_THREADS")) == (cores(), None, None)
set_threads(1)
with restored_threads():  # a caller's 1 stays 1 whatever the block sets
    set_threads(cores())
    assert pool() == cores()
assert (pool(), current_threads(), os.environ["TVM_NUM_THREADS"]) == (1, 1, "1")
print("ok")
'''


def test_a_block_that_sets_threads_gives_the_callers_back():
    """compile's check of a log times each task on 1 thread and on the profile's count; it left the
    pool on the last, so a benchmark that had set 1 thread timed everything after it on 2."""
    p = subprocess.run([sys.executable, "-c", RESTORED], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"})
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stdout + p.stderr


@pytest.mark.parametrize("n", [0, -1, True, 1.5])
def test_bad_thread_counts_are_refused(n):
    with pytest.raises(MntvmError, match="threads must be an integer >= 1"):
        set_threads(n)


def test_more_threads_than_cores_are_refused():
    with pytest.raises(MntvmError, match=f"> the {cores()} cores"):
        set_threads(cores() + 1)


def _calls(durations):
    """A callable that sleeps the next of ``durations`` (seconds; 0 once they run out), and its call log."""
    log = []

    def fn():
        time.sleep(durations[len(log)] if len(log) < len(durations) else 0)
        log.append(1)

    return fn, log


def test_settle_waits_until_a_call_is_near_the_best():
    fn, log = _calls([0.05, 0.05])  # two stalled calls, then fast ones
    settle(fn, best_ms=10.0)
    assert len(log) == 3


def test_settle_makes_one_call_without_a_best():
    fn, log = _calls([0.05, 0.05])
    settle(fn, best_ms=float("inf"))
    assert len(log) == 1


def test_settle_gives_up_after_its_time():
    fn, log = _calls([0.05] * 1000)
    t0 = time.perf_counter()
    settle(fn, best_ms=1.0)
    elapsed = time.perf_counter() - t0
    assert SETTLE_MAX_S <= elapsed < SETTLE_MAX_S + 0.5
    assert len(log) < 1000


def test_time_interleaved_blocks_rounds_and_warmup():
    log = []
    calls = {"a": lambda: log.append("a"), "b": lambda: log.append("b")}
    times = time_interleaved(calls, rounds=3, per_round=2, warmup=1, alternate=True)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6}  # warmup and settle calls not timed
    # blocks: warmup a, b; round 0 a, b; round 1 reversed b, a; round 2 a, b (adjacent blocks of one name merge)
    assert "".join(k for k, _ in itertools.groupby(log)) == "ababab"
    assert len(log) >= 2 * (1 + 3 * 2) + 2 * 4  # each block's settle made at least one untimed call


def test_time_interleaved_does_not_time_a_stalled_call_after_a_switch():
    stalls_left = {"a": 0}

    def a():  # the first two calls after the other runtime ran stall (its pool still spinning)
        if stalls_left["a"]:
            stalls_left["a"] -= 1
            time.sleep(0.05)

    def b():
        stalls_left["a"] = 2

    times = time_interleaved({"a": a, "b": b}, rounds=3, per_round=2, warmup=1)
    assert len(times["a"]) == 6
    assert max(times["a"]) < 20  # ms: each stall was taken by settle, not timed
