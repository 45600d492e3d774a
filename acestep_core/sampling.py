"""Flow-matching sampler: schedules, guidance (APG / ADG / CFG), the Euler loop, repaint helpers.

Convention (all variants): x_t = t·noise + (1−t)·x0 with t = 1 pure noise, the DiT predicts v = noise − x0, so
x0 = x_t − t·v and an Euler step from t to t' is x ← x − v·(t − t').

Arithmetic follows the original ACE-Step 1.5 ``generate_audio`` loops operation by operation, in the model dtype
(bf16 on CUDA): the schedule is rounded through the dtype, dt is a dtype tensor, and every place where the
original multiplies by a Python float (which PyTorch applies at float32 "opmath" precision, not rounded to bf16)
versus a dtype tensor (rounded) is kept as it is there. Only the APG projection (float64) and parts of ADG
(float64/float32) leave the model dtype, as in the original.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .constants import REPAINT_MODES

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
MAX_TURBO_STEPS = 20

APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 2.5
ADG_ANGLE_CLIP = 3.14 / 6  # the original's "pi/6"



class GenerationCancelled(Exception):
    """Raised by :func:`sample` when ``should_cancel()`` returns True before a step."""


# ----------------------------------------------------------------------------------------------------------------
# Schedules


def cast_schedule(values: Sequence[float], dtype: torch.dtype) -> list[float]:
    """Round timesteps through ``dtype`` as the original builds its schedule: ``torch.tensor(values, dtype=dtype)``."""
    return torch.tensor([float(v) for v in values], dtype=dtype).tolist()


def _check_timesteps(values: list[float], name: str) -> None:
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"{name}: every timestep must lie in [0, 1], got {bad}")
    if any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"{name}: timesteps must be strictly descending (from noise t=1 towards 0), got {values}")


def _as_float32_list(timesteps) -> list[float]:
    # The original's handler hands custom timesteps to the model as a float32 tensor.
    if isinstance(timesteps, Tensor):
        timesteps = timesteps.detach().cpu().reshape(-1).tolist()
    return torch.tensor([float(t) for t in timesteps], dtype=torch.float32).tolist()


def turbo_schedule(shift: float = 3.0, timesteps: Sequence[float] | Tensor | None = None,
                   dtype: torch.dtype = torch.float32) -> list[float]:
    """Step start times for the turbo models: one DiT call per entry, no trailing 0 (the last step jumps to x0).

    Without ``timesteps``: the fixed 8-step table of the nearest shift in {1, 2, 3} (a tie goes to the smaller).
    With ``timesteps``: trailing zeros stripped, at most 20 values left, each snapped to the nearest of
    :data:`TURBO_VALID_TIMESTEPS`. ``infer_steps`` has no say on turbo. Values are rounded through ``dtype``
    (pass ``torch.float64`` to get the unrounded table, e.g. for :func:`truncate_for_cover_noise`).
    """
    if timesteps is None:
        if not shift > 0:
            raise ValueError(f"shift must be > 0 (the turbo tables exist for 1, 2, 3), got {shift!r}")
        values = TURBO_TABLES[min(TURBO_TABLES, key=lambda s: abs(s - shift))]
    else:
        values = _as_float32_list(timesteps)
        while values and values[-1] == 0:
            values.pop()
        if not 1 <= len(values) <= MAX_TURBO_STEPS:
            raise ValueError(f"timesteps: turbo takes 1 to {MAX_TURBO_STEPS} non-zero timesteps (trailing zeros are "
                             f"dropped), got {len(values)}")
        _check_timesteps(values, "timesteps")
        values = [min(TURBO_VALID_TIMESTEPS, key=lambda v: abs(v - t)) for t in values]
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
        if len(values) < 2:
            raise ValueError(f"timesteps: need at least 2 values (start and end of one step), got {values}")
        _check_timesteps(values, "timesteps")
        return torch.tensor(values, dtype=torch.float32).to(dtype).tolist()
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype)
    if shift != 1.0:
        t = shift * t / (1 + (shift - 1) * t)
    return t.tolist()


def truncate_for_cover_noise(schedule: Sequence[float], strength: float, *,
                             turbo: bool) -> tuple[list[float], float]:
    """``cover_noise_strength``: start the sampler at t* = the schedule value nearest to 1 − strength.

    Candidates are every step start time (turbo: the whole list; base/SFT: all but the end point); a tie goes to
    the earlier (larger) t. Returns (schedule from t* on, t*); start from ``renoise(src_latents, noise, t*)``.
    The turbo original picks t* on its unrounded table and renoises with that unrounded value, so for exact
    turbo parity pass ``turbo_schedule(..., dtype=torch.float64)`` here and ``cast_schedule`` the result.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"cover_noise_strength must be in (0, 1] (0 = off, do not truncate), got {strength!r}")
    schedule = [float(t) for t in schedule]
    candidates = schedule if turbo else schedule[:-1]
    if not candidates:
        raise ValueError(f"schedule has no step to start from: {schedule}")
    target = 1.0 - strength
    start = min(range(len(candidates)), key=lambda i: abs(candidates[i] - target))
    return schedule[start:], schedule[start]


def renoise(x: Tensor, noise: Tensor, t: float) -> Tensor:
    """x_t = t·noise + (1−t)·x with a Python-float t (as the original's ``renoise``)."""
    return t * noise + (1.0 - t) * x


# ----------------------------------------------------------------------------------------------------------------
# Guidance


