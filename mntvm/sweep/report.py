"""A sweep as people read it: the printed table, the two-panel plot and the self-contained HTML page."""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from mntvm.core.atomic import write_bytes
from mntvm.sweep.results import label, top1_table


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _retry_text(r: dict) -> str:
    return "; ".join(f"{t.get('board') or 'no board'}: {t['error']}" for t in r.get("retried") or [])


def format_table(result: dict) -> str:
    """The sweep as a printed table, then the budget verdict and retries."""
    head = (f"{'alpha':>5} {'res':>4} {'MMACs':>7} {'Mparams':>7} {'top1':>5} {'median ms':>10} {'p90 ms':>9} "
            f"{'GFLOP/s':>8} {'max|diff|':>9} {'pareto':>6}  board")
    lines = [f"sweep of {len(result['variants'])} {result.get('dtype', 'float32')} variants for target {result['target']} "
             f"(TVM {result['tvm_version']}, {result['schedules']['id']}, repeat {result['repeat']})", head]
    for r in result["variants"]:
        p = {True: "*", False: "", None: "?"}[r["pareto"]]
        lines.append(f"{str(float(r['alpha'])):>5} {r['resolution']:>4d} {r['madds'] / 1e6:>7.1f} {r['params'] / 1e6:>7.3f} "
                     f"{_fmt(r['top1'], '.1f'):>5} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} "
                     f"{r['gflops']:>8.2f} {r['max_abs_diff']:>9.1e} {p:>6}  {r['board']}"
                     + (f"  (retried: {_retry_text(r)})" if r.get("retried") else ""))
    lines.append("pareto: * = no other variant is both faster and more accurate; ? = top-1 not published")
    if result.get("budget"):
        lines.append(result["budget"]["message"])
    for f in result.get("failed") or []:
        lines.append(f"FAILED {label(f['alpha'], f['resolution'])}: {f['errors'][-1]['error']}")
    cache = result.get("cache") or {}
    if cache.get("removed"):
        lines.append(f"artifact cache: removed {len(cache['removed'])} least recently used artifacts "
                     f"({cache['freed_bytes'] / 2**20:.1f} MB) to stay under {cache['max_bytes'] / 2**20:.0f} MB "
                     "(MNTVM_CACHE_MAX_MB)")
    return "\n".join(lines)


