"""Every setting a user sets, declared once: name, kind, default, limits or choices, help, CLI flag, node widget.

The settings dataclasses (``request.SamplerSettings``, ``RenderSettings``, ``PlanSettings``, the user-set fields
of ``Task``) take their defaults from these tables and check their values with :func:`check_option`; the nodes
build their widgets from them (``nodes.acestep_nodes.option_input``), the command line its flags, help and error
names (``cli``), ``request()``'s docstring and the README its option lists (:func:`markdown`). Adding a sampler
option is one :class:`Option` here, one field in ``SamplerSettings`` and the code that uses it.

``default`` is the request's default; ``None`` means "decided per run" (the model variant's default, the app's
DCW choice, a random seed) and ``auto`` is the value a widget shows for it (0, -1 or "auto"; for numbers any value
below the range when ``auto`` is negative). ``hint`` is added to the error's "allowed" text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import checks
from .constants import (
    APG_MOMENTUM, APG_MOMENTUM_MAX, APG_MOMENTUM_MIN, APG_NORM_THRESHOLD, APG_NORM_THRESHOLD_MAX, BPM_MAX, BPM_MIN,
    DCW_MODES, DCW_THINK_HIGH_SCALER, DCW_THINK_MODE, DCW_THINK_SCALER, DEFAULT_DURATION, DEFAULT_EXTEND_SECONDS,
    DEFAULT_TILE_FRAMES, DURATION_MAX, DURATION_MIN, FLOW_EDIT_MAX_AVG, GUIDANCE_MAX, GUIDANCE_METHODS,
    GUIDANCE_MIN, INFER_METHODS, KEYSCALE_MODES, KEYSCALE_NOTES, LM_CFG_SCALE, LM_CFG_SCALE_MAX, LM_CFG_SCALE_MIN,
    LM_DECIDE_FIELDS, LM_MIN_P, LM_MODES, LM_NO_USER_INPUT, LM_TEMPERATURE, LM_TEMPERATURE_MAX, LM_TOP_K,
    LM_TOP_K_MAX, LM_TOP_P, MAX_BATCH_SIZE, REPAINT_MODES, SAMPLER_MODES, SEED_MAX, SHIFT_MAX, SHIFT_MIN, STEPS_MAX,
    STEPS_MIN, TILE_FRAMES_MAX, TILE_FRAMES_MIN, TIME_SIGNATURES, TRACK_NAMES, TURBO_APP_MAX_STEPS, TURBO_MAX_STEPS,
    VAE_ENCODE_MODES, VALID_LANGUAGES, VARIANTS, VELOCITY_NORM_THRESHOLD_MAX,
)

KINDS = ("int", "float", "choice", "bool", "switch", "text", "seed", "timesteps", "fields")
SWITCH = ("auto", "on", "off")  # a bool that may be left to the run: auto = None


@dataclass(frozen=True)
class Option:
    """One user setting. ``name``: the field of its settings part; ``key``: the flat ``request()`` name (default
    ``name``); ``flag``: the command-line flag ("" = not on the command line; two options may share one flag,
    given as one argument with a value each, e.g. --cfg-interval START END; a bool defaulting to True is a
    ``--no-…`` switch); ``widget``: the node input's name (default ``name``); ``step``: the widget's step;
    ``advanced``: the widget is folded away until the user asks for it; ``label``: the name errors give (default
    ``key``); ``sample_arg``: the keyword of ``sampling.sample`` and ``sampling.flow_edit`` that takes the value
    as it is (the pipeline hands these over without naming them). Kind ``fields``: some names of ``choices`` (a
    list, or one string separated by commas; repeatable on the command line). Where no ``lo``/``hi`` is given for
    a number, its settings part checks it with rules across fields (e.g. a window on the source)."""

    name: str
    kind: str
    default: Any
    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    key: str = ""
    label: str = ""
    flag: str = ""
    widget: str = ""
    auto: Any = None
    auto_help: str = ""
    hint: str = ""
    step: float | None = None
    advanced: bool = False
    metavar: str | None = None
    sample_arg: str = ""
    check: str = ""  # a ``checks`` function that checks the value instead of the kind's rule (its own spellings)
    allowed_text: str = ""  # what is allowed, in words, where listing the choices would not say it

    def __post_init__(self):
        assert self.kind in KINDS, self.kind
        if not self.key:
            object.__setattr__(self, "key", self.name)
        if not self.widget:
            object.__setattr__(self, "widget", self.name)
        if not self.label:
            object.__setattr__(self, "label", self.key)

    @property
    def widget_default(self):
        """What the node's widget shows when left alone: the default, or ``auto`` for "decided per run"."""
        if self.kind == "switch":
            return "auto" if self.default is None else ("on" if self.default else "off")
        if self.kind == "seed":  # a seed widget always holds a seed (ComfyUI's control_after_generate changes it)
            return 0
        if self.default is None:
            return self.auto
        return self.default

    @property
    def widget_choices(self) -> tuple:
        if self.kind == "switch":
            return SWITCH
        return ((self.auto,) if self.default is None and self.auto is not None else ()) + self.choices

    @property
    def widget_min(self):
        if self.kind == "seed":
            return self.lo
        return self.auto if self.default is None and isinstance(self.auto, (int, float)) else self.lo

    def from_widget(self, value):
        """A widget's value as the settings take it: ``auto`` → None."""
        if self.kind == "switch":
            return {"auto": None, "on": True, "off": False}.get(value, value)
        if self.default is None and self.auto is not None and not isinstance(value, bool):
            if value == self.auto or (isinstance(self.auto, (int, float)) and self.auto < 0
                                      and isinstance(value, (int, float)) and value < 0):
                return None
        return value

    def allowed(self) -> str:
        """The range or choices, as the help texts write them."""
        if self.allowed_text:
            return self.allowed_text
        if self.kind in ("int", "float") and self.lo is not None:
            return f"{self.lo:g}–{self.hi:g}"
        if self.kind in ("choice", "switch"):
            return ", ".join(self.widget_choices if self.kind == "switch" else self.choices)
        if self.kind == "fields":
            return "some of " + ", ".join(self.choices)
        if self.kind == "seed":
            return "0 … 2^64 − 1, or a list with one per song"
        return ""

    def default_text(self) -> str:
        if self.default is None:
            return self.auto_help or "none"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        if self.kind == "fields":
            return ", ".join(self.default) if self.default else "none"
        return repr(self.default) if isinstance(self.default, str) and not self.choices else str(self.default)


