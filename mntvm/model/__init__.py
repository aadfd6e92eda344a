"""MobileNetV1: the layer table and config, weights, the paper's cost model, a numpy reference."""
from mntvm.model.network import MobileNetConfig

__all__ = ["MobileNetConfig"]
