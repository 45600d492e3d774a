"""The 5 Hz LM nodes: LM Loader, LM Planner (between Caption & Lyrics and the Sampler), Simple Mode and Understand
Audio. The LM is its own ComfyUI model (``models.LoadedLM``): placed on the GPU only while one of these nodes runs,
with its working memory as ``memory_required``, and its KV cache freed after, so the DiT gets the memory back.

The LM Planner runs the LM itself (ComfyUI then caches its plan: a new sampler seed or step count does not run
the LM again) and hands the planned song on: the conditioning with the metas and caption the LM decided, and a
LATENT carrying the task with each song's audio codes plus the plan (``LATENT_PLAN_KEY``), which the Sampler reads
for the think-mode DCW values and its text.
"""
from __future__ import annotations

import time
from dataclasses import replace

from comfy_api.latest import io

from ..acestep_core.constants import (
    DEFAULT_DURATION, DTYPES, LM_MIN_P,
    LM_TEMPERATURE, LM_TEXT_MAX_NEW_TOKENS, LM_TOP_K, LM_TOP_P,
    LM_UNDERSTAND_TOP_P, SEED_MAX, VALID_LANGUAGES,
)
from ..acestep_core import planning
from ..acestep_core.options import PLAN_OPTIONS, option
from ..acestep_core.checks import check_query
from ..acestep_core.request import PlanSettings, Request, SamplerSettings
from . import comfy_adapter as host
from . import models
from .acestep_nodes import (
    AUTO, CATEGORY, LATENT_PLAN_KEY, PREFIX, AceStepModel, AceStepText, _audio_clip, _latent_task, _message,
    from_widgets, option_input, task_canvas,
)

AceStepLM = io.Custom("ACESTEP_LM")
PLANNER_MODES = ("think", "codes", "off")
_LM_TIP = "The 5 Hz LM from the ACE-Step 1.5 LM Loader."
_DECIDE = option("lm", "decide")  # the LM Planner shows one switch per field it may decide: decide_bpm, …
# Each switch's default: on for what the request lets the LM decide, except the duration (see _decide_input)
_DECIDE_DEFAULT = {name: name in _DECIDE.default and name != "duration" for name in _DECIDE.choices}
BAR_EVERY = 0.1  # seconds between redraws of the progress bar (a token takes milliseconds)


def _progress(node_id) -> planning.TokenClock:
    """Progress on the node: ComfyUI's bar follows each phase's total (redrawn at most every 0.1 s: each redraw is
    a message to every browser), the progress text shows the phase's tokens/s."""
    bar = host.Progress(node_id)
    drawn = [float("-inf")]

    def on_token(phase, done, total):
        now = time.monotonic()
        if done >= total or now - drawn[0] >= BAR_EVERY:
            drawn[0] = now
            bar(done, total)

    return planning.TokenClock(on_token, lambda text: host.progress_text(text, node_id))


def _with_speed(text: str, clock: planning.TokenClock) -> str:
    speed = clock.summary()
    return f"{text}\n{speed}" if speed and text else text or speed


def _seed_input(tooltip: str) -> io.Int.Input:
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True, tooltip=tooltip)


def _sampling_inputs(top_p: float = LM_TOP_P) -> list:
    """The LM's sampling widgets (``options.PLAN_OPTIONS``); understanding runs with its own top-p default."""
    opts = [option("lm", name) for name in ("temperature", "top_p", "top_k", "min_p")]
    return [option_input(replace(o, default=top_p) if o.name == "top_p" else o) for o in opts]


def _decide_input(name: str) -> io.Boolean.Input:
    """The Planner's switch for one field of ``PlanSettings.decide``. The duration's is in view and off by default:
    the latent already sets the song's length, and switching it on lets the LM replace that length."""
    if name == "duration":
        return io.Boolean.Input("decide_duration", default=_DECIDE_DEFAULT[name],
                                tooltip="think: let the LM choose the song's length instead of the latent's.")
    return io.Boolean.Input(f"decide_{name}", default=_DECIDE_DEFAULT[name], advanced=True,
                            tooltip=f"think: the LM fills the {name} when you left it on auto"
                                    + (" (written into its own reasoning; the DiT keeps your language, as upstream)"
                                       if name == "language" else "") + ".")


class LMLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "LMLoader",
            display_name="ACE-Step 1.5 LM Loader",
            category=CATEGORY,
            description="Loads the ACE-Step 1.5 5 Hz language model (0.6B, 1.7B or 4B) that plans a song before "
                        "the DiT: metas, caption and the audio codes the DiT follows. From the Comfy-Org files in "
                        "text_encoders/ (qwen_1.7b_ace15, qwen_4b_ace15), the official acestep-5Hz-lm-* folders "
                        "in acestep/, or an all-in-one checkpoint that carries it.",
            inputs=[
                io.Combo.Input("lm", options=models.lm_choices(),
                               tooltip="text_encoders/qwen_1.7b_ace15.safetensors (ComfyUI's template file), "
                                       "acestep/acestep-5Hz-lm-1.7B (official; 0.6B and 4B too) or "
                                       "checkpoints/… (the LM inside an all-in-one file). qwen_0.6b_ace15 is the "
                                       "text encoder, not an LM."),
                io.Combo.Input("dtype", options=list(DTYPES), default=AUTO,
                               tooltip="Weight precision. auto: bf16 where the GPU supports it, else fp32."),
            ],
            outputs=[AceStepLM.Output(display_name="lm", tooltip="The LM for the LM Planner, Simple Mode and "
                                                                 "Understand Audio nodes.")],
        )

    @classmethod
    def execute(cls, lm, dtype=AUTO) -> io.NodeOutput:
        loaded = models.load_lm(lm, dtype)
        return io.NodeOutput(loaded, ui={"text": [loaded.describe()]})


