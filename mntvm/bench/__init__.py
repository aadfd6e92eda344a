"""Timing compiled artifacts here or on a board, per-layer reports, and peers side by side."""
from mntvm.bench.checks import artifact_weights, reference_output
from mntvm.bench.demo import demo, format_demo
from mntvm.bench.comparison import COMPARE_KEYS, COMPARE_TOL, compare, disturbed, format_compare
from mntvm.core.machine import measure_peak
from mntvm.bench.peers import PEERS, Peer
from mntvm.bench.per_layer import format_per_layer, per_layer_report, plot_per_layer
from mntvm.bench.timing import RESULT_KEYS, STAT_KEYS, benchmark, check_run_args, format_benchmark, summarize

__all__ = ["COMPARE_KEYS", "COMPARE_TOL", "PEERS", "Peer", "RESULT_KEYS", "STAT_KEYS", "artifact_weights",
           "benchmark", "check_run_args", "compare", "demo", "disturbed", "format_benchmark", "format_compare", "format_demo",
           "format_per_layer", "measure_peak", "per_layer_report", "plot_per_layer", "reference_output",
           "summarize"]