_DEF = {name: VARIANTS[name].defaults for name in ("turbo", "base", "sft")}
_DCW = VARIANTS["turbo"].dcw
_VARIANT_STEPS = (f"the variant's: turbo {_DEF['turbo'].steps}, base {_DEF['base'].steps}, "
                  f"SFT {_DEF['sft'].steps}")

# ---------------------------------------------------------------------------------------------------------------
# SongText (the Caption & Lyrics node, "what to generate" on the command line)
# ---------------------------------------------------------------------------------------------------------------

SONG_OPTIONS: tuple[Option, ...] = (
    Option("caption", "text", "", "Style and sound, e.g. 'upbeat synth-pop, female vocals, punchy drums'.",
           flag="--caption"),
    Option("lyrics", "text", "", "Lyrics with section tags ([Verse], [Chorus], [Bridge]…); '[Instrumental]' or "
           "empty for no vocals.", flag="--lyrics"),
    Option("language", "choice", "en", "Language of the lyrics (ISO code; 'unknown' if mixed).",
           choices=VALID_LANGUAGES, flag="--language", check="check_language"),
    Option("bpm", "int", None, "Tempo in beats per minute.", lo=BPM_MIN, hi=BPM_MAX, flag="--bpm", auto=0,
           auto_help="the model decides", check="check_bpm"),
    Option("keyscale", "choice", None, "Key and scale, e.g. 'E minor'.",
           choices=tuple(f"{n}{a} {m}" for n in KEYSCALE_NOTES for a in ("", "#", "b") for m in KEYSCALE_MODES),
           flag="--key", auto="auto", auto_help="the model decides", check="check_keyscale",
           allowed_text="a note A–G, an optional # or b (♯ ♭ too), major or minor"),
    Option("timesignature", "choice", None, "Beats per bar: 2 (2/4), 3 (3/4), 4 (4/4), 6 (6/8).",
           choices=TIME_SIGNATURES, flag="--timesig", auto="auto", auto_help="the model decides",
           check="check_time_signature", allowed_text="2, 3, 4, 6 (or 2/4, 3/4, 4/4, 6/8)"),
)

