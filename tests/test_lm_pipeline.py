"""The 5 Hz LM wired into generation on tiny checkpoints: plan → DiT → audio through the Python API and the command
line, for every mode; the metas / caption / codes the plan hands the DiT (checked against the planner run on its
own and the model's own code → hint path); same seed, same plan and song; the tasks the LM skips; think-mode
DCW; progress, cancel, the LM's memory phase; simple mode and understanding; bad inputs naming the input.

Two LMs: a random one (it writes long captions, so caption rewriting shows; songs at most 12 s) and the terse
one of devtools.lm_fixtures (bpm 111, 11-s songs, empty caption: fast command-line runs)."""
from __future__ import annotations

import dataclasses
import json
import re
import os

import pytest
import torch

from acestep_core import cli, planning
from acestep_core.audio import load_audio, read_metadata, save_audio
from acestep_core.constants import DEFAULT_DURATION
from acestep_core.errors import InputError
from acestep_core.lm_planner import Planner
from acestep_core.loading.lm import find_lm, load_lm, load_lm_tokenizer
from acestep_core.pipeline import AceStepPipeline
from acestep_core.prompts import format_metas, task_instruction
from acestep_core.request import AudioClip, request
from acestep_core.sampling import GenerationCancelled
from devtools.fixtures import build_tensors, tiny_models_folder
from devtools.lm_fixtures import random_lm_state_dict, terse_lm_state_dict, write_comfy_lm, write_official_lm

RATE = 200  # the tiny VAE's rate
LM_FOLDER = "acestep-5Hz-lm-1.7B"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An official models folder: turbo and the terse LM beside it; plus a Comfy-Org file holding a random LM."""
    root = tiny_models_folder(tmp_path_factory)
    write_official_lm(root, terse_lm_state_dict(seed=5), name=LM_FOLDER)
    comfy = write_comfy_lm(str(tmp_path_factory.mktemp("comfy")), random_lm_state_dict(seed=11))
    return root, comfy


@pytest.fixture(scope="module")
def pipe(models):
    """The pipeline with the terse LM, found next to the models."""
    return AceStepPipeline.from_pretrained(models[0], dtype="fp32", device="cpu", lm="auto")


@pytest.fixture(scope="module")
def random_pipe(pipe, models):
    """The same DiT with the random LM (songs of at most 12 s)."""
    lm = load_lm(models[1], dtype=torch.float32)
    return AceStepPipeline(pipe.ckpt, Planner(lm, load_lm_tokenizer(None, lm.config.vocab_size), max_duration=12))


class Spy:
    """Records the DiT's context latents and the caption prompts given to the text encoder."""

    def __init__(self, monkeypatch, pipe):
        import acestep_core.pipeline as pipeline_module

        self.contexts, self.captions = [], []
        decoder, encode = pipe.model.decoder, pipeline_module.encode_text_inputs

        def forward(x, t, context, kv, r=None, original=decoder.forward):
            self.contexts.append(context.clone())
            return original(x, t, context, kv, r)

        def encode_text(tokenizer, encoder, captions, lyrics, *args):
            self.captions += captions
            return encode(tokenizer, encoder, captions, lyrics, *args)

        monkeypatch.setattr(decoder, "forward", forward)
        monkeypatch.setattr(pipeline_module, "encode_text_inputs", encode_text)


# ------------------------------------------------------------------------------------------------ API

def test_think_fills_the_metas_rewrites_the_caption_and_each_song_follows_its_codes(random_pipe, monkeypatch):
    spy = Spy(monkeypatch, random_pipe)
    req = request(caption="calm piano", lyrics="[verse]\nla la", seed=3, lm_mode="think", batch_size=2,
                  decode=False)
    result = random_pipe(req)
    plans = result.request.plans
    # The planner on its own, with the seeds and metas the pipeline gives it: the same plans.
    alone = random_pipe.planner.plan_batch("calm piano", "[verse]\nla la", [3, 4], mode="think",
                                           metas={"bpm": None, "keyscale": None, "timesignature": None,
                                                  "duration": None})
    assert [p.codes for p in plans] == [p.codes for p in alone] and plans[0].codes != plans[1].codes
    first = plans[0]
    assert first.caption and first.bpm is not None and 10 <= first.duration <= 12
    # The DiT prompt: the LM's caption, its metas and duration, the cover instruction (codes become hints).
    metas = format_metas(first.bpm, first.timesignature, first.keyscale, first.duration)
    assert result.metadata["metas"] == metas and metas in spy.captions[0]
    assert first.caption in spy.captions[0] and "calm piano" not in spy.captions[0]
    assert result.metadata["instruction"] == task_instruction("cover")
    # Each song's context is its own codes through the model's code → hint path (5 hint frames per code).
    frames = result.latents.shape[1]
    assert frames == max(128, len(first.codes) * 5)
    for i, plan in enumerate(plans):
        hints = random_pipe.model.codes_to_hints(torch.tensor([plan.codes]))[0]
        assert torch.equal(spy.contexts[0][i, : hints.shape[0], : hints.shape[1]], hints)
    meta = result.metadata["lm"]
    assert meta["mode"] == "think" and meta["seeds"] == [3, 4] and meta["codes"] == [p.codes for p in plans]
    assert result.metadata["dcw"] == "double 0.02/0.06"  # the app's think values


