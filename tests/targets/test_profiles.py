"""Target profiles: loading, errors, and compile + export of a tiny MobileNet-like model per family.

The model (stem conv 3x3/2, depthwise 3x3, pointwise 1x1, ReLU6, global mean, dense) is built
locally with ``relax.BlockBuilder`` so these tests don't depend on ``mntvm.model``.
Needs the Debian packages g++-aarch64-linux-gnu and g++-arm-linux-gnueabihf, and nvcc for CUDA.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mntvm.core.errors import MntvmError
from mntvm.targets.profiles import get_profile, list_profiles

from binaries import assert_cpu_lib, elf_header, fatbin_archs

C, CLASSES, RES = 8, 10, 32

EM_X86_64, EM_ARM, EM_AARCH64 = 62, 40, 183
EF_ARM_ABI_FLOAT_HARD = 0x400


# --------------------------------------------------------------------------------------------
# the tiny model and its numpy reference
# --------------------------------------------------------------------------------------------
def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) * 0.3).astype("float32")  # noqa: E731
    return {"stem": w(C, 3, 3, 3), "dw": w(C, 1, 3, 3), "pw": w(2 * C, C, 1, 1),
            "fc": w(2 * C, CLASSES)}


def build_tiny(weights: dict[str, np.ndarray]):
    """conv3x3/2 → ReLU6 → depthwise 3x3 → ReLU6 → 1x1 → ReLU6 → mean(H,W) → dense."""
    import tvm
    from tvm import relax

    const = lambda k: relax.const(tvm.runtime.tensor(weights[k]))  # noqa: E731
    bb = relax.BlockBuilder()
    x = relax.Var("data", relax.TensorType((1, 3, RES, RES), "float32"))
    relu6 = lambda y: bb.emit(relax.op.clip(y, 0.0, 6.0))  # noqa: E731
    with bb.function("main", [x]):
        with bb.dataflow():
            y = relu6(bb.emit(relax.op.nn.conv2d(x, const("stem"), strides=2, padding=1)))
            y = relu6(bb.emit(relax.op.nn.conv2d(y, const("dw"), padding=1, groups=C)))
            y = relu6(bb.emit(relax.op.nn.conv2d(y, const("pw"))))
            y = bb.emit(relax.op.mean(y, axis=[2, 3]))
            out = bb.emit_output(bb.emit(relax.op.matmul(y, const("fc"))))
        bb.emit_func_output(out)
    return bb.get()


def _conv(x, w, stride=1, pad=0, groups=1):
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo), "float64")
    og = o // groups
    for g in range(groups):
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch,
                                                         w[g * og:(g + 1) * og, :, i, j])
    return out


def reference(x, w):
    relu6 = lambda y: np.clip(y, 0, 6)  # noqa: E731
    y = relu6(_conv(x, w["stem"], 2, 1))
    y = relu6(_conv(y, w["dw"], 1, 1, groups=C))
    y = relu6(_conv(y, w["pw"]))
    return y.mean(axis=(2, 3)) @ w["fc"]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights():
    return _weights()


def compile_for(profile, weights):
    """Compile the tiny model for ``profile``; returns (executable, schedule rules)."""
    import tvm

    mod = build_tiny(weights)
    if profile.family in ("cuda", "opencl"):
        from mntvm.templates.gpu import compile_gpu

        return compile_gpu(mod, profile.tvm_target())
    return tvm.compile(mod, target=profile.tvm_target()), []


def build_and_export(name, weights, tmp_path, **kw) -> tuple[Path, list[str]]:
    profile = get_profile(name, **kw)
    ex, rules = compile_for(profile, weights)
    return profile.export_library(ex, tmp_path / f"{name}.so"), rules


def write_profile(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


AARCH64_PROFILE = """
description = "{desc}"
family = "aarch64"
cross_compiler = "{cc}"
cross_package = "{pkg}"
threads = 4
vector_bits = 128

