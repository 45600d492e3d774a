"""The rules of single user inputs: each check returns the value in its canonical form or raises
:class:`~acestep_core.errors.InputError` naming the input, the value and what is allowed. The request's parts
(``acestep_core.request``), the option table (``acestep_core.options``), the nodes' ``validate_inputs`` and the
command line call these same functions, so a value is judged by one rule wherever it is given.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import torch

from .constants import (
    BPM_MAX, BPM_MIN, CODEBOOK_SIZE, CODES_PER_SECOND, KEYSCALES, LM_DECIDE_FIELDS, MAX_AUDIO_CODES, SEED_MAX,
    TIME_SIGNATURE_FRACTIONS, TIME_SIGNATURES, VALID_LANGUAGES,
)
from .errors import Described, InputError


def check_text(name: str, value) -> str:
    """A str that is valid Unicode. Text with a lone surrogate cannot be encoded (as UTF-8, or by the tokenizer) and
    is refused rather than repaired: a byte that was not UTF-8 (Python turns it into U+DC80 … U+DCFF when it reads
    command-line arguments or files) or a half surrogate pair from JSON would otherwise change the words silently."""
    if not isinstance(value, str):
        raise InputError(name, value, "text (a str; '' for none)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(value[e.start])
        what = (f"byte 0x{code - 0xDC00:02x}, which is not UTF-8" if 0xDC80 <= code <= 0xDCFF
                else f"U+{code:04X}, a lone surrogate")
        raise InputError(name, value, f"valid Unicode text (character {e.start + 1} is {what}; give the text as "
                                      "UTF-8)") from None
    return value


def check_query(query) -> str:
    """Simple mode's idea of the song: text with something in it (an empty one would leave the LM to make up a
    song from nothing)."""
    check_text("query", query)
    if not query.strip():
        raise InputError("query", query, "a short description of the song, e.g. 'a soft Bengali love song' "
                                         "(it is empty)")
    return query


def check_int(name: str, value, lo: int, hi: int, hint: str = "") -> int:
    """An integer in [lo, hi]; floats with an integer value pass, bools and strings do not."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise InputError(name, value, f"an integer from {lo} to {hi}{hint}")
    return int(value)


def check_number(name: str, value, lo: float, hi: float, hint: str = "") -> float:
    """A finite number in [lo, hi]."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not lo <= value <= hi:
        span = f"from {lo:g} to {hi:g}" if math.isfinite(lo) or math.isfinite(hi) else "(finite)"
        raise InputError(name, value, f"a number {span}{hint}")
    return float(value)


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InputError(name, value, f"one of {', '.join(choices)}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(name, value, "True or False")
    return bool(value)


def check_language(language) -> str:
    return check_choice("language", language, VALID_LANGUAGES)


def check_bpm(bpm) -> int | None:
    """None or 0 = let the model decide."""
    if bpm is None or (not isinstance(bpm, bool) and bpm == 0):
        return None
    return check_int("bpm", bpm, BPM_MIN, BPM_MAX, " (0 or None = auto)")


def check_keyscale(keyscale) -> str | None:
    if keyscale is None or (isinstance(keyscale, str) and not keyscale.strip()):
        return None
    if not isinstance(keyscale, str) or keyscale.strip() not in KEYSCALES:
        raise InputError("keyscale", keyscale, "a note A-G, an optional accidental (# b ♯ ♭) and 'major' or "
                                               "'minor', e.g. 'F# minor' (None = auto)")
    return keyscale.strip()


def check_time_signature(timesignature) -> str | None:
    """"4", 4 and "4/4" all mean four beats per bar; written as the numerator, as the original's UI does."""
    if timesignature is None or (isinstance(timesignature, str) and not timesignature.strip()):
        return None
    text = str(timesignature).strip() if isinstance(timesignature, (str, int)) and not isinstance(
        timesignature, bool) else None
    text = TIME_SIGNATURE_FRACTIONS.get(text, text)
    if text not in TIME_SIGNATURES:
        raise InputError("timesignature", timesignature,
                         f"beats per bar: {', '.join(TIME_SIGNATURES)} (or {', '.join(TIME_SIGNATURE_FRACTIONS)})")
    return text


def check_seed(seed, batch_size: int | None = None, name: str = "seed") -> int | tuple[int, ...] | None:
    """None (random), one seed (item i gets seed + i), or one seed per batch item; each 0 … 2^64 − 1."""
    if seed is None:
        return None
    if isinstance(seed, (list, tuple)):
        seeds = tuple(check_int(name, s, 0, SEED_MAX) for s in seed)
        if not seeds or (batch_size is not None and len(seeds) != batch_size):
            raise InputError(name, list(seed), f"one seed per batch item ({batch_size})")
        return seeds
    return check_one_seed(seed, name)


def item_seeds(seed: int | tuple[int, ...] | None, batch_size: int) -> list[int]:
    """One seed per batch item from a checked seed setting: a tuple as given; one int → seed, seed + 1, …
    (mod 2^64); None → random (0 … 2^32 − 1)."""
    if seed is None:
        import random

        rng = random.SystemRandom()
        return [rng.randint(0, 2**32 - 1) for _ in range(batch_size)]
    if isinstance(seed, int):
        return [(seed + i) % (SEED_MAX + 1) for i in range(batch_size)]
    return list(seed)


def check_one_seed(seed, name: str = "seed") -> int:
    """The seed of one run that makes one thing (simple mode, understanding): an integer 0 … 2^64 − 1, the rule
    :func:`check_seed` applies to each song's seed."""
    return check_int(name, seed, 0, SEED_MAX, " (2^64 − 1)")


