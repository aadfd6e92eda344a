"""The MobileNets paper's cost model, computed from the same layer table that builds the Relax graph.

- standard k×k conv, h×w×d_i → h×w×d_j (h, w output size): h·w·d_i·d_j·k² mult-adds, d_i·d_j·k² params
- depthwise k×k: h·w·d_i·k² mult-adds; pointwise 1×1: h·w·d_i·d_j
- a separable block therefore costs h·w·d_i·(k² + d_j); relative to the standard conv it replaces
  that is a factor 1/d_j + 1/k²
- FC: d_i·classes mult-adds and params.

Params follow the paper's convention (conv and FC weights; biases and batchnorm not counted);
``stored_params`` is what the compiled model actually stores after folding batchnorm (weights +
one bias per conv output channel + the FC bias). ``weight_bytes`` is what that takes per dtype:
float32 4 bytes a value; int8 1 byte a weight plus, per output channel, an int32 bias and a
float32 scale (symmetric per-channel quantization, :mod:`mntvm.model.quantize`).

Public entry: :func:`cost_report`.
"""
from __future__ import annotations

from mntvm.model.network import MobileNetConfig, layer_specs


def cost_report(cfg: MobileNetConfig) -> dict:
    """Per-layer and total cost of ``cfg``, plus the standard-conv network it is compared with."""
    specs = layer_specs(cfg)
    layers = []
    for s in specs:
        k2 = s.kernel * s.kernel
        hw = s.out_hw * s.out_hw
        if s.kind == "depthwise":
            madds, params = hw * s.in_channels * k2, s.in_channels * k2
        elif s.kind == "fc":
            madds = params = s.in_channels * s.out_channels
        else:  # stem conv and pointwise
            madds, params = hw * s.in_channels * s.out_channels * k2, s.in_channels * s.out_channels * k2
        layers.append({
            "name": s.name, "type": s.kind,
            "input_shape": [cfg.batch, s.in_channels, s.in_hw, s.in_hw] if s.kind != "fc" else [cfg.batch, s.in_channels],
            "output_shape": [cfg.batch, s.out_channels, s.out_hw, s.out_hw] if s.kind != "fc" else [cfg.batch, s.out_channels],
            "madds": madds * cfg.batch, "params": params,
            "stored_params": params + s.out_channels,
        })

    blocks = []
    std_madds = std_params = 0
    for s in specs:
        if s.kind in ("conv", "fc"):
            layer = next(l for l in layers if l["name"] == s.name)
            std_madds += layer["madds"]
            std_params += layer["params"]
        elif s.kind == "depthwise":
            pw = specs[specs.index(s) + 1]
            k2, hw, di, dj = s.kernel * s.kernel, s.out_hw * s.out_hw, s.in_channels, pw.out_channels
            sep = hw * di * (k2 + dj)
            std = hw * di * dj * k2
            std_madds += std * cfg.batch
            std_params += di * dj * k2
            blocks.append({
                "block": int(s.name[2:]), "depthwise": s.name, "pointwise": pw.name,
                "madds": sep * cfg.batch, "standard_conv_madds": std * cfg.batch,
                "ratio": sep / std, "paper_ratio": 1 / dj + 1 / k2,
            })

    return {
        "alpha": cfg.alpha, "resolution": cfg.resolution, "num_classes": cfg.num_classes, "batch": cfg.batch,
        "total_madds": sum(l["madds"] for l in layers),
        "total_params": sum(l["params"] for l in layers),
        "stored_params": sum(l["stored_params"] for l in layers),
        "weight_bytes": {
            "float32": 4 * sum(l["stored_params"] for l in layers),
            "int8": sum(l["params"] + 8 * l["output_shape"][1] for l in layers),
        },
        "layers": layers,
        "blocks": blocks,
        "standard_conv": {"total_madds": std_madds, "total_params": std_params},
    }


def count_relax(mod) -> dict[str, int]:
    """Mult-adds and weight elements read off a Relax module's conv2d/linear/matmul calls.

    An independent check of :func:`cost_report`: it walks the graph that will be compiled.
    """
    import tvm
    from tvm import relax

    totals = {"madds": 0, "params": 0}

    def shape(expr):
        return [int(d) for d in expr.ty.shape]

    def visit(expr):
        if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
            return
        name = expr.op.name
        if name == "relax.nn.conv2d":
            out, w = shape(expr), shape(expr.args[1])
            totals["madds"] += out[0] * out[1] * out[2] * out[3] * w[1] * w[2] * w[3]
            totals["params"] += w[0] * w[1] * w[2] * w[3]
        elif name in ("relax.linear", "relax.matmul"):
            out, w = shape(expr), shape(expr.args[1])
            totals["madds"] += out[0] * out[1] * w[-1 if name == "relax.linear" else 0]
            totals["params"] += w[0] * w[1]

    relax.analysis.post_order_visit(mod["main"], visit)
    return totals


def format_table(report: dict) -> str:
    """Human-readable table of :func:`cost_report`."""
    rows = [f"MobileNetV1 alpha={report['alpha']:g} resolution={report['resolution']} "
            f"classes={report['num_classes']} batch={report['batch']}", ""]
    hdr = f"{'layer':<6} {'type':<10} {'input':>20} {'output':>20} {'mult-adds':>13} {'params':>10}"
    rows += [hdr, "-" * len(hdr)]
    for l in report["layers"]:
        rows.append(f"{l['name']:<6} {l['type']:<10} {'x'.join(map(str, l['input_shape'])):>20} "
                    f"{'x'.join(map(str, l['output_shape'])):>20} {l['madds']:>13,} {l['params']:>10,}")
    rows.append("-" * len(hdr))
    rows.append(f"{'total':<6} {'':<10} {'':>20} {'':>20} {report['total_madds']:>13,} {report['total_params']:>10,}")
    rows.append("")
    rows.append(f"Total: {report['total_madds'] / 1e6:.1f}M mult-adds, {report['total_params'] / 1e6:.2f}M params "
                f"(paper convention: conv/FC weights); compiled model stores {report['stored_params']:,} values "
                "(batchnorm folded into biases)")
    wb = report["weight_bytes"]
    rows.append(f"Weights: {wb['float32'] / 2**20:.2f} MiB in float32, {wb['int8'] / 2**20:.2f} MiB in int8 "
                f"(int8 weights + an int32 bias and a float32 scale per output channel)")
    std = report["standard_conv"]
    rows.append(f"Same network with standard 3x3 convs: {std['total_madds'] / 1e6:.1f}M mult-adds, "
                f"{std['total_params'] / 1e6:.2f}M params "
                f"({std['total_madds'] / report['total_madds']:.2f}x the mult-adds)")
    rows.append("")
    hdr = f"{'block':>5} {'separable':>13} {'standard conv':>15} {'ratio':>8} {'1/d_j+1/k^2':>12}"
    rows += [hdr, "-" * len(hdr)]
    for b in report["blocks"]:
        rows.append(f"{b['block']:>5} {b['madds']:>13,} {b['standard_conv_madds']:>15,} "
                    f"{b['ratio']:>8.4f} {b['paper_ratio']:>12.4f}")
    return "\n".join(rows)
