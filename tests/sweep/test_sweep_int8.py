"""`mntvm sweep --dtype int8`: every variant built in int8 and checked against the integer reference
of the network it carries; int8 and float32 artifacts of one variant are cached apart."""
from __future__ import annotations

import json

import pytest

from mntvm.compile import load_artifact
from mntvm.core.errors import MntvmError
from mntvm.sweep import sweep


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MNTVM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_int8_sweep_rows_and_cache(cache, tmp_path):
    out = tmp_path / "r8.jsonl"
    r = sweep("x86", [0.25], [32, 64], repeat=3, warmup=1, threads=1, out=out, progress=False, dtype="int8")
    assert r["dtype"] == "int8" and len(r["variants"]) == 2 and not r["failed"]
    for row in r["variants"]:
        assert row["dtype"] == "int8" and row["settings"]["dtype"] == "int8"
        assert row["max_abs_diff"] <= 1e-6 and row["median_ms"] > 0
        assert load_artifact(row["artifact"], verify=False).metadata["dtype"] == "int8"
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["dtype"] for x in lines} == {"int8"}
    f = sweep("x86", [0.25], [32], repeat=3, warmup=1, threads=1, progress=False)
    (row32,) = f["variants"]
    assert row32["dtype"] == "float32" and row32["artifact"] != r["variants"][0]["artifact"]
    assert load_artifact(row32["artifact"], verify=False).metadata["dtype"] == "float32"


def test_int8_sweep_refused_for_a_target_without_int8(cache, tmp_path):
    with pytest.raises(MntvmError, match="has no int8 path"):
        sweep("cuda-sm80", [0.25], [32], progress=False, dtype="int8")
