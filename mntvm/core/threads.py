"""The one way to size the TVM runtime's CPU thread pool, to keep the calling thread off its workers' cores,
and to time runtimes against each other in one process (:func:`time_interleaved`, which waits out the
other runtime's spinning pool with :func:`settle`)."""
from __future__ import annotations

import contextlib
import os
import threading
import time

from mntvm.core.errors import MntvmError


def cores() -> int:
    """CPU cores of this machine (not this process's affinity mask: TVM's thread pool pins the
    thread that sizes it, and children inherit that one-core mask)."""
    return os.cpu_count() or 1


def check_threads(n: int | None) -> None:
    """Threads for a run on this machine: at least 1, at most its cores (more only queue up and
    make TVM's pool spin and pin for seconds)."""
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MntvmError(f"threads must be an integer >= 1 (got {n!r})")
    if n > cores():
        raise MntvmError(f"threads {n} > the {cores()} cores of this machine")


_POOL = threading.local()  # .sized: this thread's TVM pool was made by set_threads (pools are per thread)


def set_threads(n: int | None) -> None:
    """Set the TVM runtime's CPU thread-pool size for the calling thread (None: leave as is).

    TVM's pool (one per calling thread) gets its workers when it is made, as many as
    ``TVM_NUM_THREADS`` says at that moment, and never more: a pool first sized to 1 thread ran
    every later 2-thread request on 1. So the first call here makes it with this machine's
    cores, then uses ``n`` of them. Sets ``TVM_NUM_THREADS`` to ``n`` too, so worker processes
    started from here inherit it.
    """
    if n is None:
        return
    import tvm

    check_threads(n)
    configure = tvm.get_global_func("runtime.config_threadpool")
    if not getattr(_POOL, "sized", False):
        os.environ["TVM_NUM_THREADS"] = str(cores())
        configure(1, n)  # makes the pool (if this thread had none yet) with cores() workers
        _POOL.sized = True
    os.environ["TVM_NUM_THREADS"] = str(n)
    configure(1, n)  # 1 = kBig: pin to big cores
    _POOL.n = n


def current_threads() -> int | None:
    """The thread count :func:`set_threads` last set for the calling thread (None: never)."""
    return getattr(_POOL, "n", None)


@contextlib.contextmanager
def restored_threads():
    """A block that may :func:`set_threads` for its own timings and leaves the calling thread's
    count as it found it: what it set last, or (none set) ``TVM_NUM_THREADS`` as it was, else all
    cores."""
    before, env = current_threads(), os.environ.get("TVM_NUM_THREADS")
    try:
        yield
    finally:
        if before is not None:
            set_threads(before)
        elif current_threads() is not None:
            set_threads(int(env) if env and env.isdigit() and 1 <= int(env) <= cores() else cores())
            _POOL.n = None
            if env is None:
                os.environ.pop("TVM_NUM_THREADS", None)
            else:
                os.environ["TVM_NUM_THREADS"] = env


def _pinned_cpu(task: str) -> int | None:
    """The one CPU thread ``task`` of this process is pinned to, or None (several, or gone)."""
    try:
        with open(f"/proc/self/task/{task}/status") as f:
            line = next((ln for ln in f if ln.startswith("Cpus_allowed_list:")), "")
    except OSError:
        return None
    cpus = line.split(":", 1)[-1].strip()
    return int(cpus) if cpus.isdigit() else None


def free_cpus() -> set[int] | None:
    """The CPUs of the calling thread's mask that no single-CPU-pinned thread of this process holds
    (TVM's pool pins each worker to one core), or None when there is nothing to avoid."""
    if not os.path.isdir("/proc/self/task"):
        return None
    import threading

    me = str(threading.get_native_id())
    mask = os.sched_getaffinity(0)
    taken = {c for t in os.listdir("/proc/self/task") if t != me for c in [_pinned_cpu(t)] if c is not None}
    free = mask - taken
    return free if free and free != mask else None


@contextlib.contextmanager
def caller_pinned():
    """Run the block with the calling thread kept off the cores TVM's pool workers are pinned to.

    TVM pins its workers (with 2 threads on 2 cores: the one worker on CPU 1) but not the calling
    thread, which runs task 0 itself; left free, the kernel scheduler puts it on the worker's CPU
    about half the time, and the two then share one core: 2-thread timings came out 1x or 2x at
    random. The mask is restored on exit, so what runs afterwards in this thread (ONNX Runtime
    creates its threads with the creating thread's mask) is not confined. Nothing happens before
    TVM's pool exists (nothing is pinned yet) or where nothing is pinned.
    """
    cpus = free_cpus()
    if cpus is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


SETTLE_FACTOR = 1.2  # after a switch, untimed calls until one is within this factor of the runtime's best
SETTLE_MAX_S = 1.0  # ... or until this long has passed


def settle(fn, best_ms: float) -> None:
    """Untimed calls of ``fn`` until one takes at most SETTLE_FACTOR x ``best_ms`` (at least one call,
    at most SETTLE_MAX_S seconds): the other runtime's pool may still be spinning. On a 2-vCPU Zen 2
    guest (Linux 6.18), right after a switch ours took 47 then 17 ms and ONNX Runtime 25, 23, 13 ms,
    then both ran 6.4 / 7.0 ms; the one untimed call used before put 1 to 3 stalled calls in each
    round of 5 (2-thread medians 7.2 / 8.5 ms, p90 20+ ms). No sleep between blocks either: after a
    50 ms pause ONNX Runtime's 2-thread runs took 16.3 ms instead of 7.4 ms on a 2-core Zen4 VM
    (ours 7.0 either way), which flattered our ratio."""
    end = time.perf_counter() + SETTLE_MAX_S
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        if (t1 - t0) * 1e3 <= SETTLE_FACTOR * best_ms or t1 >= end:
            return


def time_interleaved(calls: dict, rounds: int, per_round: int, warmup: int = 0, pinned=(),
                     alternate: bool = False) -> dict[str, list[float]]:
    """Time ``calls`` (name -> callable, no arguments) against each other in one process: ``warmup``
    untimed calls of each, then ``rounds`` rounds in which each is called ``per_round`` times in a block
    (so drift hits all alike; ``alternate``: every other round in reverse order). Every block starts with
    :func:`settle` (the previous block's pool may still be spinning); the names in ``pinned`` (TVM
    runtimes) run with the calling thread off TVM's workers' cores (:func:`caller_pinned`). Returns
    name -> the timed calls in ms."""
    best: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in calls}

    def block(name, k):
        fn = calls[name]
        out = []
        with caller_pinned() if name in pinned else contextlib.nullcontext():
            settle(fn, best.get(name, float("inf")))
            for _ in range(k):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
        if out:
            best[name] = min(best.get(name, float("inf")), *out)
        return out

    for name in calls:
        block(name, warmup)
    for r in range(rounds):
        for name in (list(calls)[::-1] if alternate and r % 2 else list(calls)):
            times[name] += block(name, per_round)
    return times
