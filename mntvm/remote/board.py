"""An emulated edge board: a Debian userland for another CPU, run under qemu-user, serving TVM RPC.

The board is a real TVM RPC server (TVM's own server loop and tracker protocol) running inside an
aarch64 Debian bookworm userland with the aarch64 TVM *runtime* wheels, executed on this x86 host
by ``qemu-aarch64-static``.  It registers with a TVM RPC tracker under a key, exactly like a
physical board would, so the bench stage cannot tell the difference (except for speed: a full
MobileNetV1 takes ~10 s per inference emulated).

Public entries:

- :func:`prepare` builds (once) and returns the sysroot, cached under
  ``mntvm.paths.cache_dir()/board-<arch>``;
- :func:`start` launches the board server, waits until it is registered with the tracker, and
  returns a :class:`BoardHandle` (pid, port, log file);
- :func:`stop` kills the board's whole process group, by handle or by pid;
- :func:`board_arch` asks a connected remote session which CPU architecture it runs on.

Host requirements (Debian/Ubuntu packages): ``debootstrap`` and ``qemu-user-static`` (and
``g++-aarch64-linux-gnu`` to cross-link the libraries sent to the board).  ``prepare`` must run as
root (debootstrap); ``start`` runs the board in a ``chroot`` when root, else via qemu's ``-L``.
No binfmt_misc registration is needed.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mntvm.core.errors import MntvmError
from mntvm.core.paths import cache_dir

__all__ = ["BoardHandle", "prepare", "start", "stop", "board_arch", "is_running", "APT_PACKAGES"]

#: Host packages the emulated board needs (the README's setup command installs them).
APT_PACKAGES = ("debootstrap", "qemu-user-static", "g++-aarch64-linux-gnu")

SUITE = "bookworm"  # Python 3.11, matching the cp311 TVM wheels
TVM_VERSION = "0.27.0.post1"
TVM_FFI_VERSION = "0.1.14.post1"
# Bump when the layout of the prepared userland changes: older caches are then rebuilt.
_LAYOUT = 1

_ARCHES = {
    "aarch64": {
        "deb_arch": "arm64",
        "qemu": "qemu-aarch64-static",
        "pip_platform": "manylinux_2_28_aarch64",
        "cxx": "aarch64-linux-gnu-g++",
    },
}
_ALIASES = {"arm64": "aarch64", "aarch64": "aarch64"}

_LISTEN_MARK = "MNTVM_BOARD_LISTENING"
_ARCH_FUNC = "mntvm.board.arch"

# Board processes started by this Python process (so stop() can reap them: no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class BoardHandle:
    """A running emulated board: its process (group leader) id, its RPC port, its log file."""

    pid: int
    port: int
    log: Path
    key: str
    arch: str
    tracker: tuple[str, int]


# ----------------------------------------------------------------------------------------------
# helpers


def _spec(arch: str) -> dict:
    name = _ALIASES.get(arch)
    if name is None or name not in _ARCHES:
        known = ", ".join(sorted(_ARCHES))
        raise MntvmError(f"no emulated board for architecture {arch!r} (known: {known})")
    return _ARCHES[name]


def _board_dir(arch: str, cache) -> Path:
    base = Path(cache) if cache is not None else cache_dir()
    return base / f"board-{_ALIASES.get(arch, arch)}"


def _stamp_content(arch: str) -> dict:
    return {"layout": _LAYOUT, "arch": arch, "suite": SUITE, "tvm": TVM_VERSION,
            "tvm_ffi": TVM_FFI_VERSION}


def _require_tool(name: str, package: str) -> str:
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
    import fcntl

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


# ----------------------------------------------------------------------------------------------
# prepare


def prepare(arch: str = "aarch64", cache=None) -> Path:
    """Build (once) the board's userland and return its sysroot.

    Debian ``SUITE`` minbase + python3 for ``arch`` (``debootstrap --foreign`` then ``dpkg -x`` of
    every downloaded package: no binfmt, no second stage), the ``arch`` wheels of apache-tvm /
    apache-tvm-ffi / numpy / ml_dtypes in ``/opt/tvm`` (runtime library only), and the static
    qemu binary in ``/usr/bin``.  Cached under ``cache or mntvm.paths.cache_dir()`` as
    ``board-<arch>/rootfs`` with a ``stamp.json``; a later call with a valid stamp returns at once.
    """
    spec = _spec(arch)
    arch = _ALIASES[arch]
    bdir = _board_dir(arch, cache)
    root = bdir / "rootfs"
    if _stamp_ok(bdir, arch):
        return root
    with _locked(bdir / ".lock"):
        if _stamp_ok(bdir, arch):  # another process finished it meanwhile
            return root
        if os.geteuid() != 0:
            raise MntvmError("preparing the emulated board needs root (debootstrap); "
                             "run `mntvm` once as root or point MNTVM_CACHE at a prepared cache")
        debootstrap = _require_tool("debootstrap", "debootstrap")
        qemu = _require_tool(spec["qemu"], "qemu-user-static")
        _require_tool("dpkg-deb", "dpkg")
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
              f"apache-tvm=={TVM_VERSION}", f"apache-tvm-ffi=={TVM_FFI_VERSION}",
              "numpy", "ml_dtypes", "typing_extensions"],
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
        res = _run(_board_command(tmp, spec, ["-c", "import platform, tvm, tvm.rpc.server; "
                                              "print('MACHINE', platform.machine())"]),
                   "smoke test of the emulated board", log, env=_board_env(), timeout=600)
        if f"MACHINE {arch}" not in res.stdout:
            raise MntvmError(f"emulated board reports {res.stdout.strip()[-200:]!r}, not {arch}")

        os.rename(tmp, root)
        (bdir / "stamp.json").write_text(json.dumps(_stamp_content(arch)))
    return root


# ----------------------------------------------------------------------------------------------
# run


def _board_env() -> dict:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONPATH": "/opt/tvm",
        "PYTHONUNBUFFERED": "1",
        "TVM_USE_RUNTIME_LIB": "1",
        "TMPDIR": "/tmp",
    }


def _board_command(root: Path, spec: dict, args: list[str]) -> list[str]:
    """The host command that runs the board's python3 with ``args``."""
    if os.geteuid() == 0:
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        return [chroot, str(root), f"/usr/bin/{spec['qemu']}", "/usr/bin/python3", *args]
    # Unprivileged: qemu resolves absolute paths inside ROOT first (-L); the board then sees the
    # host's /tmp, which TVM's server only uses for its per-session temp folders.
    qemu = _require_tool(spec["qemu"], "qemu-user-static")
    return [qemu, "-L", str(root), str(root / "usr" / "bin" / "python3"), *args]


