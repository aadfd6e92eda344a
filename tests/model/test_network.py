import pytest

from mntvm.core.errors import MntvmError
from mntvm.model.network import MobileNetConfig, build_relax, layer_specs, param_shapes


@pytest.mark.parametrize("field,value", [
    ("alpha", 0), ("alpha", -0.5), ("alpha", "1"), ("resolution", 100), ("resolution", 0), ("resolution", -32),
    ("num_classes", 0), ("batch", 0), ("activation", "gelu"), ("dtype", "float16"), ("alpha", 0.01),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(MntvmError) as e:
        MobileNetConfig(**{field: value})
    msg = str(e.value)
    assert field in msg and "\n" not in msg


def test_layer_table_follows_paper_table1_with_erratum():
    specs = layer_specs(MobileNetConfig())
    names = [s.name for s in specs]
    assert names == ["stem"] + [f"{k}{i}" for i in range(1, 14) for k in ("dw", "pw")] + ["fc"]
    dw = [s for s in specs if s.kind == "depthwise"]
    assert [s.stride for s in dw] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]  # dw13 stride 1 (erratum)
    assert [s.out_hw for s in dw][-2:] == [7, 7]
    assert specs[0].out_hw == 112 and specs[0].out_channels == 32
    pw = [s for s in specs if s.kind == "pointwise"]
    assert [s.out_channels for s in pw] == [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    assert specs[-1].in_channels == 1024 and specs[-1].out_channels == 1000


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75, 1.0, 0.3])
def test_width_multiplier_truncates(alpha):
    specs = layer_specs(MobileNetConfig(alpha=alpha))
    assert specs[0].out_channels == int(32 * alpha)
    assert [s.out_channels for s in specs if s.kind == "pointwise"][-1] == int(1024 * alpha)
    # every layer's input is the previous layer's output
    for a, b in zip(specs, specs[1:]):
        assert b.in_channels == a.out_channels


def test_relax_graph_shapes_and_names():
    cfg = MobileNetConfig(alpha=0.5, resolution=160, num_classes=10, batch=2)
    mod = build_relax(cfg)
    f = mod["main"]
    params = [p.name for p in f.params]
    assert params[0] == "data" and params[1:] == list(param_shapes(cfg))
    assert [int(d) for d in f.ret_ty.shape] == [2, 10]


def test_folded_weights_build_bias_graph():
    from mntvm.model import weights as W

    cfg = MobileNetConfig(alpha=0.25, resolution=64)
    folded = W.fold_batchnorm(W.random_weights(cfg))
    mod = build_relax(cfg, folded)
    text = mod.script()
    assert "batch_norm" not in text and "R.add" in text
    with pytest.raises(MntvmError, match="missing"):
        build_relax(cfg, {k: v for k, v in folded.items() if k != "pw7.bias"})
