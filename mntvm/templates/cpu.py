"""CPU schedules of our templates (x86 and ARM alike), registered as ``s_tir.meta_schedule.cpu.<rule>``.

Each schedule is ``(sch, block, decisions=None)``: its knobs (:func:`.knobs.tile`,
:func:`.knobs.cat`) are sampled, or replayed at ``decisions``; :func:`default_knobs` gives a
family's (:mod:`.x86`, :mod:`.arm`) default values for a block. A tuning record holds its own
trace (the instructions and decisions it was tuned with) and replays it on its workload, so a
change here changes only new traces and the defaults; a change of a TE compute (:mod:`.compute`,
the lowering) changes the workloads, and the records of the old ones stop applying.
"""
from __future__ import annotations

from tvm.s_tir import Schedule

from mntvm.templates import prefetch
from mntvm.templates.knobs import (FamilyKnobs, balance, buffer_shape, cat, divisors, rows_and_columns,
                                   single_consumer_epilogue, split2, taps_outside, tile)
from mntvm.templates.registry import RULE_DENSE, RULE_DW, RULE_DWPW, RULE_POOL, RULE_PW, RULE_STEM, rule


@rule("cpu", RULE_PW)
def schedule_pointwise(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Register-tiled 1x1 conv: tile (ob_t vectors x p_t positions) accumulators in registers."""
    conv = block
    epi = single_consumer_epilogue(sch, conv)
    n, ob, p, v = sch.get_loops(epi)[-4:]
    ob0, ob1 = sch.split(ob, tile(sch, ob, 2, 4, d, "ob"))
    p0, p1, p2 = sch.split(p, tile(sch, p, 3, 16, d, "p"))
    order = cat(sch, [0, 1], d, "order")
    # sample_categorical returns an ExprRV; its value is known at this point of the trace
    if int(sch.get(order)) == 0:
        sch.reorder(n, ob0, p0, p1, ob1, p2, v)
    else:
        sch.reorder(n, p0, ob0, p1, ob1, p2, v)
    outer = sch.get_loops(epi)[-7:-4]
    fused = sch.fuse(*outer)
    sch.parallel(fused)
    sch.compute_at(conv, p1, preserve_unit_loops=True)
    sch.vectorize(v)
    sch.unroll(p2)
    sch.unroll(ob1)
    _register_tile(sch, conv)
    return sch


# vector registers by lanes of fp32, where the inner order of the register tile is chosen by what fits
# (:func:`inner_positions_outside`): AVX2's 16 ymm, AVX-512's 32 zmm. Not 4 lanes (NEON: 32 q registers on
# AArch64, 16 on 32-bit Arm, one family): there the order stays channels-outside and the family's tiles are
# small enough for AArch64 either way (:mod:`.arm`).
VECTOR_REGISTERS = {8: 16, 16: 32}


def inner_positions_outside(o_t: int, p_t: int, lanes: int) -> bool:
    """Whether a pointwise register tile of ``o_t`` channel vectors x ``p_t`` positions loops over
    positions outside its channel vectors. Channels outside keeps the ``p_t`` broadcast inputs live
    across the channel vectors (``o_t * p_t + p_t + 1`` registers with the weight vector); positions
    outside keeps the ``o_t`` weight vectors live instead (``o_t * p_t + o_t + 1``). The second is
    taken only where the first does not fit and it does: on AVX2 (16 ymm), 2x6 runs at 70-83
    GFLOP/s channels-outside (19 registers: LLVM spills) and 100 positions-outside (15), 3x4 97-101;
    4x3 fits channels-outside (16) and runs at 100-102 (Zen 2, 1 thread, 14x14 and 24x24 layers).
    On AVX-512 the 3x8 tile (48 output channels, alpha 0.75) needs 33 zmm channels-outside: LLVM
    moved 80-118 zmm to and from the stack in its 384 FMAs (:mod:`.codegen`), none positions-outside."""
    regs = VECTOR_REGISTERS.get(lanes)
    if regs is None:
        return False
    acc = o_t * p_t
    return acc + p_t + 1 > regs and acc + o_t + 1 <= regs


def _register_tile(sch: Schedule, conv, n_reduce: int = 2):
    """The register tile of a conv computed at its position tile: its ``n_reduce`` reduction loops
    (a pointwise conv's input blocks and their lanes; the stem's input channels and taps) outside,
    the (channel vectors x positions x lanes) accumulators unrolled, in the order that fits the
    register file (:func:`inner_positions_outside`), the reduction loops but the first unrolled.
    Returns the outermost reduction loop and the tile's channel-vector loop."""
    c_n, c_ob, c_p, c_v, *red = sch.get_loops(conv)[-(4 + n_reduce):]
    _accumulators(sch, conv, (c_n, c_ob, c_p, c_v), red, red[1:])
    return red[0], c_ob


def _accumulators(sch: Schedule, conv, tile, outer, unrolled) -> None:
    """The register tile ``tile`` = (n, channel vectors, positions, lanes) loops of ``conv`` inside
    the loops ``outer`` (outermost first), in the order that fits the register file
    (:func:`inner_positions_outside`), accumulating in registers, the tile and ``unrolled`` unrolled,
    the lanes vectorized, the init split off at ``outer[0]``."""
    c_n, c_ob, c_p, c_v = tile
    ext = [int(sch.get(lp).extent) for lp in (c_ob, c_p, c_v)]
    tile_order = (c_n, c_p, c_ob, c_v) if inner_positions_outside(*ext) else (c_n, c_ob, c_p, c_v)
    sch.reorder(*outer, *tile_order)
    sch.set_scope(conv, 0, "local")
    sch.vectorize(c_v)
    for lp in (c_p, c_ob, c_n, *unrolled):
        sch.unroll(lp)
    sch.decompose_reduction(conv, outer[0])


# the fused template's ``ragged`` knob: positions per register tile that need not divide a task's
# positions (0: the ``p`` knob's tile, which divides). On AVX2 the 12-accumulator tiles need 3 or 6
# positions, and no map of resolution 224 or 128 has a multiple of 3 (:func:`dw_pointwise_knobs`).
RAGGED_TILES = [0, 3, 4, 6]
# positions a task covers at most with a ragged tile: on 1.0/224 (Zen 2, 1 thread, 4x3) 1 to 28 rows
# of the 28x28 .. 112x112 maps (112 to 1024 positions) all ran within 3 %, the most rows fastest
RAGGED_POSITIONS = 1024
DW_COLUMNS = 16  # depthwise output positions per register tile in the fused template, at most (knob "w")
# positions the fused template's convs run past the map's end for a family with ragged tiles
# (:func:`.compute.dw_pointwise_te`): a task's last register tile runs past its band of rows by up to
# max(RAGGED_TILES) - 1 positions, and the depthwise tiles that feed it by DW_COLUMNS - 1 more
RAGGED_EXTRA = max(RAGGED_TILES) - 1 + DW_COLUMNS - 1
# positions (output rows x columns) a fused depthwise+pointwise task covers at most by default:
# the depthwise output of that many positions x all input channels stays in L1/L2
DWPW_POSITIONS = 128
FULL_TILE = 14  # accumulators (channel vectors x positions) from which a register tile counts as full
# the fused template's ``kc`` knob: input-channel blocks per chunk of the pointwise reduction (0: the
# whole reduction inside each register tile). A chunk's weight panel is read by every position tile
# of the task before the next chunk's: from L1 instead of L2 (:func:`reduction_chunk`)
REDUCE_CHUNKS = [0, 2, 4, 8, 16]
# weights of one chunk of a panel, at most, by default. Zen 2, 1.0/224, 2 threads, in the network
# (interleaved): chunks of 4 KB 6.19-6.24 ms, 2 KB 6.18-6.25, 8 KB 6.33-6.35, none 6.36-6.43
CHUNK_BYTES = 4 << 10
# fp32 pointwise weights above this many bytes do not stay in a core's L2 (2 MB on Sapphire/Emerald
# Rapids, 1 MB on Zen4) next to the activations: each band of rows that reads them all again reads
# them from L3
WEIGHTS_IN_L2 = 1 << 20


def _positions_past_end(sch: Schedule, conv) -> int:
    """How many positions ``conv`` (the fused template's pointwise conv, or the stem) computes past the
    map its epilogue stores (:func:`ragged_extra_positions`, :func:`stem_extra_positions`, as the
    lowering built it)."""
    epi = sch.get_consumers(conv)[0]
    return buffer_shape(sch.get(conv).writes[0].source)[2] - buffer_shape(sch.get(epi).writes[0].source)[2]


def _pointwise_weight(sch: Schedule, conv):
    """A pointwise conv's weight buffer ``(OB, IB, V, V)``: the last 4-D buffer it reads (after it, a
    bias the sum starts from, :mod:`.bias_init`, is 2-D)."""
    return [r.source for r in sch.get(conv).reads if len(r.source.shape) == 4][-1]


def ragged_workloads(fam: FamilyKnobs) -> bool:
    """Whether the lowering builds ``fam``'s workloads for ragged register tiles: the fused template
    and the stem run past the map's end (:func:`ragged_extra_positions`, :func:`stem_extra_positions`),
    the stem from a padded copy of its input, and every conv's sum starts from its bias
    (:func:`.bias_init.bias_into_init`). Only where the family's defaults use ragged tiles (AVX2): the
    other families' workloads, and so their tuned logs, stay as they were."""
    return fam.pw_ragged is not None


def ragged_extra_positions(fam: FamilyKnobs) -> int:
    """Positions past the map's end the lowering gives the fused template for ``fam``: RAGGED_EXTRA
    where it builds ragged workloads (:func:`ragged_workloads`), else 0. With them a ragged tile needs
    no bounds mask in its reduction, in any band of rows:
    with a mask that depends on the task the 4x3 tiles ran at half speed (Zen 2: 36-45 GFLOP/s on the
    14x14..56x56 maps, against 74-80 for 4x2), without one at 88-100 (1 thread, 1.0/224)."""
    return RAGGED_EXTRA if ragged_workloads(fam) else 0


@rule("cpu", RULE_DWPW)
def schedule_dw_pointwise(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """Depthwise fused into the pointwise conv after it. A task is ``rows`` output rows x one of
    ``ob[0]`` output-channel groups: it computes the depthwise output of its rows (all input
    channels; ``w`` columns x 1 vector in registers, taps unrolled) into a task-local buffer, then
    runs the pointwise register tiles (``ob[2]`` vectors x ``p[1]`` positions, or ``ragged``
    positions where that knob is not 0) of its group on it, with ``prefetch`` the next weight panel
    prefetched (:mod:`.prefetch`), or with ``kc`` > 0 (dividing the input blocks) the reduction
    split into chunks of that many input blocks outside the tiles (:func:`_chunked_register_tiles`;
    ``prefetch`` unused then). More than one group recomputes the depthwise rows per group: for
    layers with too few rows to share among the threads.

    A ragged task's last tile runs past its rows. Where the convs are computed past the map's end
    (:func:`ragged_extra_positions`) that tile computes the next positions whole, only its stores
    masked, and the depthwise tiles run over the task's positions as one range (``w`` positions
    each, across rows). Elsewhere the tile is masked at the buffer's end, a mask that depends on
    the task unless there is one band of rows."""
    conv = block
    epi = single_consumer_epilogue(sch, conv)
    dw_epi = sch.get_producers(conv)[0]
    dw_conv = sch.get_producers(dw_epi)[0]
    wo = int(sch.get(dw_conv).annotations["mntvm_wo"])
    extra = _positions_past_end(sch, conv)
    n, ob, p, v = sch.get_loops(epi)[-4:]
    h, w = sch.split(p, [None, wo])
    h0, h1 = sch.split(h, tile(sch, h, 2, 16, d, "rows"))
    w_tile = tile(sch, w, 2, DW_COLUMNS, d, "w")
    pc = sch.fuse(h1, w)
    og, ob0, ob1 = sch.split(ob, tile(sch, ob, 3, 4, d, "ob"))
    p_tile = tile(sch, pc, 2, 16, d, "p")
    ragged = cat(sch, RAGGED_TILES, d, "ragged")
    is_ragged = int(sch.get(ragged)) != 0
    pf = cat(sch, [0, 1], d, "prefetch")
    kc = cat(sch, REDUCE_CHUNKS, d, "kc")
    p1, p2 = sch.split(pc, [None, ragged] if is_ragged else p_tile)
    sch.reorder(n, h0, og, ob0, p1, ob1, p2, v)
    task = sch.fuse(n, h0, og)
    sch.parallel(task)
    sch.vectorize(v)
    sch.unroll(p2)
    sch.unroll(ob1)
    chunk = int(sch.get(kc))
    if chunk and buffer_shape(_pointwise_weight(sch, conv))[1] % chunk == 0:
        _chunked_register_tiles(sch, conv, ob0, int(sch.get(p2).extent), chunk)
    else:
        sch.compute_at(conv, p1, preserve_unit_loops=True)
        c_ib, c_ob1 = _register_tile(sch, conv)
        if int(sch.get(pf)):
            # the weights stream from L3 in the network: prefetch the next panel during this one
            prefetch.mark(sch, task, ob0, p1, c_ob1, c_ib, _pointwise_weight(sch, conv).name)
    # the depthwise rows this task needs, all channels, before its pointwise tiles
    sch.compute_at(dw_epi, task, preserve_unit_loops=True)
    _, cb, dp, dv = sch.get_loops(dw_epi)[-4:]
    if is_ragged and extra > 0:  # depthwise tiles across rows
        w0, w1 = sch.split(dp, [None, w_tile[1]])
    else:
        dh, dwc = sch.split(dp, [None, wo])
        w0, w1 = sch.split(dwc, w_tile)
    sch.compute_at(dw_conv, w0, preserve_unit_loops=True)
    sch.vectorize(dv)
    sch.unroll(w1)
    sch.set_scope(dw_conv, 0, "local")
    taps_outside(sch, dw_conv, 2)
    return sch


def _chunked_register_tiles(sch: Schedule, conv, ob0, p_t: int, chunk: int) -> None:
    """The fused template's pointwise conv computed at its panel loop ``ob0``, its reduction over
    input blocks split into chunks of ``chunk`` blocks outside the register tiles of ``p_t``
    positions: (chunk, tile, blocks of the chunk, lanes, register tile). The accumulators of the
    panel's tiles go through a task-local buffer between chunks (one load and store per tile and
    chunk); a chunk's weights are read from L1 by every tile. Zen 2, 1 thread, alone, chunks of 8
    blocks: 7x7 1024->1024 1118 -> 1065 us, 14x14 512->512 1048 -> 1030 (128 KB and 64 KB panels);
    28x28 256->256 (32 KB) 1057 -> 1076."""
    sch.compute_at(conv, ob0, preserve_unit_loops=True)
    c_n, c_ob, c_p, c_v, c_ib, c_vi = sch.get_loops(conv)[-6:]
    cp1, cp2 = sch.split(c_p, [None, p_t])
    ib0, ib1 = sch.split(c_ib, [None, chunk])
    _accumulators(sch, conv, (c_n, c_ob, cp2, c_v), (ib0, cp1, ib1, c_vi), (c_vi,))


def reduction_chunk(o_t: int, p_t: int, ib: int, v: int, fam: FamilyKnobs, weight_bytes: int = 0) -> int:
    """Default of the fused template's ``kc`` knob for a register tile of ``o_t`` channel vectors x
    ``p_t`` positions over ``ib`` input blocks of ``v`` lanes, in a layer of ``weight_bytes`` of pointwise
    weights: where the tile's weight panel has more bytes than ``fam.chunk_panels`` and ``p_t`` <=
    ``fam.chunk_positions``, or the layer's weights are ``fam.chunk_weights`` or more, the most blocks of
    :data:`REDUCE_CHUNKS` that divide ``ib`` and keep a chunk of the panel within
    :data:`CHUNK_BYTES` (where none does, as for AVX-512's 4-vector tiles, whose input block alone
    holds 4 KB of weights: the fewest blocks that divide ``ib``); else 0."""
    block = o_t * v * v * 4
    by_panel = fam.chunk_panels is not None and block * ib > fam.chunk_panels and p_t <= fam.chunk_positions
    if not by_panel and (fam.chunk_weights is None or weight_bytes < fam.chunk_weights):
        return 0
    dividing = [c for c in REDUCE_CHUNKS if c and ib % c == 0]
    return max((c for c in dividing if c * block <= CHUNK_BYTES), default=min(dividing, default=0))


def dw_pointwise_knobs(ob: int, ho: int, wo: int, ib: int, v: int, fam: FamilyKnobs, extra: int = 0) -> dict:
    """Default knobs of the fused template, whose convs run ``extra`` positions past the map's end:
    rows per task (at most ~DWPW_POSITIONS positions, or up to RAGGED_POSITIONS with a ragged tile:
    in any band of rows with ``extra``, else only the whole map) and
    output-channel groups, chosen for a full register tile (the family's pointwise default for
    the task's positions: on 6x6 maps 3 rows would leave a 1x2 tile, 3x slower than 6 rows in two
    groups), then tasks that share evenly among ``fam.cores`` threads, then, when the weights are
    larger than :data:`WEIGHTS_IN_L2`, the fewest bands of rows (each band reads all weights:
    on the 6x6 and 4x4 maps of 1024 channels one band in two groups is 9-15 % faster than two
    bands in one group, the depthwise part computed twice costing little there), then the fewest
    groups, then the most rows. A family's ragged tile (``fam.pw_ragged``) competes with its tile
    that divides, its accumulators counted by the share of its positions that are not masked.
    ``kc``: :func:`reduction_chunk` for the chosen tile."""
    weight_bytes = (ob * v) * (ib * v) * 4
    heavy = weight_bytes > WEIGHTS_IN_L2
    best = None
    for rows in divisors(ho):
        pos = rows * wo
        # without ``extra`` a ragged tile only in one band of rows (the whole map): with more bands
        # the mask of a task's last tile depends on the task (:func:`ragged_extra_positions`)
        ragged = (fam.pw_ragged(ob, pos, ib, v, fam.num_regs, fam.chunk_panels)
                  if fam.pw_ragged and (rows == ho or extra) and pos <= RAGGED_POSITIONS else None)
        tiles = [(*ragged, True)] if ragged is not None else []  # (o_t, p_t, ragged)
        if rows == 1 or pos <= DWPW_POSITIONS:
            pw = fam.pw(ob, pos, ib, v, fam.num_regs)
            tiles.append((pw["ob"][1], pw["p"][2], False))
        for o_t, p_t, rag in tiles:
            used = pos / (-(-pos // p_t) * p_t)
            for g in (x for x in divisors(ob // o_t) if x <= 4):
                tasks = (ho // rows) * g
                busy = balance(tasks, fam.cores)
                if rag and (busy < 1 or ob // (g * o_t) < 2):
                    # a ragged tile only where the tasks keep every thread busy with two panels or
                    # more per group: a whole map of 64 output channels (2 groups of 1 panel) ran
                    # 1.7-1.9x slower ragged than in bands (Zen 2, 1 thread, 16x16..32x32 maps of
                    # alpha 0.25 / 0.5); one group would leave a thread idle
                    continue
                bands = ho // rows if heavy else 0
                key = (round(min(o_t * p_t, FULL_TILE) * used, 2), round(busy, 3), -bands, -g, rows)
                if best is None or key > best[0]:
                    best = (key, rows, g, o_t, p_t, rag)
    _, rows, g, o_t, p_t, rag = best
    # with a ragged tile the "p" knob is not used; its decision must still be a tile that divides
    return {"rows": split2(ho, rows), "ob": [g, ob // (g * o_t), o_t], "p": split2(rows * wo, 1 if rag else p_t),
            "ragged": p_t if rag else 0,
            "prefetch": int(fam.prefetch_weights is not None and weight_bytes >= fam.prefetch_weights),
            "kc": reduction_chunk(o_t, p_t, ib, v, fam, weight_bytes),
            "w": fam.dw(ib, ho, wo, v, fam.num_regs)["w"]}


def _row_tiled(sch: Schedule, conv, d: dict | None, wo: int | None, ch_key: str):
    """Shared outer structure of the depthwise and stem templates: the epilogue's (channel block,
    P) loops become rows × column tiles; ``ch_t`` channel vectors × ``w_t`` columns accumulate in
    registers; the conv is computed there, into registers."""
    n, cb, h, w, v = rows_and_columns(sch, conv, wo)
    cb0, cb1 = sch.split(cb, tile(sch, cb, 2, 4, d, ch_key))
    w0, w1 = sch.split(w, tile(sch, w, 2, 16, d, "w"))
    sch.reorder(n, cb0, h, w0, cb1, w1, v)
    sch.parallel(sch.fuse(n, cb0, h))
    sch.compute_at(conv, w0, preserve_unit_loops=True)
    sch.vectorize(v)
    sch.unroll(w1)
    sch.unroll(cb1)
    sch.set_scope(conv, 0, "local")


@rule("cpu", RULE_DW)
def schedule_depthwise(sch: Schedule, block, d: dict | None = None, wo: int | None = None) -> Schedule:
    """Depthwise: rows x column tiles, w_t output columns (x cb_t channel vectors) accumulate
    in registers, taps unrolled, channels vectorized, padding predicated inline."""
    _row_tiled(sch, block, d, wo, "cb")
    taps_outside(sch, block, 2)
    return sch


@rule("cpu", RULE_STEM)
def schedule_stem(sch: Schedule, block, d: dict | None = None, wo: int | None = None) -> Schedule:
    """Stem: as depthwise, reducing over input channels and taps (input channels outermost). The
    stem that reads a padded copy of its input (:func:`.compute.stem_te` with ``extra``) gets
    ragged tiles over its flat positions instead (:func:`_stem_flat`)."""
    if sch.get_producers(block):
        return _stem_flat(sch, block, d)
    _row_tiled(sch, block, d, wo, "ob")
    taps_outside(sch, block, 3)
    return sch


# positions per register tile of the padded stem (knob "ragged"): 12 accumulators for 4, 3, 2 or 1
# output-channel vectors (AVX2: 32, 24, 16 or 8 stem channels)
STEM_TILES = [3, 4, 6, 12]
STEM_EXTRA = max(STEM_TILES) - 1  # positions its conv runs past the map's end (a task's last tile)
STEM_ROWS = 16  # output rows per task of the padded stem, at most by default


def stem_extra_positions(fam: FamilyKnobs) -> int:
    """Positions past the map's end the lowering gives the stem for ``fam``: STEM_EXTRA where it
    builds ragged workloads (:func:`ragged_workloads`; the padded stem, :func:`.compute.stem_te`),
    else 0. On Zen 2 (1 thread, 1.0/224) the row-tiled stem ran at 64-66 %
    of the FMA peak: its tiles fit 8 accumulators (4x2; 112 columns have no multiple of 3) and its
    taps test the padding. The padded one: 4x3 over flat positions, 79 % (305 -> 254 us alone)."""
    return STEM_EXTRA if ragged_workloads(fam) else 0


def _stem_flat(sch: Schedule, conv, d: dict | None) -> Schedule:
    """The padded stem: a task is ``rows`` output rows (all channels); its register tiles are
    ``ob[1]`` channel vectors x ``ragged`` positions, run over the task's positions as one range
    (across rows; the last tile past the task's end, its stores masked), the taps and input
    channels outside the tile. The padded copy of the input is made whole first, rows in parallel,
    columns in vectors."""
    pad = sch.get_producers(conv)[0]
    epi = single_consumer_epilogue(sch, conv)
    wo = int(sch.get(conv).annotations["mntvm_wo"])
    n, ob, p, v = sch.get_loops(epi)[-4:]
    h, w = sch.split(p, [None, wo])
    h0, h1 = sch.split(h, tile(sch, h, 2, STEM_ROWS, d, "rows"))
    pc = sch.fuse(h1, w)
    ob0, ob1 = sch.split(ob, tile(sch, ob, 2, 4, d, "ob"))
    ragged = cat(sch, STEM_TILES, d, "ragged")
    p1, p2 = sch.split(pc, [None, ragged])
    sch.reorder(n, h0, ob0, p1, ob1, p2, v)
    sch.parallel(sch.fuse(n, h0))
    sch.compute_at(conv, p1, preserve_unit_loops=True)
    sch.vectorize(v)
    sch.unroll(p2)
    sch.unroll(ob1)
    _register_tile(sch, conv, 3)
    pn, pcn, pi, pj = sch.get_loops(pad)
    sch.parallel(sch.fuse(pn, pcn, pi))
    sch.vectorize(sch.split(pj, [None, int(sch.get(v).extent)])[1])
    return sch


def stem_flat_knobs(ob: int, ho: int, wo: int, fam: FamilyKnobs) -> dict:
    """Default knobs of the padded stem: a 12-accumulator tile with as many channel vectors as
    divide ``ob`` (4x3, 3x4, 2x6, 1x12), and the most rows per task up to STEM_ROWS among those
    that share the tasks evenly among ``fam.cores`` threads (on 1.0/224, 4 to 56 rows ran within
    1 %, 4 rows 5 % slower)."""
    o_t, p_t = next((o, p) for o, p in ((4, 3), (3, 4), (2, 6), (1, 12)) if ob % o == 0)

    rows = max((r for r in divisors(ho) if r <= STEM_ROWS),
               key=lambda r: (round(balance(ho // r, fam.cores), 3), r))
    return {"rows": split2(ho, rows), "ob": split2(ob, o_t), "ragged": p_t}


@rule("cpu", RULE_DENSE)
def schedule_dense(sch: Schedule, block, d: dict | None = None) -> Schedule:
    """FC: ``nb_t`` output vectors accumulate in registers, the reduction over K outside them."""
    acc = block
    single_consumer_epilogue(sch, acc)
    n, nb, v, k = sch.get_loops(acc)[-4:]
    nb0, nb1 = sch.split(nb, tile(sch, nb, 2, 8, d, "nb"))
    sch.reorder(n, nb0, k, nb1, v)
    fused = sch.fuse(n, nb0)
    sch.parallel(fused)
    wb = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(wb, fused, preserve_unit_loops=True)
    sch.vectorize(v)
    sch.unroll(nb1)
    wl = sch.get_loops(wb)
    sch.vectorize(wl[-1])
    sch.decompose_reduction(acc, k)
    # epilogue: (N, n_out), small
    return sch


def pool_vec(sch: Schedule, block) -> int:
    """The vector width of a pooling block: the inner extent of its blocked input's last axis."""
    return int(sch.get(block).reads[0].source.shape[-1])


@rule("cpu", RULE_POOL)
def schedule_pool(sch: Schedule, block, d: dict | None = None, vec: int | None = None,
                  vector_epilogue: bool = False) -> Schedule:
    """Global average pool: ``vec`` channels (default: :func:`pool_vec`) vectorized, in registers;
    the epilogue (the int8 pool's requantization) vectorized too with ``vector_epilogue``."""
    s = block
    if vec is None:
        vec = pool_vec(sch, s)
    epi = single_consumer_epilogue(sch, s)
    n, c, p = sch.get_loops(s)[-3:]
    c0, c1 = sch.split(c, [None, vec])
    sch.reorder(n, c0, p, c1)
    fused = sch.fuse(n, c0)
    sch.parallel(fused)
    wb = sch.cache_write(s, 0, "local")
    sch.reverse_compute_at(wb, fused, preserve_unit_loops=True)
    sch.vectorize(c1)
    sch.reverse_compute_at(epi, fused, preserve_unit_loops=True)
    if vector_epilogue:
        sch.vectorize(sch.get_loops(epi)[-1])
    sch.decompose_reduction(s, p)
    return sch


def default_knobs(sch: Schedule, block, name: str, fam: FamilyKnobs) -> dict:
    """The family's default knob values for ``block`` (a block carrying rule ``name``)."""
    b = sch.get(block)
    out = buffer_shape(b.writes[0].source)
    if name in (RULE_PW, RULE_DWPW):
        _, ob, p, v = out
        ib = buffer_shape(b.reads[0].source)[1] if len(b.reads) else ob  # input channel blocks
        for r in b.reads:
            s = buffer_shape(r.source)
            if len(s) == 4 and s[2] == p:
                ib = s[1]
        if name == RULE_PW:
            return fam.pw(ob, p, ib, v, fam.num_regs)
        dw_conv = sch.get(sch.get_producers(sch.get_producers(block)[0])[0])
        wo = int(dw_conv.annotations["mntvm_wo"])
        extra = _positions_past_end(sch, block)
        return dw_pointwise_knobs(ob, (p - extra) // wo, wo, ib, v, fam, extra=extra)
    if name == RULE_STEM and sch.get_producers(block):
        _, ob, p, v = out
        wo = int(b.annotations["mntvm_wo"])
        return stem_flat_knobs(ob, (p - _positions_past_end(sch, block)) // wo, wo, fam)
    if name in (RULE_DW, RULE_STEM):
        _, cb, p, v = out
        wo = int(b.annotations["mntvm_wo"])
        f = fam.dw if name == RULE_DW else fam.stem
        return f(cb, p // wo, wo, v, fam.num_regs)
    if name == RULE_DENSE:
        _, nb, v = out
        k = [buffer_shape(r.source) for r in b.reads if len(r.source.shape) == 3][0][1]
        return fam.dense(nb, k, v, fam.num_regs)
    return {}
