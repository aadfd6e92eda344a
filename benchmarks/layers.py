"""Per-layer speed of the CPU templates (mntvm.templates) vs measured FMA peak and ONNX Runtime.

Every kernel of the lowered MobileNetV1 (stem, 13 fused depthwise+pointwise, pool, FC, softmax,
...; with ``--no-fuse`` 13 depthwise and 13 pointwise) is compiled on its own at the template's
default knobs and timed with random inputs; the corresponding single-op ONNX models (Conv + bias
+ Clip; for a fused kernel its two convs, times added) are timed with ONNX Runtime at the same
thread count. Whole-network numbers (TVM vs ORT, 1 and 2 threads) are printed at the end.

    python benchmarks/layers.py [--alpha 1.0] [--resolution 224] [--threads 1,2] [--no-ort]
        [--target x86] [--mcpu CPU] [--vector-bits 256|512] [--no-fuse]
    python benchmarks/layers.py --tune mntvm_pw4 --trials 16   # tiny tuning run on one task

The code is for a target profile (``x86``: this machine, or the CPU named by ``--mcpu``). ``--tune``
tunes one task the way ``mntvm tune`` does (same space, builder, network-like runner on the first
``--threads`` count, database format) into ``--work-dir`` and times it against the defaults.

Peak: an AVX-512 / AVX2 FMA loop compiled with the system C compiler (gcc) at import; when no
compiler is found the peak column is left out.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tvm  # noqa: E402
from tvm import relax  # noqa: E402

from benchmarks.common import kernel_calls, model_options  # noqa: E402
from mntvm.core.threads import set_threads  # noqa: E402
from mntvm.targets.profiles import get_profile  # noqa: E402
from mntvm.templates import prefetch  # noqa: E402
from mntvm.templates.defaults import apply_default_schedules  # noqa: E402
from mntvm.templates.lowering import lower  # noqa: E402
from mntvm.templates.registry import (RULE_DENSE, RULE_DW, RULE_DWPW, RULE_PW, RULE_STEM,  # noqa: E402
                                      all_blocks, rule_of, tunable_tasks)
from mntvm.bench import measure_peak  # noqa: E402
from mntvm.tuning import open_schedules, tune_funcs  # noqa: E402



def _flops_of(func: tvm.tirx.PrimFunc) -> tuple[str, float]:
    """(kind, flops) of one of our PrimFuncs from its buffer shapes."""
    rules = [r for r in map(rule_of, all_blocks(func)) if r]
    params = [[int(x) for x in p.shape] for p in func.params]
    if not rules:
        return "other", 0.0
    r = rules[0]
    out = params[-1]
    if r == RULE_PW:
        n, ob, p, v = out
        ib = params[0][1]
        return "pw", 2.0 * n * ob * v * p * ib * v
    if r == RULE_DW:
        n, cb, p, v = out
        _, kh, kw, _ = params[1]
        return "dw", 2.0 * n * cb * v * p * kh * kw
    if r == RULE_DWPW:  # data, dw weight, dw bias, pw weight, pw bias
        n, ob, p, v = out
        cb, kh, kw, _ = params[1]
        return "dwpw", 2.0 * n * cb * v * p * kh * kw + 2.0 * n * ob * v * p * cb * v
    if r == RULE_STEM:
        n, ob, p, v = out
        _, c, kh, kw, _ = params[1]
        return "stem", 2.0 * n * ob * v * p * c * kh * kw
    if r == RULE_DENSE:
        nb, k, v = params[1]
        return "fc", 2.0 * out[0] * nb * v * k
    return r.replace("mntvm_", ""), 0.0


def time_kernel(func, target, dev, number=10, repeat=7):
    rt = prefetch.compile_cpu(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target).mod
    args = []
    for p in func.params:
        b = p
        args.append(tvm.runtime.tensor(np.random.rand(*[int(x) for x in b.shape]).astype(b.dtype), dev))
    f = rt.time_evaluator("main", dev, number=number, repeat=repeat, min_repeat_ms=10)
    return float(np.min(f(*args).results))


# ---------------------------------------------------------------------------------------------
# ONNX Runtime single layers and whole network
# ---------------------------------------------------------------------------------------------
def _ort_session(model, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort_time(sess, feeds, min_s=0.3, repeat=7):
    for _ in range(3):
        sess.run(None, feeds)
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            sess.run(None, feeds)
        if time.perf_counter() - t0 > 0.02:
            break
        n *= 2
    best = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            sess.run(None, feeds)
        best.append((time.perf_counter() - t0) / n)
    return float(np.min(best)), float(np.median(best))


def ort_layer_model(spec, act="relu6"):
    """Single Conv(+bias)+Clip ONNX model for one LayerSpec (NCHW)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(0)
    if spec.kind == "fc":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, spec.in_channels])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, spec.out_channels])
        w = numpy_helper.from_array(rng.rand(spec.in_channels, spec.out_channels).astype("float32"), "w")
        b = numpy_helper.from_array(rng.rand(spec.out_channels).astype("float32"), "b")
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"])
        g = helper.make_graph([node], "fc", [x], [y], [w, b])
        return onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), (1, spec.in_channels)
    cin, cout, k = spec.in_channels, spec.out_channels, spec.kernel
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, spec.in_hw, spec.in_hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(rng.rand(*spec.weight_shape).astype("float32") * 0.1, "w")
    b = numpy_helper.from_array(rng.rand(cout).astype("float32"), "b")
    lo = numpy_helper.from_array(np.array(0.0, "float32"), "lo")
    hi = numpy_helper.from_array(np.array(6.0, "float32"), "hi")
    p = spec.padding
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], strides=[spec.stride] * 2,
                            pads=[p] * 4, group=spec.groups)
    clip = helper.make_node("Clip", ["c", "lo", "hi"], ["y"])
    g = helper.make_graph([conv, clip], spec.name, [x], [y], [w, b, lo, hi])
    return onnx.helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), (1, cin, spec.in_hw, spec.in_hw)


