"""How fast a pointwise register tile can run on this core at all: hand-written C, one thread.

The templates' pointwise kernels are register tiles of broadcast-FMAs (``o_t`` channel vectors x
``p_t`` positions, :mod:`mntvm.templates.cpu`). Their "% of the FMA peak" compares them with a loop of
independent FMAs on registers only (:func:`mntvm.bench.measure_peak`), which no kernel that loads its
operands reaches. This compiles the same tiles in C (vector intrinsics, ``gcc -O3 -march=native``,
the width of this machine's ``x86`` profile) and times them two ways:

- ``L1``: the tile alone over K = 512 input channels, its inputs packed and hot in L1 and its weights
  in L2 (64-128 KB): the most such a tile gets here;
- ``layer``: the loop the fused template runs for a whole layer (weight panels of ``o_t`` vectors
  outermost, the tiles of positions inside, the whole reduction in each tile, ReLU6 on the way out;
  input (C/V, P, V), weights (O/V, C/V, V, V)) on the 28x28 256->256, 14x14 512->512 and 7x7
  1024->1024 layers of 1.0/224, where ``p_t`` divides the positions.

Against the FMA peak measured now, at the same width. Inside the network our kernels run at about the
``layer`` rate or below it; the ``L1`` rate bounds what any kernel of this kind can do.

    python benchmarks/tile_ceiling.py [--reps 1.0] [--json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mntvm import MntvmError  # noqa: E402

# (o_t, p_t) register tiles by vector width: the templates' defaults and their neighbours (mntvm/templates/x86.py)
TILES = {512: [(2, 8), (2, 7), (4, 4), (4, 6), (2, 12)], 256: [(4, 3), (3, 4), (2, 6), (2, 5), (1, 7)]}
LAYERS = [(784, 256, 256), (196, 512, 512), (49, 1024, 1024)]  # (positions, in, out) of 1.0/224
K_L1 = 512

SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if LANES == 16
typedef __m512 V;
#define LOAD _mm512_loadu_ps
#define BCAST _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ZERO _mm512_setzero_ps
#define STORE _mm512_storeu_ps
#define RELU6(a) _mm512_min_ps(_mm512_max_ps(a, ZERO()), BCAST(6.f))
#else
typedef __m256 V;
#define LOAD _mm256_loadu_ps
#define BCAST _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ZERO _mm256_setzero_ps
#define STORE _mm256_storeu_ps
#define RELU6(a) _mm256_min_ps(_mm256_max_ps(a, ZERO()), BCAST(6.f))
#endif
#define L LANES
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

/* one tile: x (IB, xstride) with the tile's PT positions at xs, w (OB, IB, L, L) rows ob..ob+OT, y (OB, ystride) */
static inline void tile(const float *x, size_t xstride, const float *w, int IB, float *y, size_t ystride) {
  V acc[OT][PT];
  for (int o = 0; o < OT; o++) for (int p = 0; p < PT; p++) acc[o][p] = ZERO();
  for (int ib = 0; ib < IB; ib++) {
    const float *xb = x + (size_t)ib * xstride;
#pragma GCC unroll 16
    for (int i = 0; i < L; i++) {
      V wv[OT];
      for (int o = 0; o < OT; o++) wv[o] = LOAD(w + (((size_t)o * IB + ib) * L + i) * L);
      for (int p = 0; p < PT; p++) {
        V b = BCAST(xb[p * L + i]);
        for (int o = 0; o < OT; o++) acc[o][p] = FMA(b, wv[o], acc[o][p]);
      }
    }
  }
  for (int o = 0; o < OT; o++) for (int p = 0; p < PT; p++) STORE(y + o * ystride + p * L, RELU6(acc[o][p]));
}

__attribute__((noinline)) static void layer(const float *x, const float *w, float *y, int P, int IB, int OB) {
  for (int ob0 = 0; ob0 < OB / OT; ob0++)
    for (int p0 = 0; p0 < P / PT; p0++)
      tile(x + (size_t)p0 * PT * L, (size_t)P * L, w + (size_t)ob0 * OT * IB * L * L, IB,
           y + ((size_t)ob0 * OT * P + (size_t)p0 * PT) * L, (size_t)P * L);
}

__attribute__((noinline)) static void alone(const float *x, const float *w, float *y, int IB) {
  tile(x, (size_t)PT * L, w, IB, y, (size_t)PT * L);
}

int main(int argc, char **argv) {
  /* argv: mode (l1|layer) P Cin Cout reps; prints GFLOP/s of the best of 7 */
  int l1 = strcmp(argv[1], "l1") == 0, P = atoi(argv[2]), IB = atoi(argv[3]) / L, OB = atoi(argv[4]) / L;
  long reps = atol(argv[5]);
  if (l1) { P = PT; OB = OT; }
  float *x = aligned_alloc(64, (size_t)IB * P * L * 4), *w = aligned_alloc(64, (size_t)OB * IB * L * L * 4),
        *y = aligned_alloc(64, (size_t)OB * P * L * 4);
  for (size_t i = 0; i < (size_t)IB * P * L; i++) x[i] = 1e-3f * (float)(i % 5);
  for (size_t i = 0; i < (size_t)OB * IB * L * L; i++) w[i] = 1e-3f * (float)(i % 7);
  double best = 1e30;
  for (int r = 0; r < 7; r++) {
    double t = now();
    for (long j = 0; j < reps; j++) { if (l1) alone(x, w, y, IB); else layer(x, w, y, P, IB, OB); }
    t = now() - t;
    if (t < best) best = t;
  }
  printf("%.3f %.6g\n", 2.0 * P * IB * L * OB * L * reps / best / 1e9, (double)y[1]);
  return 0;
}
"""


