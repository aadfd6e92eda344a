"""A log is checked on the machine that compiles with it before it is trusted: each tuned task is
timed with the log's schedule and with the template defaults on this CPU, and the faster one is
kept.

Two reasons, both measured:
- a stand-in log (:func:`mntvm.tuning.database.open_schedules` picked another CPU's log of the
  same ISA) was tuned on other caches, clocks and ports: on the machine that filed issue 15 it
  made the network 9 % slower than the defaults;
- a log tuned on this very machine picks each task's best from single timings taken minutes
  apart, and on a shared machine whose speed drifts by 40 % the best can be a lucky one: a
  16-trial log of 1.0/224, tuned while a test run shared the CPU, made the network 11 % slower
  than the defaults (some tasks 13-28 % slower inside the network), although each task's search
  had started from the defaults. Tuned on a quiet machine, 4 of its 12 tasks still lost to the
  defaults here.
:func:`check_log` times both versions of every task the log covers in alternation (a few
milliseconds each, like a layer inside the network: private caches cold), on 1 thread and on the
profile's thread count (an artifact runs on either: ``mntvm bench --threads``), keeps the log's
schedule only where it is not slower by more than the noise margin on any of them, and remembers
the verdict per (log, machine, TVM) in the cache folder, so the next compile on this machine costs
nothing. Checked on the profile's 2 threads only, the shipped log's 14x14 384->384 record of
0.75/224 passed in one of two compiles (the 2-thread timings of both versions swing by 1.8x on a
shared host) and ran 18-21 % slower than the defaults on 1 thread, and 0.75/224 with it 5-9 %.

A network can still lose where each of its tasks passed (the weights of a late layer come from
DRAM in the network, and small losses add up): so, when tasks are kept from the log, the whole
network with them is timed against the network on the defaults (:func:`check_network`, a few
seconds once per log, network and machine), and the log is dropped where its network is slower.

Public entries: :func:`apply_checked` (a log applied to a lowered module, checked), :func:`check_log`,
:func:`check_network`,
:func:`verdicts_here` (what this machine concluded of a log, for ``mntvm schedules show``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from mntvm.core.atomic import write_text
from mntvm.core.paths import cache_dir
from mntvm.core.threads import caller_pinned, cores, restored_threads, set_threads
from mntvm.templates import prefetch
from mntvm.templates.defaults import apply_default_schedules, defaults_key
from mntvm.tuning.database import task_mod
from mntvm.tuning.measure import cold_timer

MARGIN = 0.03  # the log must be within 3 % of the defaults (timing noise), else the defaults win
# each task's pair is timed in this many rounds, every task once per round, and judged on the round in
# which the pair ran fastest: on a shared host a kernel runs up to 1.6x slower for seconds at a time
# (whatever else the host runs; the FMA peak reads 87-218 GFLOP/s here), and that does not slow two
# schedules alike (0.75/224's 14x14 384->384 task, on 1 thread: log / defaults 0.57 / 0.60 ms in such
# seconds, 0.47 / 0.39 in quiet ones; the network, interleaved, ran 1.067x slower with the log's)
ROUNDS = 3
VERDICTS = "log-checks"  # folder under the cache


def machine_key() -> str:
    """This machine's CPU as far as code speed goes: model name, flags, core count."""
    info = {}
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            k = k.strip()
            if k in ("model name", "flags", "cpu family", "model") and k not in info:
                info[k] = v.strip()
    except OSError:
        info["machine"] = platform.machine()
    info["cores"] = str(cores())
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def verdict_path(db_sha256: str) -> Path:
    import tvm

    return cache_dir() / VERDICTS / f"{db_sha256[:16]}-{machine_key()}-{tvm.__version__}-{defaults_key()}.json"


