"""Flow-matching sampler: schedules, noise and retake, DCW, guidance (APG / ADG / CFG), the sampling loop (Euler,
Heun, SDE, velocity EMA), repaint helpers and the flow-edit morph.

Convention (all variants): x_t = t·noise + (1−t)·x0 with t = 1 pure noise, the DiT predicts v = noise − x0, so
x0 = x_t − t·v and an Euler step from t to t' is x ← x − v·(t − t').

Arithmetic follows the original ACE-Step 1.5 ``generate_audio`` loops operation by operation, in the model dtype
(bf16 on CUDA): the schedule is rounded through the dtype, dt is a dtype tensor, and every place where the
original multiplies by a Python float (which PyTorch applies at float32 "opmath" precision, not rounded to bf16)
versus a dtype tensor (rounded) is kept as it is there. Only the APG projection (float64), parts of ADG
(float64/float32) and the DCW wavelet transform (float32) leave the model dtype, as in the original.

The options beyond the April code (DCW, turbo step counts, retake, Heun, SDE, EMA, flow-edit) follow the newest
upstream (ACE-Step-1.5 6d467e4, 2026-06-26) the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .constants import (
    APG_MOMENTUM, APG_NORM_THRESHOLD, INFER_METHODS, REPAINT_MODES, SAMPLER_MODES, TURBO_MAX_STEPS, DcwSettings,
)
from .errors import SHOWN_MODULE

# The turbo checkpoints are distilled on these fixed 8-step schedules (t = s·u/(1+(s−1)u), u = 1 − i/8, the final
# t = 0 left out: the last step jumps straight to x0). Values are the original's Python floats.
TURBO_TABLES: dict[float, list[float]] = {
    1.0: [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125],
    2.0: [1.0, 0.9333333333333333, 0.8571428571428571, 0.7692307692307693, 0.6666666666666666,
          0.5454545454545454, 0.4, 0.2222222222222222],
    3.0: [1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3],
}
# Custom turbo timesteps are snapped to these 20 values (descending, so a tie snaps to the larger t as in the original).
TURBO_VALID_TIMESTEPS: list[float] = sorted({t for table in TURBO_TABLES.values() for t in table}, reverse=True)
MAX_TURBO_STEPS = TURBO_MAX_STEPS

ADG_ANGLE_CLIP = 3.14 / 6  # the original's "pi/6"


class GenerationCancelled(Exception):
    """Raised by :func:`sample` when ``should_cancel()`` returns True before a step."""

    __module__ = SHOWN_MODULE  # named as the pack's other errors (see errors.SHOWN_MODULE)


# ----------------------------------------------------------------------------------------------------------------
# Schedules


def cast_schedule(values: Sequence[float], dtype: torch.dtype) -> list[float]:
    """Round timesteps through ``dtype`` as the original builds its schedule: ``torch.tensor(values, dtype=dtype)``."""
    return torch.tensor([float(v) for v in values], dtype=dtype).tolist()


def _assert_timesteps(values: list[float]) -> None:
    """Custom timesteps as ``checks.check_timesteps`` lets them through: in [0, 1], strictly descending (float32)."""
    assert all(0.0 <= v <= 1.0 for v in values) and all(a > b for a, b in zip(values, values[1:])), values


def _as_float32_list(timesteps) -> list[float]:
    # The original's handler hands custom timesteps to the model as a float32 tensor.
    if isinstance(timesteps, Tensor):
        timesteps = timesteps.detach().cpu().reshape(-1).tolist()
    return torch.tensor([float(t) for t in timesteps], dtype=torch.float32).tolist()


def turbo_step_times(steps: int, shift: float) -> list[float]:
    """Upstream's variable-step turbo schedule (6761951): t_i = s·u/(1 + (s−1)·u), u = 1 − i/N, i < N, in Python
    floats as upstream computes it. At N = 8 and s = 1, 2, 3 these are the :data:`TURBO_TABLES` bit for bit."""
    assert isinstance(steps, int) and 1 <= steps <= MAX_TURBO_STEPS and shift > 0, (steps, shift)
    raw = [1.0 - i / steps for i in range(steps)]
    if shift != 1.0:
        raw = [shift * t / (1.0 + (shift - 1.0) * t) for t in raw]
    return raw


def turbo_schedule(shift: float = 3.0, timesteps: Sequence[float] | Tensor | None = None,
                   dtype: torch.dtype = torch.float32, steps: int | None = None) -> list[float]:
    """Step start times for the turbo models: one DiT call per entry, no trailing 0 (the last step jumps to x0).

    With ``timesteps``: trailing zeros stripped, at most 20 values left, each snapped to the nearest of
    :data:`TURBO_VALID_TIMESTEPS` (``steps`` and ``shift`` are then ignored, as upstream does). Else with ``steps``
    (1 to 20): :func:`turbo_step_times` for any shift, as the newest upstream runs turbo. Else (the April code,
    which ignored the step count) the fixed 8-step table of the nearest shift in {1, 2, 3} (a tie goes to the
    smaller). Values are rounded through ``dtype`` (pass ``torch.float64`` to get the unrounded values, e.g. for
    :func:`truncate_for_cover_noise`).
    """
    if timesteps is not None:
        values = _as_float32_list(timesteps)
        while values and values[-1] == 0:
            values.pop()
        assert 1 <= len(values) <= MAX_TURBO_STEPS, values  # schedule.resolve_sampler counts them
        _assert_timesteps(values)
        values = [min(TURBO_VALID_TIMESTEPS, key=lambda v: abs(v - t)) for t in values]
    elif steps is not None:
        values = turbo_step_times(steps, shift)
    else:
        assert shift > 0, shift
        values = TURBO_TABLES[min(TURBO_TABLES, key=lambda s: abs(s - shift))]
    return cast_schedule(values, dtype)


def base_schedule(steps: int, shift: float, dtype: torch.dtype,
                  timesteps: Sequence[float] | Tensor | None = None) -> list[float]:
    """The base/SFT schedule, ``steps + 1`` values including the end point (normally 0).

    t = linspace(1, 0, steps+1) computed in ``dtype``, then t ← s·t/(1+(s−1)t) also in ``dtype`` when s ≠ 1 (so bf16
    gives 1.0, 0.98046875, … at shift 1). Explicit ``timesteps`` (the SFT models' option) are used verbatim after the
    float32 → ``dtype`` cast, ``steps`` and ``shift`` then being ignored; the original base model has no such option.
    """
    if timesteps is not None:
        values = _as_float32_list(timesteps)
        assert len(values) >= 2, values  # schedule.resolve_sampler: at least 2 on base/SFT
        _assert_timesteps(values)
        return torch.tensor(values, dtype=torch.float32).to(dtype).tolist()
    assert isinstance(steps, int) and steps >= 1 and shift > 0, (steps, shift)
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype)
    if shift != 1.0:
        t = shift * t / (1 + (shift - 1) * t)
    return t.tolist()


def flow_edit_schedule(steps: int, shift: float, dtype: torch.dtype,
                       timesteps: Sequence[float] | Tensor | None = None) -> list[float]:
    """The schedule upstream's flow-edit loop runs on every variant, turbo included: :func:`base_schedule`
    (``steps + 1`` values ending at 0); explicit ``timesteps`` are used verbatim (no snapping, even on turbo) with
    a final 0 appended when they do not end at 0."""
    if timesteps is None:
        return base_schedule(steps, shift, dtype)
    values = _as_float32_list(timesteps)
    assert values, "no timesteps"  # checks.check_timesteps turns an empty list into None
    if values[-1] != 0.0:
        values.append(0.0)
    return base_schedule(steps, shift, dtype, timesteps=values)


def truncate_for_cover_noise(schedule: Sequence[float], strength: float, *,
                             turbo: bool) -> tuple[list[float], float]:
    """``cover_noise_strength``: start the sampler at t* = the schedule value nearest to 1 − strength.

    Candidates are every step start time (turbo: the whole list; base/SFT: all but the end point); a tie goes to
    the earlier (larger) t. Returns (schedule from t* on, t*); start from ``renoise(src_latents, noise, t*)``.
    The turbo original picks t* on its unrounded table and renoises with that unrounded value, so for exact
    turbo parity pass ``turbo_schedule(..., dtype=torch.float64)`` here and ``cast_schedule`` the result.
    """
    assert 0.0 < strength <= 1.0, strength  # cover_noise: checked by the request, 0 = not called
    schedule = [float(t) for t in schedule]
    candidates = schedule if turbo else schedule[:-1]
    assert candidates, schedule
    target = 1.0 - strength
    start = min(range(len(candidates)), key=lambda i: abs(candidates[i] - target))
    return schedule[start:], schedule[start]


def renoise(x: Tensor, noise: Tensor, t: float) -> Tensor:
    """x_t = t·noise + (1−t)·x with a Python-float t (as the original's ``renoise``)."""
    return t * noise + (1.0 - t) * x


# ----------------------------------------------------------------------------------------------------------------
# Noise and retake


def seeded_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per batch item."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def item_noise(generators: Sequence[torch.Generator] | None, like: Tensor) -> Tensor:
    """N(0, 1) noise shaped like ``like`` [B, T, C]: one [1, T, C] draw per item from its own CPU generator, in
    float32 (so a seed gives the same noise on every device and dtype), then moved to ``like``'s device and dtype
    — how the pipeline draws its initial noise. ``generators=None`` draws from the global RNG, as upstream does
    for SDE steps."""
    if generators is None:
        return torch.randn_like(like)
    assert len(generators) == like.shape[0], f"one noise generator per batch item ({like.shape[0]})"
    draws = [torch.randn(1, *like.shape[1:], generator=g) for g in generators]
    return torch.cat(draws).to(device=like.device, dtype=like.dtype)


def retake_mix(noise: Tensor, retake_noise: Tensor, variance: float) -> Tensor:
    """Retake (upstream #1155): cos(v·π/2)·noise + sin(v·π/2)·retake_noise, a variance-preserving rotation from
    the seed's noise (v = 0, returned as is) towards an independent draw (v = 1). ``retake_noise`` is drawn like
    the initial noise, from the retake seeds (upstream resolves them as it resolves the main seeds and calls the
    same ``prepare_noise``). Use the mixed noise wherever the original noise is used (start point, cover-noise
    blend, repaint injection)."""
    assert 0.0 <= variance <= 1.0, variance  # retake_variance: checked by the request
    if variance == 0.0:
        return noise
    angle = variance * (math.pi / 2.0)
    return math.cos(angle) * noise + math.sin(angle) * retake_noise


# ----------------------------------------------------------------------------------------------------------------
# DCW: Differential Correction in Wavelet domain (arXiv 2604.16044), upstream's post-step correction

def _haar_tap(dtype: torch.dtype) -> float:
    """The Haar filter tap 1/√2 as ``dtype`` holds it (float32: 0.70710677, as pytorch_wavelets builds its filters)."""
    return torch.tensor(1.0 / math.sqrt(2.0), dtype=dtype).item()


def haar_dwt(x: Tensor) -> tuple[Tensor, Tensor]:
    """One-level Haar DWT along time of [B, T, C] → (low, high), each [B, ⌈T/2⌉, C].

    low_k = (x_2k + x_2k+1)/√2, high_k = (x_2k − x_2k+1)/√2 (PyWavelets' sign); an odd T gets one zero frame at
    the end, as PyWavelets' and pytorch_wavelets' "zero" mode do for Haar. Below float64 the second tap is added
    to the rounded first product with a single rounding (a fused multiply-add, done here in float64), which is how
    the convolution in upstream's pytorch_wavelets accumulates; that keeps DCW bit-identical to upstream's.
    """
    if x.shape[1] % 2:
        x = F.pad(x, (0, 0, 0, 1))
    even, odd = x[:, 0::2], x[:, 1::2]
    h = _haar_tap(x.dtype)
    first = even * h
    if x.dtype == torch.float64:
        return first + odd * h, first - odd * h
    second = odd.double() * h  # exact: two float32 significands fit in a float64 one
    return (first.double() + second).to(x.dtype), (first.double() - second).to(x.dtype)


def haar_idwt(low: Tensor, high: Tensor, length: int) -> Tensor:
    """Inverse of :func:`haar_dwt`: [B, T', C] bands → [B, length, C] (the padding frame, if any, cropped).
    x_2k = (low + high)/√2, x_2k+1 = (low − high)/√2, each product rounded, as a transposed convolution does."""
    h = _haar_tap(low.dtype)
    even, odd = low * h + high * h, low * h - high * h
    return torch.stack([even, odd], dim=2).flatten(1, 2)[:, :length]


def dcw_correct(x_next: Tensor, x0_hat: Tensor, t: float, dcw: DcwSettings) -> Tensor:
    """Push the sampler's new latent away from its clean estimate, per wavelet band, as upstream's DCWCorrector.

    x_next: the latent after the step; x0_hat = x − v·t, the clean estimate of the step's start (v the guided,
    clamped, smoothed velocity of the first evaluation, before any Heun averaging); t: the step's start time.
    Bands of x_next (L, H) and of x0_hat (L̂, Ĥ): L ← L + λ_low·(L − L̂), H ← H + λ_high·(H − Ĥ), with
    ``low``: λ_low = t·scaler; ``high``: λ_high = (1 − t)·scaler; ``double``: both, λ_high = (1 − t)·high_scaler.
    The transform runs in float32 and the result is cast back (so even a zero difference round-trips through
    float32, as upstream's). ``pix``: x_next + scaler·(x_next − x0_hat) in the latent dtype, no t factor. A band
    whose λ is 0 is left alone, and when both are 0 x_next is returned untouched.
    """
    if not dcw.active:
        return x_next
    if dcw.mode == "pix":
        return x_next + dcw.scaler * (x_next - x0_hat)
    t = float(t)
    low = t * dcw.scaler if dcw.mode in ("low", "double") else 0.0
    high_scaler = dcw.high_scaler if dcw.mode == "double" else dcw.scaler
    high = (1.0 - t) * high_scaler if dcw.mode in ("high", "double") else 0.0
    if low == 0.0 and high == 0.0:
        return x_next
    x_low, x_high = haar_dwt(x_next.float())
    y_low, y_high = haar_dwt(x0_hat.float())
    if low != 0.0:
        x_low = x_low + low * (x_low - y_low)
    if high != 0.0:
        x_high = x_high + high * (x_high - y_high)
    return haar_idwt(x_low, x_high, x_next.shape[1]).to(x_next.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Guidance


class APG:
    """Adaptive projected guidance as the base/SFT models use it (``apg_forward(..., dims=[1])``, eta 0 unless given).

    Holds the momentum buffer, so use one instance per generation and call it only on guided steps.
    Tensors are [B, T, C]; norms and projections run over T, separately per item and channel.
    """

    def __init__(self, guidance_scale: float, momentum: float = APG_MOMENTUM,
                 norm_threshold: float = APG_NORM_THRESHOLD, eta: float = 0.0):
        self.guidance_scale = guidance_scale
        self.momentum = momentum
        self.norm_threshold = norm_threshold
        self.eta = eta  # share of the parallel part kept (upstream apg_forward's eta; the original runs 0)
        self.running = None  # momentum buffer (starts at 0)

    def advance(self, diff: Tensor) -> Tensor:
        """Momentum update with a guidance difference (v_cond − v_uncond); returns the new running value."""
        self.running = diff if self.running is None else diff + self.momentum * self.running
        return self.running

    def __call__(self, v_cond: Tensor, v_uncond: Tensor) -> Tensor:
        d = self.advance(v_cond - v_uncond)
        if self.norm_threshold > 0:  # 0 = no clamp
            d = d * (self.norm_threshold / d.norm(p=2, dim=1, keepdim=True)).clamp(max=1.0)
        # Keep only the part of d orthogonal to v_cond (float64 projection, as the original).
        d64, u = d.double(), F.normalize(v_cond.double(), dim=1)
        d_par = (d64 * u).sum(dim=1, keepdim=True) * u
        update = (d64 - d_par).to(d.dtype)
        if self.eta:
            update = update + self.eta * d_par.to(d.dtype)
        return v_cond + (self.guidance_scale - 1) * update


def adg(x: Tensor, v_cond: Tensor, v_uncond: Tensor, t: float, guidance_scale: float) -> Tensor:
    """Angle-based dynamic guidance (the original's ``adg_forward``, clip on, no norm), [B, T, C] tensors.

    Works on the x0 estimates x̂ = x − t·v: rotates x̂_cond away from x̂_uncond by w·θ (θ the angle between them over
    channels, per item and frame, w = max(g−1, 0) + 1e-3, clipped to ±3.14/6) and returns v = (x − x̂_new)/t.
    """
    n, frames, c = v_cond.shape
    w = max(guidance_scale - 1.0, 0.0) + 1e-3
    xc, xu = x - t * v_cond, x - t * v_uncond
    a, b = xc.reshape(-1, c).double(), xu.reshape(-1, c).double()
    cos = ((a / torch.linalg.norm(a, dim=1, keepdim=True)) * (b / torch.linalg.norm(b, dim=1, keepdim=True)))
    cos = cos.sum(dim=1, keepdim=True).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
    theta = torch.acos(cos).view(n, frames, 1)
    theta_new = torch.clip(w * theta, -ADG_ANGLE_CLIP, ADG_ANGLE_CLIP)
    # Component of (x̂_cond − x̂_uncond) perpendicular to x̂_uncond, in float32 as the original.
    diff, u = (xc - xu).reshape(-1, c).float(), xu.reshape(-1, c).float()
    coef = (diff * u).sum(dim=1, keepdim=True) / ((u * u).sum(dim=1, keepdim=True) + 1e-8)
    perp = (diff - coef * u).view(n, frames, c)
    sin = torch.sin(theta)
    rotated = torch.where(sin > 1e-3, perp * torch.sin(theta_new) / sin, perp * w)
    x0 = torch.cos(theta_new) * xc + rotated
    return ((x - x0) / t).to(x.dtype)


def cfg(v_cond: Tensor, v_uncond: Tensor, guidance_scale: float) -> Tensor:
    """Plain classifier-free guidance (the original uses it for its Heun corrector step)."""
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def clamp_velocity(v: Tensor, x: Tensor, threshold: float) -> Tensor:
    """Scale each item's v so that ‖v‖ ≤ threshold·‖x‖ (norms over the whole item), the original's velocity clamp."""
    v_norm = torch.norm(v, dim=(1, 2), keepdim=True)
    x_norm = torch.norm(x, dim=(1, 2), keepdim=True) + 1e-10
    return v * torch.clamp(threshold * x_norm / (v_norm + 1e-10), max=1.0)


# ----------------------------------------------------------------------------------------------------------------
# Repaint


def repaint_settings(mode: str, strength: float) -> tuple[float, int, float]:
    """(injection_ratio, latent crossfade frames, waveform crossfade seconds) for a repaint mode.

    ``strength`` (0 = keep the most of the source, 1 = pure diffusion) only matters in ``balanced`` mode;
    frames use Python's round(), so strength 0.5 gives 12 (banker's rounding of 12.5).
    """
    assert mode in REPAINT_MODES and 0.0 <= strength <= 1.0, (mode, strength)  # checked by the request's Task
    if mode == "aggressive":
        return 0.0, 0, 0.0
    if mode == "conservative":
        return 1.0, 25, 0.05
    inv = 1.0 - strength
    return inv, round(25 * inv), 0.05 * inv


@dataclass
class Repaint:
    """Repaint inputs for :func:`sample`: keep the source outside ``mask`` while the first steps run.

    clean: source latents [B, T, C] (model dtype); mask: bool [B, T], True = frames to regenerate;
    noise: the generation's initial noise (the same tensor the sampler started from, before any cover-noise blend);
    injection_ratio: inject after the first round(ratio·num_steps) steps; crossfade_frames: final blend ramp (0 = none).
    """
    clean: Tensor
    mask: Tensor
    noise: Tensor
    injection_ratio: float
    crossfade_frames: int


def repaint_boundary_blend(x: Tensor, clean: Tensor, mask: Tensor, crossfade_frames: int) -> Tensor:
    """m·x + (1−m)·clean, m = 1 on the repaint span, 0 outside, with linear ramps of ``crossfade_frames`` either side.

    Per item the span runs from the first to the last True frame (rows all True or all False get no ramp); ramp
    values are linspace(0, 1, n+2)[1:-1], n shortened at the latent's ends. m is float32 as in the original;
    the result is cast back to ``x.dtype``.
    """
    soft = mask.float().clone()
    frames = mask.shape[1]
    if crossfade_frames > 0:
        for b in range(mask.shape[0]):
            row = mask[b]
            if not row.any():
                continue
            idx = torch.nonzero(row).squeeze(-1)
            left, right = int(idx[0]), int(idx[-1]) + 1
            n = min(crossfade_frames, left)
            if n > 0:
                soft[b, left - n:left] = torch.linspace(0, 1, n + 2, device=soft.device)[1:-1]
            n = min(crossfade_frames, frames - right)
            if n > 0:
                soft[b, right:right + n] = torch.linspace(1, 0, n + 2, device=soft.device)[1:-1]
    m = soft.unsqueeze(-1)
    return (m * x + (1.0 - m) * clean).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# The loop

# velocity(x, t, step) -> (v_cond, v_uncond or None). The caller runs the DiT (batched [cond; uncond] when guided)
# and switches the condition for audio_cover_strength by step index.
VelocityFn = Callable[[Tensor, float, int], tuple[Tensor, Optional[Tensor]]]


class _Guidance:
    """Turns a (v_cond, v_uncond) pair into the velocity a step uses, as the original's base/SFT loop does:
    APG (or ADG) on steps whose t lies in [cfg_interval_start, cfg_interval_end] compared in the model dtype,
    v_cond elsewhere; Heun's corrector evaluation uses plain CFG (or ADG while t > 0) so APG's momentum moves
    once per step."""

    def __init__(self, guidance_scale: float, interval: tuple[float, float], use_adg: bool, apg: APG | None):
        self.scale, self.use_adg, self.apg = guidance_scale, use_adg, apg
        self.guided = guidance_scale > 1.0
        self.lo, self.hi = interval

    def _applies(self, v_uncond: Tensor | None, t: float, step: int) -> bool:
        if not (self.guided and self.lo <= t <= self.hi):
            return False
        assert v_uncond is not None, f"guidance_scale={self.scale} needs v_uncond at step {step} (t={t})"
        return True

    def step(self, x: Tensor, v_cond: Tensor, v_uncond: Tensor | None, t: float, step: int) -> Tensor:
        if not self._applies(v_uncond, t, step):
            return v_cond
        return adg(x, v_cond, v_uncond, t, self.scale) if self.use_adg else self.apg(v_cond, v_uncond)

    def corrector(self, x: Tensor, v_cond: Tensor, v_uncond: Tensor | None, t: float, step: int) -> Tensor:
        if not self._applies(v_uncond, t, step):
            return v_cond
        if self.use_adg and t > 0:
            return adg(x, v_cond, v_uncond, t, self.scale)
        return cfg(v_cond, v_uncond, self.scale)


def _smooth(v: Tensor, previous: Tensor | None, factor: float) -> Tensor:
    """Velocity EMA: (1 − f)·v + f·v_previous (v unchanged when off or on the first step)."""
    if factor <= 0.0 or previous is None:
        return v
    return (1.0 - factor) * v + factor * previous


def _scalar(value: float, like: Tensor) -> Tensor:
    """A Python float as a tensor of ``like``'s dtype (the original multiplies by dtype tensors here)."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _heun_step(x: Tensor, v: Tensor, t: float, t_next: float, step: int, velocity: VelocityFn,
               guidance: _Guidance, velocity_norm_threshold: float, ema: float) -> tuple[Tensor, Tensor]:
    """Trapezoid (upstream ``sampler_mode="heun"``): Euler to t_next, evaluate there, step with the mean of
    both velocities. Returns (x_next, the averaged velocity, which the next step's EMA sees)."""
    dt = _scalar(t - t_next, x)
    x_pred = x - v * dt
    v2 = guidance.corrector(x_pred, *velocity(x_pred, t_next, step), t_next, step)
    if velocity_norm_threshold > 0:
        v2 = clamp_velocity(v2, x_pred, velocity_norm_threshold)
    if ema > 0.0:  # the corrector is smoothed towards this step's first velocity
        v2 = (1.0 - ema) * v2 + ema * v
    v_avg = 0.5 * (v + v2)
    return x - v_avg * dt, v_avg


def _sde_step(x: Tensor, v: Tensor, t: float, t_next: float,
              generators: Sequence[torch.Generator] | None) -> Tensor:
    """Upstream ``infer_method="sde"``: the clean estimate x − v·t re-noised to t_next with fresh noise."""
    return renoise(x - v * _scalar(t, x), item_noise(generators, x), t_next)


@torch.no_grad()
def sample(x: Tensor, schedule: Sequence[float], velocity: VelocityFn, *, turbo: bool,
           guidance_scale: float = 1.0, cfg_interval_start: float = 0.0, cfg_interval_end: float = 1.0,
           use_adg: bool = False, velocity_norm_threshold: float = 0.0, repaint: Repaint | None = None,
           apg_momentum: float = APG_MOMENTUM, apg_norm_threshold: float = APG_NORM_THRESHOLD, apg_eta: float = 0.0,
           sampler_mode: str = "euler", infer_method: str = "ode", velocity_ema_factor: float = 0.0,
           dcw: DcwSettings | None = None, sde_generators: Sequence[torch.Generator] | None = None,
           on_step: Callable[[int, int], None] | None = None,
           should_cancel: Callable[[], bool] | None = None) -> Tensor:
    """Run the flow-matching sampler from ``x`` ([B, T, C], model dtype) and return the final latents.

    ``schedule``: from :func:`turbo_schedule` (turbo: one step per entry, the last one jumps to x0 = x − v·t) or
    :func:`base_schedule` (one step per pair, the last one ends at the final value, normally 0); possibly truncated
    by :func:`truncate_for_cover_noise`. Guidance (base/SFT only, ``guidance_scale > 1``) applies on steps whose t
    lies in [cfg_interval_start, cfg_interval_end] (compared in the model dtype, as the original); elsewhere
    v = v_cond. APG by default (the original's momentum −0.75 and norm threshold 2.5 unless given), ADG with
    ``use_adg``.

    Each step, as upstream's loops: guided v → optional norm clamp → optional EMA with the previous step's
    velocity (``velocity_ema_factor``) → the update: Euler; ``sampler_mode="heun"`` (a second DiT call at t_next,
    mean velocity); or ``infer_method="sde"`` (x0 estimate re-noised to the next time with noise from
    ``sde_generators``, one CPU generator per item, or the global RNG when None: on turbo the next schedule value,
    on base/SFT 1 − (i+1)/N whatever the shift, an upstream quirk kept) → DCW (``dcw``, see :func:`dcw_correct`)
    → repaint injection. Turbo's last step is always the x0 jump (followed by DCW); Heun and SDE do not combine.
    ``on_step(done, total)`` is called after every step; ``should_cancel()`` is checked before every step and
    raises :class:`GenerationCancelled` (``x`` is never modified in place, so nothing is half-applied).
    """
    schedule = [float(t) for t in schedule]
    num_steps = len(schedule) if turbo else len(schedule) - 1
    # The settings as SamplerSettings and resolve_sampler let them through (a failed assert is a caller's bug).
    assert num_steps >= 1, f"schedule has no steps: {schedule}"
    assert not (turbo and guidance_scale > 1.0), "turbo models are guidance-distilled"
    assert sampler_mode in SAMPLER_MODES and infer_method in INFER_METHODS, (sampler_mode, infer_method)
    assert not (sampler_mode == "heun" and infer_method == "sde"), "Heun and SDE do not combine"
    assert 0.0 <= velocity_ema_factor <= 1.0, velocity_ema_factor
    guided = guidance_scale > 1.0
    apg = APG(guidance_scale, apg_momentum, apg_norm_threshold, apg_eta) if guided and not use_adg else None
    guidance = _Guidance(guidance_scale, tuple(cast_schedule([cfg_interval_start, cfg_interval_end], x.dtype)),
                         use_adg, apg)
    ends = schedule[1:] + [0.0] if turbo else schedule[1:]  # turbo's final x0 jump is an Euler step to t = 0
    inject_steps = round(repaint.injection_ratio * num_steps) if repaint is not None else 0
    previous_v = None

    for i in range(num_steps):
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(f"cancelled before step {i + 1} of {num_steps}")
        t, t_next = schedule[i], ends[i]
        last = i == num_steps - 1
        v = guidance.step(x, *velocity(x, t, i), t, i)
        if velocity_norm_threshold > 0:
            v = clamp_velocity(v, x, velocity_norm_threshold)
        v = _smooth(v, previous_v, velocity_ema_factor)

        # Where the repaint injection re-noises the source to: turbo holds Python floats, base/SFT the schedule's
        # dtype tensor (so 1 − t is rounded to the dtype), except base SDE's Python float; kept as the original.
        t_after = t_next if turbo else _scalar(t_next, x)
        v_used = v
        if (turbo and last) or (infer_method == "ode" and sampler_mode == "euler"):
            x_next = x - v * _scalar(t - t_next, x)
        elif infer_method == "sde":
            t_after = t_next if turbo else 1.0 - (i + 1) / num_steps
            x_next = _sde_step(x, v, t, t_after, sde_generators)
        else:
            x_next, v_used = _heun_step(x, v, t, t_next, i, velocity, guidance, velocity_norm_threshold,
                                        velocity_ema_factor)
        if dcw is not None and dcw.active:
            x_next = dcw_correct(x_next, x - v * _scalar(t, x), t, dcw)
        previous_v = v_used

        if repaint is not None and i < inject_steps and not (turbo and last):
            # Outside the mask, put back the source noised to where the step ended.
            x_next = torch.where(repaint.mask.unsqueeze(-1), x_next,
                                 t_after * repaint.noise + (1.0 - t_after) * repaint.clean)
        x = x_next
        if on_step is not None:
            on_step(i + 1, num_steps)

    if repaint is not None and repaint.crossfade_frames > 0:
        x = repaint_boundary_blend(x, repaint.clean, repaint.mask, repaint.crossfade_frames)
    return x


# ----------------------------------------------------------------------------------------------------------------
# Flow-edit morph (upstream #1156 / #1169): move the source audio's latents towards a new caption/lyrics


def _averaged_velocity(draws: list[tuple[Tensor, Tensor | None]], x_list: list[Tensor], apg: APG | None,
                       guided_now: bool, velocity_norm_threshold: float, n_avg: int) -> Tensor:
    """One trajectory's velocity averaged over the n_avg draws of a step. APG's momentum starts every draw from
    the step's starting state and, after the draws, advances once with the mean guidance difference."""
    start = apg.running if apg is not None else None
    total, diff = None, None
    for (v_cond, v_uncond), x in zip(draws, x_list):
        if apg is not None and guided_now:
            assert v_uncond is not None, f"guidance_scale={apg.guidance_scale} needs v_uncond from both velocities"
            apg.running = start
            v = apg(v_cond, v_uncond)
            diff = (v_cond - v_uncond) if diff is None else diff + (v_cond - v_uncond)
        else:
            v = v_cond
        if velocity_norm_threshold > 0:
            v = clamp_velocity(v, x, velocity_norm_threshold)
        total = torch.zeros_like(v) + v if total is None else total + v
    if apg is not None:
        apg.running = start
        if diff is not None:
            apg.advance(diff / n_avg)
    return total / n_avg


@torch.no_grad()
def flow_edit(src_latents: Tensor, schedule: Sequence[float], velocity_target: VelocityFn,
              velocity_source: VelocityFn, *, n_min: float = 0.0, n_max: float = 1.0, n_avg: int = 1,
              generators: Sequence[torch.Generator] | None = None, guidance_scale: float = 1.0,
              cfg_interval_start: float = 0.0, cfg_interval_end: float = 1.0,
              velocity_norm_threshold: float = 0.0, velocity_ema_factor: float = 0.0,
              apg_momentum: float = APG_MOMENTUM, apg_norm_threshold: float = APG_NORM_THRESHOLD,
              apg_eta: float = 0.0, on_step: Callable[[int, int], None] | None = None,
              should_cancel: Callable[[], bool] | None = None) -> Tensor:
    """Flow-edit morph as upstream's ``flowedit_sampling_loop``: edit ``src_latents`` [B, T, C] (the source
    audio's VAE latents) towards the target condition by integrating V_tar − V_src.

    ``schedule``: :func:`flow_edit_schedule` (steps + 1 values ending at 0, on turbo too). With N steps, steps
    i < int(N·n_min) are skipped; for int(N·n_min) ≤ i < int(N·n_max), n_avg times: noise ε (one draw per item
    from ``generators``; upstream seeds them with the retake seeds, else the main seeds), z_src = (1−t)·x_src + t·ε,
    z_tar = x_edit + z_src − x_src, V_src at z_src from ``velocity_source`` (source caption/lyrics) and V_tar at
    z_tar from ``velocity_target`` (the request's caption/lyrics), each guided (APG, its own momentum per
    trajectory), clamped, averaged over the draws, then smoothed by the EMA; x_edit += (t_next − t)·(V_tar − V_src).
    From int(N·n_max) on, the target alone is integrated with Euler from x_tar = x_edit + z_src − x_src (one fresh
    draw). Guidance applies where cfg_interval_start ≤ t ≤ cfg_interval_end in Python floats, as upstream's loop
    compares. DCW, Heun, SDE and ADG are not part of it (upstream turns them off here); turbo callers pass
    ``guidance_scale=1``. Returns x_edit, or x_tar when the window ends before the last step.
    """
    schedule = [float(t) for t in schedule]
    steps = len(schedule) - 1
    # The settings as the request's FlowEdit and SamplerSettings let them through.
    assert steps >= 1, f"schedule has no steps: {schedule}"
    assert isinstance(n_avg, int) and n_avg >= 1 and 0.0 <= n_min <= n_max <= 1.0, (n_avg, n_min, n_max)
    assert 0.0 <= velocity_ema_factor <= 1.0, velocity_ema_factor
    first, stop = int(steps * n_min), int(steps * n_max)
    guided = guidance_scale > 1.0
    apg_src = APG(guidance_scale, apg_momentum, apg_norm_threshold, apg_eta) if guided else None
    apg_tar = APG(guidance_scale, apg_momentum, apg_norm_threshold, apg_eta) if guided else None
    x_src, x_edit, x_tar = src_latents, src_latents, None
    prev_src = prev_tar = None

    def noised_source(t: float) -> Tensor:
        return (1.0 - t) * x_src + t * item_noise(generators, x_src)

    for i in range(first, steps):
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(f"cancelled before step {i + 1} of {steps}")
        t, t_next = schedule[i], schedule[i + 1]
        guided_now = guided and cfg_interval_start <= t <= cfg_interval_end
        dt = _scalar(t_next - t, x_src)  # negative: from t towards 0
        if i < stop:
            z_src, z_tar, draws_src, draws_tar = [], [], [], []
            for _ in range(n_avg):
                z_src.append(noised_source(t))
                z_tar.append(x_edit + z_src[-1] - x_src)
                draws_src.append(velocity_source(z_src[-1], t, i))
                draws_tar.append(velocity_target(z_tar[-1], t, i))
            v_src = _averaged_velocity(draws_src, z_src, apg_src, guided_now, velocity_norm_threshold, n_avg)
            v_tar = _averaged_velocity(draws_tar, z_tar, apg_tar, guided_now, velocity_norm_threshold, n_avg)
            prev_src = v_src = _smooth(v_src, prev_src, velocity_ema_factor)
            prev_tar = v_tar = _smooth(v_tar, prev_tar, velocity_ema_factor)
            x_edit = x_edit + dt * (v_tar - v_src)
        else:
            if x_tar is None:
                x_tar = x_edit + noised_source(t) - x_src
            v = _averaged_velocity([velocity_target(x_tar, t, i)], [x_tar], apg_tar, guided_now,
                                   velocity_norm_threshold, 1)
            prev_tar = v = _smooth(v, prev_tar, velocity_ema_factor)
            x_tar = x_tar + dt * v
        if on_step is not None:
            on_step(i - first + 1, steps - first)
    return x_edit if x_tar is None else x_tar
