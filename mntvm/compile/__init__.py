"""Compiling MobileNetV1 for a target profile into an artifact folder, and loading artifacts."""
from mntvm.compile.artifact import deterministic_input, load_artifact, top_k
from mntvm.compile.build import compile_model

__all__ = ["compile_model", "deterministic_input", "load_artifact", "top_k"]
