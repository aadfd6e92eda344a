"""How `mntvm tune` searches (``mntvm.tuning.search``): every candidate is the template run at knob
values, so the knobs the template reads in Python (the fused template's ``kc``, ``ragged``,
``prefetch``) take all their values, no candidate fails to replay, each record says its knobs, and
no point is measured twice, also when a tune resumes."""
from __future__ import annotations

import collections
import json
import os
import shutil

import pytest
import tvm
import tvm_ffi
from tvm import s_tir

from mntvm.model import weights as W
from mntvm.model.network import MobileNetConfig
from mntvm.targets.profiles import get_profile
from mntvm.templates.defaults import (annotate_knobs, default_schedule, knob_schedule, knobs_of,
                                      structure_neighbours)
from mntvm.templates.lowering import lower
from mntvm.templates.registry import tunable_tasks
from mntvm.tuning.database import open_schedules, task_mod, task_rule
from mntvm.tuning.tune import tune_funcs

from conftest import cli_run

CFG = MobileNetConfig(alpha=0.25, resolution=64)
TASK = "mntvm_dwpw6"  # 4x4 positions, 128 -> 256 channels: 16 input blocks on AVX2, 8 on AVX-512


@pytest.fixture(scope="module")
def task():
    profile = get_profile("x86")
    low = lower(CFG, W.random_weights(CFG), profile)
    return profile, {TASK: tunable_tasks(low)[TASK]}


def _records(out, profile, func):
    mod = task_mod(func)
    db = open_schedules(out, profile).database()
    recs = db.get_top_k(db.commit_workload(mod), 1 << 30)
    replayed = []
    for rec in recs:
        sch = s_tir.Schedule(mod)
        rec.trace.apply_to_schedule(sch, remove_postproc=True)
        replayed.append(sch.mod)
    return mod, replayed


@pytest.fixture(scope="module")
def searched(task, tmp_path_factory):
    """The task searched for 16 trials (two batches of 8) into a new database; with what the search
    wrote on standard error (MetaSchedule's C++ side writes to file descriptor 2)."""
    profile, funcs = task
    out = tmp_path_factory.mktemp("search") / "db"
    err_file = out.parent / "stderr.txt"
    with open(err_file, "w") as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            summary = tune_funcs(funcs, profile, out, 16, progress=False, chunk=8)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return out, summary, err_file.read_text()


def test_the_search_takes_every_knob_and_every_record_says_its_knobs(task, searched):
    profile, funcs = task
    target = profile.tvm_target()
    out, summary, err = searched
    assert "Trace replay failed" not in err  # MetaSchedule's mutations of replayed traces printed hundreds
    assert summary["tasks"][TASK]["trials"] == 16
    mod, replayed = _records(out, profile, funcs[TASK])
    values = collections.defaultdict(set)
    for got in replayed:
        knobs = knobs_of(got["main"])
        assert knobs is not None and len(knobs) == 1
        for key, v in knobs[0].items():
            values[key].add(json.dumps(v))
        # the record is the template at its knobs, nothing else
        sch, taken = knob_schedule(mod, target, knobs)
        assert taken == knobs
        tvm.ir.assert_structural_equal(got, annotate_knobs(sch, taken).mod)
    # the knobs only Python reads took more than one value (a replayed design space kept one)
    assert len(values["kc"]) >= 2 and len(values["ragged"]) >= 2 and len(values["prefetch"]) == 2, values
    # the defaults with one structure knob changed (kc, prefetch, ragged) are all among the records:
    # they are measured first, whatever the cost model says. Compared as schedules (a knob that does not
    # change it, as kc 16 over the 8 input blocks of AVX-512, gives a point measured under other knobs)
    def schedule_hash(knobs):
        return tvm_ffi.structural_hash(knob_schedule(mod, target, knobs)[0].mod)

    got_schedules = {schedule_hash(knobs_of(got["main"])) for got in replayed}
    neighbours = structure_neighbours(mod, target)
    assert len(neighbours) == 8, neighbours  # 3 other ragged tiles, prefetch on, 4 other kc
    for point in neighbours:
        assert schedule_hash(point) in got_schedules, point
    # the template defaults are one of the records
    assert any(tvm_ffi.structural_hash(got) == tvm_ffi.structural_hash(default_schedule(mod, target).mod)
               for got in replayed)
    # no point measured twice
    assert len({tvm_ffi.structural_hash(got) for got in replayed}) == len(replayed)
    # `mntvm schedules show --json` says the best record's knobs (read from the log's JSON)
    shown = json.loads(cli_run("schedules", "show", str(out), "--json").stdout)["tasks"]
    assert [t["knobs"] for t in shown] == [knobs_of(replayed[0]["main"])]


def test_a_resumed_search_measures_no_point_again(task, searched, tmp_path):
    """A tune continuing a database (a copy of the 16-trial one) runs only the trials it lacks, and
    none of them is a point the database holds."""
    profile, funcs = task
    out = tmp_path / "db"
    shutil.copytree(searched[0], out)
    summary = tune_funcs(funcs, profile, out, 24, progress=False, chunk=8)
    assert summary["trials_run"] == 8 and summary["tasks"][TASK]["trials"] == 24
    _, replayed = _records(out, profile, funcs[TASK])
    assert len({tvm_ffi.structural_hash(got) for got in replayed}) == 24


