"""How much slower a fused layer runs when its weights come from past the last-level cache, as in the network.

One kernel of MobileNetV1 (default: the one the network calls most often, at 1.0/224 the five
14x14 512->512 layers) is compiled at the template defaults (and at ``--knobs`` variants of them)
and timed in interleaved rounds, in one process, three ways:

- ``hot``: the same weights and activations call after call (as ``benchmarks/layers.py`` and
  tuning time a kernel);
- ``chainN`` (each N of ``--chains``): N copies of the layer, each with weights of its own, called
  one after the other (activations passed along where the shapes allow), so that N x the
  layer's weights cycle through the caches, as the network's 17 MB do; the time is per layer;
- ``streamed``: before each call ``--stream-mb`` MB streamed through the caches (the last level
  too), then every thread's private caches pushed out (:func:`mntvm.tuning.measure.evict_private_caches`).

    python benchmarks/weights_from_memory.py [--alpha 1.0] [--resolution 224] [--threads 1]
        [--kernel mntvm_dwpw6] [--chains 5,24] [--stream-mb 128] [--rounds 15] [--per-round 5]
        [--knobs '{"prefetch": {"prefetch": 1}, "chunks": {"kc": 2}}'] [--json]

Prints each build's median per mode, as a ratio to its own ``hot`` time and to the defaults' time
in the same mode, and each build's max |diff| against the defaults' output. A ratio above 1 in
``chainN``/``streamed`` is what the layer loses to its weights' trip from L3 or memory; a knob
variant that wins there but not ``hot`` is one that only a network-like measurement finds.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import counts, kernel_calls, model_options  # noqa: E402
from mntvm import MntvmError  # noqa: E402


def _knob_variants(text: str) -> dict:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--knobs is not JSON: {e}") from None
    if not isinstance(v, dict) or not all(isinstance(k, dict) for k in v.values()):
        raise argparse.ArgumentTypeError('--knobs: {"name": {"knob": value, ...}, ...}')
    if "default" in v:
        raise argparse.ArgumentTypeError("--knobs: 'default' is the name of the defaults' build")
    return v


def _median(xs) -> float:
    return float(np.median(xs))


def run(alpha: float, resolution: int, threads: int, kernel: str | None, chains: list[int], stream_mb: int,
        rounds: int, per_round: int, variants: dict) -> dict:
    import tvm

    from mntvm.core.threads import set_threads
    from mntvm.model.network import MobileNetConfig
    from mntvm.model.weights import random_weights
    from mntvm.targets.profiles import get_profile
    from mntvm.templates import prefetch
    from mntvm.templates.defaults import knob_schedule
    from mntvm.templates.lowering import lower
    from mntvm.tuning.measure import evict_private_caches

    set_threads(threads)
    cfg = MobileNetConfig(alpha=alpha, resolution=resolution)
    prof = get_profile("x86")
    calls = kernel_calls(lower(cfg, random_weights(cfg, 0), prof))
    calls_of = collections.Counter(name for name, _ in calls)
    funcs = dict(calls)
    if kernel is None:
        kernel = max(calls_of, key=lambda n: (calls_of[n], n.startswith("mntvm_dwpw")))
    if kernel not in funcs:
        raise MntvmError(f"no kernel {kernel!r} in {cfg.tag} (it has {', '.join(sorted(calls_of))})")
    func = funcs[kernel]
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    target, dev = prof.tvm_target(), tvm.cpu()
    _, defaults = knob_schedule(mod, target, None, vector_bits=prof.vector_bits)
    if not defaults:
        raise MntvmError(f"{kernel} has no template knobs to vary")

    rng = np.random.default_rng(0)

    def tensor(p):
        a = rng.standard_normal([int(x) for x in p.shape]).astype(p.dtype) * np.float32(0.05)
        return tvm.runtime.tensor(a, dev)

    params = list(func.params)
    n_max = max(chains, default=1)
    layers = [[tensor(p) for p in params[1:-1]] for _ in range(n_max)]  # weights, biases: one set per copy
    same = [int(x) for x in params[0].shape] == [int(x) for x in params[-1].shape]
    acts = [tensor(params[0]), tensor(params[-1])]
    weight_bytes = sum(int(np.prod([int(x) for x in p.shape])) * 4 for p in params[1:-1])

    builds = {}
    for name, change in [("default", {})] + list(variants.items()):
        knobs = [dict(d) for d in defaults]
        knobs[0].update(change)
        try:
            sch, _ = knob_schedule(mod, target, knobs, vector_bits=prof.vector_bits)
        except (ValueError, KeyError) as e:
            raise MntvmError(f"--knobs {name}: {e}") from None
        f = prefetch.compile_cpu(sch.mod, target).mod["main"]
        out = tensor(params[-1])
        f(acts[0], *layers[0], out)
        builds[name] = {"knobs": knobs[0], "f": f, "out": out.numpy(), "samples": collections.defaultdict(list)}

    big = [np.ones(max(1, stream_mb) << 17, np.float32) for _ in range(2)]  # 2 x stream_mb / 2 MB

    def chain(f, n):
        for i in range(n):
            src, dst = (acts[i % 2], acts[(i + 1) % 2]) if same else (acts[0], acts[1])
            f(src, *layers[i], dst)

    def sample(f, mode) -> float:
        if mode == "hot":
            a = [acts[0], *layers[0], acts[1]]
            f(*a)
            t0 = time.perf_counter()
            for _ in range(per_round):
                f(*a)
            return (time.perf_counter() - t0) / per_round
        if mode == "streamed":
            np.add(big[0], 1.0, out=big[1])
            evict_private_caches(acts[0])
            t0 = time.perf_counter()
            f(acts[0], *layers[0], acts[1])
            return time.perf_counter() - t0
        n = int(mode[len("chain"):])
        chain(f, n)
        t0 = time.perf_counter()
        chain(f, n)
        return (time.perf_counter() - t0) / n

    modes = ["hot"] + [f"chain{n}" for n in chains] + (["streamed"] if stream_mb > 0 else [])
    for r in range(rounds):
        order = list(builds) if r % 2 == 0 else list(reversed(builds))
        for name in order:
            for mode in modes:
                builds[name]["samples"][mode].append(sample(builds[name]["f"], mode))

    base = {m: _median(builds["default"]["samples"][m]) for m in modes}
    res = {"model": cfg.tag, "kernel": kernel, "calls_in_network": calls_of[kernel], "threads": threads,
           "weight_bytes": weight_bytes, "stream_mb": stream_mb, "rounds": rounds, "modes": modes, "builds": {}}
    for name, b in builds.items():
        us = {m: _median(b["samples"][m]) * 1e6 for m in modes}
        res["builds"][name] = {
            "knobs": b["knobs"], "us": us,
            "vs_hot": {m: us[m] / us["hot"] for m in modes},
            "vs_default": {m: us[m] / (base[m] * 1e6) for m in modes},
            "max_diff": float(np.abs(b["out"] - builds["default"]["out"]).max())}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_options(ap)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kernel", default=None, help="a kernel of the lowered network (default: the most called)")
    ap.add_argument("--chains", type=counts("layer copies"), default="5,24",
                    help="comma-separated numbers of layer copies with their own weights")
    ap.add_argument("--stream-mb", type=int, default=128, help="MB streamed before each 'streamed' call (0: none)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--knobs", type=_knob_variants, default={}, help='JSON {"name": {"knob": value}}')
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.per_round < 1 or a.stream_mb < 0 or a.threads < 1:
        ap.error("--rounds, --per-round and --threads must be >= 1, --stream-mb >= 0")
    try:
        res = run(a.alpha, a.resolution, a.threads, a.kernel, a.chains, a.stream_mb, a.rounds, a.per_round, a.knobs)
    except MntvmError as e:
        print(f"weights_from_memory.py: error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{res['model']} {res['kernel']} (called {res['calls_in_network']}x in the network), "
          f"{res['weight_bytes'] / 2**20:.2f} MB of weights and biases, {res['threads']} thread(s), "
          f"{res['rounds']} interleaved rounds")
    print(f"{'build':12s} {'mode':10s} {'median us':>10s} {'x hot':>7s} {'x default':>10s}  max|diff|")
    for name, b in res["builds"].items():
        for m in res["modes"]:
            print(f"{name:12s} {m:10s} {b['us'][m]:10.1f} {b['vs_hot'][m]:7.3f} {b['vs_default'][m]:10.3f}"
                  + (f"  {b['max_diff']:.1e}" if m == "hot" else ""))
    print("chainN: N copies, each with its own weights, one after the other (per layer); streamed: "
          f"{res['stream_mb']} MB streamed and the private caches pushed out before each call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
