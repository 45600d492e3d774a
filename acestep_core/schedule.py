"""The sampler settings resolved for one model variant (``constants.VARIANTS``): its defaults for what the user
left out, the official app's DCW choice, and the settings the variant cannot take refused before any work.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .constants import DCW_THINK_HIGH_SCALER, DCW_THINK_MODE, DCW_THINK_SCALER, VARIANTS, DcwSettings
from .errors import InputError
from .request import SamplerSettings
from .sampling import MAX_TURBO_STEPS


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