def _compiler() -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise MntvmError("tile_ceiling.py: no C compiler (gcc or cc) on PATH")
    return cc


def _build(tmp: Path, lanes: int, o_t: int, p_t: int) -> Path:
    src = tmp / "tile.c"
    if not src.exists():
        src.write_text(SOURCE)
    exe = tmp / f"tile_{lanes}_{o_t}x{p_t}"
    p = subprocess.run([_compiler(), "-O3", "-march=native", f"-DLANES={lanes}", f"-DOT={o_t}", f"-DPT={p_t}",
                        str(src), "-o", str(exe)], capture_output=True, text=True)
    if p.returncode != 0:
        raise MntvmError(f"tile_ceiling.py: the C tile {o_t}x{p_t} did not compile: "
                         f"{(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return exe


def _run(exe: Path, mode: str, p: int, cin: int, cout: int, reps: int) -> float:
    out = subprocess.run([str(exe), mode, str(p), str(cin), str(cout), str(max(1, reps))], capture_output=True,
                         text=True, check=True).stdout
    return float(out.split()[0])


def measure(scale: float = 1.0) -> dict:
    """GFLOP/s of each tile alone (``l1``) and in each layer loop (None where ``p_t`` does not divide the
    positions), the FMA peak measured now at the profile's width, and each as % of it."""
    from mntvm.bench import measure_peak
    from mntvm.targets import get_profile

    bits = get_profile("x86").vector_bits
    if bits not in TILES:
        raise MntvmError(f"tile_ceiling.py: no C tiles for {bits}-bit vectors (x86 AVX2 or AVX-512 only)")
    lanes = bits // 32
    peak = measure_peak(1, bits)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for o_t, p_t in TILES[bits]:
            exe = _build(Path(tmp), lanes, o_t, p_t)
            # about 0.1 s a timing at scale 1 on a 200 GFLOP/s core
            flops_l1 = 2.0 * p_t * K_L1 * o_t * lanes
            row = {"tile": f"{o_t}x{p_t}", "l1": _run(exe, "l1", p_t, K_L1, o_t * lanes, int(scale * 2e10 / flops_l1))}
            for p, cin, cout in LAYERS:
                key = f"{p}x{cin}->{cout}"
                if p % p_t or cout % (o_t * lanes):
                    row[key] = None
                    continue
                row[key] = _run(exe, "layer", p, cin, cout, int(scale * 2e10 / (2.0 * p * cin * cout)) or 1)
            rows.append(row)
    for row in rows:
        row["percent_of_peak"] = {k: (None if v is None else 100.0 * v / peak) for k, v in row.items()
                                  if k not in ("tile",)}
    return {"vector_bits": bits, "peak_gflops": peak, "k_l1": K_L1, "tiles": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=float, default=1.0, help="scale of the timed work (1.0: ~0.1 s a timing)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        r = measure(a.reps)
    except MntvmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(r, indent=1))
        return 0
    keys = ["l1"] + [f"{p}x{cin}->{cout}" for p, cin, cout in LAYERS]
    print(f"C register tiles, 1 thread, {r['vector_bits']}-bit; FMA peak measured now {r['peak_gflops']:.0f} GFLOP/s")
    print(f"{'tile':6s}" + "".join(f"{k:>22s}" for k in ["alone (K=512)"] + keys[1:]))
    for row in r["tiles"]:
        cells = []
        for k in keys:
            v = row[k]
            cells.append("-" if v is None else f"{v:.0f} GFLOP/s {row['percent_of_peak'][k]:3.0f}%")
        print(f"{row['tile']:6s}" + "".join(f"{c:>22s}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
