"""α×ρ sweep: real latency of every MobileNetV1 variant against the paper's cost and published accuracy.

For each (width multiplier α, resolution) pair the sweep compiles the model for a target profile
(artifacts cached under ``cache_dir()/artifacts/``, see :mod:`mntvm.sweep.cache`, so a re-run does
not recompile), benchmarks it here or on a board handed out by TVM's RPC tracker
(:func:`mntvm.bench.benchmark`), and reports per variant ``alpha, resolution, madds, params, top1,
median_ms, p90_ms, gflops, board, max_abs_diff, pareto, retried``.

Many boards: with ``tracker``/``key``, one worker thread per board registered under the key; each
worker calls ``benchmark(..., tracker=, key=)`` and the *tracker* decides which free board runs the
variant. An attempt that fails (board died) or exceeds its bounded wait (board hung, or no board
handed out) is retried (the tracker then hands out another board); the records say what was retried.

Results are appended to ``out`` (JSON lines, :class:`mntvm.sweep.results.ResultsFile`) as each
variant finishes, each with the settings that produced it; ``resume=True`` keeps the lines already
there and runs only the missing variants, and refuses lines measured with other settings (another
``repeat``, ``warmup``, ``threads``, target, ``mcpu``/``mattr`` or ``seed``): the summary's settings
are those of every line it holds.

Every artifact the sweep uses is touched, and after the run the artifact cache is pruned to
``cache_max_bytes`` (default ``MNTVM_CACHE_MAX_MB`` or 2 GiB), least recently used first, sparing
what this sweep used (:func:`mntvm.sweep.cache.prune_cache`).

Bad input (α/resolution the model rejects, unknown target, unreachable tracker, key without boards,
an existing ``out`` without ``resume``) raises :class:`MntvmError` before any compile starts and
before ``out`` is touched.
"""
from __future__ import annotations

import datetime as _dt
import os
import threading
import time
from collections import deque
from pathlib import Path

from mntvm.bench import benchmark, check_run_args
from mntvm.compile import compile_model, load_artifact
from mntvm.core import arch
from mntvm.core.console import Progress
from mntvm.core.errors import MntvmError, one_line
from mntvm.core.threads import check_threads
from mntvm.model import MobileNetConfig
from mntvm.model import weights as W
from mntvm.model.cost import cost_report
from mntvm.remote.rpc import status
from mntvm.sweep.cache import (artifact_dir, artifact_schedules_kind, cache_limit, cache_relative, from_cache,
                               prune_cache, schedules_identity, touch_artifact)
from mntvm.sweep.results import (DEFAULT_ALPHAS, DEFAULT_RESOLUTIONS, ResultsFile, budget_pick, label,
                                 pareto_flags, read_out, run_settings, settings_mismatch, top1, top1_table)
from mntvm.targets import get_profile


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Checks: everything before any compile starts and before `out` is touched
# ---------------------------------------------------------------------------------------------
def _check_runs(repeat, warmup, threads, budget_ms, timeout_s, attempts) -> None:
    check_run_args(repeat, warmup, threads)
    if budget_ms is not None and not budget_ms > 0:
        raise MntvmError(f"--budget-ms must be > 0 (got {budget_ms:g})")
    if not timeout_s > 0 or attempts < 1:
        raise MntvmError("--timeout must be > 0 and --attempts >= 1")


def _loads(d: Path) -> bool:
    """Whether a cached artifact is whole (its library matches its metadata); else it is rebuilt."""
    try:
        load_artifact(d)
        return True
    except MntvmError:
        return False


def _check_runs_here(profile) -> None:
    """Without a tracker the variants run on this machine: the target must be its CPU."""
    here = arch.local()
    if profile.is_gpu or profile.family != arch.family(here):
        raise MntvmError(f"target '{profile.name}' ({profile.family}) does not run on this {here} "
                         "machine: benchmark it on its board with --tracker HOST:PORT --key KEY")


def _check_boards(tracker: str | None, key: str | None) -> tuple[list[str], int]:
    """The servers registered under ``key`` and how many boards they are."""
    if not (tracker and key):
        raise MntvmError("--tracker and --key go together (the tracker hands out a board registered under the key)")
    st = status(tracker)
    known = st["keys"].get(key)
    if not known or not known["total"]:
        names = ", ".join(sorted(k for k, v in st["keys"].items() if v["total"])) or "none"
        raise MntvmError(f"no board is registered under key '{key}' at tracker {tracker} (keys: {names})")
    return sorted(s["addr"] for s in st["servers"] if s["key"] == key), known["total"]


