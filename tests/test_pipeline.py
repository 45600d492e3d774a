"""The generation pipeline on a tiny checkpoint: every task end to end, the inputs each task builds (chunk
mask, source latents, instruction), seeds, cover-strength switching, repaint splice, validation, cancel."""
from __future__ import annotations


import pytest
import torch

from acestep_core.pipeline import AceStepPipeline
from acestep_core.checks import parse_audio_codes
from acestep_core.request import request
from acestep_core.sampling import GenerationCancelled
from acestep_core.loading.silence import silence_slice
from devtools.fixtures import build_tensors, tiny_models_folder, write_hf_layout

RATE = 200  # the tiny VAE's sampling rate (hop 8 → 25 latent frames/s)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return AceStepPipeline.from_pretrained(tiny_models_folder(tmp_path_factory), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def base_pipe(tmp_path_factory):
    root = write_hf_layout(str(tmp_path_factory.mktemp("sft")), build_tensors("sft", seed=0), "sft")
    return AceStepPipeline.from_pretrained(root, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def song(pipe):
    return pipe(request(caption="calm piano", lyrics="[verse]\nla la", duration=10.0, seed=1)).audio[0]


class Spy:
    """Records the context latents and timesteps each DiT call receives."""

    def __init__(self, monkeypatch, pipe):
        self.contexts, self.times, self.kv_calls = [], [], 0
        decoder = pipe.model.decoder
        forward, cross_kv = decoder.forward, decoder.cross_kv

        def spy_forward(x, t, context, kv, r=None):
            self.contexts.append(context.clone())
            self.times.append(float(t[0]))
            return forward(x, t, context, kv, r)

        def spy_kv(enc):
            self.kv_calls += 1
            return cross_kv(enc)

        monkeypatch.setattr(decoder, "forward", spy_forward)
        monkeypatch.setattr(decoder, "cross_kv", spy_kv)


def test_text2music_shapes_levels_and_silence_context(pipe, monkeypatch):
    spy = Spy(monkeypatch, pipe)
    steps = []
    result = pipe(request(caption="calm piano", duration=10.0, seed=1,
                                    ), on_step=lambda i, n: steps.append((i, n)))
    assert result.audio.shape == (1, 2, 250 * 8) and result.latents.shape == (1, 250, 8)
    assert result.sample_rate == RATE
    peak = result.audio.abs().max().item()
    assert abs(peak - 10 ** (-1 / 20)) < 1e-5  # −1 dBFS peak normalisation
    assert steps == [(i, 8) for i in range(1, 9)]  # progress once per step
    assert len(spy.contexts) == 8 and spy.kv_calls == 1  # cross-attention K/V once per generation
    silence = silence_slice(pipe.ckpt.silence_latent, 250)[0]
    ctx = spy.contexts[0][0]
    assert torch.equal(ctx[:, :8], silence) and torch.all(ctx[:, 8:] == 1)
    assert result.metadata["instruction"] == "Fill the audio semantic mask based on the given conditions:"
    assert spy.times == pytest.approx([1.0, 0.9545454, 0.9, 0.8333333, 0.75, 0.6428571, 0.5, 0.3], abs=1e-6)


def test_minimum_length_and_seeds(pipe):
    a = pipe(request(duration=10.0, seed=[5, 6], batch_size=2, decode=False))
    b = pipe(request(duration=10.0, seed=6, decode=False))
    assert a.seeds == [5, 6]
    torch.testing.assert_close(a.latents[1:], b.latents, rtol=1e-5, atol=1e-5)  # item i = a single run with seed i
    assert not torch.allclose(a.latents[0], a.latents[1])
    single = pipe(request(duration=10.0, seed=5, decode=False))
    torch.testing.assert_close(single.latents[0], a.latents[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(pipe(request(duration=10.0, seed=5, decode=False)).latents, single.latents)
    assert pipe(request(duration=10.0, seed=3, batch_size=3, decode=False)).seeds == [3, 4, 5]


@pytest.mark.parametrize("task, kwargs, instruction", [
    ("extract", {"tracks": ["vocals"]}, "Extract the VOCALS track from the audio:"),
    ("complete", {"tracks": ["bass", "drums"]}, "Complete the input track with BASS | DRUMS:"),
    ("complete", {}, "Complete the input track:"),
])
def test_extract_and_complete_use_the_source_as_context(pipe, song, monkeypatch, task, kwargs, instruction):
    spy = Spy(monkeypatch, pipe)
    result = pipe(request(task=task, src_audio=song, src_sample_rate=RATE, seed=2, **kwargs))
    assert result.metadata["instruction"] == instruction
    ctx = spy.contexts[0][0]
    assert torch.all(ctx[:, 8:] == 1)
    silence = silence_slice(pipe.ckpt.silence_latent, ctx.shape[0])[0]
    assert not torch.allclose(ctx[:, :8], silence)  # the encoded source, not silence


def test_repaint_context_injection_and_splice(pipe, song, monkeypatch):
    spy = Spy(monkeypatch, pipe)
    result = pipe(request(task="repaint", src_audio=song, src_sample_rate=RATE, repaint_start=2.0,
                                    repaint_end=6.0, seed=3, normalize=False))
    ctx = spy.contexts[0][0]
    inside = slice(50, 150)
    assert torch.all(ctx[inside, 8:] == 1) and torch.all(ctx[:50, 8:] == 0) and torch.all(ctx[150:, 8:] == 0)
    silence = silence_slice(pipe.ckpt.silence_latent, 250)[0]
    assert torch.equal(ctx[inside, :8], silence[inside])
    # Balanced mode: outside the window (beyond the 25 ms crossfade) the song is the source, sample for sample.
    crossfade = int(0.025 * RATE)
    out = result.audio[0]
    assert torch.allclose(out[:, : 2 * RATE - crossfade], song[:, : 2 * RATE - crossfade])
    assert torch.allclose(out[:, 6 * RATE + crossfade:], song[:, 6 * RATE + crossfade:])
    assert not torch.allclose(out[:, 3 * RATE:5 * RATE], song[:, 3 * RATE:5 * RATE])


def test_lego_keeps_the_source_audible_in_its_window(pipe, song, monkeypatch):
    spy = Spy(monkeypatch, pipe)
    result = pipe(request(task="lego", tracks=["drums"], src_audio=song, src_sample_rate=RATE,
                                    repaint_start=1.0, repaint_end=4.0, seed=4))
    ctx = spy.contexts[0][0]
    silence = silence_slice(pipe.ckpt.silence_latent, 250)[0]
    assert torch.all(ctx[25:100, 8:] == 1) and torch.all(ctx[100:, 8:] == 0)
    assert not torch.allclose(ctx[25:100, :8], silence[25:100])
    assert result.metadata["instruction"] == "Generate the DRUMS track based on the audio context:"


def test_extend_outpaints_past_the_end_and_before_the_start(pipe, song):
    after = pipe(request(task="extend", src_audio=song, src_sample_rate=RATE, repaint_start=8.0,
                                   repaint_end=14.0, seed=5))
    assert after.audio.shape[-1] == 14 * RATE
    before = pipe(request(task="extend", src_audio=song, src_sample_rate=RATE, repaint_start=-3.0,
                                    repaint_end=1.0, seed=5))
    assert before.audio.shape[-1] == 13 * RATE
    assert before.metadata["instruction"].startswith("Repaint")


def test_cover_uses_hints_and_switches_condition_after_cover_strength(pipe, song, monkeypatch):
    spy = Spy(monkeypatch, pipe)
    pipe(request(task="cover", src_audio=song, src_sample_rate=RATE, seed=6, audio_cover_strength=0.5))
    assert spy.kv_calls == 2  # cover condition for steps 0-3, text2music condition from step 4
    silence = silence_slice(pipe.ckpt.silence_latent, 250)[0]
    assert not torch.allclose(spy.contexts[3][0, :, :8], silence)
    assert torch.equal(spy.contexts[4][0, :, :8], silence)  # the switched condition has silence as source


def test_cover_noise_starts_from_the_renoised_source(pipe, song, monkeypatch):
    spy = Spy(monkeypatch, pipe)
    pipe(request(task="cover", src_audio=song, src_sample_rate=RATE, seed=6, cover_noise_strength=0.3))
    assert spy.times[0] == pytest.approx(0.75, abs=1e-6)  # nearest table value to 1 − 0.3 = 0.7
    assert len(spy.times) == 4


def test_audio_codes_turn_text2music_into_cover(pipe, monkeypatch):
    spy = Spy(monkeypatch, pipe)
    codes = "".join(f"<|audio_code_{c}|>" for c in range(0, 64000, 1000))  # 64 codes → 320 frames
    result = pipe(request(audio_codes=codes, seed=7, decode=False))
    assert result.latents.shape[1] == 320
    assert result.metadata["instruction"] == "Generate audio semantic tokens based on the given conditions:"
    hints = pipe.model.codes_to_hints(torch.tensor([parse_audio_codes(codes)]))[0]
    assert torch.allclose(spy.contexts[0][0, :, :8], hints)
    assert parse_audio_codes([5, -3, 70000]) == (5, 0, 63999)


def test_reference_audio_changes_the_result_reproducibly(pipe, song):
    plain = pipe(request(duration=10.0, seed=8, decode=False))
    ref1 = pipe(request(duration=10.0, seed=8, ref_audio=song, ref_sample_rate=RATE, decode=False))
    ref2 = pipe(request(duration=10.0, seed=8, ref_audio=song, ref_sample_rate=RATE, decode=False))
    assert torch.equal(ref1.latents, ref2.latents)
    assert not torch.allclose(plain.latents, ref1.latents)


def test_base_model_runs_cfg_batched(base_pipe, monkeypatch):
    spy = Spy(monkeypatch, base_pipe)
    result = base_pipe(request(duration=10.0, seed=9, steps=5, decode=False))
    assert result.metadata["guidance"] == 7.0 and result.metadata["steps"] == 5
    assert spy.contexts[0].shape[0] == 2  # [cond; uncond] in one call
    assert spy.kv_calls == 1


def test_cancel_between_steps(pipe):
    calls = []

    def should_cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(GenerationCancelled):
        pipe(request(duration=10.0, seed=1), should_cancel=should_cancel)


def test_invalid_windows(song):
    src = dict(src_audio=song, src_sample_rate=RATE)
    with pytest.raises(ValueError, match="repaint window"):
        request(task="repaint", repaint_start=6.0, repaint_end=2.0, **src)
    with pytest.raises(ValueError, match="use task 'extend'"):
        request(task="repaint", repaint_start=8.0, repaint_end=12.0, **src)
    with pytest.raises(ValueError, match="touching the source"):
        request(task="extend", repaint_start=12.0, repaint_end=20.0, **src)


def test_silent_reference_is_refused():
    with pytest.raises(ValueError, match="silent"):
        request(duration=10.0, ref_audio=torch.zeros(2, 4000), ref_sample_rate=RATE)
