"""α×ρ sweep: real latency of every MobileNetV1 variant against the paper's cost and published accuracy.

For each (width multiplier α, resolution) pair the sweep compiles the model for a target profile
(artifacts cached under ``cache_dir()/artifacts/`` by a hash of model config, target profile
metadata, weights sha256 and schedules identity, so a re-run does not recompile), benchmarks it here
or on a board handed out by TVM's RPC tracker (:func:`mntvm.bench.benchmark`), and reports per
variant ``alpha, resolution, madds, params, top1, median_ms, p90_ms, gflops, board, max_abs_diff,
pareto, retried``.

Many boards: with ``tracker``/``key``, one worker thread per board registered under the key; each
worker calls ``benchmark(..., tracker=, key=)`` and the *tracker* decides which free board runs the
variant. An attempt that fails (board died) or exceeds its bounded wait (board hung, or no board
handed out) is retried (the tracker then hands out another board); the records say what was retried.

Results are appended to ``out`` (JSON lines, one ``os.write`` of a whole line with ``O_APPEND``, then
fsync) as each variant finishes; ``resume=True`` keeps the lines already there and runs only the
missing variants. Bad input (α/resolution the model rejects, unknown target, unreachable tracker,
key without boards, an existing ``out`` without ``resume``) raises :class:`MntvmError` before any
compile starts and before ``out`` is touched.

Public entry: :func:`sweep`; renderers :func:`format_table`, :func:`write_plot`, :func:`write_report`.
"""
from __future__ import annotations

import base64
import datetime as _dt
import functools
import hashlib
import html
import inspect
import io
import json
import math
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path

from mntvm.core.atomic import write_bytes
from mntvm.core.errors import MntvmError

DEFAULT_ALPHAS = (1.0, 0.75, 0.5, 0.25)
DEFAULT_RESOLUTIONS = (224, 192, 160, 128)
FIELDS = ("alpha", "resolution", "madds", "params", "top1", "median_ms", "p90_ms", "gflops", "board",
          "max_abs_diff", "pareto", "retried")
_TOP1_FILE = Path(__file__).resolve().parent / "data" / "top1.json"
# Sources whose change changes the compiled code: part of the artifact cache key.
_CODE_FILES = ("compile/*.py", "model/*.py", "targets/*.py", "templates/*.py")


# ---------------------------------------------------------------------------------------------
# Inputs, data, identities
# ---------------------------------------------------------------------------------------------
def label(alpha: float, resolution: int) -> str:
    """``α/res`` as printed everywhere (and the key of ``data/top1.json``), e.g. ``0.25/128``, ``1.0/224``."""
    return f"{float(alpha)!s}/{int(resolution)}"