# ---------------------------------------------------------------------------------------------------------------
# SamplerSettings (the Sampler node, "sampling" on the command line)
# ---------------------------------------------------------------------------------------------------------------

SAMPLER_OPTIONS: tuple[Option, ...] = (
    Option("seed", "seed", None, "Noise seed; the same seed gives the same song on CPU and GPU; song i of a batch "
           "uses seed + i (a list: one seed per song).", lo=0, hi=SEED_MAX, flag="--seed", auto_help="random"),
    Option("steps", "int", None, f"Denoising steps. Turbo takes 1–{TURBO_MAX_STEPS} (its distilled schedule is "
           f"{_DEF['turbo'].steps}; the official app runs at most {TURBO_APP_MAX_STEPS}).", lo=STEPS_MIN,
           hi=STEPS_MAX, flag="--steps", auto=0, auto_help=_VARIANT_STEPS),
    Option("shift", "float", None, "Timestep shift.", lo=SHIFT_MIN, hi=SHIFT_MAX, flag="--shift", auto=0.0,
           auto_help=f"the variant's ({_DEF['turbo'].shift:g})", step=0.1),
    Option("guidance", "float", None, "Guidance scale for base/SFT (1 = off). Turbo takes none (guidance-distilled).",
           lo=GUIDANCE_MIN, hi=GUIDANCE_MAX, flag="--guidance", auto=0.0,
           auto_help=f"the variant's (base/SFT {_DEF['base'].guidance:g}, turbo off)", hint=" (1 = off)", step=0.1),
    Option("guidance_method", "choice", GUIDANCE_METHODS[0], "apg: adaptive projected guidance (the official "
           "default); adg: angle-based guidance.", choices=GUIDANCE_METHODS, flag="--guidance-method"),
    Option("apg_momentum", "float", APG_MOMENTUM, "APG momentum.", lo=APG_MOMENTUM_MIN, hi=APG_MOMENTUM_MAX,
           flag="--apg-momentum", hint=f" (the original uses {APG_MOMENTUM})", step=0.01, advanced=True,
           sample_arg="apg_momentum"),
    Option("apg_norm_threshold", "float", APG_NORM_THRESHOLD, "APG norm clamp (0 = no clamp).", lo=0.0,
           hi=APG_NORM_THRESHOLD_MAX, flag="--apg-norm-threshold", hint=" (0 = no clamp)", step=0.1, advanced=True,
           sample_arg="apg_norm_threshold"),
    Option("apg_eta", "float", 0.0, "APG: the share of the guidance along the conditional velocity that is kept "
           "(0 = only the orthogonal part, as the original; upstream apg_forward's eta).", lo=0.0, hi=1.0,
           flag="--apg-eta", step=0.01, advanced=True, sample_arg="apg_eta"),
    Option("cfg_interval_start", "float", 0.0, "Guidance only for timesteps t ≥ this (t runs from 1 down to 0).",
           lo=0.0, hi=1.0, flag="--cfg-interval", step=0.01, advanced=True, metavar="START",
           sample_arg="cfg_interval_start"),
    Option("cfg_interval_end", "float", 1.0, "Guidance only for timesteps t ≤ this.", lo=0.0, hi=1.0,
           flag="--cfg-interval", step=0.01, advanced=True, metavar="END", sample_arg="cfg_interval_end"),
    Option("velocity_norm_threshold", "float", 0.0, "Clamp the velocity's norm (0 = off).", lo=0.0,
           hi=VELOCITY_NORM_THRESHOLD_MAX, flag="--velocity-norm-threshold", hint=" (0 = off)", step=0.1,
           advanced=True, sample_arg="velocity_norm_threshold"),
    Option("timesteps", "timesteps", None, "Custom schedule (turbo and SFT), comma-separated from 1 towards 0, "
           "e.g. '1,0.9,0.75,0.5,0.3'.", flag="--timesteps", auto="", auto_help="the default schedule",
           advanced=True),
    Option("sampler_mode", "choice", SAMPLER_MODES[0], "euler: one model pass per step; heun: a second pass per "
           "step (slower, second order).", choices=SAMPLER_MODES, flag="--sampler", advanced=True),
    Option("infer_method", "choice", INFER_METHODS[0], "ode: deterministic steps; sde: each step re-noises its "
           "clean estimate (fresh noise from the seed).", choices=INFER_METHODS, flag="--infer-method",
           advanced=True),
    Option("velocity_ema", "float", 0.0, "Smooth the velocity with the previous step's (0 = off; upstream "
           "suggests 0.1).", lo=0.0, hi=1.0, flag="--velocity-ema", hint=" (0 = off)", step=0.01, advanced=True,
           sample_arg="velocity_ema_factor"),
    Option("dcw", "switch", None, "DCW, the wavelet-domain correction after each step.", flag="--dcw",
           auto_help="the official app's: on for turbo, off for base/SFT", advanced=True),
    Option("dcw_mode", "choice", None, "low / high: correct one wavelet band; double: both; pix: in latent space.",
           choices=DCW_MODES, flag="--dcw-mode", auto="auto",
           auto_help=f"the official app's: {_DCW.mode} (also after the LM thought: {DCW_THINK_MODE})", advanced=True),
    Option("dcw_scaler", "float", None, "DCW strength (low band; the only one for high and pix).", lo=0.0, hi=1.0,
           flag="--dcw-scaler", auto=-1.0, auto_help=f"the official app's: {_DCW.scaler:g}, or "
           f"{DCW_THINK_SCALER:g} after the LM thought", step=0.005, advanced=True),
    Option("dcw_high_scaler", "float", None, "DCW strength of the high band in double mode.", lo=0.0, hi=1.0,
           flag="--dcw-high-scaler", auto=-1.0, auto_help=f"the official app's: {_DCW.high_scaler:g}, or "
           f"{DCW_THINK_HIGH_SCALER:g} after the LM thought", step=0.005, advanced=True),
    Option("retake_seed", "seed", None, "Retake: a second seed whose noise is mixed in (with retake_variance).",
           lo=0, hi=SEED_MAX, flag="--retake-seed", auto_help="random", advanced=True),
    Option("retake_variance", "float", 0.0, "Retake: 0 = off; small values give variations of the seed's song, 1 = "
           "the retake seed's song.", lo=0.0, hi=1.0, flag="--retake-variance",
           hint=" (0 = off, 1 = only the retake seed's noise)", step=0.01, advanced=True),
)

