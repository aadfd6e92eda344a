"""Timing compiled artifacts here or on a board, per-layer reports, and peers side by side."""
from mntvm.bench.bench import benchmark, compare, format_compare, format_per_layer, plot_per_layer

__all__ = ["benchmark", "compare", "format_compare", "format_per_layer", "plot_per_layer"]
