"""Where the shipped data folders (``targets/``, ``schedules/``) live.

In a source checkout (editable install, tests) they are the repository's top-level folders;
in a wheel (``pip install .``) setuptools maps them into ``mntvm/_data/``.
"""
from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent.parent  # the mntvm package


def data_dir(name: str) -> Path:
    """Return the folder holding shipped data ``name`` ("targets" or "schedules")."""
    checkout = _PKG.parent / name
    if checkout.is_dir() and (_PKG.parent / "pyproject.toml").is_file():
        return checkout
    return _PKG / "_data" / name


def cache_dir() -> Path:
    """Per-user cache (compiled artifacts, emulated board userland). Override with MNTVM_CACHE."""
    import os

    root = os.environ.get("MNTVM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "mntvm"