def parse_list(text: str | None, kind: type, option: str) -> list:
    """``"1.0,0.75"`` → ``[1.0, 0.75]`` (duplicates dropped, order kept); one-line error otherwise."""
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    if not items:
        raise MntvmError(f"{option} needs a comma-separated list, got {text!r}")
    out = []
    for s in items:
        try:
            v = kind(s)
        except ValueError:
            raise MntvmError(f"{option}: {s!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(v):
            raise MntvmError(f"{option}: {s!r} is not a finite number")
        if v not in out:
            out.append(v)
    return out


@functools.lru_cache(maxsize=1)
def top1_table() -> dict:
    """The shipped ``data/top1.json`` (published TF-slim top-1, with its source)."""
    try:
        return json.loads(_TOP1_FILE.read_text())
    except (OSError, json.JSONDecodeError) as e:  # pragma: no cover - shipped file
        raise MntvmError(f"cannot read {_TOP1_FILE}: {e}") from None


def top1(alpha: float, resolution: int) -> float | None:
    """Published ImageNet top-1 (%) of the reference checkpoint, or None where none is published."""
    return top1_table()["top1"].get(label(alpha, resolution))


def _hash_files(paths) -> str:
    h = hashlib.sha256()
    for root, rel in paths:
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return h.hexdigest()


def schedules_identity() -> dict:
    """What the compiler applies besides the model: the shipped ``schedules/`` folder and the code.

    ``sha256`` covers every file under ``schedules/`` (path and contents); ``code_sha256`` the mntvm
    sources that generate code (``compile.py``, ``sched_*.py``, …). Both are in the artifact cache key.
    """
    from mntvm.core.paths import data_dir

    sched = data_dir("schedules")
    files = sorted(p.relative_to(sched).as_posix() for p in sched.rglob("*") if p.is_file()) \
        if sched.is_dir() else []
    pkg = Path(__file__).resolve().parent.parent  # the mntvm package
    code = sorted({p.relative_to(pkg).as_posix() for pat in _CODE_FILES for p in pkg.glob(pat) if p.is_file()})
    sha = _hash_files((sched, f) for f in files)
    return {"dir": str(sched), "files": len(files), "sha256": sha, "id": f"schedules-{sha[:12]}",
            "code_sha256": _hash_files((pkg, f) for f in code)}


def artifact_dir(cfg, profile_meta: dict, weights_sha: str, sched: dict) -> Path:
    """``cache_dir()/artifacts/<tag>-<target>-<hash>``; the hash covers everything that shapes the code."""
    from mntvm.core.paths import cache_dir

    ident = {"model": cfg.to_dict(), "target": profile_meta, "weights_sha256": weights_sha,
             "schedules_sha256": sched["sha256"], "code_sha256": sched["code_sha256"]}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir() / "artifacts" / f"{cfg.tag}-{profile_meta['name']}-{h[:20]}"


# ---------------------------------------------------------------------------------------------
# Results file (JSON lines, appended atomically per line)
# ---------------------------------------------------------------------------------------------
def read_out(path: str | os.PathLike) -> list[dict]:
    """Records in a results file; a torn or foreign line is ignored (that variant is simply re-run)."""
    recs = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return recs
    except OSError as e:
        raise MntvmError(f"cannot read {path}: {e.strerror}") from None
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r, dict) and {"alpha", "resolution", "median_ms"} <= r.keys():
            recs.append(r)
    return recs


class _JsonlOut:
    """Append one whole JSON line per call: a single ``os.write`` with O_APPEND, then fsync."""

    def __init__(self, path: Path):
        self.path, self.fd, self.lock = path, None, threading.Lock()

    def append(self, record: dict) -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self.lock:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
                end = os.lseek(self.fd, 0, os.SEEK_END)
                if end and os.pread(self.fd, 1, end - 1) != b"\n":
                    data = b"\n" + data  # a torn last line (killed mid-write elsewhere) stays its own line
            n = os.write(self.fd, data)
            while n < len(data):  # regular files write fully; finish anyway rather than tear
                n += os.write(self.fd, data[n:])
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------------------------------
# Analysis
# ---------------------------------------------------------------------------------------------
def pareto_flags(records: list[dict]) -> None:
    """Set ``pareto``: True when no other variant is both faster and more accurate (None: no top1)."""
    for r in records:
        if r.get("top1") is None or r.get("median_ms") is None:
            r["pareto"] = None
            continue
        r["pareto"] = not any(o is not r and o.get("top1") is not None and o["median_ms"] < r["median_ms"]
                              and o["top1"] > r["top1"] for o in records)


def budget_pick(records: list[dict], budget_ms: float) -> dict:
    """The most accurate variant whose median fits ``budget_ms``, and by how much."""
    fits = [r for r in records if r["median_ms"] <= budget_ms]
    if not fits:
        best = min(records, key=lambda r: r["median_ms"])
        over = best["median_ms"] - budget_ms
        return {"budget_ms": budget_ms, "variant": None, "fits": False, "fastest": label(best["alpha"], best["resolution"]),
                "over_ms": over, "message": f"no variant fits {budget_ms:g} ms: the fastest, "
                f"{label(best['alpha'], best['resolution'])}, takes {best['median_ms']:.3f} ms ({over:.3f} ms over)"}
    best = max(fits, key=lambda r: (r.get("top1") is not None, r.get("top1") or 0.0, r["madds"], -r["median_ms"]))
    margin = budget_ms - best["median_ms"]
    acc = f"top-1 {best['top1']:.1f}%" if best.get("top1") is not None else "top-1 unpublished"
    return {"budget_ms": budget_ms, "variant": label(best["alpha"], best["resolution"]), "fits": True,
            "alpha": best["alpha"], "resolution": best["resolution"], "top1": best.get("top1"),
            "median_ms": best["median_ms"], "margin_ms": margin, "margin_pct": 100.0 * margin / budget_ms,
            "message": f"budget {budget_ms:g} ms: {label(best['alpha'], best['resolution'])} ({acc}) "
                       f"runs in {best['median_ms']:.3f} ms, {margin:.3f} ms ({100.0 * margin / budget_ms:.0f}%) "
                       "under budget"}


