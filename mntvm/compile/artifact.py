"""A compiled-model artifact directory: ``model.so`` (weights embedded) and ``metadata.json``.

Written atomically by :func:`write_artifact` (a temp directory beside the target, renamed into
place; an older artifact at that path survives any failure). Read with :func:`load_artifact`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mntvm.core.arch import missing_cpu_features
from mntvm.core.atomic import atomic_dir, atomic_path, check_destination, write_text
from mntvm.core.errors import MntvmError, one_line
from mntvm.core.threads import set_threads
from mntvm.model.calibration import deterministic_input  # noqa: F401 - re-exported: `run`'s default input

LIB_NAME = "model.so"
META_NAME = "metadata.json"
QDQ_NAME = "model.qdq.onnx"  # int8 artifacts: the quantized network the library computes, for the peers


def is_artifact_dir(path: Path) -> bool:
    """Whether ``path`` is a folder holding nothing but an artifact's files (or nothing)."""
    try:
        return path.is_dir() and {p.name for p in path.iterdir()} <= {LIB_NAME, META_NAME, QDQ_NAME}
    except OSError:
        return False


def check_artifact_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse, before any work, an ``out_dir`` that :func:`write_artifact` would refuse."""
    return check_destination(Path(out_dir), "an mntvm artifact", is_artifact_dir, folder=True)


def write_artifact(out_dir: str | os.PathLike):
    """Context manager yielding a temp directory to fill; on success it replaces ``out_dir``, on
    failure it is removed (see :func:`mntvm.core.atomic.atomic_dir`). An ``out_dir`` that holds
    anything else than an artifact is refused, never replaced."""
    return atomic_dir(out_dir, what="an mntvm artifact", is_ours=is_artifact_dir)


def library_record(lib: Path) -> dict:
    """What metadata.json records of ``model.so``: its size and sha256 (checked before loading)."""
    return {"file": LIB_NAME, "bytes": lib.stat().st_size, "sha256": _sha256(lib)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@dataclass
class Artifact:
    path: Path
    metadata: dict
    _vm: object = field(default=None, init=False, repr=False, compare=False)  # run()'s own, loaded once

    @property
    def lib_path(self) -> Path:
        return self.path / LIB_NAME

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.metadata["input"]["shape"])

    def load_vm(self, device=None):
        """Load the library here and return a Relax VirtualMachine on ``device`` (default: CPU); an
        artifact whose kernels need a CPU feature this machine lacks is refused first."""
        import tvm
        from tvm import relax

        missing = missing_cpu_features(self.metadata)
        if missing:
            raise MntvmError(f"{self.path} cannot run here: {missing}")

        lib = tvm.runtime.load_module(str(self.lib_path))
        return relax.VirtualMachine(lib, device or tvm.cpu())

    def run(self, x: np.ndarray, vm=None) -> np.ndarray:
        """Run one inference locally; returns the softmax probabilities. Without ``vm``, on a CPU VM of
        this artifact's own, loaded on the first call and reused (loading one costs more than an
        inference of the small variants: 1.0/224 int8 9.1 ms a call loading each time, 3.4 ms
        reusing); threads that run at once should each pass their own :meth:`load_vm`."""
        import tvm

        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape != self.input_shape:
            raise MntvmError(f"input has shape {x.shape}, the artifact expects {self.input_shape}")
        if vm is None:
            if self._vm is None:
                self._vm = self.load_vm()
            vm = self._vm
        return vm["main"](tvm.runtime.tensor(x)).numpy()


def load_artifact(path: str | os.PathLike, verify: bool = True) -> Artifact:
    """Read an artifact folder; its ``model.so`` must be the one its metadata.json describes
    (size and sha256, when recorded), so a truncated or swapped library is refused before any
    loader touches it. ``verify=False``: metadata only (for callers that do not load the library)."""
    path = Path(path)
    meta = path / META_NAME
    if not meta.is_file() or not (path / LIB_NAME).is_file():
        raise MntvmError(f"{path} is not an mntvm artifact (needs {LIB_NAME} and {META_NAME})")
    try:
        metadata = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MntvmError(f"{meta}: malformed JSON: {e}") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("input"), dict):
        raise MntvmError(f"{meta}: not an mntvm artifact's metadata")
    if verify:
        _check_library(path / LIB_NAME, metadata.get("library"))
    return Artifact(path, metadata)


def _check_library(lib: Path, rec: dict | None) -> None:
    if not rec:
        return  # artifacts from before the record: nothing to check against
    size = lib.stat().st_size
    if size != rec.get("bytes"):
        raise MntvmError(f"{lib} is {size} bytes, its metadata.json says {rec.get('bytes')}: "
                         "truncated or replaced; compile the artifact again")
    if _sha256(lib) != rec.get("sha256"):
        raise MntvmError(f"{lib} does not match its metadata.json (sha256 differs): a library from "
                         "another artifact, or corrupted; compile the artifact again")


def read_input(path: str | os.PathLike) -> np.ndarray:
    """One input array from a ``.npy`` file; anything else is a one-line error naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise MntvmError(f"cannot read input {path}: {e.strerror or e}") from None
    if magic != b"\x93NUMPY":
        what = "an .npz archive" if magic[:2] == b"PK" else "not a .npy file"
        raise MntvmError(f"input {path} is {what}: --input takes one array saved with numpy.save")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise MntvmError(f"cannot read input {path}: truncated or corrupt .npy ({one_line(e)})") from None
    if x.dtype.kind not in "biuf":
        raise MntvmError(f"input {path} holds {x.dtype} values, not numbers")
    if x.size == 0:
        raise MntvmError(f"input {path} is empty (shape {x.shape})")
    return x


def top_k(probs: np.ndarray, k: int = 5) -> list[list[tuple[int, float]]]:
    """Per batch row, the k (class, probability) pairs with the highest probability."""
    out = []
    for row in np.atleast_2d(probs):
        idx = np.argsort(-row, kind="stable")[:k]
        out.append([(int(i), float(row[i])) for i in idx])
    return out


def format_top_k(probs: np.ndarray, k: int = 5) -> str:
    """One line per batch row: ``batch B: class C: P  ...`` (what ``mntvm run`` prints)."""
    return "\n".join(f"batch {b}: " + "  ".join(f"class {c}: {p:.4f}" for c, p in row)
                     for b, row in enumerate(top_k(probs, k)))


def infer(path: str | os.PathLike, input_path: str | os.PathLike | None = None, threads: int | None = None,
          save: str | os.PathLike | None = None) -> np.ndarray:
    """Run the artifact at ``path`` here once, on ``input_path`` (.npy) or the deterministic input;
    ``save`` writes the probabilities as .npy (atomically). Returns them."""
    art = load_artifact(path)
    x = read_input(input_path) if input_path else deterministic_input(art.input_shape)
    set_threads(threads)
    y = art.run(x)
    if save:
        with atomic_path(save, "the output probabilities") as tmp, open(tmp, "wb") as f:
            np.save(f, y)
    return y
