"""Import a MobileNetV1 quantized elsewhere (an ONNX model in QDQ form) into a :class:`QuantizedNet`.

QDQ is how ONNX Runtime's ``quantize_static`` and most other tools write int8 models: the fp32
graph stays, and QuantizeLinear/DequantizeLinear (Q/DQ) nodes around each Conv and Gemm say how
every tensor is quantized. We walk the graph's one chain from its input to its output and map it
onto :func:`layer_specs` in order (stem, dw1, pw1, ..., pw13, fc), taking the file's own scales and
zero points, so :func:`forward_int8` (and our int8 build) computes what ONNX Runtime computes for
the file. Per layer we accept::

    DQ(x_q) -> Conv(DQ(int8 w), [DQ(int32 b) | float b]) -> [Q -> DQ ->] [Relu | Clip] -> Q
    DQ -> GlobalAveragePool | ReduceMean(H, W) | AveragePool(whole map) -> Q, Flatten/Reshape anywhere
    DQ -> Gemm(DQ(int8 w), b) | MatMul(DQ(int8 w)) [-> Add(b)] -> [Q ->  DQ] -> [Softmax [-> Q -> DQ]]

A layer's output quantization is the last Q before the next layer (ONNX Runtime may keep a Relu
or Clip between two Q/DQ pairs, or fold it into the Q range); a kept Relu/Clip becomes
:attr:`QLayer.act`. ONNX Runtime gives both Qs of such a pair the same parameters, so this is
exact; where they differ (or a Q sits between MatMul and its Add), our one requantization skips
the file's intermediate rounding. A bias whose scale is not ``s_x * s_w`` (or a float bias) is
requantized to it. A Q after the final Softmax (re-quantized probabilities) is accepted and
ignored: our softmax output stays fp32. Anything else is refused with one line naming the node.

Public entries: :func:`is_quantized_onnx`, :func:`import_qdq`.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from mntvm.core.errors import MntvmError, one_line
from mntvm.model.network import MobileNetConfig, layer_specs
from mntvm.model.quantized import QLayer, QTensor, QuantizedNet

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_QOPERATOR = {"ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeLinear", "MatMulIntegerToFloat",
              "DynamicQuantizeMatMul"}
_RESHAPES = ("Flatten", "Reshape", "Squeeze")


def _load(path: str | os.PathLike):
    """The parsed file (parsed once per content: compile asks whether it is quantized, then imports it)."""
    if not Path(path).is_file():
        raise MntvmError(f"ONNX file not found: {path}")
    st = os.stat(path)
    return _parse(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=2)
def _parse(path: str, mtime_ns: int, size: int):
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise several types
        raise MntvmError(f"{path}: not a readable ONNX model ({one_line(e)})") from None
    if not model.graph.node:
        raise MntvmError(f"{path}: not an ONNX model (its graph has no nodes)")
    return model


def is_quantized_onnx(path: str | os.PathLike) -> bool:
    """True if the ONNX file holds QuantizeLinear/DequantizeLinear nodes (the dtype follows the file)."""
    return any(n.op_type in _QDQ for n in _load(path).graph.node)


def import_qdq(path: str | os.PathLike, cfg: MobileNetConfig) -> QuantizedNet:
    """Read the QDQ-quantized MobileNetV1 in ``path`` as a :class:`QuantizedNet` for ``cfg``."""
    model = _load(path)
    nodes = model.graph.node
    for n in nodes:
        if n.op_type.startswith("QLinear") or n.op_type in _QOPERATOR:
            raise MntvmError(f"{path}: QOperator format is not supported (node '{n.name}' is {n.op_type}); "
                             "export QDQ")
    if not any(n.op_type in _QDQ for n in nodes):
        raise MntvmError(f"{path}: not quantized (no QuantizeLinear/DequantizeLinear nodes); use it as "
                         "--weights for fp32 or quantize it with mntvm quantize")
    return _Walk(path, cfg, model).run()


class _Walk:
    """One pass along the graph's chain, building the layers as their nodes go by."""

    def __init__(self, path, cfg: MobileNetConfig, model):
        import onnx
        from onnx import numpy_helper

        self.path, self.cfg, self.graph = path, cfg, model.graph
        self.onnx = onnx
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.producer, self.consumers = {}, {}
        for n in model.graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
                continue
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.specs = layer_specs(cfg)

    # ---- helpers -------------------------------------------------------------------------
    def fail(self, msg: str) -> MntvmError:
        return MntvmError(f"{self.path}: {msg}")

    @staticmethod
    def name(node) -> str:
        return node.name or node.output[0]

    def attr(self, node, key, default=None):
        for a in node.attribute:
            if a.name == key:
                return self.onnx.helper.get_attribute_value(a)
        return default

    def const(self, name: str, what: str):
        """The value of an initializer or Constant input."""
        if name in self.consts:
            return self.consts[name]
        raise self.fail(f"{what} '{name}' is computed in the graph, not a constant")

    def check(self, where: str, what: str, got, want) -> None:
        if tuple(got) != tuple(want):
            raise self.fail(f"{where} {what} is {tuple(got)}, {self.cfg.tag} expects {tuple(want)}")

    def qparams(self, node, what: str):
        """(scale float32 array, zero point array, axis) of a Q or DQ node; the zero point's dtype is the type."""
        scale = np.asarray(self.const(node.input[1], f"{what} scale"), np.float32)
        if len(node.input) > 2 and node.input[2]:
            zp = np.asarray(self.const(node.input[2], f"{what} zero point"))
        else:  # no zero point: 0 of the type output_dtype names (default uint8)
            dt = self.attr(node, "output_dtype", 0) or self.onnx.TensorProto.UINT8
            zp = np.zeros(scale.shape, self.onnx.helper.tensor_dtype_to_np_dtype(dt))
        if self.attr(node, "block_size", 0):
            raise self.fail(f"node '{self.name(node)}' uses blocked quantization, which is not supported")
        return scale, zp, self.attr(node, "axis", 1)

    def act_q(self, node) -> QTensor:
        """The per-tensor 8-bit quantization a Q or DQ node applies to an activation."""
        scale, zp, _ = self.qparams(node, "activation")
        if scale.size != 1 or zp.size != 1:
            raise self.fail(f"node '{self.name(node)}' quantizes an activation per channel; "
                            "only per-tensor activations are supported")
        if zp.dtype.name not in ("uint8", "int8"):
            raise self.fail(f"node '{self.name(node)}' quantizes an activation to {zp.dtype.name}; "
                            "only uint8 or int8 activations are supported")
        try:
            return QTensor(float(scale.reshape(())), int(zp.reshape(())), zp.dtype.name)
        except MntvmError as e:
            raise self.fail(f"node '{self.name(node)}': {e}") from None

    def weight(self, name: str, where: str, out_axis: int, shape: tuple[int, ...]):
        """int8 weight of ``shape`` (its output channels along ``out_axis``) and float32 (out,) scales,
        from DQ(int8 constant) or DQ(Q(float constant))."""
        dq = self.producer.get(name)
        if dq is None or dq.op_type != "DequantizeLinear":
            raise self.fail(f"{where} weight '{name}' is not quantized (no DequantizeLinear)")
        scale, zp, axis = self.qparams(dq, f"{where} weight")
        src = self.producer.get(dq.input[0])
        if src is not None and src.op_type == "QuantizeLinear":  # AddQDQPairToWeight: Q(float w) -> DQ
            s, z, ax = self.qparams(src, f"{where} weight")
            w = self.const(src.input[0], f"{where} weight").astype(np.float32)
            bcast = [1] * w.ndim
            if s.size > 1:
                bcast[ax % w.ndim] = -1
            q = np.rint(w / s.reshape(bcast)) + z.astype(np.float32).reshape(bcast)
            info = np.iinfo(z.dtype)
            w = np.clip(q, info.min, info.max).astype(z.dtype)
        else:
            w = np.asarray(self.const(dq.input[0], f"{where} weight"))
        self.check(where, "weight shape", w.shape, shape)
        n_out = shape[out_axis]
        if w.dtype != np.int8:
            raise self.fail(f"{where} weight is {w.dtype.name}; only int8 weights are supported "
                            "(quantize with weight_type=QInt8)")
        if np.any(zp != 0):
            raise self.fail(f"{where} weight has nonzero zero points; only symmetric int8 weights are supported")
        if scale.size == 1:
            return w, np.full(n_out, scale.reshape(()), np.float32)
        if scale.size != n_out or axis % w.ndim != out_axis:
            raise self.fail(f"{where} weight scales ({scale.size}, axis {axis}) do not run along its "
                            f"{n_out} output channels")
        return w, scale.reshape(n_out).astype(np.float32)

    def bias(self, name: str, where: str, x: QTensor, w_scale: np.ndarray) -> np.ndarray:
        """int32 bias at ``s_x * s_w``: the file's when its scale is that, else requantized to it."""
        n = w_scale.size
        want = (np.float32(x.scale) * w_scale).astype(np.float32)
        if not name:
            return np.zeros(n, np.int32)
        dq = self.producer.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear":
            scale, zp, _ = self.qparams(dq, f"{where} bias")
            q = np.asarray(self.const(dq.input[0], f"{where} bias"))
            self.check(where, "bias shape", (q.size,), (n,))
            scale, zp = np.broadcast_to(scale.reshape(-1), (n,)), np.broadcast_to(zp.reshape(-1), (n,))
            if q.dtype == np.int32 and not np.any(zp) and np.allclose(scale, want, rtol=1e-5, atol=0):
                return q.reshape(n).astype(np.int32)
            real = (q.reshape(n).astype(np.float64) - zp) * scale
        else:
            real = np.asarray(self.const(name, f"{where} bias"), np.float64)
            self.check(where, "bias shape", (real.size,), (n,))
        q = np.rint(real.reshape(n) / want.astype(np.float64))
        return np.clip(q, -2 ** 31, 2 ** 31 - 1).astype(np.int32)

    def dq_input(self, node, where: str) -> QTensor:
        """The quantization of ``node``'s activation input, which must come straight from a DQ."""
        dq = self.producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            raise self.fail(f"{where} input is not quantized (no DequantizeLinear before it)")
        return self.act_q(dq)

    def next_node(self, tensor: str):
        users = self.consumers.get(tensor, [])
        if len(users) > 1:
            raise self.fail(f"tensor '{tensor}' feeds {len(users)} nodes "
                            f"({', '.join(self.name(u) for u in users)}); MobileNetV1 is a single chain")
        return users[0] if users else None

    # ---- the walk ------------------------------------------------------------------------
    def run(self) -> QuantizedNet:
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise self.fail(f"has {len(inputs)} graph inputs, MobileNetV1 has one")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        want = self.cfg.input_shape
        if len(dims) != 4 or any(d is not None and d != w for d, w in zip(dims[1:], want[1:])):
            raise self.fail(f"input '{inputs[0].name}' has shape {tuple(dims)}, {self.cfg.tag} expects "
                            f"(N, {', '.join(map(str, want[1:]))})")
        n_conv = sum(n.op_type == "Conv" for n in self.graph.node)
        if n_conv != len(self.specs) - 1:
            raise self.fail(f"has {n_conv} Conv nodes, {self.cfg.tag} has {len(self.specs) - 1} conv layers "
                            "(stem + 13 depthwise + 13 pointwise): not a MobileNetV1")
        self.layers: list[QLayer] = []
        self.open = None      # the layer being read: dict of QLayer fields and "spec", "node"
        self.last_q = None    # QTensor of the last Q on the chain since the open layer (or pool) began
        self.net_in = None
        self.stage = "conv"   # conv -> pool -> fc -> softmax
        tensor = inputs[0].name
        node = self.next_node(tensor)
        if node is not None and node.op_type == "DequantizeLinear":
            raise self.fail(f"input '{tensor}' is already quantized; expected an fp32 input")
        while node is not None:
            self.visit(node, tensor)
            tensor = node.output[0]
            node = self.next_node(tensor)
        if self.stage not in ("fc", "softmax"):
            raise self.fail(f"the graph ends after {self.where_last()}; no fully connected layer")
        self.close()
        try:
            return QuantizedNet(self.cfg, self.net_in, tuple(self.layers), calibration="imported")
        except MntvmError as e:  # e.g. uint8 and int8 activations mixed
            raise self.fail(str(e)) from None

    def where_last(self) -> str:
        if self.open is not None:
            return f"layer {self.open['spec'].name}"
        return f"layer {self.layers[-1].name}" if self.layers else "the input"

    def visit(self, node, tensor: str) -> None:
        """Map one chain node, reached through its input ``tensor``."""
        op, stage = node.op_type, self.stage
        if op in ("Conv", "Gemm", "MatMul") and node.input[0] != tensor:
            raise self.fail(f"node '{self.name(node)}' ({op}) takes the activation as a weight")
        if op == "QuantizeLinear":
            self.last_q = self.act_q(node)
        elif op == "DequantizeLinear":
            src = self.producer.get(node.input[0])
            if src is not None and src.op_type == "QuantizeLinear" and self.act_q(node) != self.act_q(src):
                raise self.fail(f"node '{self.name(node)}' dequantizes with other parameters than "
                                f"'{self.name(src)}' quantized with")
        elif op == "Conv" and stage == "conv":
            self.conv(node)
        elif op in ("Relu", "Clip") and stage == "conv" and self.open is not None:
            self.activation(node)
        elif op in ("GlobalAveragePool", "ReduceMean", "AveragePool") and stage == "conv":
            self.pool(node)
        elif op == "Identity" or (op in _RESHAPES and stage in ("pool", "softmax")):
            pass
        elif op in ("Gemm", "MatMul") and stage == "pool":
            self.dense(node)
        elif op == "Add" and stage == "fc" and self.open.get("matmul"):
            self.add_bias(node, tensor)
        elif op == "Softmax" and stage == "fc":
            self.close()
            self.stage = "softmax"
        else:
            hint = ("; fold batchnorm into the convs before quantizing (onnxruntime.quantization."
                    "quant_pre_process does)") if op == "BatchNormalization" else ""
            raise self.fail(f"node '{self.name(node)}' ({op}) after {self.where_last()} cannot be mapped "
                            f"onto MobileNetV1{hint}")

    def close(self) -> None:
        """Finish the open layer: its output is the last Q since its Conv/Gemm (an FC may have none)."""
        o = self.open
        if o is None:
            return
        spec = o["spec"]
        if self.last_q is None and spec.kind != "fc":
            raise self.fail(f"layer {spec.name} (node '{self.name(o['node'])}') output is not quantized "
                            "(no QuantizeLinear after it)")
        self.layers.append(QLayer(spec.name, spec.kind, spec.stride, spec.padding, o["weight"], o["scale"],
                                  o["bias"], o["input"], self.last_q, o["act"]))
        self.open, self.last_q = None, None

    def conv(self, node) -> None:
        self.close()
        spec = self.specs[len(self.layers)]
        where = f"layer {spec.name} (node '{self.name(node)}')"
        x = self.dq_input(node, where)
        w, s = self.weight(node.input[1], where, 0, spec.weight_shape)
        for key, default, want in (("group", 1, spec.groups), ("strides", [1, 1], [spec.stride] * 2),
                                   ("kernel_shape", list(w.shape[2:]), [spec.kernel] * 2),
                                   ("pads", [0] * 4, [spec.padding] * 4), ("dilations", [1, 1], [1, 1])):
            got = self.attr(node, key, default)
            self.check(where, key, np.atleast_1d(got), np.atleast_1d(want))
        pad = self.attr(node, "auto_pad", b"NOTSET")
        if pad not in (b"NOTSET", "NOTSET", b"", ""):
            raise self.fail(f"{where} uses auto_pad={pad.decode() if isinstance(pad, bytes) else pad}; "
                            "only explicit pads are supported")
        b = self.bias(node.input[2] if len(node.input) > 2 else "", where, x, s)
        if spec.name == "stem":
            self.net_in = x
        self.open = {"spec": spec, "node": node, "weight": w, "scale": s, "bias": b, "input": x, "act": None}
        self.last_q = None

    def activation(self, node) -> None:
        if node.op_type == "Relu":
            lo, hi = 0.0, float("inf")
        else:
            lo, hi = self.attr(node, "min", float("-inf")), self.attr(node, "max", float("inf"))
            for i, which in ((1, "min"), (2, "max")):
                if len(node.input) > i and node.input[i]:
                    v = float(np.asarray(self.const(node.input[i], f"Clip {which}")).reshape(()))
                    lo, hi = (v, hi) if i == 1 else (lo, v)
        old = self.open["act"] or (float("-inf"), float("inf"))
        self.open["act"] = (max(old[0], float(lo)), min(old[1], float(hi)))

    def pool(self, node) -> None:
        where = f"global average pool (node '{self.name(node)}')"
        if len(self.layers) + (self.open is not None) != len(self.specs) - 1:
            raise self.fail(f"{where} comes after {self.where_last()}, before the last conv layer")
        if node.op_type == "ReduceMean":
            axes = self.attr(node, "axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = self.const(node.input[1], "ReduceMean axes")
            if axes is None or sorted(int(a) % 4 for a in np.atleast_1d(axes)) != [2, 3]:
                raise self.fail(f"{where} averages over axes {axes}, not H and W (2, 3)")
        elif node.op_type == "AveragePool":
            hw = self.specs[-2].out_hw
            self.check(where, "kernel_shape", self.attr(node, "kernel_shape", []), (hw, hw))
            self.check(where, "pads", self.attr(node, "pads", [0] * 4), (0,) * 4)
        self.close()
        self.stage = "pool"

    def dense(self, node) -> None:
        spec = self.specs[-1]
        where = f"layer fc (node '{self.name(node)}')"
        if self.last_q is None:
            raise self.fail(f"{where} input (the pool output) is not quantized (no QuantizeLinear before it)")
        x = self.dq_input(node, where)
        if node.op_type == "Gemm":
            for key, want in (("alpha", 1.0), ("beta", 1.0), ("transA", 0)):
                if self.attr(node, key, want) != want:
                    raise self.fail(f"{where} has {key}={self.attr(node, key)}; only {key}={want} is supported")
            trans = self.attr(node, "transB", 0)
        else:
            trans = 0
        shape = spec.weight_shape if trans else spec.weight_shape[::-1]
        w, s = self.weight(node.input[1], where, 0 if trans else 1, shape)
        w = w if trans else np.ascontiguousarray(w.T)
        b = self.bias(node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else "", where, x, s)
        self.open = {"spec": spec, "node": node, "weight": w, "scale": s, "bias": b, "input": x, "act": None,
                     "matmul": node.op_type == "MatMul"}
        self.last_q = None
        self.stage = "fc"

    def add_bias(self, node, tensor: str) -> None:
        o = self.open
        other = [i for i in node.input if i != tensor]
        if len(other) != 1:
            raise self.fail(f"node '{self.name(node)}' (Add) after layer fc does not add a bias")
        o["bias"] = self.bias(other[0], f"layer fc bias (node '{self.name(node)}')", o["input"], o["scale"])
        o["matmul"] = False
