"""``mntvm`` command line: parses arguments and calls each stage's public entry, nothing more."""
from __future__ import annotations

import argparse
import json
import os
import sys

from mntvm.core.errors import MntvmError


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--alpha", type=float, default=1.0, help="width multiplier (default 1.0)")
    g.add_argument("--resolution", type=int, default=224, help="input resolution, multiple of 32 (default 224)")
    g.add_argument("--num-classes", type=int, default=1000)
    g.add_argument("--batch", type=int, default=1)
    g.add_argument("--activation", default="relu6", help="relu6 (default) or relu (as in the paper)")


def _weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help=".npz (ours) or .onnx (a trained MobileNetV1); default: seeded random")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")


def _calibration_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("int8 quantization")
    g.add_argument("--calibration", metavar="DIR",
                   help="calibration inputs: a folder of .npy/.jpg/.png (default: seeded random inputs)")
    g.add_argument("--calibration-method", default="minmax", choices=("minmax", "percentile", "entropy"),
                   help="how activation ranges are chosen (default minmax)")
    g.add_argument("--calibration-count", type=int, default=16,
                   help="calibration inputs to use (default 16; 0: every file in --calibration)")


def _grid_args(p: argparse.ArgumentParser) -> None:
    """The variants: mntvm.model.network's ALPHAS x RESOLUTIONS unless given (not imported here: numpy)."""
    p.add_argument("--alphas", help="width multipliers, comma-separated (default 1.0,0.75,0.5,0.25)")
    p.add_argument("--resolutions", help="input resolutions, comma-separated (default 224,192,160,128)")


def _targets_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--targets-dir", help="a folder of your own target profiles (shadows shipped ones)")


def _target_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--target", required=required, default=None if required else "x86",
                   help="target profile name or LLVM triple (see `mntvm targets`)")
    _targets_dir_arg(p)
    p.add_argument("--mcpu", help="refine the profile's CPU")
    p.add_argument("--mattr", help="refine the profile's CPU features, comma-separated (e.g. +neon,+dotprod)")


def _config(a):
    from mntvm.model import MobileNetConfig

    return MobileNetConfig(alpha=a.alpha, resolution=a.resolution, num_classes=a.num_classes,
                           batch=a.batch, activation=a.activation)


def _mattr(a):
    return [s for s in a.mattr.split(",") if s] if a.mattr else None


def cmd_cost(a) -> None:
    from mntvm.model.cost import cost_report, format_table

    report = cost_report(_config(a))
    print(json.dumps(report) if a.json else format_table(report))


def cmd_export_onnx(a) -> None:
    from mntvm.model import weights as W
    from mntvm.export import export_onnx

    cfg = _config(a)
    path = export_onnx(cfg, W.load(cfg, a.weights, a.seed), a.output)
    print(f"wrote {path}")


def cmd_save_weights(a) -> None:
    from mntvm.model import weights as W

    cfg = _config(a)
    print(f"wrote {W.save_npz(W.load(cfg, a.weights, a.seed), a.output)}")


def cmd_compile(a) -> None:
    from mntvm.compile import compile_model, format_compiled

    out = compile_model(_config(a), a.output, target=a.target, weights=a.weights, seed=a.seed,
                        targets_dir=a.targets_dir, mcpu=a.mcpu, mattr=_mattr(a), schedules=a.schedules,
                        force_schedules=a.force_schedules, check_log=not a.no_log_check, dtype=a.dtype,
                        calibration=a.calibration, method=a.calibration_method,
                        calibration_count=a.calibration_count)
    print(format_compiled(out))


def cmd_quantize(a) -> None:
    from mntvm.compile import format_quantized, write_quantized

    cfg = _config(a)
    path, info = write_quantized(cfg, a.output, target=a.target, weights=a.weights, seed=a.seed,
                                 calibration=a.calibration, method=a.calibration_method,
                                 count=a.calibration_count, targets_dir=a.targets_dir, mcpu=a.mcpu,
                                 mattr=_mattr(a))
    print(format_quantized(path, info, cfg))


