"""The command line, against a fake pipeline (the real end-to-end run on tiny checkpoints lives elsewhere)."""
import dataclasses
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
from acestep_core.pipeline import GenerationRequest

SR = 48000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class FakeResult:
    audio: torch.Tensor
    latents: torch.Tensor
    seeds: list
    sample_rate: int = SR
    metadata: dict = field(default_factory=dict)


class FakePipeline:
    loaded: ClassVar[list] = []
    requests: ClassVar[list] = []
    fail_validation: ClassVar[str | None] = None

    @classmethod
    def from_pretrained(cls, path, dtype="auto", device=None):
        cls.loaded.append((path, dtype, device))
        return cls()

    def validate(self, req):
        if FakePipeline.fail_validation:
            raise ValueError(FakePipeline.fail_validation)
        return req

    def __call__(self, req, on_step=None, should_cancel=None):
        self.validate(req)
        FakePipeline.requests.append(req)
        steps = req.steps or 8
        for i in range(1, steps + 1):
            on_step(i, steps)
        seconds = 10.0 if req.duration is None else req.duration
        frames = int(seconds * 25)
        b = req.batch_size
        t = torch.arange(frames * 1920) / SR
        audio = torch.stack([0.5 * torch.sin(2 * torch.pi * (220 + 110 * i) * t).expand(2, -1) for i in range(b)])
        base = req.seed if isinstance(req.seed, int) else 7
        seeds = list(req.seed) if isinstance(req.seed, list) else [base + i for i in range(b)]
        return FakeResult(audio, torch.randn(b, frames, 64), seeds, SR,
                          {"variant": "turbo", "steps": steps, "seeds": seeds, "shift": torch.tensor(3.0)})


@pytest.fixture
def fake(monkeypatch, tmp_path):
    FakePipeline.loaded, FakePipeline.requests, FakePipeline.fail_validation = [], [], None
    monkeypatch.setattr(cli, "_pipeline_api", lambda: (FakePipeline, GenerationRequest))
    ckpt = tmp_path / "models"
    ckpt.mkdir()
    monkeypatch.chdir(tmp_path)
    return str(ckpt)


def run(args, capsys):
    code = cli.main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err):
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------------------------------- parsing


def test_argument_parsing():
    args = cli.build_parser().parse_args([
        "generate", "--checkpoint", "ck", "--caption", "jazz", "--lyrics", "la", "--bpm", "120", "--key", "C major",
        "--timesig", "3", "--language", "fr", "--duration", "42.5", "--task", "repaint", "--src-audio", "s.wav",
        "--ref-audio", "r.wav", "--start", "-5", "--end", "12.5", "--track", "vocals", "--track", "drums",
        "--steps", "8", "--shift", "2.5", "--guidance", "7", "--seed", "3", "--batch", "2", "--dtype", "fp32",
        "--device", "cpu", "--out", "x.mp3", "--save-latents", "l.safetensors", "--repaint-mode", "conservative",
        "--cover-strength", "0.5", "--cover-noise", "0.2", "--audio-codes", "1,2", "--no-normalize",
        "--allow-download"])
    assert (args.command, args.checkpoint, args.caption, args.lyrics, args.bpm, args.key) == \
        ("generate", "ck", "jazz", "la", 120, "C major")
    assert (args.timesig, args.language, args.duration, args.task, args.src_audio, args.ref_audio) == \
        ("3", "fr", 42.5, "repaint", "s.wav", "r.wav")
    assert (args.start, args.end, args.track, args.steps, args.shift, args.guidance) == \
        (-5.0, 12.5, ["vocals", "drums"], 8, 2.5, 7.0)
    assert (args.seed, args.batch, args.dtype, args.device, args.out, args.save_latents) == \
        ("3", 2, "fp32", "cpu", "x.mp3", "l.safetensors")
    assert (args.repaint_mode, args.cover_strength, args.cover_noise, args.audio_codes) == \
        ("conservative", 0.5, 0.2, "1,2")
    assert args.no_normalize and args.allow_download
    d = cli.build_parser().parse_args(["generate"])
    assert (d.checkpoint, d.out, d.dtype, d.device, d.track, d.no_normalize, d.allow_download) == \
        (None, "song.flac", "auto", None, None, False, False)


def test_unparseable_argument_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "--bpm", "fast"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument --bpm")


