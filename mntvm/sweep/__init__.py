"""α × resolution sweeps over boards: run, Pareto/budget analysis, table, plot and HTML report."""
from mntvm.sweep.report import format_table, plot_png, write_plot, write_report
from mntvm.sweep.results import DEFAULT_ALPHAS, DEFAULT_RESOLUTIONS, parse_list
from mntvm.sweep.run import sweep

__all__ = ["DEFAULT_ALPHAS", "DEFAULT_RESOLUTIONS", "format_table", "parse_list", "plot_png", "sweep",
           "write_plot", "write_report"]
