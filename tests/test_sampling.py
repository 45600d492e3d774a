"""The sampler: schedules, cover-noise truncation, APG / ADG, the Euler loop, repaint helpers.

References: the original's tables and formulas (written out here), float64 hand computations, and diffusers'
schedule and APG (``normalized_guidance`` + ``MomentumBuffer``, which match the original for dims=[1]).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from acestep_core.sampling import (
    APG, TURBO_VALID_TIMESTEPS, GenerationCancelled, Repaint, adg, base_schedule, cast_schedule, cfg,
    clamp_velocity, renoise, repaint_boundary_blend, repaint_settings, sample, truncate_for_cover_noise,
    turbo_schedule)

BF16 = torch.bfloat16


def _f32(v: float) -> float:
    return float(np.float32(v))


def _bf16(v: float) -> float:
    return torch.tensor(v, dtype=torch.float32).to(BF16).item()


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------------------------------------------- schedules

# The original's VALID_TIMESTEPS, in its order (a snapping tie goes to the first, i.e. larger, value).
ORIGINAL_VALID = [1.0, 0.9545454545454546, 0.9333333333333333, 0.9, 0.875, 0.8571428571428571, 0.8333333333333334,
                  0.7692307692307693, 0.75, 0.6666666666666666, 0.6428571428571429, 0.625, 0.5454545454545454, 0.5,
                  0.4, 0.375, 0.3, 0.25, 0.2222222222222222, 0.125]


@pytest.mark.parametrize("shift", [1.0, 2.0, 3.0])
def test_turbo_tables_are_the_shifted_8_step_grid(shift):
    raw = turbo_schedule(shift, dtype=torch.float64)
    assert len(raw) == 8
    for i, t in enumerate(raw):
        u = 1 - i / 8
        assert t == pytest.approx(shift * u / (1 + (shift - 1) * u), abs=1e-15)
    assert set(raw) <= set(ORIGINAL_VALID)
    assert turbo_schedule(shift) == torch.tensor(raw, dtype=torch.float32).tolist()


def test_turbo_tables_in_bf16_are_the_reference_values():
    # Reference §4.2 (printed there to 6 digits): what torch.tensor(table, dtype=bf16) gives on CUDA.
    s3 = [1.0, 0.953125, 0.8984375, 0.83203125, 0.75, 0.64453125, 0.5, 0.30078125]
    s2 = [1.0, 0.93359375, 0.85546875, 0.76953125, 0.66796875, 0.546875, 0.400390625, 0.22265625]
    assert turbo_schedule(3.0, dtype=BF16) == s3
    assert turbo_schedule(2.0, dtype=BF16) == s2
    assert turbo_schedule(1.0, dtype=BF16) == [1 - i / 8 for i in range(8)]
    assert [round(t, 6) for t in s3] == [1.0, 0.953125, 0.898438, 0.832031, 0.75, 0.644531, 0.5, 0.300781]
    assert [round(t, 6) for t in s2] == [1.0, 0.933594, 0.855469, 0.769531, 0.667969, 0.546875, 0.400391, 0.222656]


@pytest.mark.parametrize("shift,table", [(0.1, 1.0), (1.4, 1.0), (1.5, 1.0), (1.6, 2.0), (2.5, 2.0), (2.51, 3.0),
                                         (7.0, 3.0)])
def test_turbo_shift_rounds_to_nearest_table(shift, table):
    assert turbo_schedule(shift) == turbo_schedule(table)


def test_turbo_custom_timesteps_snap_and_strip_trailing_zeros():
    got = turbo_schedule(timesteps=[0.97, 0.8, 0.52, 0.3, 0.0, 0.0], dtype=torch.float64)
    assert got == [0.9545454545454546, 0.7692307692307693, 0.5, 0.3]
    assert turbo_schedule(timesteps=torch.tensor([0.9, 0.11])) == torch.tensor([0.9, 0.125]).tolist()
    # 20 values (every valid one) pass through unchanged
    assert turbo_schedule(timesteps=ORIGINAL_VALID, dtype=torch.float64) == ORIGINAL_VALID
    # the snapping table is exactly the original's (order decides ties)
    assert TURBO_VALID_TIMESTEPS == ORIGINAL_VALID


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
@pytest.mark.parametrize("steps,shift", [(8, 3.0), (30, 1.0), (27, 2.5), (50, 1.7)])
def test_base_schedule_is_computed_in_the_model_dtype(dtype, steps, shift):
    """linspace in dtype, then s·t/(1+(s−1)t) op by op in dtype (Python scalars enter at float32 opmath)."""
    got = base_schedule(steps, shift, dtype)
    lin = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype).tolist()
    rnd = _bf16 if dtype == BF16 else (lambda v: v)
    if shift == 1.0:
        hand = lin
    else:
        s, s1 = _f32(shift), _f32(shift - 1)
        hand = [rnd(_f32(rnd(_f32(s * t)) / rnd(_f32(1 + rnd(_f32(s1 * t)))))) for t in lin]
    assert got == hand
    assert len(got) == steps + 1 and got[0] == 1.0 and got[-1] == 0.0


def test_base_schedule_bf16_known_values_and_differs_from_fp32_rounding():
    assert base_schedule(50, 1.0, BF16)[:3] == [1.0, 0.98046875, 0.9609375]  # reference §4.3
    assert base_schedule(8, 3.0, BF16) == turbo_schedule(3.0, dtype=BF16) + [0.0]
    # computing in fp32 and rounding afterwards is not the same schedule
    assert base_schedule(30, 3.0, BF16) != cast_schedule(base_schedule(30, 3.0, torch.float32), BF16)


@pytest.mark.parametrize("steps,shift", [(8, 3.0), (27, 3.0), (30, 1.0), (50, 2.0), (13, 0.7)])
def test_base_schedule_matches_diffusers_in_fp32(steps, shift):
    pipe = pytest.importorskip("diffusers.pipelines.ace_step.pipeline_ace_step")
    ref = pipe.AceStepPipeline._get_timestep_schedule(None, steps, shift, dtype=torch.float32)
    assert base_schedule(steps, shift, torch.float32)[:-1] == ref.tolist()  # diffusers drops the final 0


def test_base_schedule_explicit_timesteps():
    ts = [1.0, 0.9, 0.7, 0.45, 0.2, 0.0]
    assert base_schedule(99, 5.0, BF16, timesteps=ts) == torch.tensor(ts).to(BF16).tolist()
    assert base_schedule(1, 1.0, torch.float32, timesteps=torch.tensor([0.8, 0.3])) == torch.tensor([0.8, 0.3]).tolist()


def test_cover_noise_truncation_picks_nearest_schedule_value():
    raw = turbo_schedule(3.0, dtype=torch.float64)
    sched, t0 = truncate_for_cover_noise(raw, 0.3, turbo=True)  # target 0.7: 0.75 beats 0.642857
    assert t0 == 0.75 and sched == [0.75, 0.6428571428571429, 0.5, 0.3]
    assert truncate_for_cover_noise(raw, 1.0, turbo=True) == ([0.3], 0.3)
    # base: the end point is no candidate; a tie goes to the earlier (larger) t
    base = base_schedule(4, 1.0, torch.float32)  # 1, .75, .5, .25, 0
    assert truncate_for_cover_noise(base, 0.375, turbo=False) == ([0.75, 0.5, 0.25, 0.0], 0.75)
    assert truncate_for_cover_noise(base, 1.0, turbo=False) == ([0.25, 0.0], 0.25)
    assert truncate_for_cover_noise(base, 0.01, turbo=False) == (base, 1.0)
    # turbo parity recipe: choose on the unrounded table, renoise with the unrounded t*, then round the schedule
    sched, t0 = truncate_for_cover_noise(raw, 0.77, turbo=True)
    assert t0 == 0.3 and cast_schedule(sched, BF16) == [0.30078125]


def test_renoise():
    x, n = _randn(1, 4, 3, seed=1), _randn(1, 4, 3, seed=2)
    torch.testing.assert_close(renoise(x, n, 0.25), 0.25 * n + 0.75 * x, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- guidance


def _apg_hand(steps, g):
    """float64 APG, vector by vector: momentum −0.75, clip ‖d‖ over time to 2.5, drop the part along v_cond."""
    out, run = [], None
    for c, u in steps:
        c, u = c.numpy(), u.numpy()
        d = c - u
        run = d if run is None else d + -0.75 * run
        v = np.empty_like(c)
        clipped = 0
        for b in range(c.shape[0]):
            for ch in range(c.shape[2]):
                dv = run[b, :, ch]
                norm = math.sqrt(float((dv * dv).sum()))
                if norm > 2.5:
                    clipped += 1
                dv = dv * min(1.0, 2.5 / norm)
                unit = c[b, :, ch] / math.sqrt(float((c[b, :, ch] ** 2).sum()))
                perp = dv - float((dv * unit).sum()) * unit
                v[b, :, ch] = c[b, :, ch] + (g - 1) * perp
        out.append((torch.from_numpy(v), clipped))
    return out


def _guidance_steps(n, dtype=torch.float64, scale=(0.2, 1.5)):
    """(v_cond, v_uncond) pairs [2, 12, 4]; channel scales chosen so that the 2.5 clip is hit on some vectors only."""
    s = torch.tensor([scale[0], scale[1], scale[0], scale[1]], dtype=torch.float64)
    return [((0.3 * _randn(2, 12, 4, seed=10 + i, dtype=torch.float64)).to(dtype),
             (_randn(2, 12, 4, seed=50 + i, dtype=torch.float64) * s).to(dtype)) for i in range(n)]


def test_apg_matches_float64_hand_computation():
    steps = _guidance_steps(4)
    apg = APG(5.0)
    hand = _apg_hand(steps, 5.0)
    clipped = sum(c for _, c in hand)
    assert 0 < clipped < 4 * 2 * 4  # the norm clip engages on some vectors, not all
    for (c, u), (want, _) in zip(steps, hand):
        torch.testing.assert_close(apg(c, u), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_apg_matches_diffusers_normalized_guidance(dtype):
    guiders = pytest.importorskip("diffusers.guiders.adaptive_projected_guidance")
    ref_buf = guiders.MomentumBuffer(momentum=-0.75)
    apg = APG(7.0)
    for c, u in _guidance_steps(4, dtype):
        want = guiders.normalized_guidance(c, u, guidance_scale=6.0, momentum_buffer=ref_buf, eta=0.0,
                                           norm_threshold=2.5, use_original_formulation=True, norm_dim=(1,))
        got = apg(c, u)
        assert got.dtype == dtype and torch.equal(got, want)


def _adg_hand(x, vc, vu, t, g):
    x, vc, vu = (a.double().numpy() for a in (x, vc, vu))
    w = max(g - 1, 0) + 1e-3
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for f in range(x.shape[1]):
            xc, xu = x[b, f] - t * vc[b, f], x[b, f] - t * vu[b, f]
            cos = np.clip(xc @ xu / (np.linalg.norm(xc) * np.linalg.norm(xu)), -1 + 1e-6, 1 - 1e-6)
            theta = math.acos(cos)
            theta_new = max(-3.14 / 6, min(3.14 / 6, w * theta))
            diff = xc - xu
            perp = diff - (diff @ xu) / (xu @ xu + 1e-8) * xu
            rot = perp * math.sin(theta_new) / math.sin(theta) if math.sin(theta) > 1e-3 else perp * w
            out[b, f] = (x[b, f] - (math.cos(theta_new) * xc + rot)) / t
    return torch.from_numpy(out)


@pytest.mark.parametrize("g", [7.0, 1.3, 0.5])  # angle clip engaged / not / weight floor 1e-3
def test_adg_matches_float64_rederivation(g):
    x, vc, vu = _randn(2, 6, 8, seed=3), _randn(2, 6, 8, seed=4), _randn(2, 6, 8, seed=5)
    got = adg(x, vc, vu, 0.6, g)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _adg_hand(x, vc, vu, 0.6, g), rtol=2e-5, atol=2e-5)


def test_cfg():
    c, u = _randn(1, 3, 2, seed=1), _randn(1, 3, 2, seed=2)
    torch.testing.assert_close(cfg(c, u, 3.0), u + 3.0 * (c - u))


def test_clamp_velocity_per_item():
    x = _randn(2, 5, 3, seed=1, dtype=torch.float64)
    v = torch.stack([x[0] * 10, x[1] * 0.1])
    got = clamp_velocity(v, x, 2.0)
    assert got[0].norm().item() == pytest.approx(2.0 * x[0].norm().item(), rel=1e-9)
    torch.testing.assert_close(got[1], v[1], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- the loop


def _straight_line(target):
    """v = (x − target)/t: Euler follows x_t = t·noise + (1−t)·target exactly (in float64)."""
    calls = []

    def velocity(x, t, i):
        calls.append((i, t, x.clone()))
        return (x - target) / t, None
    return velocity, calls


def test_turbo_loop_last_step_jumps_to_x0():
    noise, target = _randn(2, 6, 3, seed=1, dtype=torch.float64), _randn(2, 6, 3, seed=2, dtype=torch.float64)
    sched = turbo_schedule(3.0, dtype=torch.float64)
    velocity, calls = _straight_line(target)
    out = sample(noise, sched, velocity, turbo=True)
    assert [(i, t) for i, t, _ in calls] == list(enumerate(sched))  # one call per entry, none at t = 0
    torch.testing.assert_close(out, target, rtol=1e-12, atol=1e-12)
    # the last step is x − v·t from the last grid point
    x7 = calls[-1][2]
    torch.testing.assert_close(out, x7 - (x7 - target) / 0.3 * 0.3, rtol=0, atol=0)


def test_base_loop_ends_at_zero():
    noise, target = _randn(1, 6, 3, seed=1, dtype=torch.float64), _randn(1, 6, 3, seed=2, dtype=torch.float64)
    sched = base_schedule(5, 3.0, torch.float64)
    velocity, calls = _straight_line(target)
    out = sample(noise, sched, velocity, turbo=False)
    assert [t for _, t, _ in calls] == sched[:-1]
    torch.testing.assert_close(out, target, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_euler_step_is_in_the_model_dtype(dtype):
    x, v = _randn(1, 8, 4, seed=1, dtype=dtype), _randn(1, 8, 4, seed=2, dtype=dtype)
    sched = base_schedule(3, 3.0, dtype)
    out = sample(x, sched, lambda xx, t, i: (v, None), turbo=False)
    want = x
    for a, b in zip(sched, sched[1:]):
        want = want - v * torch.tensor(a - b, dtype=dtype)
    assert out.dtype == dtype and torch.equal(out, want)


def test_progress_and_cancel():
    noise, target = _randn(1, 4, 2, seed=1, dtype=torch.float64), torch.zeros(1, 4, 2, dtype=torch.float64)
    sched = base_schedule(6, 1.0, torch.float64)
    progress = []
    velocity, calls = _straight_line(target)
    sample(noise, sched, velocity, turbo=False, on_step=lambda i, n: progress.append((i, n)))
    assert progress == [(i, 6) for i in range(1, 7)]

    checks, progress, before = [], [], noise.clone()
    velocity, calls = _straight_line(target)

    def should_cancel():
        checks.append(len(calls))
        return len(checks) == 3  # cancel before the third step

    with pytest.raises(GenerationCancelled):
        sample(noise, sched, velocity, turbo=False, on_step=lambda i, n: progress.append(i),
               should_cancel=should_cancel)
    assert checks == [0, 1, 2] and len(calls) == 2 and progress == [1, 2]
    assert torch.equal(noise, before)  # the caller's tensor is never written to


def test_cfg_interval_gating_and_apg_momentum_only_on_guided_steps():
    """Guidance only where cfg_start ≤ t ≤ cfg_end; the momentum buffer skips the unguided steps."""
    steps = 6
    sched = base_schedule(steps, 1.0, torch.float64)  # 1, 5/6, …, 1/6, 0
    preds = _guidance_steps(steps)
    x0 = _randn(2, 12, 4, seed=99, dtype=torch.float64)
    out = sample(x0, sched, lambda x, t, i: preds[i], turbo=False, guidance_scale=4.0,
                 cfg_interval_start=0.3, cfg_interval_end=0.8)
    guided = [0.3 <= t <= 0.8 for t in sched[:-1]]
    assert guided == [False, False, True, True, True, False]
    apg, want = APG(4.0), x0
    for i in range(steps):
        v = apg(*preds[i]) if guided[i] else preds[i][0]
        want = want - v * torch.tensor(sched[i] - sched[i + 1], dtype=torch.float64)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    # advancing the buffer on every step would give something else
    apg, other = APG(4.0), x0
    for i in range(steps):
        v = apg(*preds[i])
        other = other - v * torch.tensor(sched[i] - sched[i + 1], dtype=torch.float64)
    assert not torch.allclose(out, other)


def test_cfg_interval_is_compared_in_the_model_dtype():
    """As the original (a bf16 tensor t against Python floats): bf16(0.9804) = 0.98046875, so t = 0.98046875 counts
    as inside [0, 0.9804]."""
    t = base_schedule(50, 1.0, BF16)[1]
    assert t == 0.98046875 and _bf16(0.9804) == t
    x, c, u = (_randn(1, 4, 2, seed=s, dtype=BF16) for s in (0, 1, 2))
    velocity = lambda xx, tt, i: (c, u)  # noqa: E731
    dt = torch.tensor(t, dtype=BF16)
    out = sample(x, [t, 0.0], velocity, turbo=False, guidance_scale=3.0, cfg_interval_end=0.9804)
    assert torch.equal(out, x - APG(3.0)(c, u) * dt)
    out = sample(x, [t, 0.0], velocity, turbo=False, guidance_scale=3.0, cfg_interval_end=0.975)
    assert torch.equal(out, x - c * dt)


def test_guidance_invariants():
    """A velocity function without the unconditional branch, and an empty schedule, are the caller's bugs (no
    user input reaches them: the pipeline builds both); guidance on turbo is refused by the request
    (tests/test_bad_inputs.py::test_v18_the_request_refuses_what_the_sampler_and_planner_checked_again)."""
    x = torch.zeros(1, 4, 2)
    with pytest.raises(AssertionError, match="v_uncond"):
        sample(x, [1.0, 0.0], lambda xx, t, i: (xx, None), turbo=False, guidance_scale=3.0)
    with pytest.raises(AssertionError, match="no steps"):
        sample(x, [1.0], lambda xx, t, i: (xx, None), turbo=False)


def test_adg_in_the_loop():
    preds = _guidance_steps(2, torch.float32)
    x0 = _randn(2, 12, 4, seed=7)
    out = sample(x0, [1.0, 0.5, 0.0], lambda x, t, i: preds[i], turbo=False, guidance_scale=3.0, use_adg=True)
    x1 = x0 - adg(x0, *preds[0], 1.0, 3.0) * torch.tensor(0.5)
    torch.testing.assert_close(out, x1 - adg(x1, *preds[1], 0.5, 3.0) * torch.tensor(0.5), rtol=0, atol=0)


def test_velocity_norm_threshold_in_the_loop():
    x = _randn(2, 5, 3, seed=1)
    v = torch.stack([x[0] * 10, x[1] * 0.1])
    out = sample(x, [1.0], lambda xx, t, i: (v, None), turbo=True, velocity_norm_threshold=1.5)
    torch.testing.assert_close(out, x - clamp_velocity(v, x, 1.5) * torch.tensor(1.0), rtol=0, atol=0)


def _repaint_case(turbo, ratio, cf=0):
    noise, clean = _randn(2, 10, 3, seed=1), _randn(2, 10, 3, seed=2)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 3:7] = True
    mask[1, 5:] = True
    sched = turbo_schedule(3.0) if turbo else base_schedule(8, 3.0, torch.float32)
    inputs = []

    def velocity(x, t, i):
        inputs.append(x)
        return torch.full_like(x, 0.5) + 0.1 * x, None

    out = sample(noise, sched, velocity, turbo=turbo, repaint=Repaint(clean, mask, noise, ratio, cf))
    return noise, clean, mask, sched, inputs, out


@pytest.mark.parametrize("turbo", [True, False])
def test_repaint_injection_keeps_outside_frames_on_the_renoised_source(turbo):
    noise, clean, mask, sched, inputs, out = _repaint_case(turbo, 0.5)
    ends = sched[1:] + ([0.0] if turbo else [])
    keep = ~mask
    for i in range(8):  # round(0.5 · 8) = 4 injected steps: inputs 1..4 carry the re-noised source outside
        if i + 1 >= len(inputs):
            break
        after = inputs[i + 1]
        z = renoise(clean, noise, ends[i])
        if i < 4:
            assert torch.equal(after[keep], z[keep])
        else:
            assert not torch.allclose(after[keep], z[keep])
        assert not torch.allclose(after[mask], z[mask])  # inside the mask the sampler runs free


def test_repaint_full_injection_turbo_vs_base_last_step():
    # base injects after its last step too (t_next = 0 → exactly the source); turbo's final x0 jump is not injected
    _, clean, mask, _, _, out = _repaint_case(False, 1.0)
    assert torch.equal(out[~mask], clean[~mask])
    _, clean, mask, _, _, out = _repaint_case(True, 1.0)
    assert not torch.allclose(out[~mask], clean[~mask])


def test_repaint_base_injection_rounds_one_minus_t_in_bf16():
    """Base/SFT hold t_next as a bf16 tensor, so (1 − t) is rounded; turbo keeps Python floats."""
    noise, clean = _randn(1, 4, 2, seed=1, dtype=BF16), _randn(1, 4, 2, seed=2, dtype=BF16)
    mask = torch.zeros(1, 4, dtype=torch.bool)
    t1 = 0.298828125  # 153/512 is a bf16 value; 1 − t1 = 359/512 is not (bf16 steps by 1/256 in [0.5, 1))
    assert _bf16(1 - t1) != 1 - t1
    zero_v = lambda x, t, i: (torch.zeros_like(x), None)  # noqa: E731
    base = sample(noise, [1.0, t1, 0.0], zero_v, turbo=False, repaint=Repaint(clean, mask, noise, 0.5, 0))
    tn = torch.tensor(t1, dtype=BF16)
    assert torch.equal(base, tn * noise + (1.0 - tn) * clean)


def test_boundary_blend_ramps():
    T = 30
    mask = torch.zeros(4, T, dtype=torch.bool)
    mask[0, 10:20] = True
    mask[1, 2:28] = True  # ramps cut short by the ends
    mask[2] = True
    x, clean = torch.ones(4, T, 2), torch.zeros(4, T, 2)
    m = repaint_boundary_blend(x, clean, mask, 4)[..., 0]
    row0 = torch.zeros(T)
    row0[10:20] = 1
    row0[6:10] = torch.tensor([0.2, 0.4, 0.6, 0.8])
    row0[20:24] = torch.tensor([0.8, 0.6, 0.4, 0.2])
    torch.testing.assert_close(m[0], row0)
    torch.testing.assert_close(m[1, :2], torch.tensor([1 / 3, 2 / 3]))
    torch.testing.assert_close(m[1, 28:], torch.tensor([2 / 3, 1 / 3]))
    assert torch.equal(m[2], torch.ones(T)) and torch.equal(m[3], torch.zeros(T))  # all / nothing: no ramps
    assert torch.equal(repaint_boundary_blend(x, clean, mask, 0)[..., 0], mask.float())
    # general blend and dtype
    xb, cb = _randn(4, T, 2, seed=1, dtype=BF16), _randn(4, T, 2, seed=2, dtype=BF16)
    got = repaint_boundary_blend(xb, cb, mask, 4)
    assert got.dtype == BF16
    mm = m.unsqueeze(-1)
    assert torch.equal(got, (mm * xb + (1 - mm) * cb).to(BF16))


def test_sample_applies_boundary_blend_at_the_end():
    _, clean, mask, _, _, out = _repaint_case(True, 0.0, cf=3)
    _, _, _, _, _, raw = _repaint_case(True, 0.0, cf=0)
    torch.testing.assert_close(out, repaint_boundary_blend(raw, clean, mask, 3), rtol=0, atol=0)


def test_repaint_settings():
    assert repaint_settings("aggressive", 0.9) == (0.0, 0, 0.0)
    assert repaint_settings("conservative", 0.1) == (1.0, 25, 0.05)
    assert repaint_settings("balanced", 0.5) == (0.5, 12, 0.025)  # round(12.5) = 12
    inj, frames, sec = repaint_settings("balanced", 0.1)
    assert inj == pytest.approx(0.9) and frames == 22 and sec == pytest.approx(0.045)  # round(22.5) = 22
    assert repaint_settings("balanced", 0.3)[1] == 18  # round(17.5) = 18
