"""The runtimes :func:`mntvm.bench.compare` times ours against: one :class:`Peer` each, in :data:`PEERS`.

A peer's ``setup(model_path, x, threads)`` runs in the compare worker process (one thread count,
:mod:`mntvm.bench.comparison_worker`): it loads the model file of its ``model`` format for ``threads``
threads with the input ``x`` (NCHW) bound, and returns ``(run, output, version)``: a call that runs
one inference (the one timed), a call that runs one and returns the output as numpy, and the
runtime's version.

ONNX Runtime (:data:`REFERENCE`) is always measured: ``ratio`` is ours / its median, and our
output must agree with its output.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Setup = Callable[[str, np.ndarray, int], tuple[Callable[[], object], Callable[[], np.ndarray], str]]


@dataclass(frozen=True)
class Peer:
    key: str     # its name for --compare
    label: str   # its name in the table
    module: str  # the Python module it needs (and the key of its version)
    pip: str     # what to pip install for it
    model: str   # the model file it reads: "onnx" or "tflite"
    setup: Setup


def ort_session_options(n: int, uint8_activations: bool = False):
    """ONNX Runtime's session options for a peer run on ``n`` threads (what :data:`REFERENCE` uses).

    ``uint8_activations`` (a QDQ model with uint8 activations): its exact integer kernels. On x86
    CPUs without VNNI (AVX2, AVX-512 before Cascade Lake) ORT's default uint8 x int8 kernels add pairs
    of products in int16 (vpmaddubsw), which saturates: on a Zen 2 the int8 MobileNetV1 stem came out
    up to 83 quantization steps away from the exact integer result (ours, numpy's, and ORT's own on a
    VNNI CPU). ``session.x64quantprecision`` makes it use its exact uint8 x uint8 kernels there (slower);
    it has no effect where VNNI is present. Not for int8 activations: ORT's int8 x int8 path is exact,
    and with both options its graph optimizer makes a QGemm it has no kernel for (ORT 1.32)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = n
    so.inter_op_num_threads = 1
    # QDQ models with int8 (not uint8) activations: without this, ORT's x86 build runs them through
    # float kernels on dequantized values instead of its integer ones (no effect on float models)
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    if uint8_activations:
        so.add_session_config_entry("session.x64quantprecision", "1")
    return so


def _uint8_activations(path: str) -> bool:
    """Whether the ONNX model at ``path`` quantizes activations to uint8: a QuantizeLinear whose zero
    point (an initializer or a Constant) is uint8, or that has none and no ``output_dtype`` (ONNX's
    default then is uint8)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    dtypes = {t.name: t.data_type for t in model.graph.initializer}
    dtypes.update({n.output[0]: a.t.data_type for n in model.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        if len(n.input) > 2 and n.input[2]:
            dt = dtypes.get(n.input[2])
        else:
            dt = next((a.i for a in n.attribute if a.name == "output_dtype"), 0) or onnx.TensorProto.UINT8
        if dt == onnx.TensorProto.UINT8:
            return True
    return False


def _setup_ort(path: str, x: np.ndarray, n: int):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, ort_session_options(n, _uint8_activations(path)),
                                providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return (lambda: sess.run(None, feed)), (lambda: sess.run(None, feed)[0]), ort.__version__


def _setup_openvino(path: str, x: np.ndarray, n: int):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {
        "INFERENCE_NUM_THREADS": n, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",  # else bf16 on CPUs that have it
    })
    req = compiled.create_infer_request()
    req.set_input_tensor(ov.Tensor(np.ascontiguousarray(x)))

    def out():
        req.infer()
        return np.array(req.get_output_tensor(0).data)

    return req.infer, out, ov.__version__


def _setup_tflite(path: str, x: np.ndarray, n: int):
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=n)  # XNNPACK is the default delegate
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    out_index = it.get_output_details()[0]["index"]

    def out():
        it.invoke()
        return it.get_tensor(out_index).copy()

    return it.invoke, out, getattr(ai_edge_litert, "__version__", "?")


OURS_LABEL = "mntvm (TVM)"
REFERENCE = "ort"
PEERS: dict[str, Peer] = {p.key: p for p in (
    Peer("ort", "ONNX Runtime", "onnxruntime", "onnxruntime", "onnx", _setup_ort),
    Peer("openvino", "OpenVINO", "openvino", "openvino", "onnx", _setup_openvino),
    Peer("tflite", "TFLite+XNNPACK", "ai_edge_litert", "ai-edge-litert", "tflite", _setup_tflite),
)}
