"""caller_pinned keeps the calling thread off cores that other threads of the process are pinned to
(TVM's pool workers) and restores its mask afterwards. Run in a fresh process: in the test session
TVM's pool has already pinned the main thread (it pins the thread that sizes it)."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

BODY = r'''
import os, threading
from mntvm.core.threads import caller_pinned, free_cpus

os.sched_setaffinity(0, range(os.cpu_count()))  # the parent's mask may be TVM's one-core pin
mask = os.sched_getaffinity(0)
assert len(mask) >= 2, "this test needs 2 CPUs (CI machines have 2)"
last = max(mask)
ready, done = threading.Event(), threading.Event()

def pinned_worker():
    os.sched_setaffinity(0, {last})  # as TVM pins a pool worker
    ready.set()
    done.wait(10)

t = threading.Thread(target=pinned_worker)
t.start()
try:
    ready.wait(10)
    assert free_cpus() == mask - {last}, free_cpus()
    with caller_pinned():
        assert os.sched_getaffinity(0) == mask - {last}
    assert os.sched_getaffinity(0) == mask
finally:
    done.set()
    t.join()
assert free_cpus() is None  # nothing pinned any more: nothing to avoid
with caller_pinned():
    assert os.sched_getaffinity(0) == mask
print("ok")
'''


def test_caller_pinned_avoids_a_pinned_thread_and_restores_the_mask():
    p = subprocess.run([sys.executable, "-c", BODY], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
