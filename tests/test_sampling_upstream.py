"""The newest upstream sampler options (upstream ACE-Step-1.5 6d467e4): DCW, any turbo step count, retake, Heun,
SDE, velocity EMA, flow-edit morph, raw remix, the cover-strength caption crop and mean VAE encoding.

References: PyWavelets for the Haar transform; float64 hand computations of upstream's formulas; and, on the tiny
checkpoint, upstream's generate_audio / flowedit loops written out here step by step from its code (their own
momentum buffer, CFG and DCW-by-pair-means), against which ``sample`` and ``flow_edit`` must agree.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import pywt
import torch
import torch.nn.functional as F

from acestep_core.constants import (DCW_DEFAULTS, DCW_THINK_HIGH_SCALER, DCW_THINK_MODE, DCW_THINK_SCALER,
                                    TURBO_APP_MAX_STEPS, TURBO_MAX_STEPS, VARIANT_DEFAULTS, DcwSettings)
from acestep_core.models.config import AceStepConfig
from acestep_core.models.model import AceStepModel
from acestep_core.sampling import (TURBO_TABLES, Repaint, base_schedule, dcw_correct, flow_edit, flow_edit_schedule,
                                   haar_dwt, haar_idwt, item_noise, retake_mix, sample, seeded_generators,
                                   turbo_schedule, turbo_step_times, truncate_for_cover_noise)
from devtools.tiny import random_dit_checkpoint, random_silence_latent, tiny_config_json

BF16 = torch.bfloat16
FRAMES, CHANNELS = 29, 8  # odd on purpose: DCW pads one zero frame


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------------------------------------ Haar transform


@pytest.mark.parametrize("frames", [1, 2, 7, 8, 33, 250])
def test_haar_dwt_equals_pywavelets(frames):
    x = _randn(3, frames, 5, seed=frames, dtype=torch.float64)
    low, high = haar_dwt(x)
    ref_low, ref_high = pywt.dwt(x.numpy(), "haar", mode="zero", axis=1)
    assert low.shape == (3, (frames + 1) // 2, 5)
    np.testing.assert_allclose(low.numpy(), ref_low, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(high.numpy(), ref_high, rtol=1e-13, atol=1e-13)
    # inverse from PyWavelets' own coefficients, and the round trip
    back = haar_idwt(torch.from_numpy(ref_low), torch.from_numpy(ref_high), frames)
    np.testing.assert_allclose(back.numpy(), pywt.idwt(ref_low, ref_high, "haar", mode="zero", axis=1)[:, :frames],
                               rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(back, x, rtol=1e-13, atol=1e-13)


def test_haar_in_float32_matches_pywavelets_to_rounding():
    x = _randn(2, 41, 8, seed=3)
    low, high = haar_dwt(x)
    ref_low, ref_high = pywt.dwt(x.double().numpy(), "haar", mode="zero", axis=1)
    assert low.dtype == torch.float32
    np.testing.assert_allclose(low.double().numpy(), ref_low, rtol=0, atol=5e-7)
    np.testing.assert_allclose(high.double().numpy(), ref_high, rtol=0, atol=5e-7)


def test_haar_float32_rounds_like_upstreams_convolution():
    """Upstream runs the DWT as a float32 convolution (pytorch_wavelets), which adds the second tap to the rounded
    first product in one fused multiply-add; the inverse rounds each product, then sums. Written out in numpy."""
    x = _randn(2, 13, 8, seed=4).numpy()
    h = np.float32(1 / math.sqrt(2))
    padded = np.concatenate([x, np.zeros_like(x[:, :1])], axis=1)
    even, odd = padded[:, 0::2], padded[:, 1::2]
    first = (even * h).astype(np.float64)  # float32 product, rounded
    low = (first + odd.astype(np.float64) * np.float64(h)).astype(np.float32)
    high = (first - odd.astype(np.float64) * np.float64(h)).astype(np.float32)
    got_low, got_high = haar_dwt(torch.from_numpy(x))
    assert np.array_equal(got_low.numpy(), low) and np.array_equal(got_high.numpy(), high)
    back = np.stack([low * h + high * h, low * h - high * h], axis=2).reshape(2, 14, 8)[:, :13]
    assert np.array_equal(haar_idwt(got_low, got_high, 13).numpy(), back)


# ------------------------------------------------------------------------------------------------ DCW


def _dcw_hand(x_next, x0_hat, t, dcw: DcwSettings):
    """Upstream's correction by its closed form for Haar (float64): x_next + λ_low·P(Δ) + λ_high·(Δ − P(Δ)), with
    Δ = x_next − x0̂ (one zero frame appended for odd T) and P the mean over frame pairs (2k, 2k+1) broadcast
    back; low: λ_low = t·s; high: λ_high = (1−t)·s; double: λ_low = t·s, λ_high = (1−t)·s_high; pix: x + s·Δ."""
    xn, y = x_next.double().numpy(), x0_hat.double().numpy()
    delta = xn - y
    if dcw.mode == "pix":
        return torch.from_numpy(xn + dcw.scaler * delta)
    lam_low = t * dcw.scaler if dcw.mode in ("low", "double") else 0.0
    lam_high = (1 - t) * (dcw.high_scaler if dcw.mode == "double" else dcw.scaler) if dcw.mode != "low" else 0.0
    frames = delta.shape[1]
    padded = np.concatenate([delta, np.zeros_like(delta[:, :1])], axis=1) if frames % 2 else delta
    pair_mean = np.repeat(0.5 * (padded[:, 0::2] + padded[:, 1::2]), 2, axis=1)[:, :frames]
    return torch.from_numpy(xn + lam_low * pair_mean + lam_high * (delta - pair_mean))


MODES = [DcwSettings(mode="low", scaler=0.07), DcwSettings(mode="high", scaler=0.07),
         DcwSettings(mode="double", scaler=0.05, high_scaler=0.02), DcwSettings(mode="pix", scaler=0.03)]


@pytest.mark.parametrize("dcw", MODES, ids=lambda d: d.mode)
@pytest.mark.parametrize("frames", [28, 29])
@pytest.mark.parametrize("turbo", [False, True])
def test_one_sampler_step_with_dcw_equals_upstream_formula(dcw, frames, turbo):
    """Step 0.8 → 0.5: Euler, then DCW with λ from the step's start time and x0̂ = x − v·t. On turbo a final x0
    jump from 0.5 follows (its own DCW sees Δ = 0)."""
    x, v = _randn(2, frames, 4, seed=1), _randn(2, frames, 4, seed=2)
    out = sample(x, [0.8, 0.5], lambda xx, t, i: (v, None), turbo=turbo, dcw=dcw)
    x_next = x - v * torch.tensor(0.3)
    want = _dcw_hand(x_next, x - v * torch.tensor(0.8), 0.8, dcw)
    if turbo:
        want = want - v.double() * 0.5
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), want, rtol=0, atol=2e-6)
    # the correction is not negligible, so the comparison above is a real one
    plain = sample(x, [0.8, 0.5], lambda xx, t, i: (v, None), turbo=turbo)
    assert (out - plain).abs().max() > 1e-3


def test_dcw_in_bf16_and_dcw_functions():
    x_next, x0 = _randn(2, 29, 4, seed=5, dtype=BF16), _randn(2, 29, 4, seed=6, dtype=BF16)
    dcw = DcwSettings()
    got = dcw_correct(x_next, x0, 0.6, dcw)
    assert got.dtype == BF16
    torch.testing.assert_close(got.double(), _dcw_hand(x_next, x0, 0.6, dcw), rtol=8e-3, atol=8e-3)
    # pix stays in the latent dtype (no float32 round trip): exactly x + s·(x − x0̂) in bf16
    pix = DcwSettings(mode="pix", scaler=0.03)
    assert torch.equal(dcw_correct(x_next, x0, 0.6, pix), x_next + 0.03 * (x_next - x0))


def test_dcw_zero_lambdas_and_off_leave_the_latent_untouched():
    x_next, x0 = _randn(1, 9, 3, seed=1), _randn(1, 9, 3, seed=2)
    # high band at t = 1 and low band at t = 0 have λ = 0: no transform at all (not even a float32 round trip)
    assert dcw_correct(x_next, x0, 1.0, DcwSettings(mode="high")) is x_next
    assert dcw_correct(x_next, x0, 0.0, DcwSettings(mode="low")) is x_next
    assert dcw_correct(x_next, x0, 0.5, DcwSettings(enabled=False)) is x_next
    assert dcw_correct(x_next, x0, 0.5, DcwSettings(mode="double", scaler=0.0, high_scaler=0.0)) is x_next
    assert not DcwSettings(mode="pix", scaler=0.0).active and DcwSettings(mode="double", scaler=0.0).active


def test_dcw_runs_after_turbo_final_jump_as_a_float32_round_trip():
    """Upstream corrects the final x0 jump too; there Δ = 0, so all that remains is the float32 Haar round trip."""
    x, v = _randn(2, 29, 8, seed=11), _randn(2, 29, 8, seed=12)
    plain = sample(x, [0.3], lambda xx, t, i: (v, None), turbo=True)
    corrected = sample(x, [0.3], lambda xx, t, i: (v, None), turbo=True, dcw=DcwSettings())
    low, high = haar_dwt(plain)
    assert torch.equal(corrected, haar_idwt(low, high, 29))
    assert not torch.equal(corrected, plain) and (corrected - plain).abs().max() < 1e-6


# ------------------------------------------------------------------------------------------------ turbo steps


def _upstream_turbo_times(n, shift):
    raw = [1.0 - i / n for i in range(n)]
    if shift != 1.0:
        raw = [shift * t / (1.0 + (shift - 1.0) * t) for t in raw]
    return raw


@pytest.mark.parametrize("shift", [1.0, 2.0, 2.5, 3.0, 4.7])
def test_turbo_schedule_for_1_to_20_steps_is_upstreams_formula(shift):
    for n in range(1, 21):
        got = turbo_schedule(shift, dtype=torch.float64, steps=n)
        assert got == _upstream_turbo_times(n, shift) == turbo_step_times(n, shift)
        exact = [Fraction(shift) * (1 - Fraction(i, n)) / (1 + (Fraction(shift) - 1) * (1 - Fraction(i, n)))
                 for i in range(n)]
        assert all(abs(a - float(b)) <= 5e-16 for a, b in zip(got, exact))  # a few ulps of 1
        assert turbo_schedule(shift, dtype=BF16, steps=n) == torch.tensor(got, dtype=BF16).tolist()


def test_turbo_schedule_at_8_steps_is_the_table_bit_for_bit():
    for shift in (1.0, 2.0, 3.0):
        assert turbo_step_times(8, shift) == TURBO_TABLES[shift] == turbo_schedule(shift, dtype=torch.float64)
        assert turbo_schedule(shift, steps=8, dtype=BF16) == turbo_schedule(shift, dtype=BF16)
    # measured on upstream (upstream-2026.md)
    assert turbo_step_times(4, 3.0) == [1.0, 0.9, 0.75, 0.5]
    assert [round(t, 6) for t in turbo_step_times(5, 2.5)] == [1.0, 0.909091, 0.789474, 0.625, 0.384615]
    # a non-integer shift is used as it is (the table path rounds it to 2)
    assert turbo_schedule(2.5, steps=8) != turbo_schedule(2.5)


def test_turbo_steps_limits_and_precedence():
    assert (TURBO_MAX_STEPS, TURBO_APP_MAX_STEPS) == (20, 8)
    # custom timesteps win over steps, as upstream
    assert turbo_schedule(3.0, timesteps=[0.9, 0.5], steps=12) == turbo_schedule(timesteps=[0.9, 0.5])
    # cover-noise truncation works on the formula schedule like on the tables
    sched, t0 = truncate_for_cover_noise(turbo_schedule(3.0, dtype=torch.float64, steps=4), 0.3, turbo=True)
    assert (sched, t0) == ([0.75, 0.5], 0.75)


# ------------------------------------------------------------------------------------------------ defaults


def test_dcw_and_sampling_defaults_follow_the_app():
    for name in ("turbo", "xl_turbo"):
        assert DCW_DEFAULTS[name] == DcwSettings(True, "double", 0.05, 0.02) and DCW_DEFAULTS[name].active
    for name in ("base", "xl_base", "sft", "xl_sft"):
        assert DCW_DEFAULTS[name] == DcwSettings(False, "double", 0.05, 0.02) and not DCW_DEFAULTS[name].active
    assert set(DCW_DEFAULTS) == set(VARIANT_DEFAULTS)
    assert (DCW_THINK_MODE, DCW_THINK_SCALER, DCW_THINK_HIGH_SCALER) == ("double", 0.02, 0.06)
    # the app's steps / shift / guidance (shift 3.0 for every variant after upstream's #1208 revert)
    assert [(d.steps, d.shift, d.guidance) for d in VARIANT_DEFAULTS.values()] == \
        [(8, 3.0, 1.0), (8, 3.0, 1.0), (32, 3.0, 7.0), (32, 3.0, 7.0), (50, 3.0, 7.0), (50, 3.0, 7.0)]


# ------------------------------------------------------------------------------------------------ retake


def test_retake_mix_is_the_variance_preserving_rotation():
    noise, other = _randn(2, 16, 8, seed=1), _randn(2, 16, 8, seed=2)
    for v in (0.1, 0.5, 1.0):
        angle = v * math.pi / 2
        hand = math.cos(angle) * noise.double() + math.sin(angle) * other.double()
        torch.testing.assert_close(retake_mix(noise, other, v).double(), hand, rtol=0, atol=1e-6)
    assert retake_mix(noise, other, 0.0) is noise
    torch.testing.assert_close(retake_mix(noise, other, 1.0), other, rtol=0, atol=1e-6)
    big_a, big_b = _randn(200_000, seed=3), _randn(200_000, seed=4)
    assert retake_mix(big_a, big_b, 0.37).std().item() == pytest.approx(1.0, abs=0.01)


def test_item_noise_is_one_seeded_cpu_draw_per_item():
    like = torch.zeros(3, 7, 8, dtype=BF16)
    got = item_noise(seeded_generators([5, 6, 5]), like)
    want = torch.cat([torch.randn(1, 7, 8, generator=torch.Generator().manual_seed(s)) for s in (5, 6, 5)]).to(BF16)
    assert got.dtype == BF16 and torch.equal(got, want) and torch.equal(got[0], got[2])
    with pytest.raises(AssertionError, match="one noise generator per batch item"):  # the pipeline's bug
        item_noise(seeded_generators([1]), like)


# ------------------------------------------------------------------------------------------------ tiny checkpoint


def _model(variant):
    cfg = tiny_config_json(variant=variant)
    return AceStepModel.from_state_dict(random_dit_checkpoint(cfg, seed=1), AceStepConfig.from_json(cfg))


@pytest.fixture(scope="module")
def turbo_model():
    return _model("turbo")


@pytest.fixture(scope="module")
def base_model():
    return _model("base")


def _condition(seed, batch=2):
    """A random packed condition [B, S, 32] and context [B, T, 16] (source | chunk mask) for the tiny DiT."""
    return _randn(batch, 11, 32, seed=seed), torch.cat([_randn(batch, FRAMES, CHANNELS, seed=seed + 1),
                                                        torch.ones(batch, FRAMES, CHANNELS)], -1)


def _velocity(model, cond, ctx, guided, calls=None):
    """The pipeline's velocity function: one batched [cond; uncond] DiT call when guided."""
    b = cond.shape[0]
    enc = torch.cat([cond, model.null_condition_emb.expand_as(cond)]) if guided else cond
    context = torch.cat([ctx, ctx]) if guided else ctx
    kv = model.decoder.cross_kv(enc)

    def velocity(x, t, i):
        if calls is not None:
            calls.append((i, t))
        inputs = torch.cat([x, x]) if guided else x
        v = model.decoder(inputs, torch.full((inputs.shape[0],), t, dtype=x.dtype), context, kv)
        return (v[:b], v[b:]) if guided else (v, None)
    return velocity