def test_given_metas_are_kept_and_decide_limits_what_the_dit_gets(random_pipe):
    given = random_pipe(request(caption="jazz", bpm=90, keyscale="F# minor", duration=10.0, seed=1,
                                lm_mode="think", decode=False))
    plan = given.request.plans[0]
    assert (plan.bpm, plan.keyscale, plan.duration, len(plan.codes)) == (90, "F# minor", 10.0, 50)
    assert given.metadata["metas"] == format_metas(90, plan.timesignature, "F# minor", 10.0)
    nothing = random_pipe(request(caption="jazz", duration=10.0, seed=1, lm_mode="think", lm_decide="none",
                                  lm_rewrite_caption=False, decode=False))
    plan = nothing.request.plans[0]
    assert plan.bpm is not None and plan.language is None  # it thought (language not asked for) ...
    assert nothing.metadata["metas"] == format_metas(None, None, None, 10.0)  # ... the DiT keeps auto
    assert nothing.request.text.caption == "jazz" and nothing.request.text.language == "en"


def test_codes_mode_writes_only_codes_for_the_requested_length(random_pipe):
    result = random_pipe(request(caption="rock", duration=10.0, seed=2, lm_mode="codes", decode=False))
    plan = result.request.plans[0]
    assert plan.metas_text == "" and plan.bpm is None and len(plan.codes) == 50
    assert result.metadata["metas"] == format_metas(None, None, None, 10.0)
    assert result.metadata["dcw"] == "double 0.05/0.02"  # not thinking: the variant's values
    alone = random_pipe.planner.plan("rock", "", seed=2, mode="codes", metas={"duration": 10.0})
    assert plan.codes == alone.codes


def test_same_seed_same_plan_and_song_other_seed_other_codes(pipe):
    a = pipe(request(caption="pop", seed=9, lm_mode="think"))
    b = pipe(request(caption="pop", seed=9, lm_mode="think"))
    c = pipe(request(caption="pop", seed=10, lm_mode="think"))
    assert a.request.plans[0].codes == b.request.plans[0].codes != c.request.plans[0].codes
    assert torch.equal(a.audio, b.audio) and not torch.equal(a.audio, c.audio)
    # the terse LM: 11 s at 111 bpm; the song is 11 s long
    assert (a.request.task.duration, a.request.text.bpm) == (11.0, 111)
    assert a.audio.shape[-1] == 11 * RATE


def test_lm_seed_apart_from_the_sampler_seed(pipe):
    result = pipe(request(caption="pop", seed=20, lm_seed=5, batch_size=2, lm_mode="codes", duration=10.0,
                          decode=False))
    assert [p.seed for p in result.request.plans] == [5, 6] and result.seeds == [20, 21]


def test_plan_alone_is_the_pipelines_plan_and_random_seeds_are_shared_with_the_dit(random_pipe):
    req = request(caption="calm piano", seed=3, lm_mode="think", batch_size=2, decode=False)
    planned = planning.plan(random_pipe.planner, req)  # what the LM Planner node runs
    result = random_pipe(req)
    assert [p.codes for p in planned.plans] == [p.codes for p in result.request.plans]
    assert planning.describe_plans(planned) == planning.describe_plans(result.request)
    assert planned.text.caption == result.request.text.caption and planned.text.bpm == result.request.text.bpm
    assert planned.task.audio_codes == result.request.task.audio_codes
    assert planning.plan(random_pipe.planner, request(caption="x", lm_mode="off")).plans == ()  # nothing to do
    drawn = random_pipe(request(caption="calm piano", lm_mode="codes", duration=10.0, batch_size=2, decode=False))
    assert [p.seed for p in drawn.request.plans] == drawn.seeds  # the seeds the pipeline drew for the songs ...
    assert drawn.request.sampler.seed is None  # ... while the request stays as given


