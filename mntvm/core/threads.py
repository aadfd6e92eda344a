"""The one way to size the TVM runtime's CPU thread pool."""
from __future__ import annotations

import os

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


def set_threads(n: int | None) -> None:
    """Set the TVM runtime's CPU thread-pool size for this process (None: leave as is).

    Sets ``TVM_NUM_THREADS`` too, so worker processes started from here inherit it.
    """
    if n is None:
        return
    import tvm

    check_threads(n)
    os.environ["TVM_NUM_THREADS"] = str(n)
    tvm.get_global_func("runtime.config_threadpool")(1, n)  # 1 = kBig: pin to big cores