class _Momentum:
    """Upstream's MomentumBuffer: running average starts at 0, update r ← d + m·r."""

    def __init__(self, momentum=-0.75):
        self.momentum, self.running = momentum, 0

    def update(self, d):
        self.running = d + self.momentum * self.running


def _apg_upstream(cond, uncond, g, buf):
    """Upstream's apg_forward(dims=[1], eta 0, norm threshold 2.5)."""
    buf.update(cond - uncond)
    d = buf.running
    d = d * torch.minimum(torch.ones_like(d), 2.5 / d.norm(p=2, dim=[1], keepdim=True))
    v1 = F.normalize(cond.double(), dim=[1])
    d64 = d.double()
    orth = (d64 - (d64 * v1).sum(dim=[1], keepdim=True) * v1).to(d.dtype)
    return cond + (g - 1) * orth


def _clamp_upstream(v, x, thr):
    scale = torch.clamp(thr * (torch.norm(x, dim=(1, 2), keepdim=True) + 1e-10)
                        / (torch.norm(v, dim=(1, 2), keepdim=True) + 1e-10), max=1.0)
    return v * scale


def _draw(gens, like):
    return torch.cat([torch.randn(1, *like.shape[1:], generator=g) for g in gens]).to(like.dtype)


def _upstream_loop(x, sched, velocity, *, turbo, g=1.0, heun=False, sde=None, ema=0.0, clamp=0.0, dcw=None):
    """Upstream's generate_audio loop (turbo and base/SFT), transcribed: guidance (APG, Heun corrector with plain
    CFG), clamp, EMA, update (Euler / Heun / SDE; turbo's final step is the x0 jump), DCW by its closed form."""
    n = len(sched) if turbo else len(sched) - 1
    buf, prev, xt = _Momentum(), None, x
    for i in range(n):
        t = sched[i]
        c, u = velocity(xt, t, i)
        v = _apg_upstream(c, u, g, buf) if g > 1 else c
        if clamp:
            v = _clamp_upstream(v, xt, clamp)
        if ema and prev is not None:
            v = (1.0 - ema) * v + ema * prev
        x_before, v_before = xt, v
        if turbo and i == n - 1:
            xt = xt - v * torch.tensor(t)
            if dcw is not None:
                xt = _dcw_hand(xt, x_before - v_before * torch.tensor(t), t, dcw).float()
            break
        if sde is not None:
            t_next = sched[i + 1] if turbo else 1.0 - (i + 1) / n
            x0 = xt - v * torch.tensor(t)
            xt = t_next * _draw(sde, xt) + (1 - t_next) * x0
        elif heun:
            t_next = sched[i + 1]
            dt = torch.tensor(t - t_next)
            x_pred = xt - v * dt
            c2, u2 = velocity(x_pred, t_next, i)
            v2 = u2 + g * (c2 - u2) if g > 1 else c2
            if clamp:
                v2 = _clamp_upstream(v2, x_pred, clamp)
            if ema:
                v2 = (1.0 - ema) * v2 + ema * v
            v = 0.5 * (v + v2)
            xt = xt - v * dt
        else:
            xt = xt - v * torch.tensor(t - sched[i + 1])
        if dcw is not None:
            xt = _dcw_hand(xt, x_before - v_before * torch.tensor(t), t, dcw).float()
        prev = v
    return xt


