"""The newest upstream sampler options wired through the request, the pipeline, the nodes and the command line:
each input reaches the sampler, and each behaves as upstream defines it on the tiny checkpoint (the sampler math
itself is tested against upstream in test_sampling_upstream.py)."""
from __future__ import annotations

import math
import os
import sys

import pytest
import torch

import acestep_core.sampling as sampling_module
from acestep_core import cli
from acestep_core import pipeline as pipeline_module
from acestep_core.audio import save_audio
from acestep_core.models import vae as vae_module
from acestep_core.models.vae import tiled_encode
from acestep_core.pipeline import AceStepPipeline
from acestep_core.request import request
from devtools.comfy_harness import run_node
from devtools.fixtures import tiny_models_folder

RATE = 200
SONG = 0.3 * torch.sin(torch.linspace(0, 400, 10 * RATE)).repeat(2, 1)
SRC = {"src_audio": SONG, "src_sample_rate": RATE}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models_folder(tmp_path_factory, "turbo", "sft")


@pytest.fixture(scope="module")
def pipe(models):
    return AceStepPipeline.from_pretrained(os.path.join(models, "acestep-v15-turbo"), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def sft(models):
    return AceStepPipeline.from_pretrained(os.path.join(models, "acestep-v15-sft"), dtype="fp32", device="cpu")


class Calls:
    """Records what the pipeline hands to the sampler (and still runs it)."""

    def __init__(self, monkeypatch, module=sampling_module):
        self.sample, self.flow_edit, self.times, self.contexts = [], [], [], []
        real_sample, real_flow_edit = module.sample, module.flow_edit

        def sample(x, schedule, velocity, **kwargs):
            self.sample.append({"schedule": list(schedule), **kwargs})
            return real_sample(x, schedule, self._watch(velocity), **kwargs)

        def flow_edit(src, schedule, target, source, **kwargs):
            self.flow_edit.append({"schedule": list(schedule), **kwargs})
            return real_flow_edit(src, schedule, self._watch(target), source, **kwargs)

        monkeypatch.setattr(module, "sample", sample)
        monkeypatch.setattr(module, "flow_edit", flow_edit)

    def _watch(self, velocity):
        def watched(x, t, step):
            self.times.append(t)
            return velocity(x, t, step)
        return watched


# ------------------------------------------------------------------------------------------------ behaviour

@pytest.mark.parametrize("steps, shift, expected", [
    (4, 3.0, [1.0, 0.9, 0.75, 0.5]),
    (5, 2.5, [1.0, 0.909091, 0.789474, 0.625, 0.384615]),
    (None, 3.0, [1.0, 0.9545454, 0.9, 0.8333333, 0.75, 0.6428571, 0.5, 0.3]),  # the distilled table
])
def test_turbo_honours_the_step_count(pipe, monkeypatch, steps, shift, expected):
    calls = Calls(monkeypatch)
    result = pipe(request(duration=10.0, seed=1, steps=steps, shift=shift, decode=False))
    assert calls.times == pytest.approx(expected, abs=1e-6)
    assert result.metadata["steps"] == len(expected)


def test_dcw_follows_the_app_per_variant_and_can_be_set(pipe, sft, monkeypatch):
    calls = Calls(monkeypatch)
    on = pipe(request(duration=10.0, seed=2, decode=False))
    off = pipe(request(duration=10.0, seed=2, dcw=False, decode=False))
    assert calls.sample[0]["dcw"].active and not calls.sample[1]["dcw"].active
    assert on.metadata["dcw"] == "double 0.05/0.02" and off.metadata["dcw"] == "off"
    assert not torch.allclose(on.latents, off.latents)
    pix = pipe(request(duration=10.0, seed=2, dcw_mode="pix", dcw_scaler=0.1, decode=False))
    assert calls.sample[2]["dcw"].mode == "pix" and pix.metadata["dcw"] == "pix 0.1/0.02"
    base = sft(request(duration=10.0, seed=2, steps=3, decode=False))
    assert base.metadata["dcw"] == "off" and not calls.sample[3]["dcw"].active  # the app: off for base/SFT


def test_retake_mixes_a_second_seeds_noise(pipe):
    plain = pipe(request(duration=10.0, seed=3, dcw=False, decode=False)).latents
    other = pipe(request(duration=10.0, seed=9, dcw=False, decode=False)).latents
    none = pipe(request(duration=10.0, seed=3, retake_seed=9, retake_variance=0.0, dcw=False, decode=False))
    assert torch.equal(none.latents, plain) and "retake_seeds" not in none.metadata
    full = pipe(request(duration=10.0, seed=3, retake_seed=9, retake_variance=1.0, dcw=False, decode=False))
    torch.testing.assert_close(full.latents, other, rtol=1e-4, atol=1e-4)  # cos(π/2)·noise ≈ 0
    half = pipe(request(duration=10.0, seed=3, retake_seed=9, retake_variance=0.3, dcw=False, decode=False))
    again = pipe(request(duration=10.0, seed=3, retake_seed=9, retake_variance=0.3, dcw=False, decode=False))
    assert torch.equal(half.latents, again.latents) and half.metadata["retake_seeds"] == [9]
    assert not torch.allclose(half.latents, plain) and not torch.allclose(half.latents, other)


def test_heun_sde_and_velocity_ema_reach_the_loop(pipe, monkeypatch):
    calls = Calls(monkeypatch)
    heun = pipe(request(duration=10.0, seed=4, steps=3, sampler_mode="heun", velocity_ema=0.1, decode=False))
    assert len(calls.times) == 3 + 2  # a corrector pass per step except turbo's final jump
    assert (calls.sample[0]["sampler_mode"], calls.sample[0]["velocity_ema_factor"]) == ("heun", 0.1)
    sde = pipe(request(duration=10.0, seed=4, steps=3, infer_method="sde", decode=False))
    sde_again = pipe(request(duration=10.0, seed=4, steps=3, infer_method="sde", decode=False))
    assert calls.sample[1]["infer_method"] == "sde" and torch.equal(sde.latents, sde_again.latents)
    assert heun.metadata["sampler"] == "heun/ode" and sde.metadata["sampler"] == "euler/sde"


def test_raw_remix_follows_the_latents_not_the_hints(pipe, monkeypatch):
    contexts = []
    forward = pipe.model.decoder.forward
    monkeypatch.setattr(pipe.model.decoder, "forward",
                        lambda x, t, context, kv, r=None: contexts.append(context.clone()) or forward(x, t, context,
                                                                                                     kv, r))
    pipe(request(task="cover-nofsq", seed=5, vae_encode="mean", **SRC))
    raw = contexts[0][0, :, :8]
    source = pipe.prepare_source(request(task="cover", **SRC).task).waveform
    latents = tiled_encode(pipe.ckpt.vae, source[None]).transpose(1, 2)[0]  # the posterior mean
    torch.testing.assert_close(raw[: latents.shape[0]], latents)
    contexts.clear()
    result = pipe(request(task="cover", seed=5, vae_encode="mean", **SRC))
    hints = pipe.model.audio_to_hints(latents[None], pipe.ckpt.silence_latent)[0]
    torch.testing.assert_close(contexts[0][0, : hints.shape[0], :8], hints)
    assert result.metadata["instruction"] == "Generate audio semantic tokens based on the given conditions:"


def test_mean_encode_is_the_posterior_mean_whatever_the_seed(pipe, monkeypatch):
    seen = []
    real = vae_module.tiled_encode  # what the pipeline's VAE runs (through acestep_core.memory.vae_tiles)
    monkeypatch.setattr(vae_module, "tiled_encode",
                        lambda *a, **k: seen.append(k["sample"]) or real(*a, **k))
    pipe(request(task="repaint", repaint_start=2.0, repaint_end=5.0, seed=1, vae_encode="mean", **SRC))
    pipe(request(task="repaint", repaint_start=2.0, repaint_end=5.0, seed=1, **SRC))
    assert seen == [False, True]  # mean, then the default posterior draw


def test_cover_strength_crops_the_caption_as_the_original(pipe, monkeypatch):
    lengths = []
    real = pipeline_module.encode_text_inputs

    def spy(tokenizer, encoder, captions, lyrics, text_length=None):
        out = real(tokenizer, encoder, captions, lyrics, text_length)
        lengths.append((tokenizer.count(captions[0]), out[0].shape[1]))
        return out

    monkeypatch.setattr(pipeline_module, "encode_text_inputs", spy)
    pipe(request(task="cover", caption="calm piano", seed=6, audio_cover_strength=0.5, **SRC))
    (cover_tokens, cover_length), (plain_tokens, plain_length) = lengths
    assert cover_length == cover_tokens and plain_tokens == cover_tokens + 1
    assert plain_length == cover_length  # the text2music caption lost its last id (<|endoftext|>), as the original


def test_flow_edit_morphs_from_the_source_description(pipe, monkeypatch):
    calls = Calls(monkeypatch)
    kv = []
    real_kv = pipe.model.decoder.cross_kv
    monkeypatch.setattr(pipe.model.decoder, "cross_kv", lambda enc: kv.append(enc.clone()) or real_kv(enc))
    args = dict(task="cover", caption="rock", seed=7, flow_edit=True, flow_edit_source_caption="calm piano",
                flow_edit_n_min=0.25, flow_edit_n_max=0.75, flow_edit_n_avg=2, **SRC)
    result = pipe(request(**args, decode=False))
    (call,) = calls.flow_edit
    assert not calls.sample and (call["n_min"], call["n_max"], call["n_avg"]) == (0.25, 0.75, 2)
    assert call["schedule"][-1] == 0.0 and len(call["schedule"]) == 9  # base-style schedule on turbo too
    assert len(kv) == 2 and not torch.equal(kv[0], kv[1])  # target and source conditions, once each
    assert result.metadata["sampler"] == "flow-edit" and result.metadata["steps"] == 8
    assert torch.equal(pipe(request(**args, decode=False)).latents, result.latents)
    with pytest.raises(ValueError, match=r"flow_edit=True is not allowed: only on a cover \(task cover or cover-nofsq\)"):
        request(task="repaint", flow_edit=True, **SRC)
    with pytest.raises(ValueError, match="flow_edit_n_avg=2 is not allowed: only with flow edit on"):
        request(task="cover", flow_edit_n_avg=2, **SRC)


# ------------------------------------------------------------------------------------------------ every door

OPTIONS = dict(sampler_mode="heun", velocity_ema=0.2, dcw=True, dcw_mode="low", dcw_scaler=0.03,
               dcw_high_scaler=0.01, retake_seed=11, retake_variance=0.25)


def _check_sampler_call(call, schedule_steps):
    assert (call["sampler_mode"], call["infer_method"], call["velocity_ema_factor"]) == ("heun", "ode", 0.2)
    dcw = call["dcw"]
    assert (dcw.enabled, dcw.mode, dcw.scaler, dcw.high_scaler) == (True, "low", 0.03, 0.01)
    assert len(call["schedule"]) == schedule_steps


def test_every_option_reaches_the_sampler_through_the_api(pipe, monkeypatch):
    calls = Calls(monkeypatch)
    result = pipe(request(duration=10.0, seed=1, steps=3, **OPTIONS, decode=False))
    _check_sampler_call(calls.sample[0], 3)
    assert result.metadata["retake_seeds"] == [11]


def test_every_option_reaches_the_sampler_through_the_cli(models, tmp_path, monkeypatch, capsys):
    calls = Calls(monkeypatch)
    src = save_audio(str(tmp_path / "src.wav"), SONG, RATE)
    code = cli.main(["generate", "--checkpoint", models, "--duration", "10", "--seed", "1", "--steps", "3",
                     "--sampler", "heun", "--velocity-ema", "0.2", "--dcw", "on", "--dcw-mode", "low",
                     "--dcw-scaler", "0.03", "--dcw-high-scaler", "0.01", "--retake-seed", "11",
                     "--retake-variance", "0.25", "--out", str(tmp_path / "a.flac")])
    assert code == 0, capsys.readouterr().err
    _check_sampler_call(calls.sample[0], 3)
    code = cli.main(["generate", "--checkpoint", models, "--task", "cover-nofsq", "--src-audio", src, "--seed", "1",
                     "--vae-encode", "mean", "--flow-edit", "--source-caption", "piano", "--edit-n-min", "0.5",
                     "--edit-n-avg", "2", "--out", str(tmp_path / "b.flac")])
    assert code == 0, capsys.readouterr().err
    assert (calls.flow_edit[0]["n_min"], calls.flow_edit[0]["n_avg"]) == (0.5, 2)
    code = cli.main(["generate", "--checkpoint", models, "--dcw-mode", "wavelet", "--out", str(tmp_path / "c.flac")])
    assert code == 1 and "error: --dcw-mode 'wavelet' is not allowed: one of low, high, double, pix" in \
        capsys.readouterr().err


def test_every_option_reaches_the_sampler_through_the_nodes(comfy):
    nodes = comfy[0]
    pack_sampling = sys.modules["acestep15_pack.acestep_core.sampling"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = Calls(monkeypatch, pack_sampling)
        run = lambda name, **kw: run_node(nodes["AceStep15_" + name], **kw)  # noqa: E731
        model = run("ModelLoader", model="diffusion_models/acestep_v1.5_turbo.safetensors", text_encoder="auto",
                    vae="auto", dtype="fp32").args[0]
        text = run("TextEncode", caption="x", lyrics="", language="en", bpm=0, keyscale="auto",
                   timesignature="auto").args[0]
        latent = run("EmptyLatent", duration=10.0, batch_size=1).args[0]
        out = run("Sampler", hidden={}, model=model, conditioning=text, latent=latent, seed=1, steps=3,
                  **{**OPTIONS, "dcw": "on"})
        _check_sampler_call(calls.sample[0], 3)
        assert "heun/ode · DCW low 0.03/0.01" in out.ui["text"][0] and "retake 0.25 · seeds 11" in out.ui["text"][0]
        audio = {"waveform": SONG[None], "sample_rate": RATE}
        cover = run("CoverLatent", audio=audio, cover_strength=1.0, noise_strength=0.0, batch_size=1, raw_remix=True,
                    vae_encode="mean", flow_edit=True, source_caption="piano", source_lyrics="", edit_n_min=0.0,
                    edit_n_max=0.5, edit_n_avg=1).args[0]
        task = cover["acestep_task"]
        assert (task.kind, task.vae_encode, task.flow_edit.n_max) == ("cover-nofsq", "mean", 0.5)
        run("Sampler", hidden={}, model=model, conditioning=text, latent=cover, seed=1)
        assert calls.flow_edit[0]["n_max"] == 0.5
        for node, inputs in [("RepaintLatent", dict(start=1.0, end=2.0, mode="balanced", strength=0.5)),
                             ("ExtendLatent", dict(direction="after the end", seconds=5.0, overlap=0.0,
                                                   mode="balanced")),
                             ("StemLatent", dict(task="extract", track="vocals", more_tracks=""))]:
            made = run(node, audio=audio, batch_size=1, vae_encode="mean", **inputs).args[0]
            assert made["acestep_task"].vae_encode == "mean"


def test_upstream_turbo_limit(pipe):
    with pytest.raises(ValueError, match="steps=21 is not allowed: 1 to 20 on turbo models"):
        pipe(request(duration=10.0, steps=21))
    assert math.isclose(pipe(request(duration=10.0, steps=20, seed=1, decode=False)).metadata["steps"], 20)
