"""The one progress display (tqdm on stderr), shared by bench, tune and sweep.

Bars draw only on a terminal and never when the caller asked for machine output; off a
terminal, callers that have events worth logging print them as plain lines with :meth:`note`.
"""
from __future__ import annotations

import sys
import threading

from tqdm import tqdm


class Progress:
    """A progress bar over ``total`` steps, ``done`` of them already done.

    ``update(n)`` sets the count; ``postfix`` shows what is running (e.g. the board of each
    running variant); ``note(msg)`` prints an event line, on a terminal above the bar, else as
    a line of its own (so logs stay readable). Thread-safe; a no-op when ``enabled`` is false.
    """

    def __init__(self, total: int, label: str, enabled: bool = True, done: int = 0,
                 log_events: bool = False):
        self.enabled = bool(enabled)
        self.tty = self.enabled and sys.stderr.isatty()
        self.log_events = log_events and self.enabled
        self.label, self.total, self.done = label, total, done
        self._lock = threading.Lock()
        self._bar = (tqdm(total=total, initial=done, desc=label, file=sys.stderr, leave=True,
                          dynamic_ncols=True, bar_format="{desc} {bar:24} {n_fmt}/{total_fmt} "
                          "eta {remaining}{postfix}") if self.tty else None)

    def update(self, done: int) -> None:
        with self._lock:
            self.done = done
            if self._bar is not None:
                self._bar.n = done
                self._bar.refresh()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def postfix(self, text: str) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.set_postfix_str(text[:100], refresh=True)

    def note(self, msg: str) -> None:
        """An event line (on a terminal above the bar; elsewhere only when ``log_events``)."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(f"{self.label}: {msg}", file=sys.stderr)
            elif self.log_events:
                sys.stderr.write(f"{self.label} {self.done}/{self.total}: {msg}\n")
                sys.stderr.flush()

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