def test_lm_codes_is_what_the_plan_may_write(random_pipe):
    planner = random_pipe.planner  # max_duration 12 s
    assert planning.lm_codes(request(caption="x", duration=10.0, lm_mode="codes"), planner) == 50
    assert planning.lm_codes(request(caption="x", lm_mode="think", lm_decide="duration"), planner) == 60
    assert planning.lm_codes(request(caption="x", duration=10.0, lm_mode="off"), planner) == 0
    lego = request(caption="x", task="lego", src_audio=0.1 * torch.randn(2, RATE), src_sample_rate=RATE,
                   tracks="drums", lm_mode="think")
    assert planning.lm_work(lego)[0] == "metas" and planning.lm_codes(lego, planner) == 0


def test_user_dcw_settings_win_over_the_think_values(pipe):
    result = pipe(request(caption="pop", seed=1, lm_mode="think", dcw_scaler=0.1, decode=False))
    assert result.metadata["dcw"] == "double 0.1/0.06"


@pytest.mark.parametrize("task, fields, work", [
    ("cover", {"src_audio": "song"}, None), ("repaint", {"src_audio": "song", "repaint_start": 2.0}, None),
    ("extend", {"src_audio": "song", "repaint_start": 10.0, "repaint_end": 15.0}, None),
    ("extract", {"src_audio": "song", "tracks": "vocals"}, None),
    ("lego", {"src_audio": "song", "tracks": "drums"}, "metas"),
    ("complete", {"src_audio": "song", "tracks": "drums"}, "metas"),
    ("text2music", {"audio_codes": list(range(60))}, "metas"),
])
def test_the_lm_skips_cover_repaint_extract_and_writes_no_codes_where_the_structure_is_given(
        pipe, task, fields, work):
    song = torch.sin(torch.arange(12 * RATE) / RATE * 2 * torch.pi * 30)[None].repeat(2, 1) * 0.5
    if fields.get("src_audio") == "song":
        fields = {**fields, "src_audio": song, "src_sample_rate": RATE}
    req = request(task=task, caption="x", seed=1, lm_mode="think", decode=False, **fields)
    assert planning.lm_work(req)[0] == work
    warnings = []
    result = pipe(req, on_warning=warnings.append)
    if work is None:
        assert not result.request.plans and any("skipped" in w for w in warnings)
        assert result.metadata["dcw"] == "double 0.05/0.02"
    else:  # metas and caption only; the DiT still follows the source / the given codes
        plan = result.request.plans[0]
        assert plan.codes == [] and plan.bpm == 111 and result.request.text.bpm == 111
        assert result.request.task.audio_codes == req.task.audio_codes
        assert plan.duration == req.task.seconds  # the length is the source's / the codes' (given, not chosen)
    assert not any("skipped" in w for w in warnings) or work is None


def test_codes_mode_with_the_structure_given_does_nothing(pipe):
    req = request(audio_codes=list(range(60)), lm_mode="codes", seed=1, decode=False)
    assert planning.lm_work(req)[0] is None
    warnings = []
    assert not pipe(req, on_warning=warnings.append).request.plans and "nothing to write" in warnings[0]


def test_token_progress_and_cancel(pipe):
    seen = []
    pipe(request(caption="x", seed=1, lm_mode="think", decode=False), on_token=lambda *a: seen.append(a))
    phases = [p for p, _, _ in seen]
    assert phases[0] == "metas" and phases[-1] == "codes" and seen[-1][1:] == (55, 55)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 20

    with pytest.raises(GenerationCancelled, match="LM cancelled"):
        pipe(request(caption="x", seed=1, lm_mode="think", decode=False), should_cancel=cancel)


def test_no_lm_loaded_names_lm_mode(pipe):
    bare = AceStepPipeline(pipe.ckpt)
    with pytest.raises(InputError, match="^lm_mode='think' is not allowed: off: no 5 Hz LM is loaded"):
        bare(request(caption="x", lm_mode="think"))
    assert bare(request(caption="x", duration=10.0, seed=1, decode=False)).request.plans == ()


