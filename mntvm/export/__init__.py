"""Writing our network in other runtimes' formats (ONNX, TFLite)."""
from mntvm.export.onnx import build_onnx, export_onnx
from mntvm.export.tflite import build_tflite, export_tflite

__all__ = ["build_onnx", "build_tflite", "export_onnx", "export_tflite"]