# ---------------------------------------------------------------------------------------------------------------
# RenderSettings (VAE Decode; "model and output" on the command line)
# ---------------------------------------------------------------------------------------------------------------

RENDER_OPTIONS: tuple[Option, ...] = (
    Option("normalize", "bool", True, "Peak-normalise each song to -1 dBFS (the original's default).",
           flag="--no-normalize"),
    Option("tile_frames", "int", DEFAULT_TILE_FRAMES, "Latent frames per VAE decode tile (25 per second); lower = "
           "less VRAM.", lo=TILE_FRAMES_MIN, hi=TILE_FRAMES_MAX, flag="--tile-frames", step=16, advanced=True),
    Option("fade_in", "float", 0.0, "Linear fade-in, seconds (0 = none).", lo=0.0, hi=DURATION_MAX,
           flag="--fade-in", hint=" seconds", step=0.1, advanced=True, metavar="SECONDS"),
    Option("fade_out", "float", 0.0, "Linear fade-out, seconds (0 = none).", lo=0.0, hi=DURATION_MAX,
           flag="--fade-out", hint=" seconds", step=0.1, advanced=True, metavar="SECONDS"),
)

# ---------------------------------------------------------------------------------------------------------------
# PlanSettings (the LM Planner node, "5 Hz LM planner" on the command line); flat names lm_*
# ---------------------------------------------------------------------------------------------------------------

