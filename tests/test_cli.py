"""The command line on a tiny official-layout checkpoint: parsing, the order of work (everything checked before any
model is loaded), model choice and the first line, all-or-nothing outputs, and real runs of every task. The
bad-input catalogue shared with the API and the nodes is in test_bad_inputs.py."""
import json
import os
import subprocess
import sys
import types
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import torch

from acestep_core import cli
from acestep_core.audio import load_audio, read_metadata, save_audio
from devtools.fixtures import build_tensors, tiny_models_folder, write_hf_layout

RATE = 200  # the tiny VAE's rate
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One models folder holding turbo and base (official layout)."""
    return tiny_models_folder(tmp_path_factory, "turbo", "base")


@dataclass
class FakeResult:
    audio: torch.Tensor
    latents: torch.Tensor
    seeds: list
    sample_rate: int = RATE
    metadata: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


class FakePipeline:
    """Stands in for the loaded model: records what it was asked, returns tones of the task's length."""

    loaded: ClassVar[list] = []
    requests: ClassVar[list] = []
    adapters: ClassVar[list] = []

    def __call__(self, req, on_step=None, should_cancel=None, on_warning=None, adapters=()):
        FakePipeline.requests.append(req)
        FakePipeline.adapters.append(list(adapters))
        for i in range(1, 5):
            on_step(i, 4)
        on_warning("lyrics: 3000 tokens with its prompt; the text encoder reads the first 2048")
        b, seconds = req.task.batch_size, req.task.seconds
        t = torch.arange(int(seconds * RATE)) / RATE
        audio = torch.stack([0.5 * torch.sin(2 * torch.pi * (20 + 10 * i) * t).expand(2, -1) for i in range(b)])
        seed = req.sampler.seed
        seeds = list(seed) if isinstance(seed, tuple) else [(seed or 7) + i for i in range(b)]
        return FakeResult(audio, torch.randn(b, int(seconds * 25), 8), seeds, RATE,
                          {"variant": "turbo", "steps": 4, "seeds": seeds, "shift": 3.0})


@pytest.fixture
def fake(monkeypatch, tmp_path, models):
    FakePipeline.loaded, FakePipeline.requests, FakePipeline.adapters = [], [], []

    def load(path, folder, dtype, device, weight_dtype="default"):
        FakePipeline.loaded.append((path, folder, dtype, device))
        return FakePipeline()

    monkeypatch.setattr(cli, "load_pipeline", load)
    monkeypatch.chdir(tmp_path)
    return models


def run(args, capsys):
    code = cli.main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err):
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------------------------------- parsing


def test_argument_parsing():
    args = cli.build_parser().parse_args([
        "generate", "--checkpoint", "ck", "--model", "base", "--caption", "jazz", "--lyrics", "la", "--bpm", "120",
        "--key", "C major", "--timesig", "3", "--language", "fr", "--duration", "42.5", "--task", "repaint",
        "--src-audio", "s.wav", "--ref-audio", "r.wav", "--start", "-5", "--end", "12.5", "--track", "vocals",
        "--track", "drums", "--steps", "8", "--shift", "2.5", "--guidance", "7", "--seed", "3", "--batch", "2",
        "--dtype", "fp32", "--device", "cpu", "--out", "x.mp3", "--save-latents", "l.safetensors",
        "--repaint-mode", "conservative", "--cover-strength", "0.5", "--cover-noise", "0.2", "--audio-codes", "1,2",
        "--no-normalize", "--allow-download", "--cfg-interval", "0.1", "0.9", "--guidance-method", "adg",
        "--timesteps", "1,0.5", "--tile-frames", "256"])
    assert (args.command, args.checkpoint, args.model, args.caption, args.lyrics, args.bpm, args.key) == \
        ("generate", "ck", "base", "jazz", "la", 120, "C major")
    assert (args.timesig, args.language, args.duration, args.task, args.src_audio, args.ref_audio) == \
        ("3", "fr", 42.5, "repaint", "s.wav", "r.wav")
    assert (args.start, args.end, args.track, args.steps, args.shift, args.guidance) == \
        (-5.0, 12.5, ["vocals", "drums"], 8, 2.5, 7.0)
    assert (args.seed, args.batch, args.dtype, args.device, args.out, args.save_latents) == \
        ("3", 2, "fp32", "cpu", "x.mp3", "l.safetensors")
    assert (args.repaint_mode, args.cover_strength, args.cover_noise, args.audio_codes, args.cfg_interval) == \
        ("conservative", 0.5, 0.2, "1,2", [0.1, 0.9])
    assert args.no_normalize and args.allow_download and args.tile_frames == 256
    d = cli.build_parser().parse_args(["generate"])
    assert (d.checkpoint, d.out, d.dtype, d.device, d.track, d.no_normalize, d.allow_download) == \
        (None, "song.flac", "auto", None, None, False, False)


