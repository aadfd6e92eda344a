"""Calibration inputs for post-training quantization: the user's images, or seeded inputs.

A folder's ``.npy`` arrays ((3, R, R) or (N, 3, R, R), floating point, already normalized) and
``.jpg``/``.jpeg``/``.png`` images (decoded to RGB, resized to R x R bilinearly, scaled to [-1, 1]
as MobileNetV1 expects: ``x / 127.5 - 1``, NCHW) are read in sorted name order; other files are
ignored. Without a folder, the inputs are :func:`deterministic_input`'s, the same seeded gradient
plus noise that ``mntvm run`` and ``bench`` feed (image 0 is exactly their default input).

Public entry: :func:`load_calibration`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mntvm.core.errors import MntvmError, one_line
from mntvm.model.network import MobileNetConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def deterministic_input(shape, seed: int = 0) -> np.ndarray:
    """The documented deterministic input: a smooth colour gradient plus seeded noise, in [-1, 1]."""
    n, c, h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    base = np.stack([xx, yy, (xx * yy)], axis=0)[:c]
    noise = np.random.default_rng(seed).uniform(-0.25, 0.25, (n, c, h, w))
    return np.clip(base[None] + noise, -1, 1).astype(np.float32)


def normalize_image(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [-1, 1]: MobileNetV1's ``x / 127.5 - 1``."""
    return (np.asarray(rgb, np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1)


def _read_npy(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise MntvmError(f"cannot read calibration file {path}: {one_line(e)}") from None
    if x.dtype.kind != "f" or x.shape not in (shape, (x.shape[0],) + shape) or x.size == 0:
        raise MntvmError(f"calibration file {path} holds {x.dtype} {x.shape}, expected floating-point "
                         f"{shape} or (N, {', '.join(map(str, shape))})")
    if not np.all(np.isfinite(x)):
        raise MntvmError(f"calibration file {path} holds NaN or infinite values")
    return x.reshape((-1,) + shape).astype(np.float32)


def _read_image(path: Path, resolution: int) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise MntvmError(f"reading calibration image {path} needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((resolution, resolution), Image.BILINEAR)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MntvmError(f"cannot read calibration image {path}: {one_line(e)}") from None
    return normalize_image(np.asarray(rgb))[None]


def load_calibration(source: str | os.PathLike | None, cfg: MobileNetConfig, count: int = 16,
                     seed: int = 0) -> np.ndarray:
    """(N, 3, R, R) float32 calibration inputs for ``cfg``: up to ``count`` (0: all) from the
    folder ``source``, or ``count`` seeded inputs when ``source`` is None."""
    if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
        raise MntvmError(f"calibration count {count!r} is not an integer >= 0")
    r = cfg.resolution
    if source is None:
        if count == 0:
            raise MntvmError("calibration count 0 means every file of a folder; seeded inputs need a count >= 1")
        return deterministic_input((count, 3, r, r), seed)
    folder = Path(source)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise MntvmError(f"calibration source {folder} {what}: give a folder of .npy/.jpg/.png files")
    try:
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in (".npy",) + IMAGE_SUFFIXES)
    except OSError as e:
        raise MntvmError(f"cannot list calibration folder {folder}: {e.strerror or e}") from None
    if not files:
        raise MntvmError(f"calibration folder {folder} has no .npy, .jpg, .jpeg or .png files")
    arrays, n = [], 0
    for path in files:
        x = _read_npy(path, (3, r, r)) if path.suffix.lower() == ".npy" else _read_image(path, r)
        arrays.append(x)
        n += x.shape[0]
        if count and n >= count:
            break
    out = np.concatenate(arrays)
    return out[:count] if count else out
