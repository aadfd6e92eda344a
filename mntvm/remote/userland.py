"""The emulated board's userland: a Debian sysroot for another CPU with the TVM runtime wheels.

:func:`prepare` builds it once (``debootstrap --foreign`` then ``dpkg -x`` of every package, the
board architecture's TVM wheels under ``/opt/tvm``, the static qemu binary) and caches it under
``cache_dir()/board-<arch>``; :func:`board_command` is the host command that runs the board's
``python3`` under qemu-user (in a ``chroot`` when root, else via qemu's ``-L``).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mntvm.core import arch as archs
from mntvm.core.errors import MntvmError
from mntvm.core.paths import cache_dir

#: Host packages the emulated board needs (the README's setup command installs them).
APT_PACKAGES = ("debootstrap", "qemu-user-static", "g++-aarch64-linux-gnu")

SUITE = "bookworm"  # Python 3.11, matching the cp311 TVM wheels
# The board's Python packages, at the versions installed here (pyproject.toml's pins): its runtime
# must be the TVM that compiles for it, and ml_dtypes 0.7.0 (the newest, unpinned) took 18 s of the
# board's 21 s `import tvm` under qemu, paid by every board server and runner it starts.
PINNED = {"tvm": "apache-tvm", "tvm_ffi": "apache-tvm-ffi", "ml_dtypes": "ml_dtypes"}
# Bump when the layout of the prepared userland changes: older caches are then rebuilt.
_LAYOUT = 1

# Emulated boards by canonical architecture name (mntvm.core.arch).
_BOARDS = {
    "aarch64": {
        "deb_arch": "arm64",
        "qemu": "qemu-aarch64-static",
        "pip_platform": "manylinux_2_28_aarch64",
        "cxx": "aarch64-linux-gnu-g++",
    },
}


def board_spec(arch: str) -> tuple[str, dict]:
    """``(canonical arch, its emulation spec)``; a one-line error for an architecture we cannot emulate."""
    name = archs.canonical(arch)
    if name not in _BOARDS:
        known = ", ".join(sorted(_BOARDS))
        raise MntvmError(f"no emulated board for architecture {arch!r} (known: {known})")
    return name, _BOARDS[name]


def board_dir(arch: str, cache=None) -> Path:
    """The folder of the ``arch`` board: ``rootfs/``, ``stamp.json``, ``logs/``."""
    base = Path(cache) if cache is not None else cache_dir()
    return base / f"board-{archs.canonical(arch)}"


def pinned_versions() -> dict[str, str]:
    """{stamp key: version} of :data:`PINNED`, as installed on this host."""
    from importlib.metadata import version

    return {key: version(dist) for key, dist in PINNED.items()}


def _stamp_content(arch: str) -> dict:
    return {"layout": _LAYOUT, "arch": arch, "suite": SUITE, **pinned_versions()}


def require_tool(name: str, package: str) -> str:
    """The path of host tool ``name``; a one-line error naming the missing package otherwise."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not path:
        raise MntvmError(
            f"emulated board needs `{name}` (apt-get install {' '.join(APT_PACKAGES)}); "
            f"package {package} is missing")
    return path