def test_unparseable_argument_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--bpm", "fast"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument --bpm")


def test_request_fields(tmp_path):
    args = cli.build_parser().parse_args(["generate", "--timesig", "6/8", "--seed", "1, 2", "--track", "bass",
                                          "--no-normalize", "--cfg-interval", "0", "0.5"])
    fields = cli.request_fields(args, "words", None, None)
    assert fields == {"timesignature": "6/8", "seed": [1, 2], "tracks": "bass", "normalize": False,
                      "lyrics": "words", "cfg_interval_start": 0.0, "cfg_interval_end": 0.5}
    codes = tmp_path / "codes.txt"
    codes.write_text("<|audio_code_5|><|audio_code_6|>\n")
    args = cli.build_parser().parse_args(["generate", "--audio-codes", f"@{codes}"])
    assert cli.request_fields(args, None, None, None) == {"audio_codes": "<|audio_code_5|><|audio_code_6|>"}


def test_output_paths():
    assert cli.output_paths("out/song.flac", 3) == ["out/song.flac", "out/song_1.flac", "out/song_2.flac"]
    assert cli.output_paths("a.mp3", 1) == ["a.mp3"]


# --------------------------------------------------------------------------------------------------- model choice


def test_first_line_names_variant_dtype_device_and_the_model_is_loaded_last(fake, capsys):
    code, _, err = run(["--checkpoint", fake, "--duration", "10", "--seed", "1"], capsys)
    assert code == 0, err
    first = err.splitlines()[0]
    assert first == "ACE-Step 1.5 turbo (acestep-v15-turbo) · fp32 · cpu · text2music"
    assert FakePipeline.loaded == [(fake, None, torch.float32, torch.device("cpu"))]
    assert "warning: lyrics: 3000 tokens" in err  # the pipeline's warnings reach stderr


@pytest.mark.parametrize("args, folder, variant", [
    (["--model", "base"], "base", "base"),
    (["--model", "acestep-v15-base"], "acestep-v15-base", "base"),
    (["--task", "extract", "--track", "vocals"], "base", "base"),  # stem tasks prefer base when it is there
    (["--task", "extract", "--track", "vocals", "--model", "turbo"], "turbo", "turbo"),
])
def test_model_folder_choice(fake, capsys, tmp_path, args, folder, variant):
    src = save_audio(tmp_path / "src.wav", 0.3 * torch.ones(2, 2400), RATE)
    extra = ["--src-audio", src] if "--task" in args else ["--duration", "10"]
    code, _, err = run(["--checkpoint", fake, *args, *extra], capsys)
    assert code == 0, err
    assert FakePipeline.loaded[0][1] == folder and err.startswith(f"ACE-Step 1.5 {variant} ")
    assert ("only on the base model" in err) == (variant != "base")


def test_unknown_model_folder(fake, capsys):
    code, _, err = run(["--checkpoint", fake, "--model", "xl-sft"], capsys)
    assert code == 1 and "no model folder 'xl-sft'; found acestep-v15-base, acestep-v15-turbo" in error_lines(err)[0]
    assert FakePipeline.loaded == []


def test_settings_the_variant_cannot_take_are_refused_before_loading(fake, capsys):
    code, _, err = run(["--checkpoint", fake, "--model", "base", "--timesteps", "1,0.5,0"], capsys)
    assert code == 1 and FakePipeline.loaded == []
    assert error_lines(err) == ["error: --timesteps '1, 0.5, 0' is not allowed: custom timesteps only on turbo and "
                                "SFT models (the base model has no such option)"]


def test_missing_checkpoint_message(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "nothing" / "acestep")
    code, out, err = run(["--checkpoint", missing, "--caption", "x"], capsys)
    assert code == 1 and out == ""
    lines = error_lines(err)
    assert len(lines) == 1 and len(err.strip().splitlines()) == 1
    assert missing in lines[0] and f"hf download ACE-Step/Ace-Step1.5 --local-dir {missing}" in lines[0]
    assert "huggingface-cli" in lines[0] and "diffusion_models" in lines[0] and "--allow-download" in lines[0]
    assert not os.path.exists("song.flac")


def test_default_checkpoint(fake, capsys, monkeypatch):
    monkeypatch.setenv("ACESTEP_MODELS", fake)
    assert cli.checkpoints.default_checkpoint() == fake
    code, _, err = run(["--duration", "10"], capsys)
    assert code == 0, err
    monkeypatch.delenv("ACESTEP_MODELS")
    assert cli.checkpoints.default_checkpoint() == os.path.join(".", "models", "acestep")  # ComfyUI's models/acestep


