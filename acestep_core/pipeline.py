"""Generation: a checked :class:`~acestep_core.request.Request` → final latents and audio, the way the original
builds and runs it.

``AceStepPipeline.__call__`` reads top to bottom:
  0. plan       with a 5 Hz LM loaded and the request's LM mode on: the LM writes what the user left out (metas,
                caption) and each song's audio codes (``planning.plan``);
  1. schedule   the sampler settings resolved for the model variant (defaults, what the variant cannot take);
  2. inputs     what the task table says the task needs: target latents, the DiT context (silence, source
                latents with the window silenced, or 5 Hz hints) with its chunk mask, the repaint mask;
  3. condition  caption + lyrics prompts and the timbre reference → the packed condition (plus the text2music
                condition that cover switches to after ``cover_strength`` of the steps);
  4. sample     per-item noise from CPU generators, the turbo table or the base/SFT schedule, APG/ADG, repaint
                injection;
  5. render     tiled VAE decode, anti-clip, the untouched source spliced back (repaint/extend), normalisation,
                fades.
It checks no input itself: every part of the request was checked when it was built. The LM's other uses are
entry points of their own: ``simple`` (a short description → caption, lyrics, metas) and ``understand``
(a recording → its 5 Hz codes → caption, lyrics, metas).

Where the units are for each phase is the ``placement`` handed in when the pipeline is built
(``memory.placement``: by default every unit stays where it was loaded; a ``memory.manager.MemoryManager`` plans
each request for a VRAM budget). Nothing about a run is stored on the pipeline: how the VAE ran and the memory
report come back in the ``GenerationResult`` (and from ``render_with_run``, ``decode_with_run`` and
``encode_with_run``).
"""
from __future__ import annotations

import dataclasses
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from . import planning, sampling
from .adapters import patched, resolve_adapters, weight_deltas
from .audio import fade, postprocess, prepare_audio, reference_segments, repaint_splice
from .constants import (
    DEFAULT_DURATION, LYRIC_MAX_TOKENS, MIN_LATENT_FRAMES, REFERENCE_SECONDS, SAMPLE_RATE, TEXT_MAX_TOKENS,
)
from .loading.checkpoint import AceStepCheckpoint, CheckpointPaths, load_checkpoint
from .loading.silence import silence_slice
from .models.text_encoder import encode_text_inputs
from .memory import vae_tiles
from .memory.placement import LeaveLoaded, Placement
from .options import SAMPLER_OPTIONS
from .prompts import format_caption_prompt, format_lyrics_prompt, format_metas, task_instruction
from .errors import InputError
from .checks import check_int, check_one_seed, item_seeds
from .request import AudioClip, PlanSettings, RenderSettings, Request, Task
from .schedule import Schedule, resolve_sampler
from .tasks import Window


@dataclass(frozen=True, eq=False)
class PreparedSource:
    """The source as generation used it: stereo float32 [2, S] at the VAE rate, padded with digital silence where
    the window reaches outside it, and the window shifted onto that waveform. Rendering reuses it."""

    waveform: torch.Tensor
    window: Window | None


@dataclass(frozen=True, eq=False)
class AlignmentInputs:
    """What lyric timestamps need of a generation besides its latents: the packed condition [B, S, D] and DiT
    context [B, T, 2C] the songs were made with, the number of sampling steps, the lyrics and their language."""

    condition: torch.Tensor
    context: torch.Tensor
    steps: int
    lyrics: str
    language: str

    def to(self, device) -> "AlignmentInputs":
        return replace(self, condition=self.condition.to(device), context=self.context.to(device))


@dataclass
class GenerationResult:
    audio: torch.Tensor | None  # [B, 2, T·hop] float32 at ``sample_rate`` (None when the request has no render)
    latents: torch.Tensor  # [B, T, 64] final latents, float32
    seeds: list[int]
    sample_rate: int = SAMPLE_RATE
    metadata: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. lyrics cut at the text encoder's token limit
    source: PreparedSource | None = None  # the prepared source of audio tasks, for render()
    request: Request | None = None  # the request as run: with the LM's plans applied when it planned
    # pipe(request, timestamps=True): the sung lines of each song (timestamps.LyricLine: text, start, end, words)
    lyrics_timing: list[list] | None = None
    alignment: AlignmentInputs | None = None  # for timing the lyrics later: pipe.time_lyrics(result.alignment, …)
    vae_run: vae_tiles.VaeRun | None = None  # how the VAE decoded the songs (tile, CPU fallback); None: no render
    # (the placement's report on where the weights were is metadata["memory"], when it has one)


