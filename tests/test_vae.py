"""Oobleck VAE: parity with diffusers' AutoencoderOobleck, checkpoint layouts, tiling, silence latent."""
import re

import pytest
import torch
from diffusers import AutoencoderOobleck

from acestep_core.models.vae import (
    OobleckVAE,
    VaeConfig,
    derive_silence_latent,
    encoder_reach,
    tiled_decode,
    tiled_encode,
    vae_state_dict,
)
from acestep_core.errors import CheckpointError
from devtools.fixtures import to_parametrizations, to_stable_audio_names

CFG = VaeConfig(
    audio_channels=2,
    encoder_hidden_size=16,
    channel_multiples=(2, 4),
    downsampling_ratios=(2, 4),
    decoder_channels=4,
    decoder_input_channels=8,
    sampling_rate=80,  # 10 latent frames/s with hop 8
)
HOP = CFG.hop_length


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def reference():
    """diffusers model of the tiny config with every parameter randomised (seeded, non-trivial snake/g)."""
    torch.manual_seed(0)
    ref = AutoencoderOobleck(
        encoder_hidden_size=CFG.encoder_hidden_size,
        downsampling_ratios=list(CFG.downsampling_ratios),
        channel_multiples=list(CFG.channel_multiples),
        decoder_channels=CFG.decoder_channels,
        decoder_input_channels=CFG.decoder_input_channels,
        audio_channels=CFG.audio_channels,
        sampling_rate=CFG.sampling_rate,
    ).eval()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if name.endswith(("alpha", "beta")):
                p.copy_(0.5 * r)  # log-scale: α, β in ~[0.4, 2.7]
            elif name.endswith("weight_g"):
                p.copy_(0.2 + 0.4 * torch.rand(p.shape, generator=gen))  # keeps activations O(1)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            else:
                p.copy_(r)
    return ref


@pytest.fixture(scope="module")
def diffusers_sd(reference):
    sd = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    assert any(k.endswith("weight_g") for k in sd) and any(k.endswith("weight_v") for k in sd)
    return sd


@pytest.fixture(scope="module")
def vae(diffusers_sd):
    return OobleckVAE.from_state_dict(diffusers_sd, source="tiny.safetensors")


def test_config_from_diffusers_json_and_shapes(reference, diffusers_sd):
    cfg = VaeConfig.from_diffusers_config({**dict(reference.config), "_class_name": "AutoencoderOobleck"})
    assert cfg == CFG
    full = {**VaeConfig().__dict__, "sampling_rate": 48000}
    assert VaeConfig.from_diffusers_config(full) == VaeConfig()
    assert VaeConfig().hop_length == 1920 and VaeConfig().latent_rate == 25.0
    inferred = VaeConfig.from_state_dict(diffusers_sd)
    # The rate is not in the weights: it is set so the latent runs at 25 frames/s (48 kHz for hop 1920).
    assert inferred == VaeConfig(**{**CFG.__dict__, "sampling_rate": HOP * 25})
    assert VaeConfig.from_state_dict(to_stable_audio_names(diffusers_sd)) == inferred
    assert VaeConfig.from_state_dict(to_parametrizations(diffusers_sd)) == inferred


def test_full_size_layouts_on_meta():
    """ACE-Step 1.5 dimensions, shapes only: config inference, and the keys ComfyUI itself uses to detect this VAE
    (``decoder.layers.1.layers.0.beta``; ``decoder.layers.2.layers.1.weight_v`` with kernel 12 ⇒ strides 2,4,4,6,10)
    are where our test renaming puts them."""
    with torch.device("meta"):
        ref = AutoencoderOobleck(downsampling_ratios=[2, 4, 4, 6, 10], sampling_rate=48000)
    sd = ref.state_dict()
    comfy = to_stable_audio_names(sd)
    assert comfy["decoder.layers.1.layers.0.beta"].shape == (2048,)
    assert comfy["decoder.layers.2.layers.1.weight_v"].shape[-1] == 12
    assert VaeConfig.from_state_dict(sd) == VaeConfig.from_state_dict(comfy) == VaeConfig()
    vae = OobleckVAE.from_state_dict(comfy, device="meta")
    assert vae.decoder.block[1].conv_t1.weight.shape == (1024, 512, 12)
    assert sum(p.numel() for p in vae.parameters()) == 168_660_608


def test_parity_with_diffusers(reference, vae):
    gen = torch.Generator().manual_seed(5)
    audio = 0.5 * torch.randn(2, 2, 40 * HOP, generator=gen)
    latent = torch.randn(2, 8, 30, generator=gen)
    with torch.no_grad():
        dist = reference.encode(audio).latent_dist
        ref_audio = reference.decode(latent).sample
        mean, std = vae.encode_posterior(audio)
        out = vae.decode(latent)
    assert mean.shape == (2, 8, 40) and out.shape == (2, 2, 30 * HOP)
    assert _rel_err(mean, dist.mean) <= 1e-5
    assert _rel_err(std, dist.std) <= 1e-5
    assert _rel_err(out, ref_audio) <= 1e-5
    assert torch.equal(vae.encode(audio), mean)


