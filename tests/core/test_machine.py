"""mntvm.core.machine: the CPU as measured (flags, 512-bit FMA ports), cached per machine."""
from __future__ import annotations

import subprocess

import pytest

from mntvm.core import machine


def test_cpu_flags_are_the_kernels():
    line = subprocess.run(["grep", "-m1", "^flags", "/proc/cpuinfo"], capture_output=True, text=True).stdout
    assert machine.cpu_flags() == set(line.split(":", 1)[1].split())


def test_machine_facts_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MNTVM_CACHE", str(tmp_path))
    facts = machine.machine_facts()
    flags = machine.cpu_flags()
    assert facts["flags"] == [f for f in machine.DECISIVE_FLAGS if f in flags]
    if "avx512f" not in flags:
        assert facts["fma512_ports"] is None
        return
    # two ports: a zmm FMA stream runs ~2x a ymm one; one port (Zen4): about the same
    assert facts["fma512_ports"] == (2 if facts["zmm_over_ymm"] >= 1.5 else 1)
    assert list((tmp_path / "machine").glob("*.json"))

    def no_more(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(machine, "measure_peak", no_more)
    again = machine.machine_facts()
    assert again["fma512_ports"] == facts["fma512_ports"] and again["flags"] == facts["flags"]


@pytest.mark.parametrize("bits", [256, 512])
def test_peak_is_positive_where_the_isa_is_there(bits):
    have = "avx512f" in machine.cpu_flags() if bits == 512 else {"avx2", "fma"} <= machine.cpu_flags()
    peak = machine.measure_peak(1, bits)
    assert (peak is not None and peak > 1.0) if have else peak is None


def test_int8_peaks_where_the_isa_is_there():
    """The int8 peak of the instruction a build multiplies with (it records it): VNNI (vpdpbusd),
    AVX2's vpmaddwd (our int8 kernels without VNNI), AMX (tdpbusd), each where the CPU has it, None
    elsewhere; a tdpbusd does 256x the multiply-adds of a vpdpbusd, so its peak is the larger by
    far. A vpmaddwd does 16 multiply-adds, as two 8-lane FMAs: cores issue one or two a cycle, so
    its peak is within 0.3-3x the 256-bit FMA one (a folded loop reads ~25x)."""
    flags = machine.cpu_flags()
    wide = machine.measure_peak(1, 512, dtype="int8", dot="vnni")
    pairs = machine.measure_peak(1, 256, dtype="int8", dot="avx2")
    amx = machine.measure_peak(1, 512, dtype="int8", dot="amx")
    vnni = {"avx512f", "avx512_vnni"} <= flags
    assert (wide is not None and wide > 1.0) if vnni else wide is None
    assert (pairs is not None and pairs > 1.0) if "avx2" in flags else pairs is None
    assert machine.measure_peak(1, 512, dtype="int8", dot="sdot") is None
    assert (amx is not None and amx > 1.0) if "amx_int8" in flags else amx is None
    if pairs and {"avx2", "fma"} <= flags:
        assert 0.3 < pairs / machine.measure_peak(1, 256) < 3
    if vnni and amx:
        assert amx > 2 * wide
