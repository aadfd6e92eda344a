"""Weights that would give wrong answers silently (NaN, inf, negative variances, strings) are
refused with one line naming the tensor."""
from __future__ import annotations

import numpy as np
import pytest

from mntvm.core.errors import MntvmError
from mntvm.model import weights as W


@pytest.mark.parametrize("name,value,match", [
    ("pw3.weight", np.nan, r"'pw3.weight' holds 1 NaN or infinite value$"),
    ("fc.bias", np.inf, r"'fc.bias' holds 1 NaN or infinite value$"),
    ("dw2.bn.var", -1.0, r"'dw2.bn.var' has negative batchnorm variances \(min -1\)"),
])
def test_bad_values_are_refused(small_cfg, tmp_path, name, value, match):
    w = W.random_weights(small_cfg, 0)
    w[name] = w[name].copy()
    w[name].flat[0] = value
    with pytest.raises(MntvmError, match=match) as e:
        W.load(small_cfg, w)
    assert len(str(e.value).splitlines()) == 1
    path = W.save_npz(w, tmp_path / "bad.npz")  # the same through a file
    with pytest.raises(MntvmError, match=match):
        W.load(small_cfg, path)


def test_non_numbers_are_refused(small_cfg, tmp_path):
    w = {k: v for k, v in W.random_weights(small_cfg, 0).items()}
    w["stem.weight"] = np.full(w["stem.weight"].shape, "x")
    with pytest.raises(MntvmError, match=r"'stem.weight' holds <U1 values, not numbers"):
        W.load(small_cfg, w)


@pytest.mark.parametrize("content,match", [
    (b"", "not an .npz archive"),
    (b"hello, not numpy\n", "not an .npz archive"),
    (None, "truncated or corrupt"),
])
def test_unreadable_npz_is_one_line(small_cfg, tmp_path, content, match):
    good = W.save_npz(W.random_weights(small_cfg, 0), tmp_path / "good.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content if content is not None else good.read_bytes()[:-2000])
    with pytest.raises(MntvmError, match=match) as e:
        W.load(small_cfg, bad)
    assert len(str(e.value).splitlines()) == 1 and "pickle" not in str(e.value)
