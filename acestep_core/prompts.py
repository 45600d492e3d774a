"""The prompt strings the text encoder reads, byte for byte as the original builds them: the task instruction,
the "# Metas" block, the caption prompt and the lyrics prompt."""
from __future__ import annotations

import re
from typing import Sequence

from .constants import (
    DEFAULT_METAS_DURATION,
    LYRICS_PROMPT,
    META_MISSING,
    METAS_TEMPLATE,
    SFT_GEN_PROMPT,
    TASK_INSTRUCTIONS,
    TRACK_CLASSES_SEPARATOR,
)


def task_instruction(task: str, tracks: str | Sequence[str] | None = None) -> str:
    """The DiT instruction for a task (its TASK_INSTRUCTIONS key) and its already checked track names: extract and
    lego name one track, complete any number; without tracks those three use their generic instruction, as the
    original does."""
    names = [tracks] if isinstance(tracks, str) else list(tracks or ())
    names = [name.upper() for name in names]
    if task in ("extract", "lego"):
        return TASK_INSTRUCTIONS[task].format(TRACK_NAME=names[0]) if names else TASK_INSTRUCTIONS[f"{task}_default"]
    if task == "complete":
        if names:
            return TASK_INSTRUCTIONS[task].format(TRACK_CLASSES=TRACK_CLASSES_SEPARATOR.join(names))
        return TASK_INSTRUCTIONS["complete_default"]
    return TASK_INSTRUCTIONS[task]


def format_metas(
    bpm: int | None = None,
    timesignature: str | None = None,
    keyscale: str | None = None,
    duration: float | None = None,
) -> str:
    """The "# Metas" block. Values are written as given (the original does not normalise "4/4" to "4"); missing
    bpm (None or 0), blank time signature/keyscale and "N/A" become "N/A"; duration is truncated to whole seconds,
    and a missing or non-positive duration is written as 30 seconds whatever the real length."""
    has_ts = timesignature is not None and str(timesignature).strip() and timesignature != META_MISSING
    has_duration = duration is not None and duration > 0
    return METAS_TEMPLATE.format(
        bpm=bpm if bpm else META_MISSING,
        timesignature=timesignature if has_ts else META_MISSING,
        keyscale=keyscale if keyscale is not None and keyscale.strip() else META_MISSING,
        duration=f"{int(duration) if has_duration else DEFAULT_METAS_DURATION} seconds",
    )


_PASTED_CAPTION = re.compile(r"#\s*Caption\s*\n(.*?)(?:\n\s*#\s*Metas|$)", re.DOTALL)


def extract_caption(caption: str) -> str:
    """If the user pasted a whole SFT prompt, keep only its "# Caption" block (stripped); else return as is."""
    if "# Instruction" in caption and "# Caption" in caption:
        match = _PASTED_CAPTION.search(caption)
        if match:
            return match.group(1).strip()
    return caption


def format_caption_prompt(caption: str, instruction: str, metas: str) -> str:
    """The caption-encoder input; ``metas`` comes from :func:`format_metas`."""
    if not instruction.endswith(":"):
        instruction += ":"
    return SFT_GEN_PROMPT.format(instruction=instruction, caption=extract_caption(caption), metas=metas)


def format_lyrics_prompt(lyrics: str, language: str) -> str:
    return LYRICS_PROMPT.format(language=language, lyrics=lyrics)
