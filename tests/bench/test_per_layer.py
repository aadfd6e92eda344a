"""The per-layer report (mntvm.bench.per_layer_report): VM-call timings mapped to the model's layers,
fused depthwise + pointwise kernels included, against the paper's cost model."""
from __future__ import annotations

import pytest

from mntvm.bench.per_layer import per_layer_report
from mntvm.core.errors import MntvmError
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


def _ort_events(names_durs_us: dict, runs: int) -> list:
    """ONNX Runtime profile events as its JSON holds them: per run, one ``<node>_kernel_time`` event
    per node (category ``Node``), plus session events."""
    ev = [{"cat": "Session", "name": "model_loading_uri", "dur": 999}]
    for r in range(runs):
        ev.append({"cat": "Session", "name": "model_run", "dur": 5000})
        for node, durs in names_durs_us.items():
            ev.append({"cat": "Node", "name": f"{node}_fence_before", "dur": 0})
            ev.append({"cat": "Node", "name": f"{node}_kernel_time", "dur": durs[r]})
    return ev


def test_ort_per_layer_maps_nodes_onto_our_layers():
    from mntvm.bench.per_layer import ORT_OTHER, ort_per_layer

    nodes = {"stem_act_nchwc": [100, 300, 200], "ReorderInput": [5, 5, 5],
             "dw1_act_nchwc": [10, 10, 40], "pw1_act_nchwc": [50, 70, 60],
             "dw2_act": [1, 1, 1], "pw2": [2, 2, 2],
             "pool_nchwc": [3, 3, 3], "ReorderOutput": [4, 4, 4], "flatten": [1, 1, 1],
             "fc": [80, 80, 800], "softmax": [2, 2, 2]}
    layers = ["input", "stem", "dw1+pw1", "dw2+pw2", "pool", "fc", "softmax"]
    r = ort_per_layer(_ort_events(nodes, 3), layers)
    got = r["layers"]
    assert r["runs"] == 3
    # per node the median over runs (not the mean: fc's 800 us outlier), fused layers summed
    assert got["stem"] == pytest.approx(0.2) and got["fc"] == pytest.approx(0.08)
    assert got["dw1+pw1"] == pytest.approx(0.01 + 0.06) and got["dw2+pw2"] == pytest.approx(0.003)
    assert got[ORT_OTHER] == pytest.approx(0.005 + 0.004 + 0.001)
    assert "input" not in got and "dw1" not in got
    # unfused layer names get their node alone; a layer no node maps to is refused by name
    assert ort_per_layer(_ort_events(nodes, 3), ["dw1", "pw1"])["layers"]["pw1"] == pytest.approx(0.06)
    with pytest.raises(MntvmError, match=r"no node for layer\(s\) dw3\+pw3$"):
        ort_per_layer(_ort_events(nodes, 3), layers + ["dw3+pw3"])


def test_layers_in_network_script(tmp_path):
    """benchmarks/layers_in_network.py, tiny: every layer timed on both sides, ours equal to what our
    profiler's own report gives, ORT's nodes all accounted for."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, str(root / "benchmarks" / "layers_in_network.py"), "--alpha", "0.25",
                        "--resolution", "64", "--threads", "1", "--rounds", "2", "--per-round", "3",
                        "--schedules", "none", "--json"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.splitlines()[-1])
    t = r["threads"]["1"]
    rows = {row["layer"]: row for row in t["layers"]}
    cost = cost_report(MobileNetConfig(alpha=0.25, resolution=64))
    assert ["stem"] + [f"dw{i}+pw{i}" for i in range(1, 14)] + ["pool", "fc", "softmax"] == \
        [n for n in rows if n not in ("input", "other")]
    for name, row in rows.items():
        if name != "other":
            assert row["ours_ms"] > 0 and row["ort_ms"] > 0 and row["ratio"] == pytest.approx(
                row["ours_ms"] / row["ort_ms"]), name
    assert sum(row["madds"] for row in rows.values()) == cost["total_madds"]
    assert t["ours_layers_ms"] == pytest.approx(sum(row["ours_ms"] for row in rows.values()))
