"""Our MetaSchedule templates: TE computes, the blocked-layout lowering, CPU and CUDA rules.

Importing this package registers every rule with TVM (each where it is defined: :mod:`.cpu`,
:mod:`.cpu_int8`, :mod:`.cuda`).
"""
from mntvm.core import tvmscript

tvmscript.install()  # before our TensorIntrins are parsed (:mod:`mntvm.core.tvmscript`)

from mntvm.templates import cpu, cpu_int8, cuda  # noqa: E402,F401  (registers the rules)