def _tracker_has(tracker: tuple[str, int], key: str, port: int) -> bool:
    """True when the tracker lists a server ``key`` at ``port`` with a free slot under ``key``."""
    from tvm.rpc import base  # pylint: disable=import-outside-toplevel
    import socket
    import struct

    try:
        with socket.create_connection(tracker, timeout=5) as s:
            s.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            if struct.unpack("<i", base.recvall(s, 4))[0] != base.RPC_TRACKER_MAGIC:
                return False
            base.sendjson(s, [base.TrackerCode.SUMMARY])
            value = base.recvjson(s)
    except (OSError, ValueError, RuntimeError):
        return False
    if not value or value[0] != base.TrackerCode.SUCCESS:
        return False
    summary = value[1]
    listed = any(info.get("key") == "server:" + key and list(info.get("addr", []))[1:] == [port]
                 for info in summary.get("server_info", []))
    return listed and summary.get("queue_info", {}).get(key, {}).get("free", 0) > 0


def _log_tail(log: Path, n: int = 6) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


def start(tracker_host: str, tracker_port: int, key: str, arch: str = "aarch64",
          port: int = 9090, cache=None, *, port_end: int | None = None, log=None,
          timeout: float = 180.0) -> BoardHandle:
    """Start an emulated ``arch`` board serving TVM RPC on 127.0.0.1, registered under ``key``.

    The server binds the first free port in ``[port, port_end)`` (default ``port + 100``).
    Returns once the tracker at ``(tracker_host, tracker_port)`` lists the board as free;
    raises :class:`MntvmError` (and kills the board) if that has not happened within ``timeout``
    seconds or the board exits.  The board runs in its own process group (see :func:`stop`).
    """
    spec = _spec(arch)
    arch = _ALIASES[arch]
    root = prepare(arch, cache)
    bdir = _board_dir(arch, cache)
    port_end = port_end if port_end is not None else min(port + 100, 65536)
    if not 0 < port < port_end <= 65536:
        raise MntvmError(f"bad board port range [{port}, {port_end})")
    if not re.fullmatch(r"[A-Za-z0-9_.:\-]+", key):
        raise MntvmError(f"bad RPC key {key!r}: use letters, digits, '_', '-', '.', ':'")

    here = Path(__file__).with_name("board_server.py")
    if os.geteuid() == 0:
        # The server script travels into the userland at each start (cheap; always current).
        (root / "opt" / "mntvm").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(here, root / "opt" / "mntvm" / "board_server.py")
        shutil.copyfile(here.with_name("vm_profile.py"), root / "opt" / "mntvm" / "vm_profile.py")
        script = "/opt/mntvm/board_server.py"
    else:
        script = str(here)  # qemu -L falls back to host paths that ROOT lacks

    if log is None:
        logs = bdir / "logs"
        try:
            logs.mkdir(parents=True, exist_ok=True)
            if not os.access(logs, os.W_OK):
                raise PermissionError(logs)
        except OSError:  # a shared, root-prepared cache: log to the temp dir instead
            import tempfile

            logs = Path(tempfile.gettempdir()) / f"mntvm-board-logs-{os.geteuid()}"
            logs.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log = logs / f"{key.replace(':', '_')}-{port}-{stamp}-{os.getpid()}.log"
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = _board_command(root, spec, [script, "--tracker", f"{tracker_host}:{tracker_port}",
                                      "--key", key, "--host", "127.0.0.1", "--port", str(port),
                                      "--port-end", str(port_end)])
    with open(log, "w") as logf:
        logf.write(f"$ {' '.join(cmd)}\n")
        logf.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, env=_board_env(),
                                start_new_session=True, close_fds=True)
    _CHILDREN[proc.pid] = proc

    deadline = time.monotonic() + timeout
    bound = None
    try:
        while True:
            if proc.poll() is not None:
                raise MntvmError(f"emulated {arch} board exited with code {proc.returncode} "
                                 f"before registering (log {log}): {_log_tail(log)}")
            if bound is None:
                m = re.search(rf"^{_LISTEN_MARK} (\d+)$", log.read_text(errors="replace"), re.M)
                if m:
                    bound = int(m.group(1))
            if bound is not None and _tracker_has((tracker_host, tracker_port), key, bound):
                return BoardHandle(pid=proc.pid, port=bound, log=log, key=key, arch=arch,
                                   tracker=(tracker_host, tracker_port))
            if time.monotonic() > deadline:
                raise MntvmError(
                    f"emulated {arch} board did not register with tracker "
                    f"{tracker_host}:{tracker_port} under key {key!r} within {timeout:.0f} s "
                    f"(log {log}): {_log_tail(log)}")
            time.sleep(0.25)
    except BaseException:
        stop(proc.pid)
        raise


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _group_members(pgid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(d.name))
    return pids