def test_knob_values_that_do_not_fit_are_refused(task):
    profile, funcs = task
    mod = task_mod(funcs[TASK])
    target = profile.tvm_target()
    _, knobs = knob_schedule(mod, target, None)
    with pytest.raises(ValueError, match="knob kc: 5 is not one of"):
        knob_schedule(mod, target, [{**knobs[0], "kc": 5}])
    with pytest.raises(ValueError, match="knob rows: .* is not a 2-factor tiling of 4"):
        knob_schedule(mod, target, [{**knobs[0], "rows": [3, 1]}])
    # a knob left out is drawn: the same seed draws the same
    part = [{k: v for k, v in knobs[0].items() if k != "kc"}]
    a, b = knob_schedule(mod, target, part, seed=5), knob_schedule(mod, target, part, seed=5)
    assert a[1] == b[1] and {k: v for k, v in a[1][0].items() if k != "kc"} == part[0]


def test_the_knobs_of_a_record_made_without_them_are_recovered(task):
    """A record of MetaSchedule's own search has no knob values, and its simplified trace has lost
    the knobs only Python read (here ``kc`` and ``prefetch``): recover_knobs finds values that
    schedule the task to exactly the record's module, so such a record can be a starting point."""
    from tvm.s_tir import meta_schedule as ms  # noqa: F401 - registers the trace's instructions

    from mntvm.templates.defaults import recover_knobs

    profile, funcs = task
    mod = task_mod(funcs[TASK])
    target = profile.tvm_target()
    recovered = 0
    for seed in range(1, 9):
        sch, taken = knob_schedule(mod, target, [{}], seed=seed)
        trace = sch.trace.simplified(remove_postproc=True)
        kinds = [i.kind.name for i in trace.insts if i.kind.name.startswith("Sample")]
        assert len(kinds) < len(taken[0])  # knobs are gone from the trace
        knobs = recover_knobs(mod, target, trace)
        if knobs is None:
            continue
        recovered += 1
        again, _ = knob_schedule(mod, target, knobs, seed=99)
        tvm.ir.assert_structural_equal(again.mod, sch.mod)
        if taken[0]["kc"] and 16 % taken[0]["kc"] == 0:  # a kc that changes the module is found again
            assert knobs[0]["kc"] == taken[0]["kc"], (knobs, taken)
    assert recovered >= 6
    # a module the template does not make (its defaults and one step more): nothing
    other, _ = knob_schedule(mod, target, None)
    other.annotate(other.get_sblock("root"), "not_ours", 1)
    assert recover_knobs(mod, target, other.trace.simplified(remove_postproc=True)) is None
    # a trace that does not replay on the task: nothing
    foreign, _ = knob_schedule(task_mod(tunable_tasks(lower(CFG, W.random_weights(CFG), profile))["mntvm_dwpw"]),
                               target, None)
    assert recover_knobs(mod, target, foreign.trace.simplified(remove_postproc=True)) is None


def test_the_search_makes_cuda_candidates_that_fit_the_gpu():
    """Without a GPU: the search's candidates for a CUDA task are the CUDA template at knob values,
    through the space's VerifyGPUCode (threads per block, shared memory), all different, and each
    builds to CUDA source."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.analysis import verify_gpu_code

    from mntvm.tuning.search import knob_search
    from mntvm.tuning.space import tune_space, without_tvm_intrinsics

    profile = get_profile("cuda-sm80")
    target = profile.tvm_target()
    low = lower(CFG, W.random_weights(CFG), profile)
    mod = task_mod(next(f for _, f in sorted(tunable_tasks(low).items()) if task_rule(f) == "mntvm_pw"))
    with without_tvm_intrinsics():
        ctx = ms.TuneContext(mod=mod, target=target, space_generator=tune_space(target),
                             search_strategy=knob_search(seed=3), task_name="pw", num_threads=1)
        ctx.pre_tuning(max_trials=12, num_trials_per_iter=12, design_spaces=ctx.generate_design_space())
        cands = ctx.generate_measure_candidates()
    assert len(cands) == 12
    limits = {"max_shared_memory_per_block": int(target.attrs["max_shared_memory_per_block"]),
              "max_threads_per_block": int(target.attrs["max_threads_per_block"])}
    seen = set()
    for c in cands:
        func = c.sch.mod["main"]
        assert knobs_of(func) is not None and verify_gpu_code(func, limits)
        seen.add(tvm_ffi.structural_hash(c.sch.mod))
    assert len(seen) == 12
    assert "__global__" in tvm.compile(cands[0].sch.mod, target=target).mod.imports[0].inspect_source()


def test_a_search_timed_on_fewer_threads_keeps_the_builds_threads_as_busy_as_the_defaults():
    """Timed on 1 thread, a point with fewer parallel tasks than the build's threads can win and then
    leave threads idle: with ``busy_threads`` the search proposes none that keeps fewer of them busy
    than the template defaults; without, its space has such points."""
    from tvm.s_tir import meta_schedule as ms

    from mntvm.templates.knobs import balance, parallel_tasks
    from mntvm.tuning.search import knob_search
    from mntvm.tuning.space import tune_space, without_tvm_intrinsics

    profile = get_profile("x86-avx2")  # 4 threads
    target = profile.tvm_target()
    mod = task_mod(tunable_tasks(lower(CFG, W.random_weights(CFG), profile))[TASK])

    def busy(busy_threads):
        with without_tvm_intrinsics():
            ctx = ms.TuneContext(mod=mod, target=target, space_generator=tune_space(target),
                                 search_strategy=knob_search(seed=5, busy_threads=busy_threads), task_name="t",
                                 num_threads=1)
            ctx.pre_tuning(max_trials=32, num_trials_per_iter=32, design_spaces=ctx.generate_design_space())
            cands = ctx.generate_measure_candidates()
        assert len(cands) == 32
        return [balance(parallel_tasks(c.sch), 4) for c in cands]

    defaults = balance(parallel_tasks(default_schedule(mod, target)), 4)
    assert defaults == 1.0
    assert min(busy(None)) < defaults
    assert min(busy(4)) == defaults
