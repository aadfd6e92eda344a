"""Our templates at their default knobs (no tuning), on any target they cover: CPUs and CUDA.

``default_schedule(mod, target)`` schedules one task's "main" and is what ``mntvm tune`` seeds each
task's search with (its trace replays like a tuning record's); ``apply_default_schedules(mod,
target)`` schedules every PrimFunc of a lowered module that is not scheduled yet (e.g. from a
tuning database) and marks it scheduled (:func:`.registry.mark_scheduled`);
``apply_sampled_schedules(mod, target, seed)`` does the same at randomly sampled knobs;
``knob_schedule(mod, target, knobs, seed)`` schedules a task at given knob values (the rest drawn)
and returns every knob's value, which is how ``mntvm tune`` makes its candidates. Each of them
records the values on the task's root block (:func:`annotate_knobs`, read back by
:func:`knobs_of`), so a tuning record or a compiled kernel says which knobs it was made with. On CPUs the
PrimFuncs without a rule of ours (softmax, reshape) get a small generic schedule; on CUDA they
are left to DLight (:func:`.gpu.compile_gpu`).

The knob values come from the target's family: :mod:`.x86` / :mod:`.arm` on CPUs (chosen by
:func:`.families.family_for` from the target and the vector width; the int8 rules' through
:func:`.cpu_int8.default_knobs`), :func:`.cuda.default_knobs` on CUDA.
"""
from __future__ import annotations

import copy
import functools
import json

import tvm
from tvm import tirx
from tvm.s_tir import Schedule

from mntvm.templates import cpu, cpu_int8, cuda
from mntvm.templates.families import family_for
from mntvm.templates.registry import (INT8_RULES, RULE_DW, RULE_DWPW, RULE_PW, RULE_STEM, all_blocks, is_scheduled,
                                      mark_scheduled, rule_of, scheduler)


def _as_target(target) -> tvm.target.Target:
    return target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)


def _kind(target: tvm.target.Target) -> str:
    """Which registration of our rules serves ``target``: ``cuda`` or ``cpu``."""
    return "cuda" if "cuda" in target.keys else "cpu"


def _infer_vector_bits(mod: tvm.IRModule) -> int | None:
    """The V that the lowering used, read off a blocked (N, C/V, P, V) conv output (V * 32 bits);
    for int8 blocks, the profile's width the int8 lowering recorded on them."""
    for func in mod.functions.values():
        if not isinstance(func, tirx.PrimFunc):
            continue
        for b in all_blocks(func):
            if rule_of(b) in (RULE_PW, RULE_DW, RULE_STEM, RULE_DWPW):
                return int(b.writes[0].source.shape[-1]) * 32
            if rule_of(b) in INT8_RULES:
                return cpu_int8.vector_bits_of(b)
    return None


def _knobs(mod: tvm.IRModule, target: tvm.target.Target, vector_bits: int | None):
    """``(sch, block, rule) -> decisions`` on ``target``; on CPUs, the knobs of the family of
    ``vector_bits`` (default: the width the lowering used in ``mod``)."""
    if _kind(target) == "cuda":
        return cuda.default_knobs
    fam = family_for(target, vector_bits if vector_bits is not None else _infer_vector_bits(mod))
    return lambda sch, block, name: (cpu_int8 if name in INT8_RULES else cpu).default_knobs(sch, block, name, fam)


# the root-block annotation that records a scheduled task's knob values (:func:`knobs_of`)
KNOBS = "mntvm_knobs"
SAMPLES = ("SamplePerfectTile", "SampleCategorical")


class _Chooser(dict):
    """One block's decisions as a template reads them (:func:`.knobs.tile`, :func:`.knobs.cat`): the
    given values, None (sampled) for the rest; remembers the keys in the order they were asked."""

    def __init__(self, given: dict | None):
        super().__init__(given or {})
        self.asked: list[str] = []

    def get(self, key, default=None):
        self.asked.append(key)
        return super().get(key, default)

    def __bool__(self) -> bool:  # asked even when empty (``d.get(key) if d else None``)
        return True


def _value(inst, decision):
    """A sampling instruction's decision as a template's decisions hold it: the factor list of a
    tile, the candidate (not its index) of a categorical."""
    if inst.kind.name == "SampleCategorical":
        return int(inst.attrs[0][int(decision)])
    return [int(x) for x in decision]


