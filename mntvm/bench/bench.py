"""Benchmark a compiled artifact, here or on a board reached through TVM's RPC tracker.

Each inference is timed on its own (``time_evaluator`` with ``number=1``), after ``warmup``
untimed runs; the output is compared with the host's numpy reference for the same weights and
input (``max_abs_diff``). ``per_layer`` times every VM call through the Relax VM's instrument hook
(:mod:`mntvm._vm_profile`, run on the board itself when remote) and maps the kernels to the
model's layers and their mult-adds (:mod:`mntvm.cost`).

Remote work is bounded: every RPC call runs on one worker thread with a deadline (fixed for
upload/load/the first inference, derived from the measured first inference for the timed runs),
so a board that dies or hangs gives a one-line :class:`MntvmError`, never a hang.

Side by side with other runtimes: :func:`compare` times a local artifact and ONNX Runtime (plus
OpenVINO and TFLite+XNNPACK where installed) on the same weights and input, interleaved, one
process per thread count; :func:`format_compare` prints it.

Public entries: :func:`benchmark`, :func:`format_per_layer`, :func:`plot_per_layer`,
:func:`compare`, :func:`format_compare`, :func:`artifact_weights`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mntvm.compile.artifact import Artifact, deterministic_input, load_artifact
from mntvm.core import arch
from mntvm.core.threads import set_threads
from mntvm.core.errors import MntvmError

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
    t = np.asarray(times_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(t)), "mean_ms": float(t.mean()),
        "p90_ms": float(np.percentile(t, 90)), "p99_ms": float(np.percentile(t, 99)),
        "min_ms": float(t.min()), "max_ms": float(t.max()), "std_ms": float(t.std()),
    }


def reference_output(art: Artifact, x: np.ndarray) -> np.ndarray:
    """The host-side numpy reference for the artifact's model and weights."""
    from mntvm.model import reference
    from mntvm.model.network import MobileNetConfig

    return reference.forward(MobileNetConfig.from_dict(art.metadata["model"]), artifact_weights(art), x)


def artifact_weights(art: Artifact, weights=None) -> dict:
    """The weights ``art`` was compiled from, rebuilt and checked against its ``weights_sha256``.

    ``weights`` (an ``.npz``/``.onnx`` path or a dict) is used when given; otherwise the recorded
    source: the seeded random init, or the recorded weights file if it is still there. Anything
    that cannot be reproduced or does not match the sha256 is a one-line :class:`MntvmError`.
    """
    from mntvm.model import weights as W
    from mntvm.model.network import MobileNetConfig

    meta = art.metadata
    cfg = MobileNetConfig.from_dict(meta["model"])
    src = str(meta.get("weights_source", ""))
    if weights is not None:
        origin = "the given weights" if isinstance(weights, Mapping) else f"weights file {weights}"
        w = W.load(cfg, weights)
    elif src.startswith("random(seed="):
        origin = f"the random weights {src}"
        w = W.random_weights(cfg, int(src[len("random(seed="):-1]))
    elif src == "dict" or not src:
        raise MntvmError(f"{art.path} was compiled from in-memory weights that are not recorded: "
                         "pass the same weights (an .npz or .onnx file) to reproduce them")
    elif Path(src).is_file():
        origin = f"weights file {src}"
        w = W.load(cfg, src)
    else:
        raise MntvmError(f"{art.path} was compiled from weights file {src}, which is not here: "
                         "pass that file (--weights) to reproduce its weights")
    got, want = W.digest(w), meta.get("weights_sha256")
    if got != want:
        raise MntvmError(f"{origin} do not match {art.path}'s weights (sha256 {got[:12]}…, the "
                         f"artifact has {str(want)[:12]}…): not the weights it was compiled from")
    return w


