"""Generation: one request (task + inputs) → audio and final latents, the way the original builds and runs it.

Read top to bottom, ``AceStepPipeline.__call__`` does:
  1. validate the request and fill variant defaults (steps, shift, guidance);
  2. prepare source audio (cover / repaint / extend / extract / lego / complete) and the reference (timbre) audio;
  3. build target latents, the chunk mask and the source latents per task (silence-latent context for
     text2music; 5 Hz hints for cover; silenced window for repaint/extend; audio codes as hints);
  4. encode caption, lyrics and timbre into the packed condition (and the text2music condition that cover
     switches to after ``audio_cover_strength`` of the steps);
  5. draw per-item noise from CPU generators, sample (turbo table or base/SFT schedule with APG), decode with
     the tiled VAE, anti-clip, normalise and, for repaint, splice the untouched source back in.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from . import sampling
from .audio import postprocess, prepare_audio, reference_segments, repaint_splice
from .constants import (
    DURATION_MAX, DURATION_MIN, MAX_BATCH_SIZE, REPAINT_MODES, SAMPLE_RATE, TASK_INSTRUCTIONS, VARIANT_DEFAULTS,
)
from .loading.checkpoint import AceStepCheckpoint, load_checkpoint
from .loading.silence import silence_slice
from .models.text_encoder import encode_text_inputs
from .prompts import format_caption_prompt, format_lyrics_prompt, format_metas, task_instruction
from .request import check_bpm, check_keyscale, check_language, check_time_signature, check_track_name
from .models.vae import tiled_decode, tiled_encode

TASKS = ("text2music", "cover", "repaint", "extend", "extract", "lego", "complete")
TASKS_WITH_SOURCE = ("cover", "repaint", "extend", "extract", "lego", "complete")
MIN_LATENT_FRAMES = 128  # the original never generates fewer than 128 frames (5.12 s)
REFERENCE_SECONDS = 30  # 750 latent frames; the silence slice of that length stands in when there is none
DEFAULT_DURATION = 120.0  # the original's fallback when no duration is given
MAX_CODES = 64000
CHUNK_MASK_MODES = ("explicit", "auto")
_AUDIO_CODE = re.compile(r"<\|audio_code_(\d+)\|>")


@dataclass
class GenerationRequest:
    task: str = "text2music"
    caption: str = ""
    lyrics: str = ""
    language: str = "en"
    bpm: int | None = None
    keyscale: str | None = None
    timesignature: str | None = None
    duration: float | None = None  # seconds; text2music default 120 (the original's fallback)
    src_audio: torch.Tensor | None = None  # [C, S] or [S]
    src_sample_rate: int | None = None
    ref_audio: torch.Tensor | None = None  # timbre reference, [C, S] or [S]
    ref_sample_rate: int | None = None
    audio_codes: str | Sequence[int] | None = None  # 5 Hz codes: ints or "<|audio_code_N|>" text
    repaint_start: float | None = None  # seconds on the source's time axis (negative = before it: outpaint)
    repaint_end: float | None = None  # None = end of source (repaint) / start + duration (extend)
    repaint_mode: str = "balanced"
    repaint_strength: float = 0.5
    tracks: Sequence[str] = ()
    audio_cover_strength: float = 1.0
    cover_noise_strength: float = 0.0
    chunk_mask_mode: str = "explicit"
    steps: int | None = None
    shift: float | None = None
    guidance: float | None = None
    timesteps: Sequence[float] | None = None
    cfg_interval_start: float = 0.0
    cfg_interval_end: float = 1.0
    use_adg: bool = False
    apg_momentum: float = sampling.APG_MOMENTUM
    apg_norm_threshold: float = sampling.APG_NORM_THRESHOLD
    velocity_norm_threshold: float = 0.0
    seed: int | Sequence[int] | None = None
    batch_size: int = 1
    normalize: bool = True
    latent_shift: float = 0.0
    latent_rescale: float = 1.0
    decode_chunk: int = 512  # latent frames per VAE decode tile (overlap 64 each side)
    decode: bool = True


@dataclass
class GenerationResult:
    audio: torch.Tensor | None  # [B, 2, T·1920] float32 at 48 kHz (None when decode=False)
    latents: torch.Tensor  # [B, T, 64] final latents, float32
    seeds: list[int]
    sample_rate: int = SAMPLE_RATE
    metadata: dict = field(default_factory=dict)


def parse_audio_codes(codes: str | Sequence[int]) -> list[int]:
    """Codes as ints or as ``<|audio_code_N|>`` text; values clamped to [0, 63999] like the original."""
    try:
        if isinstance(codes, str):
            values = [int(m) for m in _AUDIO_CODE.findall(codes)]
            if not values and codes.strip():
                values = [int(v) for v in re.split(r"[\s,]+", codes.strip())]
        else:
            values = [int(v) for v in codes]
    except (TypeError, ValueError):
        shown = codes if isinstance(codes, str) and len(codes) < 60 else type(codes).__name__
        raise _fail("audio_codes", shown, "integers 0–63999 or <|audio_code_N|> tokens") from None
    return [min(max(v, 0), MAX_CODES - 1) for v in values]


def _fail(name: str, value, allowed: str) -> ValueError:
    return ValueError(f"{name}={value!r} is not allowed: {allowed}")


def check_request(req: GenerationRequest) -> GenerationRequest:
    """Check every input that needs no model (steps/shift/guidance only when given); returns the request with
    ``tracks`` as a tuple. Errors name the input, the value and what is allowed."""
    if req.task not in TASKS:
        raise _fail("task", req.task, f"one of {', '.join(TASKS)}")
    check_language(req.language)
    check_keyscale(req.keyscale)
    check_time_signature(req.timesignature)
    check_bpm(req.bpm)
    if not 1 <= req.batch_size <= MAX_BATCH_SIZE:
        raise _fail("batch_size", req.batch_size, f"1 to {MAX_BATCH_SIZE}")
    for name in ("src", "ref"):
        audio, rate = getattr(req, f"{name}_audio"), getattr(req, f"{name}_sample_rate")
        if audio is not None and (rate is None or rate <= 0):
            raise _fail(f"{name}_sample_rate", rate, f"the sample rate of {name}_audio (a positive integer)")
    if req.duration is not None and not DURATION_MIN <= req.duration <= DURATION_MAX:
        raise _fail("duration", req.duration, f"{DURATION_MIN} to {DURATION_MAX} seconds")
    tracks = list(req.tracks)
    for track in tracks:
        check_track_name(track)
    if req.task in ("extract", "lego") and len(tracks) != 1:
        raise _fail("tracks", tracks, f"exactly one track name for task={req.task!r}")
    if req.task not in ("extract", "lego", "complete") and tracks:
        raise _fail("tracks", tracks, "track names only with extract, lego or complete")
    if req.task in TASKS_WITH_SOURCE and req.src_audio is None and not (req.task == "cover" and req.audio_codes):
        raise ValueError(f"task={req.task!r} needs src_audio (the song to work on)")
    if req.repaint_mode not in REPAINT_MODES:
        raise _fail("repaint_mode", req.repaint_mode, f"one of {', '.join(REPAINT_MODES)}")
    if req.chunk_mask_mode not in CHUNK_MASK_MODES:
        raise _fail("chunk_mask_mode", req.chunk_mask_mode, f"one of {', '.join(CHUNK_MASK_MODES)}")
    for name in ("repaint_strength", "audio_cover_strength", "cover_noise_strength"):
        value = getattr(req, name)
        if not 0.0 <= value <= 1.0:
            raise _fail(name, value, "0.0 to 1.0")
    if not 0.0 <= req.cfg_interval_start <= req.cfg_interval_end <= 1.0:
        raise _fail("cfg_interval", (req.cfg_interval_start, req.cfg_interval_end), "0 ≤ start ≤ end ≤ 1")
    if not -1.0 <= req.apg_momentum <= 1.0:
        raise _fail("apg_momentum", req.apg_momentum, "-1.0 to 1.0 (the original uses -0.75)")
    if req.apg_norm_threshold < 0:
        raise _fail("apg_norm_threshold", req.apg_norm_threshold, "≥ 0 (0 = no clamp; the original uses 2.5)")
    if req.velocity_norm_threshold < 0:
        raise _fail("velocity_norm_threshold", req.velocity_norm_threshold, "≥ 0 (0 = off)")
    if req.decode_chunk < 16:
        raise _fail("decode_chunk", req.decode_chunk, "at least 16 latent frames")
    if req.audio_codes is not None and not parse_audio_codes(req.audio_codes):
        raise _fail("audio_codes", req.audio_codes if isinstance(req.audio_codes, str) else "[]",
                    "integers 0–63999 or <|audio_code_N|> tokens")
    if req.steps is not None and not 1 <= req.steps <= 200:
        raise _fail("steps", req.steps, "1 to 200")
    if req.shift is not None and not 0.1 <= req.shift <= 10:
        raise _fail("shift", req.shift, "0.1 to 10")
    if req.guidance is not None and not 1.0 <= req.guidance <= 30.0:
        raise _fail("guidance", req.guidance, "1.0 (off) to 30")
    req = replace(req, tracks=tuple(tracks))
    _check_window(req)
    return req


def _source_seconds(req: GenerationRequest) -> float | None:
    if req.src_audio is None:
        return None
    return req.src_audio.shape[-1] / req.src_sample_rate


def _window(req: GenerationRequest) -> tuple[float, float] | None:
    """The repaint / extend / lego window (start, end) in seconds on the source's time axis, or None.

    repaint and lego: end None or negative = end of source; extend: start defaults to the end of the source
    and end to start + duration (30 s when none is given)."""
    src = _source_seconds(req)
    if req.task == "extend":
        start = src if req.repaint_start is None else req.repaint_start
        end = req.repaint_end if req.repaint_end is not None else start + (req.duration or 30.0)
        return start, end
    if req.task == "repaint" or (req.task == "lego" and (req.repaint_start is not None
                                                          or req.repaint_end is not None)):
        start = req.repaint_start or 0.0
        end = src if req.repaint_end is None or req.repaint_end < 0 else req.repaint_end
        return start, end
    return None


def _check_window(req: GenerationRequest) -> None:
    window = _window(req)
    if window is None:
        return
    (start, end), src = window, _source_seconds(req)
    if req.task == "extend":
        if not start < end:
            raise _fail("extend window", (start, end), "start < end")
        if start > src or end < 0:
            raise _fail("extend window", (start, end), f"a window touching the source [0, {src:.2f}] s")
        if max(end, src) - min(start, 0.0) > DURATION_MAX:
            raise _fail("extend window", (start, end), f"a result of at most {DURATION_MAX} s")
    elif not 0.0 <= start < end <= src + 1e-6:
        hint = " (use task='extend' to go outside the source)" if req.task == "repaint" else ""
        raise _fail(f"{req.task} window", (start, end),
                    f"0 ≤ start < end ≤ the source length {src:.2f} s{hint}")


class AceStepPipeline:
    def __init__(self, checkpoint: AceStepCheckpoint):
        self.ckpt = checkpoint
        # Rates come from the VAE (48 kHz, hop 1920 → 25 latent frames/s for the real model).
        self.sample_rate = checkpoint.vae.config.sampling_rate
        self.hop = checkpoint.vae.config.hop_length
        # Called with the names of the parts about to be used ("text_encoder", "vae", "model") so a host
        # application (ComfyUI) can move them onto its compute device first; None = use them where they are.
        self.before_use: Callable[[tuple[str, ...]], None] | None = None

    def _use(self, *parts: str) -> None:
        if self.before_use is not None:
            self.before_use(parts)
        silence = self.ckpt.silence_latent
        if "model" in parts and silence.device != self.model.device:
            self.ckpt.silence_latent = silence.to(self.model.device)

    @classmethod
    def from_pretrained(cls, path: str, dtype="auto", device=None, **paths) -> "AceStepPipeline":
        return cls(load_checkpoint(path, dtype=dtype, device=device, **paths))

    @property
    def model(self):
        return self.ckpt.model

    @property
    def is_turbo(self) -> bool:
        return self.ckpt.variant.endswith("turbo")

    # ------------------------------------------------------------------ validation

    def validate(self, req: GenerationRequest) -> GenerationRequest:
        """Check every input before any model work; returns the request with variant defaults filled in."""
        defaults = VARIANT_DEFAULTS[self.ckpt.variant]
        req = replace(req, steps=defaults.steps if req.steps is None else req.steps,
                      shift=defaults.shift if req.shift is None else req.shift,
                      guidance=defaults.guidance if req.guidance is None else req.guidance)
        return check_request(req)

    # ------------------------------------------------------------------ inputs per task

    def _seeds(self, req: GenerationRequest) -> list[int]:
        """One seed per item: a list as given; one int → seed, seed+1, …; None → random."""
        if req.seed is None:
            rng = random.SystemRandom()
            return [rng.randint(0, 2**32 - 1) for _ in range(req.batch_size)]
        if isinstance(req.seed, int):
            return [(req.seed + i) % 2**64 for i in range(req.batch_size)]
        seeds = [int(s) for s in req.seed]
        if len(seeds) != req.batch_size:
            raise _fail("seed", seeds, f"one seed per batch item ({req.batch_size})")
        return seeds

    def _encode_audio(self, wav: torch.Tensor, seed: int) -> torch.Tensor:
        """[2, S] at 48 kHz → VAE latent [T, 64] in the model dtype. Sampled from the posterior as the original
        does, but with a generator seeded from the generation seed (the original uses the global RNG)."""
        vae = self.ckpt.vae
        p = next(vae.parameters())
        with torch.no_grad():
            z = tiled_encode(vae, wav[None].to(device=p.device, dtype=p.dtype),
                             generator=torch.Generator().manual_seed(seed), sample=True)
        return z[0].transpose(0, 1).to(self.model.dtype)

    def _target(self, req: GenerationRequest, seeds: list[int]):
        """(target waveform [2, S] or None (zero-padded when outpainting), target latents [T, 64],
        window (start, end) in seconds on the padded waveform or None, hints from codes [T, 64] or None)."""
        silence = self.ckpt.silence_latent
        if req.audio_codes is not None:
            codes = torch.tensor(parse_audio_codes(req.audio_codes), device=self.model.device)[None]
            with torch.no_grad():
                hints = self.model.codes_to_hints(codes)[0]
            return None, hints, None, hints
        if req.src_audio is None:  # text2music: silence of the requested length
            duration = DEFAULT_DURATION if req.duration is None else req.duration
            frames = int(round(duration, 1) * self.sample_rate) // self.hop
            return None, silence_slice(silence, frames)[0], None, None

        wav, window = self._source(req)
        padded_silent = wav.abs().max() < 1e-6
        latents = silence_slice(silence, wav.shape[-1] // self.hop)[0] if padded_silent else self._encode_audio(wav, seeds[0])
        return wav, latents, window, None

    def _source(self, req: GenerationRequest):
        """(source waveform [2, S] at the VAE rate, zero-padded when outpainting; the window (start, end) in
        seconds on it or None)."""
        wav = prepare_audio(req.src_audio, req.src_sample_rate, self.sample_rate, name="src_audio", allow_silent=True)
        window = _window(req)
        if window is not None:
            start, end = window
            left = int(max(0.0, -start) * self.sample_rate)
            right = int(max(0.0, end - wav.shape[-1] / self.sample_rate) * self.sample_rate)
            if left or right:  # outpainting: pad the waveform with digital silence, shift the window
                wav = torch.nn.functional.pad(wav, (left, right))
            shift = max(0.0, -start)
            window = (start + shift, end + shift)
        return wav, window

    # ------------------------------------------------------------------ the call

    @torch.no_grad()
    def __call__(
        self,
        req: GenerationRequest,
        on_step: Callable[[int, int], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        req = self.validate(req)
        self._use("text_encoder", "vae", "model")
        model, dtype, device = self.model, self.model.dtype, self.model.device
        seeds = self._seeds(req)
        b = req.batch_size
        silence = self.ckpt.silence_latent

        # Target latents, padded to ≥ 128 frames with silence.
        wav, target, window, hints = self._target(req, seeds)
        t_len = max(MIN_LATENT_FRAMES, target.shape[0])
        if target.shape[0] < t_len:
            target = torch.cat([target, silence_slice(silence, t_len - target.shape[0])[0]])
        target = target.to(dtype)

        # Chunk mask and source latents.
        task = "cover" if req.task == "text2music" and hints is not None else req.task
        silence_t = silence_slice(silence, t_len)[0].to(dtype)
        chunk = torch.ones(t_len, device=device, dtype=dtype)
        repaint_mask = None
        src = target.clone() if (wav is not None or hints is not None) else silence_t
        if window is not None:
            start_f = max(0, min(int(window[0] * self.sample_rate // self.hop), t_len - 1))
            end_f = max(start_f + 1, min(int(window[1] * self.sample_rate // self.hop), t_len))
            chunk = torch.zeros_like(chunk)
            chunk[start_f:end_f] = 1
            if task != "lego":  # lego keeps the source audible inside the window
                src[start_f:end_f] = silence_t[start_f:end_f]
            if task in ("repaint", "extend"):
                repaint_mask = torch.zeros(b, t_len, dtype=torch.bool, device=device)
                repaint_mask[:, start_f:end_f] = True
        if req.chunk_mask_mode == "auto":
            chunk = torch.full_like(chunk, 2.0)  # upstream's newer "model decides" sentinel
        is_cover = task == "cover"
        if is_cover:
            if hints is None:
                hints = model.audio_to_hints(src[None], silence)[0]
            context_src = hints[:t_len] if hints.shape[0] >= t_len else torch.cat(
                [hints, silence_slice(silence, t_len - hints.shape[0])[0].to(dtype)])
        else:
            context_src = src
        context = torch.cat([context_src, chunk[:, None].expand(-1, context_src.shape[1])], -1)
        context = context[None].expand(b, -1, -1)

        # Prompts and condition.
        instruction = task_instruction("repaint" if task == "extend" else task, req.tracks or None)
        duration = self._metas_duration(req, wav, t_len)
        metas = format_metas(req.bpm, req.timesignature, req.keyscale, duration)
        lyrics_prompt = format_lyrics_prompt(req.lyrics, req.language)
        refer = self._reference_latents(req, seeds)
        cond = self._condition(format_caption_prompt(req.caption, instruction, metas), lyrics_prompt, refer, b)
        non_cover = None
        if is_cover and req.audio_cover_strength < 1.0:
            plain = format_caption_prompt(req.caption, TASK_INSTRUCTIONS["text2music"], metas)
            non_cover = (self._condition(plain, lyrics_prompt, refer, b),
                         torch.cat([silence_t, chunk[:, None].expand(-1, silence_t.shape[1])], -1)[None].expand(b, -1, -1))

        # Schedule (turbo: the fixed table; base/SFT: linspace + shift in the model dtype) and start point.
        noise = torch.cat([torch.randn(1, t_len, target.shape[1], generator=torch.Generator().manual_seed(s))
                           for s in seeds]).to(device=device, dtype=dtype)
        timesteps = req.timesteps if (self.is_turbo or self.ckpt.variant.endswith("sft")) else None
        if self.is_turbo:  # the original picks the cover-noise start on the unrounded table
            schedule = sampling.turbo_schedule(req.shift, timesteps, torch.float64)
        else:
            schedule = sampling.base_schedule(req.steps, req.shift, dtype, timesteps)
        x = noise
        if req.cover_noise_strength > 0 and is_cover:
            schedule, t_start = sampling.truncate_for_cover_noise(schedule, req.cover_noise_strength,
                                                                  turbo=self.is_turbo)
            x = sampling.renoise(src[None].expand(b, -1, -1), noise, t_start)
        if self.is_turbo:
            schedule = sampling.cast_schedule(schedule, dtype)
        num_steps = len(schedule) if self.is_turbo else len(schedule) - 1
        cover_steps = int(num_steps * req.audio_cover_strength) if is_cover else num_steps
        use_cfg = not self.is_turbo and req.guidance > 1.0

        conditions = {"cover": (cond, context)}
        if non_cover is not None:
            conditions["plain"] = non_cover
        active: dict[str, tuple] = {}  # the condition in use: its cross-attention K/V and DiT context

        def velocity(x_t: torch.Tensor, t: float, step: int):
            key = "plain" if (non_cover is not None and step >= cover_steps) else "cover"
            if key not in active:  # computed once per condition, not per step
                (enc, _), ctx = conditions[key]
                if use_cfg:  # one batched call: [cond; uncond], uncond = the learned null embedding
                    enc, ctx = torch.cat([enc, model.null_condition_emb.expand_as(enc)]), torch.cat([ctx, ctx])
                active.clear()
                active[key] = (model.decoder.cross_kv(enc), ctx)
            kv, ctx = active[key]
            inputs = torch.cat([x_t, x_t]) if use_cfg else x_t
            tt = torch.full((inputs.shape[0],), t, device=device, dtype=dtype)
            v = model.decoder(inputs, tt, ctx, kv)
            return (v[:b], v[b:]) if use_cfg else (v, None)

        injection_ratio, crossfade_frames, _ = sampling.repaint_settings(req.repaint_mode,
                                                                                      req.repaint_strength)
        repaint = None
        if repaint_mask is not None:
            repaint = sampling.Repaint(target[None].expand(b, -1, -1), repaint_mask, noise, injection_ratio,
                                       crossfade_frames)
        latents = sampling.sample(
            x, schedule, velocity, turbo=self.is_turbo, guidance_scale=req.guidance if use_cfg else 1.0,
            cfg_interval_start=req.cfg_interval_start, cfg_interval_end=req.cfg_interval_end,
            use_adg=req.use_adg, velocity_norm_threshold=req.velocity_norm_threshold, repaint=repaint,
            apg_momentum=req.apg_momentum, apg_norm_threshold=req.apg_norm_threshold, on_step=on_step, should_cancel=should_cancel,
        )

        metadata = {"task": req.task, "variant": self.ckpt.variant, "steps": num_steps, "shift": req.shift,
                    "guidance": req.guidance if use_cfg else 1.0, "seeds": seeds, "instruction": instruction,
                    "metas": metas, "frames": t_len}
        audio = self.render(latents, req, validated=True, source=(wav, window)) if req.decode else None
        return GenerationResult(audio, latents.float(), seeds, self.sample_rate, metadata)

    def render(self, latents: torch.Tensor, req: GenerationRequest, validated: bool = False,
               source: tuple | None = None) -> torch.Tensor:
        """Final latents [B, T, 64] of ``req`` → float32 audio [B, 2, S]: tiled VAE decode, anti-clip, for
        repaint/extend (balanced, conservative) the untouched source spliced back outside the window with
        sample-exact edges as the original does, then normalisation unless switched off. ``source``: the
        (waveform, window) pair the generation already prepared, instead of preparing it again."""
        req = req if validated else self.validate(req)
        audio = self.decode(latents, req, normalize=False)  # anti-clipped only
        if req.task in ("repaint", "extend") and req.audio_codes is None and req.repaint_mode != "aggressive":
            wav, window = source if source is not None else self._source(req)
            _, _, wav_crossfade = sampling.repaint_settings(req.repaint_mode, req.repaint_strength)
            start_s, end_s = int(window[0] * self.sample_rate), int(window[1] * self.sample_rate)
            original = torch.nn.functional.pad(wav, (0, max(0, audio.shape[-1] - wav.shape[-1])))[:, : audio.shape[-1]]
            audio = torch.stack([repaint_splice(a, original.to(a), start_s, end_s,
                                                int(wav_crossfade * self.sample_rate)) for a in audio])
        return postprocess(audio, normalize=req.normalize)

    def _metas_duration(self, req, wav, t_len) -> float:
        """The duration written into the metas: the source length for audio tasks (as the original), else the
        requested duration, else the length of the audio codes, else the original's 120 s fallback."""
        if wav is not None:
            return wav.shape[-1] / self.sample_rate
        if req.duration is not None:
            return req.duration
        if req.audio_codes is not None:
            return t_len * self.hop / self.sample_rate
        return DEFAULT_DURATION

    def _reference_latents(self, req: GenerationRequest, seeds: list[int]) -> torch.Tensor:
        """Timbre reference latents [1, 750, 64]: 3 × 10 s from the thirds of the reference (segment choice
        seeded), VAE-encoded; the silence latent's first 750 frames when there is no reference."""
        if req.ref_audio is None:
            frames = REFERENCE_SECONDS * self.sample_rate // self.hop
            return silence_slice(self.ckpt.silence_latent, frames).to(self.model.dtype)
        wav = reference_segments(prepare_audio(req.ref_audio, req.ref_sample_rate, self.sample_rate, name="ref_audio"),
                                 seeds[0], self.sample_rate)
        return self._encode_audio(wav, seeds[0])[None]

    def _condition(self, caption_prompt: str, lyrics_prompt: str, refer: torch.Tensor, batch: int):
        """Packed condition [B, S, D] and mask for one prompt pair repeated over the batch."""
        text, text_mask, lyr, lyr_mask = encode_text_inputs(self.ckpt.tokenizer, self.ckpt.text_encoder,
                                                            [caption_prompt], [lyrics_prompt])
        dtype = self.model.dtype
        refs = refer.expand(batch, -1, -1).to(dtype)
        order = torch.arange(batch, device=refs.device)
        enc, mask = self.model.encoder(text.to(dtype).expand(batch, -1, -1), text_mask.expand(batch, -1),
                                       lyr.to(dtype).expand(batch, -1, -1), lyr_mask.expand(batch, -1), refs, order)
        return enc, mask

    @torch.no_grad()
    def encode(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Audio [B, C, S] (or [C, S]) at any rate → VAE latents [B, T, 64] (float32, posterior mean, tiled):
        each item made stereo and resampled to the VAE rate first."""
        items = waveform[None] if waveform.dim() == 2 else waveform
        if items.dim() != 3:
            raise ValueError(f"audio waveform has shape {tuple(waveform.shape)}; expected [batch, channels, samples]")
        self._use("vae")
        wav = torch.stack([prepare_audio(w, sample_rate, self.sample_rate, name="audio", allow_silent=True)
                           for w in items])
        return tiled_encode(self.ckpt.vae, wav).transpose(1, 2).float()

    def decode(self, latents: torch.Tensor, req: GenerationRequest | None = None, normalize: bool | None = None
               ) -> torch.Tensor:
        """Final latents [B, T, 64] → float32 audio [B, 2, T·1920]: optional latent shift/rescale, tiled VAE
        decode (overlap 64), anti-clip by true peak, and −1 dBFS peak normalisation unless switched off."""
        req = req or GenerationRequest()
        self._use("vae")
        z = latents * req.latent_rescale + req.latent_shift
        if not torch.isfinite(z).all():
            raise ValueError("the generated latents contain NaN/Inf (try float32, or another seed)")
        audio = tiled_decode(self.ckpt.vae, z.transpose(1, 2), chunk_size=req.decode_chunk, overlap=64)
        return postprocess(audio.float(), normalize=req.normalize if normalize is None else normalize)


