"""Checks of built binaries shared by the targets and compile tests: ELF headers, the libraries a
shared object needs, the CUDA fatbins embedded in it."""
from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

CPU_LIBS = re.compile(r"^(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|ld-linux[-\w.]*)\.so")


def elf_header(path: Path) -> tuple[int, int, int]:
    """(class: 32/64, e_machine, e_flags) of a little-endian ELF file."""
    data = path.read_bytes()[:64]
    assert data[:4] == b"\x7fELF", f"{path} is not an ELF file"
    bits = {1: 32, 2: 64}[data[4]]
    assert data[5] == 1, "expected little-endian"
    (machine,) = struct.unpack_from("<H", data, 18)
    (flags,) = struct.unpack_from("<I", data, 36 if bits == 32 else 48)
    return bits, machine, flags


def needed_libs(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return re.findall(r"\(NEEDED\).*\[(.+?)\]", out)


def assert_cpu_lib(path: Path, bits: int, machine: int) -> None:
    got_bits, got_machine, _ = elf_header(path)
    assert (got_bits, got_machine) == (bits, machine)
    libs = needed_libs(path)
    assert libs and all(CPU_LIBS.match(lib) for lib in libs), libs


def fatbin_archs(data: bytes) -> list[tuple[str, int]]:
    """[(kind, sm)] of every fatbin in ``data``: kind 'elf' (SASS cubin) or 'ptx'."""
    found, start = [], data.find(struct.pack("<I", 0xBA55ED50))
    while start >= 0:
        _, _, hsize, fsize = struct.unpack_from("<IHHQ", data, start)
        p = start + hsize
        while p < start + hsize + fsize:
            kind, _, ehsize, padded = struct.unpack_from("<HHII", data, p)
            (sm,) = struct.unpack_from("<I", data, p + 28)
            found.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), sm))
            p += ehsize + padded
        start = data.find(struct.pack("<I", 0xBA55ED50), start + hsize + fsize)
    return found
