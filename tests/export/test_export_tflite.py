"""mntvm.export.tflite: our network as a TFLite flatbuffer (what `mntvm bench --compare tflite` runs)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from mntvm import MntvmError
from mntvm.export import build_tflite, export_tflite
from mntvm.model import reference
from mntvm.model import weights as W


def test_export_tflite(small_cfg, tmp_path):
    w = W.random_weights(small_cfg, 0)
    path = tmp_path / "model.tflite"
    if importlib.util.find_spec("ai_edge_litert") is None:
        # without the schema it is written with: one line that says what to install, and no file
        with pytest.raises(MntvmError, match="needs ai-edge-litert's flatbuffer schema .*: pip install ai-edge-litert") as e:
            export_tflite(small_cfg, w, path)
        assert len(str(e.value).splitlines()) == 1
        assert not path.exists()
        return
    from ai_edge_litert.interpreter import Interpreter

    data = export_tflite(small_cfg, w, path).read_bytes()
    assert data[4:8] == b"TFL3"  # the flatbuffer's file identifier
    assert build_tflite(small_cfg, W.fold_batchnorm(w)) == data  # batchnorm folded or not: the same model
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    r = small_cfg.resolution
    assert list(inp["shape"]) == [1, r, r, 3] and list(out["shape"]) == list(small_cfg.output_shape)
    x = np.random.default_rng(0).standard_normal(small_cfg.input_shape).astype(np.float32)
    it.set_tensor(inp["index"], np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    it.invoke()
    assert np.abs(it.get_tensor(out["index"]) - reference.forward(small_cfg, w, x)).max() <= 1e-4