def plot_png(result: dict) -> bytes:
    """Two panels: latency vs top-1 (Pareto front joined, points labelled α/res) and latency vs
    mult-adds annotated with the achieved GFLOP/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = result["variants"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    alphas = sorted({r["alpha"] for r in recs}, reverse=True)
    colors = {a: plt.cm.viridis(i / max(1, len(alphas) - 1) * 0.85) for i, a in enumerate(alphas)}

    acc = [r for r in recs if r.get("top1") is not None]
    for a in alphas:
        pts = [r for r in acc if r["alpha"] == a]
        if pts:
            ax1.scatter([r["median_ms"] for r in pts], [r["top1"] for r in pts], color=colors[a], s=42,
                        label=f"α={float(a)!s}", zorder=3)
    front = sorted((r for r in acc if r.get("pareto")), key=lambda r: r["median_ms"])
    if front:
        ax1.plot([r["median_ms"] for r in front], [r["top1"] for r in front], "-", color="crimson", lw=1.6,
                 label="Pareto front", zorder=2)
    for r in acc:
        ax1.annotate(label(r["alpha"], r["resolution"]), (r["median_ms"], r["top1"]), textcoords="offset points",
                     xytext=(5, 4), fontsize=8)
    if result.get("budget"):
        # a budget far beyond every variant would stretch the axis until the variants collapse onto
        # one vertical line (a 1000 ms budget over ~1 ms variants): then it is named, not drawn
        budget = result["budget"]["budget_ms"]
        if budget <= 2 * max(r["median_ms"] for r in recs):
            ax1.axvline(budget, color="grey", ls="--", lw=1, label="budget")
        else:
            ax1.text(0.01, 0.99, f"budget {budget:g} ms: off the scale (every variant is under it)",
                     transform=ax1.transAxes, fontsize=7, color="dimgrey", ha="left", va="top")
    missing = [label(r["alpha"], r["resolution"]) for r in recs if r.get("top1") is None]
    if missing:
        ax1.text(0.01, 0.01, "no published top-1: " + ", ".join(missing), transform=ax1.transAxes, fontsize=7,
                 color="dimgrey", va="bottom")
    lat = [r["median_ms"] for r in recs]
    wide = max(lat) / max(min(lat), 1e-9) > 8  # a wide range: log axes keep small variants apart
    if wide:
        ax1.set_xscale("log")
        ax2.set_xscale("log")
    if max(r["madds"] for r in recs) / max(min(r["madds"] for r in recs), 1) > 8:
        ax2.set_yscale("log")
    ax1.margins(x=0.12, y=0.08)
    ax1.set_xlabel("median latency (ms" + (", log scale)" if wide else ")"))
    ax1.set_ylabel("ImageNet top-1 (%), published TF-slim checkpoints")
    ax1.set_title("latency vs accuracy")
    ax1.grid(alpha=0.3)
    if acc:
        ax1.legend(fontsize=8, loc="lower right")

    for a in alphas:
        pts = [r for r in recs if r["alpha"] == a]
        ax2.scatter([r["median_ms"] for r in pts], [r["madds"] / 1e6 for r in pts], color=colors[a], s=42,
                    label=f"α={float(a)!s}", zorder=3)
    for r in recs:
        ax2.annotate(f"{label(r['alpha'], r['resolution'])}\n{r['gflops']:.1f} GFLOP/s",
                     (r["median_ms"], r["madds"] / 1e6), textcoords="offset points", xytext=(5, -2), fontsize=7)
    ax2.margins(x=0.15, y=0.08)
    ax2.set_xlabel("median latency (ms" + (", log scale)" if wide else ")"))
    ax2.set_ylabel("mult-adds (millions, paper cost model)")
    ax2.set_title("latency vs mult-adds (labels: achieved GFLOP/s)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="lower right")
    boards = ", ".join(result.get("boards") or []) or "?"
    fig.suptitle(f"MobileNetV1 α×resolution sweep — target {result['target']}, board(s) {boards}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_plot(result: dict, path: str | os.PathLike) -> Path:
    return write_bytes(Path(path), plot_png(result))


def report_html(result: dict, png: bytes | None = None) -> str:
    """One self-contained HTML page: target, boards, TVM version, schedules identity, date, table, plots."""
    e = html.escape
    png = png if png is not None else plot_png(result)
    cols = ["α", "resolution", "mult-adds (M)", "params (M)", "top-1 %", "median ms", "p90 ms", "GFLOP/s",
            "max |diff|", "Pareto", "board", "retried"]
    rows = []
    for r in result["variants"]:
        cls = ' class="pareto"' if r["pareto"] else ""
        cells = [str(float(r["alpha"])), str(r["resolution"]), f"{r['madds'] / 1e6:.1f}", f"{r['params'] / 1e6:.3f}",
                 _fmt(r["top1"], ".1f", "unpublished"), f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
                 f"{r['gflops']:.2f}", f"{r['max_abs_diff']:.1e}", {True: "yes", False: "no", None: "n/a"}[r["pareto"]],
                 r.get("board") or "", _retry_text(r)]
        rows.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    sched = result["schedules"]
    meta = [("target", f"{result['target']} — {result.get('target_description', '')}"),
            ("board(s)", ", ".join(result.get("boards") or []) or "-"),
            ("tracker / key", f"{result['tracker']} / {result['key']}" if result.get("tracker") else "none (this machine)"),
            ("TVM version", result["tvm_version"]),
            ("schedules", f"{sched['id']} ({sched['files']} files in schedules/, sha256 {sched['sha256'][:16]}…; "
                          f"code {sched['code_sha256'][:12]}; kind: {', '.join(sched.get('kinds') or []) or '?'})"),
            ("runs", f"repeat {result['repeat']}, warmup {result['warmup']}, threads {result['threads'] or 'default'}"),
            ("date", result["date"])]
    budget = f"<p class=\"budget\">{e(result['budget']['message'])}</p>" if result.get("budget") else ""
    retried = ""
    if result.get("retried"):
        retried = "<h2>Retried</h2><ul>" + "".join(
            f"<li>{e(label(t['alpha'], t['resolution']))}: {e(t.get('board') or 'no board')}: {e(t['error'])}</li>"
            for t in result["retried"]) + "</ul>"
    failed = ""
    if result.get("failed"):
        failed = "<h2>Failed</h2><ul>" + "".join(
            f"<li>{e(label(f['alpha'], f['resolution']))}: {e(f['errors'][-1]['error'])}</li>"
            for f in result["failed"]) + "</ul>"
    src = top1_table()["source"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>MobileNetV1 sweep — {e(result['target'])}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
th, td {{ border: 1px solid #bbb; padding: 4px 9px; text-align: right; font-size: 14px; }}
th {{ background: #e8eef6; }}
tr.pareto td {{ background: #fff1d6; font-weight: bold; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }}
dt {{ font-weight: bold; }} dd {{ margin: 0; }}
.budget {{ font-size: 16px; padding: 6px 10px; background: #e6f4e6; display: inline-block; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
.note {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>MobileNetV1 α × resolution sweep</h1>
<dl>{''.join(f'<dt>{e(k)}</dt><dd>{e(v)}</dd>' for k, v in meta)}</dl>
{budget}
<table><thead><tr>{''.join(f'<th>{e(c)}</th>' for c in cols)}</tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<p class="note">Highlighted rows are on the Pareto front (no other variant is both faster and more accurate).
Mult-adds and params: the MobileNets paper's cost model. GFLOP/s = 2·mult-adds / median.
Top-1: published ImageNet accuracy of the reference checkpoints, <a href="{e(src['url'])}">{e(src['title'])}</a>;
latency is measured with seeded random weights (same computation). max |diff|: output vs the numpy reference.</p>
<img alt="latency vs top-1 and latency vs mult-adds" src="data:image/png;base64,{base64.b64encode(png).decode()}">
{retried}{failed}
</body></html>
"""


def write_report(result: dict, path: str | os.PathLike, png: bytes | None = None) -> Path:
    return write_bytes(Path(path), report_html(result, png).encode())