class _Progress:
    """A one-line progress bar on stderr (only on a terminal, and never with ``--json``)."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.t0 = total, label, time.time()
        self.enabled = enabled and sys.stderr.isatty()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        frac = done / max(self.total, 1)
        bar = "#" * int(30 * frac)
        eta = (time.time() - self.t0) / max(frac, 1e-9) * (1 - frac)
        sys.stderr.write(f"\r{self.label} [{bar:<30}] {done}/{self.total} eta {eta:5.1f}s")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def note(self, msg: str) -> None:
        if self.enabled:
            sys.stderr.write(f"{self.label}: {msg}\n")
            sys.stderr.flush()


class _Local:
    """Same interface as :class:`mntvm.rpc.RemoteWorker`, for runs in this process (no deadline)."""

    board = "local"
    failed = None

    def __init__(self):
        self.state: dict = {}

    def call(self, fn, timeout, what):  # noqa: ARG002 - same signature as RemoteWorker.call
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
    bar = _Progress(repeat, f"bench {model.get('alpha')}/{model.get('resolution')}", progress)

    if tracker:
        from mntvm.remote import rpc
        from mntvm.remote.board import board_arch

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
    else:
        foreign = arch.foreign_arch(art.metadata)
        if foreign:
            want, here = foreign
            raise MntvmError(f"{art.path} is built for {want} ({art.metadata['target']['name']}) and cannot "
                             f"run on this {here} machine: bench it on a board with --tracker/--key")
        if arch.is_cuda(art.metadata) and not arch.local_cuda():
            raise MntvmError(f"{art.path} is a CUDA artifact ({art.metadata['target']['name']}) and this machine "
                             "has no CUDA GPU: bench it where one is, or on a GPU board with --tracker/--key")
        if threads is None:  # the profile's thread count (the runtime's own default may use fewer)
            threads = int(art.metadata["target"].get("threads") or 0) or None
        set_threads(threads)
        worker = _Local()
        result["board"] = "local"
        result["board_arch"] = arch.local()

    try:
        _run(worker, art, x, result, bar, repeat, warmup, threads, tracker is not None,
             per_layer, per_layer_runs, timeout_s)
    finally:
        worker.close()

    out = result.pop("_out")
    result["max_abs_diff"] = float(np.abs(out - reference_output(art, x)).max())
    result["output_top5"] = [[i, p] for i, p in _top(out)]
    result["model"] = model
    if per_layer:
        from mntvm.model.network import MobileNetConfig

        result["per_layer"] = per_layer_report(json.loads(result.pop("_profile")),
                                               MobileNetConfig.from_dict(model))
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
        from mntvm.remote import vm_profile as _vm_profile

        def prof(st):
            if remote:
                f = _remote_func(st["session"], _vm_profile.FUNC_NAME)
                if f is None:
                    raise MntvmError(
                        f"the RPC server of board {worker.board} has no {_vm_profile.FUNC_NAME} for "
                        "--per-layer: serve it with `mntvm rpc server` or `mntvm board start`")
                return str(f(st["vm"].module, st["inp"], per_layer_runs))
            return _vm_profile.profile_vm(st["vm"].module, st["inp"], per_layer_runs)

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


# ----------------------------------------------------------------------------------------------
# per-layer report


_CONV_WORDS = ("conv", "mntvm_dw", "mntvm_pw")  # TVM default names, and our templates (sched_cpu)
_FC_WORDS = ("matmul", "dense", "linear")
_POOL_WORDS = ("mean", "pool")


def per_layer_report(profile: dict, cfg) -> dict:
    """Per-kernel and per-layer times from :func:`mntvm._vm_profile.profile_vm`'s output.

    Kernels are the VM calls that are not VM builtins (``vm.*``), in call order. Convolution
    kernels (name contains ``conv``) are assigned, in order, to the model's conv layers (stem,
    dw1, pw1, …) and a ``matmul``/``dense``/``linear`` kernel to the FC layer, when their counts
    match; the other kernels (bias, ReLU6, pooling, softmax, layout changes) are assigned to the
    layer they follow (pooling and softmax kernels get pseudo-layers ``pool``/``softmax``; what
    follows the pool belongs to the FC). GFLOP/s = 2 × the layer's mult-adds (:mod:`mntvm.cost`) / kernel time.
    """
    from mntvm.model.cost import cost_report

    layers = cost_report(cfg)["layers"]
    convs = [ly for ly in layers if ly["type"] != "fc"]
    fcs = [ly for ly in layers if ly["type"] == "fc"]
    calls = profile["calls"]
    kern = [(i, c) for i, c in enumerate(calls) if not c[0].startswith("vm.")]
    builtin_s = sum(c[2] for c in calls if c[0].startswith("vm."))

    def is_conv(name):
        return any(w in name for w in _CONV_WORDS)

    def is_fc(name):
        return any(w in name for w in _FC_WORDS)

    n_conv = sum(1 for _, c in kern if is_conv(c[0]))
    n_fc = sum(1 for _, c in kern if is_fc(c[0]) and not is_conv(c[0]))
    mapped = n_conv == len(convs) and n_fc == len(fcs)
    total_s = sum(c[2] for _, c in kern) or 1e-12

    kernels = []
    ci = fi = 0
    current = "input"
    for idx, (name, shapes, mean_s) in kern:
        layer = madds = None
        if mapped and is_conv(name):
            ly = convs[ci]
            ci += 1
        elif mapped and is_fc(name):
            ly = fcs[fi]
            fi += 1
        else:
            ly = None
        if ly is not None:
            layer, madds, current = ly["name"], ly["madds"], ly["name"]
        elif mapped and any(w in name for w in _POOL_WORDS):
            layer = current = "pool"
            kernels.append(_kernel(idx, name, "pool", False, "other", mean_s, total_s, None, shapes))
            current = fcs[0]["name"] if fcs else "pool"  # what follows the pool prepares the FC
            continue
        elif mapped and "softmax" in name:
            current = "softmax"
        kernels.append(_kernel(idx, name, layer if layer else (current if mapped else None),
                               layer is not None, ly["type"] if ly else "other", mean_s, total_s,
                               madds, shapes))

    by_layer = []
    if mapped:
        order = ["input"] + [ly["name"] for ly in layers if ly["type"] != "fc"] + ["pool"] + \
            [ly["name"] for ly in fcs] + ["softmax"]
        info = {ly["name"]: ly for ly in layers}
        acc: dict[str, dict] = {}
        for k in kernels:
            a = acc.setdefault(k["layer"], {"layer": k["layer"], "mean_ms": 0.0, "kernels": 0,
                                            "main_ms": 0.0})
            a["mean_ms"] += k["mean_ms"]
            a["kernels"] += 1
            if k["main"]:
                a["main_ms"] = k["mean_ms"]
        for name in order:
            if name not in acc:
                continue
            a = acc[name]
            ly = info.get(name)
            a["type"] = ly["type"] if ly else "other"
            a["madds"] = ly["madds"] if ly else 0
            a["share"] = a["mean_ms"] / (total_s * 1e3)
            a["gflops"] = 2 * a["madds"] / (a["mean_ms"] / 1e3) / 1e9 if ly and a["mean_ms"] > 0 else None
            a["main_gflops"] = (2 * a["madds"] / (a["main_ms"] / 1e3) / 1e9
                                if ly and a["main_ms"] > 0 else None)
            by_layer.append(a)
    return {
        "runs": profile["runs"],
        "kernel_total_ms": total_s * 1e3,
        "vm_builtin_ms": builtin_s * 1e3,
        "instrumented_run_ms": float(np.median(profile["run_s"])) * 1e3 if profile.get("run_s") else None,
        "mapped_to_layers": mapped,
        "kernels": kernels,
        "layers": by_layer,
    }


def _kernel(idx, name, layer, main, kind, mean_s, total_s, madds, shapes) -> dict:
    return {"index": idx, "name": name, "layer": layer, "main": main, "type": kind,
            "mean_ms": mean_s * 1e3, "share": mean_s / total_s, "madds": madds,
            "gflops": (2 * madds / mean_s / 1e9) if madds and mean_s > 0 else None,
            "arg_shapes": shapes}


def format_per_layer(r: dict, top: int = 12) -> str:
    pl = r["per_layer"]
    rows = [f"per layer ({pl['runs']} instrumented runs; kernels {pl['kernel_total_ms']:.3f} ms + "
            f"VM builtins {pl['vm_builtin_ms']:.3f} ms):"]
    if pl["layers"]:
        rows.append(f"  {'layer':<8} {'type':<10} {'kernels':>7} {'ms':>9} {'share':>7} {'GFLOP/s':>8}")
        for ly in pl["layers"]:
            g = f"{ly['gflops']:.2f}" if ly["gflops"] else "-"
            rows.append(f"  {ly['layer']:<8} {ly['type']:<10} {ly['kernels']:>7} {ly['mean_ms']:>9.4f} "
                        f"{100 * ly['share']:>6.1f}% {g:>8}")
    rows.append("  slowest kernels:")
    rows.append(f"  {'#':>4} {'kernel':<34} {'layer':<8} {'ms':>9} {'share':>7} {'GFLOP/s':>8}")
    for k in sorted(pl["kernels"], key=lambda k: -k["mean_ms"])[:top]:
        g = f"{k['gflops']:.2f}" if k["gflops"] else "-"
        rows.append(f"  {k['index']:>4} {k['name'][:34]:<34} {str(k['layer'] or '-'):<8} "
                    f"{k['mean_ms']:>9.4f} {100 * k['share']:>6.1f}% {g:>8}")
    return "\n".join(rows)


_COLOURS = {"conv": "#7f7f7f", "depthwise": "#1f77b4", "pointwise": "#ff7f0e", "fc": "#2ca02c",
            "other": "#bcbd22"}


def plot_per_layer(r: dict, path: str | Path, max_bars: int = 40) -> Path:
    """Horizontal bar chart of per-layer (or, unmapped, per-kernel) times, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    pl = r.get("per_layer")
    if not pl:
        raise MntvmError("--plot needs the per-layer timing (it runs it itself from the CLI)")
    if pl["layers"]:
        items = [(ly["layer"], ly["mean_ms"], ly["type"], ly["gflops"]) for ly in pl["layers"]]
        what = "layer (its conv/matmul kernel + bias/activation kernels)"
    else:
        ks = sorted(pl["kernels"], key=lambda k: -k["mean_ms"])[:max_bars]
        items = [(f"#{k['index']} {k['name'][:28]}", k["mean_ms"], k["type"], k["gflops"]) for k in ks]
        what = "kernel (slowest first)"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    total = sum(ms for _, ms, _, _ in items)
    fig_h = max(3.5, 0.28 * len(items) + 1.6)
    fig, ax = plt.subplots(figsize=(10, fig_h), dpi=110)
    ys = np.arange(len(items))
    ax.barh(ys, [ms for _, ms, _, _ in items], color=[_COLOURS.get(t, "#999999") for _, _, t, _ in items])
    ax.set_yticks(ys)
    ax.set_yticklabels([n for n, _, _, _ in items], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean time per inference (ms)")
    ax.set_ylabel(what, fontsize=8)
    xmax = max(ms for _, ms, _, _ in items) or 1
    ax.set_xlim(0, xmax * 1.35)
    for y, (_, ms, _, g) in zip(ys, items):
        label = f"{ms:.3f} ms ({100 * ms / total:.1f}%)" + (f", {g:.3g} GFLOP/s" if g else "")
        ax.text(ms + xmax * 0.01, y, label, va="center", fontsize=7)
    m = r.get("model") or {}
    board = r.get("board", "")
    ax.set_title(f"MobileNetV1 {m.get('alpha', '')}/{m.get('resolution', '')} on {r['target']} "
                 f"({board}, {r['threads']} thread{'s' if r['threads'] != 1 else ''}): kernels {pl['kernel_total_ms']:.2f} ms per "
                 f"inference, median end-to-end {r['median_ms']:.2f} ms", fontsize=9)
    used = sorted({t for _, _, t, _ in items})
    ax.legend(handles=[Patch(color=_COLOURS.get(t, "#999999"), label=t) for t in used],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="kind", title_fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# architecture


def _top(out, k=5):
    from mntvm.compile.artifact import top_k

    return top_k(out, k)[0]


# ----------------------------------------------------------------------------------------------
# side by side with other runtimes


PEERS = ("ort", "openvino", "tflite")
_PEER_MODULE = {"ort": "onnxruntime", "openvino": "openvino", "tflite": "ai_edge_litert"}
_PEER_PIP = {"ort": "onnxruntime", "openvino": "openvino", "tflite": "ai-edge-litert"}
_PEER_LABEL = {"ours": "mntvm (TVM)", "ort": "ONNX Runtime", "openvino": "OpenVINO",
               "tflite": "TFLite+XNNPACK"}
COMPARE_TOL = 1e-5  # max |ours - ORT| allowed
COMPARE_KEYS = ("ours_median_ms", "ours_p90_ms", "ort_median_ms", "ort_p90_ms", "ratio", "max_abs_diff")
_WARMUP = 10  # untimed runs of each runtime before the interleaved rounds


def compare(
    artifact_dir: str | Path,
    peers=("ort",),
    threads=(1, 2),
    rounds: int = 20,
    per_round: int = 5,
    weights=None,
    tracker: str | None = None,
    input_seed: int = 0,
    timeout_s: float = 1800.0,
) -> dict:
    """Time a local artifact against ONNX Runtime (and optional peers) on the same weights and input.

    The weights the artifact was compiled from are rebuilt (:func:`artifact_weights`; ``weights``
    is needed when they came from a file that is not at its recorded path) and exported to ONNX
    (and, for TFLite, to a ``.tflite`` flatbuffer). Each thread count runs in a fresh process
    (TVM's pool does not re-pin cleanly when resized in-process): ``TVM_NUM_THREADS``, ORT's
    ``intra_op_num_threads``, OpenVINO's ``INFERENCE_NUM_THREADS`` and TFLite's ``num_threads``
    all set to it. There the outputs are compared first (ours vs ORT must agree within 1e-5, else
    :class:`MntvmError`), then every runtime gets 10 untimed runs and ``rounds`` interleaved
    rounds of ``per_round`` timed runs each (so drift on a shared machine hits all alike).

    ``peers``: any of ``"ort"``, ``"openvino"``, ``"tflite"``; ONNX Runtime is always measured
    (the reference for ``ratio`` and the agreement check). A peer whose module is not installed
    is skipped and listed in ``not_installed``; one that is installed but fails is reported in
    ``peer_errors``.

    Returns ``{"model": tag, "threads": {"1": {...}, ...}, ...}`` where each thread count has
    :data:`COMPARE_KEYS` (``ratio`` = ours median / ORT median, ``max_abs_diff`` = max |ours -
    ORT|) plus, per measured optional peer P, ``P_median_ms``, ``P_p90_ms``, ``ratio_P`` (ours /
    P) and ``P_max_abs_diff`` (vs ours).
    """
    import importlib.util

    from mntvm.model import weights as W
    from mntvm.export.onnx import export_onnx
    from mntvm.model.network import MobileNetConfig

    if tracker:
        raise MntvmError("--compare runs here only (ONNX Runtime and the peers run on this machine): "
                         "drop --tracker/--key, or bench the board without --compare")
    peers = [peers] if isinstance(peers, str) else list(peers)
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise MntvmError(f"unknown peer {unknown[0]!r} for --compare: choose from {', '.join(PEERS)}")
    counts = [threads] if isinstance(threads, int) else list(threads)
    if not counts:
        raise MntvmError("--compare needs at least one thread count")
    for n in counts:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise MntvmError(f"thread counts must be integers >= 1 (got {n!r})")
    counts = list(dict.fromkeys(int(n) for n in counts))
    if rounds < 1 or per_round < 1:
        raise MntvmError(f"rounds and per-round must be >= 1 (got {rounds} and {per_round})")

    art = load_artifact(artifact_dir)
    meta = art.metadata
    tgt = meta["target"]
    family = tgt.get("family")
    if family in ("cuda", "opencl", "vulkan"):
        raise MntvmError(f"{art.path} is a {family} GPU artifact ({tgt.get('name')}): --compare times "
                         "CPU runtimes, so compile for this machine's CPU (e.g. --target x86)")
    foreign = arch.foreign_arch(meta)
    if foreign:
        want, here = foreign
        raise MntvmError(f"{art.path} is built for {want} ({tgt.get('name')}) and cannot run on this "
                         f"{here} machine: --compare runs only here")
    if importlib.util.find_spec("onnxruntime") is None:
        raise MntvmError("--compare needs ONNX Runtime, which is not installed: pip install onnxruntime")
    wanted = ["ort"] + [p for p in dict.fromkeys(peers) if p != "ort"]
    measured = [p for p in wanted if importlib.util.find_spec(_PEER_MODULE[p]) is not None]
    not_installed = [p for p in wanted if p not in measured]

    cfg = MobileNetConfig.from_dict(meta["model"])
    w = artifact_weights(art, weights)
    sched = meta.get("schedules") or {}
    result = {
        "artifact": str(art.path), "model": cfg.tag, "config": cfg.to_dict(), "target": tgt.get("name"),
        "schedules": sched.get("kind"), "tuned_tasks": len(sched.get("tuned") or []),
        "tasks": sched.get("tasks"), "weights_source": meta.get("weights_source"),
        "weights_sha256": meta.get("weights_sha256"), "input_seed": input_seed, "rounds": rounds,
        "per_round": per_round, "warmup": _WARMUP, "peers": measured, "not_installed": not_installed,
        "peer_errors": {}, "versions": {}, "threads": {},
    }
    with tempfile.TemporaryDirectory(prefix="mntvm-compare-") as tmp:
        spec = {"artifact": str(Path(art.path).resolve()), "peers": measured, "rounds": rounds,
                "per_round": per_round, "input_seed": input_seed, "tol": COMPARE_TOL,
                "onnx": str(export_onnx(cfg, w, Path(tmp) / "model.onnx"))}
        if "tflite" in measured:
            try:
                path = Path(tmp) / "model.tflite"
                path.write_bytes(_tflite_model(cfg, W.fold_batchnorm(W.validate(cfg, w))))
                spec["tflite"] = str(path)
            except Exception as e:  # noqa: BLE001 - an installed but incompatible ai_edge_litert
                result["peer_errors"]["tflite"] = _one_line(e)
                measured.remove("tflite")
        for n in counts:
            r = _run_compare_worker({**spec, "threads": n}, timeout_s)
            for p, msg in r.pop("peer_errors").items():
                result["peer_errors"].setdefault(p, msg)
            result["versions"].update(r.pop("versions"))
            result["threads"][str(n)] = r
    result["peers"] = [p for p in measured if p not in result["peer_errors"]]
    return result


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def _run_compare_worker(spec: dict, timeout_s: float) -> dict:
    """Run :func:`_compare_worker` in a fresh process for one thread count and return its result."""
    import signal

    n = spec["threads"]
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "TVM_NUM_THREADS": str(n),
           "PYTHONPATH": os.pathsep.join(x for x in (root, os.environ.get("PYTHONPATH")) if x)}
    code = "import sys; from mntvm.bench.bench import _compare_worker; sys.exit(_compare_worker(sys.argv[1]))"
    try:
        p = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                           env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise MntvmError(f"the comparison at {n} thread{'s' * (n != 1)} took longer than {timeout_s:.0f} s") from None
    last = (p.stdout.strip().splitlines() or [""])[-1]
    try:
        r = json.loads(last)
    except json.JSONDecodeError:
        r = None
    if isinstance(r, dict) and "error" in r:
        raise MntvmError(r["error"])
    if p.returncode == 0 and isinstance(r, dict):
        return r
    if p.returncode < 0:
        sig = signal.Signals(-p.returncode).name
        hint = (": the artifact may use instructions this CPU lacks (compile it with --target x86)"
                if sig == "SIGILL" else "")
        raise MntvmError(f"the comparison process at {n} thread{'s' * (n != 1)} died of {sig}{hint}")
    err = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    raise MntvmError(f"the comparison process at {n} thread{'s' * (n != 1)} failed (exit {p.returncode}): "
                     f"{err[-1].strip() if err else 'no message'}")


def _time(fn, n: int) -> list[float]:
    # One untimed call first (the other runtime's pool may still be spinning down). No sleep
    # between blocks: after a 50 ms pause ONNX Runtime's 2-thread runs took 16.3 ms instead of
    # 7.4 ms on a 2-core Zen4 VM (ours 7.0 either way), which flattered our ratio.
    fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _compare_worker(spec_json: str) -> int:
    """Child-process side of :func:`compare` (one thread count): prints one JSON line."""
    try:
        r = _measure_side_by_side(json.loads(spec_json))
    except MntvmError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 2
    print(json.dumps(r), flush=True)
    return 0


def _measure_side_by_side(spec: dict) -> dict:
    import onnxruntime as ort
    import tvm

    n = spec["threads"]
    art = load_artifact(spec["artifact"])
    x = deterministic_input(art.input_shape, spec["input_seed"])
    set_threads(n)
    vm = art.load_vm()
    xt = tvm.runtime.tensor(x)
    tvm_threads = int(tvm.get_global_func("runtime.NumThreads")())
    versions = {"tvm": tvm.__version__, "onnxruntime": ort.__version__}

    so = ort.SessionOptions()
    so.intra_op_num_threads = n
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(spec["onnx"], so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    # name -> (timed call, output as numpy)
    run = {"ours": (lambda: vm["main"](xt), lambda: vm["main"](xt).numpy()),
           "ort": (lambda: sess.run(None, feed), lambda: sess.run(None, feed)[0])}
    errors: dict[str, str] = {}
    for p in spec["peers"]:
        if p == "ort":
            continue
        try:
            run[p], versions[_PEER_MODULE[p]] = _PEER_SETUP[p](spec, x, n)
        except Exception as e:  # noqa: BLE001 - an installed peer that cannot run the model
            errors[p] = _one_line(e)

    outs = {name: np.asarray(f[1](), dtype=np.float32) for name, f in run.items()}
    diffs = {name: float(np.abs(outs["ours"] - out.reshape(outs["ours"].shape)).max())
             for name, out in outs.items() if name != "ours"}
    if not diffs["ort"] <= spec["tol"]:
        raise MntvmError(f"outputs disagree at {n} thread{'s' * (n != 1)}: max |ours - ONNX Runtime| = "
                         f"{diffs['ort']:.2e} > {spec['tol']:.0e}")
    for _, (fn, _) in run.items():
        _time(fn, _WARMUP)
    times: dict[str, list[float]] = {name: [] for name in run}
    for _ in range(spec["rounds"]):
        for name, (fn, _) in run.items():
            times[name] += _time(fn, spec["per_round"])

    def med(name):
        return float(np.median(times[name]))

    def p90(name):
        return float(np.percentile(times[name], 90))

    r = {"ours_median_ms": med("ours"), "ours_p90_ms": p90("ours"), "ort_median_ms": med("ort"),
         "ort_p90_ms": p90("ort"), "max_abs_diff": diffs["ort"], "tvm_num_threads": tvm_threads}
    r["ratio"] = r["ours_median_ms"] / r["ort_median_ms"]
    for p in run:
        if p in ("ours", "ort"):
            continue
        r[f"{p}_median_ms"], r[f"{p}_p90_ms"] = med(p), p90(p)
        r[f"ratio_{p}"] = r["ours_median_ms"] / r[f"{p}_median_ms"]
        r[f"{p}_max_abs_diff"] = diffs[p]
    r["peer_errors"] = errors
    r["versions"] = versions
    return r


def _setup_openvino(spec: dict, x: np.ndarray, n: int):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(spec["onnx"]), "CPU", {
        "INFERENCE_NUM_THREADS": n, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",  # else bf16 on CPUs that have it
    })
    req = compiled.create_infer_request()
    req.set_input_tensor(ov.Tensor(np.ascontiguousarray(x)))

    def out():
        req.infer()
        return np.array(req.get_output_tensor(0).data)

    return (req.infer, out), ov.__version__


def _setup_tflite(spec: dict, x: np.ndarray, n: int):
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=spec["tflite"], num_threads=n)  # XNNPACK is the default delegate
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    out_index = it.get_output_details()[0]["index"]

    def out():
        it.invoke()
        return it.get_tensor(out_index).copy()

    return (it.invoke, out), getattr(ai_edge_litert, "__version__", "?")


