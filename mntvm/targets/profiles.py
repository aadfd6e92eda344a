"""Deployment target profiles: one TOML file per target in ``targets/``.

A profile names everything needed to build for, and describe, one deployment target::

    description = "Raspberry Pi 4, 64-bit OS (Cortex-A72, NEON)"
    family = "aarch64"               # x86 | aarch64 | armv7 | cuda | opencl | vulkan
    cross_compiler = "aarch64-linux-gnu-g++"   # absent: the build machine's own C++ compiler
    cross_package = "g++-aarch64-linux-gnu"    # Debian package providing it (required with it)
    rpc_key = "rpi4"                 # optional
    threads = 4                      # default thread count ("auto": this machine's cores)
    vector_bits = 128                # SIMD width schedule templates use ("auto": detect, x86)
    int8_activations = "int8"        # the int8 path: activations the dot-product instruction
                                     # multiplies (x86 VNNI: "uint8"; Arm sdot: "int8"); absent:
                                     # the target has no int8 path and int8 builds are refused

    [target]                         # a TVM target dict, or `tag = "vendor/name"` (+ overrides)
    kind = "llvm"
    mtriple = "aarch64-linux-gnu"
    mcpu = "cortex-a72"              # "native": this build machine's CPU, resolved at load time
    mattr = ["+neon"]

    [host]                           # GPU families only: the host CPU target dict
    kind = "llvm"

Lookup (:func:`get_profile`): a user's ``targets_dir`` first — its profiles *shadow* shipped ones
of the same name — then the shipped folder (``mntvm.paths.data_dir("targets")``), then bare
LLVM triples (``aarch64-linux-gnu``, ``armv7l-linux-gnueabihf``, ``arm-linux-gnueabihf``,
``x86_64-linux-gnu``), which map to the family's generic profile cross-compiled with the
triple's Debian g++. ``mcpu``/``mattr`` refine any profile (for GPU families: its host CPU) and
are recorded in :attr:`Profile.overrides`. Every error is a one-line :class:`MntvmError`.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import re
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mntvm.core.errors import MntvmError, one_line
from mntvm.targets.fatbin import cuda_fatbin_packer
from mntvm.core.paths import data_dir

FAMILIES = ("x86", "aarch64", "armv7", "cuda", "opencl", "vulkan")
GPU_FAMILIES = ("cuda", "opencl", "vulkan")
_TARGET_KIND = {"cuda": "cuda", "opencl": "opencl", "vulkan": "vulkan"}  # others: llvm
_TRIPLE_PREFIX = {"x86": ("x86_64",), "aarch64": ("aarch64",), "armv7": ("armv7", "arm-", "armv8l")}
_FIELDS = {"description", "family", "target", "host", "cross_compiler", "cross_package", "rpc_key",
           "threads", "vector_bits", "int8_activations"}
INT8_ACTIVATIONS = ("uint8", "int8")

# Bare LLVM triples accepted as target names: (generic profile, mtriple, compiler, Debian package).
_TRIPLES = {
    "aarch64-linux-gnu": ("aarch64", "aarch64-linux-gnu", "aarch64-linux-gnu-g++",
                          "g++-aarch64-linux-gnu"),
    "armv7l-linux-gnueabihf": ("armv7", "armv7l-linux-gnueabihf", "arm-linux-gnueabihf-g++",
                               "g++-arm-linux-gnueabihf"),
    "armv7-linux-gnueabihf": ("armv7", "armv7-linux-gnueabihf", "arm-linux-gnueabihf-g++",
                              "g++-arm-linux-gnueabihf"),
    "arm-linux-gnueabihf": ("armv7", "armv7l-linux-gnueabihf", "arm-linux-gnueabihf-g++",
                            "g++-arm-linux-gnueabihf"),
    "x86_64-linux-gnu": ("x86-64", "x86_64-linux-gnu", "x86_64-linux-gnu-g++",
                         "g++-x86-64-linux-gnu"),
}


@dataclass(frozen=True)
class Profile:
    """One deployment target. Treat the dict fields as read-only."""

    name: str
    description: str
    family: str
    target_dict: dict[str, Any] = field(hash=False)
    host_dict: dict[str, Any] | None = field(hash=False)
    cross_compiler: str | None
    cross_package: str | None
    rpc_key: str | None
    threads: int
    vector_bits: int
    source: str
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)
    detected: dict[str, Any] = field(default_factory=dict, hash=False)
    """Values resolved on this build machine at load time (``mcpu: native``, ``auto`` fields)."""
    int8_activations: str | None = None
    """The activation type of the target's int8 path (None: no int8 path)."""

    def check_int8(self) -> str:
        """The int8 activation type, or a one-line :class:`MntvmError` if the target has no int8 path."""
        if self.int8_activations is None:
            raise MntvmError(f"target '{self.name}' ({self.family}) has no int8 path: build it in float32, "
                             f"or pick a CPU target (`mntvm targets` lists which have int8)")
        return self.int8_activations

    @property
    def is_gpu(self) -> bool:
        return self.family in GPU_FAMILIES

    # -- TVM target ----------------------------------------------------------------------------
    def _target(self):
        import tvm

        if self.host_dict is not None:
            return tvm.target.Target(copy.deepcopy(self.target_dict),
                                     host=copy.deepcopy(self.host_dict))
        return tvm.target.Target(copy.deepcopy(self.target_dict))

    def codegen_problem(self) -> str | None:
        """Why this TVM build cannot generate code for the profile, or None if it can."""
        import tvm

        kind = _TARGET_KIND.get(self.family, "llvm")
        if tvm.get_global_func(f"target.build.{kind}", allow_missing=True) is None:
            return (f"target '{self.name}' needs TVM's {kind} code generator, which this TVM build "
                    f"(apache-tvm {tvm.__version__}) does not include (no target.build.{kind})")
        return None

    def tvm_target(self):
        """The ``tvm.target.Target`` (with its host set for GPU families)."""
        problem = self.codegen_problem()
        if problem:
            raise MntvmError(problem)
        return self._target()

    # -- toolchain -----------------------------------------------------------------------------
    def check_toolchain(self) -> None:
        """Raise :class:`MntvmError` if this profile's code generator, linker or nvcc is missing."""
        problem = self.codegen_problem()
        if problem:
            raise MntvmError(problem)
        if self.cross_compiler:
            if shutil.which(self.cross_compiler) is None:
                raise MntvmError(
                    f"cross compiler '{self.cross_compiler}' for target '{self.name}' not found: "
                    f"install the Debian package {self.cross_package} "
                    f"(apt-get install -y {self.cross_package})")
        else:
            from tvm.support.cc import get_cc

            if get_cc() is None:
                raise MntvmError(f"no C++ compiler found to link target '{self.name}': install the "
                                 f"Debian package g++ (apt-get install -y g++)")
        if self.family == "cuda" and shutil.which("nvcc") is None:
            raise MntvmError(f"nvcc not found for CUDA target '{self.name}': install the CUDA "
                             f"toolkit and put its bin/ (with nvcc) on PATH")

    # -- export --------------------------------------------------------------------------------
    def export_library(self, executable, path: str | os.PathLike) -> Path:
        """Export a ``tvm.relax.Executable`` to a shared library for this target.

        Links with the profile's cross compiler (or the build machine's C++ compiler). For CUDA,
        device code is embedded as an nvcc-compiled fatbin (SASS + PTX for the target's arch):
        where TVM has no CUDA runtime (no driver, e.g. a CPU build machine) its codegen keeps CUDA
        *source* in the module, and it is compiled here instead of being JIT-compiled on the
        device at load time.
        """
        from tvm.support import cc

        self.check_toolchain()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if self.cross_compiler:
            kwargs["fcompile"] = cc.cross_compiler(self.cross_compiler)
        if self.family == "cuda":
            kwargs["fpack_imports"] = cuda_fatbin_packer(self._target())
        try:
            executable.mod.export_library(str(path), **kwargs)
        except MntvmError:
            raise
        except Exception as err:  # linker / nvcc output is long: keep its last line
            last = [ln for ln in str(err).strip().splitlines() if ln.strip()][-1:] or ["?"]
            raise MntvmError(f"exporting {path.name} for target '{self.name}' failed: "
                             f"{last[0].strip()}") from err
        return path

    # -- metadata ------------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, Any]:
        """Everything about the profile as a JSON-able dict, incl. the full TVM target."""
        import tvm

        try:
            full = json.loads(str(self._target()))
        except Exception as err:  # pragma: no cover - profiles are validated at load
            full = {"error": str(err).splitlines()[0]}
        return {
            "name": self.name,
            "description": self.description,
            "family": self.family,
            # the profile file by folder and name (no absolute path in anything written)
            "source": re.sub(r"(?:[^\s]*/)?([^/\s]+/[^/\s]+\.toml)", r"\1", self.source),
            "target_dict": copy.deepcopy(self.target_dict),
            "host_dict": copy.deepcopy(self.host_dict),
            "tvm_target": full,
            "cross_compiler": self.cross_compiler,
            "cross_package": self.cross_package,
            "rpc_key": self.rpc_key,
            "threads": self.threads,
            "vector_bits": self.vector_bits,
            "int8_activations": self.int8_activations,
            "overrides": copy.deepcopy(self.overrides),
            "detected": copy.deepcopy(self.detected),
            "codegen_problem": self.codegen_problem(),
            "tvm_version": tvm.__version__,
        }