CASES = {  # name: (sample() options, reference options)
    "euler": ({}, {}),
    "heun": (dict(sampler_mode="heun"), dict(heun=True)),
    "ema": (dict(velocity_ema_factor=0.3), dict(ema=0.3)),
    "heun+ema+clamp": (dict(sampler_mode="heun", velocity_ema_factor=0.2, velocity_norm_threshold=1.1),
                       dict(heun=True, ema=0.2, clamp=1.1)),
    "dcw": (dict(dcw=DcwSettings(mode="double", scaler=0.05, high_scaler=0.02)),
            dict(dcw=DcwSettings(mode="double", scaler=0.05, high_scaler=0.02))),
    "heun+dcw": (dict(sampler_mode="heun", dcw=DcwSettings(mode="low", scaler=0.1)),
                 dict(heun=True, dcw=DcwSettings(mode="low", scaler=0.1))),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("variant", ["turbo", "base"])
def test_sampler_options_match_upstreams_loop_on_the_tiny_checkpoint(case, variant, turbo_model, base_model):
    model = turbo_model if variant == "turbo" else base_model
    guided = variant == "base"
    g = 4.0 if guided else 1.0
    cond, ctx = _condition(20)
    x = _randn(2, FRAMES, CHANNELS, seed=21)
    sched = turbo_schedule(3.0, steps=5) if variant == "turbo" else base_schedule(5, 3.0, torch.float32)
    ours_opts, ref_opts = CASES[case]
    calls = []
    out = sample(x, sched, _velocity(model, cond, ctx, guided, calls), turbo=variant == "turbo",
                 guidance_scale=g, **ours_opts)
    want = _upstream_loop(x, sched, _velocity(model, cond, ctx, guided), turbo=variant == "turbo", g=g, **ref_opts)
    tol = 2e-5 if "dcw" in case else 1e-6
    torch.testing.assert_close(out, want, rtol=tol, atol=tol)
    heun_calls = 2 * 5 - (1 if variant == "turbo" else 0)  # turbo's last step (the x0 jump) has no corrector
    assert len(calls) == (heun_calls if "heun" in case else 5)
    if case != "euler":  # the option changes the result, so the agreement above says something
        plain = sample(x, sched, _velocity(model, cond, ctx, guided), turbo=variant == "turbo", guidance_scale=g)
        assert (out - plain).abs().max() > 1e-4


@pytest.mark.parametrize("variant", ["turbo", "base"])
def test_sde_matches_upstreams_update_and_is_reproducible(variant, turbo_model, base_model):
    """Turbo re-noises to the next schedule value, base/SFT to 1 − (i+1)/N (ignoring the shift), with fresh noise
    per step from per-item generators."""
    model = turbo_model if variant == "turbo" else base_model
    turbo, guided = variant == "turbo", variant == "base"
    g = 3.0 if guided else 1.0
    cond, ctx = _condition(30)
    x = _randn(2, FRAMES, CHANNELS, seed=31)
    sched = turbo_schedule(3.0, steps=4) if turbo else base_schedule(4, 3.0, torch.float32)
    vel = _velocity(model, cond, ctx, guided)
    run = lambda seeds: sample(x, sched, vel, turbo=turbo, guidance_scale=g, infer_method="sde",  # noqa: E731
                               sde_generators=seeded_generators(seeds))
    out = run([7, 8])
    want = _upstream_loop(x, sched, vel, turbo=turbo, g=g, sde=seeded_generators([7, 8]))
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    assert torch.equal(out, run([7, 8]))
    assert (out - run([7, 9]))[1].abs().max() > 1e-3 and torch.equal(out[0], run([7, 9])[0])
    ode = sample(x, sched, vel, turbo=turbo, guidance_scale=g)
    assert (out - ode).abs().max() > 1e-3


def test_sde_with_repaint_injects_at_base_sdes_own_time(base_model):
    """Base SDE re-noises to 1 − (i+1)/N, and the repaint injection uses that time (a Python float) too."""
    cond, ctx = _condition(40)
    x, clean = _randn(2, FRAMES, CHANNELS, seed=41), _randn(2, FRAMES, CHANNELS, seed=42)
    mask = torch.zeros(2, FRAMES, dtype=torch.bool)
    mask[:, 5:20] = True
    inputs = []
    vel = _velocity(base_model, cond, ctx, False)

    def spy(xx, t, i):
        inputs.append(xx)
        return vel(xx, t, i)

    sample(x, base_schedule(4, 3.0, torch.float32), spy, turbo=False, infer_method="sde",
           sde_generators=seeded_generators([1, 2]), repaint=Repaint(clean, mask, x, 1.0, 0))
    for i in (1, 2, 3):
        t_after = 1.0 - i / 4
        assert torch.equal(inputs[i][~mask], (t_after * x + (1.0 - t_after) * clean)[~mask])


def test_defaults_and_disabled_options_keep_the_euler_path_bit_identical(base_model):
    cond, ctx = _condition(50)
    x = _randn(2, FRAMES, CHANNELS, seed=51).to(BF16)
    model = base_model.to(BF16)
    try:
        sched = base_schedule(4, 3.0, BF16)
        vel = _velocity(model, cond.to(BF16), ctx.to(BF16), True)
        plain = sample(x, sched, vel, turbo=False, guidance_scale=5.0)
        same = sample(x, sched, vel, turbo=False, guidance_scale=5.0, sampler_mode="euler", infer_method="ode",
                      velocity_ema_factor=0.0, dcw=DcwSettings(enabled=False))
        assert torch.equal(plain, same)
    finally:
        base_model.float()


# ------------------------------------------------------------------------------------------------ retake in a run


def test_retake_run_on_the_tiny_checkpoint(turbo_model):
    cond, ctx = _condition(60)
    like = torch.zeros(2, FRAMES, CHANNELS)
    seeds, retake_seeds = [3, 4], [100, 101]
    sched = turbo_schedule(3.0, steps=8)
    inputs = []
    vel = _velocity(turbo_model, cond, ctx, False)

    def run(variance, rseeds=retake_seeds):
        inputs.clear()
        noise = retake_mix(item_noise(seeded_generators(seeds), like),
                           item_noise(seeded_generators(rseeds), like), variance)
        return sample(noise, sched, lambda xx, t, i: (inputs.append(xx), vel(xx, t, i))[1], turbo=True,
                      dcw=DcwSettings())

    out = run(0.25)
    base_noise = torch.cat([torch.randn(1, FRAMES, CHANNELS, generator=torch.Generator().manual_seed(s))
                            for s in seeds])
    retake_noise = torch.cat([torch.randn(1, FRAMES, CHANNELS, generator=torch.Generator().manual_seed(s))
                              for s in retake_seeds])
    angle = 0.25 * math.pi / 2
    torch.testing.assert_close(inputs[0], math.cos(angle) * base_noise + math.sin(angle) * retake_noise,
                               rtol=0, atol=1e-6)
    assert torch.equal(out, run(0.25))  # seeded: reproducible
    assert not torch.allclose(out, run(0.25, [100, 102])) and not torch.allclose(out, run(0.0))
    # variance 1: the retake seed's noise alone (cos(π/2) is 6e-17, not 0)
    torch.testing.assert_close(run(1.0), sample(retake_noise, sched, vel, turbo=True, dcw=DcwSettings()),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ flow-edit


def _upstream_flow_edit(src, sched, vel_tar, vel_src, gens, *, g, n_min, n_max, n_avg, ema=0.0, clamp=0.0,
                        cfg_start=0.0, cfg_end=1.0):
    """Upstream's flowedit_sampling_loop, transcribed: momentum snapshot per draw and one advance per step with
    the mean difference, EMA on the averaged velocities, Euler on the target alone after the window."""
    n = len(sched) - 1
    lo, hi = int(n * n_min), int(n * n_max)
    edit, tar = src.clone(), None
    m_src, m_tar = _Momentum(), _Momentum()
    prev_src = prev_tar = None

    def guide(pred, buf, now):
        if g <= 1:
            return pred[0]
        return _apg_upstream(pred[0], pred[1], g, buf) if now else pred[0]

    for i in range(n):
        if i < lo:
            continue
        t, t_next = sched[i], sched[i + 1]
        now = cfg_start <= t <= cfg_end
        dt = torch.tensor(t_next - t)
        if i < hi:
            pre_s, pre_t = m_src.running, m_tar.running
            sum_s, sum_t = torch.zeros_like(edit), torch.zeros_like(edit)
            diff_s = diff_t = None
            for _ in range(n_avg):
                m_src.running, m_tar.running = pre_s, pre_t
                eps = _draw(gens, src)
                z_src = (1.0 - t) * src + t * eps
                z_tar = edit + z_src - src
                p_s, p_t = vel_src(z_src, t, i), vel_tar(z_tar, t, i)
                if g > 1 and now:
                    diff_s = p_s[0] - p_s[1] if diff_s is None else diff_s + (p_s[0] - p_s[1])
                    diff_t = p_t[0] - p_t[1] if diff_t is None else diff_t + (p_t[0] - p_t[1])
                vs, vt = guide(p_s, m_src, now), guide(p_t, m_tar, now)
                sum_s = sum_s + (_clamp_upstream(vs, z_src, clamp) if clamp else vs)
                sum_t = sum_t + (_clamp_upstream(vt, z_tar, clamp) if clamp else vt)
            m_src.running, m_tar.running = pre_s, pre_t
            if diff_s is not None:
                m_src.update(diff_s / n_avg)
                m_tar.update(diff_t / n_avg)
            vs, vt = sum_s / n_avg, sum_t / n_avg
            if ema and prev_src is not None:
                vs = (1.0 - ema) * vs + ema * prev_src
            if ema and prev_tar is not None:
                vt = (1.0 - ema) * vt + ema * prev_tar
            prev_src, prev_tar = vs, vt
            edit = edit + dt * (vt - vs)
        else:
            if tar is None:
                tar = edit + ((1.0 - t) * src + t * _draw(gens, src)) - src
            vt = guide(vel_tar(tar, t, i), m_tar, now)
            if clamp:
                vt = _clamp_upstream(vt, tar, clamp)
            if ema and prev_tar is not None:
                vt = (1.0 - ema) * vt + ema * prev_tar
            prev_tar = vt
            tar = tar + dt * vt
    return edit if tar is None else tar


FLOW_CASES = [
    dict(g=4.0, n_min=0.2, n_max=0.7, n_avg=2),  # skip, window with 2 draws, then the target alone
    dict(g=4.0, n_min=0.0, n_max=1.0, n_avg=3, ema=0.2, clamp=1.5, cfg_start=0.3, cfg_end=0.9),
    dict(g=1.0, n_min=0.0, n_max=0.5, n_avg=1),  # turbo-style: no guidance
]


@pytest.mark.parametrize("case", FLOW_CASES)
def test_flow_edit_matches_upstreams_loop_on_the_tiny_checkpoint(case, base_model):
    guided = case["g"] > 1
    cond_tar, ctx = _condition(70)
    cond_src, _ = _condition(72)
    src = _randn(2, FRAMES, CHANNELS, seed=73)
    sched = flow_edit_schedule(10, 3.0, torch.float32)
    vel_tar, vel_src = (_velocity(base_model, c, ctx, guided) for c in (cond_tar, cond_src))
    opts = dict(n_min=case["n_min"], n_max=case["n_max"], n_avg=case["n_avg"], guidance_scale=case["g"],
                velocity_ema_factor=case.get("ema", 0.0), velocity_norm_threshold=case.get("clamp", 0.0),
                cfg_interval_start=case.get("cfg_start", 0.0), cfg_interval_end=case.get("cfg_end", 1.0))
    progress = []
    out = flow_edit(src, sched, vel_tar, vel_src, generators=seeded_generators([5, 6]),
                    on_step=lambda d, n: progress.append((d, n)), **opts)
    want = _upstream_flow_edit(src, sched, vel_tar, vel_src, seeded_generators([5, 6]), **case)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    skipped = int(10 * case["n_min"])
    assert progress == [(i, 10 - skipped) for i in range(1, 11 - skipped)]
    assert torch.equal(out, flow_edit(src, sched, vel_tar, vel_src, generators=seeded_generators([5, 6]), **opts))
    assert (out - src).abs().max() > 1e-2  # it moved


def test_flow_edit_with_identical_conditions_keeps_the_source_inside_the_window(base_model):
    """V_tar − V_src vanishes when both branches see the same condition at the same point (x_edit = x_src, up to
    the rounding of z_tar = x_edit + z_src − x_src)."""
    cond, ctx = _condition(80)
    src = _randn(2, FRAMES, CHANNELS, seed=81)
    vel = _velocity(base_model, cond, ctx, True)
    out = flow_edit(src, flow_edit_schedule(6, 1.0, torch.float32), vel, vel, n_max=1.0, n_avg=2,
                    generators=seeded_generators([1, 2]), guidance_scale=3.0)
    torch.testing.assert_close(out, src, rtol=1e-5, atol=1e-5)


def test_flow_edit_schedule_and_errors():
    assert flow_edit_schedule(8, 3.0, BF16) == base_schedule(8, 3.0, BF16)
    assert flow_edit_schedule(99, 3.0, torch.float32, timesteps=[0.9, 0.4]) == \
        torch.tensor([0.9, 0.4, 0.0]).tolist()  # a final 0 appended, no turbo snapping
    assert flow_edit_schedule(99, 3.0, torch.float32, timesteps=[0.9, 0.4, 0.0]) == torch.tensor([0.9, 0.4, 0.0]).tolist()
    src = torch.zeros(1, 4, 2)
    vel = lambda xx, t, i: (xx, None)  # noqa: E731
    with pytest.raises(AssertionError, match="v_uncond"):  # the pipeline's bug: guided without the uncond branch
        flow_edit(src, [1.0, 0.0], vel, vel, guidance_scale=3.0)


# ------------------------------------------------------------------------------------------------ raw remix


def test_raw_remix_hints_are_the_source_latents(turbo_model):
    """Upstream's cover-nofsq leaves the item unflagged as a cover, so its context keeps the source latents where
    a cover gets FSQ-requantised hints: where(is_cover, hints, src)."""
    silence = random_silence_latent(frames=40, channels=CHANNELS).transpose(1, 2)
    latents = _randn(2, 23, CHANNELS, seed=90)  # not a multiple of the 5-frame window
    hints = turbo_model.audio_to_hints(latents, silence)
    raw = turbo_model.cover_hints(latents, silence, fsq=False)
    is_cover = torch.tensor([False, False])
    assert torch.equal(raw, torch.where(is_cover[:, None, None], hints, latents))
    assert torch.equal(turbo_model.cover_hints(latents, silence), hints)
    assert (hints - latents).abs().max() > 1e-2  # the bottleneck does change them
    assert turbo_model.cover_hints(latents.double(), silence, fsq=False).dtype == torch.float32


# ------------------------------------------------------------------------------------------------ caption crop


def test_cover_strength_caption_is_cropped_to_the_cover_prompt_length():
    from acestep_core.constants import ENDOFTEXT_ID, TASK_INSTRUCTIONS
    from acestep_core.loading.text import load_tokenizer
    from acestep_core.models.text_encoder import TextEncoder, encode_text_inputs, fit_to_length
    from acestep_core.prompts import format_caption_prompt, format_lyrics_prompt, format_metas
    from devtools.fixtures import TINY_QWEN3_CONFIG, random_qwen3_state_dict

    tok = load_tokenizer()
    metas = format_metas(120, "4", "C major", 30)
    cover = format_caption_prompt("dreamy synth pop", TASK_INSTRUCTIONS["cover"], metas)
    plain = format_caption_prompt("dreamy synth pop", TASK_INSTRUCTIONS["text2music"], metas)
    cover_ids, plain_ids = tok.encode(cover, 256), tok.encode(plain, 256)
    assert len(plain_ids) == len(cover_ids) + 1
    ids, mask = tok.encode_batch([plain], 256)
    cropped, cropped_mask = fit_to_length(ids, mask, len(cover_ids), tok.pad_id)
    # the original's pad helper with width −1: the last id goes, here the appended <|endoftext|> after "\n"
    assert cropped[0].tolist() == plain_ids[:-1] and plain_ids[-1] == ENDOFTEXT_ID and plain_ids[-2] == 198
    assert cropped_mask.tolist() == [[1] * len(cover_ids)]
    padded, padded_mask = fit_to_length(ids, mask, len(plain_ids) + 2, tok.pad_id)
    assert padded[0, -2:].tolist() == [ENDOFTEXT_ID] * 2 and padded_mask[0, -2:].tolist() == [0, 0]

    encoder = TextEncoder.from_state_dict(random_qwen3_state_dict(), dict(TINY_QWEN3_CONFIG))
    lyrics = format_lyrics_prompt("[verse]\nla la", "en")
    full, full_mask, lyr, _ = encode_text_inputs(tok, encoder, [plain], [lyrics])
    short, short_mask, lyr2, _ = encode_text_inputs(tok, encoder, [plain], [lyrics], text_length=len(cover_ids))
    assert short.shape[1] == len(cover_ids) == full.shape[1] - 1 and torch.equal(lyr, lyr2)
    assert torch.equal(short, encoder.encode_caption(cropped))
    # the caption encoder is causal, so cropping drops exactly the last hidden state
    torch.testing.assert_close(short, full[:, :-1], rtol=1e-5, atol=1e-5)
    assert short_mask.dtype == torch.bool and short_mask.all()


# ------------------------------------------------------------------------------------------------ mean encode


def test_tiled_mean_encode_is_the_posterior_mean():
    from diffusers import AutoencoderOobleck

    from acestep_core.models.vae import OobleckVAE, encoder_reach, tiled_encode
    from devtools.fixtures import TINY_VAE_CONFIG, random_vae_state_dict

    sd = random_vae_state_dict(seed=2)
    ours = OobleckVAE.from_state_dict(sd, source="tiny")
    ref = AutoencoderOobleck(**{k: v for k, v in TINY_VAE_CONFIG.items() if not k.startswith("_")}).eval()
    ref.load_state_dict(sd)
    hop = ours.config.hop_length
    audio = 0.5 * _randn(2, 2, 90 * hop, seed=91)
    with torch.no_grad():
        posterior = ref.encode(audio).latent_dist
    overlap = (max(encoder_reach(ours.config)) // hop + 2) * hop
    for chunk in (None, 2 * overlap + 12 * hop):  # one window, and tiled
        mean = tiled_encode(ours, audio, chunk_samples=chunk, overlap_samples=None if chunk is None else overlap)
        torch.testing.assert_close(mean, posterior.mean, rtol=1e-5, atol=1e-5)
    drawn = tiled_encode(ours, audio, generator=torch.Generator().manual_seed(0), sample=True)
    assert (drawn - posterior.mean).abs().max() > 1e-3  # the default (upstream's) is a draw, not the mean
