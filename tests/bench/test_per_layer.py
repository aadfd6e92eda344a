"""The per-layer report (mntvm.bench.per_layer_report): VM-call timings mapped to the model's layers,
fused depthwise + pointwise kernels included, against the paper's cost model."""
from __future__ import annotations

import pytest

from mntvm.bench.per_layer import per_layer_report
from mntvm.model.cost import cost_report
from mntvm.model.network import MobileNetConfig

CFG = MobileNetConfig(alpha=0.5, resolution=128)


def _profile(fused: bool) -> dict:
    """A VM profile as :func:`mntvm.remote.vm_profile.profile_vm` returns it: 1 ms per kernel,
    builtins between them."""
    names = ["mntvm_conv"]
    for i in range(13):
        names += [f"mntvm_dwpw{i}"] if fused else [f"mntvm_dw{i}", f"mntvm_pw{i}"]
    names += ["mntvm_pool", "reshape", "mntvm_dense", "softmax"]
    calls = []
    for n in names:
        calls += [["vm.builtin.alloc_tensor", [], 1e-4], [n, [[1]], 1e-3]]
    return {"runs": 3, "calls": calls, "run_s": [0.03]}


@pytest.mark.parametrize("fused", [False, True])
def test_layers_and_their_mult_adds(fused):
    cost = {ly["name"]: ly for ly in cost_report(CFG)["layers"]}
    r = per_layer_report(_profile(fused), CFG, peak_gflops=100.0)
    assert r["mapped_to_layers"]
    layers = {ly["layer"]: ly for ly in r["layers"]}
    names = [ly["layer"] for ly in r["layers"]]
    if fused:
        assert names[:3] == ["stem", "dw1+pw1", "dw2+pw2"] and "dw1" not in layers and "pw13" not in layers
        for i in range(1, 14):
            ly = layers[f"dw{i}+pw{i}"]
            assert ly["type"] == "separable" and ly["kernels"] == 1
            assert ly["madds"] == cost[f"dw{i}"]["madds"] + cost[f"pw{i}"]["madds"]
    else:
        assert names[:3] == ["stem", "dw1", "pw1"] and layers["pw13"]["type"] == "pointwise"
    assert names[-3:] == ["pool", "fc", "softmax"]
    main = [ly for ly in r["layers"] if ly["madds"]]
    # every mult-add of the model counted once; 1 ms per kernel (the FC's layer also has the reshape)
    assert sum(ly["madds"] for ly in main) == sum(ly["madds"] for ly in cost.values())
    for ly in main:
        assert ly["mean_ms"] == pytest.approx(2.0 if ly["layer"] == "fc" else 1.0)
        assert ly["gflops"] == pytest.approx(2 * ly["madds"] / (ly["mean_ms"] * 1e-3) / 1e9)
        assert ly["pct_peak"] == pytest.approx(ly["gflops"])  # the peak is 100 GFLOP/s


def test_unmapped_when_the_counts_do_not_match():
    p = _profile(True)
    p["calls"] = [c for c in p["calls"] if c[0] != "mntvm_dwpw3"]  # one fused kernel missing
    r = per_layer_report(p, CFG)
    assert not r["mapped_to_layers"] and r["layers"] == []
