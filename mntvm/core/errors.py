"""The one exception type users see, and the one way an exception becomes a one-line message."""
from __future__ import annotations


class MntvmError(Exception):
    """A user-facing error. The CLI prints ``mntvm: error: <message>`` and exits 2."""


def one_line(e: BaseException, with_type: bool = False, limit: int = 300) -> str:
    """``e`` as one line: the line that says what went wrong.

    TVM's errors carry a C++/Python traceback *before* the message, so when the text holds a
    traceback the last line is the message; otherwise the first line is. ``with_type`` prefixes
    the exception's class name (for errors from other libraries, whose messages may not name it).
    """
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        msg = type(e).__name__
    elif len(lines) > 1 and any(ln.startswith(("Traceback", "File ")) for ln in lines):
        msg = lines[-1]
    else:
        msg = lines[0]
    if with_type and lines and not msg.startswith(type(e).__name__):
        msg = f"{type(e).__name__}: {msg}"
    return msg[:limit]
