"""How tuning measures a candidate kernel: the MetaSchedule runner (local or on a board).

Measured as the kernel runs inside the network: its input was just written by the previous layer
(warm); its weights were last touched an inference ago, so they are out of L1/L2 but (4-17 MB of
them) in L3. Locally, each repeat evicts the private caches first (:func:`network_like_evaluator`).
Warm-cache timing favoured tiles that lose 10-50 % in the network (pw12/pw13 ran 0.33 ms alone,
0.55 ms in the network); flushing everything to DRAM (TVM's cache_flush_cpu_non_first_arg, still
used on boards through RPC, where our evaluator cannot run) made weight streaming from DRAM look
like the bottleneck it is not. GPU kernels: TVM's default timing (back-to-back launches; weights
stay in the L2, as between a network's inferences).

Locally, a candidate is also timed against a reference: the task's template defaults, published by
tune before the task's search (:func:`publish_reference`). Each repeat runs both, in alternating
order, and the cost recorded is ``candidate / reference`` x the reference's own time: the time the
log already holds for it (its record of the defaults, measured when the task was first tuned), or
else measured once, alone, when it was published. On a shared machine whose speed drifts by 10-40 %
between minutes, raw timings taken minutes apart rank candidates by the minute they ran in; ratios
taken side by side do not drift with it. And one measure of the defaults per task and log, not per
run: a 2-thread kernel timed alone on a shared 2-core VM read 0.69 ms in one run and 1.19 ms in
another, and records of two runs, each scaled by its own, compared by that factor.

Public entries: :func:`runner`, :func:`publish_reference`, :func:`reference_base`, :func:`cold_timer`,
:func:`mean_secs` (a measurement's mean, as the database ranks records);
:func:`network_like_evaluator`, :func:`evict_private_caches`, :func:`alloc_args_remote` (the runner's hooks).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import uuid
from pathlib import Path
from typing import Iterator

from mntvm.core.atomic import write_text
from mntvm.core.threads import set_threads
from mntvm.remote.rpc import open_session, parse_addr

FAILED_SECS = 1e10  # what MetaSchedule records as the run time of a candidate that failed to build/run
_EVICT: dict = {}
EVICT_BYTES_PER_THREAD = 2 << 20  # read + written: 4 MB per core, > the L2s we target (1-2 MB), << L3


def mean_secs(run_secs) -> float:
    """A measurement's mean seconds; inf for none, or a failed one (MetaSchedule's IsValid)."""
    secs = [float(s) for s in run_secs or []]
    if not secs or all(s >= FAILED_SECS for s in secs):
        return math.inf
    return sum(secs) / len(secs)


def evict_private_caches(*args) -> None:
    """Runner f_preproc: every pool thread streams its own 2 x EVICT_BYTES_PER_THREAD, which pushes
    L1/L2 out on each core but leaves the L3 (where a network's weights live between inferences);
    then the first argument (the layer's input, just written by the previous layer in the
    network) is read back in."""
    import numpy as np
    import tvm
    from tvm import te

    nt = max(1, int(tvm.get_global_func("runtime.NumThreads")()))
    if nt not in _EVICT:  # one per pool size: a process may time on 1 thread, then on 2
        a = te.placeholder((nt, EVICT_BYTES_PER_THREAD // 4), "float32", name="a")
        b = te.compute(a.shape, lambda i, j: a[i, j] + 1.0, name="b")
        sch = tvm.s_tir.Schedule(te.create_prim_func([a, b]))
        i, j = sch.get_loops(sch.get_sblock("b"))
        sch.parallel(i)
        sch.vectorize(sch.split(j, [None, 16])[1])
        _EVICT[nt] = (tvm.compile(sch.mod, target="llvm")["main"],
                      [tvm.runtime.tensor(np.zeros((nt, EVICT_BYTES_PER_THREAD // 4), "float32")) for _ in range(2)])
    f, bufs = _EVICT[nt]
    f(*bufs)
    if args and hasattr(args[0], "numpy"):
        args[0].numpy()


def cold_timer(mod, device, entry: str = "main", number: int = 1, repeat: int = 1, min_repeat_ms: int = 0):
    """``mod``'s ``entry`` as a ``time_evaluator`` whose every repeat starts as a layer finds its
    caches inside the network (:func:`evict_private_caches`)."""
    import tvm

    tvm.register_global_func("mntvm.evict_private_caches", evict_private_caches, override=True)
    return mod.time_evaluator(entry, device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                              f_preproc="mntvm.evict_private_caches")


REPEATS = 10  # timings of each candidate per measurement (locally: each one beside the reference)
REFERENCE = "reference.json"  # in the runner's reference folder: the kernel candidates are timed against
BASE_RUNS = 15  # timings of a new reference alone, whose median scales the ratios back to seconds
_REF: dict = {}  # in the runner's worker process: its reference folder, and the reference loaded from it


def _signature(args) -> list:
    return [[str(a.dtype), [int(d) for d in a.shape]] for a in args]


def publish_reference(folder: str | Path, lib: str | Path | None, args_info=None, base_s: float | None = None) -> None:
    """Tell the local runner (started with this ``folder``, :func:`runner`) which kernel the
    candidates of the next task are timed against: ``lib`` (an exported library whose ``main`` takes
    ``args_info``'s arguments, MetaSchedule ``ArgInfo``s), or none (``lib=None``: raw timings).
    Written atomically; the worker reads it at each measurement. The ratios are scaled by
    ``base_s`` (the reference's time as a log recorded it, so that costs recorded in different
    runs compare), or else by the median of :data:`BASE_RUNS` runs of the reference alone, timed
    before its first ratio."""
    path = Path(folder) / REFERENCE
    if lib is None:
        path.unlink(missing_ok=True)
        return
    spec = {"id": uuid.uuid4().hex, "lib": str(lib), "args": _signature(args_info)}
    write_text(path, json.dumps(spec if base_s is None else {**spec, "base_s": float(base_s)}))


def _reference(device, args) -> dict | None:
    """The published reference for a candidate with arguments ``args`` (None: no folder, nothing
    published, or published for other arguments), loaded and its base time measured on first use."""
    import numpy as np
    import tvm

    folder = _REF.get("folder")
    if not folder:
        return None
    try:
        spec = json.loads((Path(folder) / REFERENCE).read_text())
    except (OSError, ValueError):
        return None
    if spec.get("args") != _signature(args):
        return None
    if _REF.get("id") != spec["id"]:
        try:
            f = cold_timer(tvm.runtime.load_module(spec["lib"]), device)
            f(*args)  # warm: code, workspace pool
            base = spec.get("base_s") or float(np.median([f(*args).results[0] for _ in range(BASE_RUNS)]))
        except Exception:  # noqa: BLE001 - a reference that does not load or run: the candidate is timed raw
            return None
        _REF.update(id=spec["id"], f=f, base=base)
        write_text(Path(folder) / f"{spec['id']}.base", json.dumps({"base_s": base}))  # for reference_base
    return _REF


def reference_base(folder: str | Path) -> float | None:
    """Seconds the runner scales its ratios by for the reference now published in ``folder`` (the
    scale of the costs it records: given, or measured), or None before it has loaded it (no
    candidate measured against it yet)."""
    try:
        rid = json.loads((Path(folder) / REFERENCE).read_text())["id"]
        return float(json.loads((Path(folder) / f"{rid}.base").read_text())["base_s"])
    except (OSError, ValueError, KeyError):
        return None


def _init_worker(threads: int, folder: str | None) -> None:
    """The local runner's worker initializer: its thread pool, and where references are published."""
    set_threads(threads)
    _REF.clear()
    _REF["folder"] = folder


def network_like_evaluator(rt_mod, device, evaluator_config, repeated_args):
    """LocalRunner f_run_evaluator: each repeat starts with private caches cold, L3 warm, input
    warm (:func:`evict_private_caches`), as a layer finds them inside the network. With a published
    reference (:func:`publish_reference`) each repeat times the candidate and the reference in
    alternating order, and its cost is their ratio x the reference's base time."""
    ref = _reference(device, repeated_args[0]) if repeated_args else None
    if ref is None:
        f = cold_timer(rt_mod, device, rt_mod.entry_name, evaluator_config.number, evaluator_config.repeat,
                       evaluator_config.min_repeat_ms)
        costs = []
        for args in repeated_args:
            device.sync()
            costs += [float(c) for c in f(*args).results]
        return costs
    f = cold_timer(rt_mod, device, rt_mod.entry_name)
    costs = []
    for args in repeated_args:
        device.sync()
        for i in range(evaluator_config.repeat):
            if i % 2 == 0:
                c, r = f(*args).results[0], ref["f"](*args).results[0]
            else:
                r, c = ref["f"](*args).results[0], f(*args).results[0]
            costs.append(float(c) / float(r) * ref["base"])
    return costs


def alloc_args_remote(session, device, args_info, alloc_repeat):
    """RPCRunner f_alloc_argument: seeded uniform data made here and copied to the board (the
    default fills on the board with ``tvm.contrib.random``, which runtime-only installs lack)."""
    import numpy as np
    import tvm

    rng = np.random.default_rng(0)
    repeated = []
    for _ in range(alloc_repeat):
        args = []
        for kind, dtype, shape in args_info:
            if kind != "TENSOR":
                raise ValueError(f"unsupported argument kind {kind}")
            a = tvm.runtime.empty(shape=shape, dtype=dtype, device=device)
            a.copyfrom(rng.uniform(-1, 1, shape).astype(dtype))
            args.append(a)
        repeated.append(args)
    return repeated


def _make_runner(tracker: str | None, key: str | None, threads: int, gpu: bool, reference: str | None):
    from tvm.s_tir import meta_schedule as ms

    cfg = ms.runner.EvaluatorConfig(number=1 if not gpu else 10, repeat=REPEATS, min_repeat_ms=0,
                                    enable_cpu_cache_flush=not gpu)
    if not tracker and gpu:
        return ms.runner.LocalRunner(evaluator_config=cfg, timeout_sec=60)
    if not tracker:
        # the measuring process's pool gets ``threads`` (TVM's own default halves the x86 cores,
        # assuming SMT: 1 thread on a 2-core VM)
        return ms.runner.LocalRunner(evaluator_config=cfg, timeout_sec=60,
                                     f_run_evaluator=network_like_evaluator,
                                     initializer=functools.partial(_init_worker, threads, reference))
    host, port = parse_addr(tracker)
    open_session(tracker, key, wait_s=30).remote  # fail fast: unreachable tracker / no board
    return ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                       session_timeout_sec=120),
        evaluator_config=cfg, max_workers=1, f_alloc_argument=alloc_args_remote)


@contextlib.contextmanager
def runner(tracker: str | None, key: str | None, threads: int = 1, gpu: bool = False,
           reference: str | Path | None = None) -> Iterator:
    """The MetaSchedule runner, for a ``with`` block: local (CPU: :func:`network_like_evaluator`
    on ``threads`` threads, against the references published in the folder ``reference``, if
    given; GPU: TVM's timing), or the board that ``tracker`` hands out for ``key`` (checked
    reachable at once). Its worker processes end with the block."""
    r = _make_runner(tracker, key, threads, gpu, str(reference) if reference else None)
    try:
        yield r
    finally:
        r.pool.shutdown()
