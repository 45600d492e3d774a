"""Checks of the user's inputs."""
from __future__ import annotations

from .constants import (
    BPM_MAX,
    BPM_MIN,
    DURATION_MAX,
    DURATION_MIN,
    KEYSCALES,
    TASK_TYPES,
    TIME_SIGNATURES,
    TRACK_NAMES,
    VALID_LANGUAGES,
)


def _not_allowed(name: str, value, allowed: str) -> ValueError:
    return ValueError(f"{name} {value!r} is not allowed; expected {allowed}")


def check_task(task: str) -> None:
    if task not in TASK_TYPES:
        raise _not_allowed("task", task, f"one of {', '.join(TASK_TYPES)}")


def check_track_name(track: str) -> None:
    if not isinstance(track, str) or track.lower() not in TRACK_NAMES:
        raise _not_allowed("track name", track, f"one of {', '.join(TRACK_NAMES)}")


def check_language(language: str) -> None:
    if language not in VALID_LANGUAGES:
        raise _not_allowed("vocal language", language, f"one of {', '.join(VALID_LANGUAGES)}")


def check_keyscale(keyscale: str | None) -> None:
    if keyscale is not None and keyscale not in KEYSCALES:
        allowed = "a note A-G, an optional accidental (# b ♯ ♭) and 'major' or 'minor', e.g. 'F# minor'"
        raise _not_allowed("keyscale", keyscale, allowed)


def check_time_signature(timesignature: str | None) -> None:
    if timesignature is not None and str(timesignature) not in TIME_SIGNATURES:
        raise _not_allowed("time signature", timesignature, f"one of {', '.join(TIME_SIGNATURES)} (beats per bar)")


def check_bpm(bpm: int | None) -> None:
    if bpm is not None and not (isinstance(bpm, int) and BPM_MIN <= bpm <= BPM_MAX):
        raise _not_allowed("bpm", bpm, f"an integer from {BPM_MIN} to {BPM_MAX}")


def check_duration(duration: float | None) -> None:
    if duration is not None and not (DURATION_MIN <= duration <= DURATION_MAX):
        raise _not_allowed("duration", duration, f"{DURATION_MIN} to {DURATION_MAX} seconds")