# ---------------------------------------------------------------------------------------------
def build_network(cfg, profile, seed=0, fuse_dw=None):
    """(weights, lowered module, module at the templates' default knobs) for ``profile``."""
    from mntvm.model.weights import random_weights

    w = random_weights(cfg, seed)
    low = lower(cfg, w, profile, fuse_dw=fuse_dw)
    sched = apply_default_schedules(low, profile.tvm_target(), profile.vector_bits)
    return w, low, sched


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_options(ap)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--target", default="x86", help="target profile (default: x86, this machine)")
    ap.add_argument("--mcpu", default=None, help="the CPU to generate code for (default: the profile's)")
    ap.add_argument("--vector-bits", type=int, default=None, choices=(128, 256, 512),
                    help="channel block width (default: the profile's, from the CPU)")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--no-fuse", action="store_true", help="depthwise and pointwise convs as separate kernels")
    ap.add_argument("--no-layers", action="store_true")
    ap.add_argument("--tune", default=None, help="tune one task (e.g. mntvm_pw4) as `mntvm tune` does")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--work-dir", default=None, help="schedules database folder for --tune (default: a temp one)")
    args = ap.parse_args(argv)

    from mntvm.model.network import MobileNetConfig, layer_specs
    from mntvm.model import reference

    cfg = MobileNetConfig(alpha=args.alpha, resolution=args.resolution)
    threads = [int(t) for t in args.threads.split(",")]
    profile = get_profile(args.target, mcpu=args.mcpu)
    if args.vector_bits:
        profile = dataclasses.replace(profile, vector_bits=args.vector_bits)
    target = profile.tvm_target()
    dev = tvm.cpu()
    w, low, sched = build_network(cfg, profile, fuse_dw=False if args.no_fuse else None)

    if args.tune:
        return tune_one(cfg, low, args.tune, profile, args.trials, args.work_dir, dev, threads[0])

    conv_specs = [s for s in layer_specs(cfg)]  # execution order: stem, dw1, pw1, ..., fc
    calls = kernel_calls(sched)
    # map our kernels to LayerSpecs in order (stem/dw/pw/fc one kernel each, a fused dwpw two)
    names, parts, i = {}, {}, 0
    for c in calls:
        kind = _flops_of(c[1])[0]
        if kind in ("stem", "dw", "pw", "fc", "dwpw"):
            n = 2 if kind == "dwpw" else 1
            parts[id(c)] = conv_specs[i:i + n]
            names[id(c)] = "+".join(s.name for s in parts[id(c)])
            i += n

    peaks = {t: measure_peak(t, profile.vector_bits) for t in threads}
    ort_ok = not args.no_ort
    if ort_ok:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            ort_ok = False

    results = {}
    if not args.no_layers:
        for t in threads:
            set_threads(t)
            for c in calls:
                results[(id(c), t)] = time_kernel(c[1], target, dev)
    ort_layers = {}
    if ort_ok and not args.no_layers:
        for s in conv_specs:
            model, shape = ort_layer_model(s, cfg.activation)
            for t in threads:
                sess = _ort_session(model, t)
                ort_layers[(s.name, t)] = _ort_time(sess, {"x": np.random.rand(*shape).astype("float32")})[0]

    if not args.no_layers:
        hdr = f"{'layer':<10}{'kernel':<14}{'MFLOP':>8}"
        for t in threads:
            hdr += f" | {t}T us{'':>2}{'GFLOP/s':>8}{'%peak':>7}{'ORT us':>9}{'ORT/us':>7}"
        print(hdr)
        tot = {t: 0.0 for t in threads}
        tot_ort = {t: 0.0 for t in threads}
        for c in calls:
            kind, fl = _flops_of(c[1])
            lname = names.get(id(c), kind)
            line = f"{lname:<10}{c[0]:<14}{fl / 1e6:>8.2f}"
            for t in threads:
                tt = results[(id(c), t)]
                tot[t] += tt
                gf = fl / tt / 1e9 if fl else 0.0
                pk = peaks[t]
                pct = f"{100 * gf / pk:>6.0f}%" if pk and fl else f"{'':>7}"
                ps = parts.get(id(c), [])
                o = sum(ort_layers[(s.name, t)] for s in ps) if ps and all((s.name, t) in ort_layers for s in ps) else None
                if o:
                    tot_ort[t] += o
                line += f" | {tt * 1e6:>8.1f}{gf:>8.1f}{pct}" + (f"{o * 1e6:>9.1f}{o / tt:>7.2f}" if o else f"{'':>16}")
            print(line)
        line = f"{'sum':<10}{'':<14}{'':>8}"
        for t in threads:
            line += f" | {tot[t] * 1e6:>8.1f}{'':>15}" + (f"{tot_ort[t] * 1e6:>9.1f}{tot_ort[t] / tot[t]:>7.2f}" if ort_ok else "")
        print(line)
        print("peak GFLOP/s:", {t: round(p, 1) if p else None for t, p in peaks.items()})

    # whole network
    ex = prefetch.compile_cpu(sched, target)
    vm = relax.VirtualMachine(ex, dev)
    x = np.random.RandomState(1).rand(*cfg.input_shape).astype("float32")
    xt = tvm.runtime.tensor(x, dev)
    out = vm["main"](xt).numpy()
    ref = reference.forward(cfg, w, x)
    print(f"network max abs diff vs numpy float64 reference: {np.abs(out - ref).max():.2e}")
    ft = vm.time_evaluator("main", dev, number=10, repeat=15)
    sess = {}
    if ort_ok:
        from mntvm.export.onnx import build_onnx

        onnx_model = build_onnx(cfg, w)
        for t in threads:
            sess[t] = _ort_session(onnx_model, t)
        o = sess[threads[0]].run(None, {sess[threads[0]].get_inputs()[0].name: x})[0]
        print(f"ORT max abs diff vs reference: {np.abs(o - ref).max():.2e}")
    for rnd in range(2):
        for t in threads:
            set_threads(t)
            r = ft(xt).results
            line = f"network {t}T: TVM median {np.median(r) * 1e3:.2f} ms (min {np.min(r) * 1e3:.2f})"
            if ort_ok:
                name = sess[t].get_inputs()[0].name
                mn, med = _ort_time(sess[t], {name: x}, repeat=15)
                line += f" | ORT median {med * 1e3:.2f} ms (min {mn * 1e3:.2f}) | ORT/TVM {med / np.median(r):.2f}"
            print(line, flush=True)
    return 0


