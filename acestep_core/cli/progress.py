"""Progress on stderr: a text bar for the DiT's steps and the LM's codes, a token counter for its thinking."""
from __future__ import annotations

import sys
import time

class TokenProgress:
    """The LM's progress on stderr: a bar for the audio codes (their count is known), a token counter for the
    thinking and the text modes (they stop when the LM is done, well before their budget); both with the phase's
    tokens per second (``planning.TokenClock``)."""

    LABELS = {"metas": "LM thinking", "codes": "LM codes", "text": "LM writing"}
    EVERY = 0.1  # seconds between redraws (a token takes milliseconds)

    def __init__(self, stream=None):
        from ..planning import TokenClock

        self.stream = stream if stream is not None else sys.stderr
        self.clock = TokenClock(clock=time.monotonic)
        self.phase, self.bar, self.start, self.drawn = None, None, time.monotonic(), 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.clock(phase, done, total)
        now = time.monotonic()
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = ProgressBar(self.stream, label=self.LABELS.get(phase, phase)) if phase == "codes" else None
            self.start = self.drawn = now
        elif now - self.drawn < self.EVERY and done < total:
            return
        self.drawn = now
        rate = self.clock.rate(phase)
        speed = f" {rate:.0f} tokens/s" if rate else ""
        if self.bar is not None:
            self.bar(done, total, speed)
        else:
            self.stream.write(f"\r{self.LABELS.get(phase, phase)}: {done} tokens {now - self.start:6.1f}s{speed}")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close(complete=False)
        elif self.phase is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.phase, self.bar = None, None


class ProgressBar:
    """A one-line text bar on stderr, redrawn by the pipeline's per-step callback."""

    def __init__(self, stream=None, width: int = 30, label: str = "sampling"):
        self.stream = stream if stream is not None else sys.stderr
        self.width, self.label = width, label
        self.start = time.monotonic()
        self.drawn = False
        self.total = 0
        self.suffix = ""

    def __call__(self, step: int, total: int, suffix: str = "") -> None:
        total = max(int(total), 1)
        step = max(0, min(int(step), total))
        self.total, self.suffix = total, suffix
        filled = round(self.width * step / total)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {step}/{total} {time.monotonic() - self.start:6.1f}s{suffix}")
        self.stream.flush()
        self.drawn = True

    def close(self, complete: bool = True) -> None:
        if self.drawn:
            if complete:
                self(self.total, self.total, self.suffix)
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
