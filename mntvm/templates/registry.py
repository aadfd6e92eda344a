"""Our MetaSchedule rules by name, how they are registered, and which PrimFuncs carry them.

A template's ``te.compute`` carries ``schedule_rule=<name>`` (one of :data:`ALL_RULES`: the fp32
:data:`RULES` every target kind serves, the CPU-only :data:`INT8_RULES`). A schedule
for one target kind registers itself with :func:`rule`: TVM's ``ApplyCustomRule`` then finds it
as ``s_tir.meta_schedule.<kind>.<name>`` (``kind`` is the target's key: ``cpu`` for llvm,
``cuda``), and :func:`scheduler` hands it to our own default schedules.

A PrimFunc that is scheduled (by our defaults, a tuning database or DLight) carries TVM's
``tirx.is_scheduled`` attribute (:func:`mark_scheduled`, :func:`is_scheduled`): it is the one
marker everything here and TVM's own passes go by.
"""
from __future__ import annotations

from typing import Callable

import tvm
from tvm import tirx
from tvm.s_tir import Schedule

RULE_PW = "mntvm_pw"
RULE_DW = "mntvm_dw"
RULE_STEM = "mntvm_stem"
RULE_DENSE = "mntvm_dense"
RULE_POOL = "mntvm_pool"
RULES = (RULE_PW, RULE_DW, RULE_STEM, RULE_DENSE, RULE_POOL)
# int8 templates (:mod:`.compute_int8`, :mod:`.cpu_int8`): CPU only, so apart from RULES (which
# every target kind registers)
RULE_PW8 = "mntvm_pw8"
RULE_DW8 = "mntvm_dw8"
RULE_STEM8 = "mntvm_stem8"
RULE_DENSE8 = "mntvm_dense8"
RULE_POOL8 = "mntvm_pool8"
INT8_RULES = (RULE_PW8, RULE_DW8, RULE_STEM8, RULE_DENSE8, RULE_POOL8)
# a depthwise conv fused into the following pointwise one (:func:`.compute.dw_pointwise_te`): CPU only
RULE_DWPW = "mntvm_dwpw"
ALL_RULES = RULES + INT8_RULES + (RULE_DWPW,)

SCHEDULED = "tirx.is_scheduled"

# kind -> rule name -> schedule function ``(sch, block, decisions=None) -> sch``
_SCHEDULERS: dict[str, dict[str, Callable]] = {}


def rule(kind: str, name: str):
    """Decorator: register ``fn(sch, block, decisions=None)`` as our ``name`` rule for targets of
    ``kind``; as a MetaSchedule rule it samples every knob (``decisions=None``)."""
    if name not in ALL_RULES:
        raise ValueError(f"unknown rule {name!r}")

    def register(fn: Callable) -> Callable:
        def ms_rule(sch, block):
            fn(sch, block, None)
            return [sch]

        tvm.register_global_func(f"s_tir.meta_schedule.{kind}.{name}", ms_rule, override=True)
        _SCHEDULERS.setdefault(kind, {})[name] = fn
        return fn

    return register


def scheduler(kind: str, name: str) -> Callable:
    """The schedule function registered for rule ``name`` on targets of ``kind``."""
    return _SCHEDULERS[kind][name]


def rule_of(block_stmt) -> str | None:
    """The rule of ours a block carries, or None."""
    r = block_stmt.annotations.get("schedule_rule") if block_stmt.annotations else None
    return str(r) if r is not None and str(r) in ALL_RULES else None


def all_blocks(func) -> list:
    """The (unscheduled) blocks of ``func`` directly under its root block."""
    sch = Schedule(tvm.IRModule({"main": func}))
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001
        return []
    return [sch.get(b) for b in sch.get_child_blocks(root)]


def tunable_tasks(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    """The PrimFuncs of a lowered module that carry one of our rules, by name."""
    out = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc) and any(rule_of(b) for b in all_blocks(func)):
            out[gv.name_hint] = func
    return out


def is_scheduled(func) -> bool:
    """Whether ``func`` is scheduled already (leave it alone)."""
    return func.attrs is not None and SCHEDULED in func.attrs and bool(func.attrs[SCHEDULED])


def mark_scheduled(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` marked as scheduled."""
    return func.with_attr(SCHEDULED, True)
