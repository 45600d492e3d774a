"""The task table and time windows: what each task takes (source audio, codes, tracks, a window) and what it
does with it (:data:`TASKS`), the rules of the window and the tracks, and :class:`Window`, which converts a time
window between seconds, latent frames and samples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .checks import check_choice, check_names, check_number
from .constants import (
    DEFAULT_EXTEND_SECONDS, DURATION_MAX, EXTEND_DIRECTIONS, EXTEND_OVERLAP_MAX, EXTEND_SECONDS_MIN,
    MIN_WINDOW_SECONDS, TRACK_NAMES,
)
from .errors import InputError


@dataclass(frozen=True)
class Window:
    """A time window [start, end) in seconds on the source's time axis (start < 0 or end past the source's end
    reach outside it: extend)."""

    start: float
    end: float

    def frames(self, sample_rate: int, hop: int) -> tuple[int, int]:
        """Latent frames [start, end) as the original computes them: whole samples, then floor division by hop."""
        return int(self.start * sample_rate // hop), int(self.end * sample_rate // hop)

    def samples(self, sample_rate: int) -> tuple[int, int]:
        return int(self.start * sample_rate), int(self.end * sample_rate)

    def padding(self, source_seconds: float) -> tuple[float, float]:
        """Seconds of silence to add before and after the source so the window lies inside it."""
        return max(0.0, -self.start), max(0.0, self.end - source_seconds)

    def shifted(self, seconds: float) -> "Window":
        return Window(self.start + seconds, self.end + seconds)


@dataclass(frozen=True)
class TaskRule:
    """What one task needs and does. ``source``: "none", "audio" or "audio or codes"; ``window``: None,
    "inside" (within the source), "optional inside" or "outside" (may reach past either end); ``tracks``:
    "none", "one" or "any"; ``silence_window``: the window is replaced by silence in the context (the model fills
    it); ``repaint``: the source is injected outside the window during the first steps, blended in at the end and
    spliced back after decoding; ``hints``: the context holds the source as cover hints — "fsq": through the 5 Hz
    semantic bottleneck (cover), "raw": the VAE latents themselves (raw remix, upstream's cover-nofsq);
    ``instruction``: the TASK_INSTRUCTIONS entry; ``base_only``: the official app offers it only on the base
    model; ``flow_edit``: the flow-edit morph can run on it."""

    source: str
    window: str | None = None
    tracks: str = "none"
    silence_window: bool = False
    repaint: bool = False
    hints: str | None = None
    instruction: str = ""
    base_only: bool = False
    flow_edit: bool = False


TASKS: dict[str, TaskRule] = {
    "text2music": TaskRule(source="none", instruction="text2music"),
    "cover": TaskRule(source="audio or codes", hints="fsq", instruction="cover", flow_edit=True),
    "cover-nofsq": TaskRule(source="audio", hints="raw", instruction="cover", flow_edit=True),
    "repaint": TaskRule(source="audio", window="inside", silence_window=True, repaint=True, instruction="repaint"),
    "extend": TaskRule(source="audio", window="outside", silence_window=True, repaint=True, instruction="repaint"),
    "extract": TaskRule(source="audio", tracks="one", instruction="extract", base_only=True),
    "lego": TaskRule(source="audio", window="optional inside", tracks="one", instruction="lego", base_only=True),
    "complete": TaskRule(source="audio", tracks="any", instruction="complete", base_only=True),
}
SOURCE_TASKS = tuple(name for name, rule in TASKS.items() if rule.source != "none")


def check_window(task: str, start, end, source_seconds: float | None = None) -> Window | None:
    """The task's window from the user's start/end in seconds (None when the task has none).

    repaint / lego: start default 0, end None or negative = the end of the source, 0 ≤ start < end ≤ length.
    extend: start default = the end of the source, end default = start + 30 s; it must touch the source, and
    the result (source plus the new parts) stays within 600 s. ``source_seconds`` None checks what can be
    checked without the source (the nodes' validate_inputs)."""
    rule = TASKS[task]
    for name, value in (("start", start), ("end", end)):
        if value is not None:
            check_number(name, value, -math.inf, math.inf)
    if rule.window is None:
        if start is not None or end is not None:
            raise InputError("start/end", (start, end), f"no window for task {task!r} (repaint, extend, lego)")
        return None
    if rule.window == "optional inside" and start is None and end is None:
        return None
    if rule.window == "outside":
        if source_seconds is None:
            if start is not None and end is not None and not start < end:
                raise InputError("extend window", (start, end), "start < end")
            return None
        start = source_seconds if start is None else float(start)
        end = start + DEFAULT_EXTEND_SECONDS if end is None else float(end)
        if not start + MIN_WINDOW_SECONDS <= end:
            raise InputError("extend window", (start, end), f"start < end, at least {MIN_WINDOW_SECONDS:g} s apart")
        if start > source_seconds or end < 0:
            raise InputError("extend window", (start, end), f"a window touching the source [0, {source_seconds:.2f}] s")
        if start >= 0 and end <= source_seconds + 1e-6:
            raise InputError("extend window", (start, end),
                             f"a window reaching before 0 or past the end of the source ({source_seconds:.2f} s); "
                             "this one lies inside it (use task 'repaint' to redo a part of the song)")
        total = max(end, source_seconds) - min(start, 0.0)
        if total > DURATION_MAX + 1e-6:
            raise InputError("extend window", (start, end), f"a result of at most {DURATION_MAX} s (this one is "
                                                            f"{total:.1f} s)")
        return Window(start, end)
    start = 0.0 if start is None else float(start)
    end = None if end is None or end < 0 else float(end)
    hint = " (use task 'extend' to go outside the source)" if task == "repaint" else ""
    if start < 0 or (end is not None and not start + MIN_WINDOW_SECONDS <= end):
        raise InputError(f"{task} window", (start, end), f"0 ≤ start < end, at least {MIN_WINDOW_SECONDS:g} s "
                                                         f"apart{hint}")
    if source_seconds is None:
        return None
    end = source_seconds if end is None else end
    if not start + MIN_WINDOW_SECONDS <= end <= source_seconds + 1e-6:
        raise InputError(f"{task} window", (start, end),
                         f"0 ≤ start < end ≤ the source length {source_seconds:.2f} s{hint}")
    return Window(start, end)


def extend_window(source_seconds: float, direction: str, seconds, overlap) -> Window:
    """Extend's window from "add ``seconds`` of music after the end / before the start", regenerating
    ``overlap`` seconds of the source next to the join too."""
    check_choice("direction", direction, EXTEND_DIRECTIONS)
    seconds = check_number("seconds", seconds, EXTEND_SECONDS_MIN, DURATION_MAX, " seconds of new music")
    overlap = min(check_number("overlap", overlap, 0.0, EXTEND_OVERLAP_MAX, " seconds"), source_seconds)
    if direction == EXTEND_DIRECTIONS[0]:
        return check_window("extend", source_seconds - overlap, source_seconds + seconds, source_seconds)
    return check_window("extend", -seconds, overlap, source_seconds)


def check_tracks(tracks, task: str = "complete") -> tuple[str, ...]:
    """Track names as a tuple: a list, or one string with names separated by commas. Case is ignored."""
    names = tuple(dict.fromkeys(check_names(
        "tracks", () if tracks is None else tracks, TRACK_NAMES, "a list of track names, or names separated by commas",
        f"track names from {', '.join(TRACK_NAMES)}")))
    rule = TASKS[check_task(task)]
    if rule.tracks == "one" and len(names) != 1:
        raise InputError("tracks", list(names), f"exactly one track name for task {task!r}")
    if rule.tracks == "none" and names:
        raise InputError("tracks", list(names), "track names only with extract, lego or complete")
    return names


def check_task(task) -> str:
    return check_choice("task", task, tuple(TASKS))