def _check_out(out_path: Path | None, resume: bool, settings: dict) -> dict[str, dict]:
    """The results already in ``out_path`` (with ``resume``, measured with ``settings``), by variant label."""
    done: dict[str, dict] = {}
    if resume and out_path is None:
        raise MntvmError("--resume needs --out (the results file to continue)")
    if out_path is None:
        return done
    if out_path.is_dir() or not out_path.parent.is_dir():
        raise MntvmError(f"--out {out_path}: not a file in an existing folder")
    if not os.access(out_path.parent, os.W_OK) or (out_path.exists() and not os.access(out_path, os.W_OK)):
        raise MntvmError(f"--out {out_path}: not writable")
    if out_path.exists() and out_path.stat().st_size and not resume:
        raise MntvmError(f"--out {out_path} already has results: pass --resume to continue that sweep, "
                         "or choose another file")
    if resume:
        recs = read_out(out_path)
        why = settings_mismatch(recs, settings, out_path)
        if why:
            raise MntvmError(why)
        done = {label(r["alpha"], r["resolution"]): r for r in recs}
    return done


# ---------------------------------------------------------------------------------------------
# Running the variants
# ---------------------------------------------------------------------------------------------
class _Attempt:
    """One benchmark of one artifact in a daemon thread, so the caller can give up on a hung board."""

    def __init__(self, run: "_Run", v: str, art: Path):
        self.run, self.v, self.art = run, v, art
        self.board: str | None = None
        self.t_board: float | None = None
        self.result: dict | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._bench, name=f"bench {v}", daemon=True)

    def _on_board(self, board: str) -> None:
        self.board, self.t_board = board, time.monotonic()
        self.run.running(self.v, board, f"{self.v} running on {board}")

    def _bench(self) -> None:
        try:
            self.result = benchmark(str(self.art), **self.run.bench_kw, progress=False, on_board=self._on_board)
        except BaseException as e:  # noqa: BLE001 - reported as this attempt's error
            self.error = e


