"""How ``mntvm tune`` searches a task: our templates run at knob values it chooses.

MetaSchedule's own search (``EvolutionarySearch``) runs a template once per task, when it makes the
design space, and from then on replays that run's trace with new decisions and mutates recorded
traces. Our templates read some knobs in Python to choose their structure (the fused template's
``kc``, ``prefetch`` and ``ragged``, the tile sizes that pick a register tile's order or its
chunks), so a replayed trace keeps the structure of that one run: such a knob never takes another
value (a replay at another ``kc`` gives the same module), and a mutated tile under structure made
for another one fails to replay (the hundreds of "Trace replay failed" lines) or gives a point the
template itself never makes.

Here every candidate is the template run at a knob dict (:func:`mntvm.templates.defaults.knob_schedule`).
The first are the template defaults and each of their structure neighbours (one categorical knob changed:
:func:`mntvm.templates.defaults.structure_neighbours`; up to half the trials), measured whatever the cost
model says: the choices that depend on the CPU's caches, which a few drawn points easily miss (24 trials a
task on a Zen 3 drew ``kc`` = 0 for the 14x14 and 7x7 layers only along with other changes, all slower;
with the other knobs at the defaults it is 8-9 % faster there, timed alone). Then
a measured point with one or two of its knobs drawn anew (best points most often), or a point drawn
whole; points that schedule to a module already measured or proposed are dropped; MetaSchedule's
cost model ranks the rest and most of a batch is its best, the rest drawn at random from the pool.
Each candidate carries its knob values (:func:`mntvm.templates.defaults.annotate_knobs`), so a
record is a point the search can start from again: on a resumed tune, or from another machine's log
(the best records made before that, by MetaSchedule's search, have theirs recovered from their
traces where they can be: :func:`mntvm.templates.defaults.recover_knobs`).

Public entry: :func:`knob_search` (the strategy :func:`mntvm.tuning.tune.tune_funcs` hands to
MetaSchedule).
"""
from __future__ import annotations

import copy
import functools
import math
import random

from mntvm.tuning.measure import mean_secs

POOL = 8  # candidates proposed per trial of a batch, for the cost model to rank
PARENTS = 8  # the best measured points that mutations start from
FRESH = 0.2  # share of proposals drawn whole (the rest: a measured point with a knob or two redrawn)
EXPLORE = 0.25  # share of a batch drawn at random from the pool rather than by the cost model


def knob_search(vector_bits: int | None = None, seed: int | None = None, busy_threads: int | None = None):
    """A MetaSchedule search strategy over our templates' knobs (see the module's text);
    ``vector_bits``: the CPU family whose defaults are the first parent (None: read off the
    task); ``seed``: the search's randomness (None: a fresh one). ``busy_threads``: the threads the
    build will run on, where candidates are timed on fewer: a candidate that keeps fewer of them busy
    than the defaults do (:func:`mntvm.templates.knobs.parallel_tasks`) is not measured. Timed on 1
    thread such a point can win (one task of a 7x7 layer, its depthwise part computed once: 5 % faster
    on a Zen 3) and then run at half speed on 2 threads, where the log check sends the whole task back
    to its defaults."""
    return _strategy_class()(vector_bits=vector_bits, seed=seed, busy_threads=busy_threads)


