"""Tuning our templates' knobs with MetaSchedule, and the schedules databases it writes."""
from mntvm.tuning.database import ScheduleDB, open_schedules
from mntvm.tuning.manage import merge, prune, show
from mntvm.tuning.report import format_merge, format_show, format_tune
from mntvm.tuning.tune import tune, tune_funcs

__all__ = ["ScheduleDB", "format_merge", "format_show", "format_tune", "merge", "open_schedules", "prune", "show",
           "tune", "tune_funcs"]