_PEER_SETUP = {"openvino": _setup_openvino, "tflite": _setup_tflite}


def _tflite_model(cfg, folded) -> bytes:
    """Our network (batchnorm folded) as a TFLite flatbuffer, NHWC, built with ai_edge_litert's schema.

    Stride-2 convs get an explicit PAD (TFLite's SAME pads 0/1 there, PyTorch-style 1/1 is ours).
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    from mntvm.model.network import layer_specs

    op_t, opt_t, f32, i32 = fb.BuiltinOperator, fb.BuiltinOptions, fb.TensorType.FLOAT32, fb.TensorType.INT32
    act = fb.ActivationFunctionType.RELU6 if cfg.activation == "relu6" else fb.ActivationFunctionType.RELU
    tensors, buffers, ops, codes, code_index = [], [fb.BufferT()], [], [], {}

    def tensor(name, shape, data=None, dtype=f32):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, [int(d) for d in shape], dtype, 0
        if data is not None:
            b = fb.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    def op(code, ins, outs, opt_type, opts):
        if code not in code_index:
            c = fb.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
            code_index[code] = len(codes)
            codes.append(c)
        o = fb.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = code_index[code], ins, outs
        o.builtinOptionsType, o.builtinOptions = opt_type, opts
        ops.append(o)

    r = cfg.resolution
    x = data = tensor("data", (1, r, r, 3))
    for s in layer_specs(cfg):
        if s.kind == "fc":
            pooled = tensor("pool", (1, s.in_channels))
            o = fb.ReducerOptionsT()
            o.keepDims = False
            op(op_t.MEAN, [x, tensor("pool_axes", (2,), np.array([1, 2], np.int32), i32)], [pooled],
               opt_t.ReducerOptions, o)
            logits = tensor("logits", (1, s.out_channels))
            op(op_t.FULLY_CONNECTED, [pooled, tensor("fc.weight", (s.out_channels, s.in_channels), folded["fc.weight"]),
                                      tensor("fc.bias", (s.out_channels,), folded["fc.bias"])],
               [logits], opt_t.FullyConnectedOptions, fb.FullyConnectedOptionsT())
            prob = tensor("prob", (1, s.out_channels))
            o = fb.SoftmaxOptionsT()
            o.beta = 1.0
            op(op_t.SOFTMAX, [logits], [prob], opt_t.SoftmaxOptions, o)
            x = prob
            continue
        pad, hw = s.padding, s.in_hw
        if pad and (s.stride != 1 or s.kernel != 2 * pad + 1):
            hw = s.in_hw + 2 * pad
            padded = tensor(f"{s.name}_pad", (1, hw, hw, s.in_channels))
            op(op_t.PAD, [x, tensor(f"{s.name}_pads", (4, 2), np.array([[0, 0], [pad, pad], [pad, pad], [0, 0]],
                                                                       np.int32), i32)],
               [padded], opt_t.PadOptions, fb.PadOptionsT())
            x, padding = padded, fb.Padding.VALID
        else:
            padding = fb.Padding.SAME if pad else fb.Padding.VALID
        wt = folded[f"{s.name}.weight"]
        if s.kind == "depthwise":
            o = fb.DepthwiseConv2DOptionsT()
            o.depthMultiplier = 1
            code, opt_type, wt = op_t.DEPTHWISE_CONV_2D, opt_t.DepthwiseConv2DOptions, wt.transpose(1, 2, 3, 0)
        else:
            o = fb.Conv2DOptionsT()
            code, opt_type, wt = op_t.CONV_2D, opt_t.Conv2DOptions, wt.transpose(0, 2, 3, 1)
        o.padding, o.strideW, o.strideH, o.fusedActivationFunction = padding, s.stride, s.stride, act
        o.dilationWFactor = o.dilationHFactor = 1
        y = tensor(f"{s.name}_out", (1, s.out_hw, s.out_hw, s.out_channels))
        op(code, [x, tensor(f"{s.name}.weight", wt.shape, wt), tensor(f"{s.name}.bias", (s.out_channels,),
                                                                     folded[f"{s.name}.bias"])],
           [y], opt_type, o)
        x = y
    sub = fb.SubGraphT()
    sub.tensors, sub.inputs, sub.outputs, sub.operators, sub.name = tensors, [data], [x], ops, "main"
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [sub], buffers
    model.description = f"mntvm {cfg.tag}"
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def format_compare(r: dict) -> str:
    """The side-by-side table of :func:`compare`'s result, one row per runtime and thread count."""
    rows = [f"{r['model']} ({r['target']}, schedules {r['schedules']}, {r['tuned_tasks']}/{r['tasks']} tasks "
            f"tuned): {r['rounds']}x{r['per_round']} interleaved runs each, one process per thread count"]
    rows.append(f"{'threads':>7}  {'runtime':<15} {'median ms':>10} {'p90 ms':>10} {'ours/it':>8} {'max|diff|':>10}")
    for n, t in r["threads"].items():
        rows.append(f"{n:>7}  {_PEER_LABEL['ours']:<15} {t['ours_median_ms']:>10.3f} {t['ours_p90_ms']:>10.3f}")
        for p in r["peers"]:
            if p == "ort":
                med, p90, ratio, diff = t["ort_median_ms"], t["ort_p90_ms"], t["ratio"], t["max_abs_diff"]
            elif f"{p}_median_ms" in t:
                med, p90, ratio, diff = t[f"{p}_median_ms"], t[f"{p}_p90_ms"], t[f"ratio_{p}"], t[f"{p}_max_abs_diff"]
            else:
                continue
            rows.append(f"{'':>7}  {_PEER_LABEL[p]:<15} {med:>10.3f} {p90:>10.3f} {ratio:>8.3f} {diff:>10.1e}")
    rows.append("ours/it = our median / its median (< 1: ours is faster); max|diff| = max |its output - ours|")
    for p, msg in r.get("peer_errors", {}).items():
        rows.append(f"{_PEER_LABEL[p]} is installed but failed: {msg}")
    if r.get("not_installed"):
        rows.append("not installed (skipped): " + ", ".join(
            f"{_PEER_LABEL[p]} (pip install {_PEER_PIP[p]})" for p in r["not_installed"]))
    return "\n".join(rows)