def test_request_fields(fake, tmp_path):
    args = cli.build_parser().parse_args(["generate", "--timesig", "6/8", "--seed", "1, 2", "--track", "bass",
                                          "--no-normalize"])
    kwargs = cli.build_request_kwargs(args, "words", None, None)
    assert kwargs == {"timesignature": "6", "seed": [1, 2], "tracks": ("bass",), "normalize": False, "lyrics": "words"}
    codes = tmp_path / "codes.txt"
    codes.write_text("<|audio_code_5|><|audio_code_6|>\n")
    args = cli.build_parser().parse_args(["generate", "--audio-codes", f"@{codes}"])
    assert cli.build_request_kwargs(args, None, None, None) == {"audio_codes": "<|audio_code_5|><|audio_code_6|>"}


def test_request_fields_match_real_pipeline():
    """Every field the CLI can set exists on the real GenerationRequest (once the pipeline imports)."""
    args = cli.build_parser().parse_args([
        "generate", "--caption", "c", "--language", "en", "--bpm", "90", "--key", "C major", "--timesig", "4",
        "--duration", "30", "--task", "cover", "--start", "1", "--end", "2", "--track", "bass", "--steps", "8",
        "--shift", "3", "--guidance", "7", "--seed", "1", "--batch", "1", "--repaint-mode", "balanced",
        "--repaint-strength", "0.5", "--cover-strength", "1", "--cover-noise", "0", "--audio-codes", "1",
        "--no-normalize"])
    kwargs = cli.build_request_kwargs(args, "l", (torch.zeros(2, 10), SR), (torch.zeros(2, 10), SR))
    fields = {f.name for f in dataclasses.fields(GenerationRequest)}
    assert set(kwargs) <= fields
    GenerationRequest(**kwargs)


def test_output_paths():
    assert cli.output_paths("out/song.flac", 3) == ["out/song.flac", "out/song_1.flac", "out/song_2.flac"]
    assert cli.output_paths("a.mp3", 1) == ["a.mp3"]


# --------------------------------------------------------------------------------------------------- checkpoint


def test_missing_checkpoint_message(fake, capsys, tmp_path):
    missing = str(tmp_path / "nothing" / "Ace-Step1.5")
    code, out, err = run(["--checkpoint", missing, "--caption", "x"], capsys)
    assert code == 1 and out == ""
    lines = error_lines(err)
    assert len(lines) == 1 and len(err.strip().splitlines()) == 1
    assert missing in lines[0] and "huggingface-cli download ACE-Step/Ace-Step1.5" in lines[0]
    assert "diffusion_models" in lines[0] and "--allow-download" in lines[0]
    assert FakePipeline.loaded == [] and not os.path.exists("song.flac")


def test_default_checkpoint_from_environment(fake, capsys, monkeypatch):
    monkeypatch.setenv("ACESTEP_MODELS", fake)
    assert cli.default_checkpoint() == fake
    code, _, err = run(["--duration", "10"], capsys)
    assert code == 0, err
    assert FakePipeline.loaded == [(fake, "auto", None)]
    monkeypatch.delenv("ACESTEP_MODELS")
    assert cli.default_checkpoint() == os.path.join(".", "models", "acestep", "Ace-Step1.5")


def test_allow_download(fake, capsys, monkeypatch, tmp_path):
    calls = []

    def snapshot_download(repo_id, local_dir, allow_patterns):
        calls.append((repo_id, local_dir, allow_patterns))
        os.makedirs(os.path.join(local_dir, "vae"))

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    target = str(tmp_path / "dl" / "Ace-Step1.5")
    code, _, err = run(["--checkpoint", target, "--duration", "10", "--allow-download"], capsys)
    assert code == 0, err
    assert calls[0][0] == "ACE-Step/Ace-Step1.5" and "vae/*" in calls[0][2]
    assert os.path.isdir(os.path.join(target, "vae")) and not os.path.exists(target + ".download")
    assert FakePipeline.loaded[0][0] == target


def test_allow_download_without_hub_or_network(fake, capsys, monkeypatch, tmp_path):
    target = str(tmp_path / "dl" / "Ace-Step1.5")
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


