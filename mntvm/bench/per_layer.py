"""The per-layer report of a benchmark: VM-call timings mapped to the model's layers, as text and as a plot.

The timings come from :func:`mntvm.remote.vm_profile.profile_vm` (run here or on the board by
:func:`mntvm.bench.benchmark` with ``per_layer``); the layers and their mult-adds from
:func:`mntvm.model.cost.cost_report`.

ONNX Runtime's own per-node profile of the same model maps onto the same layers with
:func:`ort_per_layer` (``benchmarks/layers_in_network.py`` puts the two side by side).

Public entries: :func:`per_layer_report`, :func:`format_per_layer`, :func:`plot_per_layer`,
:func:`ort_per_layer`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mntvm.core.errors import MntvmError
from mntvm.model.cost import cost_report

_CONV_WORDS = ("conv", "mntvm_dw", "mntvm_pw", "mntvm_stem")  # TVM default names, our templates (fp32 and int8)
_FUSED_WORD = "mntvm_dwpw"  # one kernel for a depthwise conv and the pointwise conv after it
_FC_WORDS = ("matmul", "dense", "linear")
_POOL_WORDS = ("mean", "pool")


def per_layer_report(profile: dict, cfg, peak_gflops: float | None = None, dtype: str = "float32",
                     pointwise_peak: float | None = None, peak_kind: str | None = None) -> dict:
    """Per-kernel and per-layer times from :func:`mntvm.remote.vm_profile.profile_vm`'s output.

    Kernels are the VM calls that are not VM builtins (``vm.*``), in call order. Convolution
    kernels (name contains ``conv``) are assigned, in order, to the model's conv layers (stem,
    dw1, pw1, …; a fused ``mntvm_dwpw`` kernel to two, dw<i> and pw<i>, reported as one layer
    ``dw<i>+pw<i>`` of type ``separable``) and a ``matmul``/``dense``/``linear`` kernel to the FC
    layer, when their counts match; the other kernels (bias, ReLU6, pooling, softmax, layout changes) are assigned to the
    layer they follow (pooling and softmax kernels get pseudo-layers ``pool``/``softmax``; what
    follows the pool belongs to the FC). GFLOP/s = 2 × the layer's mult-adds (:mod:`mntvm.model.cost`) / kernel time;
    ``peak_gflops`` (the FMA peak measured at the artifact's vector width and thread count, see
    :func:`mntvm.core.machine.measure_peak`) adds each layer's ``pct_peak``. For an int8 artifact
    (``dtype``) the same numbers are GOP/s (integer multiply-adds x 2) against the int8 dot-product
    peak (``peak_kind``: the instruction it was measured with, the build's dot: "vnni", "avx2");
    ``pointwise_peak`` (an AMX build: the AMX-INT8 peak) is the pointwise layers' instead.
    """
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

    def n_layers(name):  # conv layers a kernel computes
        return 2 if _FUSED_WORD in name else 1

    n_conv = sum(n_layers(c[0]) for _, c in kern if is_conv(c[0]))
    n_fc = sum(1 for _, c in kern if is_fc(c[0]) and not is_conv(c[0]))
    mapped = n_conv == len(convs) and n_fc == len(fcs)
    total_s = sum(c[2] for _, c in kern) or 1e-12

    kernels = []
    info = {}  # the layers kernels were mapped to (a fused dw<i>+pw<i> as one), in call order
    ci = fi = 0
    current = "input"
    for idx, (name, shapes, mean_s) in kern:
        layer = madds = None
        if mapped and is_conv(name):
            ly = convs[ci]
            if n_layers(name) == 2:
                dw, pw = convs[ci], convs[ci + 1]
                ly = {"name": f"{dw['name']}+{pw['name']}", "type": "separable", "madds": dw["madds"] + pw["madds"]}
            ci += n_layers(name)
        elif mapped and is_fc(name):
            ly = fcs[fi]
            fi += 1
        else:
            ly = None
        if ly is not None:
            layer, madds, current = ly["name"], ly["madds"], ly["name"]
            info[layer] = ly
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
        order = (["input"] + [n for n, ly in info.items() if ly["type"] != "fc"] + ["pool"]
                 + [ly["name"] for ly in fcs] + ["softmax"])
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
            peak = pointwise_peak if pointwise_peak and a["type"] == "pointwise" else peak_gflops
            a["pct_peak"] = 100 * a["gflops"] / peak if a["gflops"] and peak else None
            by_layer.append(a)
    return {
        "runs": profile["runs"],
        "kernel_total_ms": total_s * 1e3,
        "vm_builtin_ms": builtin_s * 1e3,
        "instrumented_run_ms": float(np.median(profile["run_s"])) * 1e3 if profile.get("run_s") else None,
        "mapped_to_layers": mapped,
        "kernels": kernels,
        "layers": by_layer,
        "peak_gflops": peak_gflops,
        "peak_kind": peak_kind,
        "pointwise_peak_gflops": pointwise_peak,
        "dtype": dtype,
    }


# our ONNX export names each node after its layer (mntvm.export.onnx); ORT keeps the first node's name
# for what it fuses and adds suffixes ("pw3_act_nchwc": pw3's Conv + its Clip in NCHWc layout)
_ORT_NODE = re.compile(r"(stem|dw\d+|pw\d+|pool|fc|softmax)(?=_|$)")
ORT_OTHER = "other"  # the nodes of no layer: layout changes (ReorderInput/Output), flatten


def ort_per_layer(events: list, layers: list[str]) -> dict:
    """ONNX Runtime's per-node times (the JSON events ``SessionOptions.enable_profiling`` writes)
    for a model from :func:`mntvm.export.export_onnx`, summed onto ``layers`` (the names of
    :func:`per_layer_report`'s layers: ``stem``, ``dw1+pw1`` or ``dw1`` and ``pw1``, ``pool``,
    ``fc``, ``softmax``; others, such as ``input``, get no node). Each node's time is its median
    over the profiled runs; nodes of no layer go to :data:`ORT_OTHER`. Returns ``{"layers":
    {layer: ms}, "runs": runs profiled}``; a layer of ``layers`` that no node maps to is an error
    (the export's names and these no longer agree)."""
    part_of = {part: name for name in layers for part in name.split("+")}
    per_node: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            per_node.setdefault(e["name"][:-len("_kernel_time")], []).append(e["dur"] / 1e3)
    out: dict[str, float] = {}
    for node, durs in per_node.items():
        m = _ORT_NODE.match(node)
        layer = part_of.get(m.group(1), ORT_OTHER) if m else ORT_OTHER
        out[layer] = out.get(layer, 0.0) + float(np.median(durs))
    missing = [name for name in layers if _ORT_NODE.fullmatch(name.split("+")[0]) and name not in out]
    if missing:
        raise MntvmError(f"ONNX Runtime's profile has no node for layer(s) {', '.join(missing)}")
    return {"layers": out, "runs": max((len(d) for d in per_node.values()), default=0)}


def _kernel(idx, name, layer, main, kind, mean_s, total_s, madds, shapes) -> dict:
    return {"index": idx, "name": name, "layer": layer, "main": main, "type": kind,
            "mean_ms": mean_s * 1e3, "share": mean_s / total_s, "madds": madds,
            "gflops": (2 * madds / mean_s / 1e9) if madds and mean_s > 0 else None,
            "arg_shapes": shapes}


_PEAK_NAMES = {"vnni": "AVX512-VNNI vpdpbusd", "avx2": "AVX2 vpmaddwd"}  # an int8 build's dot -> words


def format_per_layer(r: dict, top: int = 12) -> str:
    pl = r["per_layer"]
    int8 = pl.get("dtype") == "int8"
    unit = "GOP/s" if int8 else "GFLOP/s"
    rows = [f"per layer ({pl['runs']} instrumented runs; kernels {pl['kernel_total_ms']:.3f} ms + "
            f"VM builtins {pl['vm_builtin_ms']:.3f} ms):"]
    if pl.get("peak_gflops"):
        what = (f"int8 multiply-add peak ({_PEAK_NAMES.get(pl.get('peak_kind'), 'int8')})" if int8
                else "FMA peak")
        rows.append(f"  measured {what} here at the artifact's vector width: {pl['peak_gflops']:.1f} {unit}")
    if pl.get("pointwise_peak_gflops"):
        rows.append(f"  pointwise layers on AMX: %peak of the measured AMX-INT8 (tdpbusd) peak, "
                    f"{pl['pointwise_peak_gflops']:.1f} {unit}")
    if pl["layers"]:
        rows.append(f"  {'layer':<10} {'type':<10} {'kernels':>7} {'ms':>9} {'share':>7} {unit:>8} {'%peak':>6}")
        for ly in pl["layers"]:
            g = f"{ly['gflops']:.2f}" if ly["gflops"] else "-"
            pk = f"{ly['pct_peak']:.0f}%" if ly.get("pct_peak") else "-"
            rows.append(f"  {ly['layer']:<10} {ly['type']:<10} {ly['kernels']:>7} {ly['mean_ms']:>9.4f} "
                        f"{100 * ly['share']:>6.1f}% {g:>8} {pk:>6}")
    rows.append("  slowest kernels:")
    rows.append(f"  {'#':>4} {'kernel':<34} {'layer':<10} {'ms':>9} {'share':>7} {unit:>8}")
    for k in sorted(pl["kernels"], key=lambda k: -k["mean_ms"])[:top]:
        g = f"{k['gflops']:.2f}" if k["gflops"] else "-"
        rows.append(f"  {k['index']:>4} {k['name'][:34]:<34} {str(k['layer'] or '-'):<10} "
                    f"{k['mean_ms']:>9.4f} {100 * k['share']:>6.1f}% {g:>8}")
    return "\n".join(rows)


_COLOURS = {"conv": "#7f7f7f", "depthwise": "#1f77b4", "pointwise": "#ff7f0e", "separable": "#d62728", "fc": "#2ca02c",
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
