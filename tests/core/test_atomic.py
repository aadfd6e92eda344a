"""Atomic folders and files: a kill at any instant leaves the old or the new folder at the
destination, never none; leftovers of killed writers are cleaned by the next write; what is not
ours is never replaced."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from mntvm.core import atomic
from mntvm.core.errors import MntvmError

from conftest import ROOT


def _folder(path, text):
    path.mkdir()
    (path / "model.so").write_text(text)
    (path / "metadata.json").write_text("{}")


def _killed_writer(dest, kill_at: str, exchange_works: bool = True) -> None:
    """In a child process, replace ``dest`` with a folder holding 'new', and die (os._exit, no
    cleanup) at ``kill_at``: 'after-exchange', 'before-swap', or 'between-renames' (the two-rename
    fallback used where RENAME_EXCHANGE is not available)."""
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from mntvm.core import atomic

        real_exchange, real_replace = atomic.exchange, os.replace
        kill_at, exchange_works = {kill_at!r}, {exchange_works!r}

        def exchange(a, b):
            if kill_at == "before-swap" or not exchange_works:
                if kill_at == "before-swap":
                    os._exit(9)
                return False
            ok = real_exchange(a, b)
            os._exit(9)

        calls = []
        def replace(a, b):
            calls.append(a)
            if kill_at == "between-renames" and len(calls) == 2:
                os._exit(9)
            return real_replace(a, b)

        atomic.exchange = exchange
        os.replace = replace
        with atomic.atomic_dir({str(dest)!r}) as tmp:
            (tmp / "model.so").write_text("new")
            (tmp / "metadata.json").write_text("{{}}")
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 9, p.stderr


def _leftovers(dest):
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}."))


@pytest.mark.parametrize("kill_at,exchange_works,expect", [
    ("after-exchange", True, "new"),
    ("before-swap", True, "old"),
    ("between-renames", False, "old"),
])
def test_killed_swap_leaves_a_valid_folder(tmp_path, kill_at, exchange_works, expect):
    dest = tmp_path / "art"
    _folder(dest, "old")
    _killed_writer(dest, kill_at, exchange_works)
    assert _leftovers(dest), "the killed writer should have left its temp folder"
    atomic.recover(dest)  # what the next write of dest does first
    assert (dest / "model.so").read_text() == expect
    assert _leftovers(dest) == []
    with atomic.atomic_dir(dest) as tmp:  # and the next write works
        (tmp / "model.so").write_text("newer")
    assert (dest / "model.so").read_text() == "newer" and _leftovers(dest) == []


def test_swap_replaces_in_one_step(tmp_path):
    dest = tmp_path / "art"
    _folder(dest, "old")
    with atomic.atomic_dir(dest) as tmp:
        (tmp / "model.so").write_text("new")
        assert (dest / "model.so").read_text() == "old"  # untouched until the swap
    assert (dest / "model.so").read_text() == "new" and _leftovers(dest) == []


def test_failure_keeps_the_old_folder(tmp_path):
    dest = tmp_path / "art"
    _folder(dest, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(dest) as tmp:
            (tmp / "model.so").write_text("half")
            raise RuntimeError("compile failed")
    assert (dest / "model.so").read_text() == "old" and _leftovers(dest) == []


def test_what_is_not_ours_is_never_replaced(tmp_path, monkeypatch):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    ours = lambda p: {c.name for c in p.iterdir()} <= {"model.so", "metadata.json"}  # noqa: E731
    for dest, match in ((user, "exists and is not an artifact; not replacing it"),
                        (notes, "exists and is not a folder")):
        with pytest.raises(MntvmError, match=match):
            with atomic.atomic_dir(dest, "an artifact", is_ours=ours):
                pytest.fail("must refuse before yielding")
    monkeypatch.chdir(user)
    with pytest.raises(MntvmError, match="is the current folder"):
        with atomic.atomic_dir(".", "an artifact", is_ours=lambda p: True):
            pass
    with pytest.raises(MntvmError, match="is a folder; give a file name"):
        with atomic.atomic_path(user):
            pass
    assert (user / "notes.txt").read_text() == "mine" and notes.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "user"]


def test_unwritable_destination_is_one_line(tmp_path):
    for dest in ("/proc/mntvm-test/out", "/"):
        with pytest.raises(MntvmError) as e:
            with atomic.atomic_dir(dest):
                pass
        assert len(str(e.value).splitlines()) == 1 and dest.rstrip("/") in str(e.value) or dest == "/"


def test_leftovers_of_a_live_writer_are_kept(tmp_path):
    dest = tmp_path / "art"
    live = tmp_path / f".art.tmp-{os.getppid()}-abc"  # our parent (pytest's launcher) is alive
    live.mkdir()
    atomic.recover(dest)
    assert live.exists()