def test_the_lm_is_its_own_memory_unit_placed_for_the_plan_phase_only(models):
    from acestep_core.memory.manager import MemorySettings, TorchHost, memory_manager

    class Recording(TorchHost):
        def __init__(self):
            self.loads = []

        def load(self, device, loads, working, exclusive, views):
            self.loads.append(([name for name, _ in loads], working))

    loaded = AceStepPipeline.from_pretrained(models[0], dtype="fp32", device="cpu", lm="auto")
    host = Recording()
    manager = memory_manager(loaded.ckpt, MemorySettings(), "cpu", host=host, planner=loaded.planner)
    pipe = AceStepPipeline(loaded.ckpt, loaded.planner, placement=manager)
    assert "lm" in manager.units
    pipe(request(caption="x", seed=1, lm_mode="think", decode=False))
    assert host.loads[0][0] == ["lm"] and host.loads[0][1] > 0
    assert all("lm" not in names for names, _ in host.loads[1:])
    host.loads.clear()
    pipe(request(caption="x", seed=1, duration=10.0, decode=False))  # LM off: never placed, no LM phase
    assert all("lm" not in names for names, _ in host.loads) and "lm" not in manager.plan.peaks


def test_per_song_codes_in_a_request(pipe, monkeypatch):
    spy = Spy(monkeypatch, pipe)
    codes = [list(range(40)), list(range(100, 150))]
    result = pipe(request(audio_codes=codes, batch_size=2, seed=1, decode=False))
    assert result.latents.shape[1] == 250  # the longer song: 50 codes x 5; the shorter padded with silence
    for i, c in enumerate(codes):
        hints = pipe.model.codes_to_hints(torch.tensor([c]))[0]
        assert torch.equal(spy.contexts[0][i, : hints.shape[0], : hints.shape[1]], hints)
    with pytest.raises(InputError, match="^audio_codes=<codes for 2 songs> is not allowed: one code list"):
        request(audio_codes=codes, batch_size=3)


def test_simple_mode_and_understanding_entry_points(pipe):
    desc = pipe.simple("a soft love song", seed=1)
    assert (desc.text.bpm, desc.duration, desc.caption, desc.lyrics) == (111, 11.0, "a soft love song", "")
    assert desc.text.keyscale and desc.text.timesignature and desc.text.language == desc.language
    chosen = pipe.simple("a soft love song", language="fr", seed=1)
    assert chosen.text.language == "fr"
    song = pipe(request(caption="x", seed=4, lm_mode="off", duration=10.0))
    clip = AudioClip(song.audio[0], RATE)
    codes = pipe.audio_codes(clip, seed=2)
    latents = pipe._encode_audio(song.audio[0], 2)
    _, reference = pipe.model.tokenizer(latents[None], pipe.ckpt.silence_latent)
    assert codes == reference[0].tolist() and len(codes) == 50  # 10 s at 5 codes per second
    heard = pipe.understand(clip, seed=2)
    assert (heard.text.bpm, heard.duration) == (111, 11.0) and heard.lyrics == ""
    with pytest.raises(InputError, match="^language='xx' is not allowed"):
        pipe.simple("x", language="xx")


@pytest.mark.parametrize("fields, name, shown", [
    ({"lm_mode": "fast"}, "lm_mode", "'fast'"),
    ({"lm_cfg_scale": 5.0}, "lm_cfg_scale", "5.0"),
    ({"lm_temperature": -1}, "lm_temperature", "-1"),
    ({"lm_top_p": 1.5}, "lm_top_p", "1.5"),
    ({"lm_top_k": 101}, "lm_top_k", "101"),
    ({"lm_decide": "tempo"}, "lm_decide", "'tempo'"),
    ({"lm_seed": [1], "batch_size": 2}, "lm_seed", "[1]"),
    ({"lm_rewrite_caption": "yes"}, "lm_rewrite_caption", "'yes'"),
    ({"lm_negative_prompt": 3}, "lm_negative_prompt", "3"),
])
def test_bad_lm_inputs_name_the_input(fields, name, shown):
    with pytest.raises(InputError, match="^" + re.escape(f"{name}={shown} is not allowed: ")):
        request(**fields)


def test_lm_settings_canonical_forms():
    req = request(lm_decide="Duration, bpm", lm_negative_prompt="  ", lm_mode="codes")
    assert req.lm.decide == ("bpm", "duration") and req.lm.negative_prompt == "NO USER INPUT"


def test_find_lm_next_to_each_layout(models, tmp_path):
    from acestep_core.loading.checkpoint import resolve_paths

    assert find_lm(resolve_paths(models[0])) == os.path.join(models[0], LM_FOLDER)
    # a Comfy-Org DiT file: text_encoders/qwen_1.7b_ace15 (the 0.6B text encoder beside it is not an LM)
    assert os.path.basename(models[1]) == "qwen_1.7b_ace15.safetensors"
    paths = dataclasses.make_dataclass("P", ["dit"])(os.path.join(os.path.dirname(os.path.dirname(models[1])),
                                                                 "diffusion_models", "x.safetensors"))
    assert find_lm(paths) == models[1]
    assert find_lm(dataclasses.make_dataclass("P", ["dit"])(str(tmp_path / "acestep-v15-turbo"))) is None