_TIMESTEP_SEPARATORS = re.compile(r"[\s,]+")


def check_timesteps(timesteps) -> tuple[float, ...] | None:
    """Custom timesteps: numbers in [0, 1], strictly descending from noise towards 0; a comma-separated string
    or a sequence. Empty = the default schedule."""
    if timesteps is None:
        return None
    allowed = "numbers between 0 and 1 from high to low, separated by commas, e.g. '1, 0.9, 0.75, 0.5, 0.3'"
    if isinstance(timesteps, str):
        parts = [p for p in _TIMESTEP_SEPARATORS.split(timesteps.strip()) if p]
        if not parts:
            return None
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise InputError("timesteps", timesteps, allowed) from None
    elif isinstance(timesteps, (list, tuple, torch.Tensor, np.ndarray)):
        values = [float(v) for v in (timesteps.tolist() if hasattr(timesteps, "tolist") else timesteps)]
        if not values:
            return None
    else:
        raise InputError("timesteps", timesteps, allowed)
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise InputError("timesteps", timesteps, allowed)
    as_model = np.float32(values).tolist()  # the sampler takes them as float32: descending there too
    if any(a <= b for a, b in zip(as_model, as_model[1:])):
        raise InputError("timesteps", timesteps, allowed)
    return tuple(values)


def check_cfg_interval(start, end) -> tuple[float, float]:
    start = check_number("cfg_interval_start", start, 0.0, 1.0)
    end = check_number("cfg_interval_end", end, 0.0, 1.0)
    if start > end:
        raise InputError("cfg_interval", (start, end), "cfg_interval_start ≤ cfg_interval_end")
    return start, end


_AUDIO_CODE = re.compile(r"<\|audio_code_(\d+)\|>")


def parse_audio_codes(codes) -> tuple[int, ...]:
    """5 Hz codes as ints or as ``<|audio_code_N|>`` text (or integers separated by commas/spaces); at most
    :data:`MAX_AUDIO_CODES` (600 s); values clamped to 0 … 63999 as the original does."""
    allowed = f"1 to {MAX_AUDIO_CODES} integers or <|audio_code_N|> tokens"
    try:
        if isinstance(codes, str):
            values = [int(m) for m in _AUDIO_CODE.findall(codes)]
            if not values and codes.strip():
                values = [int(v) for v in re.split(r"[\s,]+", codes.strip())]
        elif isinstance(codes, (list, tuple, torch.Tensor, np.ndarray)):
            values = [check_int("audio_codes", v, -2**63, 2**63 - 1) for v in (
                codes.tolist() if hasattr(codes, "tolist") else codes)]
        else:
            raise TypeError
    except (TypeError, ValueError, InputError):
        raise InputError("audio_codes", codes, allowed) from None
    if not 1 <= len(values) <= MAX_AUDIO_CODES:
        raise InputError("audio_codes", Described(f"<{len(values)} codes>"),
                         allowed + f" ({MAX_AUDIO_CODES / CODES_PER_SECOND:g} s)")
    return tuple(min(max(v, 0), CODEBOOK_SIZE - 1) for v in values)


def _is_code_list_per_song(codes) -> bool:
    if isinstance(codes, (torch.Tensor, np.ndarray)):
        return codes.ndim == 2
    return isinstance(codes, (list, tuple)) and len(codes) > 0 and all(
        isinstance(c, (str, list, tuple, torch.Tensor, np.ndarray)) for c in codes)


def check_audio_codes(codes, batch_size: int = 1) -> tuple[int, ...] | tuple[tuple[int, ...], ...] | None:
    """Codes for every song (see :func:`parse_audio_codes`), or one code list per song of the batch (a list of
    them, e.g. the LM's plans); one list for a batch of one is kept as the codes of every song."""
    if codes is None:
        return None
    if not _is_code_list_per_song(codes):
        return parse_audio_codes(codes)
    items = tuple(parse_audio_codes(c) for c in codes)
    if len(items) != batch_size:
        raise InputError("audio_codes", Described(f"<codes for {len(items)} songs>"),
                         f"one code list for every song, or one per song of the batch ({batch_size})")
    return items[0] if len(items) == 1 else items


def check_names(name: str, value, choices: Sequence[str], allowed: str, name_allowed: str | None = None) -> list[str]:
    """Names from ``choices`` in the order given: a list, or one string with names separated by commas; case and
    spaces around a name are ignored. ``allowed``: the message when the value is no list or string,
    ``name_allowed`` (default ``allowed``) when one name is not a choice (kind ``fields`` of the option table)."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise InputError(name, value, allowed)
    names = []
    for item in value:
        if not isinstance(item, str) or item.strip().lower() not in choices:
            raise InputError(name, item, name_allowed or allowed)
        names.append(item.strip().lower())
    return names


def check_lm_decide(decide) -> tuple[str, ...]:
    """What the LM may decide: a list of names from LM_DECIDE_FIELDS, or one string with names separated by
    commas; 'none' or an empty list = nothing (the user's given values are always kept). A blank string is
    refused: it reads as "not set" (an empty flag or variable), and would silently mean nothing."""
    allowed = f"names from {', '.join(LM_DECIDE_FIELDS)} (a list, or separated by commas), or 'none' for nothing"
    if isinstance(decide, str):
        if not decide.strip():
            raise InputError("lm_decide", decide, allowed)
        if decide.strip().lower() == "none":
            decide = []
    names = check_names("lm_decide", decide, LM_DECIDE_FIELDS, allowed)
    return tuple(n for n in LM_DECIDE_FIELDS if n in names)
