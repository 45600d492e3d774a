"""The ACE-Step 1.5 nodes (ComfyUI V3 API). Each node is a schema and an ``execute`` that hands its inputs to
``acestep_core``; all model work happens there, all ComfyUI services come through ``comfy_adapter``.

Graph: Model Loader → Caption & Lyrics (→ Timbre Reference) → an init-latent node (Empty Latent, or a task node
fed with a source AUDIO) → Sampler → VAE Decode → Save Audio / any native audio node.

Latents are ComfyUI's standard ``LATENT`` (``{"samples": [B, 64, T], "type": "audio"}``, 25 frames/s), so they
chain with native audio nodes; our init-latent nodes add the task under ``LATENT_TASK_KEY``.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import replace

import torch
from comfy_api.latest import io

from ..acestep_core import planning
from ..acestep_core.audio import SUPPORTED_EXTENSIONS, check_save_options, save_audio
from ..acestep_core.constants import (
    DEFAULT_DURATION, DTYPES, DURATION_MAX, EXTEND_DIRECTIONS, EXTEND_OVERLAP_MAX, EXTEND_SECONDS_MIN, LATENT_RATE,
    TRACK_NAMES, VARIANTS, VRAM_BUDGET_MAX_GB, WEIGHT_DTYPES,
)
from ..acestep_core.errors import Described, InputError
from ..acestep_core.options import FLOW_EDIT_OPTIONS, RENDER_OPTIONS, SAMPLER_OPTIONS, SONG_OPTIONS, Option, option
from ..acestep_core.checks import check_bpm, check_cfg_interval, check_timesteps
from ..acestep_core.request import (
    AudioClip, FlowEdit, PlanSettings, RenderSettings, Request, SamplerSettings, SongText, Task,
)
from ..acestep_core.tasks import check_tracks, check_window, extend_window
from . import comfy_adapter as host
from . import models
from . import ui as node_ui

CATEGORY = "audio/ACE-Step 1.5"
PREFIX = "AceStep15_"
LATENT_TASK_KEY = "acestep_task"  # the Task, carried inside a LATENT dict from a latent node to the sampler/decoder
LATENT_SOURCE_KEY = "acestep_source"  # the source as the sampler prepared it, reused by VAE Decode
LATENT_PLAN_KEY = "acestep_plan"  # (PlanSettings, plans) from the LM Planner: the sampler runs the planned song
LATENT_ALIGNMENT_KEY = "acestep_alignment"  # the Sampler's pipeline.AlignmentInputs (CPU), for Lyric Timestamps
LATENT_CHANNELS = 64  # ACE-Step 1.5 VAE latent channels (canvas of the init-latent nodes)
AUTO = "auto"
SAVE_FORMATS = tuple(ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS)
SAVE_QUALITIES = ("default", "16", "24", "float", "V0", "64k", "96k", "128k", "192k", "256k", "320k")

AceStepModel = io.Custom("ACESTEP_MODEL")
AceStepText = io.Custom("ACESTEP_TEXT")
AceStepLyricTiming = io.Custom("ACESTEP_LYRIC_TIMING")  # per song: its sung lines (timestamps.LyricLine)

_MODEL_TIP = "The ACE-Step 1.5 model from the ACE-Step 1.5 Model Loader."


def _message(check) -> bool | str:
    """A core check as ComfyUI's validate_inputs wants it: True, or the error's one-line message."""
    try:
        check()
    except InputError as e:
        return str(e)
    return True


def node_tooltip(opt: Option) -> str:
    """An option's help as the widget's tooltip, with what its "auto" value means."""
    if opt.kind == "switch" or (opt.default is None and opt.auto not in (None, "")):
        return f"{opt.help} {opt.widget_default} = auto, {opt.auto_help}."
    if opt.default is None and opt.auto == "":
        return f"{opt.help} Empty = {opt.auto_help}."
    return opt.help


def option_input(opt: Option, **extra):
    """The node widget of an option (``acestep_core.options``): its default (or "auto" value), limits, choices,
    step, tooltip and advanced flag; ``extra`` adds widget-only settings (control_after_generate, multiline)."""
    kw = dict(tooltip=node_tooltip(opt), advanced=opt.advanced, **extra)
    if opt.kind in ("int", "seed"):
        return io.Int.Input(opt.widget, default=opt.widget_default, min=opt.widget_min, max=opt.hi,
                            **({"step": opt.step} if opt.step else {}), **kw)
    if opt.kind == "float":
        return io.Float.Input(opt.widget, default=opt.widget_default, min=opt.widget_min, max=opt.hi,
                              step=opt.step or 0.01, **kw)
    if opt.kind in ("choice", "switch"):
        return io.Combo.Input(opt.widget, options=list(opt.widget_choices), default=opt.widget_default, **kw)
    if opt.kind == "bool":
        return io.Boolean.Input(opt.widget, default=opt.widget_default, **kw)
    return io.String.Input(opt.widget, default=opt.widget_default, **kw)


def from_widgets(options, widgets: dict) -> dict:
    """Settings keyword arguments from a node's widget values (a widget not sent takes its default, as an
    explicit ``execute`` default would)."""
    return {o.name: o.from_widget(widgets.get(o.widget, o.widget_default)) for o in options}


@contextlib.contextmanager
def _named_as_inputs(names: dict[str, str]):
    """A core error about a request field re-raised under the node's own name for that input (``names``: field →
    input), so the message names what the user sees on the node."""
    try:
        yield
    except InputError as e:
        if e.name not in names:
            raise
        raise InputError(names[e.name], e.value, e.allowed) from None


def _latent(latents: torch.Tensor, **extra) -> dict:
    """Core latents [B, T, C] → ComfyUI's audio LATENT ({"samples": [B, C, T] on the CPU, "type": "audio"})."""
    return {"samples": latents.transpose(1, 2).contiguous().cpu(), "type": "audio", **extra}


