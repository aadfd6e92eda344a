"""Compiling MobileNetV1 for a target profile into an artifact folder; loading and running artifacts."""
from mntvm.compile.artifact import deterministic_input, format_top_k, infer, load_artifact, read_input, top_k
from mntvm.compile.build import compile_model, format_compiled
from mntvm.compile.network import DTYPES, format_quantized, network_for, write_quantized

__all__ = ["DTYPES", "compile_model", "deterministic_input", "format_compiled", "format_quantized", "format_top_k",
           "infer", "load_artifact", "network_for", "read_input", "top_k", "write_quantized"]