class _Run:
    """The state of one sweep, shared by its compile and bench threads (lists/dicts under ``lock``)."""

    def __init__(self, profile, compile_kw: dict, settings: dict, tracker: str | None, bench_kw: dict,
                 costs: dict, sink: ResultsFile | None, prog: Progress):
        self.profile, self.compile_kw, self.settings = profile, compile_kw, settings
        self.seed, self.tracker = settings["seed"], tracker
        self.bench_kw, self.timeout_s, self.wait_s = bench_kw, bench_kw["timeout_s"], bench_kw["wait_s"]
        self.profile_meta = profile.to_metadata()
        self.sched = schedules_identity()
        self.costs, self.sink, self.prog = costs, sink, prog
        self.results: dict[str, dict] = {}
        self.failed: list[dict] = []
        self.compiled: list[str] = []
        self.used: list[Path] = []  # the artifacts this sweep uses (spared when the cache is pruned)
        self.hung = 0
        self.fatal: list[BaseException] = []
        self.lock = threading.Lock()
        self._boards: dict[str, str] = {}  # running variant -> its board (or what it waits for)

    # ---- progress: the board of each running variant, and one line per event -----------------
    def running(self, v: str, board: str, log: str | None = None) -> None:
        """``v`` is now at ``board`` ("compiling", an address, ...); ``log`` is shown off a terminal."""
        with self.lock:
            self._boards[v] = board
            text = ", ".join(f"{k}: {b}" for k, b in self._boards.items())
        self.prog.postfix(text)
        if log and not self.prog.tty:
            self.prog.note(log)

    def settled(self, v: str, msg: str, finished: bool) -> None:
        """``v`` left its board: finished (counted), or back in the queue for a retry."""
        with self.lock:
            self._boards.pop(v, None)
            text = ", ".join(f"{k}: {b}" for k, b in self._boards.items())
        if finished:
            self.prog.advance()
        self.prog.postfix(text)
        self.prog.note(msg)

    # ---- one variant -----------------------------------------------------------------------------
    def prepare(self, cfg) -> tuple[Path, bool]:
        """The variant's artifact, compiled unless cached → (folder, was cached)."""
        v = label(cfg.alpha, cfg.resolution)
        self.running(v, "compiling", f"{v} compiling")
        w = W.load(cfg, None, self.seed)
        dtype = self.compile_kw["dtype"]
        d = artifact_dir(cfg, self.profile_meta, W.digest(w) + ("" if dtype == "float32" else f"-{dtype}"), self.sched)
        with self.lock:
            self.used.append(d)
        if _loads(d):
            touch_artifact(d)  # used now: the last to be pruned
            return d, True
        # weights=None + seed: the artifact records random(seed=…), which bench's reference re-creates
        compile_model(cfg, d, weights=None, seed=self.seed, **self.compile_kw)
        with self.lock:
            self.compiled.append(v)
        return d, False

    def attempt(self, cfg, art: Path) -> tuple[dict | None, str | None, str | None]:
        """One bounded benchmark attempt → (result, error, board)."""
        a = _Attempt(self, label(cfg.alpha, cfg.resolution), art)
        t0 = time.monotonic()
        a.thread.start()
        while a.thread.is_alive():
            a.thread.join(0.2)
            if not a.thread.is_alive() or not self.tracker:
                continue
            now = time.monotonic()
            if a.t_board is None and now - t0 > self.wait_s + 30:
                return None, f"no board handed out within {self.wait_s:g}s", None
            if a.t_board is not None and now - a.t_board > self.timeout_s:
                # A hung board: abandon the attempt (its thread is a daemon; the result is dropped).
                self._count_hung()
                return None, f"board {a.board} did not finish within {self.timeout_s:g}s", a.board
        if a.error is not None:
            if isinstance(a.error, KeyboardInterrupt):
                raise a.error
            if "stopped answering" in str(a.error):  # bench left a thread blocked on that board
                self._count_hung()
            return None, one_line(a.error, with_type=True), a.board
        return a.result, None, a.result.get("board") or a.board

    def _count_hung(self) -> None:
        with self.lock:
            self.hung += 1

    def finish(self, cfg, art: Path, cached: bool, r: dict, retried: list) -> None:
        v = label(cfg.alpha, cfg.resolution)
        c = self.costs[v]
        rec = {
            "alpha": cfg.alpha, "resolution": cfg.resolution, "madds": c["total_madds"],
            "params": c["total_params"], "top1": top1(cfg.alpha, cfg.resolution),
            "median_ms": r["median_ms"], "p90_ms": r["p90_ms"],
            "gflops": 2.0 * c["total_madds"] / (r["median_ms"] * 1e-3) / 1e9,
            "board": r.get("board"), "max_abs_diff": r["max_abs_diff"], "pareto": None, "retried": retried,
            "min_ms": r.get("min_ms"), "mean_ms": r.get("mean_ms"), "repeat": r.get("repeat"),
            "threads": r.get("threads"), "target": self.profile.name, "artifact": str(art), "cached": cached,
            "schedules": self.sched["id"], "finished": _now(), "settings": self.settings,
            "dtype": self.settings["dtype"],
        }
        if self.sink is not None:  # the file names the artifact relative to the cache: no absolute path
            self.sink.append({**rec, "artifact": cache_relative(art)})
        with self.lock:
            self.results[v] = rec
        retry_note = f", after {len(retried)} retr{'y' if len(retried) == 1 else 'ies'}" if retried else ""
        self.settled(v, f"{v} on {rec['board']}: median {rec['median_ms']:.3f} ms, "
                        f"{rec['gflops']:.2f} GFLOP/s{retry_note}", finished=True)

    def fail(self, cfg, errors: list) -> None:
        v = label(cfg.alpha, cfg.resolution)
        with self.lock:
            self.failed.append({"alpha": cfg.alpha, "resolution": cfg.resolution, "errors": errors})
        self.settled(v, f"{v} FAILED: {errors[-1]['error']}", finished=True)

    # ---- all variants ----------------------------------------------------------------------------
    def here(self, todo: list) -> None:
        """Compile then benchmark one variant at a time, so compiles never disturb timings."""
        for cfg in todo:
            v = label(cfg.alpha, cfg.resolution)
            art, cached = self.prepare(cfg)
            self.running(v, "local", f"{v} running on local")
            r, err, _ = self.attempt(cfg, art)
            if err:
                self.fail(cfg, [{"board": "local", "error": err}])
            else:
                self.finish(cfg, art, cached, r, [])