PLAN_OPTIONS: tuple[Option, ...] = (
    Option("mode", "choice", "off", "think: the LM writes the metas you left out and a caption, then the audio "
           "codes the DiT follows; codes: only the codes, your metas as given; off: no LM.", choices=LM_MODES,
           key="lm_mode", flag="--lm-mode"),
    Option("cfg_scale", "float", LM_CFG_SCALE, "How strongly the codes follow caption and lyrics (1 = off).",
           lo=LM_CFG_SCALE_MIN, hi=LM_CFG_SCALE_MAX, key="lm_cfg_scale", flag="--lm-cfg", hint=" (1 = no CFG)",
           step=0.05),
    Option("temperature", "float", LM_TEMPERATURE, "Randomness of the LM's choices (0 = always the likeliest "
           "token).", lo=0.0, hi=LM_TEMPERATURE_MAX, key="lm_temperature", flag="--lm-temperature",
           hint=" (0 = greedy)", step=0.01),
    Option("top_p", "float", LM_TOP_P, "Nucleus sampling: only the likeliest tokens that make up this much "
           "probability (1 = off).", lo=0.0, hi=1.0, key="lm_top_p", flag="--lm-top-p", hint=" (1 = off)",
           step=0.01, advanced=True),
    Option("top_k", "int", LM_TOP_K, "Only the k likeliest tokens (0 = off).", lo=0, hi=LM_TOP_K_MAX,
           key="lm_top_k", flag="--lm-top-k", hint=" (0 = off)", advanced=True),
    Option("min_p", "float", LM_MIN_P, "Drop tokens less likely than this fraction of the likeliest (0 = off).",
           lo=0.0, hi=1.0, key="lm_min_p", flag="--lm-min-p", hint=" (0 = off)", step=0.01, advanced=True),
    Option("seed", "seed", None, "The LM's seed; song i of a batch uses seed + i (a list: one per song).", lo=0,
           hi=SEED_MAX, key="lm_seed", flag="--lm-seed", auto_help="the sampler's seed of each song"),
    Option("negative_prompt", "text", LM_NO_USER_INPUT, "What the codes should move away from (the CFG's other "
           "branch; blank = the default).", key="lm_negative_prompt", flag="--lm-negative-prompt", advanced=True),
    Option("rewrite_caption", "bool", True, "think: give the DiT the LM's richer caption instead of yours.",
           key="lm_rewrite_caption", flag="--no-rewrite-caption"),
    Option("decide", "fields", LM_DECIDE_FIELDS, "think: what the LM may write when you leave it out (what you give "
           "is always kept; the language only steers its own reasoning, the DiT keeps yours); none = nothing.",
           choices=LM_DECIDE_FIELDS, key="lm_decide", flag="--lm-decide", metavar="FIELDS", check="check_lm_decide"),
)

# ---------------------------------------------------------------------------------------------------------------
# Task fields a user sets (the latent nodes, "task and source audio" on the command line)
# ---------------------------------------------------------------------------------------------------------------

