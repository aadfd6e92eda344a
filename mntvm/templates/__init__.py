"""Our MetaSchedule templates: TE computes, the blocked-layout lowering, CPU and CUDA rules.

Importing this package registers every rule with TVM (each where it is defined: :mod:`.cpu`,
:mod:`.cuda`).
"""
from mntvm.templates import cpu, cuda  # noqa: F401  (registers the rules)