def verdicts_here(db_sha256: str) -> dict | None:
    """The verdicts this machine holds for the log with hash ``db_sha256`` (per workload hash:
    ``log_ms``, ``default_ms``, ``keep``), or None when it has never checked that log."""
    try:
        return json.loads(verdict_path(db_sha256).read_text()).get("workloads") or None
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _write_verdicts(path: Path, **parts) -> None:
    """The verdict file at ``path`` with ``parts`` (``workloads``, ``networks``) replaced, the
    others kept; written atomically."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        doc = {}
    doc = {**(doc if isinstance(doc, dict) else {}), **parts, "machine": machine_key()}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _timer(func, target):
    """A callable timing one call of a scheduled task PrimFunc on random arguments, private caches
    cold (as inside the network), in seconds."""
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    rt = prefetch.compile_cpu(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    args = []
    for info in ArgInfo.from_prim_func(func):
        shape, dt = [int(d) for d in info.shape], str(info.dtype)
        a = (rng.integers(-20, 20, shape) if "int" in dt else rng.standard_normal(shape)).astype(dt)
        args.append(tvm.runtime.tensor(a, dev))
    f = cold_timer(rt.mod, dev, repeat=5)
    return lambda: [float(r) for r in f(*args).results]


def _time_pair(ta, tb, budget_s: float = 0.1) -> tuple[float, float]:
    """Median seconds of two versions of one task (:func:`_timer` s), timed in alternation (drift
    on a shared machine hits both alike), on the calling thread's pool as it is sized now."""
    ra, rb = [], []
    with caller_pinned():
        ta(), tb()  # warm: code, pool
        t0 = time.perf_counter()
        while (time.perf_counter() - t0 < budget_s or len(ra) < 20) and len(ra) < 400:
            ra += ta()
            rb += tb()
    return float(np.median(ra)), float(np.median(rb))


def _thread_counts(profile) -> list[int]:
    """The thread counts a log is checked on: 1 and the profile's (at most this machine's cores)."""
    return sorted({1, min(profile.threads, cores())})


def check_log(db, low, mod, covered: list[str], profile) -> dict:
    """Per task of ``covered``: keep the log's schedule (``mod[name]``) or the template defaults
    (of ``low[name]``), whichever is faster here on ``profile``'s target, on every thread count of
    :func:`_thread_counts` (the log only where it is not slower on any). Returns ``{"tasks":
    {name: {"log_ms", "default_ms", "keep", "threads"}}, "measured": tasks timed now, "seconds",
    "file"}``: ``log_ms``/``default_ms`` on the profile's thread count, ``threads`` the pair per
    thread count; verdicts are kept per workload in the file of :func:`verdict_path` (read,
    extended, rewritten atomically), so only workloads not judged on this machine before (on these
    thread counts) are timed."""
    import tvm
    import tvm_ffi

    target = profile.tvm_target()
    sha = db.identity()["sha256"]
    path = verdict_path(sha)
    key = {n: str(tvm_ffi.structural_hash(task_mod(low[n]))) for n in covered}  # the workload, not its name
    known = verdicts_here(sha) or {}
    counts = _thread_counts(profile)
    t0 = time.perf_counter()
    todo = [n for n in covered if not set(map(str, counts)) <= set(known.get(key[n], {}).get("threads", {}))]
    timers = {name: (_timer(mod[name], target),
                     _timer(apply_default_schedules(tvm.IRModule({"main": low[name]}), target,
                                                    profile.vector_bits)["main"], target)) for name in todo}
    rounds = {name: {str(c): [] for c in counts} for name in todo}
    with restored_threads():  # the caller's thread count (e.g. a benchmark's 1) is its own again after
        for _ in range(ROUNDS if todo else 0):
            for n_threads in counts:
                set_threads(n_threads)
                for name in todo:
                    rounds[name][str(n_threads)].append(_time_pair(*timers[name]))
    for name in todo:
        # per thread count, the round least slowed by the rest of the host (the smallest sum of the two)
        by = {c: [round(x * 1e3, 4) for x in min(r, key=sum)] for c, r in rounds[name].items()}
        log_ms, def_ms = by[str(counts[-1])]
        slower = any(lg > df * (1 + MARGIN) for lg, df in by.values())
        known[key[name]] = {"log_ms": log_ms, "default_ms": def_ms, "threads": by,
                            "keep": "default" if slower else "log"}
    if todo:
        _write_verdicts(path, workloads=known)
    return {"tasks": {n: known[key[n]] for n in covered}, "measured": len(todo),
            "seconds": round(time.perf_counter() - t0, 2), "file": path.name}


