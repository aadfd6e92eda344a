"""CUDA templates (mntvm.templates.cuda), checked without a GPU.

No GPU is needed to check what a template *computes*: TIR gives a schedule the meaning of its loop
nest run in order, and GPU execution is a refinement of it (TVM inserts the barriers for the
shared-memory staging and lowers the cross-thread reduction). So each schedule is replayed with its
``bind`` steps left out — thread loops become plain loops — built for this CPU and compared with
numpy / ONNX Runtime: tiling, boundary predicates, compute-at regions, the shared-memory staging,
the rfactor of the FC. What only the device can show (timing, the barriers TVM inserts) is not
claimed here. Then the real CUDA build: every kernel within the target's limits (threads per
block, shared memory, vector width), and at the default knobs nvcc's ptxas spills no register.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import tvm
from tvm import relax, te
from tvm.s_tir import Schedule
from tvm.s_tir.analysis import verify_gpu_code
from tvm.s_tir.schedule import Trace

from mntvm.export.onnx import build_onnx
from mntvm.model import weights as W
from mntvm.model.network import MobileNetConfig
from mntvm.targets.profiles import get_profile
from mntvm.templates.cuda import VECTOR_BITS
from mntvm.templates.defaults import apply_default_schedules, default_schedule
from mntvm.templates.gpu import compile_gpu
from mntvm.templates.lowering import lower
from mntvm.templates.registry import RULES, all_blocks, mark_scheduled, rule_of, scheduler, tunable_tasks

from conftest import ort_run
from test_templates_cpu import check_dense_and_pool, check_depthwise, check_pointwise, check_stem

V = VECTOR_BITS // 32
CUDA = get_profile("cuda-sm80").tvm_target()
SEEDS = [None, 1, 2, 3, 4]  # None: the default knobs; else randomly sampled knobs


def limits(target) -> dict:
    a = target.attrs
    return {"max_shared_memory_per_block": int(a["max_shared_memory_per_block"]),
            "max_threads_per_block": int(a["max_threads_per_block"]),
            "max_thread_x": 1024, "max_thread_y": 1024, "max_thread_z": 64, "max_vector_bytes": 16,
            "max_vthread": 8}


def _gpu_schedule(mod, seed):
    """Every block with one of our rules scheduled by its CUDA template: default knobs (seed None)
    or knobs sampled with ``seed``."""
    if seed is None:
        return default_schedule(mod, CUDA)
    sch = Schedule(mod, seed=seed)
    for b in all_blocks(mod["main"]):
        rule = rule_of(b)
        if rule:
            scheduler("cuda", rule)(sch, sch.get_sblock(b.name_hint), None)
    return sch


def serial(sch: Schedule, mod) -> tvm.IRModule:
    """``sch``'s program with its thread bindings left out (see the module docstring)."""
    insts = [i for i in sch.trace.insts if i.kind.name != "Bind"]
    assert len(insts) < len(sch.trace.insts), "not a GPU schedule: nothing was bound to threads"
    out = Schedule(mod)
    Trace(insts, {i: d for i, d in sch.trace.decisions.items() if i in insts}).apply_to_schedule(
        out, remove_postproc=False)
    return out.mod


def _check(tensors, block, seed):
    mod = tvm.IRModule({"main": te.create_prim_func(tensors)})
    assert block in [b.name_hint for b in all_blocks(mod["main"]) if rule_of(b)]
    sch = _gpu_schedule(mod, seed)
    if seed is None:
        assert verify_gpu_code(sch.mod["main"], limits(CUDA))
    return serial(sch, mod)


