"""mntvm.core.tvmscript: the parser's stack() reports what inspect.stack() does where the parser
looks, and the parser resolves closure variables with it as before."""
from __future__ import annotations

import inspect
from mntvm.core import tvmscript


def _both():
    return inspect.stack(), tvmscript._stack()


def test_stack_matches_inspect_where_the_parser_reads_it():
    full, fast = _both()
    assert len(full) == len(fast)
    for a, b in zip(full, fast):
        assert (a.frame, a.filename, a.lineno, a.function) == (b.frame, b.filename, b.lineno, b.function)
    for a, b in list(zip(full, fast))[:3]:  # is_defined_in_class reads frames[2]'s line
        assert a.code_context == b.code_context and a.code_context


def test_installed_parser_resolves_closures_as_before():
    import mntvm.templates  # noqa: F401  (installs)
    from tvm.script import tirx as T
    from tvm.tirx.script.parser import entry

    assert entry.inspect.stack is tvmscript._stack

    def make(n, dtype):
        @T.prim_func(s_tir=True)
        def f(a: T.Buffer((n,), dtype), b: T.Buffer((n,), dtype)):
            for i in range(n):
                with T.sblock("c"):
                    vi = T.axis.remap("S", [i])
                    b[vi] = a[vi] + T.cast(1, dtype)
        return f

    f = make(7, "int16")
    assert "int16" in f.script() and "(7,)" in f.script()

