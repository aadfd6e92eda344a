"""Writing our network in other runtimes' formats (ONNX)."""
from mntvm.export.onnx import build_onnx, export_onnx

__all__ = ["build_onnx", "export_onnx"]
