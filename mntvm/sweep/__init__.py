"""α × resolution sweeps over boards: run, Pareto/budget analysis, table, plot and HTML report;
the bounded artifact cache the sweep compiles into (show, prune, clear)."""
from mntvm.sweep.cache import (DEFAULT_CACHE_MAX_MB, cache_limit, clear_cache, format_cache, prune_cache,
                               show_cache)
from mntvm.sweep.report import format_table, plot_png, write_plot, write_report
from mntvm.sweep.results import DEFAULT_ALPHAS, DEFAULT_RESOLUTIONS, parse_list
from mntvm.sweep.run import sweep

__all__ = ["DEFAULT_ALPHAS", "DEFAULT_CACHE_MAX_MB", "DEFAULT_RESOLUTIONS", "cache_limit", "clear_cache",
           "format_cache", "format_table", "parse_list", "plot_png", "prune_cache", "show_cache", "sweep",
           "write_plot", "write_report"]
