"""MobileNetV1 defined directly in TVM Relax.

The architecture is the MobileNets paper's Table 1 (Howard et al., 2017): a 3×3/2 stem conv,
13 depthwise-separable blocks (depthwise 3×3 + BN + act, pointwise 1×1 + BN + act), global
average pool, a fully connected layer and softmax. Known erratum: the table prints the 13th
depthwise layer with stride 2; every real implementation uses stride 1 (output stays 7×7), and
so do we.

Width multiplier α: every layer's channel count ``c`` becomes ``int(c * α)`` (truncation, as the
TF-slim reference's ``depth_multiplier`` with ``min_depth`` unset). Resolution multiplier ρ is set
through the input resolution, which must be a positive multiple of 32 (the network downsamples 32×).

Layer names are deterministic: ``stem``, ``dw1``…``dw13``, ``pw1``…``pw13``, ``fc``. Parameters are
keyed ``<layer>.weight`` plus either batchnorm (``<layer>.bn.gamma/.beta/.mean/.var``) or an
already-folded ``<layer>.bias``; ``fc.weight`` is (classes, in) and ``fc.bias`` (classes,).

Public entry: :func:`build_relax`. The layer table that both the graph and the cost model are
built from is :func:`layer_specs`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from mntvm.core.errors import MntvmError

# Table 1, one row per depthwise-separable block: (pointwise output channels at α=1, depthwise stride).
# Row 13 carries the erratum fix: stride 1, not the printed 2.
SEPARABLE_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
STEM_CHANNELS = 32
ACTIVATIONS = ("relu6", "relu")
DEFAULT_BN_EPS = 1e-3  # TF-slim / Keras MobileNetV1
# the variants a user picks from: the paper's width multipliers and input resolutions (Tables 6-7)
ALPHAS = (1.0, 0.75, 0.5, 0.25)
RESOLUTIONS = (224, 192, 160, 128)


# Bounds that keep every variant compilable on an edge toolchain (the paper uses α ≤ 1 and
# ρ ≤ 1; wider/larger variants are allowed, absurd ones are refused before any work).
MAX_ALPHA = 4.0
MAX_RESOLUTION = 1024
MAX_CLASSES = 100_000
MAX_BATCH = 256


@dataclass(frozen=True)
class MobileNetConfig:
    """A validated MobileNetV1 variant. Invalid fields raise :class:`MntvmError` naming the field."""

    alpha: float = 1.0
    resolution: int = 224
    num_classes: int = 1000
    batch: int = 1
    activation: str = "relu6"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> MntvmError:
            return MntvmError(f"invalid model config: {field}={getattr(self, field)!r}: {why}")

        if (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha)
                or not 0 < self.alpha <= MAX_ALPHA):
            raise bad("alpha", f"width multiplier must be a number in (0, {MAX_ALPHA:g}]")
        if not _is_int(self.resolution) or not 0 < self.resolution <= MAX_RESOLUTION or self.resolution % 32:
            raise bad("resolution", f"must be a multiple of 32 in [32, {MAX_RESOLUTION}]")
        if not _is_int(self.num_classes) or not 1 <= self.num_classes <= MAX_CLASSES:
            raise bad("num_classes", f"must be an integer in [1, {MAX_CLASSES}]")
        if not _is_int(self.batch) or not 1 <= self.batch <= MAX_BATCH:
            raise bad("batch", f"must be an integer in [1, {MAX_BATCH}]")
        if self.activation not in ACTIVATIONS:
            raise bad("activation", f"must be one of {', '.join(ACTIVATIONS)}")
        if self.dtype != "float32":
            raise bad("dtype", "only float32 is supported")
        if self.channels(STEM_CHANNELS) < 1:
            raise bad("alpha", f"too small: int({STEM_CHANNELS} * alpha) is 0 channels")

    def channels(self, c: int) -> int:
        """Channel count of a layer with ``c`` channels at α=1: ``int(c * α)``."""
        return int(c * self.alpha)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, 3, self.resolution, self.resolution)

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.batch, self.num_classes)

    @property
    def tag(self) -> str:
        """Short human name, e.g. ``mobilenet_v1_0.25_128``."""
        return f"mobilenet_v1_{self.alpha:g}_{self.resolution}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "MobileNetConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class LayerSpec:
    """One weighted layer: its name, kind (conv|depthwise|pointwise|fc) and geometry (NCHW)."""

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    in_hw: int
    out_hw: int

    @property
    def groups(self) -> int:
        return self.in_channels if self.kind == "depthwise" else 1

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "fc":
            return (self.out_channels, self.in_channels)
        return (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel)

    @property
    def padding(self) -> int:
        return self.kernel // 2


def layer_specs(cfg: MobileNetConfig) -> list[LayerSpec]:
    """The network as a table of weighted layers, in execution order."""
    hw = cfg.resolution // 2
    cin = cfg.channels(STEM_CHANNELS)
    specs = [LayerSpec("stem", "conv", 3, cin, 3, 2, cfg.resolution, hw)]
    for i, (c, stride) in enumerate(SEPARABLE_BLOCKS, start=1):
        cout = cfg.channels(c)
        out_hw = hw // stride
        specs.append(LayerSpec(f"dw{i}", "depthwise", cin, cin, 3, stride, hw, out_hw))
        specs.append(LayerSpec(f"pw{i}", "pointwise", cin, cout, 1, 1, out_hw, out_hw))
        cin, hw = cout, out_hw
    specs.append(LayerSpec("fc", "fc", cin, cfg.num_classes, 1, 1, 1, 1))
    return specs


def param_shapes(cfg: MobileNetConfig, folded: bool = False) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes: batchnorm form (default) or folded-bias form."""
    shapes: dict[str, tuple[int, ...]] = {}
    for s in layer_specs(cfg):
        shapes[f"{s.name}.weight"] = s.weight_shape
        if s.kind == "fc" or folded:
            shapes[f"{s.name}.bias"] = (s.out_channels,)
        else:
            for p in ("gamma", "beta", "mean", "var"):
                shapes[f"{s.name}.bn.{p}"] = (s.out_channels,)
    return shapes


