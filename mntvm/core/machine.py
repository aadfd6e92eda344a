"""This machine's CPU as measured, not as named: its FMA peak at a vector width, its int8 dot-product
peak, the CPU flags that decide our code, and how many 512-bit FMA ports a core has.

The FMA peak is taken at the vector width an artifact uses (float32), the int8 one with
AVX512-VNNI ``vpdpbusd`` (64 u8 x s8 multiply-adds per instruction), AVX2 ``vpmaddwd`` where there
is no VNNI (16 int16 multiply-adds: our AVX2 int8 kernels' instruction; a Zen 2 core issues one a
cycle, as many multiply-adds as its two 8-lane FMAs) or, for the AMX pointwise
kernels (:mod:`mntvm.templates.amx_int8`), AMX-INT8 ``tdpbusd`` (16 x 16 x 64 per instruction).
On the Emerald Rapids guests the AMX figure is bimodal from one process to the next: 5.3-5.9 or
2.2-2.5 TOP/s a core (VNNI: a steady ~0.55), with or without 20-40 ms of warm-up first: read
an AMX layer's % of peak with that in mind.

Per-layer GFLOP/s mean little without it: machines of one kind differ (a Zen4 core does 115
GFLOP/s with AVX-512, a Sapphire Rapids core with two 512-bit FMA ports twice that), and the
clock of a virtual machine is whatever it is today. The measurement is a small C program (24
independent FMA chains per thread, 12 with AVX2's 16 ymm registers: 24 spilled to the stack there and
read 93 GFLOP/s on a Zen 2 core where 12 read 109; the best of 60 short windows: a window in which
the thread was preempted says nothing about the core), built once with gcc into the cache folder
(named by a hash of its source, so that a changed program is built again).

LLVM's CPU name is not a fact about a virtual machine (one of these Emerald Rapids guests says
"rocketlake"): :func:`machine_facts` is what compile chooses another CPU's tuned log by (the
flags in ``/proc/cpuinfo`` that change the code, and the 512-bit FMA ports: two when a zmm FMA
stream runs ~2x a ymm one, as on Sapphire/Emerald Rapids; one on Zen4, which splits zmm in two),
and what ``mntvm tune`` records of the machine it tuned on.

Public entries: :func:`measure_peak`, :func:`cpu_flags`, :func:`machine_facts`.
"""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path

from mntvm.core.atomic import write_text
from mntvm.core.errors import MntvmError
from mntvm.core.paths import cache_dir

PEAK_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <unistd.h>
#include <sys/syscall.h>
#if defined(AMX)
#elif defined(PAIRS)
typedef __m256i vec; enum {L=16, CH=12};  /* multiply-adds per vpmaddwd (16 int16 products, summed in pairs) */
static volatile int one = 1;  /* no operand a constant (SET(1e-9f) would be 0): the compiler must not fold the chains */
#define FMA(a,b,c) _mm256_madd_epi16(a,b)
#define SET(x) _mm256_set1_epi32(one + (int)(x))
#define RED(x) (float)_mm256_extract_epi32(x, 0)
#elif defined(INT8)
typedef __m512i vec; enum {L=64, CH=24};   /* multiply-adds per vpdpbusd; chains */
#define FMA _mm512_dpbusd_epi32
#define SET(x) _mm512_set1_epi32((int)(x))
#define RED(x) (float)_mm512_reduce_add_epi32(x)
#elif defined(__AVX512F__)
typedef __m512 vec; enum {L=16, CH=24};
#define FMA _mm512_fmadd_ps
#define SET _mm512_set1_ps
#define RED(x) _mm512_reduce_add_ps(x)
#else
typedef __m256 vec; enum {L=8, CH=12};  /* 16 ymm: 24 chains would spill */
#define FMA _mm256_fmadd_ps
#define SET _mm256_set1_ps
static float RED(__m256 x){float t[8]; _mm256_storeu_ps(t,x); return t[0];}
#endif
static long N = 100000000;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
/* Best rate over many ~5 ms windows: these machines are shared, and a window in which the
   thread was preempted says nothing about the core. */
static double best[64];
#if defined(AMX)
/* tdpbusd (16 x 16 int32 += 16 x 64 u8 . 64 x 16 s8 = 16384 multiply-adds) into 4 independent
   accumulator tiles, the operands resident in tiles */
