"""The sweep's artifact cache: each variant's compiled artifact under ``cache_dir()/artifacts/``,
named by a hash of everything that shapes its code, so a re-run does not recompile.

The key holds no absolute path (files are named relative to their folder and hashed by content):
moving a checkout or the cache keeps every entry valid. Results files name an artifact relative to
the cache folder (:func:`cache_relative`, :func:`from_cache`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mntvm.core.paths import cache_dir, data_dir

_PKG = Path(__file__).resolve().parent.parent  # the mntvm package
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
    code = sorted({p.relative_to(_PKG).as_posix() for pat in _CODE_FILES for p in _PKG.glob(pat) if p.is_file()})
    sha = _hash_files(sched, files)
    try:
        where = sched.resolve().relative_to(_PKG.parent).as_posix()
    except ValueError:
        where = sched.name
    return {"dir": where, "files": len(files), "sha256": sha, "id": f"schedules-{sha[:12]}",
            "code_sha256": _hash_files(_PKG, code)}


def artifact_dir(cfg, profile_meta: dict, weights_sha: str, sched: dict) -> Path:
    """``cache_dir()/artifacts/<tag>-<target>-<hash>``; the hash covers everything that shapes the code
    (model config, the target profile's contents, weights, schedules and code identities)."""
    target = {k: v for k, v in profile_meta.items() if k != "source"}  # where it was read from: not its code
    ident = {"model": cfg.to_dict(), "target": target, "weights_sha256": weights_sha,
             "schedules_sha256": sched["sha256"], "code_sha256": sched["code_sha256"]}
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return cache_dir() / "artifacts" / f"{cfg.tag}-{profile_meta['name']}-{h[:20]}"


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
