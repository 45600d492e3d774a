"""The two kinds of error a user can act on. Both are ``ValueError``s, so a caller can catch them together; both
messages fit on one line and name what to change."""
from __future__ import annotations

import math
import signal

# The module name our errors report. Hosts name an error by its class's module and name: ComfyUI heads its error
# toast and panel with them, and a custom node pack's modules are named by the pack folder's absolute path
# ("/home/…/custom_nodes/ComfyUI-ACE-Step-1_x_5.acestep_core.errors.InputError: …"). "ACE-Step.InputError: …"
# reads as the pack and leaves the toast's room for the message.
SHOWN_MODULE = "ACE-Step"


class CheckpointError(ValueError):
    """A checkpoint file or folder cannot be used; the message names the file and what is wrong."""

    __module__ = SHOWN_MODULE


class InputError(ValueError):
    """An input of the request is not allowed; the message names the input, the value and what is allowed."""

    __module__ = SHOWN_MODULE

    def __init__(self, name: str, value, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name}={shown(value)} is not allowed: {allowed}")


class Described(str):
    """A description standing in for a value too big to show (``<3600.0 s of audio>``); shown as is."""

    def __repr__(self) -> str:
        return str(self)


def shown(value) -> str:
    """A value as an error message shows it: short, one line, tensors by shape."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{type(value).__name__} of shape {list(value.shape)}>"
    if isinstance(value, Described) or (isinstance(value, float) and not math.isfinite(value)):
        return str(value)
    text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "…"


class Interrupted(KeyboardInterrupt):
    """The command line's run stopped by a signal (SIGINT or SIGTERM; see ``acestep_core.__main__``), raised in the
    main thread so that the cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def line(self) -> str:
        """The one line the command line prints for it."""
        return f"error: interrupted ({self}); nothing was written"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class UsageError(Exception):
    """A bad input found by the command line itself (a flag, a file, an output path); printed as one ``error:``
    line."""