# ------------------------------------------------------------------------------------------------ CLI

def generate(args, capsys):
    code = cli.main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_finds_the_lm_thinks_by_default_and_tags_each_song_with_its_plan(models, tmp_path, capsys):
    out = tmp_path / "song.flac"
    code, stdout, err = generate(["--checkpoint", models[0], "--caption", "pop", "--seed", "3", "--batch", "2",
                                  "--out", str(out), "--device", "cpu", "--dtype", "fp32"], capsys)
    assert code == 0, err
    assert err.splitlines()[0] == "ACE-Step 1.5 turbo (acestep-v15-turbo) · fp32 · cpu · text2music · " \
                                  f"LM {LM_FOLDER} (think)"
    assert "LM think · bpm 111" in err and "LM codes [" in err
    tags = [json.loads(read_metadata(str(p))["acestep"]) for p in (out, tmp_path / "song_1.flac")]
    assert [t["lm"]["seed"] for t in tags] == [3, 4] and tags[0]["lm"]["codes"] != tags[1]["lm"]["codes"]
    assert len(tags[0]["lm"]["codes"]) == 55 and tags[0]["lm"]["bpm"] == 111 and tags[0]["lm_mode"] == "think"
    assert tags[0]["caption"] == "pop"  # the user's caption; the LM's is under "lm"
    wav, rate = load_audio(str(out))
    assert wav.shape[-1] == 11 * rate


def test_cli_same_seed_same_song(models, tmp_path, capsys):
    files = []
    for name in ("a.wav", "b.wav"):
        code, _, err = generate(["--checkpoint", models[0], "--caption", "pop", "--seed", "7", "--quality", "float",
                                 "--out", str(tmp_path / name), "--device", "cpu", "--dtype", "fp32"], capsys)
        assert code == 0, err
        files.append(load_audio(str(tmp_path / name))[0])
    assert torch.equal(*files)


def test_cli_lm_off_none_and_codes_mode(models, tmp_path, capsys):
    for flags in (["--lm", "none"], ["--lm-mode", "off"]):
        code, _, err = generate(["--checkpoint", models[0], "--caption", "x", "--duration", "10", "--seed", "1",
                                 "--out", str(tmp_path / "x.flac"), *flags], capsys)
        assert code == 0 and " LM " not in err.splitlines()[0], err
        assert "lm" not in json.loads(read_metadata(str(tmp_path / "x.flac"))["acestep"])
    code, _, err = generate(["--checkpoint", models[0], "--caption", "x", "--duration", "10", "--seed", "1",
                             "--lm", models[1], "--lm-mode", "codes", "--lm-cfg", "1.5", "--lm-top-k", "20",
                             "--out", str(tmp_path / "c.flac")], capsys)
    assert code == 0, err
    assert err.splitlines()[0].endswith("· LM qwen_1.7b_ace15.safetensors (codes)")
    plan = json.loads(read_metadata(str(tmp_path / "c.flac"))["acestep"])["lm"]
    assert (plan["mode"], plan["cfg_scale"], plan["top_k"], len(plan["codes"]), plan["bpm"]) == (
        "codes", 1.5, 20, 50, None)


def test_cli_simple_mode(models, tmp_path, capsys):
    out = tmp_path / "simple.flac"
    code, _, err = generate(["--checkpoint", models[0], "--simple", "a soft love song", "--seed", "2",
                             "--language", "de", "--out", str(out)], capsys)
    assert code == 0, err
    assert "(simple, think)" in err.splitlines()[0] and "simple mode: bpm 111" in err
    tags = json.loads(read_metadata(str(out))["acestep"])
    assert tags["simple"] == {"query": "a soft love song", "instrumental": False}
    assert (tags["caption"], tags["bpm"], tags["duration"], tags["language"]) == ("a soft love song", 111, 11.0,
                                                                                  "de")
    assert load_audio(str(out))[0].shape[-1] == 11 * RATE