[target]
kind = "llvm"
mtriple = "aarch64-linux-gnu"
mcpu = "cortex-a55"
mattr = ["+neon"]
"""


# --------------------------------------------------------------------------------------------
# profiles
# --------------------------------------------------------------------------------------------
REQUIRED = ["x86", "x86-avx2", "x86-avx512", "rpi4-aarch64", "rk3399", "jetson-orin-cpu",
            "aarch64", "rpi3-armv7", "rpi4-armv7", "cuda-sm90", "cuda-sm80", "jetson-orin-nano",
            "mali", "adreno", "vulkan", "aarch64-dotprod"]


def test_shipped_profiles_load_and_describe_themselves():
    profiles = {p.name: p for p in list_profiles()}
    assert set(REQUIRED) <= set(profiles)
    for p in profiles.values():
        meta = p.to_metadata()
        json.dumps(meta)  # JSON-able
        assert meta["tvm_target"]["kind"] == {"cuda": "cuda", "opencl": "opencl",
                                              "vulkan": "vulkan"}.get(p.family, "llvm")
        assert p.description and "\n" not in p.description
        assert p.vector_bits in (128, 256, 512) and p.threads >= 1
        assert Path(p.source).is_file()
        if p.family in ("cuda", "opencl", "vulkan"):
            assert meta["tvm_target"]["host"]["kind"] == "llvm"
    assert profiles["rpi4-armv7"].target_dict["mfloat-abi"] == "hard"
    assert profiles["jetson-orin-nano"].to_metadata()["tvm_target"]["arch"] == "sm_87"


def test_x86_profile_is_this_machine():
    from tvm.target import codegen

    p = get_profile("x86")
    cpu = p.target_dict["mcpu"]
    assert cpu == codegen.llvm_get_system_cpu() == p.detected["mcpu"]
    assert cpu not in ("native", "generic", "x86-64")
    assert codegen.llvm_is_valid_cpu(cpu, "x86_64-linux-gnu")
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    assert p.vector_bits == (512 if "avx512f" in flags else 256 if "avx2" in flags else 128)


def test_x86_library_loads_and_runs(weights, tmp_path):
    import tvm
    from tvm import relax

    path, _ = build_and_export("x86", weights, tmp_path)
    assert_cpu_lib(path, 64, EM_X86_64)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    x = np.random.default_rng(1).standard_normal((1, 3, RES, RES)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, reference(x.astype("float64"), weights), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# one profile per family: compile + export + inspect the artifact
# --------------------------------------------------------------------------------------------
def test_aarch64_export(weights, tmp_path):
    path, _ = build_and_export("rpi4-aarch64", weights, tmp_path)
    assert_cpu_lib(path, 64, EM_AARCH64)


def test_armv7_export_is_hard_float(weights, tmp_path):
    path, _ = build_and_export("rpi4-armv7", weights, tmp_path)
    assert_cpu_lib(path, 32, EM_ARM)
    _, _, flags = elf_header(path)
    assert flags & EF_ARM_ABI_FLOAT_HARD
    attrs = subprocess.run(["readelf", "-A", str(path)], capture_output=True, text=True,
                           check=True).stdout
    assert re.search(r"Tag_ABI_VFP_args:\s*VFP registers", attrs), attrs


def _require_nvcc():
    # This machine kind ships CUDA 13's nvcc; CUDA export must be tested, never skipped.
    assert shutil.which("nvcc"), "nvcc not found: CUDA export needs the CUDA toolkit on PATH"


@pytest.mark.parametrize("name, bits, machine, sm", [
    ("jetson-orin-nano", 64, EM_AARCH64, 87),
    ("cuda-sm90", 64, EM_X86_64, 90),
])
def test_cuda_export_embeds_nvcc_binary(weights, tmp_path, name, bits, machine, sm):
    _require_nvcc()
    path, rules = build_and_export(name, weights, tmp_path)
    assert "dlight.gpu.Matmul" in rules
    assert elf_header(path)[:2] == (bits, machine)
    data = path.read_bytes()
    assert struct.pack("<Q", 6) + b"fatbin" in data  # the CUDA module's format field
    assert ("elf", sm) in fatbin_archs(data)  # SASS for the target's SM
    assert ("ptx", sm) in fatbin_archs(data)
    assert b'extern "C" __global__' not in data  # no CUDA source left to JIT on the device


def test_opencl_export_carries_kernel_source(weights, tmp_path):
    path, rules = build_and_export("mali", weights, tmp_path)
    assert rules and all(r.startswith("dlight.") for r in rules)
    assert elf_header(path)[:2] == (64, EM_AARCH64)
    data = path.read_bytes()
    assert b"__kernel void" in data and struct.pack("<Q", 6) + b"opencl" in data


def test_adreno_compiles(weights):
    ex, rules = compile_for(get_profile("adreno"), weights)
    assert ex is not None and rules


def test_schedule_gpu_schedules_every_kernel(weights):
    import tvm
    from tvm import relax, tirx

    from mntvm.templates.gpu import schedule_gpu

    target = get_profile("cuda-sm80").tvm_target()
    with target:
        mod = relax.get_pipeline("zero")(relax.transform.LegalizeOps()(build_tiny(weights)))
    mod, rules = schedule_gpu(mod, target)
    funcs = [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert funcs and all(f.attrs["tirx.is_scheduled"] for f in funcs)
    assert rules[0] == "dlight.gpu.Matmul"
    tvm.compile(mod, target=target)  # no "did not bind threads" / VerifyMemory error


def test_vulkan_profile_reports_missing_codegen(weights, tmp_path):
    p = get_profile("vulkan")
    assert p.to_metadata()["codegen_problem"]
    for call in (p.tvm_target, p.check_toolchain):
        with pytest.raises(MntvmError, match=r"vulkan.*(code generator|codegen)"):
            call()
    with pytest.raises(MntvmError, match="vulkan"):
        p.export_library(None, tmp_path / "v.so")


# --------------------------------------------------------------------------------------------
# lookup, user folders, triples, overrides, errors
# --------------------------------------------------------------------------------------------
def test_unknown_target_lists_known_names():
    with pytest.raises(MntvmError) as err:
        get_profile("no-such-board")
    msg = str(err.value)
    assert "no-such-board" in msg and "rpi4-aarch64" in msg and "cuda-sm90" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("text, field", [
    ('description = "x"\nfamily = "riscv"\nthreads = 1\nvector_bits = 128\n'
     '[target]\nkind = "llvm"\nmtriple = "riscv64-linux-gnu"\n', "family"),
    ('description = "x"\nfamily = "aarch64"\nthreads = 1\n'
     '[target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\n', "vector_bits"),
    ('description = "x"\nfamily = "cuda"\nthreads = 1\nvector_bits = 128\n'
     '[target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\n[host]\nkind = "llvm"\n', "target"),
    ('description = "x"\nfamily = "armv7"\nthreads = 1\nvector_bits = 128\n'
     '[target]\nkind = "llvm"\nmtriple = "armv7l-linux-gnueabihf"\n', "target.mfloat-abi"),
    ('description = "x"\nfamily = "aarch64"\nthreads = 0\nvector_bits = 128\n'
     '[target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\n', "threads"),
    ('description = "x"\nfamily = "aarch64"\nthreds = 1\nthreads = 1\nvector_bits = 128\n'
     '[target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\n', "threds"),
    ('description = "x"\nfamily = "aarch64"\nthreads = 1\nvector_bits = 128\nint8_activations = "int4"\n'
     '[target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\n', "int8_activations"),
])
def test_malformed_profile_names_file_and_field(tmp_path, text, field):
    path = write_profile(tmp_path, "bad", text)
    with pytest.raises(MntvmError) as err:
        get_profile("bad", targets_dir=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and f"'{field}'" in msg and "\n" not in msg


def test_unparsable_profile_names_file(tmp_path):
    path = write_profile(tmp_path, "broken", "description = \n")
    with pytest.raises(MntvmError, match=re.escape(str(path))):
        get_profile("broken", targets_dir=tmp_path)


def test_user_targets_dir_adds_and_shadows_profiles(weights, tmp_path):
    user = tmp_path / "mytargets"
    write_profile(user, "my-board", AARCH64_PROFILE.format(
        desc="my A55 board", cc="aarch64-linux-gnu-g++", pkg="g++-aarch64-linux-gnu"))
    write_profile(user, "x86-avx2", (Path(get_profile("x86-avx2").source).read_text()
                                     .replace("threads = 4", "threads = 3")))
    names = {p.name: p for p in list_profiles(user)}
    assert {"my-board", "x86", "cuda-sm90"} <= set(names)
    assert names["x86-avx2"].threads == 3 and names["x86-avx2"].source.startswith(str(user))
    path, _ = build_and_export("my-board", weights, tmp_path, targets_dir=user)
    assert_cpu_lib(path, 64, EM_AARCH64)
    assert get_profile("my-board", targets_dir=user).target_dict["mcpu"] == "cortex-a55"


@pytest.mark.parametrize("triple, family, mtriple, compiler, package", [
    ("aarch64-linux-gnu", "aarch64", "aarch64-linux-gnu", "aarch64-linux-gnu-g++",
     "g++-aarch64-linux-gnu"),
    ("armv7l-linux-gnueabihf", "armv7", "armv7l-linux-gnueabihf", "arm-linux-gnueabihf-g++",
     "g++-arm-linux-gnueabihf"),
    ("arm-linux-gnueabihf", "armv7", "armv7l-linux-gnueabihf", "arm-linux-gnueabihf-g++",
     "g++-arm-linux-gnueabihf"),
    ("x86_64-linux-gnu", "x86", "x86_64-linux-gnu", None, None),  # x86_64 build machine: g++
])
def test_bare_triples(triple, family, mtriple, compiler, package):
    p = get_profile(triple)
    assert (p.name, p.family, p.cross_compiler, p.cross_package) == (triple, family, compiler,
                                                                      package)
    assert p.tvm_target().attrs["mtriple"] == mtriple


def test_bare_triple_exports(weights, tmp_path):
    path, _ = build_and_export("armv7l-linux-gnueabihf", weights, tmp_path)
    assert_cpu_lib(path, 32, EM_ARM)
    assert elf_header(path)[2] & EF_ARM_ABI_FLOAT_HARD


def test_mcpu_mattr_overrides_are_recorded(weights, tmp_path):
    p = get_profile("aarch64", mcpu="cortex-a76", mattr="+neon,+dotprod")
    assert p.overrides == {"mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]}
    assert p.to_metadata()["overrides"] == p.overrides
    assert p.tvm_target().attrs["mcpu"] == "cortex-a76"
    assert get_profile("x86-avx2", mcpu="skylake-avx512").vector_bits == 512
    gpu = get_profile("jetson-orin-nano", mattr=["+neon", "+dotprod"])
    assert gpu.host_dict["mattr"] == ["+neon", "+dotprod"] and gpu.overrides["mattr"]
    assert get_profile("aarch64").overrides == {}
    path, _ = build_and_export("aarch64", weights, tmp_path, mcpu="cortex-a76")
    assert_cpu_lib(path, 64, EM_AARCH64)
    with pytest.raises(MntvmError, match="not-a-cpu"):
        get_profile("aarch64", mcpu="not-a-cpu")


def test_missing_cross_compiler_names_package(weights, tmp_path):
    write_profile(tmp_path, "ghost", AARCH64_PROFILE.format(
        desc="board whose compiler is missing", cc="ghost-linux-gnu-g++",
        pkg="g++-ghost-linux-gnu"))
    p = get_profile("ghost", targets_dir=tmp_path)
    with pytest.raises(MntvmError, match=r"ghost-linux-gnu-g\+\+.*apt-get install -y "
                                         r"g\+\+-ghost-linux-gnu"):
        p.check_toolchain()
    ex, _ = compile_for(p, weights)
    with pytest.raises(MntvmError, match=r"g\+\+-ghost-linux-gnu"):
        p.export_library(ex, tmp_path / "ghost.so")


def test_missing_nvcc_is_reported(monkeypatch):
    import mntvm.targets.profiles as T

    real_which = shutil.which
    monkeypatch.setattr(T.shutil, "which", lambda n: None if n == "nvcc" else real_which(n))
    with pytest.raises(MntvmError, match="nvcc"):
        get_profile("cuda-sm80").check_toolchain()


def test_int8_paths_of_the_shipped_profiles():
    """x86 multiplies u8 x s8 (VNNI), Arm s8 x s8 (sdot); GPU profiles have no int8 path and say so."""
    profiles = {p.name: p for p in list_profiles()}
    for p in profiles.values():
        want = {"x86": "uint8", "aarch64": "int8", "armv7": "int8"}.get(p.family)
        assert p.int8_activations == want, p.name
        if want:
            assert p.check_int8() == want
        else:
            with pytest.raises(MntvmError, match=f"target '{p.name}' .* has no int8 path"):
                p.check_int8()
