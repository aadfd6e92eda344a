import numpy as np
import onnx
import pytest

from mntvm.model import reference
from mntvm.model import weights as W
from mntvm.core.errors import MntvmError
from mntvm.export.onnx import build_onnx, export_onnx
from mntvm.model.network import MobileNetConfig, param_shapes

from conftest import ort_run
from foreign_onnx import make as make_foreign


def test_random_weights_are_seeded_and_fit(small_cfg):
    a, b, c = W.random_weights(small_cfg, 0), W.random_weights(small_cfg, 0), W.random_weights(small_cfg, 1)
    assert W.digest(a) == W.digest(b) != W.digest(c)
    assert {k: v.shape for k, v in a.items() if k != "bn_eps"} == param_shapes(small_cfg)
    assert all(v.dtype == np.float32 for v in a.values())


@pytest.mark.parametrize("alpha,res", [(0.25, 96), (1.0, 224)])
def test_random_weights_give_non_degenerate_softmax(alpha, res):
    cfg = MobileNetConfig(alpha=alpha, resolution=res)
    x = np.random.default_rng(3).uniform(-1, 1, cfg.input_shape)
    p = reference.forward(cfg, W.random_weights(cfg), x)[0]
    assert p.sum() == pytest.approx(1.0)
    assert 2 / cfg.num_classes < p.max() < 0.9  # neither uniform nor one-hot
    assert (p > 1e-3).sum() >= 5


def test_npz_round_trip_is_exact_and_atomic(small_cfg, tmp_path):
    w = W.random_weights(small_cfg, 7)
    path = W.save_npz(w, tmp_path / "w.npz")
    back = W.load(small_cfg, path)
    assert set(back) == set(w)
    for k in w:
        np.testing.assert_array_equal(back[k], w[k])
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temp file left behind


def test_fold_batchnorm_is_exact(small_cfg):
    w = W.random_weights(small_cfg, 2)
    x = np.random.default_rng(0).uniform(-1, 1, small_cfg.input_shape)
    a = reference.forward(small_cfg, w, x)
    b = reference.forward(small_cfg, W.fold_batchnorm(w), x)
    assert np.abs(a - b).max() < 1e-6


@pytest.mark.parametrize("style", ["torch", "folded"])
def test_import_onnx_from_another_framework(style, tmp_path):
    cfg = MobileNetConfig(alpha=0.25, resolution=64, num_classes=10)
    model, truth = make_foreign(0.25, 64, 10, style)
    path = tmp_path / f"{style}.onnx"
    onnx.save(model, path)
    w = W.load(cfg, path)
    for k, v in truth.items():
        if style == "folded" and k == "bn_eps":
            continue
        np.testing.assert_allclose(w[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    assert W.is_folded(w) == (style == "folded")
    # the imported network computes what the foreign file computes (ORT is the judge)
    x = np.random.default_rng(1).uniform(-1, 1, cfg.input_shape).astype(np.float32)
    theirs = ort_run(path, x)
    if style == "torch":
        theirs = np.exp(theirs - theirs.max()) / np.exp(theirs - theirs.max()).sum()
    assert np.abs(reference.forward(cfg, w, x) - theirs).max() < 1e-5


def test_import_onnx_round_trips_through_our_export(tmp_path):
    cfg = MobileNetConfig(alpha=0.5, resolution=64, activation="relu")
    w = W.random_weights(cfg, 4)
    path = export_onnx(cfg, w, tmp_path / "m.onnx")
    back = W.load(cfg, path)
    for k in w:
        np.testing.assert_array_equal(back[k], w[k])


def test_import_onnx_shape_mismatch_names_layer_and_shapes(tmp_path):
    model, _ = make_foreign(0.5, 64, 10, "torch")
    onnx.save(model, tmp_path / "half.onnx")
    with pytest.raises(MntvmError) as e:
        W.load(MobileNetConfig(alpha=0.25, resolution=64, num_classes=10), tmp_path / "half.onnx")
    msg = str(e.value)
    assert "stem" in msg and "(16, 3, 3, 3)" in msg and "(8, 3, 3, 3)" in msg and "\n" not in msg


def test_npz_shape_mismatch_and_bad_files(small_cfg, tmp_path):
    w = W.random_weights(MobileNetConfig(alpha=0.25, resolution=96, num_classes=10))
    W.save_npz(w, tmp_path / "w.npz")
    with pytest.raises(MntvmError, match=r"layer fc 'fc.weight' has shape \(10, 256\).*\(1000, 256\)"):
        W.load(small_cfg, tmp_path / "w.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(MntvmError, match="cannot read weights"):
        W.load(small_cfg, tmp_path / "bad.npz")
    with pytest.raises(MntvmError, match="not found"):
        W.load(small_cfg, tmp_path / "missing.npz")
    with pytest.raises(MntvmError, match="unknown weights format"):
        W.load(small_cfg, tmp_path / "w.h5")


def test_export_matches_numpy_reference(small_cfg):
    w = W.random_weights(small_cfg, 5)
    x = np.random.default_rng(2).uniform(-1, 1, small_cfg.input_shape).astype(np.float32)
    for weights in (w, W.fold_batchnorm(w)):
        assert np.abs(ort_run(build_onnx(small_cfg, weights), x) - reference.forward(small_cfg, w, x)).max() < 1e-5