def cmd_tune(a) -> None:
    from mntvm.tuning import format_tune, tune

    r = tune(_config(a), a.target, trials=a.trials, ops=a.ops, out=a.output, tracker=a.tracker, key=a.key,
             targets_dir=a.targets_dir, progress=not a.json, force=a.force_schedules, threads=a.threads,
             mcpu=a.mcpu, mattr=_mattr(a), dtype=a.dtype, start_from=a.start_from)
    print(json.dumps(r) if a.json else format_tune(r))


def cmd_schedules(a) -> None:
    from mntvm import tuning as T

    if a.schedules_cmd == "show":
        r = T.show(a.path)
        print(json.dumps(r) if a.json else T.format_show(r))
        return
    from mntvm.sweep import parse_list

    if (a.alphas or a.resolutions or a.targets_dir) and not a.drop_unused:
        raise MntvmError("--alphas, --resolutions and --targets-dir choose the variants of --drop-unused: add it")
    grid = {"drop_unused": a.drop_unused, "targets_dir": a.targets_dir}
    if a.alphas:
        grid["alphas"] = parse_list(a.alphas, float, "--alphas")
    if a.resolutions:
        grid["resolutions"] = parse_list(a.resolutions, int, "--resolutions")
    rules = parse_list(a.drop_rule, str, "--drop-rule") if a.drop_rule is not None else ()
    if a.schedules_cmd == "merge":
        r = T.merge(a.sources, a.output, top_k=a.top_k, drop_reverted=a.drop_reverted, drop_rules=rules, **grid)
    else:
        r = T.merge([a.path], a.output or a.path, top_k=a.top_k, drop_reverted=a.drop_reverted, drop_rules=rules,
                    **grid)
    print(T.format_merge(r))


def cmd_run(a) -> None:
    from mntvm.compile import format_top_k, infer

    print(format_top_k(infer(a.artifact, a.input, a.threads, a.output), a.top))


def cmd_targets(a) -> None:
    from mntvm.targets import format_profiles, list_profiles

    profiles = list_profiles(a.targets_dir)
    print(json.dumps([p.to_metadata() for p in profiles]) if a.json else format_profiles(profiles))


