"""The generation request, in the parts the ComfyUI graph has, and every rule about the user's inputs.

    SongText         caption, lyrics and metas (+ an optional timbre reference)    Caption & Lyrics, Timbre nodes
    Task             what to do with which source: window, strengths, tracks, codes   the latent nodes
    SamplerSettings  seed, steps, shift, guidance and its details                  the Sampler node
    RenderSettings   how latents become audio: normalise, tiles, fades             the VAE Decode node
    PlanSettings     the 5 Hz LM: mode, what it decides, its sampling              the LM Planner node
    Request          the parts together (render None = latents only), and the LM's plans once planned

Each part checks its fields once, when it is built, and is frozen afterwards; a bad value raises
:class:`~acestep_core.errors.InputError` naming the input, the value and what is allowed. The field checks are
plain functions, so the nodes' ``validate_inputs`` and the command line call the very same ones. The task
table (:data:`TASKS`) holds what differs between tasks; :class:`Window` converts a time window between seconds,
latent frames and samples. :func:`request` builds a whole request from flat keyword arguments (the Python API).
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .constants import (
    BPM_MAX, BPM_MIN, CODEBOOK_SIZE, CODES_PER_SECOND, DEFAULT_DURATION, DEFAULT_EXTEND_SECONDS,
    DURATION_MAX, EXTEND_DIRECTIONS, EXTEND_OVERLAP_MAX, EXTEND_SECONDS_MIN, KEYSCALES, LATENT_RATE,
    LM_DECIDE_FIELDS, LM_NO_USER_INPUT, MAX_AUDIO_CODES, MIN_WINDOW_SECONDS, SEED_MAX, TIME_SIGNATURES,
    TIME_SIGNATURE_FRACTIONS, TRACK_NAMES, VALID_LANGUAGES, VARIANTS, DCW_THINK_HIGH_SCALER, DCW_THINK_MODE,
    DCW_THINK_SCALER, DcwSettings,
)
from .audio import SILENCE_THRESHOLD, as_waveform
from .errors import Described, InputError
from .options import check_option, check_part, default, option
from .options import TABLES as OPTION_TABLES
from .options import names as option_names
from .sampling import MAX_TURBO_STEPS

# ---------------------------------------------------------------------------------------------------------------
# Field checks (each returns the value in its canonical form)
# ---------------------------------------------------------------------------------------------------------------


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


def check_tracks(tracks, task: str = "complete") -> tuple[str, ...]:
    """Track names as a tuple: a list, or one string with names separated by commas. Case is ignored."""
    if tracks is None:
        tracks = ()
    if isinstance(tracks, str):
        tracks = [t for t in tracks.split(",") if t.strip()]
    if not isinstance(tracks, (list, tuple)):
        raise InputError("tracks", tracks, "a list of track names, or names separated by commas")
    names = []
    for track in tracks:
        if not isinstance(track, str) or track.strip().lower() not in TRACK_NAMES:
            raise InputError("tracks", track, f"track names from {', '.join(TRACK_NAMES)}")
        names.append(track.strip().lower())
    names = tuple(dict.fromkeys(names))
    rule = TASKS[check_task(task)]
    if rule.tracks == "one" and len(names) != 1:
        raise InputError("tracks", list(names), f"exactly one track name for task {task!r}")
    if rule.tracks == "none" and names:
        raise InputError("tracks", list(names), "track names only with extract, lego or complete")
    return names


def check_task(task) -> str:
    return check_choice("task", task, tuple(TASKS))


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


# ---------------------------------------------------------------------------------------------------------------
# Audio inputs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AudioClip:
    """A recording given to the model: float32 waveform [C, S] on the CPU at ``sample_rate``. ``name`` is the
    input it came from, for messages. Integer PCM (int16/int32/uint8) is scaled to [-1, 1)."""

    waveform: torch.Tensor
    sample_rate: int
    name: str = "audio"

    def __post_init__(self):
        rate = self.sample_rate
        if isinstance(rate, float) and rate.is_integer():
            rate = int(rate)
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise InputError(f"{self.name} sample_rate", self.sample_rate, "a positive integer (Hz)")
        object.__setattr__(self, "sample_rate", int(rate))
        object.__setattr__(self, "waveform", _as_waveform(self.waveform, self.name))
        if self.seconds > DURATION_MAX:
            raise InputError(self.name, Described(f"<{self.seconds:.1f} s of audio>"),
                             f"at most {DURATION_MAX} s (trim it first)")
        samples = self.waveform.shape[-1]
        if samples * LATENT_RATE < self.sample_rate:  # resampled to the VAE rate: less than one hop
            raise InputError(self.name, Described(f"<{samples} samples at {self.sample_rate} Hz>"),
                             f"at least {1 / LATENT_RATE:g} s of audio ({math.ceil(self.sample_rate / LATENT_RATE)} "
                             f"samples at {self.sample_rate} Hz: one latent frame of the VAE)")

    @property
    def seconds(self) -> float:
        return self.waveform.shape[-1] / self.sample_rate


# More channels than this with at most this many samples is a [samples, channels] array (soundfile.read's layout)
# given as [channels, samples]; no recording that short could be used anyway (see AudioClip's minimum length).
TRANSPOSED_LAYOUT_LIMIT = 16


def _as_waveform(waveform, name: str) -> torch.Tensor:
    x = as_waveform(waveform, name)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(name, x, "a non-empty waveform [channels, samples] or [samples]")
    if x.shape[0] > TRANSPOSED_LAYOUT_LIMIT and x.shape[1] <= TRANSPOSED_LAYOUT_LIMIT:
        raise InputError(name, x, f"channels first, [channels, samples]; this looks like [samples, channels] "
                                  f"({x.shape[0]} samples of {x.shape[1]} channels, as soundfile.read returns "
                                  "them): pass its transpose (waveform.T)")
    if not torch.isfinite(x).all():
        raise InputError(name, x, "finite samples (this one contains NaN or infinity)")
    return x


# ---------------------------------------------------------------------------------------------------------------
# Windows and the task table
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# The parts
# ---------------------------------------------------------------------------------------------------------------


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, eq=False)
class SongText:
    """What the song should be: caption, lyrics, their language and the optional metas (None = the model
    decides), plus an optional timbre reference recording."""

    caption: str = default("text", "caption")
    lyrics: str = default("text", "lyrics")
    language: str = default("text", "language")
    bpm: int | None = default("text", "bpm")
    keyscale: str | None = default("text", "keyscale")
    timesignature: str | None = default("text", "timesignature")
    timbre: AudioClip | None = None

    def __post_init__(self):
        check_part(self, "text")
        if self.timbre is not None:
            if not isinstance(self.timbre, AudioClip):
                raise InputError("timbre", self.timbre, "an AudioClip (the reference recording)")
            if bool((self.timbre.waveform.abs() < SILENCE_THRESHOLD).all()):
                raise InputError(self.timbre.name, Described("<silent audio>"),
                                 f"a recording with sound (every sample of this one is below {SILENCE_THRESHOLD:g})")


@dataclass(frozen=True, kw_only=True)
class FlowEdit:
    """The flow-edit morph (upstream #1156) on a cover: the source audio moves from what it is (described by
    ``source_caption`` / ``source_lyrics``) towards the request's caption and lyrics, by integrating the
    difference of the two velocities over the schedule's fraction [n_min, n_max], averaging ``n_avg`` noise
    draws per step."""

    source_caption: str = default("flow_edit", "source_caption")
    source_lyrics: str = default("flow_edit", "source_lyrics")
    n_min: float = default("flow_edit", "n_min")
    n_max: float = default("flow_edit", "n_max")
    n_avg: int = default("flow_edit", "n_avg")

    def __post_init__(self):
        check_part(self, "flow_edit")
        if self.n_min > self.n_max:
            raise InputError("flow_edit_n_min", self.n_min, f"at most the end of the edited part ({self.n_max:g})")


@dataclass(frozen=True, eq=False)
class Task:
    """What to generate from what. ``duration``: seconds of a new song (text2music; the metas' duration for
    cover from codes). ``start``/``end``: the window in seconds on the source (see :func:`check_window`), or
    give ``window`` directly. ``audio_codes``: 5 Hz codes as text or ints (text2music → cover from codes, or
    cover without source audio), the same for every song or one list per song (the LM's plans). ``batch_size``: songs generated at once. ``vae_encode``: the source's latents as a
    posterior draw ("sample", the original) or the posterior mean ("mean", reproducible without the seed).
    ``flow_edit``: the morph overlay on cover / cover-nofsq."""

    kind: str = "text2music"
    source: AudioClip | None = None
    duration: float | None = default("task", "duration")
    start: float | None = default("task", "start")
    end: float | None = default("task", "end")
    repaint_mode: str = default("task", "repaint_mode")
    repaint_strength: float = default("task", "repaint_strength")
    tracks: tuple[str, ...] = default("task", "tracks")
    cover_strength: float = default("task", "cover_strength")
    cover_noise: float = default("task", "cover_noise")
    audio_codes: tuple[int, ...] | tuple[tuple[int, ...], ...] | None = None
    batch_size: int = default("task", "batch_size")
    window: Window | None = None
    vae_encode: str = default("task", "vae_encode")
    flow_edit: FlowEdit | None = None

    def __post_init__(self):
        rule = TASKS[check_task(self.kind)]
        if self.source is not None and not isinstance(self.source, AudioClip):
            raise InputError("source", self.source, "an AudioClip (the source recording)")
        _set(self, "batch_size", check_option(option("task", "batch_size"), self.batch_size))
        codes = check_audio_codes(self.audio_codes, self.batch_size)
        _set(self, "audio_codes", codes)
        if codes is not None and (rule.source == "audio" or self.source is not None):
            raise InputError("audio_codes", Described(f"<{sum(map(len, self.codes_per_song))} codes>"),
                             "only with text2music, or with cover instead of source audio")
        if rule.source == "audio" and self.source is None or (
                rule.source == "audio or codes" and self.source is None and codes is None):
            needs = "source audio" + (" or audio codes" if rule.source == "audio or codes" else "")
            raise InputError("source", None, f"{needs} for task {self.kind!r} (the song to work on)")
        if rule.source == "none" and self.source is not None:
            raise InputError("source", self.source, f"no source audio for task {self.kind!r}; "
                                                    "choose cover, repaint, extend, extract, lego or complete")
        duration = check_option(option("task", "duration"), self.duration)
        if duration is not None and self.source is not None:
            raise InputError("duration", duration, f"no duration for task {self.kind!r}: the result follows "
                                                   "the source (extend: set the window's end)")
        _set(self, "duration", duration)
        for name in ("repaint_mode", "repaint_strength", "cover_strength", "cover_noise"):
            _set(self, name, check_option(option("task", name), getattr(self, name)))
        _set(self, "tracks", check_tracks(self.tracks, self.kind))
        if self.window is not None:
            if not isinstance(self.window, Window):
                raise InputError("window", self.window, "a Window(start, end) in seconds")
            if self.start is not None or self.end is not None:
                raise InputError("window", self.window, "either window or start/end, not both")
            window = check_window(self.kind, self.window.start, self.window.end, self._source_seconds)
        else:
            window = check_window(self.kind, self.start, self.end, self._source_seconds)
        _set(self, "window", window)
        check_option(option("task", "vae_encode"), self.vae_encode)
        if self.flow_edit is not None:
            if not isinstance(self.flow_edit, FlowEdit):
                raise InputError("flow_edit", self.flow_edit, "a FlowEdit, or None")
            if not rule.flow_edit or self.source is None:
                this = f"task {self.kind!r}" + (" without source audio" if self.source is None else "")
                raise InputError("flow_edit", True, f"only on a cover (task cover or cover-nofsq) of source audio: "
                                                    f"the morph edits a recording (this is {this})")

    @property
    def rule(self) -> TaskRule:
        return TASKS[self.kind]

    @property
    def codes_per_song(self) -> list[tuple[int, ...]] | None:
        """The audio codes song i of the batch follows (the same list for every song unless given per song)."""
        codes = self.audio_codes
        if codes is None:
            return None
        if codes and isinstance(codes[0], tuple):
            return list(codes)
        return [codes] * self.batch_size

    @property
    def _source_seconds(self) -> float | None:
        return None if self.source is None else self.source.seconds

    @property
    def seconds(self) -> float:
        """Length of the result in seconds (before the 128-frame minimum)."""
        if self.source is not None:
            if self.window is None:
                return self.source.seconds
            before, after = self.window.padding(self.source.seconds)
            return self.source.seconds + before + after
        if self.audio_codes is not None:
            return max(map(len, self.codes_per_song)) / CODES_PER_SECOND
        return DEFAULT_DURATION if self.duration is None else self.duration


@dataclass(frozen=True, kw_only=True)
class SamplerSettings:
    """How to sample (the fields, defaults, limits and help: ``options.SAMPLER_OPTIONS``). None in steps, shift or
    guidance = the model variant's default; in the DCW fields = the official app's choice for the run."""

    seed: int | tuple[int, ...] | None = default("sampler", "seed")
    steps: int | None = default("sampler", "steps")
    shift: float | None = default("sampler", "shift")
    guidance: float | None = default("sampler", "guidance")
    guidance_method: str = default("sampler", "guidance_method")
    apg_momentum: float = default("sampler", "apg_momentum")
    apg_norm_threshold: float = default("sampler", "apg_norm_threshold")
    apg_eta: float = default("sampler", "apg_eta")
    cfg_interval_start: float = default("sampler", "cfg_interval_start")
    cfg_interval_end: float = default("sampler", "cfg_interval_end")
    velocity_norm_threshold: float = default("sampler", "velocity_norm_threshold")
    timesteps: tuple[float, ...] | None = default("sampler", "timesteps")
    sampler_mode: str = default("sampler", "sampler_mode")
    infer_method: str = default("sampler", "infer_method")
    velocity_ema: float = default("sampler", "velocity_ema")
    dcw: bool | None = default("sampler", "dcw")
    dcw_mode: str | None = default("sampler", "dcw_mode")
    dcw_scaler: float | None = default("sampler", "dcw_scaler")
    dcw_high_scaler: float | None = default("sampler", "dcw_high_scaler")
    retake_seed: int | tuple[int, ...] | None = default("sampler", "retake_seed")
    retake_variance: float = default("sampler", "retake_variance")

    def __post_init__(self):
        check_part(self, "sampler")
        if self.sampler_mode == "heun" and self.infer_method == "sde":
            raise InputError("sampler_mode", self.sampler_mode, "euler with infer_method 'sde' (Heun and SDE do not "
                                                                "combine)")
        check_cfg_interval(self.cfg_interval_start, self.cfg_interval_end)


@dataclass(frozen=True, kw_only=True)
class RenderSettings:
    """How final latents become audio: peak-normalise to −1 dBFS, VAE decode tile length in latent frames, and
    linear fades in seconds (``options.RENDER_OPTIONS``)."""

    normalize: bool = default("render", "normalize")
    tile_frames: int = default("render", "tile_frames")
    fade_in: float = default("render", "fade_in")
    fade_out: float = default("render", "fade_out")

    def __post_init__(self):
        check_part(self, "render")


def check_lm_decide(decide) -> tuple[str, ...]:
    """What the LM may decide: a list of names from LM_DECIDE_FIELDS, or one string with names separated by
    commas; 'none' or an empty list = nothing (the user's given values are always kept). A blank string is
    refused: it reads as "not set" (an empty flag or variable), and would silently mean nothing."""
    allowed = f"names from {', '.join(LM_DECIDE_FIELDS)} (a list, or separated by commas), or 'none' for nothing"
    if isinstance(decide, str):
        if not decide.strip():
            raise InputError("lm_decide", decide, allowed)
        decide = [] if decide.strip().lower() == "none" else [d for d in decide.split(",") if d.strip()]
    if not isinstance(decide, (list, tuple)):
        raise InputError("lm_decide", decide, allowed)
    names = []
    for name in decide:
        if not isinstance(name, str) or name.strip().lower() not in LM_DECIDE_FIELDS:
            raise InputError("lm_decide", name, allowed)
        names.append(name.strip().lower())
    return tuple(n for n in LM_DECIDE_FIELDS if n in names)


@dataclass(frozen=True, kw_only=True)
class PlanSettings:
    """The 5 Hz LM's part. ``mode``: "off"; "codes" (the user's metas as given, the LM writes the audio codes the
    DiT follows); "think" (the LM first writes what the user left out of ``decide`` — bpm, key, time signature,
    duration, the language of its own reasoning — and, with ``rewrite_caption``, a caption for the DiT; then the
    codes). Sampling: ``cfg_scale`` (1 = off), ``temperature`` (0 = greedy), ``top_p`` (1 = off), ``top_k`` (0 =
    off), ``min_p`` (0 = off), ``negative_prompt`` (the unconditional branch; blank = "NO USER INPUT"). ``seed``:
    None = the sampler's seeds; one seed (song i gets seed + i) or one per song."""

    mode: str = default("lm", "mode")
    cfg_scale: float = default("lm", "cfg_scale")
    temperature: float = default("lm", "temperature")
    top_p: float = default("lm", "top_p")
    top_k: int = default("lm", "top_k")
    min_p: float = default("lm", "min_p")
    seed: int | tuple[int, ...] | None = default("lm", "seed")
    negative_prompt: str = default("lm", "negative_prompt")
    rewrite_caption: bool = default("lm", "rewrite_caption")
    decide: tuple[str, ...] = default("lm", "decide")

    def __post_init__(self):
        check_part(self, "lm")
        if not self.negative_prompt.strip():
            _set(self, "negative_prompt", LM_NO_USER_INPUT)

    @property
    def on(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True, eq=False)
class Request:
    """One generation: the parts as built (and checked) by their owners. ``render`` None = latents only.
    ``plans``: the LM's plans (``lm_planner.Plan``, one per song) once the request was planned (text and task then
    hold what the LM decided; see ``acestep_core.planning``); empty before."""

    text: SongText = field(default_factory=SongText)
    task: Task = field(default_factory=Task)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    render: RenderSettings | None = field(default_factory=RenderSettings)
    lm: PlanSettings = field(default_factory=PlanSettings)
    plans: tuple = ()

    def __post_init__(self):
        for name, kind in (("text", SongText), ("task", Task), ("sampler", SamplerSettings), ("lm", PlanSettings)):
            if not isinstance(getattr(self, name), kind):
                raise InputError(name, getattr(self, name), f"a {kind.__name__}")
        if self.render is not None and not isinstance(self.render, RenderSettings):
            raise InputError("render", self.render, "a RenderSettings, or None for latents only")
        for name, seed in (("seed", self.sampler.seed), ("retake_seed", self.sampler.retake_seed),
                           ("lm_seed", self.lm.seed)):
            if isinstance(seed, tuple) and len(seed) != self.task.batch_size:
                raise InputError(name, list(seed), f"one seed per batch item ({self.task.batch_size})")
        if not isinstance(self.plans, tuple) or (self.plans and len(self.plans) != self.task.batch_size):
            raise InputError("plans", self.plans, f"a tuple of one LM plan per song ({self.task.batch_size})")


# ---------------------------------------------------------------------------------------------------------------
# Per-variant resolution: defaults, and the settings a variant cannot take
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """The sampler settings resolved for one model variant."""

    turbo: bool
    steps: int
    shift: float
    guidance: float  # 1.0 = no guidance (always for turbo)
    timesteps: tuple[float, ...] | None
    dcw: DcwSettings


def resolve_sampler(settings: SamplerSettings, variant: str, think: bool = False) -> Schedule:
    """Fill the variant's defaults (steps, shift, guidance) and refuse what the variant cannot take: custom
    timesteps on the base model (the original has no such option there), more than 20 turbo steps or non-zero
    turbo timesteps, and guidance on turbo (guidance-distilled: always 1, so a guidance given would do nothing).
    DCW: on/off, mode and scalers default to the official app's for the variant (``think``: the app's values when
    the LM thought)."""
    kind = VARIANTS[variant]
    defaults, turbo = kind.defaults, kind.turbo
    timesteps = settings.timesteps
    if turbo and settings.steps is not None and settings.steps > MAX_TURBO_STEPS:
        raise InputError("steps", settings.steps, f"1 to {MAX_TURBO_STEPS} on turbo models")
    if turbo and settings.guidance not in (None, 1.0):
        raise InputError("guidance", settings.guidance, "none on turbo models: they are guidance-distilled (leave it "
                                                        "out or set 1; base and SFT models take guidance)")
    if timesteps is not None:
        if kind.kind == "base":
            raise InputError("timesteps", ", ".join(f"{t:g}" for t in timesteps),
                             "custom timesteps only on turbo and SFT models (the base model has no such option)")
        nonzero = [t for t in timesteps if np.float32(t) > 0]  # as the sampler counts them, in float32
        if turbo and not 1 <= len(nonzero) <= MAX_TURBO_STEPS:
            raise InputError("timesteps", ", ".join(f"{t:g}" for t in timesteps),
                             f"1 to {MAX_TURBO_STEPS} non-zero timesteps on turbo models")
        if not turbo and len(timesteps) < 2:
            raise InputError("timesteps", ", ".join(f"{t:g}" for t in timesteps),
                             "at least 2 values (the start and the end of one step)")
    return Schedule(
        turbo=turbo,
        steps=defaults.steps if settings.steps is None else settings.steps,
        shift=defaults.shift if settings.shift is None else settings.shift,
        guidance=1.0 if turbo else (defaults.guidance if settings.guidance is None else settings.guidance),
        timesteps=timesteps,
        dcw=resolve_dcw(settings, variant, think),
    )


def resolve_dcw(settings: SamplerSettings, variant: str, think: bool = False) -> DcwSettings:
    """The DCW correction a run uses: each setting as given, else the official app's default for the variant;
    with ``think`` (the LM planned the song in think mode) the app's think mode, scalers instead (the switch stays
    the variant's)."""
    default = VARIANTS[variant].dcw
    if think:
        default = DcwSettings(default.enabled, DCW_THINK_MODE, DCW_THINK_SCALER, DCW_THINK_HIGH_SCALER)
    return DcwSettings(enabled=default.enabled if settings.dcw is None else settings.dcw,
                       mode=settings.dcw_mode or default.mode,
                       scaler=default.scaler if settings.dcw_scaler is None else settings.dcw_scaler,
                       high_scaler=(default.high_scaler if settings.dcw_high_scaler is None
                                    else settings.dcw_high_scaler))


# ---------------------------------------------------------------------------------------------------------------
# The Python API: a whole request from flat keyword arguments
# ---------------------------------------------------------------------------------------------------------------

# flat name → (part, field); every name belongs to exactly one part: the task's kind and codes, and every table
# option (``options.TABLES``: the song text, a settings part's fields, the user-set fields of Task)
_FLAT = {
    "task": ("task", "kind"), "audio_codes": ("task", "audio_codes"),
    **{o.key: (part, o.name) for part, table in OPTION_TABLES.items() for o in table},
}
_AUDIO = ("src_audio", "src_sample_rate", "ref_audio", "ref_sample_rate")


def request(*, decode: bool = True, flow_edit: bool = False, **fields) -> Request:
    """A :class:`Request` from flat keyword arguments, e.g.
    ``request(caption="calm piano", duration=30, seed=7)`` or
    ``request(task="repaint", src_audio=wav, src_sample_rate=44100, repaint_start=10, repaint_end=20)``.

    Names (the options' limits and help: ``acestep_core.options``): {names}. ``decode=False`` returns latents
    only."""
    unknown = [name for name in fields if name not in _FLAT and name not in _AUDIO]
    if unknown:
        close = difflib.get_close_matches(unknown[0], [*_FLAT, *_AUDIO], n=1)
        hint = f"did you mean {close[0]!r}?" if close else "help(acestep_core.request.request) lists them"
        raise InputError(unknown[0], fields[unknown[0]], f"not a request field ({hint})")
    parts: dict[str, dict] = {"text": {}, "task": {}, "sampler": {}, "render": {}, "flow_edit": {}, "lm": {}}
    for name, value in fields.items():
        if name in _FLAT:
            part, key = _FLAT[name]
            parts[part][key] = value
    for prefix, part, key, label in (("src", "task", "source", "src_audio"), ("ref", "text", "timbre", "ref_audio")):
        audio, rate = fields.get(f"{prefix}_audio"), fields.get(f"{prefix}_sample_rate")
        if audio is not None:
            parts[part][key] = AudioClip(audio, rate, label)
        elif rate is not None:
            raise InputError(f"{prefix}_sample_rate", rate, f"only together with {label}")
    if check_bool("flow_edit", flow_edit):
        parts["task"]["flow_edit"] = FlowEdit(**parts["flow_edit"])
    elif parts["flow_edit"]:
        name = "flow_edit_" + next(iter(parts["flow_edit"]))
        raise InputError(name, fields[name], "only with flow edit on (flow_edit=True, --flow-edit)")
    return Request(SongText(**parts["text"]), Task(**parts["task"]), SamplerSettings(**parts["sampler"]),
                   RenderSettings(**parts["render"]) if check_bool("decode", decode) else None,
                   PlanSettings(**parts["lm"]))


if request.__doc__:  # None under python -OO
    request.__doc__ = request.__doc__.format(names=(
        f"{option_names('text')}, ref_audio + ref_sample_rate (timbre); task, src_audio + src_sample_rate, "
        f"audio_codes, {option_names('task')}; {option_names('sampler')}; "
        f"flow_edit=True with {option_names('flow_edit')}; {option_names('render')}; the 5 Hz LM "
        f"(:class:`PlanSettings`): {option_names('lm')}"))
