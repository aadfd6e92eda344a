"""What a compiled artifact should compute: the weights it was built from, and their numpy output.

Public entries: :func:`artifact_weights` (rebuilt and checked against the recorded sha256) and
:func:`reference_output` (the host-side numpy reference that ``max_abs_diff`` is measured against).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mntvm.compile.artifact import QDQ_NAME, Artifact
from mntvm.compile.network import quantized_digest
from mntvm.core.errors import MntvmError
from mntvm.model import reference
from mntvm.model import weights as W
from mntvm.model.network import MobileNetConfig
from mntvm.model.qdq_import import import_qdq
from mntvm.model.quantized import QuantizedNet, forward_int8


def reference_output(art: Artifact, x: np.ndarray) -> np.ndarray:
    """The host-side numpy reference for the artifact's model and weights (int8 artifacts: the
    integer arithmetic of the quantized network they carry, :func:`artifact_quantized`)."""
    if art.metadata.get("dtype") == "int8":
        return forward_int8(artifact_quantized(art), x)
    return reference.forward(MobileNetConfig.from_dict(art.metadata["model"]), artifact_weights(art), x)


def artifact_quantized(art: Artifact) -> QuantizedNet:
    """The quantized network an int8 artifact was built from: its ``model.qdq.onnx``, checked
    against the recorded ``weights_sha256``."""
    cfg = MobileNetConfig.from_dict(art.metadata["model"])
    path = art.path / QDQ_NAME
    if not path.is_file():
        raise MntvmError(f"{art.path} is an int8 artifact without its {QDQ_NAME}: compile it again")
    net = import_qdq(path, cfg)
    if quantized_digest(net) != art.metadata.get("weights_sha256"):
        raise MntvmError(f"{path} does not match {art.path}'s quantized weights (sha256): compile it again")
    return net


def artifact_weights(art: Artifact, weights=None) -> dict:
    """The weights ``art`` was compiled from, rebuilt and checked against its ``weights_sha256``.

    ``weights`` (an ``.npz``/``.onnx`` path or a dict) is used when given; otherwise the recorded
    source: the seeded random init, or the recorded weights file if it is still there. Anything
    that cannot be reproduced or does not match the sha256 is a one-line :class:`MntvmError`.
    """
    meta = art.metadata
    cfg = MobileNetConfig.from_dict(meta["model"])
    src = str(meta.get("weights_source", ""))
    if weights is not None:
        origin = "the given weights" if isinstance(weights, Mapping) else f"weights file {weights}"
        w = W.load(cfg, weights)
    elif src.startswith("random(seed="):
        origin = f"the random weights {src}"
        w = W.random_weights(cfg, int(src[len("random(seed="):-1]))
    elif src == "dict" or not src:
        raise MntvmError(f"{art.path} was compiled from in-memory weights that are not recorded: "
                         "pass the same weights (an .npz or .onnx file) to reproduce them")
    elif any(f.is_file() for f in _candidates(art, src)):
        origin = f"weights file {src}"
        w = W.load(cfg, next(f for f in _candidates(art, src) if f.is_file()))
    else:
        raise MntvmError(f"{art.path} was compiled from weights file {src}, which is not here: "
                         "pass that file (--weights) to reproduce its weights")
    got, want = W.digest(w), meta.get("weights_sha256")
    if got != want:
        raise MntvmError(f"{origin} do not match {art.path}'s weights (sha256 {got[:12]}…, the "
                         f"artifact has {str(want)[:12]}…): not the weights it was compiled from")
    return w


def _candidates(art: Artifact, src: str) -> list[Path]:
    """Where the recorded weights file may be: relative to the artifact folder (as compile records
    it), or, in artifacts from before that, as recorded (absolute, or relative to where compile ran)."""
    return [art.path / src, Path(src)]
