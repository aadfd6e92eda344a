"""A sweep's data: variant labels, published top-1, the JSON-lines results file, Pareto and budget.

The results file holds one JSON object per finished variant (``alpha, resolution, madds, params,
top1, median_ms, p90_ms, gflops, board, max_abs_diff, pareto, retried`` and more, and ``settings``:
what produced it, :func:`run_settings`), each appended as one whole line (:class:`ResultsFile`) so
that a killed sweep leaves whole lines behind and ``resume`` can run only the missing variants
(:func:`read_out`), after checking that the lines were measured as this run asks
(:func:`settings_mismatch`).
"""
from __future__ import annotations

import functools
import json
import math
import os
import threading
from pathlib import Path

from mntvm.core.errors import MntvmError
from mntvm.model.network import ALPHAS as DEFAULT_ALPHAS
from mntvm.model.network import RESOLUTIONS as DEFAULT_RESOLUTIONS

_TOP1_FILE = Path(__file__).resolve().parent / "data" / "top1.json"


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
        raise MntvmError(f"cannot read the shipped top-1 table data/top1.json: {e}") from None


def top1(alpha: float, resolution: int) -> float | None:
    """Published ImageNet top-1 (%) of the reference checkpoint, or None where none is published."""
    return top1_table()["top1"].get(label(alpha, resolution))


# ---------------------------------------------------------------------------------------------
# The results file (JSON lines, appended atomically per line)
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


# What shapes a measurement, as the option that sets it (in the order a mismatch is named).
SETTING_OPTIONS = {"target": "--target", "mcpu": "--mcpu", "mattr": "--mattr", "repeat": "--repeat",
                   "warmup": "--warmup", "threads": "--threads", "seed": "--seed", "dtype": "--dtype"}
_SETTING_DEFAULTS = {"dtype": "float32"}  # what lines written before a setting existed were measured with


def run_settings(target: str, mcpu: str | None, mattr, repeat: int, warmup: int, threads: int | None,
                 seed: int, dtype: str = "float32") -> dict:
    """The ``settings`` each results line records: target profile name, ``mcpu``/``mattr`` as asked
    (None: the profile's own), repeat, warmup, threads (None: the board's default) and weights seed."""
    if isinstance(mattr, str):
        mattr = [a.strip() for a in mattr.split(",") if a.strip()]
    return {"target": target, "mcpu": mcpu, "mattr": list(mattr) if mattr is not None else None,
            "repeat": int(repeat), "warmup": int(warmup), "threads": None if threads is None else int(threads),
            "seed": int(seed), "dtype": dtype}


def _show(v) -> str:
    if v is None:
        return "none (the default)"
    return (",".join(v) or "none") if isinstance(v, list) else str(v)


def settings_mismatch(records: list[dict], settings: dict, path) -> str | None:
    """Why the lines of ``path`` cannot be resumed by a run with ``settings`` (one line), or None."""
    for r in records:
        old = r.get("settings")
        if not isinstance(old, dict):
            return (f"--resume: {path} holds results that do not record their settings (written by an older "
                    "mntvm); use another --output")
        for key, option in SETTING_OPTIONS.items():
            was = old.get(key, _SETTING_DEFAULTS.get(key))
            if was != settings[key]:
                return (f"--resume: {path} was measured with {option} {_show(was)}, this run asks for "
                        f"{_show(settings[key])}; use another --output or the same settings")
    return None


class ResultsFile:
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
