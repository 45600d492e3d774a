"""The generation request, in the parts the ComfyUI graph has.

    SongText         caption, lyrics and metas (+ an optional timbre reference)    Caption & Lyrics, Timbre nodes
    Task             what to do with which source: window, strengths, tracks, codes   the latent nodes
    SamplerSettings  seed, steps, shift, guidance and its details                  the Sampler node
    RenderSettings   how latents become audio: normalise, tiles, fades             the VAE Decode node
    PlanSettings     the 5 Hz LM: mode, what it decides, its sampling              the LM Planner node
    Request          the parts together (render None = latents only), and the LM's plans once planned

Each part checks its fields once, when it is built, and is frozen afterwards; a bad value raises
:class:`~acestep_core.errors.InputError` naming the input, the value and what is allowed. Defaults, limits and
help come from the option table (``acestep_core.options``); the rules of single values are plain functions in
``acestep_core.checks`` and those of tasks and windows in ``acestep_core.tasks``, so the nodes'
``validate_inputs`` and the command line call the very same ones. What a model variant makes of the sampler
settings is ``acestep_core.schedule``. :func:`request` builds a whole request from flat keyword arguments (the
Python API).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .audio import SILENCE_THRESHOLD, as_waveform
from .checks import check_audio_codes, check_bool, check_cfg_interval
from .constants import CODES_PER_SECOND, DEFAULT_DURATION, DURATION_MAX, LATENT_RATE, LM_NO_USER_INPUT
from .errors import Described, InputError
from .options import TABLES as OPTION_TABLES
from .options import check_option, check_part, default, option
from .options import names as option_names
from .tasks import TASKS, TaskRule, Window, check_task, check_tracks, check_window

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