# ---------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------
def _dirs(targets_dir: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if targets_dir is not None:
        user = Path(targets_dir)
        if not user.is_dir():
            raise MntvmError(f"targets dir {user} " + ("is not a folder" if user.exists() else "does not exist"))
        dirs.append(user)
    dirs.append(data_dir("targets"))
    return dirs


def _known_names(targets_dir) -> list[str]:
    names = {p.stem for d in _dirs(targets_dir) for p in d.glob("*.toml")}
    return sorted(names)


def list_profiles(targets_dir: str | os.PathLike | None = None) -> list[Profile]:
    """All profiles (user ``targets_dir`` ones shadowing shipped ones), sorted by name."""
    return [get_profile(n, targets_dir) for n in _known_names(targets_dir)]


def format_profiles(profiles: list[Profile]) -> str:
    """One line per profile: name, family, the int8 path's activation type (``-``: fp32 only),
    description (what ``mntvm targets`` prints)."""
    width = max((len(p.name) for p in profiles), default=0)
    return "\n".join(f"{p.name:<{width}}  {p.family:<7} {p.int8_activations or '-':<5} {p.description}"
                     for p in profiles)


def get_profile(name: str, targets_dir: str | os.PathLike | None = None,
                mcpu: str | None = None, mattr: str | list[str] | None = None) -> Profile:
    """Load profile ``name`` (a profile file name without ``.toml``, or a bare LLVM triple).

    ``targets_dir``: a folder of your own ``*.toml`` profiles, searched first (shadows shipped
    profiles of the same name). ``mcpu``/``mattr`` (list or comma-separated string) replace the
    profile's CPU and CPU features — of the host CPU for GPU families.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", name):
        raise MntvmError(f"invalid target name {name!r}: use a profile name such as rpi4-aarch64")
    triple = None
    for d in _dirs(targets_dir):
        path = d / f"{name}.toml"
        if path.is_file():
            break
    else:
        if name not in _TRIPLES:
            known = ", ".join(_known_names(targets_dir))
            raise MntvmError(f"unknown target '{name}'; known targets: {known} "
                             f"(or an LLVM triple: {', '.join(_TRIPLES)})")
        triple = name
        path = data_dir("targets") / f"{_TRIPLES[name][0]}.toml"
    prof = _load(path, name if triple is None else _TRIPLES[name][0])
    if triple is not None:
        prof = _for_triple(prof, triple)
    if mcpu is not None or mattr is not None:
        prof = _refine(prof, mcpu, mattr)
    return _validate_cpu(prof)


def _for_triple(prof: dict[str, Any], triple: str) -> dict[str, Any]:
    """A generic profile retargeted at an LLVM triple with that triple's Debian cross g++."""
    _, mtriple, compiler, package = _TRIPLES[triple]
    target = dict(prof["target_dict"], mtriple=mtriple)
    native_x86 = triple.startswith("x86_64") and platform.machine() in ("x86_64", "AMD64")
    return dict(prof, name=triple, target_dict=target,
                description=f"{prof['description']} (LLVM triple {triple})",
                cross_compiler=None if native_x86 else compiler,
                cross_package=None if native_x86 else package,
                source=f"{prof['source']} (as triple {triple})")


def _refine(prof: dict[str, Any], mcpu: str | None, mattr: str | list[str] | None):
    overrides: dict[str, Any] = {}
    key = "host_dict" if prof["family"] in GPU_FAMILIES else "target_dict"
    cpu = dict(prof[key])
    if mcpu is not None:
        cpu["mcpu"] = overrides["mcpu"] = mcpu
    if mattr is not None:
        attrs = [a.strip() for a in mattr.split(",")] if isinstance(mattr, str) else list(mattr)
        attrs = [a for a in attrs if a]
        bad = [a for a in attrs if a[0] not in "+-"]
        if bad:
            raise MntvmError(f"--mattr entries must start with + or -, got {bad[0]!r}")
        cpu["mattr"] = overrides["mattr"] = attrs
        _check_mattr(cpu)
    prof = dict(prof, **{key: cpu}, overrides=overrides)
    if prof["family"] == "x86":  # the SIMD width follows the refined CPU
        prof["vector_bits"] = _x86_vector_bits(cpu)
    return prof


@contextlib.contextmanager
def _quiet_stderr():
    """LLVM warns on fd 2 (one line per use of a bad feature, dozens in a build): silence it here."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_mattr(cpu: dict[str, Any]) -> None:
    """Every ``+feature`` must be one LLVM knows for the triple (an unknown one is ignored by LLVM
    with a warning per compiled function; refused here as a bogus ``--mcpu`` is)."""
    import tvm
    from tvm.target import codegen

    wanted = [a[1:] for a in cpu.get("mattr", []) if a.startswith("+")]
    if not wanted or not cpu.get("mtriple"):
        return
    tgt = {k: v for k, v in cpu.items() if k in ("kind", "mtriple", "mcpu", "mattr")}
    with _quiet_stderr():
        have = set(codegen.llvm_get_cpu_features(tvm.target.Target(tgt)))
    unknown = [f for f in wanted if f not in have]
    if unknown:
        raise MntvmError(f"--mattr: LLVM does not know CPU feature '+{unknown[0]}' for {cpu['mtriple']}")


def _validate_cpu(prof: dict[str, Any]) -> Profile:
    """Check the (possibly refined) CPU name with LLVM, then freeze."""
    from tvm.target import codegen

    cpu_dict = prof["host_dict"] if prof["family"] in GPU_FAMILIES else prof["target_dict"]
    mcpu, mtriple = cpu_dict.get("mcpu"), cpu_dict.get("mtriple")
    if mcpu and mtriple and not codegen.llvm_is_valid_cpu(mcpu, mtriple):
        raise MntvmError(f"target '{prof['name']}': LLVM does not know CPU '{mcpu}' for {mtriple}")
    return Profile(**prof)


# ---------------------------------------------------------------------------------------------
# Profile files
# ---------------------------------------------------------------------------------------------
def _load(path: Path, name: str) -> dict[str, Any]:
    """Parse and validate one profile file; returns the constructor fields of :class:`Profile`."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise MntvmError(f"{path}: cannot read profile: {str(err).splitlines()[0]}") from err

    def bad(fld: str, why: str) -> MntvmError:
        return MntvmError(f"{path}: field '{fld}': {why}")

    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise bad(unknown[0], f"unknown field (allowed: {', '.join(sorted(_FIELDS))})")
    for fld in ("description", "family", "target", "threads", "vector_bits"):
        if fld not in raw:
            raise bad(fld, "missing")
    desc, family = raw["description"], raw["family"]
    if not isinstance(desc, str) or not desc.strip() or "\n" in desc:
        raise bad("description", "must be a one-line string")
    if family not in FAMILIES:
        raise bad("family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    target = raw["target"]
    if not isinstance(target, dict) or not ("kind" in target or "tag" in target):
        raise bad("target", "must be a table with 'kind' or 'tag'")
    gpu = family in GPU_FAMILIES
    host = raw.get("host")
    if gpu and not isinstance(host, dict):
        raise bad("host", f"required for {family} profiles: a table with the host CPU target")
    if not gpu and host is not None:
        raise bad("host", "only GPU profiles have a host")
    for fld in ("cross_compiler", "cross_package", "rpc_key"):
        if fld in raw and (not isinstance(raw[fld], str) or not raw[fld]):
            raise bad(fld, "must be a non-empty string")
    if "cross_compiler" in raw and "cross_package" not in raw:
        raise bad("cross_package", "required with cross_compiler (the Debian package providing it)")

    detected: dict[str, Any] = {}
    cpu = dict(host if gpu else target)
    if cpu.get("mcpu") == "native":
        cpu["mcpu"] = detected["mcpu"] = _native_cpu(path)
    threads = raw["threads"]
    if threads == "auto":
        threads = detected["threads"] = os.cpu_count() or 1
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise bad("threads", f"must be a positive integer or \"auto\", got {threads!r}")
    cpu.setdefault("num-cores", threads)
    vector_bits = raw["vector_bits"]
    if vector_bits == "auto":
        if family != "x86":
            raise bad("vector_bits", "\"auto\" is only supported for x86 profiles")
        vector_bits = detected["vector_bits"] = _x86_vector_bits(cpu)
    elif vector_bits not in (64, 128, 256, 512):
        raise bad("vector_bits", f"must be 64, 128, 256, 512 or \"auto\", got {vector_bits!r}")
    int8 = raw.get("int8_activations")
    if int8 is not None and int8 not in INT8_ACTIVATIONS:
        raise bad("int8_activations", f"must be one of {', '.join(INT8_ACTIVATIONS)}, got {int8!r}")
    if int8 is not None and gpu:
        raise bad("int8_activations", "GPU profiles have no int8 path yet")
    if gpu:
        host = cpu
    else:
        target = cpu
    _check_target(path, family, target, host)
    return dict(name=name, description=desc.strip(), family=family, target_dict=target,
                host_dict=host, cross_compiler=raw.get("cross_compiler"),
                cross_package=raw.get("cross_package"), rpc_key=raw.get("rpc_key"),
                threads=threads, vector_bits=vector_bits, source=str(path), overrides={},
                detected=detected, int8_activations=int8)


def _check_target(path: Path, family: str, target: dict, host: dict | None) -> None:
    """Build the TVM target once so that a bad field is reported with the file name."""
    import tvm

    def bad(fld: str, why: str) -> MntvmError:
        return MntvmError(f"{path}: field '{fld}': {why}")

    try:
        tgt = tvm.target.Target(copy.deepcopy(target))
    except Exception as err:
        raise bad("target", f"not a valid TVM target: {one_line(err)}") from err
    kind = _TARGET_KIND.get(family, "llvm")
    if tgt.kind.name != kind:
        raise bad("target", f"{family} profiles need a '{kind}' target, got '{tgt.kind.name}'")
    cpu_tgt, cpu_field = tgt, "target"
    if host is not None:
        try:
            cpu_tgt, cpu_field = tvm.target.Target(copy.deepcopy(host)), "host"
        except Exception as err:
            raise bad("host", f"not a valid TVM target: {one_line(err)}") from err
        if cpu_tgt.kind.name != "llvm":
            raise bad("host", f"the host must be an 'llvm' target, got '{cpu_tgt.kind.name}'")
    mtriple = str(cpu_tgt.attrs.get("mtriple", ""))
    if not mtriple:
        raise bad(f"{cpu_field}.mtriple", "missing (e.g. aarch64-linux-gnu)")
    prefixes = _TRIPLE_PREFIX.get(family)
    if prefixes and not mtriple.startswith(prefixes):
        raise bad(f"{cpu_field}.mtriple", f"'{mtriple}' is not a {family} triple")
    if family == "armv7" and mtriple.endswith("hf") and \
            str(cpu_tgt.attrs.get("mfloat-abi", "")) != "hard":
        raise bad(f"{cpu_field}.mfloat-abi", "must be \"hard\" for a gnueabihf triple "
                  "(else the library does not link with the hard-float C runtime)")


def _native_cpu(path: Path) -> str:
    from tvm.target import codegen

    if platform.machine() not in ("x86_64", "AMD64"):
        raise MntvmError(f"{path}: field 'target.mcpu': \"native\" means this build machine, "
                         f"which is {platform.machine()}, not x86_64")
    return str(codegen.llvm_get_system_cpu())


def _x86_vector_bits(cpu: dict) -> int:
    """512 with AVX-512F, 256 with AVX2, else 128 (SSE), as LLVM sees mcpu/mattr."""
    import tvm
    from tvm.target import codegen

    tgt = tvm.target.Target({k: v for k, v in cpu.items() if k in ("kind", "mtriple", "mcpu",
                                                                    "mattr")})
    for feature, bits in (("avx512f", 512), ("avx2", 256)):
        if codegen.llvm_cpu_has_features(feature, tgt):
            return bits
    return 128
