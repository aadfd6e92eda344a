"""caller_pinned keeps the calling thread off cores that other threads of the process are pinned to
(TVM's pool workers) and restores its mask afterwards. Run in a fresh process: in the test session
TVM's pool has already pinned the main thread (it pins the thread that sizes it)."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT

BODY = r'''
import os, threading, time
os.sched_setaffinity(0, range(os.cpu_count()))  # before any import starts threads (numpy's BLAS):
from mntvm.core.threads import caller_pinned, free_cpus  # noqa: E402  they would inherit TVM's one-core pin

mask = os.sched_getaffinity(0)
assert len(mask) >= 2, "this test needs 2 CPUs (CI machines have 2)"
last = max(mask)
ready, done = threading.Event(), threading.Event()

tid = []

def pinned_worker():
    os.sched_setaffinity(0, {last})  # as TVM pins a pool worker
    tid.append(threading.get_native_id())
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
# join() returns just before the OS thread is gone: wait until the kernel has removed its task
deadline = time.time() + 5
while os.path.exists(f"/proc/self/task/{tid[0]}") and time.time() < deadline:
    time.sleep(0.01)
assert free_cpus() is None  # nothing pinned any more: nothing to avoid
with caller_pinned():
    assert os.sched_getaffinity(0) == mask
print("ok")
'''


def test_caller_pinned_avoids_a_pinned_thread_and_restores_the_mask():
    # the whole process starts with every CPU: in the suite TVM has pinned this one to a single core,
    # and threads the child's imports start would inherit that pin and look like TVM's workers
    p = subprocess.run([sys.executable, "-c", BODY], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       preexec_fn=lambda: os.sched_setaffinity(0, range(os.cpu_count())))
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