def _run(cmd, what: str, log: Path | None = None, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n{res.stdout}\n")
    if res.returncode != 0:
        tail = " | ".join(res.stdout.strip().splitlines()[-4:])
        raise MntvmError(f"{what} failed (exit {res.returncode}): {tail}")
    return res


def debian_mirror() -> str:
    """The Debian mirror this host's apt already uses (for ``SUITE``); env MNTVM_DEBIAN_MIRROR wins."""
    env = os.environ.get("MNTVM_DEBIAN_MIRROR")
    if env:
        return env
    candidates: list[tuple[str, list[str]]] = []
    files = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(d.iterdir())
    for f in files:
        if not f.is_file():
            continue
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        if f.name.endswith(".sources"):  # deb822
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    candidates.append((uri, fields.get("suites", "").split()))
        elif f.name.endswith(".list"):
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                m = re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m:
                    candidates.append((m.group(1), [m.group(2)]))
    for uri, suites in candidates:
        if SUITE in suites and "security" not in uri:
            return uri.rstrip("/")
    for uri, suites in candidates:
        if "debian" in uri and "security" not in uri:
            return uri.rstrip("/")
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _stamp_ok(bdir: Path, arch: str) -> bool:
    stamp = bdir / "stamp.json"
    try:
        ok = json.loads(stamp.read_text()) == _stamp_content(arch)
    except (OSError, ValueError):
        return False
    return ok and (bdir / "rootfs" / "usr" / "bin" / "python3").exists()


def prepare(arch: str = "aarch64", cache=None) -> Path:
    """Build (once) the board's userland and return its sysroot.

    Debian ``SUITE`` minbase + python3 for ``arch`` (``debootstrap --foreign`` then ``dpkg -x`` of
    every downloaded package: no binfmt, no second stage), the ``arch`` wheels of apache-tvm /
    apache-tvm-ffi / numpy / ml_dtypes in ``/opt/tvm`` (runtime library only), and the static
    qemu binary in ``/usr/bin``.  Cached under ``cache or mntvm.core.paths.cache_dir()`` as
    ``board-<arch>/rootfs`` with a ``stamp.json``; a later call with a valid stamp returns at once.
    """
    arch, spec = board_spec(arch)
    bdir = board_dir(arch, cache)
    root = bdir / "rootfs"
    if _stamp_ok(bdir, arch):
        return root
    with _locked(bdir / ".lock"):
        if _stamp_ok(bdir, arch):  # another process finished it meanwhile
            return root
        if os.geteuid() != 0:
            raise MntvmError("preparing the emulated board needs root (debootstrap); "
                             "run `mntvm` once as root or point MNTVM_CACHE at a prepared cache")
        debootstrap = require_tool("debootstrap", "debootstrap")
        qemu = require_tool(spec["qemu"], "qemu-user-static")
        require_tool("dpkg-deb", "dpkg")
        log = bdir / "prepare.log"
        log.write_text("")
        (bdir / "stamp.json").unlink(missing_ok=True)
        tmp = bdir / "rootfs.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        if root.exists():
            shutil.rmtree(root)

        # 1. Debian userland, first stage only, then unpack every downloaded deb.
        mirror = debian_mirror()
        _run([debootstrap, "--foreign", "--variant=minbase", f"--arch={spec['deb_arch']}",
              "--include=python3", SUITE, str(tmp), mirror],
             f"debootstrap {SUITE}/{spec['deb_arch']} from {mirror}", log)
        archives = tmp / "var" / "cache" / "apt" / "archives"
        debs = sorted(archives.glob("*.deb"))
        if not any(p.name.startswith("python3.11-minimal_") for p in debs):
            raise MntvmError(f"debootstrap downloaded no python3.11 for {spec['deb_arch']}")
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"dpkg-deb -x {deb.name}")
            deb.unlink()
        with open(log, "a") as f:
            f.write(f"unpacked {len(debs)} packages\n")
        for d in ("debootstrap",):
            shutil.rmtree(tmp / d, ignore_errors=True)
        (tmp / "tmp").mkdir(exist_ok=True)
        os.chmod(tmp / "tmp", 0o1777)

        # 2. TVM runtime wheels for the board's architecture.
        site = tmp / "opt" / "tvm"
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "--no-compile", "--only-binary=:all:", "--platform", spec["pip_platform"],
              "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
              "--target", str(site),
              *(f"{PINNED[k]}=={v}" for k, v in pinned_versions().items()), "numpy", "typing_extensions"],
             f"pip install of the {arch} TVM wheels", log)
        # The board only runs compiled code: drop the compiler library (3x faster start-up).
        for lib in (site / "tvm" / "lib").glob("libtvm_compiler*.so"):
            lib.unlink()
        shutil.rmtree(site / "bin", ignore_errors=True)

        # 3. Byte-compile on the host (same CPython 3.11 bytecode), paths as the board sees them.
        _run([sys.executable, "-m", "compileall", "-q", "-j", "0", "-s", str(tmp), "-p", "/",
              str(site), str(tmp / "usr" / "lib" / "python3.11")],
             "byte-compiling the board's Python files", log)

        # 4. The emulator itself, so `chroot ROOT /usr/bin/qemu-aarch64-static ...` works.
        shutil.copy2(qemu, tmp / "usr" / "bin" / spec["qemu"])

        # 5. Smoke test: the board's python imports the TVM runtime and says it is `arch`.
        res = _run(board_command(tmp, spec, ["-c", "import platform, tvm, tvm.rpc.server; "
                                              "print('MACHINE', platform.machine())"]),
                   "smoke test of the emulated board", log, env=board_env(), timeout=600)
        if f"MACHINE {arch}" not in res.stdout:
            raise MntvmError(f"emulated board reports {res.stdout.strip()[-200:]!r}, not {arch}")

        os.rename(tmp, root)
        (bdir / "stamp.json").write_text(json.dumps(_stamp_content(arch)))
    return root


def board_env() -> dict:
    """The environment the board's processes run with (nothing of the host's leaks in)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONPATH": "/opt/tvm",
        "PYTHONUNBUFFERED": "1",
        "TVM_USE_RUNTIME_LIB": "1",
        "TMPDIR": "/tmp",
    }


def board_command(root: Path, spec: dict, args: list[str]) -> list[str]:
    """The host command that runs the board's python3 with ``args``."""
    if os.geteuid() == 0:
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        return [chroot, str(root), f"/usr/bin/{spec['qemu']}", "/usr/bin/python3", *args]
    # Unprivileged: qemu resolves absolute paths inside ROOT first (-L); the board then sees the
    # host's /tmp, which TVM's server only uses for its per-session temp folders.
    qemu = require_tool(spec["qemu"], "qemu-user-static")
    return [qemu, "-L", str(root), str(root / "usr" / "bin" / "python3"), *args]


def server_script(root: Path) -> str:
    """The path, as the board sees it, of the board's RPC server script (``board_server.py``).

    As root (chroot) the script and its sibling ``vm_profile.py`` travel into the userland at each
    start (cheap; always current); unprivileged, qemu's ``-L`` falls back to host paths that the
    userland lacks, so the host's copy serves as is.
    """
    here = Path(__file__).with_name("board_server.py")
    if os.geteuid() != 0:
        return str(here)
    (root / "opt" / "mntvm").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(here, root / "opt" / "mntvm" / "board_server.py")
    shutil.copyfile(here.with_name("vm_profile.py"), root / "opt" / "mntvm" / "vm_profile.py")
    return "/opt/mntvm/board_server.py"