def _by_seed(seed):
    return lambda tensors, block, _rule: _check(tensors, block, seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_pointwise(seed):
    check_pointwise(_by_seed(seed), V, 3 * V, 8 * V, 10, atol=1e-5)  # 100 positions: uneven tiles


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("stride,h", [(1, 6), (2, 8), (2, 7)])
def test_depthwise(seed, stride, h):
    check_depthwise(_by_seed(seed), V, 4 * V, stride, h, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_stem(seed):
    check_stem(_by_seed(seed), V, 6 * V, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_dense_and_pool(seed):
    check_dense_and_pool(_by_seed(seed), V, 96, 37, 22, atol=1e-5)  # 22 channels: 6 blocks of 4, 2 padded


# ------------------------------------------------------------------------------------------------
CFG = MobileNetConfig(alpha=0.25, resolution=64)


@pytest.mark.parametrize("seed", [None, 11])
def test_network_matches_onnx_runtime(seed):
    """The whole network as the CUDA build schedules it (every template task, at the defaults or
    at sampled knobs), run in order on this CPU, vs ONNX Runtime."""
    w = W.random_weights(CFG)
    low = lower(CFG, w, get_profile("cuda-sm80"))
    tasks = tunable_tasks(low)
    assert {rule_of(b) for f in tasks.values() for b in all_blocks(f)} >= set(RULES)
    for name, func in tasks.items():
        mod = tvm.IRModule({"main": func})
        low[name] = mark_scheduled(serial(_gpu_schedule(mod, seed), mod)["main"])
    cpu = tvm.target.Target("llvm")
    ex = tvm.compile(apply_default_schedules(low, cpu, VECTOR_BITS), target=cpu)
    x = np.random.default_rng(0).uniform(-1, 1, CFG.input_shape).astype(np.float32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    assert np.abs(got - ort_run(build_onnx(CFG, w), x)).max() <= 1e-5


def _cuda_sources(ex) -> str:
    found, todo = [], [ex.mod]
    while todo:
        m = todo.pop()
        todo += list(m.imports)
        if m.kind == "cuda":
            found.append(m.inspect_source())
    return "\n".join(found)


@pytest.mark.parametrize("alpha,res", [(1.0, 224), (0.25, 128)])
def test_default_knobs_fit_the_gpu_and_do_not_spill(alpha, res, tmp_path):
    """Compile with no log: every template kernel within the H100's limits, and ptxas (nvcc's
    assembler, which allocates registers) reports no spill and no local-memory stack frame."""
    assert shutil.which("nvcc"), "nvcc not found: CUDA builds need the CUDA toolkit on PATH"
    profile = get_profile("cuda-sm90")
    target = profile.tvm_target()
    cfg = MobileNetConfig(alpha=alpha, resolution=res)
    low = apply_default_schedules(lower(cfg, W.random_weights(cfg), profile), target)
    tasks = tunable_tasks(low)
    for name, func in tasks.items():
        assert verify_gpu_code(func, limits(target)), name
    ex, rules = compile_gpu(low, target)
    assert "dlight.gpu.Matmul" not in rules  # every conv is ours; DLight only for softmax & co
    src = _cuda_sources(ex)
    for name in tasks:
        assert f"{name}_kernel" in src, name
    assert "__shared__" in src and "float4" in src
    (tmp_path / "k.cu").write_text(src)
    arch = str(target.attrs["arch"])
    res_ = subprocess.run(["nvcc", "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                           str(tmp_path / "k.cu")], capture_output=True, text=True)
    assert res_.returncode == 0, res_.stderr[-2000:]
    stats = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", res_.stderr)
    assert len(stats) >= len(tasks)
    assert all(s == ("0", "0", "0") for s in stats), stats


def test_rules_are_registered_for_cuda():
    """Plain MetaSchedule (ApplyCustomRule) finds our rules through the block attribute on a CUDA
    target: the design space is the template, with its knobs as sampling instructions."""
    from tvm.s_tir import meta_schedule as ms

    for rule in RULES:
        assert tvm.get_global_func(f"s_tir.meta_schedule.cuda.{rule}", allow_missing=True) is not None
    low = lower(CFG, W.random_weights(CFG), get_profile("cuda-sm80"))
    name = sorted(n for n in tunable_tasks(low) if n.startswith("mntvm_pw"))[-1]
    ctx = ms.TuneContext(mod=tvm.IRModule({"main": low[name]}), target=CUDA, task_name=name,
                         space_generator=ms.space_generator.PostOrderApply(
                             sch_rules=[ms.schedule_rule.ApplyCustomRule()], postprocs=[], mutator_probs={}))
    (space,) = ctx.generate_design_space()
    kinds = [i.kind.name for i in space.trace.insts]
    assert kinds.count("SamplePerfectTile") == 6 and kinds.count("SampleCategorical") == 1
    binds = [str(i.attrs[0]) for i in space.trace.insts if i.kind.name == "Bind"]
    assert {"blockIdx.x", "threadIdx.x", "threadIdx.y", "vthread.x"} <= set(binds)


def test_sampled_knobs_generate_cuda():
    """What tuning builds: knobs sampled at random, kept when within the target's limits (as
    MetaSchedule's VerifyGPUCode postproc does), generate CUDA for every task."""
    low = lower(CFG, W.random_weights(CFG), get_profile("cuda-sm80"))
    kept = 0
    for name, func in tunable_tasks(low).items():
        mod = tvm.IRModule({"main": func.with_attr("global_symbol", name)})
        for seed in (1, 2, 3):
            f = _gpu_schedule(mod, seed).mod["main"]
            if not verify_gpu_code(f, limits(CUDA)):
                continue
            kept += 1
            src = _cuda_sources(tvm.compile(tvm.IRModule({"main": f}), target=CUDA))
            assert "__global__" in src, name
    assert kept >= 30