def _schedule(mod: tvm.IRModule, target: tvm.target.Target, knobs, seed: int | None = None) -> tuple[Schedule, list]:
    """``mod``'s "main" with every block of ours scheduled at ``knobs(sch, block, rule)`` (a dict of
    decisions or None, the missing ones sampled): the schedule and the values every knob took (a
    dict per block, in block order)."""
    sch = Schedule(mod, seed=seed)
    kind = _kind(target)
    taken = []
    for b in all_blocks(mod["main"]):
        name = rule_of(b)
        if name:
            block = sch.get_sblock(b.name_hint)
            chooser = _Chooser(knobs(sch, block, name))
            before = len([i for i in sch.trace.insts if i.kind.name in SAMPLES])
            scheduler(kind, name)(sch, block, chooser)
            trace = sch.trace
            insts = [i for i in trace.insts if i.kind.name in SAMPLES][before:]
            if len(insts) != len(chooser.asked):  # a knob sampled outside .knobs.tile/.knobs.cat
                raise RuntimeError(f"{name}: {len(insts)} sampled knobs, {len(chooser.asked)} asked for")
            taken.append({k: _value(i, trace.decisions[i]) for k, i in zip(chooser.asked, insts)})
    return sch, taken


def annotate_knobs(sch: Schedule, knobs: list) -> Schedule:
    """``sch`` with ``knobs`` (as :func:`knob_schedule` returns them) recorded on its root block, so
    that a tuning record says which point of the templates' space it is (:func:`knobs_of`)."""
    sch.annotate(sch.get_sblock("root"), KNOBS, json.dumps(knobs, sort_keys=True))
    return sch


def knobs_of(func: tirx.PrimFunc) -> list | None:
    """The knob values a scheduled task was made with (:func:`annotate_knobs`), or None (scheduled
    elsewhere, or by an older version)."""
    root = func.body.block if hasattr(func.body, "block") else None
    ann = root.annotations.get(KNOBS) if root is not None and root.annotations else None
    return None if ann is None else json.loads(str(ann))


def knob_schedule(mod: tvm.IRModule, target, knobs: list | None, seed: int | None = None,
                  vector_bits: int | None = None) -> tuple[Schedule, list]:
    """``mod``'s "main" with its blocks of ours scheduled at ``knobs`` (a dict of decisions per
    block, as this returns them; a missing key or block is sampled with ``seed``) or, with None,
    at ``target``'s defaults (CPU: those of the family of ``vector_bits``): the schedule (not
    annotated) and every knob's value. A given value that does not fit (a tile whose factors do
    not multiply to its loop, a categorical that is not a candidate) raises ValueError."""
    target = _as_target(target)
    if knobs is None:
        return _schedule(mod, target, _knobs(mod, target, vector_bits), seed)
    given = iter(knobs)
    return _schedule(mod, target, lambda *_: next(given, None), seed)


def _signature(inst) -> tuple:
    """What a sampling instruction draws from: its kind and attributes (a tile's factor count and
    innermost bound, a categorical's candidates)."""
    return (inst.kind.name, tuple(int(a) for a in (inst.attrs[0] if inst.kind.name == "SampleCategorical"
                                                   else inst.attrs)))


def _default_knobs(mod: tvm.IRModule, target, vector_bits: int | None) -> tuple[list, list]:
    """``mod``'s default knob values (a dict per block) and each knob, in the template's order, as
    ((block, key), :func:`_signature` of the sampling instruction that draws it)."""
    dflt, keys = knob_schedule(mod, target, None, vector_bits=vector_bits)
    flat = [(b, k) for b, d in enumerate(keys) for k in d]
    sigs = [_signature(i) for i in dflt.trace.insts if i.kind.name in SAMPLES]
    return keys, list(zip(flat, sigs))


def structure_neighbours(mod: tvm.IRModule, target, vector_bits: int | None = None) -> list[list]:
    """The template defaults of ``mod`` with one categorical knob (a choice of structure: the fused
    template's ``kc``, ``prefetch``, ``ragged``; a tile's loop order) at each of its other
    candidates, the other knobs at their defaults: one knob list (as :func:`knob_schedule` takes
    it) per point, in the template's order of its knobs. Which of these wins depends on the CPU's
    caches more than on anything a default can see (the chunked reduction: 3 % faster on a Zen 2,
    5 % slower on a Zen 3, 1.0/224 in the network), so ``mntvm tune`` measures them first."""
    keys, knobs = _default_knobs(mod, target, vector_bits)
    out = []
    for (b, k), sig in knobs:
        if sig[0] != "SampleCategorical" or keys[b][k] not in sig[1]:
            continue
        for v in sig[1]:
            if v != keys[b][k]:
                point = copy.deepcopy(keys)
                point[b][k] = v
                out.append(point)
    return out


RECOVER_TRIES = 64  # knob combinations recover_knobs tries for the knobs a trace no longer holds