def cmd_bench(a) -> None:
    from mntvm.bench import benchmark, compare, format_benchmark, format_compare, plot_per_layer

    if a.compare:
        r = compare(a.artifact, peers=tuple(p for p in a.compare.split(",") if p),
                    threads=(a.threads,) if a.threads else (1, 2), weights=a.weights, tracker=a.tracker)
        print(json.dumps(r) if a.json else format_compare(r))
        return
    try:
        r = benchmark(a.artifact, repeat=a.repeat, warmup=a.warmup, threads=a.threads, tracker=a.tracker,
                      key=a.key, wait_s=a.wait, progress=not a.json, per_layer=a.per_layer or bool(a.plot),
                      per_layer_runs=a.per_layer_runs, timeout_s=a.timeout)
    except MntvmError as e:
        if "stopped answering" not in str(e):
            raise
        # A hung board leaves a thread blocked in TVM's RPC client; interpreter shutdown would then
        # free that session under it (abort or hang): report and leave at once.
        print(f"mntvm: error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    if a.plot:
        plot_per_layer(r, a.plot)
    print(json.dumps(r) if a.json else format_benchmark(r))
    if a.plot and not a.json:
        print(f"wrote {a.plot}")


def cmd_rpc(a) -> None:
    from mntvm.remote import rpc

    if a.rpc_cmd == "tracker":
        rpc.run_tracker(a.host, a.port, a.port_end, silent=a.silent)
    elif a.rpc_cmd == "server":
        rpc.run_server(a.tracker, a.key, a.host, a.port, a.port_end, silent=a.silent)
    else:
        s = rpc.status(a.tracker)
        print(json.dumps(s) if a.json else rpc.format_status(s))


def cmd_board(a) -> None:
    from mntvm.remote import board
    from mntvm.remote.rpc import parse_addr

    if a.board_cmd == "prepare":
        print(f"board userland ready: {board.prepare(a.arch)}")
    elif a.board_cmd == "start":
        host, port = parse_addr(a.tracker)
        h = board.start(host, port, a.key, arch=a.arch, port=a.port)
        print(f"board {a.arch} pid {h.pid} port {h.port} registered as '{a.key}' (log {h.log})")
    else:
        board.stop(a.pid)
        print(f"stopped board pid {a.pid}")


def cmd_demo(a) -> None:
    """The README's main job: compile for this machine with the shipped logs, benchmark, show top-5."""
    from mntvm.bench import demo, format_demo

    print(format_demo(demo(_config(a), a.output, repeat=a.repeat, threads=a.threads)))


def cmd_sweep(a) -> None:
    """α×resolution sweep: compile, benchmark (here or on every board under a key), report."""
    from mntvm.sweep import (DEFAULT_ALPHAS, DEFAULT_RESOLUTIONS, format_table, parse_list, plot_png, sweep,
                             write_plot, write_report)

    alphas = parse_list(a.alphas, float, "--alphas") if a.alphas else list(DEFAULT_ALPHAS)
    resolutions = parse_list(a.resolutions, int, "--resolutions") if a.resolutions else list(DEFAULT_RESOLUTIONS)
    r = sweep(a.target, alphas, resolutions, tracker=a.tracker, key=a.key, repeat=a.repeat, warmup=a.warmup,
              threads=a.threads, budget_ms=a.budget_ms, out=a.output, resume=a.resume, seed=a.seed,
              wait_s=a.wait, timeout_s=a.timeout, attempts=a.attempts, progress=not a.json,
              targets_dir=a.targets_dir, mcpu=a.mcpu, mattr=_mattr(a), dtype=a.dtype)
    png = plot_png(r) if (a.plot or a.report) and r["variants"] else None
    if a.plot and png:
        write_plot(r, a.plot)
    if a.report and png:
        write_report(r, a.report, png)
    if a.json:
        print(json.dumps(r))
    else:
        print(format_table(r))
        for what, path in (("plot", a.plot), ("report", a.report)):
            if path and png:
                print(f"wrote {what} {path}")
    rc = 0
    if r["failed"]:
        print(f"mntvm: error: {len(r['failed'])} variant(s) failed: "
              + "; ".join(f"{f['alpha']:g}/{f['resolution']}: {f['errors'][-1]['error']}" for f in r["failed"]),
              file=sys.stderr)
        rc = 2
    if r.get("hung_attempts") or rc:
        # A hung board leaves a thread blocked in TVM's RPC client, which interpreter shutdown
        # would free under it: leave at once, everything is written.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def cmd_cache(a) -> None:
    """The compiled-artifact cache (MNTVM_CACHE, default ~/.cache/mntvm): show, prune to a size, clear."""
    from mntvm.sweep import clear_cache, format_cache, prune_cache, show_cache

    if a.cache_cmd == "show":
        r = show_cache()
    elif a.cache_cmd == "prune":
        if a.max_mb is not None and not 0 <= a.max_mb < float("inf"):
            raise MntvmError(f"--max-mb must be a number of MiB >= 0 (got {a.max_mb:g})")
        r = prune_cache(None if a.max_mb is None else int(a.max_mb * 2**20))
    else:
        r = clear_cache()
    print(json.dumps(r) if a.json else format_cache(r))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (``mntvm: error: ...``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"mntvm: error: {self.prog.removeprefix('mntvm ')}: {message}\n")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {n}")
    return n


DROP_REVERTED_HELP = ("leave out each workload's records that this machine's check (by tune or compile) sent "
                      "back to the template defaults")


DROP_RULE_HELP = ("leave out the records of every workload of these template rules, comma-separated (e.g. "
                  "mntvm_dwpw, after that template gained a knob its records predate)")


def _drop_unused_args(c) -> None:
    c.add_argument("--drop-unused", action="store_true",
                   help="leave out each workload's records that no variant (--alphas x --resolutions, float32 and "
                        "int8) produces for the log's target, e.g. those of a template that has changed since")
    _grid_args(c)
    _targets_dir_arg(c)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mntvm", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("cost", help="per-layer mult-adds and params (the MobileNets paper's cost model)")
    _model_args(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_cost)

    s = sub.add_parser("export-onnx", help="write our model with its weights as ONNX")
    _model_args(s)
    _weights_args(s)
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_export_onnx)

    s = sub.add_parser("save-weights", help="write weights (random, or imported from ONNX) as .npz")
    _model_args(s)
    _weights_args(s)
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_save_weights)

    s = sub.add_parser("compile", help="compile for a target into an artifact directory")
    _model_args(s)
    _weights_args(s)
    _target_args(s)
    s.add_argument("-o", "--output", required=True, help="artifact directory (written atomically)")
    s.add_argument("--schedules", default="default",
                   help="tuned database: 'default' (shipped in schedules/), a folder, or 'none' (template defaults)")
    s.add_argument("--force-schedules", action="store_true", help="apply a database tuned for another target")
    s.add_argument("--no-log-check", action="store_true",
                   help="apply every tuned record as it is, without timing it here against the template defaults "
                        "(a build that does not depend on this machine's timings)")
    s.add_argument("--dtype", choices=("float32", "int8"),
                   help="float32 or int8 (default: follows --weights; a quantized QDQ .onnx builds as int8)")
    _calibration_args(s)
    s.set_defaults(func=cmd_compile)

    s = sub.add_parser("quantize", help="quantize to int8 and write an ONNX QDQ model")
    _model_args(s)
    _weights_args(s)
    _target_args(s)
    _calibration_args(s)
    s.add_argument("-o", "--output", required=True, help="the quantized model (.onnx)")
    s.set_defaults(func=cmd_quantize)

    s = sub.add_parser("tune", help="tune the conv templates with MetaSchedule into a schedules database")
    _model_args(s)
    _target_args(s)
    s.add_argument("--trials", type=int, default=32, help="measured trials per task (default 32)")
    s.add_argument("--ops", default="all", help="all, or a comma list of pw,dw,stem,fc,pool")
    s.add_argument("--tracker", help="HOST:PORT: measure on boards through the RPC tracker")
    s.add_argument("--key", help="board key registered with the tracker")
    s.add_argument("-o", "--output", help="database folder (default: schedules/<target>/)")
    s.add_argument("--force-schedules", action="store_true", help="continue a database tuned for another target")
    s.add_argument("--threads", type=_positive,
                   help="threads to measure kernels on here (default 1; candidates still keep the profile's "
                   "threads as busy as the template defaults do)")
    s.add_argument("--dtype", choices=("float32", "int8"), default="float32", help="which templates (default float32)")
    s.add_argument("--start-from", default="default", metavar="DIR|default|none",
                   help="each new task also starts from this log's best record for it, measured here first "
                        "(default: the log compile would use, e.g. another CPU's standing in for this one)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_tune)

    s = sub.add_parser("schedules", help="show, merge or prune schedules databases")
    ss = s.add_subparsers(dest="schedules_cmd", required=True)
    c = ss.add_parser("show", help="target, TVM version and, per task, trials and best latency")
    c.add_argument("path", metavar="DIR", help="schedules database folder")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c = ss.add_parser("merge", help="best record per workload over several databases of one target")
    c.add_argument("sources", nargs="+", metavar="DIR", help="schedules database folders")
    c.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="database folder to write (atomically; may be one of the sources)")
    c.add_argument("--top-k", type=int, default=1, help="records to keep per workload (default 1)")
    c.add_argument("--drop-reverted", action="store_true", help=DROP_REVERTED_HELP)
    c.add_argument("--drop-rule", metavar="RULES", help=DROP_RULE_HELP)
    _drop_unused_args(c)
    c = ss.add_parser("prune", help="keep the K fastest records per workload")
    c.add_argument("path", metavar="DIR", help="schedules database folder")
    c.add_argument("--top-k", type=int, required=True, help="records to keep per workload")
    c.add_argument("-o", "--output", metavar="OUT", help="write here (default: DIR, in place, atomically)")
    c.add_argument("--drop-reverted", action="store_true", help=DROP_REVERTED_HELP)
    c.add_argument("--drop-rule", metavar="RULES", help=DROP_RULE_HELP)
    _drop_unused_args(c)
    s.set_defaults(func=cmd_schedules)

    s = sub.add_parser("run", help="run an artifact here and print the top-k classes")
    s.add_argument("artifact")
    s.add_argument("--input", help=".npy input (default: the deterministic input)")
    s.add_argument("-o", "--output", help="save the probabilities as .npy")
    s.add_argument("--top", type=_positive, default=5, help="classes to print per batch row (default 5)")
    s.add_argument("--threads", type=_positive, help="threads to run on (at most this machine's cores)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("targets", help="list target profiles")
    _targets_dir_arg(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_targets)

    s = sub.add_parser("bench", help="benchmark an artifact here or on a board through the RPC tracker")
    s.add_argument("artifact")
    s.add_argument("--tracker", help="HOST:PORT of the RPC tracker (default: run here)")
    s.add_argument("--key", help="board key registered with the tracker")
    s.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a free board")
    s.add_argument("--repeat", type=int, default=50)
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--threads", type=_positive)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--per-layer", action="store_true",
                   help="also time each kernel (Relax VM instrument hook) and map it to the layers")
    s.add_argument("--per-layer-runs", type=int, default=10, help="instrumented runs (default 10)")
    s.add_argument("--plot", metavar="FILE.png", help="draw the per-layer times as a bar chart (implies --per-layer)")
    s.add_argument("--timeout", type=float, default=300.0,
                   help="seconds allowed for the upload, the load and the first inference on a board "
                        "(later steps: 10 s + 5x their expected time)")
    s.add_argument("--compare", metavar="PEERS",
                   help="time the artifact side by side with peers here, e.g. 'ort' or 'ort,openvino,tflite' "
                        "(interleaved rounds at 1 and 2 threads, or --threads)")
    s.add_argument("--weights", help="with --compare: the weights file the artifact was compiled from")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("rpc", help="TVM's RPC tracker and server (bind 127.0.0.1 by default), tracker status")
    rs = s.add_subparsers(dest="rpc_cmd", required=True)
    r = rs.add_parser("tracker", help="run TVM's RPC tracker in the foreground")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=9190)
    r.add_argument("--port-end", type=int, help="end of the port search range (default: port+10)")
    r.add_argument("--silent", action="store_true")
    r = rs.add_parser("server", help="run TVM's RPC server in the foreground, registered with a tracker")
    r.add_argument("--tracker", required=True, help="HOST:PORT")
    r.add_argument("--key", required=True)
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=9090)
    r.add_argument("--port-end", type=int)
    r.add_argument("--silent", action="store_true")
    r = rs.add_parser("status", help="keys registered with a tracker: total, free, pending")
    r.add_argument("--tracker", required=True, help="HOST:PORT")
    r.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_rpc)

    s = sub.add_parser("board", help="an emulated ARM board (qemu-user) registered with a tracker")
    bs = s.add_subparsers(dest="board_cmd", required=True)
    b = bs.add_parser("prepare", help="build (or reuse) the cached arm64 userland with the TVM runtime")
    b.add_argument("--arch", default="aarch64")
    b = bs.add_parser("start", help="start the board's RPC server under qemu and register it")
    b.add_argument("--arch", default="aarch64")
    b.add_argument("--tracker", required=True, help="HOST:PORT")
    b.add_argument("--key", required=True)
    b.add_argument("--port", type=int, default=9090)
    b = bs.add_parser("stop", help="stop a board by PID")
    b.add_argument("pid", type=int)
    s.set_defaults(func=cmd_board)

    s = sub.add_parser("demo", help="compile MobileNetV1 for this machine, benchmark it, print top-5")
    _model_args(s)
    s.add_argument("-o", "--output", default="artifacts/mobilenet_v1-x86")
    s.add_argument("--repeat", type=int, default=50)
    s.add_argument("--threads", type=_positive)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("sweep", help="alpha x resolution sweep: latency vs cost and top-1, over every board under a key")
    _target_args(s, required=True)
    _grid_args(s)
    s.add_argument("--dtype", choices=("float32", "int8"), default="float32",
                   help="build every variant in float32 (default) or int8 (quantized from seeded inputs)")
    s.add_argument("--tracker", help="HOST:PORT of the RPC tracker (default: run here)")
    s.add_argument("--key", help="board key: every board registered under it runs variants concurrently")
    s.add_argument("--repeat", type=int, default=30, help="timed runs per variant (default 30)")
    s.add_argument("--warmup", type=int, default=3, help="untimed runs per variant (default 3)")
    s.add_argument("--threads", type=_positive, help="runtime threads on the board (default: its own)")
    s.add_argument("--budget-ms", type=float, help="name the most accurate variant whose median fits this")
    s.add_argument("--json", action="store_true", help="print one JSON object (no progress bar)")
    s.add_argument("--plot", metavar="FILE.png", help="latency vs top-1 (Pareto front) and vs mult-adds")
    s.add_argument("--report", metavar="FILE.html", help="one self-contained HTML page: table, plots, setup")
    s.add_argument("-o", "--output", "--out", dest="output", metavar="FILE.jsonl",
                   help="append each variant's result as one JSON line")
    s.add_argument("--resume", action="store_true", help="keep the results already in --output, run only the rest")
    s.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    s.add_argument("--wait", type=float, help="seconds to wait for the tracker to hand out a board "
                                              "(default: --timeout)")
    s.add_argument("--timeout", type=float, default=600.0,
                   help="seconds one variant may run on a board before the board counts as hung (default 600)")
    s.add_argument("--attempts", type=int, default=3, help="tries per variant with a tracker (default 3)")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("cache", help="the compiled-artifact cache: show, prune (least recently used first), clear")
    cs = s.add_subparsers(dest="cache_cmd", required=True)
    c = cs.add_parser("show", help="cached artifacts, least recently used first, their total and the limit")
    c.add_argument("--json", action="store_true")
    c = cs.add_parser("prune", help="delete least recently used artifacts down to a size (board userland stays)")
    c.add_argument("--max-mb", type=float, help="size limit in MiB (default: MNTVM_CACHE_MAX_MB, else 2048)")
    c.add_argument("--json", action="store_true")
    c = cs.add_parser("clear", help="delete every cached artifact (the board userland stays)")
    c.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_cache)
    return p


_SCHEDULES_CMDS = ("show", "merge", "prune", "-h", "--help")


def _old_spellings(argv: list[str]) -> list[str]:
    """``mntvm schedules DIR [DIR...] --keep K [-o OUT]`` (before show/merge/prune existed) is
    ``mntvm schedules merge DIR... --top-k K -o OUT`` (OUT defaults to the first DIR: in place)."""
    if len(argv) < 2 or argv[0] != "schedules" or argv[1] in _SCHEDULES_CMDS:
        return argv
    old = argparse.ArgumentParser(prog="mntvm schedules", add_help=False)
    old.add_argument("sources", nargs="+")
    old.add_argument("--keep", type=int, default=1)
    old.add_argument("-o", "--output")
    a, rest = old.parse_known_args(argv[1:])
    if rest:
        return argv  # not the old form: let the real parser name the problem
    return ["schedules", "merge", *a.sources, "--top-k", str(a.keep), "-o", a.output or a.sources[0]]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_old_spellings(argv))
    try:
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
    except MntvmError as e:
        print(f"mntvm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mntvm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (`mntvm ... | head`): not an error; keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