def test_allow_download(fake, capsys, monkeypatch, tmp_path):
    calls = []

    def snapshot_download(repo_id, local_dir, allow_patterns):
        calls.append((repo_id, local_dir, allow_patterns))
        write_hf_layout(local_dir, build_tensors("turbo", seed=0), "turbo")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    target = str(tmp_path / "dl" / "acestep")
    code, _, err = run(["--checkpoint", target, "--duration", "10", "--allow-download"], capsys)
    assert code == 0, err
    assert calls[0][0] == "ACE-Step/Ace-Step1.5" and "vae/*" in calls[0][2]
    assert [p for p in calls[0][2] if "5Hz" in p] == ["acestep-5Hz-lm-1.7B/*"]  # the app's default LM too
    assert os.path.isdir(os.path.join(target, "vae")) and not os.path.exists(target + ".download")
    assert FakePipeline.loaded[0][0] == target


def test_allow_download_without_hub_or_network(capsys, monkeypatch, tmp_path):
    target = str(tmp_path / "dl" / "acestep")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    code, _, err = run(["--checkpoint", target, "--allow-download"], capsys)
    assert code == 1 and len(error_lines(err)) == 1 and "pip install huggingface_hub" in err

    def offline(**kwargs):
        raise ConnectionError("Name or service not known\nmore details")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=offline))
    code, _, err = run(["--checkpoint", target, "--allow-download"], capsys)
    assert code == 1 and error_lines(err) == [e for e in err.splitlines() if e.startswith("error:")]
    assert "Name or service not known" in err and "more details" not in err
    assert not os.path.exists(target)


def test_bad_device(fake, capsys):
    code, _, err = run(["--checkpoint", fake, "--device", "gpu0"], capsys)
    assert code == 1 and "--device 'gpu0' is not a device" in error_lines(err)[0]
    if not torch.cuda.is_available():
        code, _, err = run(["--checkpoint", fake, "--device", "cuda"], capsys)
        assert code == 1 and "no CUDA GPU" in error_lines(err)[0]
    assert FakePipeline.loaded == []


# --------------------------------------------------------------------------------------------------- outputs


def test_failure_while_writing_leaves_nothing(fake, capsys, tmp_path, monkeypatch):
    real = cli.outputs.save_audio
    calls = []

    def second_fails(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(cli.outputs, "save_audio", second_fails)
    code, _, err = run(["--checkpoint", fake, "--batch", "2", "--duration", "10", "--out", "o/s.flac"], capsys)
    assert code == 1 and "No space left" in error_lines(err)[0]
    assert os.listdir(tmp_path / "o") == []  # neither item, nor a temporary


def test_a_failed_rename_puts_earlier_files_back(fake, capsys, tmp_path, monkeypatch):
    (tmp_path / "s.flac").write_bytes(b"the user's old file")
    real = os.replace
    calls = []

    def third_fails(src, dst):
        calls.append(dst)
        if str(dst).endswith("s_1.flac"):
            raise OSError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(cli.outputs.os, "replace", third_fails)
    code, _, err = run(["--checkpoint", fake, "--batch", "2", "--duration", "10", "--out", "s.flac"], capsys)
    assert code == 1 and "Permission denied" in error_lines(err)[0]
    assert (tmp_path / "s.flac").read_bytes() == b"the user's old file"
    assert sorted(os.listdir(tmp_path)) == ["s.flac"]


def test_round_trip_with_fake_pipeline(fake, capsys, tmp_path):
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("[verse]\nhello wörld\n", encoding="utf-8")
    src = save_audio(tmp_path / "src.wav", torch.rand(1, 44100 * 12) - 0.5, 44100)
    code, out, err = run(["--checkpoint", fake, "--caption", "calm piano", "--lyrics-file", str(lyrics),
                          "--batch", "2", "--seed", "40", "--bpm", "90", "--timesig", "3/4",
                          "--task", "cover", "--src-audio", src, "--out", "out/song.flac",
                          "--save-latents", "out/lat.safetensors", "--steps", "4"], capsys)
    assert code == 0, err
    assert out.splitlines() == ["out/song.flac", "out/song_1.flac", "out/lat.safetensors"]
    assert "[##############################] 4/4" in err  # progress bar on stderr
    req = FakePipeline.requests[0]
    assert (req.text.lyrics, req.text.caption, req.task.batch_size, req.sampler.seed, req.text.bpm) == \
        ("[verse]\nhello wörld\n", "calm piano", 2, 40, 90)
    assert req.text.timesignature == "3" and req.sampler.steps == 4
    assert req.task.kind == "cover" and req.task.source.sample_rate == 44100
    assert req.task.source.waveform.shape == (1, 44100 * 12)
    assert req.text.language == "en" and req.render.normalize is True  # defaults when not given
    for i, name in enumerate(["out/song.flac", "out/song_1.flac"]):
        wav, rate = load_audio(tmp_path / name)
        assert rate == RATE and wav.shape == (2, 12 * RATE)
        meta = json.loads(read_metadata(tmp_path / name)["acestep"])
        assert meta["seed"] == 40 + i and meta["caption"] == "calm piano" and meta["variant"] == "turbo"
        assert meta["lyrics"] == "[verse]\nhello wörld\n" and meta["model"] == "acestep-v15-turbo"
    assert sorted(os.listdir(tmp_path / "out")) == ["lat.safetensors", "song.flac", "song_1.flac"]

    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "lat.safetensors"), "pt") as f:
        assert f.get_tensor("latents").shape == (2, 300, 8)
        assert f.get_tensor("seeds").tolist() == [40, 41]
        assert json.loads(f.metadata()["acestep"])["seeds"] == [40, 41]


