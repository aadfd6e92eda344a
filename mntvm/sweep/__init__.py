"""α × resolution sweeps over boards: run, Pareto/budget analysis, table, plot and HTML report."""
from mntvm.sweep.sweep import (DEFAULT_ALPHAS, DEFAULT_RESOLUTIONS, format_table, parse_list, plot_png, sweep,
                               write_plot, write_report)

__all__ = ["DEFAULT_ALPHAS", "DEFAULT_RESOLUTIONS", "format_table", "parse_list", "plot_png", "sweep",
           "write_plot", "write_report"]
