"""Every bad input a user can type gets exit 2, exactly one line on stderr naming the argument or
file, no traceback, and nothing written."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from mntvm import cli
from mntvm.compile import compile_model
from mntvm.model import MobileNetConfig
from mntvm.model import weights as W

from conftest import ROOT

SMALL = ["--alpha", "0.25", "--resolution", "64"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder with a small artifact and one bad file of each kind."""
    d = tmp_path_factory.mktemp("bad")
    cfg = MobileNetConfig(alpha=0.25, resolution=64)
    compile_model(cfg, d / "art", schedules=None)
    good = W.save_npz(W.random_weights(cfg, 0), d / "good.npz")
    (d / "trunc.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (d / "empty.npz").write_bytes(b"")
    (d / "garbage.npz").write_bytes(b"\x00not a zip at all\n" * 10)
    strs = dict(W.random_weights(cfg, 0))
    strs["stem.weight"] = np.full(strs["stem.weight"].shape, "x")
    np.savez(d / "strings.npz", **strs)
    np.save(d / "strings.npy", np.array(["a", "b"]))
    np.save(d / "empty.npy", np.zeros((0,), np.float32))
    np.savez(d / "input.npz", x=np.zeros(3))
    (d / "notes.txt").write_text("a user's notes\n")
    (d / "userdir").mkdir()
    (d / "userdir" / "keep.txt").write_text("keep me\n")
    return d


CASES = [
    # (argv, text the one line must contain)
    (["compile", "--alpha", "inf", "-o", "out"], "alpha"),
    (["compile", "--alpha", "1e308", "-o", "out"], "alpha"),
    (["compile", "--alpha", "1e6", "-o", "out"], "alpha"),
    (["compile", "--resolution", "100000", "-o", "out"], "resolution"),
    (["compile", *SMALL, "--weights", "trunc.npz", "-o", "out"], "trunc.npz"),
    (["compile", *SMALL, "--weights", "empty.npz", "-o", "out"], "empty.npz"),
    (["compile", *SMALL, "--weights", "garbage.npz", "-o", "out"], "garbage.npz"),
    (["compile", *SMALL, "--weights", "strings.npz", "-o", "out"], "stem.weight"),
    (["compile", *SMALL, "-o", "notes.txt"], "notes.txt"),
    (["compile", *SMALL, "-o", "userdir"], "userdir"),
    (["compile", *SMALL, "-o", "."], "current folder"),
    (["compile", *SMALL, "-o", "/"], "/"),
    (["compile", *SMALL, "-o", "/proc/mntvm-test/out"], "/proc/mntvm-test/out"),
    (["compile", *SMALL, "-o", "/sys/mntvm-test"], "/sys/mntvm-test"),
    (["compile", *SMALL, "--targets-dir", "notes.txt", "-o", "out"], "notes.txt"),
    (["compile", *SMALL, "--mattr", "+bogus", "-o", "out"], "+bogus"),
    (["save-weights", *SMALL, "-o", "userdir"], "userdir"),
    (["save-weights", *SMALL, "-o", "notes.txt"], "notes.txt"),
    (["run", "art", "--input", "strings.npy"], "strings.npy"),
    (["run", "art", "--input", "input.npz"], "input.npz"),
    (["run", "art", "--input", "empty.npy"], "empty.npy"),
    (["run", "art", "--input", "notes.txt"], "notes.txt"),
    (["run", "art", "--top", "0"], "--top"),
    (["run", "art", "--top", "-3"], "--top"),
    (["run", "art", "--threads", "999"], "threads"),
    (["bench", "art", "--threads", "999", "--repeat", "2"], "threads"),
]


def _tree(d):
    return sorted(str(p.relative_to(d)) + ("/" if p.is_dir() else f" {p.stat().st_size}")
                  for p in d.rglob("*"))


@pytest.mark.parametrize("argv,names", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line(inputs, argv, names, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    before = _tree(inputs)
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.count("\n") == 1 and err.startswith("mntvm: error: "), err
    assert names in err and "Traceback" not in err, err
    assert _tree(inputs) == before  # nothing written, nothing replaced


def test_closed_stdout_is_not_an_error(inputs):
    """`mntvm targets | head -1`: the reader goes away before we write; no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(f"{sys.executable} -m mntvm.cli targets | true; echo \"rc=${{PIPESTATUS[0]}}\"",
                       shell=True, executable="/bin/bash", cwd=inputs, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.stdout == "rc=0\n" and p.stderr == "", (p.stdout, p.stderr)


def test_profile_threads_above_the_cores_are_capped(inputs, tmp_path):
    """Without --threads a run takes the profile's count (x86-avx512 says 8), at most the cores:
    only a count the user asks for is refused. (A fresh process: TVM's pool cannot grow past the
    size it started with, which earlier tests in this one may have set.)"""
    import json
    import shutil

    from mntvm.core.threads import cores

    art = shutil.copytree(inputs / "art", tmp_path / "art")
    meta = json.loads((art / "metadata.json").read_text())
    meta["target"]["threads"] = cores() + 6
    (art / "metadata.json").write_text(json.dumps(meta))
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run([sys.executable, "-m", "mntvm.cli", "bench", str(art), "--repeat", "2", "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["threads"] == cores()
