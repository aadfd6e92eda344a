"""TVMScript parsing without reading the source of every frame on the stack.

TVM's ``@T.prim_func`` calls ``inspect.stack()`` for each function it parses, and that reads
(and searches ``sys.modules`` for) the source of every frame up the stack: in a process that
has imported TVM, ~50-100 ms a function. MetaSchedule's ``TuneContext`` imports
``tvm.s_tir.tensor_intrin`` (every target's intrinsics, ~250 functions) on first use, so each
``mntvm tune`` paid 24 s (measured: a fresh process, 2026-12-01) before its first trial, and our
own intrinsics ~1 s on every import. (Tune now skips that package altogether:
:func:`mntvm.tuning.space.without_tvm_intrinsics`.)

:func:`install` gives the parser a ``stack()`` that reads source lines for the three innermost
frames only, all it looks at (``is_defined_in_class`` reads the caller's caller's line;
``resolve_closure_vars`` reads frames' locals, which every entry keeps): 24 s -> 5 s.
Idempotent; if TVM's parser ever stops looking like this, it is left alone.
"""
from __future__ import annotations

import inspect
import sys
import types

_CONTEXT_FRAMES = 3  # frames whose source line the parser reads (prim_func, its caller, the caller's caller)


def _stack(context: int = 1) -> list:
    frame = sys._getframe(1)
    out = []
    while frame is not None:
        if len(out) < _CONTEXT_FRAMES:
            out.append(inspect.FrameInfo(frame, *inspect.getframeinfo(frame, context)))
        else:
            code = frame.f_code
            out.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, None, None))
        frame = frame.f_back
    return out


def install() -> None:
    """Make TVMScript's ``@T.prim_func`` use :func:`_stack` (once per process)."""
    try:
        from tvm.tirx.script.parser import entry
    except ImportError:
        return
    current = getattr(entry, "inspect", None)
    if not isinstance(current, types.ModuleType) or getattr(current, "stack", None) is _stack:
        return
    proxy = types.ModuleType("inspect")
    proxy.__dict__.update(current.__dict__)
    proxy.stack = _stack
    entry.inspect = proxy