class APG:
    """Adaptive projected guidance as the base/SFT models use it (``apg_forward(..., dims=[1])``, eta 0).

    Holds the momentum buffer, so use one instance per generation and call it only on guided steps.
    Tensors are [B, T, C]; norms and projections run over T, separately per item and channel.
    """

    def __init__(self, guidance_scale: float, momentum: float = APG_MOMENTUM,
                 norm_threshold: float = APG_NORM_THRESHOLD):
        self.guidance_scale = guidance_scale
        self.momentum = momentum
        self.norm_threshold = norm_threshold
        self.running = None  # momentum buffer (starts at 0)

    def __call__(self, v_cond: Tensor, v_uncond: Tensor) -> Tensor:
        d = v_cond - v_uncond
        if self.running is not None:
            d = d + self.momentum * self.running
        self.running = d
        if self.norm_threshold > 0:  # 0 = no clamp
            d = d * (self.norm_threshold / d.norm(p=2, dim=1, keepdim=True)).clamp(max=1.0)
        # Keep only the part of d orthogonal to v_cond (float64 projection, as the original).
        d64, u = d.double(), F.normalize(v_cond.double(), dim=1)
        d_perp = (d64 - (d64 * u).sum(dim=1, keepdim=True) * u).to(d.dtype)
        return v_cond + (self.guidance_scale - 1) * d_perp


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
    if mode not in REPAINT_MODES:
        raise ValueError(f"repaint mode must be one of {REPAINT_MODES}, got {mode!r}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"repaint strength must be in [0, 1], got {strength!r}")
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


@torch.no_grad()
def sample(x: Tensor, schedule: Sequence[float], velocity: VelocityFn, *, turbo: bool,
           guidance_scale: float = 1.0, cfg_interval_start: float = 0.0, cfg_interval_end: float = 1.0,
           use_adg: bool = False, velocity_norm_threshold: float = 0.0, repaint: Repaint | None = None,
           apg_momentum: float = APG_MOMENTUM, apg_norm_threshold: float = APG_NORM_THRESHOLD,
           on_step: Callable[[int, int], None] | None = None,
           should_cancel: Callable[[], bool] | None = None) -> Tensor:
    """Run the Euler ODE sampler from ``x`` ([B, T, C], model dtype) and return the final latents.

    ``schedule``: from :func:`turbo_schedule` (turbo: one step per entry, the last one jumps to x0 = x − v·t) or
    :func:`base_schedule` (one step per pair, the last one ends at the final value, normally 0); possibly truncated
    by :func:`truncate_for_cover_noise`. Guidance (base/SFT only, ``guidance_scale > 1``) applies on steps whose t
    lies in [cfg_interval_start, cfg_interval_end] (compared in the model dtype, as the original); elsewhere
    v = v_cond. APG by default (the original's momentum −0.75 and norm threshold 2.5 unless given), ADG with
    ``use_adg``. ``on_step(done, total)`` is called after every step;
    ``should_cancel()`` is checked before every step and raises :class:`GenerationCancelled` (``x`` is never
    modified in place, so nothing is half-applied).
    """
    schedule = [float(t) for t in schedule]
    num_steps = len(schedule) if turbo else len(schedule) - 1
    if num_steps < 1:
        raise ValueError(f"schedule has no steps: {schedule}")
    if turbo and guidance_scale > 1.0:
        raise ValueError(f"turbo models are guidance-distilled: guidance_scale must be <= 1 (no CFG), "
                         f"got {guidance_scale!r}")
    guided = guidance_scale > 1.0
    apg = APG(guidance_scale, apg_momentum, apg_norm_threshold) if guided and not use_adg else None
    cfg_lo, cfg_hi = cast_schedule([cfg_interval_start, cfg_interval_end], x.dtype)
    ends = schedule[1:] + [0.0] if turbo else schedule[1:]  # turbo's final x0 jump is an Euler step to t = 0
    inject_steps = round(repaint.injection_ratio * num_steps) if repaint is not None else 0
    dtype, device = x.dtype, x.device

    for i in range(num_steps):
        if should_cancel is not None and should_cancel():
            raise GenerationCancelled(f"cancelled before step {i + 1} of {num_steps}")
        t, t_next = schedule[i], ends[i]
        v_cond, v_uncond = velocity(x, t, i)
        if guided and cfg_lo <= t <= cfg_hi:
            if v_uncond is None:
                raise ValueError(f"guidance_scale={guidance_scale} needs v_uncond at step {i} (t={t})")
            v = adg(x, v_cond, v_uncond, t, guidance_scale) if use_adg else apg(v_cond, v_uncond)
        else:
            v = v_cond
        if velocity_norm_threshold > 0:
            v = clamp_velocity(v, x, velocity_norm_threshold)
        x = x - v * torch.tensor(t - t_next, dtype=dtype, device=device)
        last = i == num_steps - 1
        if repaint is not None and i < inject_steps and not (turbo and last):
            # Outside the mask, put back the source noised to t_next. Base/SFT hold t_next as a dtype tensor
            # (so 1 − t_next is rounded to the dtype), turbo as a Python float; kept as in the original.
            tn = t_next if turbo else torch.tensor(t_next, dtype=dtype, device=device)
            x = torch.where(repaint.mask.unsqueeze(-1), x, tn * repaint.noise + (1.0 - tn) * repaint.clean)
        if on_step is not None:
            on_step(i + 1, num_steps)

    if repaint is not None and repaint.crossfade_frames > 0:
        x = repaint_boundary_blend(x, repaint.clean, repaint.mask, repaint.crossfade_frames)
    return x