class _BoardQueue:
    """One compile thread feeding ``n_boards`` bench workers; each worker asks the tracker for a board.

    A failed attempt goes back to the front of the queue (another worker, so another board, takes
    it) until ``attempts`` attempts have failed.
    """

    def __init__(self, run: _Run, todo: list, n_boards: int, attempts: int):
        self.run, self.todo, self.attempts = run, todo, attempts
        self.n_workers = max(1, min(n_boards, len(todo)))
        self.ready: deque = deque()
        self.cond = threading.Condition()
        self.compiling, self.inflight = True, 0

    def compiler(self) -> None:
        try:
            for cfg in self.todo:
                if self.run.fatal:
                    break
                art, cached = self.run.prepare(cfg)
                self.run.running(label(cfg.alpha, cfg.resolution), "waiting for a board")
                with self.cond:
                    self.ready.append((cfg, art, cached, []))
                    self.cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - re-raised by sweep()
            self.run.fatal.append(e)
        finally:
            with self.cond:
                self.compiling = False
                self.cond.notify_all()

    def _next(self):
        """The next variant to benchmark, or None when there is nothing left (or a fatal error)."""
        with self.cond:
            while True:
                while not self.ready and not self.run.fatal and (self.compiling or self.inflight):
                    self.cond.wait(0.5)
                if self.run.fatal:
                    return None
                if self.ready:
                    self.inflight += 1
                    return self.ready.popleft()
                if not (self.compiling or self.inflight):
                    return None

    def worker(self) -> None:
        while (item := self._next()) is not None:
            cfg, art, cached, errors = item
            try:
                r, err, board = self.run.attempt(cfg, art)
                if err is None:
                    self.run.finish(cfg, art, cached, r, errors)
                else:
                    errors = errors + [{"board": board, "error": err}]
                    if len(errors) >= self.attempts:
                        self.run.fail(cfg, errors)
                    else:
                        v = label(cfg.alpha, cfg.resolution)
                        self.run.settled(v, f"{v} retrying: attempt {len(errors)} on {board or 'no board'} "
                                            f"failed: {err}", finished=False)
                        with self.cond:
                            self.ready.appendleft((cfg, art, cached, errors))
            except BaseException as e:  # noqa: BLE001 - re-raised by sweep()
                self.run.fatal.append(e)
            finally:
                with self.cond:
                    self.inflight -= 1
                    self.cond.notify_all()

    def drain(self) -> None:
        threads = [threading.Thread(target=self.compiler, name="sweep compile", daemon=True)]
        threads += [threading.Thread(target=self.worker, name=f"sweep worker {i}", daemon=True)
                    for i in range(self.n_workers)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------
def sweep(
    target: str,
    alphas=DEFAULT_ALPHAS,
    resolutions=DEFAULT_RESOLUTIONS,
    tracker: str | None = None,
    key: str | None = None,
    repeat: int = 30,
    warmup: int = 3,
    threads: int | None = None,
    budget_ms: float | None = None,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int = 0,
    wait_s: float | None = None,
    timeout_s: float = 600.0,
    attempts: int = 3,
    progress: bool = True,
    targets_dir: str | os.PathLike | None = None,
    mcpu: str | None = None,
    mattr: list[str] | None = None,
    cache_max_bytes: int | None = None,
    dtype: str = "float32",
) -> dict:
    """Compile and benchmark every (α, resolution) variant; return the sweep as a JSON-able dict.

    ``timeout_s`` bounds one attempt once a board runs it (a hung board costs at most that);
    ``wait_s`` (default ``timeout_s``) bounds the wait for the tracker to hand out a board.
    ``attempts`` is per variant with a tracker (a local run is not retried). ``mcpu``/``mattr``
    refine the target profile's CPU (as for ``compile_model``). ``cache_max_bytes`` bounds the
    artifact cache after the run (default: ``MNTVM_CACHE_MAX_MB`` MiB, else 2048). ``dtype="int8"``
    builds every variant in int8 (quantized from its seeded weights and seeded calibration inputs;
    GFLOP/s then counts integer ops); a results file holds one dtype (run a second sweep with
    another ``--output`` for the other, or ``benchmarks/variants.py --dtype both``).
    """
    if dtype not in ("float32", "int8"):
        raise MntvmError(f"--dtype {dtype!r}: choose float32 or int8")
    cfgs = [MobileNetConfig(alpha=float(a), resolution=int(r)) for a in alphas for r in resolutions]
    if not cfgs:
        raise MntvmError("nothing to sweep: give at least one alpha and one resolution")
    _check_runs(repeat, warmup, threads, budget_ms, timeout_s, attempts)
    if tracker is None:
        check_threads(threads)  # runs here: at most this machine's cores, refused before any compile
    limit = cache_limit(cache_max_bytes)
    wait_s = float(wait_s) if wait_s is not None else float(timeout_s)
    profile = get_profile(target, targets_dir=targets_dir, mcpu=mcpu, mattr=mattr)
    profile.check_toolchain()
    if dtype == "int8":
        profile.check_int8()
    if tracker is None and key is None:
        _check_runs_here(profile)
        servers, n_boards = [], 1
    else:
        servers, n_boards = _check_boards(tracker, key)
    out_path = Path(out) if out is not None else None
    settings = run_settings(profile.name, mcpu, mattr, repeat, warmup, threads, seed, dtype)
    done = _check_out(out_path, resume, settings)

    costs = {label(c.alpha, c.resolution): cost_report(c) for c in cfgs}
    todo = [c for c in cfgs if label(c.alpha, c.resolution) not in done]
    bench_kw = dict(repeat=repeat, warmup=warmup, threads=threads, tracker=tracker, key=key, wait_s=wait_s,
                    timeout_s=timeout_s)  # bench bounds each RPC step itself; attempt()'s watchdog is the backstop
    prog = Progress(len(cfgs), "sweep", enabled=progress, done=len(cfgs) - len(todo), log_events=True)
    sink = ResultsFile(out_path) if out_path is not None else None
    compile_kw = dict(target=target, targets_dir=targets_dir, mcpu=mcpu, mattr=mattr, dtype=dtype)
    run = _Run(profile, compile_kw, settings, tracker, bench_kw, costs, sink, prog)
    t_start = time.time()
    try:
        if tracker:
            _BoardQueue(run, todo, n_boards, attempts).drain()
        else:
            run.here(todo)
    finally:
        prog.close()
        if sink is not None:
            sink.close()
    if run.fatal:
        raise run.fatal[0]
    resumed = [from_cache(r["artifact"]) for r in done.values() if r.get("artifact")]
    cache = prune_cache(limit, keep=run.used + resumed)
    setup = {"target": profile.name, "target_description": profile.description, "tracker": tracker, "key": key,
             "servers": servers, "mcpu": settings["mcpu"], "mattr": settings["mattr"]}
    runs = {"repeat": repeat, "warmup": warmup, "threads": threads, "seed": seed, "cache": cache}
    return _summary(run, setup, runs, [label(c.alpha, c.resolution) for c in cfgs], done, budget_ms, out_path,
                    time.time() - t_start)


def _summary(run: _Run, setup: dict, runs: dict, wanted: list[str], done: dict[str, dict], budget_ms: float | None,
             out_path: Path | None, seconds: float) -> dict:
    """The sweep as returned: this run's and the resumed variants, Pareto flags, budget verdict."""
    import tvm

    recs = []
    for v in wanted:
        r = run.results.get(v) or done.get(v)
        if r is not None:
            r = dict(r)
            c = run.costs[v]  # the cost model is the authority, also for resumed lines
            r.update(madds=c["total_madds"], params=c["total_params"], top1=top1(r["alpha"], r["resolution"]))
            r.setdefault("retried", [])
            if r.get("artifact"):
                r["artifact"] = str(from_cache(r["artifact"]))
            recs.append(r)
    pareto_flags(recs)
    kinds = sorted({artifact_schedules_kind(r.get("artifact")) for r in recs} - {None})
    return {
        **setup,
        "boards": sorted({r["board"] for r in recs if r.get("board")}),
        "tvm_version": tvm.__version__, "schedules": {**run.sched, "kinds": kinds},
        "dtype": run.settings["dtype"],
        **runs,
        "date": _now(), "seconds": round(seconds, 2),
        "variants": recs,
        "retried": [{"alpha": r["alpha"], "resolution": r["resolution"], **t} for r in recs for t in r["retried"]],
        "failed": run.failed,
        "ran": [label(r["alpha"], r["resolution"]) for r in recs if label(r["alpha"], r["resolution"]) in run.results],
        "resumed": [v for v in wanted if v in done],
        "compiled": [v for v in wanted if v in run.compiled],
        "out": str(out_path) if out_path is not None else None,
        "top1_source": top1_table()["source"]["url"],
        "budget": budget_pick(recs, budget_ms) if (budget_ms is not None and recs) else None,
        "hung_attempts": run.hung,
    }