@functools.cache
def _strategy_class():
    import tvm_ffi
    from tvm.ir.utils import derived_object
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from mntvm.templates.defaults import (annotate_knobs, knob_schedule, knobs_of, recover_knobs,
                                          structure_neighbours)
    from mntvm.templates.knobs import balance, parallel_tasks

    @derived_object
    class KnobSearch(ms.search_strategy.PySearchStrategy):
        def __init__(self, *, vector_bits, seed, busy_threads):
            super().__init__()
            self.vector_bits, self.seed, self.busy_threads = vector_bits, seed, busy_threads
            self.rng = random.Random(seed)

        def _initialize_with_tune_context(self, context) -> None:
            self.context = context
            self.mod, self.target = context.mod, context.target
            self.postprocs = list(context.space_generator.postprocs)
            self.args = ArgInfo.from_prim_func(self.mod["main"])

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None):
            self.left, self.per_iter = int(max_trials), int(num_trials_per_iter)
            self.cost_model = cost_model
            self.seen: dict[int, float] = {}  # module hash -> secs (None: proposed, not yet measured)
            self.points: list[tuple[float, list]] = []  # measured (secs, knobs)
            self.pending: list[tuple[int, list]] = []
            if database is not None:
                self._load(database)
            sch, knobs = knob_schedule(self.mod, self.target, None, vector_bits=self.vector_bits)
            self.defaults = knobs
            self.min_busy = self._busy(sch)
            # measured first, before any drawn point: the defaults and the defaults with one structure
            # knob changed (at most half the trials); each leaves this list once measured or unmakeable
            neighbours = structure_neighbours(self.mod, self.target, self.vector_bits)
            self.first = [knobs, *neighbours[:max(0, -(-self.left // 2))]]

        def _hash(self, sch) -> int:
            return int(tvm_ffi.structural_hash(sch.mod))

        def _load(self, database) -> None:
            """The task's records: what not to measure again, and (those made with knobs we can
            read) the points to start from."""
            if not database.has_workload(self.mod):
                return
            tries = PARENTS  # the best records without knob values: recovered from their traces
            for rec in database.get_top_k(database.commit_workload(self.mod), 1 << 30):
                secs = mean_secs(rec.run_secs)
                try:
                    sch = Schedule(self.mod)
                    rec.trace.apply_to_schedule(sch, remove_postproc=True)
                    knobs = knobs_of(sch.mod["main"])
                    if knobs is None and tries > 0 and math.isfinite(secs):
                        tries -= 1
                        knobs = recover_knobs(self.mod, self.target, rec.trace, self.vector_bits)
                    if knobs is not None:
                        sch, knobs = knob_schedule(self.mod, self.target, knobs)
                except Exception:  # noqa: BLE001 - a record of an older template: not ours to start from
                    continue
                self.seen[self._hash(sch)] = secs
                if knobs is not None and math.isfinite(secs):
                    self.points.append((secs, knobs))

        def _propose(self) -> tuple[list, list]:
            """Knob values to try and the knobs left out of them, to be drawn: a good measured
            point with one or two knobs left out, or (sometimes, and while nothing is measured)
            nothing given: a point drawn whole."""
            parents = sorted(self.points, key=lambda p: p[0])[:PARENTS]
            if not parents or self.rng.random() < FRESH:
                return [], []
            weights = [1.0 / (i + 1) for i in range(len(parents))]
            knobs = copy.deepcopy(self.rng.choices(parents, weights)[0][1])
            keys = [(b, k) for b, d in enumerate(knobs) for k in d]
            drawn = self.rng.sample(keys, min(len(keys), 1 if self.rng.random() < 0.7 else 2))
            for b, k in drawn:
                del knobs[b][k]
            return knobs, drawn

        def _schedule(self, knobs: list, drawn: list):
            """The template at ``knobs``: (schedule, every knob's value), or None. Where a kept knob
            no longer fits (a drawn tile changed the loops after it), the knobs that follow a drawn
            one in its block are drawn too."""
            seed = self.rng.randrange(1, 1 << 30)
            try:
                return knob_schedule(self.mod, self.target, knobs, seed=seed)
            except ValueError:
                if not drawn:
                    return None
            except Exception:  # noqa: BLE001 - a point the template cannot make
                return None
            for b in {b for b, _ in drawn}:
                order = list(self.defaults[b]) if b < len(self.defaults) else []  # the template's order
                first = min([order.index(k) for bb, k in drawn if bb == b and k in order] or [0])
                knobs[b] = {k: v for k, v in knobs[b].items() if k in order[:first]}
            return self._schedule(knobs, [])

        def _pool(self, size: int) -> tuple[list, int]:
            """Up to ``size`` new candidates: (hash, schedule with postprocs applied, knobs); and how
            many of them, first, are to be measured before the others: the defaults and their
            structure neighbours not measured yet."""
            out, hashes, left = [], set(), []
            for knobs in self.first:
                try:
                    made = knob_schedule(self.mod, self.target, knobs)
                except Exception:  # noqa: BLE001 - a point the template cannot make
                    continue
                h = self._hash(made[0])
                if h in self.seen or h in hashes:  # measured, or the same module as another
                    continue
                hashes.add(h)
                cand = self._finish(*made)
                if cand is not None:
                    out.append((h, cand, made[1]))
                    left.append(knobs)  # proposed; not measured until a batch picks it
            self.first = left
            first = len(out)
            for _ in range(size * 4):
                if len(out) >= size:
                    break
                made = self._schedule(*self._propose())
                if made is None:
                    continue
                h = self._hash(made[0])
                if h in self.seen or h in hashes:
                    continue
                hashes.add(h)
                cand = self._finish(*made)
                if cand is not None:
                    out.append((h, cand, made[1]))
            return out, first

        def _busy(self, sch) -> float:
            """The share of ``busy_threads`` that ``sch``'s parallel tasks keep busy (1.0 without them)."""
            return balance(parallel_tasks(sch), self.busy_threads) if self.busy_threads else 1.0

        def _finish(self, sch, knobs):
            """``sch`` annotated with its knobs and through the space's postprocs (None: rejected,
            or it keeps fewer of ``busy_threads`` busy than the defaults)."""
            if self._busy(sch) < self.min_busy:
                return None
            annotate_knobs(sch, knobs)
            sch.enter_postproc()
            try:
                ok = all(p.apply(sch) for p in self.postprocs)
            except Exception:  # noqa: BLE001
                ok = False
            return sch if ok else None

        def generate_measure_candidates(self):
            n = min(self.per_iter, self.left)
            if n <= 0:
                return None
            pool, first = self._pool(n * POOL)
            if not pool:
                return None  # the space is exhausted (or nothing new schedules)
            cands = [ms.MeasureCandidate(sch, self.args) for _, sch, _ in pool]
            picked = list(range(min(first, n)))
            order = list(range(len(picked), len(pool)))
            m = n - len(picked)  # drawn points to pick
            if self.cost_model is not None and len(order) > m > 0:
                scores = self.cost_model.predict(self.context, [cands[i] for i in order])
                score = {i: float(s) for i, s in zip(order, scores)}
                order.sort(key=lambda i: -score[i])
            greedy = m - int(round(m * EXPLORE)) if len(order) > m else m
            picked += order[:greedy]
            rest = order[greedy:]
            picked += self.rng.sample(rest, min(len(rest), n - len(picked)))
            self.pending = [(pool[i][0], pool[i][2]) for i in picked]
            for h, _ in self.pending:
                self.seen[h] = None
            self.left -= len(picked)
            return [cands[i] for i in picked]

        def notify_runner_results(self, measure_candidates, results) -> None:
            for (h, knobs), res in zip(self.pending, results):
                secs = math.inf if res.error_msg else mean_secs(res.run_secs)
                self.seen[h] = secs
                if math.isfinite(secs):
                    self.points.append((secs, knobs))
            self.pending = []

        def post_tuning(self) -> None:
            self.pending = []

        def clone(self):
            return KnobSearch(vector_bits=self.vector_bits, seed=self.seed, busy_threads=self.busy_threads)

    return KnobSearch
