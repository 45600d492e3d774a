"""``python -m acestep_core generate …`` and the ``acestep`` command: see ``acestep_core.cli``.

SIGINT and SIGTERM (and SIGHUP, a closed terminal) are handled from the first moment, before the heavy imports
(torch takes a second or more): each raises ``errors.Interrupted`` in the main thread, so every ``finally`` on the
way out removes its temporary files, and the run ends with one line (``error: interrupted (SIGTERM); nothing was
written``) and exit status 128 + the signal's number. A signal the run was started ignoring (``nohup``, a
background job) stays ignored. Only the command line installs these handlers; importing the package changes
nothing.
"""
from __future__ import annotations

import signal
import sys

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())  # hang-up: POSIX


def _interrupt(signum, frame):
    raise Interrupted(signum)


def run(argv=None) -> int:
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _interrupt)
    try:
        from .cli import main  # torch and the rest load here

        return main(argv)
    except Interrupted as e:  # during the imports, before main could catch it
        sys.stderr.write(f"{e.line}\n")
        return e.exit_code
    finally:
        for sig in SIGNALS:  # the run is over: a late signal must not turn its exit into a traceback
            signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    raise SystemExit(run())