def is_running(handle_or_pid) -> bool:
    """True while the board's process (group) has a live member."""
    pid = handle_or_pid.pid if isinstance(handle_or_pid, BoardHandle) else int(handle_or_pid)
    proc = _CHILDREN.get(pid)
    if proc is not None:
        proc.poll()
    return _alive(pid) or bool(_group_members(pid))


def stop(handle_or_pid, timeout: float = 10.0) -> None:
    """Stop a board by handle or pid: SIGTERM then SIGKILL to its whole process group.

    ``pid`` must be a board's (process-group leader's) pid as returned by :func:`start`; a pid
    that is not a group leader gets the signals alone.  Stopping a board that is gone is a no-op.
    """
    pid = handle_or_pid.pid if isinstance(handle_or_pid, BoardHandle) else int(handle_or_pid)
    if pid <= 1 or pid == os.getpid():
        raise MntvmError(f"refusing to stop pid {pid}")
    proc = _CHILDREN.get(pid)
    try:
        group = os.getpgid(pid) == pid
    except ProcessLookupError:
        group = bool(_group_members(pid))  # leader gone (e.g. reaped) but members may remain

    def _signal(sig):
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _gone() -> bool:
        if proc is not None:
            proc.poll()
        return not _alive(pid) and not (group and _group_members(pid))

    _signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not _gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _gone():
        _signal(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not _gone() and time.monotonic() < deadline:
            time.sleep(0.1)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        _CHILDREN.pop(pid, None)
    if not _gone():
        raise MntvmError(f"board process {pid} survived SIGKILL")


# ----------------------------------------------------------------------------------------------
# remote queries


def board_arch(remote) -> str:
    """The CPU architecture (``uname -m`` spelling, e.g. ``aarch64``) of a connected RPC session.

    Uses the ``mntvm.board.arch`` function the emulated board registers; on a stock TVM server
    with the compiler library, falls back to ``target.llvm_get_system_triple``.
    """
    for name, parse in ((_ARCH_FUNC, str),
                        ("target.llvm_get_system_triple", lambda t: str(t).split("-", 1)[0])):
        try:
            func = remote.get_function(name)
        except Exception:  # pylint: disable=broad-except  # missing remote function
            continue
        if func is None:
            continue
        try:
            value = parse(func())
        except Exception:  # pylint: disable=broad-except
            continue
        if value:
            return {"arm64": "aarch64", "amd64": "x86_64"}.get(value, value)
    raise MntvmError("cannot tell the remote board's architecture: it has neither "
                     f"{_ARCH_FUNC} nor target.llvm_get_system_triple")
