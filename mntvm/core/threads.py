"""The one way to size the TVM runtime's CPU thread pool."""
from __future__ import annotations

import os

from mntvm.core.errors import MntvmError


def set_threads(n: int | None) -> None:
    """Set the TVM runtime's CPU thread-pool size for this process (None: leave as is).

    Sets ``TVM_NUM_THREADS`` too, so worker processes started from here inherit it.
    """
    if n is None:
        return
    import tvm

    if n < 1:
        raise MntvmError(f"threads must be >= 1 (got {n})")
    os.environ["TVM_NUM_THREADS"] = str(n)
    tvm.get_global_func("runtime.config_threadpool")(1, n)  # 1 = kBig: pin to big cores
