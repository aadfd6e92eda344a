"""Per-kernel timing of a Relax VM through its instrument hook (0.27 has no VM profiler).

Standalone on purpose: it imports only the standard library and TVM, so the same file runs here
(local ``mntvm bench --per-layer``), in ``mntvm rpc server`` sessions and inside the emulated board
(copied to ``/opt/mntvm`` next to ``board_server.py``), where :func:`register` exposes it as the
global function ``mntvm.profile_vm`` that the host calls over RPC.

:func:`profile_vm` runs ``main`` ``runs`` times with an instrument that timestamps each VM ``Call``
instruction before and after; calls are identified by their position in the (deterministic) call
sequence of one inference, so a kernel reused by several layers is timed per call site.
"""
import json
import time

FUNC_NAME = "mntvm.profile_vm"


def _shape(a):
    shape = getattr(a, "shape", None)
    if shape is None:
        return None
    try:
        return [int(d) for d in shape]
    except (TypeError, ValueError):
        return None


def profile_vm(vm_mod, inp, runs=10):
    """Time every VM call of ``vm_mod["main"](inp)`` over ``runs`` inferences.

    ``vm_mod`` is the VM module (``relax.VirtualMachine(...).module``). Returns a JSON string:
    ``{"runs": N, "calls": [[symbol, [arg shapes], mean_seconds], ...], "run_s": [...]}`` in call
    order (VM builtins included, their symbols start with ``vm.``).
    """
    runs = max(1, int(runs))
    set_instrument = vm_mod["set_instrument"]
    main = vm_mod["main"]
    main(inp)  # warm: allocator pools, caches
    clock = time.perf_counter
    state = {"i": 0, "t0": 0.0}
    calls = []

    def instrument(func, symbol, before_run, ret_value, *args):  # noqa: ARG001 - VM's signature
        if before_run:
            state["t0"] = clock()
            return 0
        dt = clock() - state["t0"]
        i = state["i"]
        state["i"] = i + 1
        if i < len(calls):
            calls[i][2] += dt
        else:
            name = str(symbol)
            shapes = [] if name.startswith("vm.") else [_shape(a) for a in args]
            calls.append([name, shapes, dt])
        return 0  # VMInstrumentReturnKind.NO_OP

    run_s = []
    set_instrument(instrument)
    try:
        for _ in range(runs):
            state["i"] = 0
            t0 = clock()
            main(inp)
            run_s.append(clock() - t0)
    finally:
        set_instrument(None)
    for c in calls:
        c[2] /= runs
    return json.dumps({"runs": runs, "calls": calls, "run_s": run_s})


def register():
    """Register :func:`profile_vm` as the global function ``mntvm.profile_vm`` (RPC servers)."""
    import tvm_ffi

    tvm_ffi.register_global_func(FUNC_NAME, profile_vm, override=True)
