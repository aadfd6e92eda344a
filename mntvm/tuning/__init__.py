"""Tuning our templates' knobs with MetaSchedule, and the schedules databases it writes."""
from mntvm.tuning.tune import merge, open_schedules, prune, show, tune

__all__ = ["merge", "open_schedules", "prune", "show", "tune"]