def test_cli_understand(models, tmp_path, capsys):
    src = tmp_path / "src.flac"
    save_audio(str(src), torch.sin(torch.arange(10 * RATE) / RATE * 2 * torch.pi * 30)[None].repeat(2, 1) * 0.5, RATE)
    code = cli.main(["understand", "--src-audio", str(src), "--checkpoint", models[0], "--seed", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.splitlines()[0] == f"ACE-Step 1.5 turbo (acestep-v15-turbo) · fp32 · cpu · understand · LM {LM_FOLDER}"
    values = json.loads(out)
    assert (values["bpm"], values["duration"], values["lyrics"], values["seed"]) == (111, 11.0, "", 1)
    code = cli.main(["understand", "--src-audio", str(src), "--checkpoint", models[0], "--seed", "1"])
    out, _ = capsys.readouterr()
    assert code == 0 and "bpm: 111" in out and "duration: 11" in out


@pytest.mark.parametrize("args, message", [
    (["--lm", "/nowhere/lm"], "error: --lm /nowhere/lm: no such file or folder"),
    (["--lm", "none", "--lm-mode", "think"], "error: --lm-mode think needs the 5 Hz LM, and none was found"),
    (["--lm", "none", "--simple", "x"], "error: --simple needs the 5 Hz LM"),
    (["--lm-temperature", "5"], "error: --lm-temperature 5.0 is not allowed: a number from 0 to 2"),
    (["--lm-decide", "tempo"], "error: --lm-decide 'tempo' is not allowed"),
    (["--lm-cfg", "0.5"], "error: --lm-cfg 0.5 is not allowed"),
    (["--simple", "x", "--caption", "y"], "error: --simple writes the caption and lyrics"),
    (["--instrumental"], "error: --instrumental is for simple mode"),
    (["--lm-seed", "a"], "error: --lm-seed 'a' is not allowed"),
])
def test_cli_bad_lm_flags_stop_before_loading(models, tmp_path, capsys, monkeypatch, args, message):
    loaded = []
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: loaded.append(a))
    code, out, err = generate(["--checkpoint", models[0], "--out", str(tmp_path / "x.flac"), *args], capsys)
    assert code == 1 and out == "" and err.strip().splitlines()[-1].startswith(message), err
    assert not loaded and not os.path.exists(tmp_path / "x.flac")


def test_cli_text_encoder_file_is_not_an_lm(models, tmp_path, capsys):
    te = os.path.join(models[0], "Qwen3-Embedding-0.6B")
    code, _, err = generate(["--checkpoint", models[0], "--lm", te, "--out", str(tmp_path / "x.flac")], capsys)
    assert code == 1 and "no 5 Hz LM in it" in err and "qwen_0.6b_ace15 is the text encoder" in err


@pytest.fixture(scope="module")
def comfy_models(tmp_path_factory):
    """A Comfy-Org models folder: the split DiT file with the terse LM in text_encoders/, and an all-in-one file
    carrying the LM itself."""
    from devtools.fixtures import write_comfy_layout
    from devtools.lm_fixtures import write_aio_with_lm
    from safetensors.torch import load_file

    root = str(tmp_path_factory.mktemp("comfy_models"))
    paths = write_comfy_layout(root, build_tensors("turbo", seed=0), "turbo")
    lm = terse_lm_state_dict(seed=5)
    write_comfy_lm(root, lm)
    write_aio_with_lm(paths["aio"], lm, extra=load_file(paths["aio"]))
    return paths


@pytest.mark.parametrize("which, lm_name", [("dit", "qwen_1.7b_ace15.safetensors"),
                                             ("aio", "ace_step_1.5_turbo_aio.safetensors")])
@pytest.mark.parametrize("mode", ["think", "codes"])
def test_cli_comfy_org_layout_finds_its_lm(comfy_models, tmp_path, capsys, which, lm_name, mode):
    out = tmp_path / "song.flac"
    code, _, err = generate(["--checkpoint", comfy_models[which], "--caption", "pop", "--seed", "3",
                             "--lm-mode", mode, "--out", str(out), "--device", "cpu", "--dtype", "fp32"], capsys)
    assert code == 0, err
    assert err.splitlines()[0].endswith(f"· LM {lm_name} ({mode})")
    plan = json.loads(read_metadata(str(out))["acestep"])["lm"]
    # think: the LM chose bpm 111 and the length (11 s); codes: the default length, no metas written
    seconds = 11 if mode == "think" else int(DEFAULT_DURATION)
    assert plan["mode"] == mode and plan["bpm"] == (111 if mode == "think" else None)
    assert len(plan["codes"]) == seconds * 5 and load_audio(str(out))[0].shape[-1] == seconds * RATE
