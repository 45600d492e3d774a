"""The memory planner on the real geometries (2B, XL, the 1.7B/4B LMs, the text encoder, the VAE), built on the
meta device: sizes equal the published parameter counts; for every budget what is resident in each phase (the
modules the plan puts on the device, counted from those modules) stays under the budget; more budget never means
fewer resident layers; manual overrides; the workload of a request; the VAE tile from the free memory and the
CPU fallback."""
from __future__ import annotations

import os

import pytest
import torch

from acestep_core.constants import LM_GEOMETRIES, MEMORY_OVERHEAD, QWEN3_EMBEDDING_GEOMETRY, XL_DIT_GEOMETRY
from acestep_core.memory import vae_tiles
from acestep_core.memory.estimates import (
    GIB, Workload, condition_working, dit_size, dit_working, lm_size, stored_bytes, text_encoder_size,
    vae_decode_working, vae_size,
)
from acestep_core.memory.manager import resident_view
from acestep_core.memory.planner import plan_request
from acestep_core.models.config import AceStepConfig
from acestep_core.models.model import AceStepModel
from acestep_core.request import request

TWO_B = AceStepConfig()
XL = AceStepConfig(**XL_DIT_GEOMETRY)
BF16 = torch.bfloat16
BUDGETS = (4, 6, 8, 12, 16, 24)


def test_sizes_are_the_published_parameter_counts():
    assert dit_size(TWO_B, torch.float32).total == 4 * 2_393_872_518
    assert dit_size(XL, BF16).total == 2 * 4_987_310_726
    two_b = dit_size(TWO_B, BF16)
    assert two_b.layers == 24 and two_b.layer * 24 < 1_575_458_880 * 2 < two_b.total
    # fp8: the decoder's Linear weights at one byte (+ a float32 scale per row), the rest in bf16
    fp8 = dit_size(XL, BF16, fp8=True)
    assert 0.5 * dit_size(XL, BF16).layer < fp8.layer < 0.52 * dit_size(XL, BF16).layer
    # Qwen3 stacks counted by hand (tied embeddings); the rotary tables (2 x 64 float32) are the only buffers
    assert abs(text_encoder_size(BF16).total - 2 * _qwen3_parameters(QWEN3_EMBEDDING_GEOMETRY)) <= 512
    for size in ("0.6B", "1.7B", "4B"):
        lm = lm_size(size, BF16)
        assert abs(lm.total - 2 * _qwen3_parameters(LM_GEOMETRIES[size])) <= 512
        assert lm.layers == LM_GEOMETRIES[size]["num_hidden_layers"]
    assert _qwen3_parameters(LM_GEOMETRIES["1.7B"]) == 1_854_243_840  # 1.7 B + the audio-code vocabulary
    assert vae_size(BF16).total < 0.4 * GIB


def _qwen3_parameters(g: dict) -> int:
    d, inter, heads, kv, hd = (g["hidden_size"], g["intermediate_size"], g["num_attention_heads"],
                               g["num_key_value_heads"], g["head_dim"])
    attention = d * heads * hd * 2 + d * kv * hd * 2 + 2 * hd  # q, o, k, v, q/k norms
    layer = attention + 3 * d * inter + 2 * d
    return g["vocab_size"] * d + g["num_hidden_layers"] * layer + d


CASES = [
    ("2B", TWO_B, False, None, Workload(240, 1)),
    ("2B base, CFG, batch 2, 600 s", TWO_B, False, None, Workload(600, 2, cfg=True)),
    ("2B + 1.7B LM", TWO_B, False, "1.7B", Workload(240, 1, lm_codes=1200)),
    ("2B cover from 240 s", TWO_B, False, None, Workload(240, 1, source_seconds=240)),
    ("XL fp8", XL, True, None, Workload(240, 1)),
    ("XL + 4B LM", XL, False, "4B", Workload(240, 1, lm_codes=1200)),
]


