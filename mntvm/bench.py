"""Benchmark a compiled artifact, here or on a board reached through TVM's RPC tracker.

Each inference is timed on its own (``time_evaluator`` with ``number=1``), after ``warmup``
untimed runs; the output is compared with the host's numpy reference for the same weights and
input (``max_abs_diff``). ``per_layer`` times every VM call through the Relax VM's instrument hook
(:mod:`mntvm._vm_profile`, run on the board itself when remote) and maps the kernels to the
model's layers and their mult-adds (:mod:`mntvm.cost`).

Remote work is bounded: every RPC call runs on one worker thread with a deadline (fixed for
upload/load/the first inference, derived from the measured first inference for the timed runs),
so a board that dies or hangs gives a one-line :class:`MntvmError`, never a hang.

Public entries: :func:`benchmark`, :func:`format_per_layer`, :func:`plot_per_layer`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .artifact import Artifact, deterministic_input, load_artifact, set_threads
from .errors import MntvmError

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
    from . import reference
    from . import weights as W
    from .model import MobileNetConfig

    cfg = MobileNetConfig.from_dict(art.metadata["model"])
    src = art.metadata.get("weights_source", "")
    if src.startswith("random(seed="):
        w = W.random_weights(cfg, int(src[len("random(seed="):-1]))
    else:
        w = W.load(cfg, src)
    if W.digest(w) != art.metadata["weights_sha256"]:
        raise MntvmError(f"{art.path}: weights {src} no longer match the artifact's sha256")
    return reference.forward(cfg, w, x)


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
        from . import rpc
        from .board import board_arch

        session = rpc.open_session(tracker, key, wait_s=wait_s)
        if on_board is not None:
            on_board(session.board)
        worker = rpc.RemoteWorker(session.board)
        worker.state["session"] = session.remote  # owned by the worker from now on
        result["board"] = session.board
        result["key"] = key
        del session
        have = worker.call(lambda st: board_arch(st["session"]), 30, "the architecture query")
        want = artifact_arch(art.metadata)
        result["board_arch"] = have
        if not _same_arch(want, have):
            worker.close()
            raise MntvmError(f"{art.path} is built for {want} ({art.metadata['target']['name']}), "
                             f"but board {result['board']} under key '{key}' is {have}: "
                             "nothing was uploaded")
    else:
        here, want = _local_arch(), artifact_arch(art.metadata)
        if not _same_arch(want, here):
            raise MntvmError(f"{art.path} is built for {want} ({art.metadata['target']['name']}) and cannot "
                             f"run on this {here} machine: bench it on a board with --tracker/--key")
        if threads is None:  # the profile's thread count (the runtime's own default may use fewer)
            threads = int(art.metadata["target"].get("threads") or 0) or None
        set_threads(threads)
        worker = _Local()
        result["board"] = "local"
        result["board_arch"] = here

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
        from .model import MobileNetConfig

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
            st["dev"] = sess.cpu()
            lib = sess.load_module(lib_path.name)
            if threads:
                sess.get_function("runtime.config_threadpool")(1, threads)
            st["num_threads"] = int(sess.get_function("runtime.NumThreads")())
        else:
            st["dev"] = tvm.cpu()
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
            timer = st["vm"].time_evaluator("main", st["dev"], number=1, repeat=n)
            return [t * 1e3 for t in timer(st["inp"]).results]

        times += worker.call(timed, deadline(n), "the timed runs")
        bar.update(len(times))
    result.update(summarize(times))
    result["runs_ms"] = times

    if per_layer:
        from . import _vm_profile

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
    from .cost import cost_report

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


def artifact_arch(meta: dict) -> str:
    """CPU architecture an artifact's host code is built for, from its target's triple."""
    tgt = meta["target"]
    t = tgt.get("tvm_target") or tgt.get("target") or tgt.get("target_dict") or {}
    host = t.get("host") if isinstance(t.get("host"), dict) else None
    triple = (host or t).get("mtriple") or ""
    return triple.split("-", 1)[0] if triple else "x86_64"


def _same_arch(a: str, b: str) -> bool:
    canon = {"arm64": "aarch64", "amd64": "x86_64", "armv7l": "armv7", "armv7a": "armv7", "arm": "armv7"}
    return canon.get(a, a) == canon.get(b, b)


def _top(out, k=5):
    from .artifact import top_k

    return top_k(out, k)[0]


def _local_arch() -> str:
    import platform

    return platform.machine()