def test_all_layouts_load_identically(diffusers_sd, vae):
    ours = vae.state_dict()
    comfy = to_stable_audio_names(diffusers_sd)
    for raw in (to_parametrizations(diffusers_sd), comfy, to_parametrizations(comfy), ours):
        sd = vae_state_dict(raw, torch.float32, "x")
        assert sd.keys() == ours.keys()
        for k in ours:
            assert torch.equal(sd[k], ours[k]), k
    assert all(not t.is_meta for t in vae.state_dict().values())
    assert all(not b.is_meta for b in vae.buffers())
    bf16 = OobleckVAE.from_state_dict(to_stable_audio_names(diffusers_sd), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert torch.equal(bf16.decoder.conv1.weight, ours["decoder.conv1.weight"].bfloat16())


def test_bad_checkpoints(diffusers_sd):
    sd = dict(diffusers_sd)
    del sd["decoder.block.1.res_unit2.conv1.bias"]
    with pytest.raises(CheckpointError, match=r"tiny\.st.*missing.*decoder\.block\.1\.res_unit2\.conv1\.bias"):
        OobleckVAE.from_state_dict(sd, source="tiny.st")

    sd = {**diffusers_sd, "encoder.extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"tiny\.st.*unexpected.*encoder\.extra\.weight"):
        OobleckVAE.from_state_dict(sd, source="tiny.st")

    sd = {**diffusers_sd, "decoder.snake1.alpha": torch.zeros(1, 5, 1)}
    with pytest.raises(CheckpointError, match=r"tiny\.st.*shape.*decoder\.snake1\.alpha"):
        OobleckVAE.from_state_dict(sd, source="tiny.st")

    sd = dict(diffusers_sd)
    del sd["encoder.conv2.weight_v"]
    with pytest.raises(CheckpointError, match=r"tiny\.st.*encoder\.conv2\.weight_g.*no matching weight_v"):
        vae_state_dict(sd, torch.float32, "tiny.st")

    sd = to_stable_audio_names(diffusers_sd)
    sd["encoder.layers.1.layers.7.weight_v"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=re.escape("'encoder.layers.1.layers.7.weight_v'")):
        vae_state_dict(sd, torch.float32, "comfy.st")

    prefixed = {"vae." + k: v for k, v in diffusers_sd.items()}
    with pytest.raises(CheckpointError, match=r"aio\.st: not an Oobleck VAE.*'vae\.'"):
        OobleckVAE.from_state_dict(prefixed, source="aio.st")


def test_seeded_sample(vae):
    audio = 0.5 * torch.randn(1, 2, 20 * HOP, generator=torch.Generator().manual_seed(3))
    a = vae.encode(audio, generator=torch.Generator().manual_seed(7), sample=True)
    b = vae.encode(audio, generator=torch.Generator().manual_seed(7), sample=True)
    c = vae.encode(audio, generator=torch.Generator().manual_seed(8), sample=True)
    mean = vae.encode(audio)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, mean)
    mean_, std = vae.encode_posterior(audio)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, mean_ + std * eps)


def test_tiled_decode_matches_full(vae):
    latent = torch.randn(2, 8, 100, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        full = vae.decode(latent)
    calls = []
    tiled = tiled_decode(vae, latent, chunk_size=64, overlap=24, on_tile=lambda d, t: calls.append((d, t)))
    assert tiled.shape == full.shape
    assert _rel_err(tiled, full) <= 1e-5
    assert calls[-1] == (14, 14)  # 2 items × ceil(100 / 16) windows
    # the comparison is sensitive: too little context leaves audible seams
    assert _rel_err(tiled_decode(vae, latent, chunk_size=24, overlap=4), full) > 1e-2
    # T ≤ chunk: one plain decode per item
    single = tiled_decode(vae, latent[:, :, :40], chunk_size=64, overlap=24)
    with torch.no_grad():
        assert torch.equal(single[1:], vae.decode(latent[1:, :, :40]))
    # overlap halving (64 → 32 for chunk 90, stride 26): still seamless
    calls.clear()
    halved = tiled_decode(vae, latent, chunk_size=90, overlap=64, on_tile=lambda d, t: calls.append((d, t)))
    assert _rel_err(halved, full) <= 1e-5 and calls[-1] == (8, 8)
    with pytest.raises(ValueError):
        tiled_decode(vae, latent, chunk_size=8, overlap=64)


def test_tiled_encode_matches_full(vae):
    audio = 0.5 * torch.randn(2, 2, 120 * HOP, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        full = vae.encode(audio)
    reach = max(encoder_reach(CFG))
    overlap = (reach // HOP + 2) * HOP
    chunk = 2 * overlap + 16 * HOP
    tiled = tiled_encode(vae, audio, chunk_samples=chunk, overlap_samples=overlap)
    assert tiled.shape == full.shape
    assert _rel_err(tiled, full) <= 1e-5
    g = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    sampled = tiled_encode(vae, audio, chunk_samples=chunk, overlap_samples=overlap, generator=g(), sample=True)
    assert _rel_err(sampled, vae.encode(audio, generator=g(), sample=True)) <= 1e-5
    # default tiles (30 s / 2 s of the config's rate) and the single-encode path
    short = audio[:, :, : 30 * CFG.sampling_rate]
    assert torch.equal(tiled_encode(vae, short), vae.encode(short))


@pytest.mark.parametrize("frames", [5, 39, 40, 100])  # probe = 39 frames for this config
def test_silence_latent_equals_full_encode(vae, frames):
    """Short stretches are encoded directly; longer ones are head + repeated steady frame + tail."""
    got = derive_silence_latent(vae, frames)
    with torch.no_grad():
        want = vae.encode(torch.zeros(1, 2, frames * HOP)).transpose(1, 2)
    assert got.shape == (1, frames, 8) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