def test_checkpoint_error_is_one_line(fake, capsys, monkeypatch):
    from acestep_core.errors import CheckpointError

    def broken(path, dtype="auto", device=None):
        raise CheckpointError(f"{path}: no acestep-v15-* model folder inside")

    monkeypatch.setattr(FakePipeline, "from_pretrained", staticmethod(broken))
    code, _, err = run(["--checkpoint", fake], capsys)
    assert code == 1 and error_lines(err) == [f"error: {fake}: no acestep-v15-* model folder inside"]


# --------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,needle", [
    (["--duration", "5"], "duration 5.0"),
    (["--bpm", "1000"], "bpm"),
    (["--key", "H major"], "keyscale"),
    (["--language", "xx"], "language"),
    (["--batch", "9"], "--batch 9"),
    (["--seed", "abc"], "--seed"),
    (["--out", "song.ogg"], ".ogg"),
    (["--out", "song.mp3", "--quality", "999"], "quality"),
    (["--lyrics", "a", "--lyrics-file", "b.txt"], "not both"),
    (["--lyrics-file", "missing.txt"], "missing.txt"),
    (["--src-audio", "missing.wav", "--task", "cover"], "missing.wav"),
    (["--save-latents", "lat.pt"], ".safetensors"),
])
def test_invalid_input_one_error_line_no_file(fake, capsys, tmp_path, args, needle):
    code, _, err = run(["--checkpoint", fake, *args], capsys)
    assert code != 0
    lines = error_lines(err)
    assert len(lines) == 1 and needle in lines[0], err
    assert len(err.strip().splitlines()) == 1
    assert not [f for f in os.listdir(tmp_path) if f != "models"]


def test_bad_device(fake, capsys):
    code, _, err = run(["--checkpoint", fake, "--device", "gpu0"], capsys)
    assert code == 1 and "--device 'gpu0' is not a device" in error_lines(err)[0]
    if not torch.cuda.is_available():
        code, _, err = run(["--checkpoint", fake, "--device", "cuda"], capsys)
        assert code == 1 and "no CUDA GPU" in error_lines(err)[0]
    assert FakePipeline.loaded == []


def test_pipeline_validation_error(fake, capsys, tmp_path):
    FakePipeline.fail_validation = "task='cover' needs src_audio (the song to work on)"
    code, _, err = run(["--checkpoint", fake, "--task", "cover"], capsys)
    assert code == 1 and error_lines(err) == ["error: task='cover' needs src_audio (the song to work on)"]
    assert not [f for f in os.listdir(tmp_path) if f != "models"]


def test_failure_while_writing_leaves_nothing(fake, capsys, tmp_path, monkeypatch):
    real = cli.save_audio
    calls = []

    def second_fails(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(cli, "save_audio", second_fails)
    code, _, err = run(["--checkpoint", fake, "--batch", "2", "--duration", "10", "--out", "o/s.flac"], capsys)
    assert code == 1 and "No space left" in error_lines(err)[0]
    assert os.listdir(tmp_path / "o") == []  # neither item, nor a temporary


# --------------------------------------------------------------------------------------------------- round trip


def test_round_trip_with_fake_pipeline(fake, capsys, tmp_path):
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("[verse]\nhello wörld\n", encoding="utf-8")
    src = save_audio(tmp_path / "src.wav", torch.rand(1, 44100) - 0.5, 44100)
    code, out, err = run(["--checkpoint", fake, "--caption", "calm piano", "--lyrics-file", str(lyrics),
                          "--duration", "12", "--batch", "2", "--seed", "40", "--bpm", "90", "--timesig", "3/4",
                          "--task", "cover", "--src-audio", src, "--out", "out/song.flac",
                          "--save-latents", "out/lat.safetensors", "--steps", "4"], capsys)
    assert code == 0, err
    assert out.splitlines() == ["out/song.flac", "out/song_1.flac", "out/lat.safetensors"]
    assert "[##############################] 4/4" in err  # progress bar on stderr
    req = FakePipeline.requests[0]
    assert (req.lyrics, req.caption, req.duration, req.batch_size, req.seed, req.bpm, req.timesignature) == \
        ("[verse]\nhello wörld\n", "calm piano", 12.0, 2, 40, 90, "3")
    assert req.task == "cover" and req.src_sample_rate == 44100 and req.src_audio.shape == (1, 44100)
    assert req.language == "en" and req.normalize is True  # pipeline defaults when not given
    for i, name in enumerate(["out/song.flac", "out/song_1.flac"]):
        wav, rate = load_audio(tmp_path / name)
        assert rate == SR and wav.shape == (2, 12 * SR)
        meta = json.loads(read_metadata(tmp_path / name)["acestep"])
        assert meta["seed"] == 40 + i and meta["caption"] == "calm piano" and meta["variant"] == "turbo"
        assert meta["lyrics"] == "[verse]\nhello wörld\n" and meta["shift"] == 3.0
    assert sorted(os.listdir(tmp_path / "out")) == ["lat.safetensors", "song.flac", "song_1.flac"]

    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "lat.safetensors"), "pt") as f:
        assert f.get_tensor("latents").shape == (2, 300, 64)
        assert f.get_tensor("seeds").tolist() == [40, 41]
        assert json.loads(f.metadata()["acestep"])["seeds"] == [40, 41]


