"""What the benchmarks share: their model and timing options, and the single-build ones' model and reference."""
from __future__ import annotations

import argparse


def model_options(p: argparse.ArgumentParser) -> None:
    """``--alpha 1.0 --resolution 224``: the one MobileNetV1 variant a benchmark builds."""
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=224)


def single_build_options(p: argparse.ArgumentParser, threads: int, rounds: int) -> None:
    """For the benchmarks that time builds of one variant against each other in one process
    (prefetch.py, chunks.py, schedules_effect.py): the model, ``--threads N --rounds R --per-round 5 --json``."""
    model_options(p)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--per-round", type=int, default=5)
    p.add_argument("--json", action="store_true")


def timing_options(p: argparse.ArgumentParser, rounds: int = 20, per_round: int = 5) -> None:
    """``--threads 1,2 --rounds N --per-round M --schedules default|none|DIR --json``."""
    p.add_argument("--threads", type=thread_counts, default="1,2", help="comma-separated thread counts")
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--per-round", type=int, default=per_round)
    p.add_argument("--schedules", default="default", help="default (shipped), none (template defaults) or a folder")
    p.add_argument("--json", action="store_true")


def counts(what: str):
    """An argparse type for ``"1,2"`` -> [1, 2]: comma-separated integers >= 1, anything else refused
    in one line that names ``what`` they count."""
    def parse(text: str) -> list[int]:
        try:
            out = [int(t) for t in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"comma-separated integers, got {text!r}") from None
        if not out or min(out) < 1:
            raise argparse.ArgumentTypeError(f"{what} must be >= 1, got {text!r}")
        return out
    return parse


thread_counts = counts("thread counts")


def model_and_reference(alpha: float, resolution: int, threads: int):
    """For the single-build benchmarks (schedules_effect.py, prefetch.py): ``threads`` set for
    TVM, and ``(cfg, weights, x, ref)``: MobileNetV1 alpha/resolution, its random weights (seed 0),
    the deterministic input and the numpy float64 reference output."""
    from mntvm.compile.artifact import deterministic_input
    from mntvm.core.threads import set_threads
    from mntvm.model import reference
    from mntvm.model import weights as W
    from mntvm.model.network import MobileNetConfig

    cfg = MobileNetConfig(alpha=alpha, resolution=resolution)
    set_threads(threads)
    w = W.random_weights(cfg, 0)
    x = deterministic_input(cfg.input_shape)
    return cfg, w, x, reference.forward(cfg, w, x)


def kernel_calls(mod):
    """[(name, PrimFunc)] of a lowered module's kernels, in the execution order of main's call_tir bindings."""
    import tvm
    from tvm import relax

    call_tir = tvm.ir.Op.get("relax.call_tir")
    out = []
    for blk in mod["main"].body.blocks:
        for b in blk.bindings:
            v = b.value
            if isinstance(v, relax.Call) and v.op.same_as(call_tir):
                gv = v.args[0]
                out.append((gv.name_hint, mod[gv]))
    return out


def families_with(**fields):
    """A context in which the x86 knob families (AVX-512, AVX2) have ``fields`` replaced (e.g.
    ``prefetch_weights=None``): a build made inside uses those defaults; the families are restored
    on leaving."""
    import contextlib
    import dataclasses

    from mntvm.templates import x86

    @contextlib.contextmanager
    def ctx():
        saved = {attr: getattr(x86, attr) for attr in ("AVX512", "AVX2")}
        for attr, fam in saved.items():
            setattr(x86, attr, dataclasses.replace(fam, **fields))
        try:
            yield
        finally:
            for attr, fam in saved.items():
                setattr(x86, attr, fam)

    return ctx()


def artifact_runner(out, x):
    """``() -> output`` of the compiled artifact in ``out`` on input ``x`` (its VM loaded once)."""
    from mntvm.compile.artifact import load_artifact

    art = load_artifact(out)
    avm = art.load_vm()
    return lambda: art.run(x, avm)


def time_against_reference(runners: dict, ref, a, alternate: bool = False) -> tuple[dict, dict]:
    """``(times, diffs)``: each runner's max |output - ref| (which also warms it up), then all timed in
    interleaved rounds (``a.rounds`` x ``a.per_round``, callers pinned)."""
    import numpy as np

    from mntvm.core.threads import time_interleaved

    diffs = {k: float(np.abs(f() - ref).max()) for k, f in runners.items()}
    return diffs, time_interleaved(runners, a.rounds, a.per_round, pinned=tuple(runners), alternate=alternate)


def build_rows(times: dict, diffs: dict, info: dict, base: str) -> dict:
    """Per build: median and p90 ms, runs, the median's ratio to ``base``'s (key ``vs_<base>``, dashes
    as underscores), max |diff| and the build's ``info``."""
    import numpy as np

    ref = float(np.median(times[base]))
    key = "vs_" + base.replace("-", "_")
    return {k: {"median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)), "runs": len(v),
                key: float(np.median(v)) / ref, "max_abs_diff": diffs[k], **info[k]} for k, v in times.items()}


def family_comparison(a, settings, base: str, describe) -> tuple:
    """Builds of one model that differ in defaults of the x86 knob families, timed against each
    other in one process: per ``(name, fields)`` of ``settings``, ``a``'s model (``a.alpha``,
    ``a.resolution``, on ``a.threads``) compiled for this machine's ``x86`` profile at the template
    defaults with the families' ``fields`` (a dict) replaced (:func:`families_with`); ``describe(out,
    cfg, w)`` (the build's extra columns, a dict) taken while they are in force; then all timed
    interleaved (:func:`time_against_reference`, alternating). Returns ``(cfg, rows)``
    (:func:`build_rows` against ``base``)."""
    import tempfile
    from pathlib import Path

    from mntvm.compile.build import compile_model

    cfg, w, x, ref = model_and_reference(a.alpha, a.resolution, a.threads)
    runners, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fields in settings:
            with families_with(**fields):
                out = compile_model(cfg, Path(tmp) / name, target="x86", weights=w, schedules="none")
                info[name] = describe(out, cfg, w)
            runners[name] = artifact_runner(out, x)
        diffs, times = time_against_reference(runners, ref, a, alternate=True)
    return cfg, build_rows(times, diffs, info, base)


def print_builds(rows: dict, base: str, extras=()) -> None:
    """The table of :func:`build_rows`: build, median and p90 ms, the ratio to ``base``'s median,
    max |diff|, then ``extras``: ``(header, row -> text)`` columns, right-aligned (a header that
    starts with a space: left-aligned, last)."""
    ratio = "vs_" + base.replace("-", "_")
    width = max(len(k) for k in ["build", *rows])
    cells = {k: [f(r) for _, f in extras] for k, r in rows.items()}
    widths = [max([len(h)] + [len(c[i]) for c in cells.values()]) for i, (h, _) in enumerate(extras)]

    def line(first, stats, extra):
        return " ".join([f"{first:{width}s}", *stats] + [(f"{e:{wd}s}" if h.startswith(" ") else f"{e:>{wd}s}")
                                                         for (h, _), e, wd in zip(extras, extra, widths)]).rstrip()

    print(line("build", [f"{'median ms':>10s}", f"{'p90 ms':>9s}", f"{'x ' + base:>12s}", f"{'max|diff|':>10s}"],
               [h for h, _ in extras]))
    for k, r in rows.items():
        print(line(k, [f"{r['median_ms']:10.3f}", f"{r['p90_ms']:9.3f}", f"{r[ratio]:12.3f}",
                       f"{r['max_abs_diff']:10.1e}"], cells[k]))