# the network with the log's kept tasks must be within 1 % of the defaults' network: about the noise of the
# interleaved medians here (the shipped Zen 2 log's two tasks, stem and pool, 0.35 of 13 ms of the network:
# 1.008x / 1.005x at 1 / 2 threads in one check, 0.99-1.00x in benchmarks/schedules_effect.py runs)
NETWORK_MARGIN = 0.01
NETWORK_ROUNDS = 6  # interleaved rounds per thread count, each a block of NETWORK_RUNS calls per build
NETWORK_RUNS = 5


def _network_call(mod, profile, lib: Path):
    """A callable running the whole lowered network ``mod`` (its Relax ``main``) once on a random
    input, built and exported to ``lib`` as compile builds and exports it (template defaults for what
    ``mod`` leaves unscheduled), and loaded from that file: the check times the very library an
    artifact ships, and compile can take it as it is. (A VM is never made from the in-memory
    executable: exported after a VM loaded it, it prints a "Scope Saving" warning per constant.)"""
    import tvm
    from tvm import relax

    target = profile.tvm_target()
    ex = prefetch.compile_cpu(apply_default_schedules(mod, target, profile.vector_bits), target)
    profile.export_library(ex, lib)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    shape = [int(d) for d in mod["main"].params[0].ty.shape]
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"), tvm.cpu())
    return lambda: vm["main"](x)


def _network_keep(log_ms: dict, default_ms: dict) -> str:
    """"log" where the log's network is within :data:`NETWORK_MARGIN` of the defaults' on every
    thread count timed, else "default"."""
    return "default" if any(log_ms[c] > default_ms[c] * (1 + NETWORK_MARGIN) for c in log_ms) else "log"


def check_network(db, low, mod, kept: list[str], profile, libs: str | Path | None = None) -> dict:
    """The whole network with the log's schedules for ``kept`` (``mod``) against the network on the
    template defaults (``low``), timed interleaved on every thread count of :func:`_thread_counts`:
    ``keep`` is "log" only where the log's network is not slower by more than
    :data:`NETWORK_MARGIN` on any. Each task can pass :func:`check_log` (alone, within 3 %) and the
    network still lose: a log tuned here with our search, 5 of 9 fused tasks kept, ran the
    1.0/224 network 1.02x / 1.01x slower at 1 / 2 threads (the weights of a layer come from DRAM in
    the network, and the tasks' small losses add up). Returns ``{"keep", "log_ms", "default_ms",
    "measured", "seconds"}`` (medians per thread count); the verdict is kept in the log's verdict
    file per network (its tasks' workloads and which of them use the log). The two networks timed
    now are exported as ``log.so`` and ``defaults.so`` in the folder ``libs`` (a temporary one when
    None), the libraries compile would export for them."""
    import tvm_ffi

    from mntvm.core.threads import time_interleaved
    from mntvm.templates.registry import tunable_tasks

    t0 = time.perf_counter()
    path = verdict_path(db.identity()["sha256"])
    tasks = sorted(tunable_tasks(low))
    ident = [(str(tvm_ffi.structural_hash(task_mod(low[n]))), n in kept) for n in tasks]
    key = hashlib.sha256(json.dumps(sorted(ident)).encode()).hexdigest()[:16]
    try:
        networks = json.loads(path.read_text()).get("networks") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        networks = {}
    if key in networks:  # judged again from its times: the margin may have changed since
        v = networks[key]
        return {**v, "keep": _network_keep(v["log_ms"], v["default_ms"]), "measured": False,
                "seconds": round(time.perf_counter() - t0, 2)}
    by = {}
    with contextlib.ExitStack() as stack:
        folder = Path(libs if libs is not None else stack.enter_context(tempfile.TemporaryDirectory(prefix="mntvm-")))
        calls = {k: _network_call(m, profile, folder / f"{k}.so") for k, m in (("log", mod), ("defaults", low))}
        with restored_threads():
            for n_threads in _thread_counts(profile):
                set_threads(n_threads)
                t = time_interleaved(calls, NETWORK_ROUNDS, NETWORK_RUNS, warmup=2, pinned=tuple(calls), alternate=True)
                by[str(n_threads)] = {k: round(float(np.median(v)), 4) for k, v in t.items()}
    log_ms, default_ms = {c: v["log"] for c, v in by.items()}, {c: v["defaults"] for c, v in by.items()}
    verdict = {"keep": _network_keep(log_ms, default_ms), "log_ms": log_ms, "default_ms": default_ms}
    networks[key] = verdict
    _write_verdicts(path, networks=networks)
    return {**verdict, "measured": True, "seconds": round(time.perf_counter() - t0, 2)}


