"""The sweep's artifact cache: each variant's compiled artifact under ``cache_dir()/artifacts/``,
named by a hash of everything that shapes its code, so a re-run does not recompile.

The key holds no absolute path (files are named relative to their folder and hashed by content):
moving a checkout or the cache keeps every entry valid. Results files name an artifact relative to
the cache folder (:func:`cache_relative`, :func:`from_cache`).

The artifact folders are bounded in size (:func:`prune_cache`, least recently used first; a sweep
touches each artifact it uses and prunes after it ran). Only ``artifacts/`` is ever pruned: the rest
of the cache folder (the emulated board's userland, ``board-*/``) is not an artifact.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from mntvm.core.atomic import recover_all, remove_dir
from mntvm.core.errors import MntvmError
from mntvm.core.paths import PACKAGE_DIR, cache_dir, data_dir

DEFAULT_CACHE_MAX_MB = 2048  # MiB of artifacts a sweep leaves behind (env MNTVM_CACHE_MAX_MB)
_MB = 1 << 20
# Sources whose change changes the compiled code: part of the artifact cache key.
_CODE_FILES = ("compile/*.py", "model/*.py", "targets/*.py", "templates/*.py", "tuning/*.py")


def _hash_files(root: Path, rels) -> str:
    h = hashlib.sha256()
    for rel in rels:
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return h.hexdigest()


def schedules_identity() -> dict:
    """What the compiler applies besides the model: the shipped ``schedules/`` folder and the code.

    ``sha256`` covers every file under ``schedules/`` (path relative to it, and contents);
    ``code_sha256`` the mntvm sources that generate code (``compile/``, ``model/``, ``targets/``,
    ``templates/``). Both are in the artifact cache key. ``dir`` is the folder relative to the
    package's parent (``schedules`` in a checkout, ``mntvm/_data/schedules`` in a wheel).
    """
    sched = data_dir("schedules")
    files = sorted(p.relative_to(sched).as_posix() for p in sched.rglob("*") if p.is_file()) \
        if sched.is_dir() else []
    code = sorted({p.relative_to(PACKAGE_DIR).as_posix() for pat in _CODE_FILES for p in PACKAGE_DIR.glob(pat) if p.is_file()})
    sha = _hash_files(sched, files)
    try:
        where = sched.resolve().relative_to(PACKAGE_DIR.parent).as_posix()
    except ValueError:
        where = sched.name
    return {"dir": where, "files": len(files), "sha256": sha, "id": f"schedules-{sha[:12]}",
            "code_sha256": _hash_files(PACKAGE_DIR, code)}


def artifacts_dir() -> Path:
    """``cache_dir()/artifacts``: the folder of cached artifacts (the only part of the cache pruned)."""
    return cache_dir() / "artifacts"


def artifact_dir(cfg, profile_meta: dict, weights_sha: str, sched: dict) -> Path:
    """``cache_dir()/artifacts/<tag>-<target>-<hash>``; the hash covers everything that shapes the code
    (model config, the target profile's contents, weights, schedules and code identities)."""
    target = {k: v for k, v in profile_meta.items() if k != "source"}  # where it was read from: not its code
    ident = {"model": cfg.to_dict(), "target": target, "weights_sha256": weights_sha,
             "schedules_sha256": sched["sha256"], "code_sha256": sched["code_sha256"]}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return artifacts_dir() / f"{cfg.tag}-{profile_meta['name']}-{h[:20]}"


def cache_relative(path: str | os.PathLike) -> str:
    """``path`` relative to the cache folder (as results files name artifacts); as given if outside it."""
    try:
        return Path(path).relative_to(cache_dir()).as_posix()
    except ValueError:
        return str(path)


def from_cache(name: str | os.PathLike) -> Path:
    """The path of a :func:`cache_relative` name (an absolute one, from older results files, as is)."""
    return cache_dir() / name


def artifact_schedules_kind(path) -> str | None:
    """The ``schedules.kind`` an artifact's metadata records (``templates``, ...), None if unreadable."""
    try:
        return json.loads((Path(path) / "metadata.json").read_text())["schedules"]["kind"]
    except (OSError, TypeError, KeyError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------------------------
# Bounding the cache: least recently used artifacts go first
# ---------------------------------------------------------------------------------------------
def cache_limit(max_bytes: int | None = None) -> int:
    """The artifact cache's size limit in bytes: ``max_bytes`` if given, else ``MNTVM_CACHE_MAX_MB``
    (MiB), else :data:`DEFAULT_CACHE_MAX_MB`. A bad value is one :class:`MntvmError` line."""
    if max_bytes is not None:
        if not max_bytes >= 0:
            raise MntvmError(f"the cache limit must be >= 0 bytes (got {max_bytes})")
        return int(max_bytes)
    text = os.environ.get("MNTVM_CACHE_MAX_MB", "").strip()
    if not text:
        return DEFAULT_CACHE_MAX_MB * _MB
    try:
        mb = float(text)
    except ValueError:
        mb = float("nan")
    if not mb >= 0 or mb == float("inf"):
        raise MntvmError(f"MNTVM_CACHE_MAX_MB must be a number of MiB >= 0 (got {text!r})")
    return int(mb * _MB)


def touch_artifact(path: str | os.PathLike) -> None:
    """Mark an artifact folder used now (its mtime is its last use, which :func:`prune_cache` orders by)."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache still serves; it is just not reordered


def _size(path: Path) -> int:
    """The bytes of the files under ``path`` (links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _when(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def cache_entries() -> list[dict]:
    """The cached artifacts, least recently used first: ``name``, ``bytes``, ``last_used`` (ISO time)
    and ``mtime`` (seconds). Folders being written (``.NAME.tmp-PID-…``) are not entries."""
    entries = []
    try:
        children = list(artifacts_dir().iterdir())
    except OSError:
        return entries
    for p in children:
        if p.name.startswith(".") or p.is_symlink() or not p.is_dir():
            continue
        try:
            mtime = p.stat().st_mtime
        except OSError:
            continue
        entries.append({"name": p.name, "bytes": _size(p), "mtime": mtime, "last_used": _when(mtime)})
    return sorted(entries, key=lambda e: (e["mtime"], e["name"]))


def prune_cache(max_bytes: int | None = None, keep=()) -> dict:
    """Delete least recently used artifacts until the artifacts take at most ``max_bytes``
    (default :func:`cache_limit`); never one in ``keep`` (folders this sweep uses), never anything
    outside ``artifacts/``. Temp folders of killed writers are cleaned up on the way.

    Returns ``max_bytes, before_bytes, after_bytes, removed`` (names, oldest first),
    ``freed_bytes, kept`` (artifacts left), ``over`` (still over the limit: what ``keep`` holds is
    bigger) and ``errors`` (one line per folder that could not be removed).
    """
    limit = cache_limit(max_bytes)
    root = artifacts_dir()
    recover_all(root)  # temp folders of writers that are no longer running
    keep = {os.path.realpath(k) for k in keep}
    entries = cache_entries()
    total = before = sum(e["bytes"] for e in entries)
    removed, errors, freed = [], [], 0
    for e in entries:
        if total <= limit:
            break
        path = root / e["name"]
        if os.path.realpath(path) in keep:
            continue
        try:
            remove_dir(path)
        except OSError as err:
            errors.append(f"{e['name']}: {err.strerror or err}")
            continue
        removed.append(e["name"])
        total -= e["bytes"]
        freed += e["bytes"]
    return {"max_bytes": limit, "before_bytes": before, "after_bytes": total, "removed": removed,
            "freed_bytes": freed, "kept": len(entries) - len(removed), "over": total > limit, "errors": errors}


def clear_cache() -> dict:
    """Delete every cached artifact (the rest of the cache folder stays); as :func:`prune_cache`."""
    return prune_cache(0)


def show_cache(max_bytes: int | None = None) -> dict:
    """The cache folder: its artifacts (least recently used first), their total against the limit,
    and the other entries (``board-*`` userland...) with their sizes, which are never pruned."""
    entries = cache_entries()
    others = []
    try:
        children = sorted(cache_dir().iterdir())
    except OSError:
        children = []
    for p in children:
        if p != artifacts_dir():
            others.append({"name": p.name, "bytes": _size(p) if p.is_dir() and not p.is_symlink() else
                           p.lstat().st_size})
    return {"dir": str(cache_dir()), "max_bytes": cache_limit(max_bytes), "artifacts": entries,
            "artifact_bytes": sum(e["bytes"] for e in entries), "other": others}


def _mb(n: int) -> str:
    return f"{n / _MB:.1f} MB"


def format_cache(result: dict) -> str:
    """What ``mntvm cache show|prune|clear`` prints for :func:`show_cache` or :func:`prune_cache`."""
    if "artifacts" in result:  # show
        lines = [f"cache {result['dir']}: {len(result['artifacts'])} artifacts, {_mb(result['artifact_bytes'])} "
                 f"(limit {_mb(result['max_bytes'])}, least recently used pruned first)"]
        lines += [f"  {e['last_used']}  {_mb(e['bytes']):>10}  {e['name']}" for e in result["artifacts"]]
        lines += [f"  not pruned: {o['name']} ({_mb(o['bytes'])})" for o in result["other"]]
        return "\n".join(lines)
    lines = [f"removed {len(result['removed'])} artifacts ({_mb(result['freed_bytes'])}); {result['kept']} left, "
             f"{_mb(result['after_bytes'])} (limit {_mb(result['max_bytes'])})"]
    lines += [f"  removed {n}" for n in result["removed"]]
    lines += [f"  could not remove {e}" for e in result["errors"]]
    return "\n".join(lines)