TASK_OPTIONS: tuple[Option, ...] = (
    Option("duration", "float", None, "Length of a new song in seconds (text2music; audio tasks follow the "
           "source).", lo=DURATION_MIN, hi=DURATION_MAX, flag="--duration", hint=" seconds", step=0.1,
           auto_help=f"{DEFAULT_DURATION:g} s, or the LM's choice when it may decide the duration"),
    Option("start", "float", None, "repaint / lego: start of the window to regenerate, seconds on the source; "
           "extend: where the new part starts (negative = before the song).", key="repaint_start", label="start",
           flag="--start",
           auto_help="the start of the source (repaint)"),
    Option("end", "float", None, "End of the window, seconds (beyond the source's end = extend after it).",
           key="repaint_end", label="end", flag="--end",
           auto_help=f"repaint: the end of the source; extend: start + {DEFAULT_EXTEND_SECONDS:g}"),
    Option("tracks", "fields", (), "extract / lego: one track name; complete: the tracks to build around the "
           "source.", choices=TRACK_NAMES, flag="--track", metavar="TRACK", widget="track, more_tracks"),
    Option("repaint_mode", "choice", REPAINT_MODES[0], "balanced: blend the edges; conservative: keep more of the "
           "original near the edges; aggressive: no blending, the whole output is regenerated audio.",
           choices=REPAINT_MODES, flag="--repaint-mode", widget="mode"),
    Option("repaint_strength", "float", 0.5, "How far the window may move away from the original "
           "(balanced/conservative).", lo=0.0, hi=1.0, flag="--repaint-strength", widget="strength", step=0.01),
    Option("cover_strength", "float", 1.0, "Share of the steps that follow the source's structure; lower values "
           "hand the last steps to the caption alone (looser cover).", lo=0.0, hi=1.0, key="audio_cover_strength",
           label="cover_strength", flag="--cover-strength", step=0.01),
    Option("cover_noise", "float", 0.0, "0 = start from pure noise. Higher values start from the source audio "
           "itself, partly noised (closer to the original sound).", lo=0.0, hi=1.0, key="cover_noise_strength",
           label="cover_noise", flag="--cover-noise", widget="noise_strength", step=0.01),
    Option("batch_size", "int", 1, f"How many songs to generate at once (1–{MAX_BATCH_SIZE}); each gets its own "
           "seed (seed, seed+1, …).", lo=1, hi=MAX_BATCH_SIZE, flag="--batch"),
    Option("vae_encode", "choice", VAE_ENCODE_MODES[0], "How the source becomes latents: sample = a draw from the "
           "VAE posterior, as the original (follows the seed); mean = the posterior mean (the same latents every "
           "run).", choices=VAE_ENCODE_MODES, flag="--vae-encode", advanced=True),
)

FLOW_EDIT_OPTIONS: tuple[Option, ...] = (
    Option("source_caption", "text", "", "Flow-edit: a caption describing the source as it is.",
           key="flow_edit_source_caption", flag="--source-caption", advanced=True),
    Option("source_lyrics", "text", "", "Flow-edit: the source's lyrics as they are.", key="flow_edit_source_lyrics",
           flag="--source-lyrics", advanced=True),
    Option("n_min", "float", 0.0, "Flow-edit: the part of the schedule where editing starts (0 = the first step).",
           lo=0.0, hi=1.0, key="flow_edit_n_min", flag="--edit-n-min", widget="edit_n_min", step=0.01,
           advanced=True),
    Option("n_max", "float", 1.0, "Flow-edit: where editing stops; the rest follows the caption alone.", lo=0.0,
           hi=1.0, key="flow_edit_n_max", flag="--edit-n-max", widget="edit_n_max", step=0.01, advanced=True),
    Option("n_avg", "int", 1, "Flow-edit: noise draws averaged per step (each costs two model passes).", lo=1,
           hi=FLOW_EDIT_MAX_AVG, key="flow_edit_n_avg", flag="--edit-n-avg", widget="edit_n_avg", advanced=True),
)