def _is_network(mod) -> bool:
    """Whether ``mod`` is a whole lowered network (a Relax ``main``), not only task PrimFuncs."""
    from tvm import relax

    return any(gv.name_hint == "main" and isinstance(f, relax.Function) for gv, f in mod.functions.items())


def apply_checked(db, low, profile, check: bool = True, libs: str | Path | None = None):
    """``db``'s records applied to the lowered module ``low`` (:meth:`ScheduleDB.apply`); when
    ``profile`` is this machine's CPU and ``check``, every tuned task is first checked here
    (:func:`check_log`) and those the defaults beat are left unscheduled (the template defaults
    schedule them later); then, for a whole network with tasks still on the log, the network is
    checked too (:func:`check_network`) and, where the log's is slower, all of it goes back to
    the defaults. Returns ``(module, tuned task names kept, check summary or None, library or
    None)``; the summary: ``kept``, ``reverted`` (names, by the tasks' check), ``measured``,
    ``seconds``, ``file``, the tasks' summed ``log_ms`` / ``default_ms``, and ``network``
    (:func:`check_network`'s verdict, with ``reverted``: the tasks it sent back; or None); the
    library: where the network check built and timed the returned module just now and ``libs``
    (a folder) was given, its exported file there, which compile ships instead of building the
    network a third time."""
    mod, tuned = db.apply(low, profile.tvm_target())
    if not (check and tuned and not profile.is_gpu and profile.detected.get("mcpu")):
        return mod, tuned, None, None
    c = check_log(db, low, mod, tuned, profile)
    reverted = sorted(n for n, v in c["tasks"].items() if v["keep"] == "default")
    mod = mod.clone()
    for name in reverted:
        mod[name] = low[name]
    tuned = [n for n in tuned if n not in reverted]
    network, lib = None, None
    if tuned and _is_network(low):
        network = check_network(db, low, mod, tuned, profile, libs)
        if network["keep"] == "default":  # the whole network on the defaults
            network["reverted"], tuned, mod = sorted(tuned), [], low
        if network["measured"] and libs is not None:
            lib = Path(libs) / ("log.so" if tuned else "defaults.so")
    return mod, tuned, {"kept": len(tuned), "reverted": reverted, "measured": c["measured"], "seconds": c["seconds"],
                        "network": network,
                        "file": c["file"], "log_ms": round(sum(v["log_ms"] for v in c["tasks"].values()), 4),
                        "default_ms": round(sum(v["default_ms"] for v in c["tasks"].values()), 4)}, lib
