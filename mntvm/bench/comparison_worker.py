"""The child-process side of :func:`mntvm.bench.compare`: one thread count, all runtimes, one process.

    python -m mntvm.bench.comparison_worker SPEC_JSON

loads our artifact and every peer (:data:`mntvm.bench.peers.PEERS`) for ``spec["threads"]``
threads, checks that our output agrees with ONNX Runtime's, times them interleaved and prints
the result as one JSON line (``{"error": message}`` for a one-line :class:`MntvmError`).

Public entries: :func:`measure` and :func:`main`.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from mntvm.bench.peers import PEERS, REFERENCE
from mntvm.compile.artifact import deterministic_input, load_artifact
from mntvm.core.errors import MntvmError, one_line
from mntvm.core.threads import set_threads, time_interleaved


def measure(spec: dict) -> dict:
    """Ours and ``spec["peers"]`` at ``spec["threads"]`` threads: outputs checked, then timed.

    ``spec``: ``artifact``, ``threads``, ``peers`` (ONNX Runtime first), ``models`` (format ->
    model file), ``input_seed``, ``tol`` (max |ours - ORT|), ``warmup``, ``rounds``, ``per_round``.
    A peer other than ONNX Runtime that fails to load lands in ``peer_errors``.
    """
    import tvm

    n = spec["threads"]
    art = load_artifact(spec["artifact"])
    x = deterministic_input(art.input_shape, spec["input_seed"])
    set_threads(n)
    vm = art.load_vm()
    xt = tvm.runtime.tensor(x)
    tvm_threads = int(tvm.get_global_func("runtime.NumThreads")())
    versions = {"tvm": tvm.__version__}

    # name -> (timed call, output as numpy)
    run = {"ours": (lambda: vm["main"](xt), lambda: vm["main"](xt).numpy())}
    errors: dict[str, str] = {}
    for p in spec["peers"]:
        peer = PEERS[p]
        try:
            timed, out, versions[peer.module] = peer.setup(spec["models"][peer.model], x, n)
        except Exception as e:  # noqa: BLE001 - an installed peer that cannot run the model
            if p == REFERENCE:
                raise
            errors[p] = one_line(e, with_type=True)
            continue
        run[p] = (timed, out)

    outs = {name: np.asarray(f[1](), dtype=np.float32) for name, f in run.items()}
    diffs = {name: float(np.abs(outs["ours"] - out.reshape(outs["ours"].shape)).max())
             for name, out in outs.items() if name != "ours"}
    if not diffs["ort"] <= spec["tol"]:
        raise MntvmError(f"outputs disagree at {n} thread{'s' * (n != 1)}: max |ours - ONNX Runtime| = "
                         f"{diffs['ort']:.2e} > {spec['tol']:.0e}")
    # ours with the calling thread off the cores TVM pinned its workers to (see caller_pinned); the
    # peers with this thread's own mask, as they were set up
    times = time_interleaved({name: fn for name, (fn, _) in run.items()}, spec["rounds"], spec["per_round"],
                             warmup=spec["warmup"], pinned=("ours",))

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


def main(argv: list[str] | None = None) -> int:
    """Measure the spec (a JSON string, the first argument) and print one JSON line; 2 on a MntvmError."""
    spec_json = (sys.argv[1:] if argv is None else argv)[0]
    try:
        r = measure(json.loads(spec_json))
    except MntvmError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        return 2
    print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
