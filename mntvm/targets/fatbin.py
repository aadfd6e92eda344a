"""CUDA device code embedded as nvcc fatbins in exported libraries.

TVM 0.27 exports CUDA modules as source (compiled by NVRTC when loaded); boards without a CUDA
toolkit need the device code compiled ahead. :func:`cuda_fatbin_packer` is an ``fpack_imports``
hook for ``export_library`` that rewrites TVM's packed import blob (``__tvm_ffi__library_bin``)
so that each CUDA module carries an nvcc fatbin for the target's arch instead of its source.
"""
from __future__ import annotations

import os
import re
import struct
import tempfile

from mntvm.core.errors import MntvmError, one_line


class _Blob:
    """Reader for TVM's packed import blob (``__tvm_ffi__library_bin``): little-endian u64
    lengths; ``[u64 size][row_ptr vec][child vec]`` then per module ``kind`` and, unless the kind
    is ``_lib``, its ``SaveToBytes`` payload."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u64(self) -> int:
        (v,) = struct.unpack_from("<Q", self.data, self.pos)
        self.pos += 8
        return v

    def raw(self) -> bytes:
        n = self.u64()
        out = self.data[self.pos:self.pos + n]
        if len(out) != n:
            raise MntvmError("malformed TVM module blob (truncated)")
        self.pos += n
        return out


def _pstr(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _fatbin_blob(blob: bytes, compile_source) -> tuple[bytes, int]:
    """Rewrite CUDA modules that carry source (fmt ``cuda``) to carry ``compile_source(src)``
    as fmt ``fatbin``. Returns the new blob and how many modules were rewritten."""
    r = _Blob(blob)
    r.u64()  # size of the rest
    rows = [r.u64() for _ in range(r.u64())]
    children = [r.u64() for _ in range(r.u64())]
    out = [_pstr_vec(rows), _pstr_vec(children)]
    rewritten = 0
    for _ in range(len(rows) - 1):
        kind = r.raw()
        out.append(_pstr(kind))
        if kind == b"_lib":
            continue
        payload = r.raw()
        if kind == b"cuda":
            p = _Blob(payload)
            fmt = p.raw()
            if fmt == b"cuda":
                # [fmt][fmap][code]: code is last; its length prefix sits right before it.
                end = len(payload)
                for start in range(p.pos, end - 7):
                    if struct.unpack_from("<Q", payload, start)[0] == end - start - 8 \
                            and b"__global__" in payload[start + 8:]:
                        break
                else:
                    raise MntvmError("malformed TVM CUDA module (no code field)")
                fmap, source = payload[p.pos:start], payload[start + 8:]
                fatbin = compile_source(source.decode())
                payload = _pstr(b"fatbin") + fmap + _pstr(bytes(fatbin))
                rewritten += 1
        out.append(_pstr(payload))
    body = b"".join(out)
    return struct.pack("<Q", len(body)) + body, rewritten


def _pstr_vec(values: list[int]) -> bytes:
    return struct.pack(f"<{len(values) + 1}Q", len(values), *values)


def cuda_fatbin_packer(target):
    """An ``fpack_imports`` hook for ``export_library`` that embeds nvcc fatbins."""
    import tvm

    def nvcc_fatbin(source: str) -> bytes:
        from tvm.support import nvcc

        arch = str(target.attrs["arch"]) if "arch" in target.attrs else ""
        m = re.fullmatch(r"sm_(\d+[a-z]?)", arch)
        if not m:
            raise MntvmError(f"CUDA target needs an 'arch' like sm_87, got {arch!r}")
        sm = m.group(1)
        with target:
            try:
                return bytes(nvcc.compile_cuda(
                    source, target_format="fatbin", compiler="nvcc",
                    arch=["-gencode", f"arch=compute_{sm},code=[sm_{sm},compute_{sm}]"]))
            except RuntimeError as err:
                raise MntvmError(f"nvcc failed for {arch}: {one_line(err)}") from err

    def pack(mod, is_system_lib: bool, prefix: str, workspace_dir: str) -> str:
        blob = tvm.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy().tobytes()
        blob, _ = _fatbin_blob(blob, nvcc_fatbin)
        llvm = [m for m in mod._collect_dso_modules() if m.kind == "llvm"]
        if not llvm:
            raise MntvmError("CUDA export needs an LLVM host module")
        triple_target = llvm[0].get_function("_get_target_string")()
        obj = tvm.get_global_func("codegen.codegen_blob")(blob, is_system_lib, triple_target,
                                                          prefix)
        path = os.path.join(workspace_dir or tempfile.mkdtemp(), f"{prefix}devc.o")
        obj.write_to_file(path)
        return path

    return pack