def test_mp3_output_fades_and_no_normalize(fake, capsys, tmp_path):
    code, _, err = run(["--checkpoint", fake, "--duration", "10", "--out", "x.mp3", "--fade-in", "1",
                        "--no-normalize", "--seed", "18446744073709551615"], capsys)
    assert code == 0, err
    wav, rate = load_audio(tmp_path / "x.mp3")
    assert rate == SR and wav.shape == (2, 10 * SR)
    assert wav[:, :2000].abs().max() < 0.05 < wav[:, SR:2 * SR].abs().max()
    assert FakePipeline.requests[0].normalize is False


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


def test_real_round_trip_on_a_tiny_checkpoint(tmp_path, capsys, monkeypatch):
    """No fake: the CLI loads a tiny official-layout checkpoint, generates, writes audio and latents."""
    from safetensors.torch import load_file

    from devtools.fixtures import build_tensors, write_hf_layout

    monkeypatch.setenv("ACESTEP_CACHE_DIR", str(tmp_path / "cache"))
    root = write_hf_layout(str(tmp_path / "models"), build_tensors("turbo", seed=0), "turbo")
    out = tmp_path / "song.wav"
    latents = tmp_path / "song.safetensors"
    code = cli.main(["generate", "--checkpoint", root, "--caption", "calm piano", "--lyrics", "[verse]\nla",
                     "--duration", "10", "--seed", "4", "--batch", "2", "--out", str(out),
                     "--save-latents", str(latents)])
    assert code == 0, capsys.readouterr().err
    for path in (out, tmp_path / "song_1.wav"):
        audio, rate = load_audio(str(path))
        assert rate == 200 and audio.shape == (2, 10 * 200)
    saved = load_file(str(latents))
    assert saved["latents"].shape == (2, 250, 8) and saved["seeds"].tolist() == [4, 5]
    # A bad request after loading: one error line, nothing written.
    bad = tmp_path / "bad.wav"
    code = cli.main(["generate", "--checkpoint", root, "--task", "repaint", "--out", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("error:") and not bad.exists()


@pytest.mark.parametrize("task_args, seconds", [
    (["--task", "cover", "--cover-strength", "0.5"], 10),
    (["--task", "repaint", "--start", "2", "--end", "5"], 10),
    (["--task", "extend", "--start", "8", "--end", "14"], 14),
    (["--task", "extract", "--track", "vocals"], 10),
    (["--task", "lego", "--track", "drums"], 10),
    (["--task", "complete", "--track", "bass", "--track", "drums"], 10),
])
def test_every_audio_task_through_the_cli(tmp_path, capsys, monkeypatch, task_args, seconds):
    from devtools.fixtures import build_tensors, write_hf_layout

    monkeypatch.setenv("ACESTEP_CACHE_DIR", str(tmp_path / "cache"))
    root = write_hf_layout(str(tmp_path / "models"), build_tensors("turbo", seed=0), "turbo")
    src = tmp_path / "src.wav"
    save_audio(str(src), 0.5 * torch.sin(torch.linspace(0, 300, 2000)).repeat(2, 1), 200)
    out = tmp_path / "out.wav"
    code = cli.main(["generate", "--checkpoint", root, "--src-audio", str(src), "--seed", "1", "--out", str(out),
                     "--ref-audio", str(src), *task_args])
    assert code == 0, capsys.readouterr().err
    audio, rate = load_audio(str(out))
    assert rate == 200 and audio.shape == (2, seconds * 200)