def test_wav_files_carry_the_generation_tags(fake, capsys, tmp_path):
    code, _, err = run(["--checkpoint", fake, "--caption", "calm piano", "--duration", "10", "--seed", "5",
                        "--out", "x.wav"], capsys)
    assert code == 0, err
    meta = json.loads(read_metadata(tmp_path / "x.wav")["comment"])
    assert meta["caption"] == "calm piano" and meta["seed"] == 5 and meta["generator"].startswith("acestep_core ")


def test_render_settings_reach_the_request(fake, capsys):
    code, _, err = run(["--checkpoint", fake, "--duration", "10", "--out", "x.mp3", "--fade-in", "1",
                        "--no-normalize", "--tile-frames", "64", "--seed", "18446744073709551615"], capsys)
    assert code == 0, err
    render = FakePipeline.requests[0].render
    assert (render.normalize, render.fade_in, render.fade_out, render.tile_frames) == (False, 1.0, 0.0, 64)


def test_big_seed_latents(fake, capsys, tmp_path):
    code, _, err = run(["--checkpoint", fake, "--duration", "10", "--seed", "18446744073709551615",
                        "--save-latents", "l.safetensors"], capsys)
    assert code == 0, err
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "l.safetensors"))["seeds"].dtype == torch.uint64


def test_module_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "acestep_core", "generate", "--checkpoint", str(tmp_path / "none")],
                       check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: no ACE-Step 1.5 models at")


# --------------------------------------------------------------------------------------------------- real runs


def test_real_round_trip_on_a_tiny_checkpoint(models, tmp_path, capsys):
    """No fake: the CLI loads a tiny official-layout checkpoint, generates, writes audio and latents."""
    from safetensors.torch import load_file

    out = tmp_path / "song.wav"
    latents = tmp_path / "song.safetensors"
    code = cli.main(["generate", "--checkpoint", models, "--caption", "calm piano", "--lyrics", "[verse]\nla",
                     "--duration", "10", "--seed", "4", "--batch", "2", "--out", str(out),
                     "--save-latents", str(latents)])
    assert code == 0, capsys.readouterr().err
    for path in (out, tmp_path / "song_1.wav"):
        audio, rate = load_audio(str(path))
        assert rate == RATE and audio.shape == (2, 10 * RATE)
    saved = load_file(str(latents))
    assert saved["latents"].shape == (2, 250, 8) and saved["seeds"].tolist() == [4, 5]


def test_long_lyrics_warn_with_token_counts(models, tmp_path, capsys):
    code = cli.main(["generate", "--checkpoint", models, "--lyrics", "la " * 2500, "--duration", "10",
                     "--seed", "1", "--out", str(tmp_path / "x.flac")])
    err = capsys.readouterr().err
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning: lyrics")]
    assert len(warning) == 1 and "reads the first 2048" in warning[0]
    count = int(warning[0].split("lyrics: ")[1].split(" tokens")[0])
    assert count > 2500


@pytest.mark.parametrize("task_args, seconds", [
    (["--task", "cover", "--cover-strength", "0.5"], 10),
    (["--task", "repaint", "--start", "2", "--end", "5"], 10),
    (["--task", "extend", "--start", "8", "--end", "14"], 14),
    (["--task", "extract", "--track", "vocals"], 10),
    (["--task", "lego", "--track", "drums"], 10),
    (["--task", "complete", "--track", "bass", "--track", "drums"], 10),
])
def test_every_audio_task_through_the_cli(models, tmp_path, capsys, task_args, seconds):
    src = tmp_path / "src.wav"
    save_audio(str(src), 0.5 * torch.sin(torch.linspace(0, 300, 2000)).repeat(2, 1), RATE)
    out = tmp_path / "out.wav"
    code = cli.main(["generate", "--checkpoint", models, "--src-audio", str(src), "--seed", "1", "--out", str(out),
                     "--ref-audio", str(src), "--steps", "3", *task_args])
    assert code == 0, capsys.readouterr().err
    audio, rate = load_audio(str(out))
    assert rate == RATE and audio.shape == (2, seconds * RATE)