@dataclass(frozen=True, eq=False)
class TaskInputs:
    """What the DiT gets for one task, before the batch dimension: target latents [T, C] (source, hints or
    silence), context [T, 2C] (context latents ‖ chunk mask), the repaint mask [T] (True = regenerate) or None,
    the prepared source, and the values written into the prompt."""

    target: torch.Tensor  # [T, C], or [B, T, C] when the songs follow their own codes
    context: torch.Tensor  # [T, 2C] or [B, T, 2C]
    silence_context: torch.Tensor  # the text2music context (silence ‖ chunk mask), used after cover_strength
    repaint_mask: torch.Tensor | None
    source: PreparedSource | None
    instruction_task: str
    metas_duration: float


class AceStepPipeline:
    def __init__(self, checkpoint: AceStepCheckpoint, planner=None, placement: Placement | None = None):
        """``planner``: the 5 Hz LM (an ``lm_planner.Planner``), or None. ``placement``: where the units go for each
        phase (``memory.placement``): a ``memory.manager.MemoryManager`` (low VRAM: plans each request for a VRAM
        budget), any object with the ``Placement`` methods, or None = every unit stays where it was loaded."""
        self.ckpt = checkpoint
        self.planner = planner
        self.placement: Placement = placement if placement is not None else LeaveLoaded()
        # Rates come from the VAE (48 kHz, hop 1920 → 25 latent frames/s for the real model).
        self.sample_rate = checkpoint.vae.config.sampling_rate
        self.hop = checkpoint.vae.config.hop_length

    @classmethod
    def from_pretrained(cls, path: str, dtype="auto", device=None, lm: str | None = None,
                        **paths) -> "AceStepPipeline":
        """The models at ``path`` (see ``loading.checkpoint.load_checkpoint``); ``lm``: a 5 Hz LM to plan with (an
        acestep-5Hz-lm-* folder, a Comfy-Org qwen_{1.7b,4b}_ace15 file or an all-in-one file), "auto" for the one
        found next to the models, or None."""
        pipe = cls(load_checkpoint(path, dtype=dtype, device=device, **paths))
        if lm is not None:
            from .loading.lm import find_lm

            damaged: list[str] = []
            found = find_lm(CheckpointPaths(**pipe.ckpt.paths), damaged) if lm == "auto" else lm
            if found is None:
                reason = f" (skipped: {'; '.join(damaged)})" if damaged else ""
                raise ValueError(f"{path}: no 5 Hz LM next to the models (lm='auto'){reason}; give its path")
            for reason in damaged:
                warnings.warn(f"5 Hz LM skipped: {reason}", stacklevel=2)
            pipe.load_lm(found)
        return pipe

    def load_lm(self, path: str, max_duration: int | None = None, int8: bool = False) -> None:
        """Load the 5 Hz LM at ``path`` in the models' dtype and device (``max_duration``: the longest song it may
        choose, default 600 s; ``int8``: int8 weight-only layers and head, for the CPU, models/lm_int8.py)."""
        from .constants import DURATION_MAX, DURATION_MIN
        from .loading.lm import load_planner

        if max_duration is not None:
            max_duration = check_int("max_duration", max_duration, DURATION_MIN, DURATION_MAX, " seconds")
        self.planner = load_planner(path, self.model.dtype, self.model.device, max_duration or DURATION_MAX)
        if int8:
            from .models.lm_int8 import quantize_lm_int8

            quantize_lm_int8(self.planner.lm, self.planner.code_rows)

    @property
    def model(self):
        return self.ckpt.model

    def _use(self, *parts: str) -> None:
        self.placement.use(parts)
        silence = self.ckpt.silence_latent
        if "model" in parts and silence.device != self.model.device:
            self.ckpt.silence_latent = silence.to(self.model.device)

    # ------------------------------------------------------------------ the call

    @torch.no_grad()
    def __call__(
        self,
        req: Request,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_warning: Callable[[str], None] | None = None,
        adapters: Sequence[tuple] = (),
        on_token: Callable[[str, int, int], None] | None = None,
        timestamps: bool = False,
    ) -> GenerationResult:
        """``on_step(step, total)``: DiT steps; ``on_token(phase, done, total)``: LM tokens ("metas", "codes");
        ``should_cancel()``: True (or raising) stops between steps and tokens; ``timestamps``: also time the sung
        lines of each song (one extra DiT pass, ``result.lyrics_timing``)."""
        if not _is_a(req, Request):
            example = "pipe(request(**fields))" if isinstance(req, dict) else "pipe(request(caption='calm piano'))"
            raise InputError("req", req, f"a Request, built by acestep_core.request.request(), e.g. {example}")
        resolve_sampler(req.sampler, self.ckpt.variant)  # refuse what the variant cannot take, before any work
        work, why = planning.lm_work(req)
        if work is not None and self.planner is None:
            raise InputError("lm_mode", req.lm.mode, "off: no 5 Hz LM is loaded (load one: from_pretrained(..., "
                                                     "lm=PATH) or pipe.load_lm(PATH))")
        seeds = self._seeds(req)
        warnings: list[str] = []

        def warn(message: str) -> None:
            warnings.append(message)
            if on_warning is not None:
                on_warning(message)

        if req.lm.on and work is None and not req.plans:
            warn(why)
        if work is not None:  # 0. the LM's plan, from the songs' seeds as drawn here (the request's stay as given)
            self.placement.prepare_request(req, self.ckpt.variant, lm_codes=planning.lm_codes(req, self.planner))
            self._use("lm")
            seeded = replace(req, sampler=replace(req.sampler, seed=tuple(seeds)))
            planned = planning.plan(self.planner, seeded, on_token=on_token, should_cancel=should_cancel)
            req = replace(planned, sampler=req.sampler)
        schedule = resolve_sampler(req.sampler, self.ckpt.variant, think=planning.thought(req))
        self.placement.prepare_request(req, self.ckpt.variant)
        self._use(*(("vae", "model") if req.task.source is not None else ("model",)))  # one phase at a time

        with self._adapted(adapters):  # the whole model, as ComfyUI patches it: cover hints, condition, DiT
            inputs = self._inputs(req.task, seeds)
            self._use("text_encoder", *(("vae",) if req.text.timbre is not None else ()), "model")
            conditions, instruction, metas = self._conditions(req, inputs, seeds, warn)
            self._use("model")
            latents, sampled = self._sample(req, schedule, inputs, conditions, seeds, on_step, should_cancel)
            alignment = self._alignment(req, conditions, sampled["steps"])
            timing = self._lyrics_timing(alignment, latents) if timestamps else None
        metadata = {"task": req.task.kind, "variant": self.ckpt.variant, "shift": schedule.shift,
                    "guidance": schedule.guidance, "seeds": seeds, "instruction": instruction, "metas": metas,
                    "frames": latents.shape[1], **sampled}
        if req.plans:
            metadata["lm"] = planning.describe_plans(req)
        audio, vae_run = (None, None) if req.render is None else self.render_with_run(
            latents, req.task, req.render, inputs.source)
        report = self.placement.report()
        if report:
            metadata["memory"] = report
        return GenerationResult(audio, latents.float(), seeds, self.sample_rate, metadata, warnings, inputs.source,
                                req, timing, alignment, vae_run)

    @contextmanager
    def _adapted(self, adapters: Sequence[tuple]):
        """The model with ``adapters`` — (Adapter or path, strength) pairs, stacked — patched into its weights for
        the block (audio tokenizer, condition encoder and DiT, cross-attention K/V included) and restored exactly
        after, also on error or cancel. Nothing happens without adapters."""
        if not adapters:
            yield
            return
        with patched(self.model, weight_deltas(self.model, resolve_adapters(adapters))):
            yield

    # ------------------------------------------------------------------ 1. seeds

    @staticmethod
    def _seeds(req: Request, seed=None) -> list[int]:
        """One seed per item: a tuple as given; one int → seed, seed+1, … (mod 2^64); None → random. ``seed``:
        another seed setting of the request (the retake seed) instead of the main one."""
        return item_seeds(req.sampler.seed if seed is None else seed, req.task.batch_size)

    # ------------------------------------------------------------------ 2. inputs per task

    def prepare_source(self, task: Task) -> PreparedSource | None:
        """The task's source at the VAE rate (stereo, clamped), padded with silence when the window reaches past
        either end (extend), and the window moved onto the padded waveform."""
        if task.source is None:
            return None
        wav = prepare_audio(task.source.waveform, task.source.sample_rate, self.sample_rate)
        window = task.window
        if window is not None:
            before, after = window.padding(task.source.seconds)
            left, right = int(before * self.sample_rate), int(after * self.sample_rate)
            if left or right:
                wav = torch.nn.functional.pad(wav, (left, right))
            window = window.shifted(before)
        return PreparedSource(wav, window)

    def _encode_audio(self, wav: torch.Tensor, seed: int, sample: bool = True) -> torch.Tensor:
        """[2, S] at the VAE rate → VAE latent [T, 64] in the model dtype: a posterior draw as the original takes it,
        but from a generator seeded with the generation seed (the original uses the global RNG), or the posterior
        mean (``sample=False``)."""
        vae = self.ckpt.vae
        p = next(vae.parameters())
        with torch.no_grad():
            z, _ = vae_tiles.encode(vae, wav[None].to(device=p.device, dtype=p.dtype), self._free(),
                                    generator=torch.Generator().manual_seed(seed), sample=sample)
        return z[0].transpose(0, 1).to(self.model.dtype)

    def _inputs(self, task: Task, seeds: list[int]) -> TaskInputs:
        model, dtype, device = self.model, self.model.dtype, self.model.device
        silence = self.ckpt.silence_latent
        rule = task.rule
        source = self.prepare_source(task)
        hints = None
        if task.audio_codes is not None:  # 5 Hz codes → 25 Hz hints; they are the target and the context
            hints = self._code_hints(task.codes_per_song)
            target = hints
        elif source is not None:
            silent = source.waveform.abs().max() < 1e-6
            frames = source.waveform.shape[-1] // self.hop
            target = silence_slice(silence, frames)[0] if silent else self._encode_audio(
                source.waveform, seeds[0], sample=task.vae_encode == "sample")
        else:
            duration = DEFAULT_DURATION if task.duration is None else task.duration
            target = silence_slice(silence, int(round(duration, 1) * self.sample_rate) // self.hop)[0]

        # At least 128 frames, padded with silence.
        frames = max(MIN_LATENT_FRAMES, target.shape[-2])
        target = self._pad_frames(target, frames).to(dtype)
        silence_t = silence_slice(silence, frames)[0].to(dtype)

        # Context latents and chunk mask: the window (if any) marks what to generate.
        chunk = torch.ones(frames, device=device, dtype=dtype)
        context_latents = target.clone() if (source is not None or hints is not None) else silence_t
        repaint_mask = None
        window = source.window if source is not None else None
        if window is not None:
            start, end = window.frames(self.sample_rate, self.hop)
            start = max(0, min(start, frames - 1))
            end = max(start + 1, min(end, frames))
            chunk = torch.zeros_like(chunk)
            chunk[start:end] = 1
            if rule.silence_window:
                context_latents[start:end] = silence_t[start:end]
            if rule.repaint:
                repaint_mask = torch.zeros(frames, dtype=torch.bool, device=device)
                repaint_mask[start:end] = True
        if rule.hints or hints is not None:  # cover: the context holds 5 Hz semantic hints (raw remix: the latents)
            if hints is None:
                hints = model.cover_hints(context_latents[None], silence, fsq=rule.hints == "fsq")[0]
            context_latents = self._pad_frames(hints[..., :frames, :], frames).to(dtype)

        # The prompt's duration: the (padded) source length for audio tasks, as the original; else the requested
        # duration, else the length of the codes.
        if source is not None:
            metas_duration = source.waveform.shape[-1] / self.sample_rate
        elif task.duration is not None:
            metas_duration = task.duration
        elif hints is not None:
            metas_duration = frames * self.hop / self.sample_rate
        else:
            metas_duration = DEFAULT_DURATION
        with_mask = lambda x: torch.cat([x, chunk[:, None].expand(x.shape[-2:]).expand_as(x)], -1)  # noqa: E731
        return TaskInputs(
            target=target, context=with_mask(context_latents), silence_context=with_mask(silence_t),
            repaint_mask=repaint_mask, source=source,
            instruction_task="cover" if hints is not None else rule.instruction, metas_duration=metas_duration)

    def _code_hints(self, codes_per_song: list[tuple[int, ...]]) -> torch.Tensor:
        """5 Hz codes → 25 Hz hints: [5N, 64] when every song follows the same codes, else [B, T, 64] with the
        shorter songs' hints padded with silence."""
        model = self.model
        if all(c == codes_per_song[0] for c in codes_per_song):
            return model.codes_to_hints(torch.tensor(codes_per_song[0], device=model.device)[None])[0]
        hints = [model.codes_to_hints(torch.tensor(c, device=model.device)[None])[0] for c in codes_per_song]
        frames = max(h.shape[0] for h in hints)
        return torch.stack([self._pad_frames(h, frames) for h in hints])

    def _pad_frames(self, latents: torch.Tensor, frames: int) -> torch.Tensor:
        """Latents [..., T, C] padded with the silence latent to ``frames`` frames."""
        missing = frames - latents.shape[-2]
        if missing <= 0:
            return latents
        fill = silence_slice(self.ckpt.silence_latent, missing)[0].to(latents)
        return torch.cat([latents, fill.expand(*latents.shape[:-2], -1, -1)], -2)

    # ------------------------------------------------------------------ 3. condition

    def _conditions(self, req: Request, inputs: TaskInputs, seeds: list[int], warn: Callable[[str], None]):
        """{"cover": (condition, context)} plus {"plain": …} when cover hands the last steps to the caption alone,
        or {"source": …} for the flow-edit morph; the instruction and metas written into the prompt."""
        text, task, b = req.text, req.task, req.task.batch_size
        instruction = task_instruction(inputs.instruction_task, task.tracks)
        metas = format_metas(text.bpm, text.timesignature, text.keyscale, inputs.metas_duration)
        caption_prompt = format_caption_prompt(text.caption, instruction, metas)
        lyrics_prompt = format_lyrics_prompt(text.lyrics, text.language)
        self._warn_truncation(caption_prompt, lyrics_prompt, warn)
        refer = self._reference_latents(text.timbre, seeds)
        context = _batched(inputs.context, b)
        conditions = {"cover": (self._condition(caption_prompt, lyrics_prompt, refer, b), context)}
        if task.flow_edit is not None:  # the morph's source side: what the recording is, same instruction and metas
            source_prompt = format_caption_prompt(task.flow_edit.source_caption, instruction, metas)
            conditions["source"] = (self._condition(source_prompt, format_lyrics_prompt(
                task.flow_edit.source_lyrics, text.language), refer, b), context)
        elif inputs.instruction_task == "cover" and task.cover_strength < 1.0:
            # The original pads the text2music caption ids to the cover caption's length; its instruction is one
            # token longer, so the "padding" crops the last id (<|endoftext|>). Reproduced as it does it.
            plain = format_caption_prompt(text.caption, task_instruction("text2music"), metas)
            cover_length = len(self.ckpt.tokenizer.encode(caption_prompt, TEXT_MAX_TOKENS))
            conditions["plain"] = (self._condition(plain, lyrics_prompt, refer, b, text_length=cover_length),
                                   inputs.silence_context[None].expand(b, -1, -1))
        return conditions, instruction, metas

    def _warn_truncation(self, caption_prompt: str, lyrics_prompt: str, warn: Callable[[str], None]) -> None:
        """The text encoder reads at most 256 caption-prompt and 2048 lyrics-prompt tokens, as the original;
        say so when the end of the caption or lyrics is cut off."""
        tokenizer = self.ckpt.tokenizer
        for what, prompt, limit in (("caption", caption_prompt, TEXT_MAX_TOKENS),
                                    ("lyrics", lyrics_prompt, LYRIC_MAX_TOKENS)):
            count = tokenizer.count(prompt)
            if count > limit:
                warn(f"{what}: {count} tokens with its prompt; the text encoder reads the first {limit}, so the "
                     f"last {count - limit} tokens of the {what} are ignored (shorten it)")

    def _reference_latents(self, timbre: AudioClip | None, seeds: list[int]) -> torch.Tensor:
        """Timbre reference latents [1, 750, 64]: 3 × 10 s from the thirds of the reference (segment choice
        seeded), VAE-encoded; the silence latent's first 750 frames when there is no reference."""
        if timbre is None:
            frames = REFERENCE_SECONDS * self.sample_rate // self.hop
            return silence_slice(self.ckpt.silence_latent, frames).to(self.model.dtype)
        wav = prepare_audio(timbre.waveform, timbre.sample_rate, self.sample_rate)
        return self._encode_audio(reference_segments(wav, seeds[0], self.sample_rate), seeds[0])[None]

    def _condition(self, caption_prompt: str, lyrics_prompt: str, refer: torch.Tensor, batch: int,
                   text_length: int | None = None):
        """Packed condition [B, S, D] and mask for one prompt pair repeated over the batch (the caption ids padded
        or cropped to ``text_length`` when given)."""
        text, text_mask, lyr, lyr_mask = encode_text_inputs(self.ckpt.tokenizer, self.ckpt.text_encoder,
                                                            [caption_prompt], [lyrics_prompt], text_length)
        dtype = self.model.dtype
        refs = refer.expand(batch, -1, -1).to(dtype)
        order = torch.arange(batch, device=refs.device)
        return self.model.encoder(text.to(dtype).expand(batch, -1, -1), text_mask.expand(batch, -1),
                                  lyr.to(dtype).expand(batch, -1, -1), lyr_mask.expand(batch, -1), refs, order)

    # ------------------------------------------------------------------ 4. sample

    def _sample(self, req: Request, schedule: Schedule, inputs: TaskInputs, conditions: dict, seeds: list[int],
                on_step, should_cancel) -> tuple[torch.Tensor, dict]:
        """Final latents [B, T, C] and what the run used (steps, sampler, DCW, retake seeds) for the metadata."""
        model, dtype, device = self.model, self.model.dtype, self.model.device
        task, settings, b = req.task, req.sampler, req.task.batch_size
        target = _batched(inputs.target, b)
        generators = sampling.seeded_generators(seeds)
        noise = sampling.item_noise(generators, target)  # per item from a CPU generator: the same song on any device
        used = {"sampler": f"{settings.sampler_mode}/{settings.infer_method}",
                "dcw": f"{schedule.dcw.mode} {schedule.dcw.scaler:g}/{schedule.dcw.high_scaler:g}"
                       if schedule.dcw.active else "off"}
        if settings.retake_variance > 0:
            retake_seeds = self._seeds(req, settings.retake_seed)
            retake = sampling.item_noise(sampling.seeded_generators(retake_seeds), target)
            noise = sampling.retake_mix(noise, retake, settings.retake_variance)
            used.update(retake_seeds=retake_seeds, retake_variance=settings.retake_variance)
        guided = schedule.guidance > 1.0
        active: dict[str, tuple] = {}  # the condition in use: its cross-attention K/V and DiT context

        def velocity_of(key_at: Callable[[int], str]):
            def velocity(x_t: torch.Tensor, t: float, step: int):
                key = key_at(step)
                if key not in active:  # computed once per condition, not per step
                    (enc, _), ctx = conditions[key]
                    if guided:  # one batched call: [cond; uncond], uncond = the learned null embedding
                        enc, ctx = torch.cat([enc, model.null_condition_emb.expand_as(enc)]), torch.cat([ctx, ctx])
                    if task.flow_edit is None:
                        active.clear()  # one condition at a time; the morph alternates between two
                    active[key] = (model.decoder.cross_kv(enc), ctx)
                kv, ctx = active[key]
                batch_in = torch.cat([x_t, x_t]) if guided else x_t
                tt = torch.full((batch_in.shape[0],), t, device=device, dtype=dtype)
                v = model.decoder(batch_in, tt, ctx, kv)
                return (v[:b], v[b:]) if guided else (v, None)
            return velocity

        common = dict(guidance_scale=schedule.guidance, on_step=on_step, should_cancel=should_cancel,
                      **{o.sample_arg: getattr(settings, o.name) for o in SAMPLER_OPTIONS if o.sample_arg})
        if task.flow_edit is not None:  # the morph runs its own loop on the base-style schedule, turbo too
            morph = task.flow_edit
            steps = sampling.flow_edit_schedule(schedule.steps, schedule.shift, dtype, schedule.timesteps)
            retake_seeds = used.get("retake_seeds")
            latents = sampling.flow_edit(
                target, steps, velocity_of(lambda step: "cover"), velocity_of(lambda step: "source"),
                n_min=morph.n_min, n_max=morph.n_max, n_avg=morph.n_avg,
                generators=sampling.seeded_generators(retake_seeds or seeds), **common)
            used.update(steps=len(steps) - 1, sampler="flow-edit", dcw="off")
            return latents, used

        # Turbo: its step formula (the cover-noise start is picked on the unrounded values, as the original);
        # base/SFT: linspace + shift in the model dtype.
        if schedule.turbo:
            steps = sampling.turbo_schedule(schedule.shift, schedule.timesteps, torch.float64, steps=schedule.steps)
        else:
            steps = sampling.base_schedule(schedule.steps, schedule.shift, dtype, schedule.timesteps)
        x = noise
        is_cover = inputs.instruction_task == "cover"
        if task.cover_noise > 0 and is_cover:
            steps, t_start = sampling.truncate_for_cover_noise(steps, task.cover_noise, turbo=schedule.turbo)
            x = sampling.renoise(target, noise, t_start)
        if schedule.turbo:
            steps = sampling.cast_schedule(steps, dtype)
        num_steps = len(steps) if schedule.turbo else len(steps) - 1
        cover_steps = int(num_steps * task.cover_strength) if is_cover else num_steps
        repaint = None
        if inputs.repaint_mask is not None:
            injection_ratio, crossfade_frames, _ = sampling.repaint_settings(task.repaint_mode, task.repaint_strength)
            repaint = sampling.Repaint(target, inputs.repaint_mask[None].expand(b, -1), noise, injection_ratio,
                                       crossfade_frames)
        latents = sampling.sample(
            x, steps, velocity_of(lambda step: "plain" if ("plain" in conditions and step >= cover_steps) else "cover"),
            turbo=schedule.turbo, use_adg=settings.guidance_method == "adg", repaint=repaint,
            sampler_mode=settings.sampler_mode, infer_method=settings.infer_method, dcw=schedule.dcw,
            sde_generators=generators, **common)
        used["steps"] = num_steps
        return latents, used

    @staticmethod
    def _alignment(req: Request, conditions: dict, steps: int) -> AlignmentInputs:
        (condition, _), context = conditions["cover"]
        return AlignmentInputs(condition, context, steps, req.text.lyrics, req.text.language)

    def _lyrics_timing(self, alignment: AlignmentInputs, latents: torch.Tensor) -> list[list]:
        """The sung lines of each song, from one extra DiT pass over its final latents with the condition it was
        made with (``timestamps.time_lyrics``)."""
        from .timestamps import time_lyrics

        a = alignment
        if a.condition.shape[0] != latents.shape[0] or a.context.shape[1] != latents.shape[1]:
            raise InputError("latents", latents, f"the {a.condition.shape[0]} songs of {a.context.shape[1]} frames "
                                                 "the alignment inputs were made for")
        ids = self.ckpt.tokenizer.encode(format_lyrics_prompt(a.lyrics, a.language), LYRIC_MAX_TOKENS)
        seconds = latents.shape[1] * self.hop / self.sample_rate
        return time_lyrics(self.model, self.ckpt.tokenizer, ids, a.language, a.condition, a.context, latents,
                           a.steps, seconds)

    @torch.no_grad()
    def time_lyrics(self, alignment: AlignmentInputs, latents: torch.Tensor, adapters: Sequence[tuple] = ()
                    ) -> list[list]:
        """The sung lines of each song of finished ``latents`` [B, T, 64] (``timestamps.LyricLine``), from the
        ``alignment`` inputs of their generation (``result.alignment``, or :meth:`alignment_inputs`)."""
        self._use("model")
        device, dtype = self.model.device, self.model.dtype
        with self._adapted(adapters):
            return self._lyrics_timing(alignment.to(device), latents.to(device=device, dtype=dtype))

    @torch.no_grad()
    def alignment_inputs(self, req: Request, adapters: Sequence[tuple] = ()) -> AlignmentInputs:
        """The alignment inputs of ``req`` built again without sampling (condition, context, the variant's step
        count): for latents made elsewhere. The same as the generation's own when the request is the same (its seed
        matters only for a timbre reference or a source's VAE draw)."""
        schedule = resolve_sampler(req.sampler, self.ckpt.variant)
        seeds = self._seeds(req)
        self.placement.prepare_request(req, self.ckpt.variant)
        self._use(*(("vae", "model") if req.task.source is not None else ("model",)))
        with self._adapted(adapters):
            inputs = self._inputs(req.task, seeds)
            self._use("text_encoder", *(("vae",) if req.text.timbre is not None else ()), "model")
            conditions, _, _ = self._conditions(req, inputs, seeds, lambda message: None)
        return self._alignment(req, conditions, schedule.steps)

    # ------------------------------------------------------------------ 5. render

    def render(self, latents: torch.Tensor, task: Task, settings: RenderSettings,
               source: PreparedSource | None = None) -> torch.Tensor:
        """Final latents [B, T, 64] of ``task`` → float32 audio [B, 2, S]: tiled VAE decode, anti-clip, for
        repaint/extend (balanced, conservative) the untouched source spliced back outside the window with
        sample-exact edges as the original does, then normalisation and fades. ``source``: the prepared source
        the generation returned (prepared again from the task when not given)."""
        return self.render_with_run(latents, task, settings, source)[0]

    def render_with_run(self, latents: torch.Tensor, task: Task, settings: RenderSettings,
                        source: PreparedSource | None = None) -> tuple[torch.Tensor, vae_tiles.VaeRun]:
        """:meth:`render`, and how the VAE ran (``vae_tiles.VaeRun``: its tile, or the CPU fallback)."""
        audio, vae_run = self.decode_with_run(latents, settings, normalize=False)  # anti-clipped only
        if task.rule.repaint and task.repaint_mode != "aggressive":
            source = source if source is not None else self.prepare_source(task)
            _, _, crossfade_seconds = sampling.repaint_settings(task.repaint_mode, task.repaint_strength)
            start, end = source.window.samples(self.sample_rate)
            wav = source.waveform
            original = torch.nn.functional.pad(wav, (0, max(0, audio.shape[-1] - wav.shape[-1])))[:, : audio.shape[-1]]
            audio = torch.stack([repaint_splice(a, original.to(a), start, end,
                                                int(crossfade_seconds * self.sample_rate)) for a in audio])
        return self._finish(audio, settings, settings.normalize), vae_run

    def decode(self, latents: torch.Tensor, settings: RenderSettings | None = None,
               normalize: bool | None = None) -> torch.Tensor:
        """Final latents [B, T, 64] → float32 audio [B, 2, T·hop]: tiled VAE decode, anti-clip by true peak,
        −1 dBFS peak normalisation unless switched off, and the fades."""
        return self.decode_with_run(latents, settings, normalize)[0]

    def decode_with_run(self, latents: torch.Tensor, settings: RenderSettings | None = None,
                        normalize: bool | None = None) -> tuple[torch.Tensor, vae_tiles.VaeRun]:
        """:meth:`decode`, and how the VAE ran (``vae_tiles.VaeRun``: its tile, or the CPU fallback)."""
        settings = settings or RenderSettings()
        self._use("vae")
        if not torch.isfinite(latents).all():
            raise ValueError("the generated latents contain NaN or infinity; try dtype fp32 or bf16 (fp16 can "
                             "overflow), or another seed")
        audio, vae_run = vae_tiles.decode(self.ckpt.vae, latents.transpose(1, 2), settings.tile_frames, overlap=64,
                                          free=self._free())
        if normalize is False:
            return postprocess(audio.float(), normalize=False), vae_run
        return self._finish(audio.float(), settings, settings.normalize if normalize is None else normalize), vae_run

    def _finish(self, audio: torch.Tensor, settings: RenderSettings, normalize: bool) -> torch.Tensor:
        audio = postprocess(audio, normalize=normalize)
        return fade(audio, self.sample_rate, settings.fade_in, settings.fade_out)

    def encode(self, clips: Sequence[AudioClip]) -> torch.Tensor:
        """Recordings of equal length (a ComfyUI AUDIO batch) → VAE latents [B, T, 64] (float32, posterior mean,
        tiled): each made stereo and resampled to the VAE rate first."""
        return self.encode_with_run(clips)[0]

    @torch.no_grad()
    def encode_with_run(self, clips: Sequence[AudioClip]) -> tuple[torch.Tensor, vae_tiles.VaeRun]:
        """:meth:`encode`, and how the VAE ran (``vae_tiles.VaeRun``: its window, or the CPU fallback)."""
        if _is_a(clips, AudioClip) or not all(_is_a(c, AudioClip) for c in clips):
            raise InputError("clips", clips, f"a list of {_CLIP}")
        self._use("vae")
        wav = torch.stack([prepare_audio(c.waveform, c.sample_rate, self.sample_rate) for c in clips])
        z, vae_run = vae_tiles.encode(self.ckpt.vae, wav, self._free())
        return z.transpose(1, 2).float(), vae_run

    # ------------------------------------------------------------------ the LM's other uses

    def _planner(self, prompt_codes: int = 0):
        """The LM, placed for a text-writing run (a prompt of ``prompt_codes`` codes, up to 3500 new tokens)."""
        from .constants import LM_TEXT_MAX_NEW_TOKENS
        from .memory.estimates import Workload

        self._need_lm()
        self.placement.prepare(Workload(seconds=0.0, lm_codes=prompt_codes + LM_TEXT_MAX_NEW_TOKENS), lm=True)
        self._use("lm")
        return self.planner

    def _need_lm(self) -> None:
        if self.planner is None:
            raise ValueError("no 5 Hz LM is loaded: from_pretrained(..., lm=PATH) or pipe.load_lm(PATH) first")

    @torch.no_grad()
    def audio_codes(self, clip: AudioClip, seed: int = 0) -> list[int]:
        """A recording → its 5 Hz semantic codes (what the LM reads and writes): VAE latents (a posterior draw from
        ``seed``, as the original encodes) through the model's audio tokenizer."""
        _check_clip(clip)
        return self._codes_of(clip, check_one_seed(seed))

    def _codes_of(self, clip: AudioClip, seed: int) -> list[int]:
        """:meth:`audio_codes` of a checked clip and seed."""
        self._use("vae")
        wav = prepare_audio(clip.waveform, clip.sample_rate, self.sample_rate)
        latents = self._encode_audio(wav, seed)
        self._use("model")
        model = self.model
        _, codes = model.tokenizer(latents[None].to(model.device, model.dtype),
                                   self.ckpt.silence_latent.to(model.device))
        return codes[0].flatten().tolist()

    def understand(self, clip: AudioClip, seed: int = 0, settings: PlanSettings | None = None,
                   on_token=None, should_cancel=None) -> planning.Description:
        """A recording → caption, lyrics, bpm, key, time signature, duration and language, as the LM hears it
        (its 5 Hz codes through ``Planner.understand``; ``settings``: the LM's sampling, top-p off by default)."""
        _check_clip(clip)
        seed = check_one_seed(seed)
        self._need_lm()  # before the recording is encoded
        codes = self._codes_of(clip, seed)
        return planning.understand_codes(self._planner(len(codes)), codes, seed, settings, on_token, should_cancel)

    def simple(self, query: str, instrumental: bool = False, language: str | None = None, seed: int = 0,
               settings: PlanSettings | None = None, on_token=None, should_cancel=None) -> planning.Description:
        """Simple mode: a short description → caption, lyrics, metas and a duration (``planning.simple_song``)."""
        query, instrumental, language, seed = planning.check_simple_inputs(query, instrumental, language, seed)
        return planning.simple_song(self._planner(), query, instrumental, language, seed, settings, on_token,
                                    should_cancel)

    def _free(self) -> Callable[[], int | None]:
        """The free-memory function the VAE sizes its tiles by: the placement's (a memory manager's is budget and
        host aware; None answers mean the device's own)."""
        return self.placement.free_memory


_CLIP = "an AudioClip(waveform, sample_rate) from acestep_core.request (a recording and its rate)"


def _is_a(value, kind: type) -> bool:
    """``value`` is a ``kind``, also from another import of this package (the ComfyUI pack's copy and a plain
    ``acestep_core`` import make two classes of the same name and fields)."""
    return isinstance(value, kind) or (type(value).__name__ == kind.__name__ and all(
        hasattr(value, f.name) for f in dataclasses.fields(kind)))


def _check_clip(clip) -> None:
    if not _is_a(clip, AudioClip):
        raise InputError("clip", clip, _CLIP)


def _batched(x: torch.Tensor, batch: int) -> torch.Tensor:
    """[T, C] repeated over the batch, or [B, T, C] as it is."""
    return x if x.dim() == 3 else x[None].expand(batch, -1, -1)