static unsigned char buf[1024] __attribute__((aligned(64)));
static void* run(void* arg){
  long id=(long)arg; unsigned char cfg[64]; memset(cfg,0,64); cfg[0]=1;
  for(int i=0;i<8;i++){ cfg[16+2*i]=64; cfg[48+i]=16; }
  _tile_loadconfig(cfg);
  _tile_loadd(4, buf, 64); _tile_loadd(5, buf, 64); _tile_loadd(6, buf, 64); _tile_loadd(7, buf, 64);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  for(int w=0; w<30; w++){
    double t0=now();
    for(long n=0;n<N/10;n++){
      _tile_dpbusd(0,4,6); _tile_dpbusd(1,4,7); _tile_dpbusd(2,5,6); _tile_dpbusd(3,5,7);
    }
    double r=(double)(N/10)*4*16384*2/(now()-t0)/1e9; if(r>best[id]) best[id]=r;
  }
  _tile_release();
  return 0;
}
#else
static void* run(void* arg){
  long id=(long)arg; vec a[CH]; vec b=SET(1.0000001f), c=SET(1e-9f);
  for(int i=0;i<CH;i++) a[i]=SET((float)i);
  for(int w=0; w<60; w++){
    double t0=now();
    for(long n=0;n<N;n++){
      #pragma GCC unroll 24
      for(int i=0;i<CH;i++) a[i]=FMA(a[i],b,c);
      #pragma GCC unroll 24
      for(int i=0;i<CH;i++) a[i]=FMA(a[i],c,b);
    }
    double r=(double)N*2*CH*L*2/(now()-t0)/1e9; if(r>best[id]) best[id]=r;
  }
  float s=0; for(int i=0;i<CH;i++) s+=RED(a[i]);
  if(s==1234.5f) printf("x");
  return 0;
}
#endif
int main(int argc,char**argv){
#if defined(AMX)
  if(syscall(SYS_arch_prctl, 0x1023, 18)) return 2;  /* ARCH_REQ_XCOMP_PERM, XTILEDATA */
#endif
  int nt=atoi(argv[1]); N=atol(argv[2]); pthread_t th[64];
  for(long i=0;i<nt;i++) pthread_create(&th[i],0,run,(void*)i);
  double tot=0;
  for(int i=0;i<nt;i++){ pthread_join(th[i],0); tot+=best[i]; }
  printf("%f\n", tot);
  return 0;
}
"""
# peak program -> gcc flags (one source, PEAK_C)
_PROGRAMS = {"fma512": ["-mavx512f"], "fma256": ["-mavx2", "-mfma"],
             "vnni512": ["-mavx512f", "-mavx512vnni", "-DINT8"], "pairs256": ["-mavx2", "-DPAIRS"],
             "amx": ["-mamx-tile", "-mamx-int8", "-DAMX"]}


def measure_peak(threads: int, vector_bits: int, iterations: int = 200_000, dtype: str = "float32",
                 dot: str = "vnni") -> float | None:
    """fp32 FMA peak in GFLOP/s on ``threads`` threads with ``vector_bits``-wide vectors (512: AVX-512,
    256: AVX2+FMA); ``dtype="int8"``: the int8 multiply-add peak in GOP/s (2 ops per multiply-add)
    of instruction ``dot``, as an int8 build records what its kernels multiply with: "vnni"
    (AVX512-VNNI ``vpdpbusd``, 512-bit builds), "avx2" (``vpmaddwd`` on int16 pairs), "amx"
    (AMX-INT8 ``tdpbusd``). None where it cannot be measured here (not x86, no gcc, no such ISA)."""
    if platform.machine() not in ("x86_64", "AMD64") or vector_bits not in (256, 512):
        return None
    if dtype == "int8":
        kind, flag = {"vnni": ("vnni512", "avx512_vnni"), "avx2": ("pairs256", "avx2"),
                      "amx": ("amx", "amx_int8")}.get(dot, (None, None))
        if kind is None or not _cpu_has(flag) or (dot != "avx2" and vector_bits != 512):
            return None
    else:
        kind = f"fma{vector_bits}"
    exe = _binary(kind)
    if exe is None:
        return None
    try:
        out = subprocess.run([str(exe), str(int(threads)), str(iterations)], capture_output=True, text=True,
                             timeout=120)
        return float(out.stdout.strip()) or None if out.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def _cpu_has(flag: str) -> bool:
    return flag in cpu_flags()


# /proc/cpuinfo flags that change what our templates emit or how fast it runs
DECISIVE_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> set[str]:
    """The CPU flags the kernel reports (/proc/cpuinfo; empty where there is none)."""
    return _cpuinfo()[1]


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo (("", set()) where there is none)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, flags


def machine_facts() -> dict:
    """``{"flags": [decisive flags present], "fma512_ports": 1 | 2 | None}`` of this machine, the
    port count measured once per CPU (model and flags) and cached (a ~0.3 s measurement)."""
    model, flags = _cpuinfo()
    facts = {"flags": [f for f in DECISIVE_FLAGS if f in flags], "fma512_ports": None}
    if "avx512f" not in flags:
        return facts
    key = hashlib.sha256((model + " ".join(sorted(flags))).encode()).hexdigest()[:16]
    cached = cache_dir() / "machine" / f"{key}.json"
    try:
        measured = json.loads(cached.read_text())
        return {**facts, **{k: measured[k] for k in ("fma512_ports", "zmm_over_ymm") if k in measured}}
    except (OSError, ValueError, KeyError):
        pass
    zmm, ymm = measure_peak(1, 512), measure_peak(1, 256)
    if zmm and ymm:
        facts["fma512_ports"] = 2 if zmm / ymm >= 1.5 else 1
        facts["zmm_over_ymm"] = round(zmm / ymm, 2)
        try:
            write_text(cached, json.dumps(facts))
        except MntvmError:
            pass  # an unwritable cache: measured again next time
    return facts


def _binary(name: str) -> Path | None:
    """The peak program ``name`` (a key of :data:`_PROGRAMS`), built once into the cache folder."""
    d = cache_dir() / "peak"
    exe = d / f"{name}-{hashlib.sha256((PEAK_C + ' '.join(_PROGRAMS[name])).encode()).hexdigest()[:12]}"
    if exe.exists():
        return exe
    try:
        d.mkdir(parents=True, exist_ok=True)
        src = d / f"{name}.c"
        src.write_text(PEAK_C)
        tmp = d / f".{name}.tmp"
        subprocess.run(["gcc", "-O3", *_PROGRAMS[name], str(src), "-o", str(tmp), "-lpthread"], check=True,
                       capture_output=True, timeout=120)
        tmp.replace(exe)
    except (OSError, subprocess.SubprocessError):
        return None
    return exe
