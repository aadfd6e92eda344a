"""The one exception type users see: its message is a single line naming the problem."""


class MntvmError(Exception):
    """A user-facing error. The CLI prints ``mntvm: error: <message>`` and exits 2."""
