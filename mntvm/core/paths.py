"""Where the shipped data folders (``targets/``, ``schedules/``) live, and the per-user cache.

In a source checkout (editable install, tests) they are the repository's top-level folders;
in a wheel (``pip install .``) setuptools maps them into ``mntvm/_data/``.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the installed mntvm package


def data_dir(name: str) -> Path:
    """Return the folder holding shipped data ``name`` ("targets" or "schedules")."""
    checkout = PACKAGE_DIR.parent / name
    if checkout.is_dir() and (PACKAGE_DIR.parent / "pyproject.toml").is_file():
        return checkout
    return PACKAGE_DIR / "_data" / name


def cache_dir() -> Path:
    """Per-user cache (compiled artifacts under ``artifacts/``, bounded by ``MNTVM_CACHE_MAX_MB``;
    the emulated board's userland under ``board-*/``). Override with MNTVM_CACHE."""
    root = os.environ.get("MNTVM_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "mntvm"