TABLES = {"text": SONG_OPTIONS, "sampler": SAMPLER_OPTIONS, "render": RENDER_OPTIONS, "lm": PLAN_OPTIONS, "task": TASK_OPTIONS,
          "flow_edit": FLOW_EDIT_OPTIONS}
BY_KEY: dict[str, Option] = {o.key: o for table in TABLES.values() for o in table}
PART_OF: dict[str, str] = {o.key: part for part, table in TABLES.items() for o in table}


def option(part: str, name: str) -> Option:
    return next(o for o in TABLES[part] if o.name == name)


def default(part: str, name: str):
    """A settings dataclass field's default (``field = default("sampler", "steps")``)."""
    return option(part, name).default


def check_option(opt: Option, value, name: str | None = None):
    """The value in its canonical form, or :class:`~acestep_core.errors.InputError` naming ``name`` (the option's
    flat name by default). None passes where the default is None ("decided per run")."""

    name = name or opt.label
    if value is None and opt.default is None:
        return None
    if opt.check:
        return getattr(checks, opt.check)(value)
    if opt.kind == "int":
        return checks.check_int(name, value, opt.lo, opt.hi, opt.hint)
    if opt.kind == "float":
        return checks.check_number(name, value, opt.lo, opt.hi, opt.hint)
    if opt.kind == "choice":
        return checks.check_choice(name, value, opt.choices)
    if opt.kind in ("bool", "switch"):
        return checks.check_bool(name, value)
    if opt.kind == "text":
        return checks.check_text(name, value)
    if opt.kind == "seed":
        return checks.check_seed(value, name=name)
    if opt.kind == "timesteps":
        return checks.check_timesteps(value)
    raise AssertionError(f"{opt.key}: a {opt.kind} option needs its own check")


def check_part(obj, part: str) -> None:
    """Check every table field of a frozen settings dataclass in place (canonical values written back)."""
    for opt in TABLES[part]:
        object.__setattr__(obj, opt.name, check_option(opt, getattr(obj, opt.name)))


# ---------------------------------------------------------------------------------------------------------------
# Docs: request()'s docstring and the README's option lists
# ---------------------------------------------------------------------------------------------------------------


def names(part: str) -> str:
    """The flat request names of a part, comma-separated (for docstrings)."""
    return ", ".join(o.key for o in TABLES[part])


def markdown(part: str) -> str:
    """A part's option table for the README: request name, CLI flag, node input, default, range, what it does."""
    rows = ["| `request()` | command line | node input | default | allowed | what it does |",
            "|---|---|---|---|---|---|"]
    for o in TABLES[part]:
        allowed = o.allowed().replace("|", "\\|")
        # a fields option on one widget name is one switch per field (decide_bpm, …)
        widgets = [f"{o.widget}_<field>"] if o.kind == "fields" and "," not in o.widget else o.widget.split(", ")
        rows.append(f"| `{o.key}` | {f'`{o.flag}`' if o.flag else ''} | {', '.join(f'`{w}`' for w in widgets)} | "
                    f"{o.default_text()} | {allowed} | {o.help} |")
    return "\n".join(rows)


README_BEGIN = "<!-- options:{part} (generated from acestep_core/options.py: scripts/build_docs.py) -->"
README_END = "<!-- /options:{part} -->"


def readme_with_tables(text: str) -> str:
    """The README text with each generated option block replaced by the table's current rendering."""
    for part in TABLES:
        begin, end = README_BEGIN.format(part=part), README_END.format(part=part)
        if begin not in text:
            continue
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{begin}\n{markdown(part)}\n{end}{tail}"
    return text


assert all(math.isfinite(o.lo) and math.isfinite(o.hi) for t in TABLES.values() for o in t if o.lo is not None)
