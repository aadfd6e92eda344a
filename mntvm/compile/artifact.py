"""A compiled-model artifact directory: ``model.so`` (weights embedded) and ``metadata.json``.

Written atomically by :func:`write_artifact` (a temp directory beside the target, renamed into
place; an older artifact at that path survives any failure). Read with :func:`load_artifact`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mntvm.core.atomic import atomic_dir, write_text
from mntvm.core.errors import MntvmError

LIB_NAME = "model.so"
META_NAME = "metadata.json"


def write_artifact(out_dir: str | os.PathLike):
    """Context manager yielding a temp directory to fill; on success it replaces ``out_dir``, on
    failure it is removed (see :func:`mntvm.atomic.atomic_dir`)."""
    return atomic_dir(Path(out_dir).resolve())


def write_json_atomic(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@dataclass
class Artifact:
    path: Path
    metadata: dict

    @property
    def lib_path(self) -> Path:
        return self.path / LIB_NAME

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.metadata["input"]["shape"])

    def load_vm(self, device=None):
        """Load the library here and return a Relax VirtualMachine on ``device`` (default: CPU)."""
        import tvm
        from tvm import relax

        lib = tvm.runtime.load_module(str(self.lib_path))
        return relax.VirtualMachine(lib, device or tvm.cpu())

    def run(self, x: np.ndarray, vm=None) -> np.ndarray:
        """Run one inference locally; returns the softmax probabilities."""
        import tvm

        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != self.input_shape:
            raise MntvmError(f"input has shape {x.shape}, the artifact expects {self.input_shape}")
        vm = vm or self.load_vm()
        return vm["main"](tvm.runtime.tensor(x)).numpy()


def load_artifact(path: str | os.PathLike) -> Artifact:
    path = Path(path)
    meta = path / META_NAME
    if not meta.is_file() or not (path / LIB_NAME).is_file():
        raise MntvmError(f"{path} is not an mntvm artifact (needs {LIB_NAME} and {META_NAME})")
    try:
        return Artifact(path, json.loads(meta.read_text()))
    except json.JSONDecodeError as e:
        raise MntvmError(f"{meta}: malformed JSON: {e}") from None


def deterministic_input(shape, seed: int = 0) -> np.ndarray:
    """The documented deterministic input: a smooth colour gradient plus seeded noise, in [-1, 1]."""
    n, c, h, w = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    base = np.stack([xx, yy, (xx * yy)], axis=0)[:c]
    noise = np.random.default_rng(seed).uniform(-0.25, 0.25, (n, c, h, w))
    return np.clip(base[None] + noise, -1, 1).astype(np.float32)


def top_k(probs: np.ndarray, k: int = 5) -> list[list[tuple[int, float]]]:
    """Per batch row, the k (class, probability) pairs with the highest probability."""
    out = []
    for row in np.atleast_2d(probs):
        idx = np.argsort(-row, kind="stable")[:k]
        out.append([(int(i), float(row[i])) for i in idx])
    return out
