import json

import pytest

from mntvm.model.cost import cost_report, count_relax
from mntvm.model.network import MobileNetConfig, build_relax
from conftest import run_cli

# The MobileNets paper (Howard et al. 2017), Tables 6 and 7 (and Table 4 for α=1/224):
# mult-adds in millions, params in millions, as printed.
PAPER = [
    (1.0, 224, 569, 4.2), (0.75, 224, 325, 2.6), (0.5, 224, 149, 1.3), (0.25, 224, 41, 0.5),
    (1.0, 192, 418, 4.2), (1.0, 160, 290, 4.2), (1.0, 128, 186, 4.2),
]


@pytest.mark.parametrize("alpha,res,madds_m,params_m", PAPER)
def test_totals_match_paper_tables(alpha, res, madds_m, params_m):
    r = cost_report(MobileNetConfig(alpha=alpha, resolution=res))
    assert round(r["total_madds"] / 1e6) == pytest.approx(madds_m, abs=1)  # paper rounds to 1M
    assert round(r["total_params"] / 1e6, 1) == params_m


def test_standard_conv_network_matches_table4():
    # Table 4: "Conv MobileNet" 4866M mult-adds, 29.3M params.
    std = cost_report(MobileNetConfig())["standard_conv"]
    assert std["total_madds"] / 1e6 == pytest.approx(4866, rel=5e-4)
    assert round(std["total_params"] / 1e6, 1) == 29.3


def test_per_layer_values_from_the_formulas():
    r = cost_report(MobileNetConfig())
    L = {l["name"]: l for l in r["layers"]}
    assert L["stem"]["madds"] == 112 * 112 * 3 * 32 * 9 and L["stem"]["params"] == 3 * 32 * 9
    assert L["dw1"]["madds"] == 112 * 112 * 32 * 9 and L["dw1"]["params"] == 32 * 9
    assert L["pw1"]["madds"] == 112 * 112 * 32 * 64 and L["pw1"]["params"] == 32 * 64
    assert L["dw2"]["madds"] == 56 * 56 * 64 * 9  # stride 2: output size counts
    assert L["dw13"]["madds"] == 7 * 7 * 1024 * 9 and L["pw13"]["madds"] == 7 * 7 * 1024 * 1024
    assert L["fc"]["madds"] == L["fc"]["params"] == 1024 * 1000
    assert L["pw13"]["type"] == "pointwise" and L["fc"]["type"] == "fc" and L["stem"]["type"] == "conv"
    # stored params: conv/fc weights plus one bias per output channel (BN folded)
    assert r["stored_params"] == r["total_params"] + sum(l["output_shape"][1] for l in r["layers"])


@pytest.mark.parametrize("alpha", [1.0, 0.25])
def test_reduction_ratio(alpha):
    r = cost_report(MobileNetConfig(alpha=alpha))
    assert len(r["blocks"]) == 13
    for b in r["blocks"]:
        assert b["ratio"] == pytest.approx(b["paper_ratio"], rel=1e-12)
    b1 = r["blocks"][0]
    d_j = int(64 * alpha)
    assert b1["paper_ratio"] == pytest.approx(1 / d_j + 1 / 9)
    assert b1["standard_conv_madds"] == 112 * 112 * int(32 * alpha) * d_j * 9
    assert b1["madds"] == 112 * 112 * int(32 * alpha) * (9 + d_j)
    # 8-9x fewer mult-adds for 3x3 at full width
    if alpha == 1.0:
        assert 8 < 1 / r["blocks"][-1]["ratio"] < 9


@pytest.mark.parametrize("alpha,res", [(1.0, 224), (0.25, 128), (0.75, 160)])
def test_cost_agrees_with_the_relax_graph(alpha, res):
    cfg = MobileNetConfig(alpha=alpha, resolution=res)
    r = cost_report(cfg)
    assert count_relax(build_relax(cfg)) == {"madds": r["total_madds"], "params": r["total_params"]}


def test_cost_scales_with_alpha_and_rho():
    base = cost_report(MobileNetConfig())["total_madds"]
    half_res = cost_report(MobileNetConfig(resolution=128))["total_madds"]
    assert half_res / base == pytest.approx((128 / 224) ** 2, rel=0.01)  # ~rho^2 (FC does not scale)
    half_w = cost_report(MobileNetConfig(alpha=0.5))["total_madds"]
    assert 0.25 < half_w / base < 0.28  # ~alpha^2, plus the alpha-linear stem/depthwise terms


def test_cli_json_is_one_object():
    p = run_cli("cost", "--alpha", "0.5", "--resolution", "160", "--json")
    obj = json.loads(p.stdout)
    assert obj["alpha"] == 0.5 and obj["resolution"] == 160
    assert isinstance(obj["total_madds"], int) and isinstance(obj["total_params"], int)
    assert isinstance(obj["stored_params"], int)
    assert {"total_madds", "total_params"} <= set(obj["standard_conv"])
    for layer in obj["layers"]:
        assert {"name", "type", "madds", "params"} <= set(layer)
        assert layer["type"] in ("conv", "depthwise", "pointwise", "fc")
    assert obj["total_madds"] == cost_report(MobileNetConfig(alpha=0.5, resolution=160))["total_madds"]


def test_cli_table_and_bad_input():
    p = run_cli("cost")
    assert "568,740,352" in p.stdout and "pw13" in p.stdout and "1/d_j+1/k^2" in p.stdout
    p = run_cli("cost", "--resolution", "100", check=False)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "resolution" in p.stderr


@pytest.mark.parametrize("alpha,res", [(0.25, 32), (1.0, 32)])
def test_weight_bytes_per_dtype_match_what_is_stored(alpha, res):
    """`weight_bytes` against the arrays a float32 build binds and an int8 quantization holds."""
    import numpy as np

    from mntvm.model.quantize import quantize
    from mntvm.model.weights import fold_batchnorm, random_weights

    cfg = MobileNetConfig(alpha=alpha, resolution=res)
    w = random_weights(cfg, 0)
    rep = cost_report(cfg)["weight_bytes"]
    assert rep["float32"] == sum(v.nbytes for v in fold_batchnorm(w).values() if v.dtype == np.float32)
    net = quantize(cfg, w, np.random.default_rng(0).standard_normal((2,) + cfg.input_shape[1:]))
    stored = sum(l.weight.nbytes + l.bias.nbytes + l.weight_scale.nbytes for l in net.layers)
    assert rep["int8"] == stored == net.weight_bytes
    assert 3.5 < rep["float32"] / rep["int8"] < 4