def tune_one(cfg, low, name, profile, trials, work_dir, dev, threads):
    """Tune one task of ``low`` as ``mntvm tune`` does (:func:`mntvm.tuning.tune_funcs`) into the
    database ``work_dir``, then time it at the database's best against the templates' defaults."""
    tasks = tunable_tasks(low)
    if name not in tasks:
        raise SystemExit(f"--tune: no task {name!r}; tasks: {', '.join(sorted(tasks))}")
    target = profile.tvm_target()
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="mntvm_tune_"))
    summary = tune_funcs({name: tasks[name]}, profile, work_dir, trials, label=cfg.tag, threads=threads)
    print(f"tuned {name}: {summary['tasks'][name]['trials']} trials ({summary['trials_run']} new) in "
          f"{summary['seconds']:.0f}s on {threads} thread(s), database in {work_dir}")
    tuned, covered = open_schedules(work_dir, profile).apply(low, target)
    tuned = apply_default_schedules(tuned, target, profile.vector_bits)
    default = apply_default_schedules(low, target, profile.vector_bits)
    set_threads(threads)  # timed on the thread count it was tuned on
    t_def = time_kernel(default[name], target, dev)
    t_tun = time_kernel(tuned[name], target, dev)
    kind, fl = _flops_of(tasks[name])
    print(f"{name}: default {t_def * 1e6:.1f} us ({fl / t_def / 1e9:.1f} GFLOP/s), "
          f"tuned {t_tun * 1e6:.1f} us ({fl / t_tun / 1e9:.1f} GFLOP/s)"
          + ("" if name in covered else " (no usable record: defaults)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
