"""Writing our network in other runtimes' formats (ONNX, TFLite)."""
from mntvm.export.onnx import build_onnx, export_onnx
from mntvm.export.onnx_qdq import build_qdq, export_qdq, quantized_tensor
from mntvm.export.tflite import build_tflite, export_tflite

__all__ = ["build_onnx", "build_qdq", "build_tflite", "export_onnx", "export_qdq", "export_tflite", "quantized_tensor"]