def recover_knobs(mod: tvm.IRModule, target, trace, vector_bits: int | None = None) -> list | None:
    """The knob values of a record made before they were recorded (:func:`knobs_of`), from its
    ``trace``: MetaSchedule simplifies a record's trace, so the knobs only Python read (``kc``,
    ``prefetch``, an unused tile) are gone from it. Its sampling instructions are matched, in
    order, to the template's knobs; a categorical that is gone is tried at each of its candidates,
    a tile that is gone is drawn (it was unused). Only values that schedule ``mod`` to exactly the
    trace's module are returned; None when none do (another template version, a foreign trace)."""
    import itertools

    import tvm_ffi

    target = _as_target(target)
    want = Schedule(mod)
    try:
        trace.apply_to_schedule(want, remove_postproc=True)
    except Exception:  # noqa: BLE001 - not a trace of this task
        return None
    want = tvm_ffi.structural_hash(want.mod)
    keys, flat = _default_knobs(mod, target, vector_bits)
    held = [i for i in trace.insts if i.kind.name in SAMPLES]
    knobs, gone, j = [{} for _ in keys], [], 0
    for (b, k), sig in flat:
        if j < len(held) and _signature(held[j]) == sig:
            knobs[b][k] = _value(held[j], trace.decisions[held[j]])
            j += 1
        elif sig[0] == "SampleCategorical":
            gone.append((b, k, sig[1]))
    if j != len(held):
        return None
    for combo in itertools.islice(itertools.product(*(c for _, _, c in gone)), RECOVER_TRIES):
        given = [dict(d) for d in knobs]
        for (b, k, _), v in zip(gone, combo):
            given[b][k] = v
        try:
            sch, taken = knob_schedule(mod, target, given, seed=1)
        except Exception:  # noqa: BLE001 - not this combination
            continue
        if tvm_ffi.structural_hash(sch.mod) == want:
            return taken
    return None


def default_schedule(mod: tvm.IRModule, target, vector_bits: int | None = None) -> Schedule:
    """``mod``'s "main" with every block that carries one of our rules scheduled at ``target``'s
    default knobs (CPU: those of the family of ``vector_bits``, by default the width read off
    ``mod``)."""
    sch, knobs = knob_schedule(mod, target, None, vector_bits=vector_bits)
    return annotate_knobs(sch, knobs)


def _generic_schedule(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """CPU fallback for PrimFuncs without our rule (softmax, reshape, bias adds, ...).

    These are small in MobileNet (softmax over 1000 classes, a reshape): TVM's unscheduled
    lowering is serial and cheap for them. Large elementwise blocks get their loops fused,
    the outer part parallel and the inner part vectorized. (DLight's CPU Reduction rule is not
    used: for softmax it parallelizes the outer 1000 and recomputes max/sum per element.)
    """
    try:
        sch = Schedule(tvm.IRModule({"main": func}))
        root = sch.get_sblock("root")
        for blk in sch.get_child_blocks(root):
            stmt = sch.get(blk)
            if any(int(iv.iter_type) != 0 for iv in stmt.iter_vars):
                continue  # reduction: leave serial
            loops = sch.get_loops(blk)
            if not loops:
                continue
            ext = 1
            for lp in loops:
                ext *= int(sch.get(lp).extent)
            if ext < 4096:
                continue
            fused = sch.fuse(*loops)
            if ext % 16 == 0:
                o, i_ = sch.split(fused, [None, 16])
                sch.vectorize(i_)
                fused = o
            if ext >= 65536:
                sch.parallel(fused)
        return sch.mod["main"]
    except Exception:  # noqa: BLE001 - unscheduled code is still correct
        return func


def apply_default_schedules(mod: tvm.IRModule, target, vector_bits: int | None = None) -> tvm.IRModule:
    """Schedule every PrimFunc of a lowered module that is not scheduled yet: ours at ``target``'s
    default knobs, the rest (CPU only) with a generic schedule; each is marked scheduled."""
    target = _as_target(target)
    knobs = _knobs(mod, target, vector_bits)
    cpu_target = _kind(target) == "cpu"
    new = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
            continue
        if any(rule_of(b) for b in all_blocks(func)):
            new[gv] = mark_scheduled(annotate_knobs(*_schedule(tvm.IRModule({"main": func}), target, knobs)).mod["main"])
        elif cpu_target:
            new[gv] = mark_scheduled(_generic_schedule(func))
    mod = mod.clone()
    for gv, f in new.items():
        mod[gv] = f
    return mod


def apply_sampled_schedules(mod: tvm.IRModule, target, seed: int) -> tvm.IRModule:
    """Every template PrimFunc of a lowered module scheduled at knobs sampled with ``seed``, as
    MetaSchedule's search samples them (the rest left as they are), each marked scheduled: for
    checking that a template computes the same at any point of its space."""
    target = _as_target(target)
    mod = mod.clone()
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc) and not is_scheduled(func) and any(rule_of(b) for b in all_blocks(func)):
            sch = annotate_knobs(*_schedule(tvm.IRModule({"main": func}), target, lambda *_: None, seed))
            mod[gv] = mark_scheduled(sch.mod["main"])
    return mod


@functools.lru_cache(maxsize=None)
def defaults_key() -> str:
    """A hash of the template sources (this package's ``.py`` files): what the defaults are made
    of. A check's verdict (log vs defaults) holds only for the defaults it was measured against.
    Read once per process (every verdict lookup asks for it)."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]