class LMPlanner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "LMPlanner",
            display_name="ACE-Step 1.5 LM Planner",
            category=CATEGORY,
            description="The 5 Hz LM plans the song before the Sampler, as the official app does by default. "
                        "think: it writes what you left on auto (bpm, key, time signature; the length if asked) "
                        "and a richer caption, then the audio codes the DiT follows; codes: only the codes, your "
                        "settings as given. The result is shown on the node. Cover, repaint, extend and extract "
                        "run without the LM (as upstream); for lego and complete it writes metas and caption only.",
            inputs=[
                AceStepLM.Input("lm", tooltip=_LM_TIP),
                AceStepText.Input("conditioning", tooltip="From Caption & Lyrics (or Timbre Reference)."),
                io.Latent.Input("latent", tooltip="From Empty Latent (length and batch) or a task latent node."),
                _seed_input("The LM's seed; song i of a batch uses seed + i. The same seed gives the same plan."),
                io.Combo.Input("mode", options=list(PLANNER_MODES), default=PLANNER_MODES[0],
                               tooltip="think: metas and caption, then the codes (the app's default); codes: only "
                                       "the codes (what ComfyUI's own node does); off: pass everything through."),
                option_input(option("lm", "rewrite_caption")),
                _decide_input("duration"),
                option_input(option("lm", "cfg_scale")),
                *_sampling_inputs(),
                option_input(option("lm", "negative_prompt")),
                *[_decide_input(name) for name in _DECIDE.choices if name != "duration"],
            ],
            outputs=[
                AceStepText.Output(display_name="conditioning",
                                   tooltip="Caption, lyrics and metas as the LM planned them, for the Sampler."),
                io.Latent.Output(display_name="latent",
                                 tooltip="The latent with each song's audio codes and the plan, for the Sampler."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, lm, conditioning, latent, seed=0, mode="think", **widgets) -> io.NodeOutput:
        task = _latent_task(latent)
        sampling = [o for o in PLAN_OPTIONS if o.name not in ("mode", "seed", "decide")]
        decide = tuple(name for name in _DECIDE.choices if widgets.get(f"decide_{name}", _DECIDE_DEFAULT[name]))
        settings = PlanSettings(mode=mode, seed=seed, decide=decide, **from_widgets(sampling, widgets))
        if "duration" in decide and mode == "think" and task.source is None and task.audio_codes is None:
            task = replace(task, duration=None)  # the LM chooses the length
        req = Request(conditioning, task, SamplerSettings(), None, settings)
        work, why = planning.lm_work(req)
        if work is None:
            return io.NodeOutput(conditioning, latent, ui={"text": [why]})
        lm.place(codes=planning.lm_codes(req, lm.planner), batch=task.batch_size)
        clock = _progress(cls.hidden.unique_id)
        try:
            planned = planning.plan(lm.planner, req, on_token=clock, should_cancel=host.check_interrupted)
        finally:
            lm.done()
        out = task_canvas(planned.task, **{LATENT_PLAN_KEY: (planned.lm, planned.plans)})
        return io.NodeOutput(planned.text, out, ui={"text": [_with_speed(planning.summary(planned), clock)]})


class SimpleMode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "SimpleMode",
            display_name="ACE-Step 1.5 Simple Mode",
            category=CATEGORY,
            description="Describe a song in a few words; the 5 Hz LM writes its caption, lyrics, bpm, key, time "
                        "signature, length and language (the official app's Simple mode). Connect conditioning "
                        "to the LM Planner or the Sampler, duration to the Empty Latent's duration.",
            inputs=[
                AceStepLM.Input("lm", tooltip=_LM_TIP),
                io.String.Input("query", multiline=True, default="",
                                tooltip="A short description, e.g. 'a soft Bengali love song for a quiet evening'."),
                io.Boolean.Input("instrumental", default=False, tooltip="A song without vocals."),
                io.Combo.Input("language", options=list(VALID_LANGUAGES), default="unknown",
                               tooltip="The vocal language; unknown = the LM chooses."),
                _seed_input("The LM's seed; the same seed gives the same song description."),
                *_sampling_inputs(),
            ],
            outputs=[
                AceStepText.Output(display_name="conditioning",
                                   tooltip="Caption, lyrics and metas for the LM Planner or the Sampler."),
                io.String.Output(display_name="caption"),
                io.String.Output(display_name="lyrics"),
                io.Float.Output(display_name="duration",
                                tooltip=f"Seconds the LM chose ({DEFAULT_DURATION:g} when it wrote none)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, query=None) -> bool | str:
        if query is None:  # linked from another node: checked when the node runs
            return True
        return _message(lambda: check_query(query))

    @classmethod
    def execute(cls, lm, query, instrumental=False, language="unknown", seed=0, temperature=LM_TEMPERATURE,
                top_p=LM_TOP_P, top_k=LM_TOP_K, min_p=LM_MIN_P) -> io.NodeOutput:
        query, instrumental, language, seed = planning.check_simple_inputs(query, instrumental, language, seed)
        settings = PlanSettings(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
        lm.place(text_tokens=LM_TEXT_MAX_NEW_TOKENS)
        clock = _progress(cls.hidden.unique_id)
        try:
            desc = planning.simple_song(lm.planner, query, instrumental, language, seed, settings, clock,
                                        host.check_interrupted)
        finally:
            lm.done()
        duration = desc.duration or DEFAULT_DURATION
        return io.NodeOutput(desc.text, desc.caption, desc.lyrics, duration,
                             ui={"text": [_with_speed(_describe(desc, duration), clock)]})


class UnderstandAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "UnderstandAudio",
            display_name="ACE-Step 1.5 Understand Audio",
            category=CATEGORY,
            description="The 5 Hz LM listens to a recording (its 5 Hz codes, through the model's VAE and audio "
                        "tokenizer) and writes its caption, lyrics, bpm, key, time signature, length and "
                        "language: a starting point for a cover or a remix.",
            inputs=[
                AceStepModel.Input("model", tooltip="The ACE-Step 1.5 model (its VAE and audio tokenizer read the "
                                                    "recording)."),
                AceStepLM.Input("lm", tooltip=_LM_TIP),
                io.Audio.Input("audio", tooltip="The recording (first item of a batch), at most 600 s."),
                _seed_input("Seed of the LM and of the VAE's encoding."),
                *_sampling_inputs(top_p=LM_UNDERSTAND_TOP_P),
            ],
            outputs=[
                io.String.Output(display_name="caption"),
                io.String.Output(display_name="lyrics"),
                io.Int.Output(display_name="bpm", tooltip="0 = none written."),
                io.String.Output(display_name="keyscale", tooltip="'' = none written."),
                io.String.Output(display_name="timesignature", tooltip="'' = none written."),
                io.Float.Output(display_name="duration", tooltip="The LM's length, else the recording's."),
                io.String.Output(display_name="language", tooltip="'' = none written."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, lm, audio, seed=0, temperature=LM_TEMPERATURE, top_p=LM_UNDERSTAND_TOP_P,
                top_k=LM_TOP_K, min_p=LM_MIN_P) -> io.NodeOutput:
        settings = PlanSettings(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
        clip = _audio_clip(audio)
        codes = model.pipeline.audio_codes(clip, seed)
        lm.place(text_tokens=len(codes) + LM_TEXT_MAX_NEW_TOKENS)
        clock = _progress(cls.hidden.unique_id)
        try:
            desc = planning.understand_codes(lm.planner, codes, seed, settings, clock, host.check_interrupted)
        finally:
            lm.done()
        text = desc.text
        duration = desc.duration or round(clip.seconds, 2)
        shown = _with_speed(_describe(desc, duration), clock)
        return io.NodeOutput(desc.caption, desc.lyrics, text.bpm or 0, text.keyscale or "", text.timesignature or "",
                             duration, desc.language or "", ui={"text": [shown]})


def _describe(desc, duration: float) -> str:
    lyrics = desc.lyrics if len(desc.lyrics) <= 600 else desc.lyrics[:600] + " …"
    return f"{desc.summary(duration)}\nlyrics:\n{lyrics}"


LM_NODES = [LMLoader, LMPlanner, SimpleMode, UnderstandAudio]
