"""mntvm.model.calibration: calibration inputs from a folder of arrays and images, or seeded."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mntvm import MntvmError
from mntvm.compile import deterministic_input as run_default_input
from mntvm.model.calibration import load_calibration
from mntvm.model.network import MobileNetConfig

CFG = MobileNetConfig(alpha=0.25, resolution=32)
R = CFG.resolution


def _expected(path) -> np.ndarray:
    """What MobileNetV1 is fed: RGB, bilinear resize to R x R, x / 127.5 - 1, CHW (computed here)."""
    rgb = np.asarray(Image.open(path).convert("RGB").resize((R, R), Image.BILINEAR), np.float64)
    return (rgb / 127.5 - 1.0).transpose(2, 0, 1)


def test_folder_of_arrays_and_images(tmp_path):
    rng = np.random.default_rng(0)
    one = rng.uniform(-1, 1, (3, R, R)).astype(np.float32)
    two = rng.uniform(-1, 1, (2, 3, R, R))  # float64: read as float32
    np.save(tmp_path / "a.npy", one)
    np.save(tmp_path / "b.npy", two)
    Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(rng.integers(0, 256, (20, 70), dtype=np.uint8), "L").save(tmp_path / "d.JPG")  # grey
    (tmp_path / "notes.txt").write_text("not an input")
    (tmp_path / "sub.npy").mkdir()  # a folder named like an input is not one

    x = load_calibration(tmp_path, CFG, count=0)
    assert x.dtype == np.float32 and x.shape == (5, 3, R, R)
    assert np.array_equal(x[0], one) and np.array_equal(x[1:3], two.astype(np.float32))
    for row, name in ((3, "c.png"), (4, "d.JPG")):
        assert np.abs(x[row] - _expected(tmp_path / name)).max() <= 1e-6
        assert x[row].min() >= -1 and x[row].max() <= 1
    assert np.array_equal(load_calibration(tmp_path, CFG, count=2), x[:2])  # sorted order, first N
    assert np.array_equal(load_calibration(tmp_path, CFG, count=4), x[:4])


def test_seeded_inputs_are_the_run_default():
    x = load_calibration(None, CFG, count=4, seed=3)
    assert x.shape == (4, 3, R, R) and x.dtype == np.float32
    assert np.array_equal(x, run_default_input((4, 3, R, R), 3))
    assert np.array_equal(load_calibration(None, CFG, count=2)[:1], run_default_input(CFG.input_shape))
    assert not np.array_equal(x[0], x[1])


def _error(source, count=16) -> str:
    with pytest.raises(MntvmError) as e:
        load_calibration(source, CFG, count=count)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    return msg


def test_bad_calibration_input_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _error(empty) == f"calibration folder {empty} has no .npy, .jpg, .jpeg or .png files"
    (empty / "readme.txt").write_text("x")
    assert "has no .npy" in _error(empty)

    for name, arr, why in (("wrong_shape.npy", np.zeros((3, R + 1, R), np.float32), f"(3, {R + 1}, {R})"),
                           ("ints.npy", np.zeros((3, R, R), np.uint8), "uint8"),
                           ("nan.npy", np.full((3, R, R), np.nan, np.float32), "NaN")):
        d = tmp_path / name.split(".")[0]
        d.mkdir()
        np.save(d / name, arr)
        msg = _error(d)
        assert str(d / name) in msg and why in msg

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    png = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    (corrupt / "a.png").write_bytes(png.read_bytes()[:40])  # truncated
    (corrupt / "b.jpg").write_bytes(b"not a jpeg at all")
    assert _error(corrupt).startswith(f"cannot read calibration image {corrupt / 'a.png'}: ")
    (corrupt / "a.png").unlink()
    assert _error(corrupt).startswith(f"cannot read calibration image {corrupt / 'b.jpg'}: ")

    assert _error(png) == f"calibration source {png} is not a folder: give a folder of .npy/.jpg/.png files"
    assert "does not exist" in _error(tmp_path / "missing")
    assert "calibration count -1" in _error(None, count=-1)
    assert "need a count >= 1" in _error(None, count=0)