def _resident_bytes(config, fp8, plan, unit_sizes, phase_units) -> int:
    """What the plan puts on the device in a phase, counted from real (meta) modules: the DiT's resident view
    without its streamed layers, the streaming buffers, the other units whole."""
    total = 0
    for unit in phase_units:
        r = plan.residency[unit]
        if unit == "model":
            with torch.device("meta"):
                model = AceStepModel(config).to(BF16)
            if fp8:
                return None  # fp8 sizes are checked against loaded modules in test_lowvram_fp8
            streamed = {id(layer) for layer in list(model.decoder.layers)[r.resident:]}
            total += stored_bytes(resident_view(model, streamed))
        else:
            total += unit_sizes[unit].resident(r.resident)
        total += min(plan.slots, r.streamed) * unit_sizes[unit].layer
    return total


@pytest.mark.parametrize("name,config,fp8,lm,work", CASES, ids=[c[0] for c in CASES])
def test_what_is_resident_stays_under_the_budget(name, config, fp8, lm, work):
    previous = None
    for gb in BUDGETS:
        plan = plan_request(int(gb * GIB), config, work, BF16, fp8=fp8, lm=lm)
        sizes = {"text_encoder": text_encoder_size(BF16), "model": dit_size(config, BF16, fp8), "vae": vae_size(BF16)}
        if lm:
            sizes["lm"] = lm_size(lm, BF16)
        assert plan.residency.keys() == sizes.keys()
        if plan.fits:
            assert plan.peak <= plan.budget
            for phase, units, working in (("sample", ("model",), dit_working(config, BF16, work)),
                                          ("condition", ("text_encoder", "model"),
                                           condition_working(config, BF16, work))):
                resident = _resident_bytes(config, fp8, plan, sizes, units)
                if resident is not None and not plan.together:
                    assert resident + working + MEMORY_OVERHEAD == plan.peaks[phase] <= plan.budget
        else:
            assert all(r.resident == 0 for u, r in plan.residency.items() if sizes[u].layers) and plan.notes
        if previous is not None:  # more budget never means fewer resident layers
            assert all(plan.residency[u].resident >= previous.residency[u].resident for u in sizes)
        previous = plan
    assert previous.together  # 24 GB holds every unit of these at once


def test_the_goals_of_the_issue_fit_by_the_estimates():
    """2B DiT alone ≤ 4 GB; 2B + 1.7B LM ≤ 8 GB; XL turbo + fp8 ≤ 8 GB (240-s song, batch 1)."""
    dit_alone = plan_request(4 * GIB, TWO_B, Workload(240, 1), BF16)
    assert dit_alone.fits and dit_alone.streamed("model") > 0
    with_lm = plan_request(8 * GIB, TWO_B, Workload(240, 1, lm_codes=1200), BF16, lm="1.7B")
    assert with_lm.fits and not with_lm.together
    xl = plan_request(8 * GIB, XL, Workload(240, 1), BF16, fp8=True)
    assert xl.fits
    assert not plan_request(8 * GIB, XL, Workload(240, 1), BF16).together


def test_a_manual_resident_layer_count_is_kept():
    plan = plan_request(24 * GIB, TWO_B, Workload(240, 1), BF16, resident_layers={"model": 10})
    assert not plan.together and plan.residency["model"].resident == 10 and plan.streamed("model") == 14
    assert "DiT 10/24 layers resident, 14 streamed" in plan.describe()
    too_many = plan_request(3 * GIB, TWO_B, Workload(240, 1), BF16, resident_layers={"model": 24})
    assert not too_many.fits and "over the budget" in too_many.describe()


def test_the_vae_tile_shrinks_with_the_budget_and_leaves_for_the_cpu():
    work = Workload(240, 1)
    tiles = [plan_request(int(gb * GIB), TWO_B, work, BF16).vae_tile for gb in (24, 2.2, 1.5, 1.1)]
    assert tiles[0] == 512 and tiles == sorted(tiles, reverse=True) and len(set(tiles)) > 2
    cpu = plan_request(int(0.5 * GIB), TWO_B, work, BF16)
    assert cpu.vae_tile is None and "VAE on the CPU" in cpu.describe()
    assert plan_request(24 * GIB, TWO_B, work, BF16, tile_limit=256).vae_tile == 256