def _audio_clip(audio: dict, name: str = "audio") -> AudioClip:
    """The first item of an AUDIO input as a checked AudioClip."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise InputError(name, audio, "an AUDIO value ({'waveform': [batch, channels, samples], 'sample_rate': int})")
    wav = audio["waveform"]
    if not isinstance(wav, torch.Tensor) or wav.dim() != 3 or wav.shape[0] < 1:
        raise InputError(name, wav, "an AUDIO waveform [batch, channels, samples]")
    return AudioClip(wav[0], audio["sample_rate"], name)


def task_canvas(task: Task, **extra) -> dict:
    """A LATENT canvas of the result's length carrying the task (and ``extra`` keys)."""
    frames = max(1, round(task.seconds * LATENT_RATE))
    canvas = torch.zeros(task.batch_size, LATENT_CHANNELS, frames)
    return {"samples": canvas, "type": "audio", LATENT_TASK_KEY: task, **extra}


def _task_latent(task: Task) -> io.NodeOutput:
    """A LATENT canvas of the result's length carrying the task; the UI output has the source's peaks."""
    return io.NodeOutput(task_canvas(task), ui=node_ui.source_ui(task))


def _batch_input() -> io.Int.Input:
    return option_input(option("task", "batch_size"))


def _duration_input() -> io.Float.Input:
    """A new song needs a length: the request's fallback for "none given" (120 s) is shown as the default."""
    duration = option("task", "duration")
    return option_input(replace(duration, default=DEFAULT_DURATION, help=duration.help + " Also written into the "
                                "prompt's metadata; quality is best up to about 4 minutes."))


def _vae_encode_input() -> io.Combo.Input:
    return option_input(option("task", "vae_encode"))


# ---------------------------------------------------------------------------------------------------- loader

class ModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "ModelLoader",
            display_name="ACE-Step 1.5 Model Loader",
            category=CATEGORY,
            description="Loads an ACE-Step 1.5 model (turbo, base, SFT or XL) with its VAE and text encoder, from "
                        "the official folders in models/acestep/ or the Comfy-Org files in diffusion_models/ "
                        "(text_encoders/, vae/) or checkpoints/ (all-in-one). Shows the detected variant.",
            inputs=[
                io.Combo.Input("model", options=models.model_choices(),
                               tooltip="acestep/…: an official model folder (acestep-v15-turbo, …) under "
                                       "models/acestep/. diffusion_models/…: a Comfy-Org DiT file. checkpoints/…: "
                                       "the all-in-one file."),
                io.Combo.Input("text_encoder", options=models.component_choices("text_encoders"), default=AUTO,
                               tooltip="Qwen3-Embedding-0.6B text encoder. auto: the official folder's own, or "
                                       "qwen_0.6b_ace15.safetensors from models/text_encoders/."),
                io.Combo.Input("vae", options=models.component_choices("vae"), default=AUTO,
                               tooltip="The ACE-Step 1.5 VAE. auto: the official folder's own, or "
                                       "ace_1.5_vae.safetensors from models/vae/."),
                io.Combo.Input("dtype", options=list(DTYPES), default=AUTO,
                               tooltip="Weight precision. auto: bf16 where the GPU supports it (as the original "
                                       "runs), else fp32. fp16 can overflow into silence on some inputs."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default=WEIGHT_DTYPES[0], advanced=True,
                               tooltip="default: as the file stores them. fp8_*: the DiT's Linear weights in 8 bits "
                                       "with one scale per output channel (about half the DiT's memory, a small "
                                       "error; see the README); _fast: the GPU's fp8 matmul (RTX 40xx and newer)."),
                io.Float.Input("vram_budget", default=0.0, min=0.0, max=VRAM_BUDGET_MAX_GB, step=0.5, advanced=True,
                               tooltip="GB of GPU memory to plan for; 0 = what ComfyUI can give (its --reserve-vram "
                                       "honoured). Below what the model needs, its parts take turns on the GPU and "
                                       "DiT layers stream from CPU memory."),
                io.Int.Input("resident_layers", default=-1, min=-1, max=64, advanced=True,
                             tooltip="DiT layers kept on the GPU, the others streamed; -1 = as many as the budget "
                                     "allows."),
            ],
            outputs=[
                AceStepModel.Output(display_name="model", tooltip="The loaded model for the other ACE-Step nodes."),
                io.String.Output(display_name="variant",
                                 tooltip="turbo, base, sft, xl_turbo, xl_base or xl_sft (how it was detected is "
                                         "shown on the node)."),
            ],
        )

    @classmethod
    def execute(cls, model, text_encoder=AUTO, vae=AUTO, dtype=AUTO, weight_dtype="default", vram_budget=0.0,
                resident_layers=-1) -> io.NodeOutput:
        loaded = models.load_model(model, text_encoder, vae, dtype, weight_dtype, vram_budget, resident_layers)
        return io.NodeOutput(loaded, loaded.variant, ui={"text": [loaded.describe()]})


# ---------------------------------------------------------------------------------------------------- text

class TextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "TextEncode",
            display_name="ACE-Step 1.5 Caption & Lyrics",
            category=CATEGORY,
            description="The song's description: caption (style, instruments, mood), lyrics with [Verse]/[Chorus] "
                        "tags, and optional metadata. The task instruction is added by the latent node, and the "
                        "length comes from the latent. Encoded by the sampler with the model's text encoder.",
            inputs=[
                *[option_input(o, **({"multiline": True} if o.kind == "text" else {})) for o in SONG_OPTIONS],
            ],
            outputs=[AceStepText.Output(display_name="conditioning",
                                        tooltip="Caption, lyrics and metadata for the ACE-Step 1.5 Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, bpm=None) -> bool | str:
        return _message(lambda: check_bpm(bpm))

    @classmethod
    def execute(cls, **widgets) -> io.NodeOutput:
        return io.NodeOutput(SongText(**from_widgets(SONG_OPTIONS, widgets)))


class TimbreReference(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "TimbreReference",
            display_name="ACE-Step 1.5 Timbre Reference",
            category=CATEGORY,
            description="Adds a reference recording whose timbre (voice, instruments, mix) the song should follow. "
                        "Three 10-second pieces are taken from its thirds (the choice follows the seed).",
            inputs=[
                AceStepText.Input("conditioning", tooltip="From ACE-Step 1.5 Caption & Lyrics."),
                io.Audio.Input("audio", tooltip="Reference audio from Load Audio or any audio node (the first "
                                                "item of a batch is used); must not be silent."),
            ],
            outputs=[AceStepText.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, conditioning, audio) -> io.NodeOutput:
        return io.NodeOutput(replace(conditioning, timbre=_audio_clip(audio)))


# ---------------------------------------------------------------------------------------------------- latents

class EmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "EmptyLatent",
            display_name="ACE-Step 1.5 Empty Latent",
            category=CATEGORY,
            description="Starts a new song (text to music): sets its length and how many to make. The sampler "
                        "fills the context with the model's silence latent, as the original does.",
            inputs=[
                _duration_input(),
                _batch_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, duration, batch_size=1) -> io.NodeOutput:
        return _task_latent(Task("text2music", duration=duration, batch_size=batch_size))


class CoverLatent(io.ComfyNode):
    NAMES = {"cover_noise": "noise_strength", "flow_edit_source_caption": "source_caption",
             "flow_edit_source_lyrics": "source_lyrics", "flow_edit_n_min": "edit_n_min",
             "flow_edit_n_max": "edit_n_max", "flow_edit_n_avg": "edit_n_avg"}  # request field → this node's input

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "CoverLatent",
            display_name="ACE-Step 1.5 Cover (from audio)",
            category=CATEGORY,
            description="Re-creates a song in a new style: the source's melody and structure (as 5 Hz semantic "
                        "hints) guide a new performance described by the caption and lyrics.",
            inputs=[
                io.Audio.Input("audio", tooltip="The song to cover (first item of a batch)."),
                option_input(option("task", "cover_strength")),
                option_input(option("task", "cover_noise")),
                _batch_input(),
                io.Boolean.Input("raw_remix", default=False, advanced=True,
                                 tooltip="Follow the source's own latents instead of its 5 Hz semantic hints "
                                         "(upstream's cover-nofsq: closer to the source's sound)."),
                _vae_encode_input(),
                io.Boolean.Input("flow_edit", default=False, advanced=True,
                                 tooltip="Flow-edit morph: move the source from what it is (source caption/lyrics) "
                                         "towards the caption and lyrics, instead of generating anew."),
                *[option_input(o, **({"multiline": True} if o.kind == "text" else {})) for o in FLOW_EDIT_OPTIONS],
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def validate_inputs(cls, flow_edit=None, edit_n_min=None, edit_n_max=None) -> bool | str:
        if not flow_edit or edit_n_min is None or edit_n_max is None:  # off, or linked: checked when it runs
            return True

        def check():
            with _named_as_inputs(cls.NAMES):
                FlowEdit(n_min=edit_n_min, n_max=edit_n_max)
        return _message(check)

    @classmethod
    def execute(cls, audio, cover_strength=1.0, noise_strength=0.0, batch_size=1, raw_remix=False,
                vae_encode="sample", flow_edit=False, source_caption="", source_lyrics="", edit_n_min=0.0,
                edit_n_max=1.0, edit_n_avg=1) -> io.NodeOutput:
        with _named_as_inputs(cls.NAMES):
            morph = FlowEdit(source_caption=source_caption, source_lyrics=source_lyrics, n_min=edit_n_min,
                             n_max=edit_n_max, n_avg=edit_n_avg) if flow_edit else None
            return _task_latent(Task("cover-nofsq" if raw_remix else "cover", _audio_clip(audio),
                                     cover_strength=cover_strength, cover_noise=noise_strength,
                                     batch_size=batch_size, vae_encode=vae_encode, flow_edit=morph))


class RepaintLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "RepaintLatent",
            display_name="ACE-Step 1.5 Repaint (from audio)",
            category=CATEGORY,
            description="Regenerates one time window of a song (new lyrics, a better chorus, a fixed glitch) and "
                        "keeps the rest; the window's edges are blended into the original.",
            inputs=[
                io.Audio.Input("audio", tooltip="The song to edit (first item of a batch)."),
                io.Float.Input("start", default=0.0, min=0.0, max=DURATION_MAX, step=0.1,
                               tooltip="Start of the window to regenerate, in seconds."),
                io.Float.Input("end", default=-1.0, min=-1.0, max=DURATION_MAX, step=0.1,
                               tooltip="End of the window in seconds; -1 = the end of the song."),
                option_input(option("task", "repaint_mode")),
                option_input(option("task", "repaint_strength")),
                _batch_input(),
                _vae_encode_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def validate_inputs(cls, start=None, end=None) -> bool | str:
        if start is None or end is None:  # linked from another node: checked when the node runs
            return True
        return _message(lambda: check_window("repaint", start, end))

    @classmethod
    def execute(cls, audio, start=0.0, end=-1.0, mode="balanced", strength=0.5, batch_size=1,
                vae_encode="sample") -> io.NodeOutput:
        return _task_latent(Task("repaint", _audio_clip(audio), start=start, end=end, repaint_mode=mode,
                                 repaint_strength=strength, batch_size=batch_size, vae_encode=vae_encode))


class ExtendLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "ExtendLatent",
            display_name="ACE-Step 1.5 Extend (from audio)",
            category=CATEGORY,
            description="Continues a song: adds new music after its end (or before its start), matching what is "
                        "there. A little overlap lets the model smooth the join.",
            inputs=[
                io.Audio.Input("audio", tooltip="The song to extend (first item of a batch)."),
                io.Combo.Input("direction", options=list(EXTEND_DIRECTIONS), default=EXTEND_DIRECTIONS[0],
                               tooltip="Where the new music goes."),
                io.Float.Input("seconds", default=30.0, min=EXTEND_SECONDS_MIN, max=DURATION_MAX, step=0.5,
                               tooltip="How many seconds of new music."),
                io.Float.Input("overlap", default=0.0, min=0.0, max=EXTEND_OVERLAP_MAX, step=0.5,
                               tooltip="Seconds of the existing song next to the join that may be regenerated too."),
                option_input(option("task", "repaint_mode")),
                _batch_input(),
                _vae_encode_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, audio, direction=EXTEND_DIRECTIONS[0], seconds=30.0, overlap=0.0, mode="balanced",
                batch_size=1, vae_encode="sample") -> io.NodeOutput:
        source = _audio_clip(audio)
        return _task_latent(Task("extend", source, window=extend_window(source.seconds, direction, seconds, overlap),
                                 repaint_mode=mode, batch_size=batch_size, vae_encode=vae_encode))


class StemLatent(io.ComfyNode):
    STEM_TASKS = ("extract", "lego", "complete")

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "StemLatent",
            display_name="ACE-Step 1.5 Stems: Extract / Lego / Complete",
            category=CATEGORY,
            description="Track-level tasks (base model recommended). extract: isolate one track (e.g. vocals). "
                        "lego: add one new track to the song. complete: build a full arrangement around the source "
                        "from the listed tracks.",
            inputs=[
                io.Audio.Input("audio", tooltip="The source song or track (first item of a batch)."),
                io.Combo.Input("task", options=list(cls.STEM_TASKS), default="extract",
                               tooltip="extract, lego or complete (see the node description)."),
                io.Combo.Input("track", options=list(TRACK_NAMES), default="vocals",
                               tooltip="The track to extract or to add (lego); the first track for complete."),
                io.String.Input("more_tracks", default="",
                                tooltip="complete only: further track names, comma-separated (e.g. 'drums, bass')."),
                _batch_input(),
                _vae_encode_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def validate_inputs(cls, task=None, track=None, more_tracks=None) -> bool | str:
        if task is None or track is None:  # linked from another node: checked when the node runs
            return True
        return _message(lambda: check_tracks(f"{track},{more_tracks or ''}", task))

    @classmethod
    def execute(cls, audio, task="extract", track="vocals", more_tracks="", batch_size=1,
                vae_encode="sample") -> io.NodeOutput:
        return _task_latent(Task(task, _audio_clip(audio), tracks=f"{track},{more_tracks}", batch_size=batch_size,
                                 vae_encode=vae_encode))


# ---------------------------------------------------------------------------------------------------- sampler

class Sampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "Sampler",
            display_name="ACE-Step 1.5 Sampler",
            category=CATEGORY,
            description="Generates the song's latents for the latent's task, as the newest official app does: turbo "
                        "without guidance and with DCW, base/SFT with APG guidance. 0 in steps, shift or guidance = "
                        "the variant's default (turbo 8/3.0/off, base 32/3.0/7.0, SFT 50/3.0/7.0). Advanced: DCW, "
                        "Heun/SDE sampling, velocity EMA, retake variations.",
            inputs=[
                AceStepModel.Input("model", tooltip=_MODEL_TIP),
                AceStepText.Input("conditioning", tooltip="From Caption & Lyrics (or Timbre Reference)."),
                io.Latent.Input("latent", tooltip="From an ACE-Step 1.5 latent node (the task), or any audio "
                                                  "LATENT (then: text to music of that length and batch)."),
                *[option_input(o, **({"control_after_generate": True} if o.name == "seed" else {}))
                  for o in SAMPLER_OPTIONS],
            ],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="Generated latents; decode with ACE-Step 1.5 VAE Decode.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, timesteps=None, cfg_interval_start=None, cfg_interval_end=None) -> bool | str:
        checked = _message(lambda: check_timesteps(timesteps))
        if checked is not True or cfg_interval_start is None or cfg_interval_end is None:
            return checked
        return _message(lambda: check_cfg_interval(cfg_interval_start, cfg_interval_end))

    @classmethod
    def execute(cls, model, conditioning, latent, **widgets) -> io.NodeOutput:
        task = _latent_task(latent)
        settings = SamplerSettings(**from_widgets(SAMPLER_OPTIONS, widgets))
        pipe = model.pipeline
        lm_settings, plans = latent.get(LATENT_PLAN_KEY) or (PlanSettings(), ())
        result = pipe(Request(conditioning, task, settings, None, lm_settings, plans),
                      on_step=host.Progress(cls.hidden.unique_id), should_cancel=host.check_interrupted,
                      adapters=model.pipeline_adapters)
        meta = result.metadata
        lines = [f"{meta['variant']} · {meta['task']} · {meta['steps']} steps · shift {meta['shift']} · "
                 f"guidance {meta['guidance']} · {meta['sampler']} · DCW {meta['dcw']} · "
                 f"seeds {', '.join(map(str, result.seeds))}"]
        if "retake_seeds" in meta:
            lines.append(f"retake {meta['retake_variance']:g} · seeds {', '.join(map(str, meta['retake_seeds']))}")
        if result.request is not None and result.request.plans:
            lines.append(planning.summary(result.request))
        if task.rule.base_only and VARIANTS[meta["variant"]].kind != "base":
            lines.append(f"note: the official app offers {task.kind} only on the base model")
        if meta.get("memory"):
            lines.append(meta["memory"])
        lines += [f"warning: {w}" for w in result.warnings]
        out = _latent(result.latents, **{LATENT_TASK_KEY: task, LATENT_SOURCE_KEY: result.source,
                                         LATENT_ALIGNMENT_KEY: result.alignment.to("cpu")})
        return io.NodeOutput(out, ui={"text": ["\n".join(lines)]})


def _latent_task(latent: dict) -> Task:
    """The task a LATENT carries; a plain audio LATENT (e.g. from a native node) is text to music of its length
    and batch."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.dim() != 3:
        raise InputError("latent", samples, "an audio LATENT [batch, channels, frames]")
    batch, frames = samples.shape[0], samples.shape[-1]
    task = latent.get(LATENT_TASK_KEY)
    if task is None:
        return Task("text2music", duration=round(frames / LATENT_RATE, 2), batch_size=batch)
    return task if task.batch_size == batch else replace(task, batch_size=batch)


# ---------------------------------------------------------------------------------------------------- VAE

class VAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "VAEDecode",
            display_name="ACE-Step 1.5 VAE Decode",
            category=CATEGORY,
            description="Latents → 48 kHz stereo AUDIO for Save/Preview or any audio node. Decodes in tiles (long "
                        "songs fit in little VRAM), removes clipping, and for repaint/extend puts the untouched "
                        "parts of the source back sample-exactly.",
            inputs=[
                AceStepModel.Input("model", tooltip=_MODEL_TIP),
                io.Latent.Input("latent", tooltip="From the ACE-Step 1.5 Sampler (or any ACE-Step 1.5 audio "
                                                  "LATENT)."),
                *map(option_input, RENDER_OPTIONS),
            ],
            outputs=[io.Audio.Output(display_name="audio")],
        )

    @classmethod
    def execute(cls, model, latent, **widgets) -> io.NodeOutput:
        pipe = model.pipeline
        settings = RenderSettings(**from_widgets(RENDER_OPTIONS, widgets))
        samples = latent.get("samples") if isinstance(latent, dict) else None
        channels = pipe.ckpt.vae.config.decoder_input_channels
        if not isinstance(samples, torch.Tensor) or samples.dim() != 3 or samples.shape[1] != channels:
            raise InputError("latent", samples, f"an ACE-Step 1.5 audio LATENT [batch, {channels}, frames]")
        latents = samples.transpose(1, 2).float()
        task = latent.get(LATENT_TASK_KEY)
        if task is not None:
            audio = pipe.render(latents, task, settings, latent.get(LATENT_SOURCE_KEY))
        else:
            audio = pipe.decode(latents, settings)
        return io.NodeOutput(node_ui.tag_edit({"waveform": audio.float().cpu(), "sample_rate": pipe.sample_rate}, task))


class VAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "VAEEncode",
            display_name="ACE-Step 1.5 VAE Encode",
            category=CATEGORY,
            description="AUDIO → ACE-Step 1.5 latents (posterior mean, tiled), e.g. for native latent nodes. "
                        "For cover/repaint/extend use the task latent nodes, which take AUDIO directly.",
            inputs=[
                AceStepModel.Input("model", tooltip=_MODEL_TIP),
                io.Audio.Input("audio", tooltip="Any audio; resampled to 48 kHz stereo first."),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, audio) -> io.NodeOutput:
        clip = _audio_clip(audio)
        clips = [AudioClip(w, clip.sample_rate, "audio") for w in audio["waveform"]]
        return io.NodeOutput(_latent(model.pipeline.encode(clips)))


# ---------------------------------------------------------------------------------------------------- save

def _write_audio(cls, audio: dict, prefix: str, directory: str, folder_type: str, fmt: str, quality: str) -> list:
    """One file per batch item named like ComfyUI's savers, prompt/workflow embedded; returns the UI entries."""
    if fmt not in SAVE_FORMATS:
        raise ValueError(f"format={fmt!r} is not allowed: one of {', '.join(SAVE_FORMATS)}")
    quality = None if quality in (None, "", "default") else quality
    check_save_options(f"x.{fmt}", quality)  # before writing anything
    waveform = audio["waveform"]
    if waveform.dim() == 2:
        waveform = waveform[None]
    metadata = {}
    if host.metadata_enabled() and cls.hidden is not None:
        if cls.hidden.prompt is not None:
            metadata["prompt"] = json.dumps(cls.hidden.prompt)
        for key, value in (cls.hidden.extra_pnginfo or {}).items():
            metadata[key] = json.dumps(value)
    target = host.save_target(prefix, directory)
    results, written = [], []
    items = waveform.float().cpu()
    try:  # all or nothing: a failing item removes the files of the items before it
        for i, item in enumerate(items):
            name = f"{target.filename.replace('%batch_num%', str(i))}_{target.counter + i:05}_.{fmt}"
            try:
                written.append(save_audio(os.path.join(target.folder, name), item, int(audio["sample_rate"]),
                                          metadata, quality))
            except ValueError as e:
                raise InputError("audio", Described(f"<batch item {i + 1} of {len(items)}>"),
                                 f"{e} (nothing of the batch was saved)") from None
            results.append({"filename": name, "subfolder": target.subfolder, "type": folder_type})
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return results


class SaveAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "SaveAudio",
            display_name="ACE-Step 1.5 Save Audio",
            category=CATEGORY,
            description="Saves each song of the batch to ComfyUI's output folder as FLAC, MP3, Opus or WAV, with "
                        "the workflow embedded (drag the file back into ComfyUI to get the graph), and plays it.",
            inputs=[
                io.Audio.Input("audio", tooltip="Audio to save."),
                io.String.Input("filename_prefix", default="audio/ACE-Step",
                                tooltip="Sub-folder and file name start inside output/; %batch_num% is replaced by "
                                        "the item number."),
                io.Combo.Input("format", options=list(SAVE_FORMATS), default="flac",
                               tooltip="flac: lossless; mp3/opus: small files; wav: uncompressed (keeps no "
                                       "workflow)."),
                io.Combo.Input("quality", options=list(SAVE_QUALITIES), default="default",
                               tooltip="default: flac/wav 16-bit, mp3 V0, opus 128k. flac: 16/24; wav: 16/24/float; "
                                       "mp3: V0 or a bit rate; opus: a bit rate."),
                _lyric_timing_input("also write each song's lines as .lrc and .vtt next to its file, and show "
                                    "the current line while playing"),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, format=None, quality=None) -> bool | str:
        # Only the inputs named here skip ComfyUI's own checks (a **kwargs signature would skip them all).
        if format is None or quality is None:
            return True
        if format not in SAVE_FORMATS:
            return f"format={format!r} is not allowed: one of {', '.join(SAVE_FORMATS)}"
        try:
            check_save_options(f"x.{format}", None if quality == "default" else quality)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, audio, filename_prefix="audio/ACE-Step", format="flac", quality="default",
                lyric_timing=None) -> io.NodeOutput:
        _check_lyric_timing(lyric_timing, audio)
        files = _write_audio(cls, audio, filename_prefix, host.output_directory(), "output", format, quality)
        if lyric_timing is not None:
            node_ui.write_lyric_files(host.output_directory(), files, lyric_timing)
        return io.NodeOutput(ui=node_ui.results_ui(audio, files, lyric_timing))


class PreviewAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "PreviewAudio",
            display_name="ACE-Step 1.5 Preview Audio",
            category=CATEGORY,
            description="Plays the audio on the node without keeping a file in output/ (a temporary FLAC).",
            inputs=[io.Audio.Input("audio", tooltip="Audio to play."),
                    _lyric_timing_input("show the current line while playing")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, audio, lyric_timing=None) -> io.NodeOutput:
        _check_lyric_timing(lyric_timing, audio)
        prefix = "ACE-Step_temp_" + os.urandom(3).hex()
        files = _write_audio(cls, audio, prefix, host.temp_directory(), "temp", "flac", "default")
        return io.NodeOutput(ui=node_ui.results_ui(audio, files, lyric_timing))


def _lyric_timing_input(what: str) -> io.Input:
    return AceStepLyricTiming.Input("lyric_timing", optional=True,
                                    tooltip=f"From ACE-Step 1.5 Lyric Timestamps (optional): {what}.")


def _check_lyric_timing(timing, audio: dict) -> None:
    """One list of lines per song of the AUDIO batch, checked before any file is written."""
    if timing is None:
        return
    songs = audio["waveform"].shape[0] if audio["waveform"].dim() == 3 else 1
    if not isinstance(timing, list) or len(timing) != songs:
        count = len(timing) if isinstance(timing, list) else timing
        raise InputError("lyric_timing", count, f"the lines of {songs} song(s), one per audio item (connect the "
                                                "Lyric Timestamps of the latents this audio was decoded from)")


NODES = [ModelLoader, TextEncode, TimbreReference, EmptyLatent, CoverLatent, RepaintLatent, ExtendLatent, StemLatent,
         Sampler, VAEDecode, VAEEncode, SaveAudio, PreviewAudio]
