"""Time a compiled artifact, here or on a board reached through TVM's RPC tracker.

Each inference is timed on its own (``time_evaluator`` with ``number=1``), after ``warmup``
untimed runs; the output is compared with the host's numpy reference for the same weights and
input (``max_abs_diff``, :func:`mntvm.bench.checks.reference_output`). ``per_layer`` times every
VM call through the Relax VM's instrument hook (:mod:`mntvm.remote.vm_profile`, run on the board
itself when remote) and maps the kernels to the model's layers (:mod:`mntvm.bench.per_layer`).

Remote work is bounded: every RPC call runs on one worker thread with a deadline (fixed for
upload/load/the first inference, derived from the measured first inference for the timed runs),
so a board that dies or hangs gives a one-line :class:`MntvmError`, never a hang.

Public entries: :func:`benchmark`, :func:`check_run_args`, :func:`summarize`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mntvm.bench.checks import reference_output
from mntvm.core.machine import measure_peak
from mntvm.bench.per_layer import format_per_layer, per_layer_report
from mntvm.compile.artifact import deterministic_input, load_artifact, top_k
from mntvm.core import arch
from mntvm.core.console import Progress
from mntvm.core.errors import MntvmError
from mntvm.core.threads import caller_pinned, cores, set_threads
from mntvm.model.network import MobileNetConfig
from mntvm.remote import rpc, vm_profile
from mntvm.remote.board import board_arch, board_cores

STAT_KEYS = ("median_ms", "mean_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "std_ms")
RESULT_KEYS = STAT_KEYS + ("repeat", "threads", "target", "upload_s", "load_s", "first_run_ms",
                           "max_abs_diff")


def check_run_args(repeat: int, warmup: int, threads: int | None) -> None:
    """One-line errors for timing arguments (shared with the sweep, which checks before compiling)."""
    if repeat < 1:
        raise MntvmError(f"--repeat must be >= 1 (got {repeat})")
    if warmup < 0:
        raise MntvmError(f"--warmup must be >= 0 (got {warmup})")
    if threads is not None and threads < 1:
        raise MntvmError(f"--threads must be >= 1 (got {threads})")


def summarize(times_ms) -> dict:
    """The :data:`STAT_KEYS` statistics of a list of run times (ms)."""
    t = np.asarray(times_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(t)), "mean_ms": float(t.mean()),
        "p90_ms": float(np.percentile(t, 90)), "p99_ms": float(np.percentile(t, 99)),
        "min_ms": float(t.min()), "max_ms": float(t.max()), "std_ms": float(t.std()),
    }


class _Local:
    """Same interface as :class:`mntvm.remote.rpc.RemoteWorker`, for runs in this process (no deadline)."""

    board = "local"
    failed = None

    def __init__(self):
        self.state: dict = {}

    def call(self, fn, timeout, what):  # noqa: ARG002 - same signature as RemoteWorker.call
        with caller_pinned():  # off the cores TVM pinned its workers to (once its pool exists)
            return fn(self.state)

    def close(self, timeout: float = 0) -> None:  # noqa: ARG002
        self.state.clear()


def benchmark(
    artifact_dir: str | Path,
    repeat: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    tracker: str | None = None,
    key: str | None = None,
    wait_s: float = 60.0,
    input_seed: int = 0,
    progress: bool = True,
    per_layer: bool = False,
    per_layer_runs: int = 10,
    timeout_s: float = 300.0,
    on_board=None,
) -> dict:
    """Time ``repeat`` single inferences of the artifact and return the statistics as a dict.

    Remote (``tracker`` and ``key``): a board is requested within ``wait_s``; upload, load and
    the first inference must each finish within ``timeout_s``; later calls within a deadline of
    ``10 s + 5 ×`` their expected time (from the first inference). ``per_layer`` adds
    ``result["per_layer"]`` (see :func:`per_layer_report`). ``on_board(board)`` is called with
    the board's address as soon as the tracker hands one out.
    """
    check_run_args(repeat, warmup, threads)
    art = load_artifact(artifact_dir)
    x = deterministic_input(art.input_shape, input_seed)
    result = {"target": art.metadata["target"]["name"], "repeat": repeat, "warmup": warmup}
    model = art.metadata["model"]

    if tracker:
        session = rpc.open_session(tracker, key, wait_s=wait_s)
        if on_board is not None:
            on_board(session.board)
        worker = rpc.RemoteWorker(session.board)
        worker.state["session"] = session.remote  # owned by the worker from now on
        result["board"] = session.board
        result["key"] = key
        del session
        have = worker.call(lambda st: board_arch(st["session"]), 30, "the architecture query")
        want = arch.artifact_arch(art.metadata)
        result["board_arch"] = have
        if not arch.same(want, have):
            worker.close()
            raise MntvmError(f"{art.path} is built for {want} ({art.metadata['target']['name']}), "
                             f"but board {result['board']} under key '{key}' is {have}: "
                             "nothing was uploaded")
        ncores = worker.call(lambda st: board_cores(st["session"]), 30, "the cores query") if threads else None
        if ncores is not None and threads > ncores:
            worker.close()
            raise MntvmError(f"--threads {threads} > the {ncores} cores board {result['board']} under key "
                             f"'{key}' may run on: nothing was uploaded")
    else:
        foreign = arch.foreign_arch(art.metadata)
        if foreign:
            want, here = foreign
            raise MntvmError(f"{art.path} is built for {want} ({art.metadata['target']['name']}) and cannot "
                             f"run on this {here} machine: bench it on a board with --tracker/--key")
        missing = arch.missing_cpu_features(art.metadata)
        if missing:
            raise MntvmError(f"{art.path} cannot run on this machine: {missing}")
        if arch.is_cuda(art.metadata) and not arch.local_cuda():
            raise MntvmError(f"{art.path} is a CUDA artifact ({art.metadata['target']['name']}) and this machine "
                             "has no CUDA GPU: bench it where one is, or on a GPU board with --tracker/--key")
        if threads is None:  # the profile's thread count, at most this machine's cores
            threads = min(int(art.metadata["target"].get("threads") or 0), cores()) or None
        set_threads(threads)
        worker = _Local()
        result["board"] = "local"
        result["board_arch"] = arch.local()

    label = f"bench {model.get('alpha')}/{model.get('resolution')}"
    try:
        with Progress(repeat, label, enabled=progress) as bar:
            _run(worker, art, x, result, bar, repeat, warmup, threads, tracker is not None,
                 per_layer, per_layer_runs, timeout_s)
    finally:
        worker.close()

    out = result.pop("_out")
    result["max_abs_diff"] = float(np.abs(out - reference_output(art, x)).max())
    result["output_top5"] = [[i, p] for i, p in top_k(out, 5)[0]]
    result["model"] = model
    if per_layer:
        # the peak at the artifact's vector width, on the threads it ran on (here only: a board's
        # CPU is not this one)
        bits = art.metadata["target"].get("vector_bits")
        dtype = art.metadata.get("dtype", "float32")
        # int8: the peak of what the build multiplies with (it records it); an AMX build's pointwise
        # layers against the AMX peak (:mod:`mntvm.templates.amx_int8`), its other layers on VNNI
        kernel = (art.metadata.get("quantization") or {}).get("pointwise") if dtype == "int8" else None
        dot = "vnni" if kernel == "amx" else kernel
        peak = None if tracker is not None or not bits else measure_peak(result["threads"], bits, dtype=dtype,
                                                                        dot=dot or "none")
        pw_peak = measure_peak(result["threads"], bits, dtype=dtype, dot="amx") if kernel == "amx" and peak else None
        result["per_layer"] = per_layer_report(json.loads(result.pop("_profile")),
                                               MobileNetConfig.from_dict(model), peak_gflops=peak, dtype=dtype,
                                               pointwise_peak=pw_peak, peak_kind=dot if peak else None)
    return result


def _run(worker, art, x, result, bar, repeat, warmup, threads, remote, per_layer, per_layer_runs,
         timeout_s) -> None:
    import tvm
    from tvm import relax

    lib_path = art.lib_path
    size_mb = lib_path.stat().st_size / 1e6

    def upload(st):
        if not remote:
            return 0.0
        t0 = time.perf_counter()
        st["session"].upload(str(lib_path))
        return time.perf_counter() - t0

    result["upload_s"] = worker.call(upload, timeout_s + 2 * size_mb, f"the upload of {lib_path.name}")

    def load(st):
        t0 = time.perf_counter()
        if remote:
            sess = st["session"]
            st["dev"] = sess.cuda() if arch.is_cuda(art.metadata) else sess.cpu()
            lib = sess.load_module(lib_path.name)
            if threads:
                sess.get_function("runtime.config_threadpool")(1, threads)
            st["num_threads"] = int(sess.get_function("runtime.NumThreads")())
        else:
            st["dev"] = tvm.cuda() if arch.is_cuda(art.metadata) else tvm.cpu()
            lib = tvm.runtime.load_module(str(lib_path))
            st["num_threads"] = int(tvm.get_global_func("runtime.NumThreads")())
        st["vm"] = relax.VirtualMachine(lib, st["dev"])
        st["inp"] = tvm.runtime.tensor(x, st["dev"])
        return time.perf_counter() - t0

    result["load_s"] = worker.call(load, timeout_s, "loading the model")
    result["threads"] = worker.state["num_threads"]

    def first(st):
        t0 = time.perf_counter()
        out = st["vm"]["main"](st["inp"]).numpy()
        return (time.perf_counter() - t0) * 1e3, out

    result["first_run_ms"], result["_out"] = worker.call(first, timeout_s, "the first inference")
    # Deadline of later calls: 10 s + 5x what they should take, judged by the first inference
    # (which includes one-off costs, so it is an upper estimate of one run).
    per_run_s = result["first_run_ms"] / 1e3

    def deadline(n_runs: int) -> float:
        return 10.0 + 5.0 * n_runs * per_run_s

    if warmup:
        def warm(st):
            for _ in range(warmup):
                st["vm"]["main"](st["inp"])

        worker.call(warm, deadline(warmup), "the warm-up runs")

    times: list[float] = []
    chunk = max(1, min(repeat, 10, int(5.0 / max(per_run_s, 1e-6)) or 1))
    while len(times) < repeat:
        n = min(chunk, repeat - len(times))

        def timed(st, n=n):
            # The timer (a remote function on a board) is made once and kept: freeing a remote
            # handle is a round trip made while holding Python's GIL, so a board that hangs just
            # then would freeze this process past every deadline (seen 1 in 4 in the hung-board test).
            key = f"timer{n}"
            if key not in st:
                st[key] = st["vm"].time_evaluator("main", st["dev"], number=1, repeat=n)
            return [t * 1e3 for t in st[key](st["inp"]).results]

        times += worker.call(timed, deadline(n), "the timed runs")
        bar.update(len(times))
    result.update(summarize(times))
    result["runs_ms"] = times

    if per_layer:
        def prof(st):
            if remote:
                f = _remote_func(st["session"], vm_profile.FUNC_NAME)
                if f is None:
                    raise MntvmError(
                        f"the RPC server of board {worker.board} has no {vm_profile.FUNC_NAME} for "
                        "--per-layer: serve it with `mntvm rpc server` or `mntvm board start`")
                return str(f(st["vm"].module, st["inp"], per_layer_runs))
            return vm_profile.profile_vm(st["vm"].module, st["inp"], per_layer_runs)

        bar.note(f"timing each kernel over {per_layer_runs} runs")
        # The instrument costs a Python call per VM instruction on the board: allow for it.
        result["_profile"] = worker.call(prof, 30.0 + 10.0 * (per_layer_runs + 1) * per_run_s,
                                         "the per-layer timing")
        result["per_layer_runs"] = per_layer_runs


def _remote_func(sess, name):
    try:
        return sess.get_function(name)
    except Exception:  # noqa: BLE001 - a stock server without it
        return None


def format_benchmark(r: dict) -> str:
    """The human summary of a :func:`benchmark` result (what ``mntvm bench`` prints)."""
    lines = [
        f"{r['target']} on {r['board']}, {r['threads']} threads, {r['repeat']} runs: "
        f"median {r['median_ms']:.3f} ms  mean {r['mean_ms']:.3f}  p90 {r['p90_ms']:.3f}  "
        f"p99 {r['p99_ms']:.3f}  min {r['min_ms']:.3f}  max {r['max_ms']:.3f}  std {r['std_ms']:.3f}",
        f"upload {r['upload_s']:.2f} s, load {r['load_s']:.2f} s, first run {r['first_run_ms']:.1f} ms",
        f"max |output - numpy reference| = {r['max_abs_diff']:.2e}",
    ]
    if r.get("per_layer"):
        lines.append(format_per_layer(r))
    return "\n".join(lines)