def test_workload_of_a_request():
    base = Workload.of(request(caption="x", duration=90, batch_size=2), "base")
    assert (base.seconds, base.batch, base.cfg, base.frames) == (90, 2, True, 2250)
    assert not Workload.of(request(caption="x", duration=90), "turbo").cfg
    clip = torch.zeros(2, 48000 * 30)
    extend = Workload.of(request(caption="x", task="extend", src_audio=clip, src_sample_rate=48000, repaint_start=0,
                                 repaint_end=45), "turbo")
    assert extend.seconds == 45 and extend.source_seconds == 30
    assert Workload.of(request(caption="x", duration=60), "turbo", lm=True).lm_codes == 300


# ----------------------------------------------------------------------------------------------------- VAE tiles


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    from acestep_core.loading.checkpoint import load_vae
    from devtools.fixtures import build_tensors, write_hf_layout

    root = write_hf_layout(str(tmp_path_factory.mktemp("m")), build_tensors("turbo", seed=0), "turbo")
    return load_vae(os.path.join(root, "vae"), torch.float32, "cpu")


def test_decode_tile_follows_the_free_memory(vae):
    from acestep_core.models.vae import tiled_decode

    latents = torch.randn(1, 8, 700, generator=torch.Generator().manual_seed(0))
    cost = lambda tile: vae_decode_working(torch.float32, tile, Workload(700 / 25, 1), vae.config)  # noqa: E731
    audio, run = vae_tiles.decode(vae, latents, 512, free=lambda: cost(512))
    assert run.tile == 512 and torch.equal(audio, tiled_decode(vae, latents, 512))
    audio, run = vae_tiles.decode(vae, latents, 512, free=lambda: cost(512) - 1)
    assert run.tile == 384 and run.device == "cpu" and torch.equal(audio, tiled_decode(vae, latents, 384))
    assert vae_tiles.decode(vae, latents, 300, free=lambda: cost(512))[1].tile == 300  # the requested tile fits


def test_decode_falls_back_to_the_cpu_when_no_tile_fits(vae, monkeypatch):
    from acestep_core.models.vae import tiled_decode

    bf16 = type(vae)(vae.config).to(torch.bfloat16)
    bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in vae.state_dict().items()})
    latents = torch.randn(1, 8, 300, generator=torch.Generator().manual_seed(1))
    copies = []
    real_copy = vae_tiles.cpu_copy
    monkeypatch.setattr(vae_tiles, "cpu_copy", lambda v: copies.append(v) or real_copy(v))
    audio, run = vae_tiles.decode(bf16, latents, 512, free=lambda: 1000)
    assert run.device == "cpu-fallback" and copies == [bf16] and "CPU" in run.describe()
    # decoded by a float32 copy (the model given stays as it is), returned in the VAE's dtype
    expected = tiled_decode(real_copy(bf16), latents, 512).to(torch.bfloat16)
    assert audio.dtype == torch.bfloat16 and torch.equal(audio, expected)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_encode_window_follows_the_free_memory(vae):
    from acestep_core.memory.estimates import vae_encode_working
    from acestep_core.models.vae import tiled_encode

    audio = torch.randn(1, 2, 200 * 70, generator=torch.Generator().manual_seed(2))
    assert vae_tiles.encode(vae, audio)[1].window == 30
    small = vae_encode_working(torch.float32, 12.0, vae.config)
    z, run = vae_tiles.encode(vae, audio, free=lambda: small)
    assert run.window == 12 and torch.equal(z, tiled_encode(vae, audio, chunk_samples=12 * 200))
    z, run = vae_tiles.encode(vae, audio, free=lambda: 10)
    assert run.device == "cpu-fallback" and torch.equal(z, tiled_encode(vae, audio))
