"""Writing our network in other runtimes' formats (ONNX, TFLite)."""
from mntvm.export.onnx import build_onnx, export_onnx
from mntvm.export.onnx_qdq import build_qdq, export_qdq, quantized_tensor
from mntvm.export.tflite import build_tflite, build_tflite_int8, export_tflite, export_tflite_int8

__all__ = ["build_onnx", "build_qdq", "build_tflite", "build_tflite_int8", "export_onnx", "export_qdq", "export_tflite",
           "export_tflite_int8", "quantized_tensor"]