# ---------------------------------------------------------------------------------------------
# Progress (stderr)
# ---------------------------------------------------------------------------------------------
class _Progress:
    """A bar over variants plus the board each running variant is on. On a terminal one redrawn
    line; otherwise one line per event (start on a board, done, retry) so logs stay readable."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled = total, done, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.running: dict[str, str] = {}
        self.lock = threading.Lock()

    def _draw(self, event: str | None) -> None:
        if not self.enabled:
            return
        frac = self.done / max(self.total, 1)
        bar = "#" * int(24 * frac)
        if self.tty:
            run = ", ".join(f"{v}: {b}" for v, b in self.running.items())
            line = f"\rsweep [{bar:<24}] {self.done}/{self.total}  {run}"
            sys.stderr.write(line[:160].ljust(100))
            if event:
                sys.stderr.write("\r" + f"sweep: {event}".ljust(100) + "\n")
        elif event:
            sys.stderr.write(f"sweep [{bar:<24}] {self.done}/{self.total}: {event}\n")
        sys.stderr.flush()

    def event(self, variant: str, board: str | None = None, msg: str | None = None, finished=False,
              drop=False) -> None:
        with self.lock:
            if finished:
                self.done += 1
            if finished or drop:
                self.running.pop(variant, None)
            elif board is not None:
                self.running[variant] = board
            self._draw(msg)

    def close(self) -> None:
        if self.tty:
            with self.lock:
                sys.stderr.write("\n")
                sys.stderr.flush()


# Board of the current thread's benchmark, as soon as the tracker hands it out. benchmark() looks
# up mntvm.rpc.open_session at call time; the wrapper reports the session's board to a callback
# registered for the calling thread only (no effect on any other caller).
_local = threading.local()


def _install_board_hook() -> None:
    from mntvm.remote import rpc

    if getattr(rpc.open_session, "_mntvm_sweep_hook", False):
        return
    orig = rpc.open_session

    @functools.wraps(orig)
    def open_session(*args, **kwargs):
        session = orig(*args, **kwargs)
        cb = getattr(_local, "on_board", None)
        if cb is not None:
            cb(session.board)
        return session

    open_session._mntvm_sweep_hook = True
    rpc.open_session = open_session


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
) -> dict:
    """Compile and benchmark every (α, resolution) variant; return the sweep as a JSON-able dict.

    ``timeout_s`` bounds one attempt once a board runs it (a hung board costs at most that);
    ``wait_s`` (default ``timeout_s``) bounds the wait for the tracker to hand out a board.
    ``attempts`` is per variant with a tracker (a local run is not retried).
    """
    from mntvm.model import weights as W
    from mntvm.bench.bench import benchmark, check_run_args
    from mntvm.model.cost import cost_report
    from mntvm.model.network import MobileNetConfig
    from mntvm.targets.profiles import get_profile

    # ---- validate everything before any compile starts and before `out` is touched ----------
    cfgs = [MobileNetConfig(alpha=float(a), resolution=int(r)) for a in alphas for r in resolutions]
    if not cfgs:
        raise MntvmError("nothing to sweep: give at least one alpha and one resolution")
    check_run_args(repeat, warmup, threads)
    if budget_ms is not None and not budget_ms > 0:
        raise MntvmError(f"--budget-ms must be > 0 (got {budget_ms:g})")
    if not timeout_s > 0 or attempts < 1:
        raise MntvmError("--timeout must be > 0 and --attempts >= 1")
    wait_s = float(wait_s) if wait_s is not None else float(timeout_s)
    profile = get_profile(target, targets_dir=targets_dir)
    profile.check_toolchain()
    if tracker is None and key is None:
        import platform

        host = {"amd64": "x86", "x86_64": "x86", "arm64": "aarch64", "aarch64": "aarch64"}.get(
            platform.machine().lower(), "armv7" if platform.machine().lower().startswith("arm") else "?")
        if profile.is_gpu or profile.family != host:
            raise MntvmError(f"target '{profile.name}' ({profile.family}) does not run on this {platform.machine()} "
                             "machine: benchmark it on its board with --tracker HOST:PORT --key KEY")
    servers: list[str] = []
    if tracker or key:
        from mntvm.remote.rpc import status

        if not (tracker and key):
            raise MntvmError("--tracker and --key go together (the tracker hands out a board registered under the key)")
        st = status(tracker)
        known = st["keys"].get(key)
        if not known or not known["total"]:
            names = ", ".join(sorted(k for k, v in st["keys"].items() if v["total"])) or "none"
            raise MntvmError(f"no board is registered under key '{key}' at tracker {tracker} (keys: {names})")
        servers = sorted(s["addr"] for s in st["servers"] if s["key"] == key)
        n_boards = known["total"]
    else:
        n_boards = 1
    out_path = Path(out) if out is not None else None
    done: dict[str, dict] = {}
    if resume and out_path is None:
        raise MntvmError("--resume needs --out (the results file to continue)")
    if out_path is not None:
        if out_path.is_dir() or not out_path.parent.is_dir():
            raise MntvmError(f"--out {out_path}: not a file in an existing folder")
        if not os.access(out_path.parent, os.W_OK) or (out_path.exists() and not os.access(out_path, os.W_OK)):
            raise MntvmError(f"--out {out_path}: not writable")
        if out_path.exists() and out_path.stat().st_size and not resume:
            raise MntvmError(f"--out {out_path} already has results: pass --resume to continue that sweep, "
                             "or choose another file")
        if resume:
            for r in read_out(out_path):
                if r.get("target") not in (None, profile.name):
                    raise MntvmError(f"--out {out_path} holds a sweep for target '{r['target']}', "
                                     f"not '{profile.name}'")
                done[label(r["alpha"], r["resolution"])] = r

    # ---- plan ------------------------------------------------------------------------------------
    import tvm

    profile_meta = profile.to_metadata()
    sched = schedules_identity()
    costs = {label(c.alpha, c.resolution): cost_report(c) for c in cfgs}
    wanted = [label(c.alpha, c.resolution) for c in cfgs]
    todo = [c for c in cfgs if label(c.alpha, c.resolution) not in done]
    prog = _Progress(len(cfgs), len(cfgs) - len(todo), progress)
    sink = _JsonlOut(out_path) if out_path is not None else None
    results: dict[str, dict] = {}
    failed: list[dict] = []
    compiled: list[str] = []
    lock = threading.Lock()
    fatal: list[BaseException] = []

    def prepare(cfg) -> tuple[Path, bool]:
        w = W.load(cfg, None, seed)
        d = artifact_dir(cfg, profile_meta, W.digest(w), sched)
        if (d / "metadata.json").is_file() and (d / "model.so").is_file():
            return d, True
        from mntvm.compile.build import compile_model

        # weights=None + seed: the artifact records random(seed=…), which bench's reference re-creates
        compile_model(cfg, d, target=target, weights=None, seed=seed, targets_dir=targets_dir)
        with lock:
            compiled.append(label(cfg.alpha, cfg.resolution))
        return d, False

    bench_kw = dict(repeat=repeat, warmup=warmup, threads=threads, tracker=tracker, key=key, wait_s=wait_s)
    try:
        params = inspect.signature(benchmark).parameters
    except (TypeError, ValueError):  # pragma: no cover
        params = {}
    if "timeout_s" in params:  # bench bounds each RPC step itself; our watchdog is the backstop
        bench_kw["timeout_s"] = timeout_s
    hook_kw = "on_board" if "on_board" in params else None
    hung = [0]
    if tracker and hook_kw is None:
        _install_board_hook()

    def attempt(cfg, art: Path) -> tuple[dict | None, str | None, str | None]:
        """One bounded benchmark attempt → (result, error, board)."""
        v = label(cfg.alpha, cfg.resolution)
        state: dict = {"board": None, "t_board": None}
        box: dict = {}

        def on_board(board: str) -> None:
            state["board"], state["t_board"] = board, time.monotonic()
            prog.event(v, board=board, msg=None if prog.tty else f"{v} running on {board}")

        def run() -> None:
            _local.on_board = on_board
            try:
                kw = dict(bench_kw, progress=False)
                if hook_kw:
                    kw[hook_kw] = on_board
                box["result"] = benchmark(str(art), **kw)
            except BaseException as e:  # noqa: BLE001 - reported as this attempt's error
                box["error"] = e

        th = threading.Thread(target=run, name=f"bench {v}", daemon=True)
        t0 = time.monotonic()
        th.start()
        while th.is_alive():
            th.join(0.2)
            if not th.is_alive() or not tracker:
                continue
            now = time.monotonic()
            if state["t_board"] is None and now - t0 > wait_s + 30:
                return None, f"no board handed out within {wait_s:g}s", None
            if state["t_board"] is not None and now - state["t_board"] > timeout_s:
                # A hung board: abandon the attempt (its thread is a daemon; the result is dropped).
                hung[0] += 1
                return None, f"board {state['board']} did not finish within {timeout_s:g}s", state["board"]
        if "error" in box:
            e = box["error"]
            if isinstance(e, KeyboardInterrupt):
                raise e
            msg = str(e).strip().splitlines()
            if "stopped answering" in str(e):  # bench left a thread blocked on that board
                hung[0] += 1
            return None, f"{type(e).__name__}: {msg[-1] if msg else ''}".strip(), state["board"]
        r = box["result"]
        return r, None, r.get("board") or state["board"]

    def record(cfg, art: Path, cached: bool, r: dict, retried: list) -> dict:
        v = label(cfg.alpha, cfg.resolution)
        c = costs[v]
        rec = {
            "alpha": cfg.alpha, "resolution": cfg.resolution, "madds": c["total_madds"],
            "params": c["total_params"], "top1": top1(cfg.alpha, cfg.resolution),
            "median_ms": r["median_ms"], "p90_ms": r["p90_ms"],
            "gflops": 2.0 * c["total_madds"] / (r["median_ms"] * 1e-3) / 1e9,
            "board": r.get("board"), "max_abs_diff": r["max_abs_diff"], "pareto": None, "retried": retried,
            "min_ms": r.get("min_ms"), "mean_ms": r.get("mean_ms"), "repeat": r.get("repeat"),
            "threads": r.get("threads"), "target": profile.name, "artifact": str(art), "cached": cached,
            "schedules": sched["id"], "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        return rec

    def finish(cfg, art, cached, r, retried) -> None:
        rec = record(cfg, art, cached, r, retried)
        v = label(cfg.alpha, cfg.resolution)
        if sink is not None:
            sink.append(rec)
        with lock:
            results[v] = rec
        retry_note = f", after {len(retried)} retr{'y' if len(retried) == 1 else 'ies'}" if retried else ""
        prog.event(v, finished=True, msg=f"{v} on {rec['board']}: median {rec['median_ms']:.3f} ms, "
                                          f"{rec['gflops']:.2f} GFLOP/s{retry_note}")

    def fail(cfg, errors: list) -> None:
        v = label(cfg.alpha, cfg.resolution)
        with lock:
            failed.append({"alpha": cfg.alpha, "resolution": cfg.resolution, "errors": errors})
        prog.event(v, finished=True, msg=f"{v} FAILED: {errors[-1]['error']}")

    t_start = time.time()
    try:
        if not tracker:
            # Here: compile then benchmark one variant at a time, so compiles never disturb timings.
            for cfg in todo:
                v = label(cfg.alpha, cfg.resolution)
                prog.event(v, board="compiling", msg=None if prog.tty else f"{v} compiling")
                art, cached = prepare(cfg)
                prog.event(v, board="local", msg=None if prog.tty else f"{v} running on local")
                r, err, _ = attempt(cfg, art)
                if err:
                    fail(cfg, [{"board": "local", "error": err}])
                else:
                    finish(cfg, art, cached, r, [])
        else:
            _run_boards(todo, n_boards, prepare, attempt, finish, fail, prog, attempts, fatal)
    finally:
        prog.close()
        if sink is not None:
            sink.close()
    if fatal:
        raise fatal[0]

    # ---- assemble ------------------------------------------------------------------------------
    recs = []
    for v in wanted:
        r = results.get(v) or done.get(v)
        if r is not None:
            r = dict(r)
            c = costs[v]  # the cost model is the authority, also for resumed lines
            r.update(madds=c["total_madds"], params=c["total_params"], top1=top1(r["alpha"], r["resolution"]))
            r.setdefault("retried", [])
            recs.append(r)
    pareto_flags(recs)
    retried = [{"alpha": r["alpha"], "resolution": r["resolution"], **t} for r in recs for t in r["retried"]]
    schedules_kinds = sorted({_artifact_sched_kind(r.get("artifact")) for r in recs} - {None})
    result = {
        "target": profile.name, "target_description": profile.description,
        "tracker": tracker, "key": key, "servers": servers,
        "boards": sorted({r["board"] for r in recs if r.get("board")}),
        "tvm_version": tvm.__version__, "schedules": {**sched, "kinds": schedules_kinds},
        "repeat": repeat, "warmup": warmup, "threads": threads, "seed": seed,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "seconds": round(time.time() - t_start, 2),
        "variants": recs, "retried": retried, "failed": failed,
        "ran": [label(r["alpha"], r["resolution"]) for r in recs if label(r["alpha"], r["resolution"]) in results],
        "resumed": [v for v in wanted if v in done],
        "compiled": [v for v in wanted if v in compiled],
        "out": str(out_path) if out_path is not None else None,
        "top1_source": top1_table()["source"]["url"],
        "budget": budget_pick(recs, budget_ms) if (budget_ms is not None and recs) else None,
        "hung_attempts": hung[0],
    }
    return result


def _run_boards(todo, n_boards, prepare, attempt, finish, fail, prog, attempts, fatal) -> None:
    """One compile thread feeding ``n_boards`` bench workers; each worker asks the tracker for a board."""
    ready: deque = deque()
    cond = threading.Condition()
    state = {"compiling": True, "inflight": 0}

    def compiler() -> None:
        try:
            for cfg in todo:
                if fatal:
                    break
                v = label(cfg.alpha, cfg.resolution)
                prog.event(v, board="compiling", msg=None if prog.tty else f"{v} compiling")
                art, cached = prepare(cfg)
                prog.event(v, board="waiting for a board", msg=None)
                with cond:
                    ready.append((cfg, art, cached, []))
                    cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - re-raised by sweep()
            fatal.append(e)
        finally:
            with cond:
                state["compiling"] = False
                cond.notify_all()

    def worker() -> None:
        while True:
            with cond:
                while not ready and not fatal and (state["compiling"] or state["inflight"]):
                    cond.wait(0.5)
                if fatal or not ready:
                    if fatal or not (state["compiling"] or state["inflight"]):
                        return
                    continue
                cfg, art, cached, errors = ready.popleft()
                state["inflight"] += 1
            try:
                r, err, board = attempt(cfg, art)
                if err is None:
                    finish(cfg, art, cached, r, errors)
                else:
                    v = label(cfg.alpha, cfg.resolution)
                    errors = errors + [{"board": board, "error": err}]
                    if len(errors) >= attempts:
                        fail(cfg, errors)
                    else:
                        prog.event(v, drop=True, msg=f"{v} retrying: attempt {len(errors)} on "
                                                     f"{board or 'no board'} failed: {err}")
                        with cond:
                            ready.appendleft((cfg, art, cached, errors))
            except BaseException as e:  # noqa: BLE001
                fatal.append(e)
            finally:
                with cond:
                    state["inflight"] -= 1
                    cond.notify_all()

    threads = [threading.Thread(target=compiler, name="sweep compile", daemon=True)]
    threads += [threading.Thread(target=worker, name=f"sweep worker {i}", daemon=True)
                for i in range(max(1, min(n_boards, len(todo))))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)


def _artifact_sched_kind(path) -> str | None:
    try:
        return json.loads((Path(path) / "metadata.json").read_text())["schedules"]["kind"]
    except (OSError, TypeError, KeyError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------------------------
# Renderers
# ---------------------------------------------------------------------------------------------
def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _retry_text(r: dict) -> str:
    return "; ".join(f"{t.get('board') or 'no board'}: {t['error']}" for t in r.get("retried") or [])


def format_table(result: dict) -> str:
    """The sweep as a printed table, then the budget verdict and retries."""
    head = (f"{'alpha':>5} {'res':>4} {'MMACs':>7} {'Mparams':>7} {'top1':>5} {'median ms':>10} {'p90 ms':>9} "
            f"{'GFLOP/s':>8} {'max|diff|':>9} {'pareto':>6}  board")
    lines = [f"sweep of {len(result['variants'])} variants for target {result['target']} "
             f"(TVM {result['tvm_version']}, {result['schedules']['id']}, repeat {result['repeat']})", head]
    for r in result["variants"]:
        p = {True: "*", False: "", None: "?"}[r["pareto"]]
        lines.append(f"{str(float(r['alpha'])):>5} {r['resolution']:>4d} {r['madds'] / 1e6:>7.1f} {r['params'] / 1e6:>7.3f} "
                     f"{_fmt(r['top1'], '.1f'):>5} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} "
                     f"{r['gflops']:>8.2f} {r['max_abs_diff']:>9.1e} {p:>6}  {r['board']}"
                     + (f"  (retried: {_retry_text(r)})" if r.get("retried") else ""))
    lines.append("pareto: * = no other variant is both faster and more accurate; ? = top-1 not published")
    if result.get("budget"):
        lines.append(result["budget"]["message"])
    for f in result.get("failed") or []:
        lines.append(f"FAILED {label(f['alpha'], f['resolution'])}: {f['errors'][-1]['error']}")
    return "\n".join(lines)


def plot_png(result: dict) -> bytes:
    """Two panels: latency vs top-1 (Pareto front joined, points labelled α/res) and latency vs
    mult-adds annotated with the achieved GFLOP/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result["variants"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    alphas = sorted({r["alpha"] for r in recs}, reverse=True)
    colors = {a: plt.cm.viridis(i / max(1, len(alphas) - 1) * 0.85) for i, a in enumerate(alphas)}

    acc = [r for r in recs if r.get("top1") is not None]
    for a in alphas:
        pts = [r for r in acc if r["alpha"] == a]
        if pts:
            ax1.scatter([r["median_ms"] for r in pts], [r["top1"] for r in pts], color=colors[a], s=42,
                        label=f"α={float(a)!s}", zorder=3)
    front = sorted((r for r in acc if r.get("pareto")), key=lambda r: r["median_ms"])
    if front:
        ax1.plot([r["median_ms"] for r in front], [r["top1"] for r in front], "-", color="crimson", lw=1.6,
                 label="Pareto front", zorder=2)
    for r in acc:
        ax1.annotate(label(r["alpha"], r["resolution"]), (r["median_ms"], r["top1"]), textcoords="offset points",
                     xytext=(5, 4), fontsize=8)
    if result.get("budget"):
        ax1.axvline(result["budget"]["budget_ms"], color="grey", ls="--", lw=1, label="budget")
    missing = [label(r["alpha"], r["resolution"]) for r in recs if r.get("top1") is None]
    if missing:
        ax1.text(0.01, 0.01, "no published top-1: " + ", ".join(missing), transform=ax1.transAxes, fontsize=7,
                 color="dimgrey", va="bottom")
    lat = [r["median_ms"] for r in recs]
    wide = max(lat) / max(min(lat), 1e-9) > 8  # a wide range: log axes keep small variants apart
    if wide:
        ax1.set_xscale("log")
        ax2.set_xscale("log")
    if max(r["madds"] for r in recs) / max(min(r["madds"] for r in recs), 1) > 8:
        ax2.set_yscale("log")
    ax1.margins(x=0.12, y=0.08)
    ax1.set_xlabel("median latency (ms" + (", log scale)" if wide else ")"))
    ax1.set_ylabel("ImageNet top-1 (%), published TF-slim checkpoints")
    ax1.set_title("latency vs accuracy")
    ax1.grid(alpha=0.3)
    if acc:
        ax1.legend(fontsize=8, loc="lower right")

    for a in alphas:
        pts = [r for r in recs if r["alpha"] == a]
        ax2.scatter([r["median_ms"] for r in pts], [r["madds"] / 1e6 for r in pts], color=colors[a], s=42,
                    label=f"α={float(a)!s}", zorder=3)
    for r in recs:
        ax2.annotate(f"{label(r['alpha'], r['resolution'])}\n{r['gflops']:.1f} GFLOP/s",
                     (r["median_ms"], r["madds"] / 1e6), textcoords="offset points", xytext=(5, -2), fontsize=7)
    ax2.margins(x=0.15, y=0.08)
    ax2.set_xlabel("median latency (ms" + (", log scale)" if wide else ")"))
    ax2.set_ylabel("mult-adds (millions, paper cost model)")
    ax2.set_title("latency vs mult-adds (labels: achieved GFLOP/s)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="lower right")
    boards = ", ".join(result.get("boards") or []) or "?"
    fig.suptitle(f"MobileNetV1 α×resolution sweep — target {result['target']}, board(s) {boards}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_plot(result: dict, path: str | os.PathLike) -> Path:
    return write_bytes(Path(path), plot_png(result))


def report_html(result: dict, png: bytes | None = None) -> str:
    """One self-contained HTML page: target, boards, TVM version, schedules identity, date, table, plots."""
    e = html.escape
    png = png if png is not None else plot_png(result)
    cols = ["α", "resolution", "mult-adds (M)", "params (M)", "top-1 %", "median ms", "p90 ms", "GFLOP/s",
            "max |diff|", "Pareto", "board", "retried"]
    rows = []
    for r in result["variants"]:
        cls = ' class="pareto"' if r["pareto"] else ""
        cells = [str(float(r["alpha"])), str(r["resolution"]), f"{r['madds'] / 1e6:.1f}", f"{r['params'] / 1e6:.3f}",
                 _fmt(r["top1"], ".1f", "unpublished"), f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
                 f"{r['gflops']:.2f}", f"{r['max_abs_diff']:.1e}", {True: "yes", False: "no", None: "n/a"}[r["pareto"]],
                 r.get("board") or "", _retry_text(r)]
        rows.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    sched = result["schedules"]
    meta = [("target", f"{result['target']} — {result.get('target_description', '')}"),
            ("board(s)", ", ".join(result.get("boards") or []) or "-"),
            ("tracker / key", f"{result['tracker']} / {result['key']}" if result.get("tracker") else "none (this machine)"),
            ("TVM version", result["tvm_version"]),
            ("schedules", f"{sched['id']} ({sched['files']} files in schedules/, sha256 {sched['sha256'][:16]}…; "
                          f"code {sched['code_sha256'][:12]}; kind: {', '.join(sched.get('kinds') or []) or '?'})"),
            ("runs", f"repeat {result['repeat']}, warmup {result['warmup']}, threads {result['threads'] or 'default'}"),
            ("date", result["date"])]
    budget = f"<p class=\"budget\">{e(result['budget']['message'])}</p>" if result.get("budget") else ""
    retried = ""
    if result.get("retried"):
        retried = "<h2>Retried</h2><ul>" + "".join(
            f"<li>{e(label(t['alpha'], t['resolution']))}: {e(t.get('board') or 'no board')}: {e(t['error'])}</li>"
            for t in result["retried"]) + "</ul>"
    failed = ""
    if result.get("failed"):
        failed = "<h2>Failed</h2><ul>" + "".join(
            f"<li>{e(label(f['alpha'], f['resolution']))}: {e(f['errors'][-1]['error'])}</li>"
            for f in result["failed"]) + "</ul>"
    src = top1_table()["source"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>MobileNetV1 sweep — {e(result['target'])}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
th, td {{ border: 1px solid #bbb; padding: 4px 9px; text-align: right; font-size: 14px; }}
th {{ background: #e8eef6; }}
tr.pareto td {{ background: #fff1d6; font-weight: bold; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }}
dt {{ font-weight: bold; }} dd {{ margin: 0; }}
.budget {{ font-size: 16px; padding: 6px 10px; background: #e6f4e6; display: inline-block; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
.note {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>MobileNetV1 α × resolution sweep</h1>
<dl>{''.join(f'<dt>{e(k)}</dt><dd>{e(v)}</dd>' for k, v in meta)}</dl>
{budget}
<table><thead><tr>{''.join(f'<th>{e(c)}</th>' for c in cols)}</tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<p class="note">Highlighted rows are on the Pareto front (no other variant is both faster and more accurate).
Mult-adds and params: the MobileNets paper's cost model. GFLOP/s = 2·mult-adds / median.
Top-1: published ImageNet accuracy of the reference checkpoints, <a href="{e(src['url'])}">{e(src['title'])}</a>;
latency is measured with seeded random weights (same computation). max |diff|: output vs the numpy reference.</p>
<img alt="latency vs top-1 and latency vs mult-adds" src="data:image/png;base64,{base64.b64encode(png).decode()}">
{retried}{failed}
</body></html>
"""


def write_report(result: dict, path: str | os.PathLike, png: bytes | None = None) -> Path:
    return write_bytes(Path(path), report_html(result, png).encode())

