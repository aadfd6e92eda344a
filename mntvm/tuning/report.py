"""What ``mntvm tune`` and ``mntvm schedules`` print: text forms of their results."""
from __future__ import annotations

from mntvm.tuning.measure import REPEATS
from mntvm.tuning.settle import ROUNDS


def format_network_times(net: dict) -> str:
    """A network check's times (:func:`mntvm.tuning.verify.check_network`): per thread count, the
    network with the log vs on the defaults."""
    return ", ".join(f"{t} thread(s) {net['log_ms'][t]:.3f} vs {net['default_ms'][t]:.3f} ms"
                     for t in sorted(net["log_ms"], key=int))


def format_tune(r: dict) -> str:
    """Per task: rule, trials, best time (and the defaults' time it is scaled by, when candidates
    were timed against them; how many of its best records were timed again, and the best's time
    before; whether its space ran out before its trials); then trials run, seconds and the
    database folder."""
    lines = []
    for name, t in r["tasks"].items():
        best = f"{t['best_ms']:.4f} ms" if t["best_ms"] is not None else "-"
        d, s = t.get("defaults_ms"), t.get("settled") or {}
        lines.append(f"{name:<40} {t['rule']:<12} {t['trials']:>5} trials  best {best}"
                     + (f"  (candidates timed side by side with the defaults, scaled to their {d:.4f} ms)" if d else "")
                     + (f"  ({s['finalists']} best timed again, {ROUNDS * REPEATS} runs each; the best read "
                        f"{s['before_ms']:.4f} ms before)" if s.get("finalists") else "")
                     + ("  - every point of its space measured" if name in r.get("exhausted", ()) else ""))
    lines.append(f"{r['trials_run']} trials in {r['seconds']:.0f}s -> {r['database']}"
                 + (f" ({len(r['skipped'])} tasks already had their trials)" if r["skipped"] else ""))
    c = r.get("check")
    if c:
        n = len(c["log"]) + len(c["defaults"])
        lines.append(f"checked here against the template defaults, in alternation, as compile does (it reuses "
                     f"these verdicts): {len(c['log'])} of {n} task(s) keep the log's schedule (within 3 % of the "
                     f"defaults or faster); compile uses the defaults for: {', '.join(c['defaults']) or 'none'}")
        net = c.get("network")
        if net:
            lines.append(f"the whole network with the log vs on the defaults: {format_network_times(net)}: "
                         + ("compile keeps the log's tasks" if net["keep"] == "log" else
                            "slower with the log, so compile uses the defaults for every task"))
    s = r.get("started_from")
    if s:
        what = "the log standing in for this CPU" if s["stand_in"] else "the log"
        lines.append(f"started from the template defaults and {what} {s['database']}: "
                     f"{len(s['tasks'])} task(s) had a record there")
    return "\n".join(lines)


def format_show(r: dict) -> str:
    """A database's target and TVM version, then one row per workload (task, rule, shapes, trials,
    best as tuned; then this machine's check: the log's and the defaults' times and which compile
    uses), then totals."""
    t = r["target"]
    keys = ", ".join(f"{k} {v}" for k, v in t["tvm_target"].items())
    lines = [f"{r['path']}: tuned for {t['name']} ({keys}) with TVM {r['tvm_version']}"]
    rows = [("#", "task", "rule", "input -> output", "trials", "best ms", "here: log / defaults ms", "uses")]
    for k in r["tasks"]:
        shape = " -> ".join("x".join(map(str, s)) for s in (k["input_shape"], k["output_shape"]) if s)
        trials = f"{k['trials']}" + (f" ({k['failed']} failed)" if k["failed"] else "")
        best = f"{k['best_ms']:.4f}" if k["best_ms"] is not None else "-"
        h = k.get("here")
        here = f"{h['log_ms']:.4f} / {h['default_ms']:.4f}" if h else "-"
        uses = ("log" if h["keep"] == "log" else "defaults") if h else "-"
        names = (k["name"] or "-").split(", ")  # a workload shared by variants: the first, and how many more
        name = names[0] + (f" (+{len(names) - 1})" if len(names) > 1 else "")
        rows.append((str(k["workload"]), name, k["rule"] or "-", shape, trials, best, here, uses))
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(c.rjust(w[i]) if i in (0, 4, 5, 6) else c.ljust(w[i]) for i, c in enumerate(row)).rstrip())
    lines.append(f"{len(r['tasks'])} workloads, {r['records']} records")
    judged = [k["here"] for k in r["tasks"] if k.get("here")]
    if judged:
        n_log = sum(h["keep"] == "log" for h in judged)
        lines.append(f"checked on this machine (each task's log schedule and template defaults timed in alternation, "
                     f"by tune or compile): {n_log} of {len(judged)} keep the log, {len(judged) - n_log} use the "
                     f"defaults; 'best ms' is one timing taken while tuning")
    else:
        lines.append("not checked on this machine yet: compile times each task against the template defaults "
                     "the first time it uses this log here")
    return "\n".join(lines)


def format_merge(r: dict) -> str:
    dropped, unused = r.get("dropped_reverted"), r.get("dropped_unused")
    return (f"kept {r['records']} of {r['records_in']} records (best {r['top_k']} per workload, "
            f"{r['workloads']} workloads"
            + (f"; left out the records of {dropped} workload(s) that lost to the template defaults in this "
               f"machine's check" if dropped is not None else "")
            + (f"; left out the records of {unused} workload(s) that no variant produces" if unused is not None else "")
            + (f"; left out the records of {r['dropped_rules']['workloads']} workload(s) of "
               f"{', '.join(r['dropped_rules']['rules'])}" if r.get("dropped_rules") else "")
            + f") -> {r['path']}")
