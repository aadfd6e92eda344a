"""int8 on the emulated aarch64 board: the network built for the sdot profile (aarch64-dotprod;
qemu's default CPU executes sdot) and for plain NEON (aarch64: smull/saddw widening
multiply-adds), cross-compiled here, run on the board through an RPC tracker, computes
forward_int8 exactly — every layer's 8-bit output and the fp32 logits bit for bit, the
probabilities to float32 rounding of the softmax. The sdot build also at randomly sampled knobs.

Needs the board (``mntvm board prepare``: see tests/remote/test_board.py); ~1 min with it cached.
"""
from __future__ import annotations

import gc
import time

import numpy as np
import pytest
from rpc_fixtures import free_port

import tvm
from tvm import relax, rpc

from mntvm.model.network import MobileNetConfig
from mntvm.model.quantize import quantize
from mntvm.model.quantized import forward_int8
from mntvm.model.weights import random_weights
from mntvm.remote import board
from mntvm.targets.profiles import get_profile
from mntvm.templates.defaults import apply_default_schedules, apply_sampled_schedules
from mntvm.templates.lowering_int8 import dot_for, lower_int8

ARCH = "aarch64"


@pytest.fixture(scope="module")
def net():
    cfg = MobileNetConfig(alpha=0.25, resolution=32, num_classes=10)
    cal = np.random.RandomState(0).rand(4, 3, 32, 32).astype("float32") * 2 - 0.5
    return quantize(cfg, random_weights(cfg, 0), cal, act_dtype="int8")


@pytest.fixture(scope="module")
def a64(tracker):
    """One emulated aarch64 board registered with the module's tracker; yields (host, port, key)."""
    board.prepare(ARCH)
    key = f"mntvm-test-int8-{free_port()}"
    handle = board.start("127.0.0.1", tracker.port, key=key, arch=ARCH, port=free_port())
    try:
        yield "127.0.0.1", tracker.port, key
    finally:
        board.stop(handle)


def _names(net):
    """Every layer's output (the input's padded layout is the lowering's business)."""
    return [l.name for l in net.layers[:-1]] + ["pool", "fc"]


def _unblock(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """A blocked (N, C'/16, P, 16) layer output as the reference's (N, C, H, W); others as given."""
    if got.ndim == 4 and got.shape != ref.shape:
        n, cb, p, v = got.shape
        got = got.transpose(0, 1, 3, 2).reshape(n, cb * v, p)[:, :ref.shape[1]]
    return got[:, :ref.shape[1]].reshape(ref.shape)


@pytest.mark.parametrize("name,dot,seed", [("aarch64-dotprod", "sdot", None), ("aarch64-dotprod", "sdot", 7),
                                           ("aarch64", "none", None)])
def test_int8_on_board_is_exact(net, a64, tmp_path, name, dot, seed):
    profile = get_profile(name)
    target = profile.tvm_target()
    assert dot_for(target, net.act_dtype) == dot
    names = _names(net)
    mod = lower_int8(net, profile, expose=names)
    if seed is not None:
        mod = apply_sampled_schedules(mod, profile.tvm_target(), seed)
    ex = tvm.compile(apply_default_schedules(mod, target, profile.vector_bits), target=target)
    lib = profile.export_library(ex, tmp_path / f"int8-{name}-{free_port()}.so")
    x = np.random.RandomState(3).rand(*net.cfg.input_shape).astype("float32") * 2 - 0.5
    host, port, key = a64
    remote = rpc.connect_tracker(host, port).request(key, priority=1, session_timeout=300)
    try:
        assert board.board_arch(remote) == ARCH
        remote.upload(str(lib))
        dev = remote.cpu()
        vm = relax.VirtualMachine(remote.load_module(lib.name), dev)
        t0 = time.monotonic()
        vm.set_input("main", tvm.runtime.tensor(x, dev))  # a tuple result comes back field by field
        vm.invoke_stateful("main")
        ran = time.monotonic() - t0
        outs = [o.numpy() for o in vm.get_outputs("main")]
        del vm, dev
    finally:
        del remote
        # the session ends when its last reference goes: collect any cycle holding one now, or the
        # next test's request waits for the board until this session's 300 s timeout (seen once: 300.35 s)
        gc.collect()
    cap = {}
    probs = forward_int8(net, x, capture=cap)
    for lname, got in zip(names, outs[1:]):
        ref = cap[lname]
        got = _unblock(got, ref)
        assert got.dtype == ref.dtype, lname
        diff = got.astype(np.float64) - ref.astype(np.float64)
        assert not diff.any(), f"{lname}: {np.count_nonzero(diff)} of {diff.size} differ, max {np.abs(diff).max()}"
    assert np.ptp(cap["fc"]) > 0 and len(np.unique(cap["pool"])) > 4  # not a constant network
    np.testing.assert_allclose(outs[0], probs, rtol=1e-6, atol=1e-7)
    same = np.array_equal(outs[0], probs.astype(np.float32))
    print(f"{name} ({dot}, knobs {'seed ' + str(seed) if seed is not None else 'default'}): every layer and the "
          f"logits exact, probabilities {'bit-identical' if same else 'within float32 rounding'}; "
          f"board run {ran:.2f} s")