def build_relax(cfg: MobileNetConfig, params: Mapping[str, np.ndarray] | None = None,
                bn_eps: float = DEFAULT_BN_EPS):
    """Build MobileNetV1 as a Relax IRModule whose ``main(data, *weights)`` returns softmax probabilities.

    Each conv layer is followed by ``relax.nn.batch_norm`` when ``params`` holds its ``.bn.*`` entries
    (or when ``params`` is None), or by a bias add when it holds ``<layer>.bias`` (folded form).
    Weights are function parameters named as in :func:`param_shapes`; bind them with
    ``relax.transform.BindParams("main", {...})`` (see :mod:`mntvm.compile`).
    """
    from tvm import relax
    from tvm.relax import op as R

    folded = params is not None and "stem.bias" in params
    shapes = param_shapes(cfg, folded=folded)
    if params is not None:
        missing = [k for k in shapes if k not in params]
        if missing:
            raise MntvmError(f"weights are missing {len(missing)} entries, first: {missing[0]}")

    data = relax.Var("data", relax.TensorType(cfg.input_shape, cfg.dtype))
    wvars = {k: relax.Var(k, relax.TensorType(v, cfg.dtype)) for k, v in shapes.items()}

    def act(bb, x):
        return bb.emit(R.clip(x, 0.0, 6.0) if cfg.activation == "relu6" else R.nn.relu(x))

    bb = relax.BlockBuilder()
    with bb.function("main", [data, *wvars.values()]):
        with bb.dataflow():
            x = data
            for s in layer_specs(cfg):
                w = wvars[f"{s.name}.weight"]
                if s.kind == "fc":
                    x = bb.emit(R.mean(x, axis=[2, 3], keepdims=False), name_hint="pool")
                    x = bb.emit(R.linear(x, w, wvars["fc.bias"]), name_hint="fc")
                    continue
                x = bb.emit(
                    R.nn.conv2d(x, w, strides=s.stride, padding=s.padding, groups=s.groups),
                    name_hint=s.name,
                )
                if folded:
                    b = R.reshape(wvars[f"{s.name}.bias"], (1, s.out_channels, 1, 1))
                    x = bb.emit(R.add(x, b), name_hint=f"{s.name}_bias")
                else:
                    g, b, m, v = (wvars[f"{s.name}.bn.{p}"] for p in ("gamma", "beta", "mean", "var"))
                    bn = bb.emit(R.nn.batch_norm(x, g, b, m, v, axis=1, epsilon=bn_eps))
                    x = bb.emit(relax.TupleGetItem(bn, 0), name_hint=f"{s.name}_bn")
                x = act(bb, x)
            out = bb.emit_output(R.nn.softmax(x, axis=-1))
        bb.emit_func_output(out)
    return bb.get()
