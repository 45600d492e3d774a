"""Every bad input gets one clear error and leaves nothing behind, through the Python API, the command line and the
nodes: the error names the input and the value (and what is allowed), the CLI prints one ``error:`` line and
exits 1 before loading any model, nothing is written, corrupt checkpoints are named, long sources are refused
before they are decoded, and each request part is checked exactly once per generation."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave

import pytest
import torch
from safetensors.torch import load_file, save_file

from acestep_core import cli, request as request_module
from acestep_core.audio import save_audio
from acestep_core.errors import CheckpointError, InputError
from acestep_core.loading.checkpoint import load_checkpoint
from acestep_core.pipeline import AceStepPipeline
from acestep_core.request import request
from devtools.comfy_harness import ROOT, run_node
from devtools.fixtures import build_tensors, tiny_models_folder

RATE = 200  # the tiny VAE's rate
NAN, INF = float("nan"), float("inf")
SONG = 0.3 * torch.sin(torch.linspace(0, 400, 10 * RATE)).repeat(2, 1)  # 10 s at the tiny rate
SRC = {"src_audio": SONG, "src_sample_rate": RATE}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models_folder(tmp_path_factory)


# ------------------------------------------------------------------------------------------------ Python API

API_CASES = [  # (fields, the input the error names, how its value is shown)
    ({"caption": None}, "caption", "None"),
    ({"lyrics": 5}, "lyrics", "5"),
    ({"language": "english"}, "language", "'english'"),
    ({"bpm": 500}, "bpm", "500"),
    ({"bpm": 120.5}, "bpm", "120.5"),
    ({"bpm": "fast"}, "bpm", "'fast'"),
    ({"keyscale": "H major"}, "keyscale", "'H major'"),
    ({"timesignature": "5/4"}, "timesignature", "'5/4'"),
    ({"task": "remix"}, "task", "'remix'"),
    ({"task": "repaint"}, "source", "None"),
    ({"task": "cover"}, "source", "None"),
    ({"duration": 5}, "duration", "5"),
    ({"duration": 700.0}, "duration", "700.0"),
    ({"duration": NAN}, "duration", "nan"),
    ({"duration": 30, "task": "repaint", **SRC}, "duration", "30.0"),
    ({"batch_size": 1.5}, "batch_size", "1.5"),
    ({"batch_size": "2"}, "batch_size", "'2'"),
    ({"batch_size": 9}, "batch_size", "9"),
    ({"batch_size": True}, "batch_size", "True"),
    ({"seed": -1}, "seed", "-1"),
    ({"seed": 2**64}, "seed", "18446744073709551616"),
    ({"seed": "7"}, "seed", "'7'"),
    ({"seed": [1, 2], "batch_size": 3}, "seed", "[1, 2]"),
    ({"seed": [1, -2], "batch_size": 2}, "seed", "-2"),
    ({"steps": 0}, "steps", "0"),
    ({"steps": 2.5}, "steps", "2.5"),
    ({"shift": 0}, "shift", "0"),
    ({"guidance": NAN}, "guidance", "nan"),
    ({"guidance": 50.0}, "guidance", "50.0"),
    ({"guidance_method": "cfg"}, "guidance_method", "'cfg'"),
    ({"apg_momentum": INF}, "apg_momentum", "inf"),
    ({"apg_norm_threshold": NAN}, "apg_norm_threshold", "nan"),
    ({"velocity_norm_threshold": NAN}, "velocity_norm_threshold", "nan"),
    ({"cfg_interval_start": 0.8, "cfg_interval_end": 0.2}, "cfg_interval", "(0.8, 0.2)"),
    ({"cfg_interval_end": NAN}, "cfg_interval_end", "nan"),
    ({"timesteps": "1, abc"}, "timesteps", "'1, abc'"),
    ({"timesteps": [0.5, 0.9]}, "timesteps", "[0.5, 0.9]"),
    ({"timesteps": "1.5, 0.5"}, "timesteps", "'1.5, 0.5'"),
    ({"tracks": ["drums"]}, "tracks", "['drums']"),
    ({"task": "extract", "tracks": ["kazoo"], **SRC}, "tracks", "'kazoo'"),
    ({"task": "extract", **SRC}, "tracks", "[]"),
    ({"task": "lego", "tracks": "drums, bass", **SRC}, "tracks", "['drums', 'bass']"),
    ({"task": "complete", "tracks": 5, **SRC}, "tracks", "5"),
    ({"repaint_mode": "wild"}, "repaint_mode", "'wild'"),
    ({"repaint_strength": NAN}, "repaint_strength", "nan"),
    ({"audio_cover_strength": 1.5}, "cover_strength", "1.5"),
    ({"cover_noise_strength": -0.1}, "cover_noise", "-0.1"),
    ({"audio_codes": "nothing here"}, "audio_codes", "'nothing here'"),
    ({"audio_codes": [1] * 100_000}, "audio_codes", "<100000 codes>"),
    ({"audio_codes": "1,2", "task": "repaint", **SRC}, "audio_codes", "<2 codes>"),
    ({"audio_codes": "1,2", "task": "cover", **SRC}, "audio_codes", "<2 codes>"),
    ({"task": "cover", "src_audio": SONG, "src_sample_rate": 0}, "src_audio sample_rate", "0"),
    ({"task": "cover", "src_audio": SONG, "src_sample_rate": "44100"}, "src_audio sample_rate", "'44100'"),
    ({"src_sample_rate": 44100}, "src_sample_rate", "44100"),
    ({"task": "cover", "src_audio": torch.zeros(2, 700 * RATE), "src_sample_rate": RATE}, "src_audio",
     "<700.0 s of audio>"),
    ({"task": "cover", "src_audio": torch.full((2, 100), NAN), "src_sample_rate": RATE}, "src_audio",
     "<Tensor of shape [2, 100]>"),
    ({"task": "cover", "src_audio": torch.zeros(2, 0), "src_sample_rate": RATE}, "src_audio",
     "<Tensor of shape [2, 0]>"),
    ({"task": "cover", "src_audio": [0.1, 0.2], "src_sample_rate": RATE}, "src_audio", "[0.1, 0.2]"),
    ({"task": "cover", "src_audio": torch.zeros(2, 2, 100), "src_sample_rate": RATE}, "src_audio",
     "<Tensor of shape [2, 2, 100]>"),
    ({"ref_audio": torch.zeros(2, 4000), "ref_sample_rate": RATE}, "ref_audio", "<silent audio>"),
    ({"task": "repaint", "repaint_start": 8.0, "repaint_end": 12.0, **SRC}, "repaint window", "(8.0, 12.0)"),
    ({"task": "repaint", "repaint_start": 6.0, "repaint_end": 2.0, **SRC}, "repaint window", "(6.0, 2.0)"),
    ({"task": "extend", "repaint_start": 12.0, "repaint_end": 20.0, **SRC}, "extend window", "(12.0, 20.0)"),
    ({"task": "extend", "repaint_start": -595.0, "repaint_end": 1.0, **SRC}, "extend window", "(-595.0, 1.0)"),
    ({"repaint_start": 1.0}, "start/end", "(1.0, None)"),
    ({"tile_frames": 8}, "tile_frames", "8"),
    ({"fade_in": -1.0}, "fade_in", "-1.0"),
    ({"fade_out": INF}, "fade_out", "inf"),
    ({"normalize": "yes"}, "normalize", "'yes'"),
    ({"temperature": 0.8}, "temperature", "0.8"),
]


@pytest.mark.parametrize("fields, name, value", API_CASES, ids=[f"{c[1]}={c[2]}"[:60] for c in API_CASES])
def test_api_rejects_with_the_input_and_value_named(fields, name, value):
    with pytest.raises(InputError) as e:
        request(**fields)
    assert isinstance(e.value, ValueError)
    assert e.value.name == name, str(e.value)
    message = str(e.value)
    assert message.startswith(f"{name}={value} is not allowed: "), message
    assert "\n" not in message and len(message) < 400


def test_api_accepts_the_friendly_forms():
    r = request(tracks="Vocals", task="extract", timesignature="3/4", bpm=0, keyscale="", seed=2**64 - 1,
                batch_size=2, **SRC)
    assert r.task.tracks == ("vocals",)  # one name, not the letters of "vocals"
    assert (r.text.timesignature, r.text.bpm, r.text.keyscale) == ("3", None, None)
    assert AceStepPipeline._seeds(r) == [2**64 - 1, 0]  # seed + i wraps, the given seed itself is in range
    assert request(task="complete", tracks="drums, bass", **SRC).task.tracks == ("drums", "bass")


# ------------------------------------------------------------------------------------------------ checkpoints

def _corrupt(root, what):
    dit = os.path.join(root, "acestep-v15-turbo")
    if what == "config is a list":
        with open(os.path.join(dit, "config.json"), "w") as f:
            json.dump([], f)
        return os.path.join(dit, "config.json")
    if what == "config hidden_size text":
        path = os.path.join(dit, "config.json")
        with open(path) as f:
            config = json.load(f)
        config["hidden_size"] = "abc"
        with open(path, "w") as f:
            json.dump(config, f)
        return path
    if what == "config not json":
        with open(os.path.join(dit, "config.json"), "w") as f:
            f.write("{not json")
        return os.path.join(dit, "config.json")
    silence = os.path.join(dit, "silence_latent.pt")
    if what == "silence 3 channels":
        torch.save(torch.zeros(1, 3, 400), silence)
        return silence
    if what == "silence 0 frames":
        torch.save(torch.zeros(1, 8, 0), silence)
        return silence
    if what == "silence NaN":
        torch.save(torch.full((1, 8, 400), NAN), silence)
        return silence
    if what == "silence pickle":
        torch.save({"latent": _Unsafe()}, silence)
        return silence
    if what == "silence truncated":
        with open(silence, "r+b") as f:
            f.truncate(100)
        return silence
    if what == "vae sampling_rate 0":
        path = os.path.join(root, "vae", "config.json")
        with open(path) as f:
            config = json.load(f)
        config["sampling_rate"] = 0
        with open(path, "w") as f:
            json.dump(config, f)
        return path
    weights = os.path.join(dit, "model.safetensors")
    if what == "int32 weights":
        tensors = load_file(weights)
        key = "decoder.layers.0.self_attn.q_proj.weight"
        tensors[key] = tensors[key].to(torch.int32)
        save_file(tensors, weights)
        return weights
    if what == "truncated weights":
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) // 2)
        return weights
    if what == "text encoder config":
        path = os.path.join(root, "Qwen3-Embedding-0.6B", "config.json")
        with open(path) as f:
            config = json.load(f)
        config["num_hidden_layers"] = -1
        with open(path, "w") as f:
            json.dump(config, f)
        return path
    raise AssertionError(what)


class _Unsafe:
    """Something a safe load must never unpickle."""


CORRUPTIONS = ["config is a list", "config hidden_size text", "config not json", "silence 3 channels",
               "silence 0 frames", "silence NaN", "silence pickle", "silence truncated", "vae sampling_rate 0",
               "int32 weights", "truncated weights", "text encoder config"]


@pytest.fixture
def corrupt(models, tmp_path):
    def make(what):
        root = str(tmp_path / "broken")
        shutil.copytree(models, root)
        return root, _corrupt(root, what)
    return make


@pytest.mark.parametrize("what", CORRUPTIONS)
def test_corrupt_checkpoints_name_the_file_through_api_and_cli(corrupt, what, capsys, tmp_path, monkeypatch):
    root, path = corrupt(what)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(root, dtype="fp32", device="cpu")
    message = str(e.value)
    assert path in message and "\n" not in message and "weights_only" not in message and "\x1b" not in message
    assert len(message) < 500, message
    monkeypatch.chdir(tmp_path)
    code = cli.main(["generate", "--checkpoint", root, "--duration", "10", "--out", "x.flac"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and lines[-1] == f"error: {message}" and "Traceback" not in err
    assert not os.path.exists(tmp_path / "x.flac")


# ------------------------------------------------------------------------------------------------ command line

def _long_wav(path, seconds, rate=8000, header_seconds=None):
    """A mono 16-bit WAV of ``seconds`` of silence written sparsely (no disk, no time); the header may claim
    another length (None: the header's data size is left open, as streaming writers do)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\0" * rate)
    size = 44 + int(seconds * rate) * 2
    with open(path, "r+b") as f:
        f.truncate(size)
        declared = 0xFFFFFFFF - 8 if header_seconds is None else int(header_seconds * rate) * 2
        f.seek(4)
        f.write((min(declared + 36, 0xFFFFFFFF)).to_bytes(4, "little"))
        f.seek(40)
        f.write(min(declared, 0xFFFFFFFF).to_bytes(4, "little"))
    return str(path)


CLI_CASES = [  # (arguments, what the one error line starts with)
    (["--duration", "5"], "error: --duration 5.0 is not allowed: a number from 10 to 600 seconds"),
    (["--duration", "nan"], "error: --duration nan is not allowed"),
    (["--bpm", "1000"], "error: --bpm 1000 is not allowed: an integer from 30 to 300"),
    (["--key", "H major"], "error: --key 'H major' is not allowed"),
    (["--language", "xx"], "error: --language 'xx' is not allowed: one of ar, az"),
    (["--timesig", "5"], "error: --timesig '5' is not allowed: beats per bar"),
    (["--task", "remix"], "error: --task 'remix' is not allowed: one of text2music, cover, cover-nofsq"),
    (["--task", "repaint"], "error: source=None is not allowed: source audio for task 'repaint'"),
    (["--batch", "9"], "error: --batch 9 is not allowed: an integer from 1 to 8"),
    (["--seed", "abc"], "error: --seed 'abc' is not allowed"),
    (["--seed", "-1"], "error: --seed -1 is not allowed: an integer from 0 to 18446744073709551615"),
    (["--seed", "18446744073709551616"], "error: --seed 18446744073709551616 is not allowed"),
    (["--seed", "1,2", "--batch", "3"], "error: --seed [1, 2] is not allowed: one seed per batch item (3)"),
    (["--steps", "0"], "error: --steps 0 is not allowed: an integer from 1 to 200"),
    (["--shift", "0"], "error: --shift 0.0 is not allowed"),
    (["--guidance", "nan"], "error: --guidance nan is not allowed"),
    (["--guidance-method", "cfg"], "error: --guidance-method 'cfg' is not allowed: one of apg, adg"),
    (["--apg-norm-threshold", "nan"], "error: --apg-norm-threshold nan is not allowed"),
    (["--cfg-interval", "0.8", "0.2"], "error: cfg_interval=(0.8, 0.2) is not allowed"),
    (["--timesteps", "1,x"], "error: --timesteps '1,x' is not allowed: numbers between 0 and 1"),
    (["--cover-strength", "1.5", "--task", "cover", "--src-audio", "SRC"], "error: --cover-strength 1.5 is not allowed"),
    (["--repaint-mode", "wild"], "error: --repaint-mode 'wild' is not allowed"),
    (["--repaint-strength", "-1"], "error: --repaint-strength -1.0 is not allowed"),
    (["--track", "kazoo", "--task", "extract", "--src-audio", "SRC"], "error: --track 'kazoo' is not allowed"),
    (["--track", "drums"], "error: --track ['drums'] is not allowed: track names only with extract, lego or complete"),
    (["--task", "repaint", "--src-audio", "SRC", "--start", "8", "--end", "12"],
     "error: repaint window=(8.0, 12.0) is not allowed"),
    (["--task", "extend", "--src-audio", "SRC", "--start", "-600"], "error: extend window=(-600.0, -570.0)"),
    (["--audio-codes", "nothing"], "error: --audio-codes 'nothing' is not allowed"),
    (["--audio-codes", "@CODES"], "error: --audio-codes <100000 codes> is not allowed: 1 to 3000 integers"),
    (["--src-audio", "SRC"],
     "error: --src-audio needs --task: one of cover, cover-nofsq, repaint, extend, extract, lego, complete"),
    (["--src-audio", "missing.wav", "--task", "cover"], "error: --src-audio: audio file not found: missing.wav"),
    (["--src-audio", "LONG", "--task", "cover"], "error: --src-audio "),
    (["--src-audio", "SILENT", "--task", "cover", "--ref-audio", "SILENT"], "error: --ref-audio <silent audio> is not allowed: a recording with sound"),
    (["--out", "song.ogg"], "error: cannot save audio to song.ogg: extension '.ogg' is not supported"),
    (["--out", "song.mp3", "--quality", "999"], "error: --quality '999' is not allowed: .mp3 files take 'V0'"),
    (["--out", "DIR"], "error: --out DIR: is a folder"),
    (["--out", "x.flac", "--batch", "2", "--seed", "1"], "error: --out x_1.flac: is a folder"),
    (["--out", "FILE/x.flac"], "error: --out FILE/x.flac: "),
    (["--save-latents", "DIR.safetensors"], "error: --save-latents DIR.safetensors: is a folder"),
    (["--save-latents", "lat.pt"], "error: --save-latents 'lat.pt': the file name must end in .safetensors"),
    (["--save-latents", "FILE/l.safetensors"], "error: --save-latents FILE/l.safetensors: "),
    (["--fade-in", "-1"], "error: --fade-in -1.0 is not allowed"),
    (["--fade-out", "inf"], "error: --fade-out inf is not allowed"),
    (["--tile-frames", "8"], "error: --tile-frames 8 is not allowed"),
    (["--lyrics", "a", "--lyrics-file", "b.txt"], "error: give either --lyrics or --lyrics-file, not both"),
    (["--lyrics-file", "missing.txt"], "error: --lyrics-file missing.txt: file not found"),
    (["--dtype", "int8"], "error: argument --dtype: invalid choice"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder with the files the cases name: SRC (10 s), SILENT, LONG (1 h, sparse), CODES (100k codes),
    a folder DIR, x_1.flac as a folder, FILE a plain file, DIR.safetensors a folder."""
    monkeypatch.chdir(tmp_path)
    save_audio("src.wav", SONG, RATE)
    save_audio("silent.wav", torch.zeros(2, 2000), RATE)
    _long_wav(tmp_path / "long.wav", 3600)
    (tmp_path / "codes.txt").write_text(",".join(["7"] * 100_000))
    for folder in ("DIR", "x_1.flac", "DIR.safetensors"):
        os.mkdir(folder)
    (tmp_path / "FILE").write_text("not a folder")
    return tmp_path


@pytest.mark.parametrize("args, expected", CLI_CASES, ids=[" ".join(c[0])[:50] for c in CLI_CASES])
def test_cli_one_error_line_before_loading_and_no_file(models, workdir, capsys, monkeypatch, args, expected):
    loads = []
    monkeypatch.setattr(cli, "load_pipeline", lambda *a: loads.append(a))
    names = {"SRC": "src.wav", "SILENT": "silent.wav", "LONG": "long.wav", "@CODES": "@codes.txt"}
    args = [names.get(a, a) for a in args]
    before = sorted(os.listdir(workdir))
    if args[0] == "--dtype":
        with pytest.raises(SystemExit):
            cli.main(["generate", "--checkpoint", models, *args])
    else:
        code = cli.main(["generate", "--checkpoint", models, *args])
        assert code == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), err
    assert loads == []  # refused before any model was loaded
    assert sorted(os.listdir(workdir)) == before  # nothing written, no temporary left


# ------------------------------------------------------------------------------------------------ long sources

@pytest.mark.parametrize("header", ["tells the length", "tells nothing"])
def test_a_source_longer_than_the_limit_is_refused_without_decoding_it(tmp_path, header):
    """Two hours of 48 kHz stereo would be 2.8 GB as float32: refused from the header, or (for a file whose header
    tells no length, played here by hiding it) after decoding a little more than the limit, in a fraction of the
    time and memory."""
    seconds = 7200
    path = tmp_path / "two_hours.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(b"\0" * 4 * 48000)
    total = 44 + seconds * 48000 * 4
    with open(path, "r+b") as f:
        f.truncate(total)  # sparse: no disk used
        f.seek(4)
        f.write((total - 8).to_bytes(4, "little"))
        f.seek(40)
        f.write((total - 44).to_bytes(4, "little"))
    code = (
        "import resource, sys, time\n"
        "from acestep_core import audio\n"
        "from acestep_core.audio import load_audio\n"
        + ("audio._header_seconds = lambda container, stream: None\n" if header == "tells nothing" else "") +
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.monotonic()\n"
        "try:\n"
        f"    load_audio({str(path)!r}, 600, '--src-audio')\n"
        "except ValueError as e:\n"
        "    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "    print(f'{time.monotonic() - t:.2f} {grown // 1024} {e}')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout, out.stderr[-2000:]
    seconds_taken, megabytes, message = out.stdout.strip().split(" ", 2)
    assert message.startswith(f"--src-audio={path} (") and "at most 600 s (trim it first)" in message
    if header == "tells the length":
        assert "(7200.0 s)" in message and float(seconds_taken) < 1.0 and int(megabytes) < 20
    else:  # decoded up to the limit only: ~600 s of stereo float32 = 230 MB, not 2.8 GB
        assert "(at least 601" in message and int(megabytes) < 600


# ------------------------------------------------------------------------------------------------ nodes

NODE_CASES = [  # (node, inputs, what the message starts with)
    ("CoverLatent", {"audio": {"waveform": SONG[None], "sample_rate": 0}, "cover_strength": 1.0,
                     "noise_strength": 0.0, "batch_size": 1}, "audio sample_rate=0 is not allowed"),
    ("CoverLatent", {"audio": {"waveform": torch.zeros(1, 2, 700 * RATE), "sample_rate": RATE},
                     "cover_strength": 1.0, "noise_strength": 0.0, "batch_size": 1},
     "audio=<700.0 s of audio> is not allowed: at most 600 s"),
    ("CoverLatent", {"audio": {"samples": torch.zeros(1, 64, 10)}, "cover_strength": 1.0, "noise_strength": 0.0,
                     "batch_size": 1}, "audio={'samples':"),
    ("ExtendLatent", {"audio": {"waveform": SONG[None], "sample_rate": RATE}, "direction": "sideways",
                      "seconds": 10.0, "overlap": 0.0, "mode": "balanced", "batch_size": 1},
     "direction='sideways' is not allowed: one of after the end, before the start"),
    ("ExtendLatent", {"audio": {"waveform": SONG[None], "sample_rate": RATE}, "direction": "after the end",
                      "seconds": 595.0, "overlap": 0.0, "mode": "balanced", "batch_size": 1},
     "extend window=(10.0, 605.0) is not allowed: a result of at most 600 s"),
    ("RepaintLatent", {"audio": {"waveform": SONG[None], "sample_rate": RATE}, "start": 5.0, "end": 2.0,
                       "mode": "balanced", "strength": 0.5, "batch_size": 1}, "repaint window=(5.0, 2.0)"),
    ("StemLatent", {"audio": {"waveform": SONG[None], "sample_rate": RATE}, "task": "extract", "track": "vocals",
                    "more_tracks": "kazoo", "batch_size": 1}, "tracks='kazoo' is not allowed"),
    ("EmptyLatent", {"duration": 5.0, "batch_size": 1}, "duration=5.0 is not allowed"),
    ("TextEncode", {"caption": "x", "lyrics": "", "language": "xx", "bpm": 0, "keyscale": "auto",
                    "timesignature": "auto"}, "language='xx' is not allowed"),
    ("TextEncode", {"caption": None, "lyrics": "", "language": "en", "bpm": 0, "keyscale": "auto",
                    "timesignature": "auto"}, "caption=None is not allowed"),
    ("VAEEncode", {"model": None, "audio": {"waveform": torch.full((1, 2, 100), NAN), "sample_rate": RATE}},
     "audio=<Tensor of shape [2, 100]> is not allowed: finite samples"),
]


@pytest.mark.parametrize("node, inputs, expected", NODE_CASES, ids=[f"{c[0]}-{c[2][:30]}" for c in NODE_CASES])
def test_nodes_raise_a_value_error_naming_the_input(comfy, node, inputs, expected):
    nodes = comfy[0]
    with pytest.raises(ValueError) as e:
        run_node(nodes["AceStep15_" + node], **inputs)
    assert str(e.value).startswith(expected), str(e.value)


def test_sampler_node_rejects_bad_settings_before_running(comfy, models):
    nodes = comfy[0]
    text = run_node(nodes["AceStep15_TextEncode"], caption="x", lyrics="", language="en", bpm=0, keyscale="auto",
                    timesignature="auto").args[0]
    latent = {"samples": torch.zeros(1, 64, 300), "type": "audio"}
    for inputs, expected in [({"seed": -1}, "seed=-1 is not allowed"),
                             ({"steps": 500}, "steps=500 is not allowed"),
                             ({"apg_norm_threshold": NAN}, "apg_norm_threshold=nan is not allowed"),
                             ({"timesteps": "0.2, 0.8"}, "timesteps='0.2, 0.8' is not allowed")]:
        with pytest.raises(ValueError, match="^" + expected):
            run_node(nodes["AceStep15_Sampler"], hidden={}, model=None, conditioning=text, latent=latent,
                     **{"seed": 0, **inputs})


def test_sampler_node_shows_truncation_warnings(comfy):
    nodes = comfy[0]
    run = lambda name, **kw: run_node(nodes["AceStep15_" + name], **kw)  # noqa: E731
    model = run("ModelLoader", model="diffusion_models/acestep_v1.5_turbo.safetensors", text_encoder="auto",
                vae="auto", dtype="fp32").args[0]
    text = run("TextEncode", caption="word " * 300, lyrics="", language="en", bpm=0, keyscale="auto",
               timesignature="auto").args[0]
    out = run("Sampler", hidden={}, model=model, conditioning=text,
              latent=run("EmptyLatent", duration=10.0, batch_size=1).args[0], seed=0)
    info = out.ui["text"][0]
    assert "warning: caption:" in info and "reads the first 256" in info


# ------------------------------------------------------------------------------------------------ checked once

@pytest.fixture
def count_checks(monkeypatch):
    """Counts how often each request part is checked (built)."""
    counts = {}
    for cls in (request_module.SongText, request_module.Task, request_module.SamplerSettings,
                request_module.RenderSettings, request_module.Request, request_module.AudioClip):
        original = cls.__post_init__

        def counted(self, original=original, name=cls.__name__):
            counts[name] = counts.get(name, 0) + 1
            original(self)

        monkeypatch.setattr(cls, "__post_init__", counted)
    return counts


def test_each_part_is_checked_once_per_generation_api(models, count_checks):
    pipe = AceStepPipeline.from_pretrained(models, dtype="fp32", device="cpu")
    req = request(task="repaint", repaint_start=2.0, repaint_end=5.0, ref_audio=SONG, ref_sample_rate=RATE,
                  seed=1, **SRC)
    built = dict(count_checks)
    assert built == {"SongText": 1, "Task": 1, "SamplerSettings": 1, "RenderSettings": 1, "Request": 1,
                     "AudioClip": 2}
    pipe(req)
    assert count_checks == built  # the pipeline checks nothing again


def test_each_part_is_checked_once_per_generation_cli(models, count_checks, tmp_path, capsys):
    save_audio(tmp_path / "src.wav", SONG, RATE)
    code = cli.main(["generate", "--checkpoint", models, "--task", "cover", "--src-audio", str(tmp_path / "src.wav"),
                     "--seed", "1", "--out", str(tmp_path / "x.flac")])
    assert code == 0, capsys.readouterr().err
    assert count_checks == {"SongText": 1, "Task": 1, "SamplerSettings": 1, "RenderSettings": 1, "Request": 1,
                            "AudioClip": 1}


def test_each_part_is_checked_once_per_generation_nodes(comfy, count_checks):
    nodes = comfy[0]
    run = lambda name, **kw: run_node(nodes["AceStep15_" + name], **kw)  # noqa: E731
    model = run("ModelLoader", model="diffusion_models/acestep_v1.5_turbo.safetensors", text_encoder="auto",
                vae="auto", dtype="fp32").args[0]
    pack = sys.modules[type(model).__module__.rsplit(".nodes.", 1)[0] + ".acestep_core.request"]
    assert pack is not request_module  # the pack's own copy, as ComfyUI imports it
    counts = {}
    for cls in (pack.SongText, pack.Task, pack.SamplerSettings, pack.RenderSettings, pack.Request, pack.AudioClip):
        original = cls.__post_init__

        def counted(self, original=original, name=cls.__name__):
            counts[name] = counts.get(name, 0) + 1
            original(self)

        cls.__post_init__ = counted
    try:
        text = run("TextEncode", caption="x", lyrics="", language="en", bpm=0, keyscale="auto",
                   timesignature="auto").args[0]
        latent = run("RepaintLatent", audio={"waveform": SONG[None], "sample_rate": RATE}, start=2.0, end=5.0,
                     mode="balanced", strength=0.5, batch_size=1).args[0]
        out = run("Sampler", hidden={}, model=model, conditioning=text, latent=latent, seed=1).args[0]
        run("VAEDecode", model=model, latent=out, normalize=True, tile_frames=512, fade_in=0.0, fade_out=0.0)
    finally:
        for cls in (pack.SongText, pack.Task, pack.SamplerSettings, pack.RenderSettings, pack.Request,
                    pack.AudioClip):
            cls.__post_init__ = cls.__dict__["__post_init__"].__defaults__[0]
    assert counts == {"SongText": 1, "Task": 1, "SamplerSettings": 1, "RenderSettings": 1, "Request": 1,
                      "AudioClip": 1}


def test_error_values_are_short():
    assert str(InputError("caption", "x" * 10_000, "text")) == f"caption='{'x' * 76}… is not allowed: text"


# ---- issue 17 (h17a): channels, text, short sources, numbers

import errno  # noqa: E402
import io as text_io  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402

import numpy as np  # noqa: E402

from acestep_core.audio import load_audio  # noqa: E402
from acestep_core.memory.manager import MemorySettings  # noqa: E402
from acestep_core.models.vae import OobleckVAE, VaeConfig  # noqa: E402
from acestep_core.request import AudioClip  # noqa: E402
from devtools.audio_files import pcm16_noise, write_pcm16  # noqa: E402


MANY_CHANNELS = [("12ch.wav", 12, "12 channels", "wav", "pcm_s16le"), ("7.1.flac", 8, "7.1", "flac", "flac")]


@pytest.mark.parametrize("name, channels, layout, container, codec", MANY_CHANNELS, ids=[c[0] for c in MANY_CHANNELS])
def test_files_with_8_or_more_channels_decode_in_a_process_that_survives(tmp_path, name, channels, layout, container,
                                                                          codec):
    """7.1 FLAC and 12-channel WAV segfaulted the process (PyAV's planar frames from 8 channels on); decoded in a
    child process so a crash fails this test instead of ending the run."""
    x = pcm16_noise(channels, 3 * RATE)
    path = write_pcm16(tmp_path / name, x, layout, container, codec, RATE)
    code = ("import sys, torch\n"
            "from acestep_core.audio import load_audio\n"
            f"full, rate = load_audio({path!r}, 600, '--src-audio')\n"
            f"two, _ = load_audio({path!r}, 600, '--src-audio', 2)\n"
            "torch.save((full, two, rate), sys.argv[1])\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "decoded.pt")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    full, two, rate = torch.load(tmp_path / "decoded.pt")
    assert rate == RATE and full.shape == (channels, 3 * RATE) and two.shape == (2, 3 * RATE)
    assert torch.equal(full, torch.from_numpy(x.astype(np.float32) / 32768))  # every channel, in file order
    assert torch.equal(two, full[:2])  # only the first two kept while decoding


@pytest.fixture
def h17a_files(workdir):
    """The workdir plus: 12ch.wav (12 channels), first2.wav (its first two channels), 7.1.flac, short.wav (7 samples,
    one less than a latent frame at the tiny rate) and fifo.wav (a named pipe)."""
    x = pcm16_noise(12, 10 * RATE)
    write_pcm16(workdir / "12ch.wav", x, "12 channels", "wav", "pcm_s16le", RATE)
    write_pcm16(workdir / "first2.wav", x[:2], "stereo", "wav", "pcm_s16le", RATE)
    write_pcm16(workdir / "7.1.flac", pcm16_noise(8, 10 * RATE, seed=1), "7.1", "flac", "flac", RATE)
    save_audio("short.wav", 0.3 * torch.ones(2, 7), RATE)
    os.mkfifo("fifo.wav")
    return workdir


def test_cli_many_channel_source_and_reference_give_the_song_of_their_first_two_channels(models, h17a_files, capsys):
    """Rule: of more than two channels the first two (front left, front right) are used, as the original does."""
    songs = []
    for src in ("12ch.wav", "first2.wav"):
        code = cli.main(["generate", "--checkpoint", models, "--task", "cover", "--src-audio", src, "--ref-audio",
                         "12ch.wav" if src == "12ch.wav" else "first2.wav", "--seed", "3", "--steps", "2",
                         "--out", f"from_{src}.wav", "--quality", "float"])
        assert code == 0, capsys.readouterr().err
        songs.append(load_audio(f"from_{src}.wav")[0])
    assert songs[0].shape == (2, 10 * RATE) and torch.equal(songs[0], songs[1])


def test_cli_understand_reads_a_7_1_flac_as_its_front_pair(models, h17a_files, capsys, monkeypatch):
    from acestep_core.planning import Description
    from acestep_core.request import SongText

    heard = []

    class Listener:
        def understand(self, clip, seed, settings, on_token=None):
            heard.append(clip)
            return Description("a caption", "", SongText(), None, None, "")

    monkeypatch.setattr(cli, "resolve_lm", lambda choice, info: "lm")
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: Listener())
    monkeypatch.setattr(cli, "load_lm", lambda pipe, path, int8=False: None)
    assert cli.main(["understand", "--checkpoint", models, "--src-audio", "7.1.flac", "--seed", "0"]) == 0
    assert "caption: a caption" in capsys.readouterr().out
    full = load_audio("7.1.flac")[0]
    assert full.shape[0] == 8 and torch.equal(heard[0].waveform, full[:2])


def test_api_and_nodes_take_audio_tensors_with_many_channels(models, comfy):
    """AUDIO tensors of 12 channels (API and nodes) are used like their first two channels."""
    x = torch.from_numpy(pcm16_noise(12, 10 * RATE)).float() / 32768
    pipe = AceStepPipeline.from_pretrained(models, dtype="fp32", device="cpu")
    songs = [pipe(request(task="cover", src_audio=wav, src_sample_rate=RATE, ref_audio=wav, ref_sample_rate=RATE,
                          seed=5, steps=2)).audio for wav in (x, x[:2])]
    assert torch.equal(songs[0], songs[1])
    nodes = comfy[0]
    latent = run_node(nodes["AceStep15_CoverLatent"], **_widgets(nodes["AceStep15_CoverLatent"]),
                      audio={"waveform": x[None], "sample_rate": RATE}).args[0]
    task = next(v for v in latent.values() if hasattr(v, "source"))  # the pack's own Task class
    assert task.source.waveform.shape == (12, 10 * RATE)
    assert torch.equal(pipe.prepare_source(task).waveform, pipe.prepare_source(request(
        task="cover", src_audio=x[:2], src_sample_rate=RATE).task).waveform)


def _widgets(node_cls) -> dict:
    """Every widget of a node with its default value, as the frontend sends them (sockets have no default)."""
    return {i.id: i.default for i in node_cls.define_schema().inputs if getattr(i, "default", None) is not None}


# ---- text that is not valid Unicode: refused (not repaired) where it is checked, naming the input

BAD_TEXT = [  # (fields, name, how the value is shown, what the message says about it)
    ({"caption": os.fsdecode(b"caf\xe9")}, "caption", "'caf\\udce9'", "character 4 is byte 0xe9, which is not UTF-8"),
    ({"lyrics": "la " + json.loads('"\\ud83d"')}, "lyrics", "'la \\ud83d'", "character 4 is U+D83D, a lone surrogate"),
    ({"lm_negative_prompt": "\udfff"}, "lm_negative_prompt", "'\\udfff'", "character 1 is U+DFFF, a lone surrogate"),
    ({"flow_edit_source_caption": "x\ud800", "task": "cover", **SRC}, "flow_edit_source_caption", "'x\\ud800'",
     "character 2 is U+D800, a lone surrogate"),
]


@pytest.mark.parametrize("fields, name, value, detail", BAD_TEXT, ids=[c[1] for c in BAD_TEXT])
def test_api_refuses_text_that_is_not_valid_unicode(fields, name, value, detail):
    with pytest.raises(InputError) as e:
        request(flow_edit="flow_edit_source_caption" in fields, **fields)
    assert e.value.name == name
    assert str(e.value) == f"{name}={value} is not allowed: valid Unicode text ({detail}; give the text as UTF-8)"


def test_node_refuses_a_lone_surrogate_from_the_prompt_json(comfy):
    """A prompt's JSON may carry half of a surrogate pair ("\\ud83d"); Python's json gives it as a lone surrogate."""
    nodes = comfy[0]
    caption = json.loads('{"caption": "happy \\ud83d song"}')["caption"]
    with pytest.raises(ValueError) as e:
        run_node(nodes["AceStep15_TextEncode"], **{**_widgets(nodes["AceStep15_TextEncode"]), "caption": caption})
    assert str(e.value).startswith("caption='happy \\ud83d song' is not allowed: valid Unicode text (character 7 is "
                                   "U+D83D, a lone surrogate")


def _refused_by_cli(models, argv, capsys, monkeypatch, command="generate") -> str:
    """Runs the CLI and returns its one error line, checking exit 1, nothing loaded and nothing written."""
    loads = []
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: loads.append(a))
    before = sorted(os.listdir("."))
    code = cli.main([command, "--checkpoint", models, *argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert loads == [] and sorted(os.listdir(".")) == before
    return lines[0]


def test_cli_refuses_arguments_and_stdin_that_are_not_utf8(models, workdir, capsys, monkeypatch):
    """Python hands undecodable argument bytes over as U+DC80…U+DCFF (os.fsdecode); stdin is read as bytes."""
    caption = os.fsdecode(b"caf\xe9")
    assert _refused_by_cli(models, ["--caption", caption], capsys, monkeypatch) == (
        "error: --caption 'caf\\udce9' is not allowed: valid Unicode text (character 4 is byte 0xe9, which is not "
        "UTF-8; give the text as UTF-8)")
    assert _refused_by_cli(models, ["--simple", caption], capsys, monkeypatch).startswith(
        "error: --simple 'caf\\udce9' is not allowed: valid Unicode text (character 4 is byte 0xe9")
    assert _refused_by_cli(models, ["--lm-negative-prompt", caption], capsys, monkeypatch).startswith(
        "error: --lm-negative-prompt 'caf\\udce9' is not allowed: valid Unicode text")
    stdin = text_io.TextIOWrapper(text_io.BytesIO(b"[verse]\ncaf\xe9"), encoding="utf-8", errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)  # as in Python's UTF-8 mode: bad bytes would become surrogates
    assert _refused_by_cli(models, ["--lyrics-file", "-"], capsys, monkeypatch) == (
        "error: --lyrics-file -: standard input is not UTF-8 text (byte 12 is 0xe9)")


# ---- sources shorter than one latent frame, and [samples, channels] arrays

@pytest.mark.parametrize("samples, rate, minimum", [(1, RATE, 8), (7, RATE, 8), (1919, 48000, 1920),
                                                    (1763, 44100, 1764), (3839, 96000, 3840)])
@pytest.mark.parametrize("which", ["src", "ref"])
def test_api_refuses_audio_shorter_than_one_latent_frame(which, samples, rate, minimum):
    fields = {f"{which}_audio": torch.full((2, samples), 0.1), f"{which}_sample_rate": rate}
    with pytest.raises(InputError) as e:
        request(task="cover" if which == "src" else "text2music", **fields)
    assert str(e.value) == (f"{which}_audio=<{samples} samples at {rate} Hz> is not allowed: at least 0.04 s of audio "
                            f"({minimum} samples at {rate} Hz: one latent frame of the VAE)")
    fields[f"{which}_audio"] = torch.full((2, minimum), 0.1)  # the minimum itself is taken
    request(task="cover" if which == "src" else "text2music", **fields)


def test_the_minimum_length_is_the_real_encoders_and_the_shortest_source_runs(models):
    """One latent frame (1920 samples at 48 kHz) is what the real VAE's encoder needs (its geometry, narrow widths);
    the tiny pipeline runs a source of exactly the minimum through a task and the audio tokenizer."""
    vae = OobleckVAE(VaeConfig(encoder_hidden_size=2, decoder_channels=2, decoder_input_channels=1)).eval()
    with torch.no_grad():
        assert vae.encode(torch.zeros(1, 2, 1920)).shape[-1] == 1
        with pytest.raises(RuntimeError):
            vae.encode(torch.zeros(1, 2, 1919))
    pipe = AceStepPipeline.from_pretrained(models, dtype="fp32", device="cpu")
    shortest = torch.rand(2, RATE // 25) - 0.5
    assert pipe(request(task="cover", src_audio=shortest, src_sample_rate=RATE, steps=1, seed=0)).audio.shape[0] == 1
    assert len(pipe.audio_codes(AudioClip(shortest, RATE, "src_audio"))) == 1


def test_api_names_the_transposed_layout_and_what_to_pass():
    song = SONG.T.contiguous()  # soundfile.read's [samples, channels]
    with pytest.raises(InputError) as e:
        request(task="cover", src_audio=song, src_sample_rate=RATE)
    assert str(e.value) == ("src_audio=<Tensor of shape [2000, 2]> is not allowed: channels first, [channels, "
                            "samples]; this looks like [samples, channels] (2000 samples of 2 channels, as "
                            "soundfile.read returns them): pass its transpose (waveform.T)")
    with pytest.raises(InputError, match=r"^ref_audio=<Tensor of shape \[2000, 2\]> .* pass its transpose"):
        request(ref_audio=song.numpy(), ref_sample_rate=RATE)
    assert request(task="cover", src_audio=torch.full((16, 16), 0.1), src_sample_rate=RATE).task.source  # not both


def test_nodes_refuse_short_and_transposed_audio(comfy):
    nodes = comfy[0]
    short = {"waveform": torch.full((1, 2, 7), 0.1), "sample_rate": RATE}
    transposed = {"waveform": SONG.T[None].contiguous(), "sample_rate": RATE}
    text = run_node(nodes["AceStep15_TextEncode"], **_widgets(nodes["AceStep15_TextEncode"])).args[0]
    for node, inputs in [("CoverLatent", {}), ("TimbreReference", {"conditioning": text}),
                         ("UnderstandAudio", {"model": None, "lm": None}), ("VAEEncode", {"model": None})]:
        cls = nodes["AceStep15_" + node]
        for audio, expected in [(short, "audio=<7 samples at 200 Hz> is not allowed: at least 0.04 s of audio "
                                        "(8 samples at 200 Hz"),
                                (transposed, "audio=<Tensor of shape [2000, 2]> is not allowed: channels first")]:
            with pytest.raises(ValueError) as e:
                run_node(cls, hidden={"unique_id": "1"}, **{**_widgets(cls), **inputs, "audio": audio})
            assert str(e.value).startswith(expected), (node, str(e.value))


def test_cli_refuses_short_sources_references_and_recordings(models, h17a_files, capsys, monkeypatch):
    expected = "is not allowed: at least 0.04 s of audio (8 samples at 200 Hz: one latent frame of the VAE)"
    assert _refused_by_cli(models, ["--task", "cover", "--src-audio", "short.wav"], capsys, monkeypatch) == (
        f"error: --src-audio <7 samples at 200 Hz> {expected}")
    assert _refused_by_cli(models, ["--ref-audio", "short.wav"], capsys, monkeypatch) == (
        f"error: --ref-audio <7 samples at 200 Hz> {expected}")
    assert _refused_by_cli(models, ["--src-audio", "short.wav"], capsys, monkeypatch, "understand") == (
        f"error: --src-audio <7 samples at 200 Hz> {expected}")


# ---- numbers, devices, special files and output paths (refused before loading)

@pytest.fixture
def no_hang():
    """Fails a test that waits (a FIFO opened for reading blocks until a writer comes) instead of hanging the run."""
    def timeout(*_):
        raise AssertionError("waited on a FIFO")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


H17A_CLI_CASES = [  # (arguments, the whole error line)
    (["--vram-budget", "inf"], "error: --vram-budget inf is not allowed: a number of GB above 0, at most 1024 "
                               "(or auto)"),
    (["--vram-budget", "1e300"], "error: --vram-budget 1e+300 is not allowed: a number of GB above 0, at most 1024 "
                                 "(or auto)"),
    (["--vram-budget", "nan"], "error: --vram-budget nan is not allowed: a number of GB above 0, at most 1024 "
                               "(or auto)"),
    (["--device", "meta"], "error: --device 'meta' is not allowed: cpu, cuda, cuda:N or mps"),
    (["--device", "xla"], "error: --device 'xla' is not allowed: cpu, cuda, cuda:N or mps"),
    (["--task", "cover", "--src-audio", "fifo.wav"], "error: --src-audio: fifo.wav is not a regular file (a FIFO, "
     "device or socket would be waited on); save the audio to a file and give that"),
    (["--ref-audio", "fifo.wav"], "error: --ref-audio: fifo.wav is not a regular file (a FIFO, "
     "device or socket would be waited on); save the audio to a file and give that"),
    (["--lyrics-file", "fifo.wav"], "error: --lyrics-file fifo.wav: not a regular file"),
    (["--audio-codes", "@fifo.wav"], "error: --audio-codes fifo.wav: not a regular file"),
    (["--out", "/proc/song.flac"], "error: --out /proc/song.flac: files cannot be created in /proc ("),
    (["--save-latents", "/proc/self/l.safetensors"], "error: --save-latents /proc/self/l.safetensors: "),
    (["--task", "cover", "--src-audio", "src.wav", "--out", "src.wav"],
     "error: --out src.wav: is the --src-audio file, which writing would overwrite; give another name"),
    (["--task", "cover", "--src-audio", "src.wav", "--out", "./sub/../src.wav"],
     "error: --out ./sub/../src.wav: is the --src-audio file, which writing would overwrite; give another name"),
    (["--ref-audio", "src.wav", "--out", "src.wav"],
     "error: --out src.wav: is the --ref-audio file, which writing would overwrite; give another name"),
    (["--task", "cover", "--src-audio", "song_1.wav", "--batch", "2", "--seed", "1,2", "--out", "song.wav"],
     "error: --out song_1.wav: is the --src-audio file, which writing would overwrite; give another name"),
]


@pytest.mark.parametrize("args, expected", H17A_CLI_CASES, ids=[" ".join(c[0])[:50] for c in H17A_CLI_CASES])
def test_cli_refuses_numbers_devices_special_files_and_outputs_before_loading(models, h17a_files, capsys, monkeypatch,
                                                                              no_hang, args, expected):
    os.mkdir("sub")
    shutil.copy("src.wav", "song_1.wav")
    line = _refused_by_cli(models, args, capsys, monkeypatch)
    assert line.startswith(expected) if expected.endswith(("(", ": ")) else line == expected, line


def test_cli_understand_refuses_a_fifo_and_a_meta_device(models, h17a_files, capsys, monkeypatch, no_hang):
    assert _refused_by_cli(models, ["--src-audio", "fifo.wav"], capsys, monkeypatch, "understand").startswith(
        "error: --src-audio: fifo.wav is not a regular file")
    assert _refused_by_cli(models, ["--src-audio", "src.wav", "--device", "meta"], capsys, monkeypatch,
                           "understand") == "error: --device 'meta' is not allowed: cpu, cuda, cuda:N or mps"


def test_api_refuses_budgets_that_are_not_finite_and_a_fifo(tmp_path, no_hang):
    for budget in (math.inf, 1e300, math.nan, 0, -1, True):
        with pytest.raises(InputError, match=r"^vram_budget=.* is not allowed: a number of GB above 0, at most 1024"):
            MemorySettings(budget_gb=budget)
    assert MemorySettings(budget_gb=1024).budget_gb == 1024
    os.mkfifo(tmp_path / "pipe.wav")
    with pytest.raises(ValueError, match="is not a regular file"):
        load_audio(tmp_path / "pipe.wav", 600, "src_audio")


# ---- write failures at the end: named by the flag and the file the user gave, nothing left behind

ENOSPC_SAFETENSORS = "Error while serializing: I/O error: No space left on device (os error 28)"  # what it raises


@pytest.mark.parametrize("what", ["--save-latents", "--out"])
def test_cli_a_full_disk_at_write_time_names_the_flag_never_the_temporary(models, workdir, capsys, monkeypatch,
                                                                          what):
    """A full disk, played by the writers raising what they raise on ENOSPC (checked on a real 64 kB tmpfs):
    safetensors its SafetensorError, ffmpeg an OSError naming its temporary file."""
    from safetensors import SafetensorError

    from acestep_core import audio as audio_module

    temporaries = []
    if what == "--save-latents":
        def full(tensors, filename, metadata=None):
            temporaries.append(filename)
            raise SafetensorError(ENOSPC_SAFETENSORS)

        monkeypatch.setattr("safetensors.torch.save_file", full)
    else:
        def full(av, path, *args):
            temporaries.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

        monkeypatch.setattr(audio_module, "_encode", full)
    before = sorted(os.listdir(workdir))
    code = cli.main(["generate", "--checkpoint", models, "--duration", "10", "--steps", "1", "--seed", "1",
                     "--out", "song.flac", "--save-latents", "song.safetensors"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    path, reason = ("song.safetensors", ENOSPC_SAFETENSORS) if what == "--save-latents" else (
        "song.flac", "No space left on device")
    assert code == 1 and errors == [f"error: {what} {path}: writing it failed ({reason}); nothing was written"], err
    assert temporaries and not any(os.path.basename(t) in err for t in temporaries) and "Traceback" not in err
    assert sorted(os.listdir(workdir)) == before  # neither file, no temporary


def test_save_audio_names_the_file_it_was_given_when_the_disk_is_full(tmp_path, monkeypatch):
    from acestep_core import audio as audio_module

    def full(av, path, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(audio_module, "_encode", full)
    with pytest.raises(OSError) as e:
        save_audio(tmp_path / "x.flac", SONG, RATE)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "x.flac")
    assert os.listdir(tmp_path) == []


# ---- issue 17 (h17c): silently ignored or misleading
# Each input that used to be ignored, or to fail with a message about something else, now ends in a clear error
# naming it (the CLI: one error line naming the flag, before any model is loaded, nothing written). Decisions:
# guidance on turbo, an extend window inside the source, an empty simple-mode query, a blank --lm-decide ('none'
# means nothing) and a bad simple/understand seed are refused; a folder or an empty file where a file is
# expected is named as such; flow-edit errors name the input of the surface used; an adapter given as the model
# says it is one and how to apply it; a wrong argument type to the pipeline names what to pass; a SaveAudio batch
# with an item that cannot be saved leaves no file.

H17C_API_CASES = [  # (fields, the input the error names, a part of what is allowed)
    ({"task": "extend", "repaint_start": 2.0, "repaint_end": 5.0, **SRC}, "extend window", "use task 'repaint'"),
    ({"task": "extend", "repaint_start": 0.0, "repaint_end": 10.0, **SRC}, "extend window", "lies inside it"),
    ({"lm_decide": ""}, "lm_decide", "'none' for nothing"),
    ({"lm_decide": "  "}, "lm_decide", "'none' for nothing"),
    ({"flow_edit": True, "task": "cover", "flow_edit_n_min": 0.8, "flow_edit_n_max": 0.2, **SRC}, "flow_edit_n_min",
     "at most the end of the edited part (0.2)"),
    ({"flow_edit": True}, "flow_edit", "only on a cover (task cover or cover-nofsq) of source audio"),
    ({"flow_edit": True, "task": "repaint", **SRC}, "flow_edit", "this is task 'repaint'"),
    ({"flow_edit_n_avg": 2}, "flow_edit_n_avg", "only with flow edit on (flow_edit=True, --flow-edit)"),
]


@pytest.mark.parametrize("fields, name, allowed", H17C_API_CASES, ids=[c[1] + ":" + c[2][:30] for c in H17C_API_CASES])
def test_h17c_api_refuses_what_it_used_to_ignore(fields, name, allowed):
    with pytest.raises(InputError) as e:
        request(**fields)
    assert e.value.name == name and allowed in e.value.allowed, str(e.value)


def test_h17c_lm_decide_none_means_nothing_and_extend_windows_reaching_out_pass():
    assert request(lm_decide="none").lm.decide == () == request(lm_decide=[]).lm.decide
    assert request(lm_decide="bpm, Duration").lm.decide == ("bpm", "duration")
    for start, end in ((8.0, 15.0), (-5.0, 3.0), (-2.0, 12.0)):  # past the end, before the start, both
        assert request(task="extend", repaint_start=start, repaint_end=end, **SRC).task.window is not None


@pytest.fixture(scope="module")
def plain_pipe(models):
    return AceStepPipeline.from_pretrained(models, dtype="fp32", device="cpu")


def test_h17c_guidance_on_turbo_is_refused_not_ignored(plain_pipe):
    """Turbo is guidance-distilled: the pipeline used to run guidance 1 whatever was asked. Refused (a setting that
    would do nothing); 1 (= off) and leaving it out still run."""
    with pytest.raises(InputError) as e:
        plain_pipe(request(guidance=7.0, duration=10.0, steps=1, decode=False))
    assert e.value.name == "guidance" and e.value.value == 7.0 and "turbo" in e.value.allowed
    assert plain_pipe(request(guidance=1.0, duration=10.0, steps=1, seed=0, decode=False)).metadata["guidance"] == 1.0


def test_h17c_pipeline_arguments_of_the_wrong_kind_name_what_to_pass(plain_pipe):
    for wrong, example in (("calm piano", "pipe(request(caption='calm piano'))"),
                           ({"caption": "calm piano"}, "pipe(request(**fields))")):
        with pytest.raises(InputError) as e:
            plain_pipe(wrong)
        assert e.value.name == "req" and "a Request" in e.value.allowed and example in e.value.allowed
    for call in (lambda: plain_pipe.understand(SONG), lambda: plain_pipe.audio_codes(SONG),
                 lambda: plain_pipe.encode(SONG)):
        with pytest.raises(InputError) as e:
            call()
        assert e.value.name in ("clip", "clips") and "AudioClip(waveform, sample_rate)" in e.value.allowed


def test_h17c_simple_and_understand_follow_the_request_seed_and_query_rules(plain_pipe):
    """pipe.simple(seed=-1) used to run (request() refuses seed=-1); an empty query made up a song from nothing.
    Both are refused before the LM is needed (this pipeline has none)."""
    clip = request_module.AudioClip(SONG, RATE)
    for call, name, value in ((lambda: plain_pipe.simple("a love song", seed=-1), "seed", -1),
                              (lambda: plain_pipe.simple("a love song", seed=2**64), "seed", 2**64),
                              (lambda: plain_pipe.simple("   ", seed=1), "query", "   "),
                              (lambda: plain_pipe.audio_codes(clip, seed=-1), "seed", -1)):
        with pytest.raises(InputError) as e:
            call()
        assert (e.value.name, e.value.value) == (name, value), str(e.value)
    with pytest.raises(InputError, match=r"^seed=-1 is not allowed: an integer from 0 to 18446744073709551615"):
        request(seed=-1)  # the same rule, the same words


def test_h17c_an_adapter_given_as_the_model_says_so(tmp_path, capsys, monkeypatch):
    from devtools.lora_fixtures import write_example_loras

    written = write_example_loras(str(tmp_path), build_tensors("turbo")["config"])
    loads = []
    monkeypatch.setattr(cli, "load_pipeline", lambda *a: loads.append(a))
    assert len(written) == 3  # a LoRA file, a LoKr folder, the official trainer's PEFT folder
    for path in written.values():
        with pytest.raises(CheckpointError) as e:
            AceStepPipeline.from_pretrained(path, dtype="fp32", device="cpu")
        message = str(e.value)
        assert message.startswith(f"{path}: a ") and "an adapter, not a model" in message and "--lora" in message
        assert "adapters=[" in message and "LoRA Loader" in message and "VAE" not in message
        assert cli.main(["generate", "--checkpoint", path, "--out", str(tmp_path / "x.flac")]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: a ") and "an adapter, not a model" in lines[0]
    assert loads == [] and not os.path.exists(tmp_path / "x.flac")


H17C_CLI_CASES = [  # (arguments, what the one error line starts with)
    (["--guidance", "7"], "error: --guidance 7.0 is not allowed: none on turbo models"),
    (["--task", "extend", "--src-audio", "SRC", "--start", "2", "--end", "5"],
     "error: extend window=(2.0, 5.0) is not allowed: a window reaching before 0 or past the end of the source"),
    (["--simple", ""], "error: --simple '' is not allowed: a short description of the song"),
    (["--lm-decide", ""], "error: --lm-decide '' is not allowed: names from bpm"),
    (["--lyrics-file", "DIR"], "error: --lyrics-file DIR: is a folder; give a text file"),
    (["--audio-codes", "@/dev/null"], "error: --audio-codes /dev/null: not a regular file"),
    (["--audio-codes", "@EMPTY"], "error: --audio-codes @empty.txt: the file is empty"),
    (["--audio-codes", "@DIR"], "error: --audio-codes DIR: is a folder"),
    (["--task", "cover", "--src-audio", "SRC", "--flow-edit", "--edit-n-min", "0.8", "--edit-n-max", "0.2"],
     "error: --edit-n-min 0.8 is not allowed: at most the end of the edited part (0.2)"),
    (["--flow-edit"], "error: --flow-edit True is not allowed: only on a cover"),
    (["--edit-n-min", "0.5"], "error: --edit-n-min 0.5 is not allowed: only with flow edit on"),
]


@pytest.mark.parametrize("args, expected", H17C_CLI_CASES, ids=[" ".join(c[0])[:50] for c in H17C_CLI_CASES])
def test_h17c_cli_refuses_what_it_used_to_ignore(models, workdir, capsys, monkeypatch, args, expected):
    open("empty.txt", "w").close()
    args = [{"SRC": "src.wav", "@EMPTY": "@empty.txt"}.get(a, a) for a in args]
    _assert_refused_before_loading(models, workdir, capsys, monkeypatch, args, expected)


def _assert_refused_before_loading(models, workdir, capsys, monkeypatch, args, expected):
    """``acestep generate`` with ``args`` exits 1 with one error line starting with ``expected``, before any model
    is loaded and without writing anything."""
    loads = []
    monkeypatch.setattr(cli, "load_pipeline", lambda *a: loads.append(a))
    before = sorted(os.listdir(workdir))
    assert cli.main(["generate", "--checkpoint", models, *args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert loads == [] and sorted(os.listdir(workdir)) == before


def test_h17c_nodes_name_their_own_inputs_and_save_all_or_nothing(comfy):
    nodes, dirs, _ = comfy
    run = lambda name, **kw: run_node(nodes["AceStep15_" + name], **kw)  # noqa: E731
    audio = {"waveform": SONG[None], "sample_rate": RATE}
    # Flow edit on the Cover node: its inputs are edit_n_min …, not the request's flow_edit_n_min.
    with pytest.raises(ValueError, match=r"^edit_n_min=0.8 is not allowed: at most the end of the edited part"):
        run("CoverLatent", audio=audio, flow_edit=True, edit_n_min=0.8, edit_n_max=0.2)
    cover = nodes["AceStep15_CoverLatent"]  # and already when queued (not while flow edit is off)
    assert cover.validate_inputs(flow_edit=True, edit_n_min=0.8, edit_n_max=0.2).startswith("edit_n_min=0.8 is not")
    assert cover.validate_inputs(flow_edit=False, edit_n_min=0.8, edit_n_max=0.2) is True
    assert cover.validate_inputs(flow_edit=True, edit_n_min=0.2, edit_n_max=0.8) is True
    # Simple Mode: an empty query is refused when queued, and before the LM is placed when run.
    simple = nodes["AceStep15_SimpleMode"]
    assert simple.validate_inputs(query="").startswith("query='' is not allowed: a short description")
    assert simple.validate_inputs(query=None) is True and simple.validate_inputs(query="a love song") is True
    with pytest.raises(ValueError, match="^query='' is not allowed"):
        run("SimpleMode", hidden={"unique_id": "1"}, lm=None)  # the LM (None here) is never touched
    # Guidance on turbo: refused, not ignored.
    model = run("ModelLoader", model="diffusion_models/acestep_v1.5_turbo.safetensors", dtype="fp32").args[0]
    text = run("TextEncode", caption="x").args[0]
    with pytest.raises(ValueError, match=r"^guidance=7.0 is not allowed: none on turbo models"):
        run("Sampler", hidden={}, model=model, conditioning=text, latent={"samples": torch.zeros(1, 64, 250)},
            guidance=7.0)
    # Save Audio: the second item cannot be saved, so neither is written (it used to leave the first).
    batch = torch.stack([SONG, SONG.clone().index_fill_(1, torch.tensor([5]), NAN)])
    folder = os.path.join(dirs["output"], "h17c")
    with pytest.raises(ValueError) as e:
        run("SaveAudio", hidden={}, audio={"waveform": batch, "sample_rate": RATE}, filename_prefix="h17c/batch")
    assert str(e.value).startswith("audio=<batch item 2 of 2> is not allowed: cannot save audio with NaN")
    assert "nothing of the batch was saved" in str(e.value)
    assert not os.path.isdir(folder) or os.listdir(folder) == []
    saved = run("SaveAudio", hidden={}, audio={"waveform": batch[:1], "sample_rate": RATE},
                filename_prefix="h17c/batch").ui["audio"]
    assert [f["filename"] for f in saved] == ["batch_00001_.flac"] and os.listdir(folder) == ["batch_00001_.flac"]


# ---- issue 17 (h17b): adapters, damaged LM, signals, dropdowns

import time  # noqa: E402

from acestep_core.adapters import load_adapter  # noqa: E402
from acestep_core.constants import ADAPTER_SCALE_MAX  # noqa: E402
from acestep_core.loading.checkpoint import resolve_paths  # noqa: E402
from acestep_core.loading.lm import find_lm, load_planner  # noqa: E402
from devtools import lora_fixtures as lf  # noqa: E402


def _cli_error(args, cwd, capsys, monkeypatch):
    """Run the CLI in ``cwd`` with model loading replaced by a recorder; (exit code, its error lines, its warning
    lines, whether a model was loaded, whether ``cwd`` changed)."""
    loads = []
    monkeypatch.setattr(cli, "load_pipeline", lambda *a, **k: loads.append(a))
    monkeypatch.chdir(cwd)
    before = sorted(os.listdir(cwd))
    code = cli.main(["generate", *args, "--out", "x.flac"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) + len([line for line in lines if line.startswith("warning:")]) == len(lines), err
    return code, errors, [line for line in lines if line.startswith("warning:")], bool(loads), \
        sorted(os.listdir(cwd)) != before


# adapters: non-finite factors, a NaN / infinite / huge alpha. "Huge" is a scale (alpha / rank, PEFT rsLoRA alpha /
# sqrt(rank)) above ADAPTER_SCALE_MAX (1000) in size; trained adapters use about 0.01 to 16.

def _tiny_config(models):
    with open(os.path.join(models, "acestep-v15-turbo", "config.json")) as f:
        return json.load(f)


def _edited(path, edit):
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)
    return path


def _bad_adapter(models, folder, case):
    """(file or folder, what the message must name) for one damaged adapter."""
    cfg = _tiny_config(models)
    factors = lf.lora_factors(lf.module_shapes(cfg), rank=4)
    q = "diffusion_model.decoder.layers.0.self_attn.q_proj"
    lora = os.path.join(folder, case.replace(" ", "_") + ".safetensors")
    if case.startswith("lora"):
        lf.write_lora_file(lora, factors, alpha=4.0)
    if case == "lora nan factor":
        return _edited(lora, lambda t: t[q + ".lora_up.weight"].__setitem__((0, 0), NAN)), \
            [q + ".lora_up.weight'", "1 non-finite value(s) of", "(first: nan)"]
    if case == "lora inf factor":
        return _edited(lora, lambda t: t[q + ".lora_down.weight"].__setitem__((1, 2), -INF)), \
            [q + ".lora_down.weight'", "(first: -inf)"]
    if case == "lora nan alpha":
        return _edited(lora, lambda t: t.__setitem__(q + ".alpha", torch.tensor(NAN))), [q + ".alpha'", "(first: nan)"]
    if case == "lora inf alpha":
        return _edited(lora, lambda t: t.__setitem__(q + ".alpha", torch.tensor(INF))), [q + ".alpha'", "(first: inf)"]
    if case == "lora huge alpha":
        return _edited(lora, lambda t: t.__setitem__(q + ".alpha", torch.tensor(1e30))), \
            [f"key '{q}.alpha' = 1e+30 makes the scale alpha / rank = 1e+30 / 4 = 2.5e+29", "at most 1000"]
    if case == "lora nan dora":
        out = factors["layers.0.self_attn.q_proj"]["up"].shape[0]
        return _edited(lora, lambda t: t.__setitem__(q + ".dora_scale", torch.full((out, 1), NAN))), \
            [q + ".dora_scale'", "(first: nan)"]
    if case.startswith("lokr"):
        lokr = lf.write_lokr(os.path.join(folder, "lokr", "lokr_weights.safetensors"),
                             lf.module_shapes(cfg, names=None, conv=True), {"linear_dim": 4, "linear_alpha": 8})
        tensors = load_file(lokr)
        factored = sorted(k[: -len(".lokr_w2_a")] for k in tensors if k.endswith(".lokr_w2_a"))[0]  # has a rank
        if case == "lokr nan factor":
            _edited(lokr, lambda t: t[factored + ".lokr_w1"].__setitem__((0, 0), NAN))
            return os.path.dirname(lokr), [lokr, factored + ".lokr_w1'", "(first: nan)"]
        _edited(lokr, lambda t: t.__setitem__(factored + ".alpha", torch.tensor(1e9)))
        return os.path.dirname(lokr), [lokr, f"key '{factored}.alpha' = 1e+09", "at most 1000"]
    peft = os.path.join(folder, "peft")
    if case == "peft nan alpha":
        lf.write_peft(peft, factors, r=4, alpha=NAN)
        return peft, [os.path.join(peft, "adapter_config.json"), "lora_alpha = nan; expected a positive finite number"]
    if case == "peft huge alpha":
        lf.write_peft(peft, factors, r=4, alpha=1e9)
        return peft, [os.path.join(peft, "adapter_config.json"), "lora_alpha = 1e+09 makes the scale alpha / rank = "
                      "1e+09 / 4 = 2.5e+08"]
    if case == "peft nan factor":
        factors["layers.0.self_attn.q_proj"]["down"][0, 0] = NAN
        lf.write_peft(peft, factors, r=4, alpha=8)
        return peft, [os.path.join(peft, "adapter_model.safetensors"),
                      "'base_model.model.layers.0.self_attn.q_proj.lora_A.weight'", "(first: nan)"]
    raise AssertionError(case)


BAD_ADAPTERS = ["lora nan factor", "lora inf factor", "lora nan alpha", "lora inf alpha", "lora huge alpha",
                "lora nan dora", "lokr nan factor", "lokr huge alpha", "peft nan alpha", "peft huge alpha",
                "peft nan factor"]


@pytest.fixture(scope="module")
def tiny_pipe(models):
    return AceStepPipeline.from_pretrained(models, dtype="fp32", device="cpu")


@pytest.mark.parametrize("case", BAD_ADAPTERS)
def test_damaged_adapters_are_refused_when_read_through_api_cli_and_node(case, models, tiny_pipe, comfy, tmp_path,
                                                                         capsys, monkeypatch):
    """One check, where the file is read (before any model work on the command line), naming the file and the key;
    the Python API, the command line and the LoRA node all meet it."""
    nodes, dirs, _ = comfy
    made = tmp_path / "made"
    made.mkdir()
    path, fragments = _bad_adapter(models, str(made), case)
    # Python API: the pipeline call, before any sampling
    with pytest.raises(CheckpointError) as e:
        tiny_pipe(request(duration=10, seed=0), adapters=[(path, 1.0)])
    message = str(e.value)
    assert all(f in message for f in fragments) and "\n" not in message, message
    # command line: one error line, nothing loaded, nothing written
    work = tmp_path / "work"
    work.mkdir()
    code, errors, warnings, loaded, wrote = _cli_error(["--checkpoint", models, "--lora", path], work, capsys,
                                                       monkeypatch)
    assert code == 1 and errors == [f"error: {message}"] and warnings == [] and not loaded and not wrote
    # the LoRA node, as ComfyUI calls it (the file under models/loras, every widget sent)
    name = f"h17b_{case.replace(' ', '_')}" + ("" if os.path.isdir(path) else ".safetensors")
    placed = os.path.join(dirs["models"], "loras", name)
    (shutil.copytree if os.path.isdir(path) else shutil.copy)(path, placed)
    try:
        assert name in nodes["AceStep15_LoraLoader"].GET_NODE_INFO_V1()["input"]["required"]["lora_name"][1]["options"]
        model = run_node(nodes["AceStep15_ModelLoader"], model="diffusion_models/acestep_v1.5_turbo.safetensors",
                         text_encoder="auto", vae="auto", dtype="fp32", weight_dtype="default", vram_budget=0.0,
                         resident_layers=-1).args[0]
        with pytest.raises(ValueError) as e:
            run_node(nodes["AceStep15_LoraLoader"], model=model, lora_name=name, strength=1.0)
        assert str(e.value) == message.replace(path, placed)  # the same check, naming the file where it lies
    finally:
        (shutil.rmtree if os.path.isdir(placed) else os.remove)(placed)


def test_the_largest_allowed_adapter_scale_loads(models, tmp_path):
    factors = lf.lora_factors(lf.module_shapes(_tiny_config(models)), rank=4)
    edge = lf.write_lora_file(str(tmp_path / "edge.safetensors"), factors, alpha=4 * ADAPTER_SCALE_MAX)
    assert all(t.update.scale == ADAPTER_SCALE_MAX for t in load_adapter(edge).targets)
    over = lf.write_lora_file(str(tmp_path / "over.safetensors"), factors, alpha=4 * ADAPTER_SCALE_MAX + 0.5)
    with pytest.raises(CheckpointError, match=r"= 4000\.5 makes the scale alpha / rank = 4000\.5 / 4 = 1000\.12"):
        load_adapter(over)


# a damaged 5 Hz LM next to the models, or named with --lm

@pytest.fixture(scope="module")
def lm_state():
    from devtools.lm_fixtures import terse_lm_state_dict

    return terse_lm_state_dict(seed=5)


def _models_with_lm(models, root, lm_state, damage, name="acestep-5Hz-lm-1.7B"):
    """``root``: the tiny models (linked) plus an official LM folder damaged as ``damage`` says; (root, LM folder,
    what the reason must name)."""
    from devtools.lm_fixtures import write_official_lm

    os.makedirs(root, exist_ok=True)
    for entry in os.listdir(models):
        if not os.path.exists(os.path.join(root, entry)):
            os.symlink(os.path.join(models, entry), os.path.join(root, entry))
    state = dict(lm_state)
    if damage == "missing tensor":
        del state["model.layers.0.mlp.up_proj.weight"]
    if damage == "missing embedding":
        del state["model.embed_tokens.weight"]
    folder = write_official_lm(root, state, name=name)
    weights = os.path.join(folder, "model.safetensors")
    if damage in ("truncated", "empty file"):
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) // 2 if damage == "truncated" else 0)
        return root, folder, [weights, "not a readable safetensors file (truncated or corrupt?)"]
    if damage == "no tensors":
        save_file({}, weights)
        return root, folder, [weights, "holds no tensors"]
    if damage == "missing tensor":
        return root, folder, [folder, "weights do not fit the model: 1 missing keys: layers.0.mlp.up_proj.weight"]
    if damage == "missing embedding":
        return root, folder, [folder, "LM tensor 'model.embed_tokens.weight' is missing"]
    assert damage is None
    return root, folder, []


LM_DAMAGES = ["truncated", "empty file", "no tensors", "missing tensor", "missing embedding"]


@pytest.mark.parametrize("damage", LM_DAMAGES)
def test_a_damaged_lm_is_reported_with_its_reason_never_skipped_silently(damage, models, lm_state, tmp_path, capsys,
                                                                         monkeypatch):
    root, folder, fragments = _models_with_lm(models, str(tmp_path / "models"), lm_state, damage)
    # auto-discovery (API): the LM found is not used, and the reason comes back
    damaged = []
    assert find_lm(resolve_paths(root), damaged) is None
    assert len(damaged) == 1 and all(f in damaged[0] for f in fragments), damaged
    with pytest.raises(CheckpointError) as e:
        load_planner(folder, torch.float32)
    assert str(e.value) == damaged[0]
    work = tmp_path / "work"
    work.mkdir()
    # command line, LM found next to the models: a warning with the reason, then the one error (think needs an LM)
    code, errors, warnings, loaded, wrote = _cli_error(["--checkpoint", root, "--lm-mode", "think"], work, capsys,
                                                       monkeypatch)
    assert warnings == [f"warning: 5 Hz LM skipped: {damaged[0]}"]
    assert code == 1 and len(errors) == 1 and errors[0].startswith("error: --lm-mode think needs the 5 Hz LM")
    assert not loaded and not wrote
    # command line, --lm naming the folder: the real reason, not "no 5 Hz LM in it"
    code, errors, warnings, loaded, wrote = _cli_error(["--checkpoint", root, "--lm", folder], work, capsys,
                                                       monkeypatch)
    assert code == 1 and errors == [f"error: --lm {folder}: {damaged[0]}"] and warnings == []
    assert not loaded and not wrote


def test_from_pretrained_lm_auto_names_the_damaged_lm_it_found(models, lm_state, tmp_path):
    root, _, fragments = _models_with_lm(models, str(tmp_path / "models"), lm_state, "missing tensor")
    with pytest.raises(ValueError) as e:
        AceStepPipeline.from_pretrained(root, dtype="fp32", device="cpu", lm="auto")
    message = str(e.value)
    assert message.startswith(f"{root}: no 5 Hz LM next to the models (lm='auto') (skipped: ")
    assert all(f in message for f in fragments), message


def test_a_damaged_lm_beside_a_good_one_warns_and_the_good_one_is_used(models, lm_state, tmp_path, capsys):
    root, good, _ = _models_with_lm(models, str(tmp_path / "models"), lm_state, None, name="acestep-5Hz-lm-4B")
    _, bad, fragments = _models_with_lm(models, root, lm_state, "truncated")
    info = type("Info", (), {"paths": resolve_paths(root)})()
    assert cli.resolve_lm(None, info) == good
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: 5 Hz LM skipped: {fragments[0]}: not a readable"), err


def test_damaged_comfy_org_lms_are_reported(lm_state, tmp_path, capsys, monkeypatch):
    """A truncated text_encoders/qwen_1.7b_ace15.safetensors beside a split DiT file; an all-in-one file whose LM
    lacks a tensor (its own LM is tried first, then the text_encoders files)."""
    from devtools.fixtures import build_tensors, write_comfy_layout
    from devtools.lm_fixtures import write_aio_with_lm, write_comfy_lm

    models_dir = str(tmp_path / "comfy")
    paths = write_comfy_layout(models_dir, build_tensors("turbo"))
    lm = write_comfy_lm(models_dir, lm_state)
    with open(lm, "r+b") as f:
        f.truncate(os.path.getsize(lm) - 100)
    state = {k: v for k, v in lm_state.items() if k != "model.norm.weight"}
    write_aio_with_lm(paths["aio"], state, extra=load_file(paths["aio"]))
    truncated = f"warning: 5 Hz LM skipped: {lm}: not a readable safetensors file (truncated or corrupt?)"
    work = tmp_path / "work"
    work.mkdir()
    for checkpoint, expected in ((paths["dit"], [truncated]),
                                 (paths["aio"], [f"warning: 5 Hz LM skipped: {paths['aio']}: weights do not fit the "
                                                 "model: 1 missing keys: norm.weight", truncated])):
        code, errors, warnings, loaded, wrote = _cli_error(["--checkpoint", checkpoint, "--lm-mode", "codes"], work,
                                                           capsys, monkeypatch)
        assert [w[: len(e)] for w, e in zip(warnings, expected)] == expected and len(warnings) == len(expected), \
            warnings
        assert code == 1 and len(errors) == 1 and errors[0].startswith("error: --lm-mode codes needs the 5 Hz LM")
        assert not loaded and not wrote


def test_the_lm_loader_lists_a_damaged_published_lm_and_loading_it_tells_why(comfy, lm_state):
    """A truncated qwen_4b_ace15.safetensors and an acestep-5Hz-lm-4B folder missing a tensor are offered (they are
    named as the published LMs), and choosing one gives the reason, not a silently shorter list."""
    from devtools.lm_fixtures import write_comfy_lm, write_official_lm

    nodes, dirs, _ = comfy
    file = write_comfy_lm(dirs["models"], lm_state, size="4b")
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 3)
    folder = write_official_lm(os.path.join(dirs["models"], "acestep"),
                               {k: v for k, v in lm_state.items() if k != "model.layers.1.self_attn.o_proj.weight"},
                               name="acestep-5Hz-lm-4B")
    try:
        options = nodes["AceStep15_LMLoader"].GET_NODE_INFO_V1()["input"]["required"]["lm"][1]["options"]
        assert {"text_encoders/qwen_4b_ace15.safetensors", "acestep/acestep-5Hz-lm-4B"} <= set(options)
        for choice, expected in (("text_encoders/qwen_4b_ace15.safetensors",
                                  f"{file}: not a readable safetensors file (truncated or corrupt?)"),
                                 ("acestep/acestep-5Hz-lm-4B", f"{folder}: weights do not fit the model: 1 missing "
                                                               "keys: layers.1.self_attn.o_proj.weight")):
            with pytest.raises(ValueError) as e:
                run_node(nodes["AceStep15_LMLoader"], lm=choice, dtype="fp32")
            assert str(e.value).startswith(expected), str(e.value)
    finally:
        os.remove(file)
        shutil.rmtree(folder)


# signals: SIGTERM anywhere, SIGINT during the imports; the command line is a real subprocess, held at the moment
# (a hook in a driver script) until the test sends the signal

SIGNAL_DRIVER = r'''
import os, runpy, sys, time
moment, marker = os.environ["ACESTEP_TEST_HOLD"], os.environ["ACESTEP_TEST_MARKER"]

def hold():
    with open(marker, "w"):
        pass
    time.sleep(300)  # the test's signal ends the wait

if moment == "imports":  # the first import of torch: the command's imports are under way
    class HoldAtTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                sys.meta_path.remove(self)
                hold()
            return None
    sys.meta_path.insert(0, HoldAtTorch())
elif moment == "generation":  # after the first sampling step
    from acestep_core import cli
    draw = cli.ProgressBar.__call__
    def step(self, i, total):
        draw(self, i, total)
        hold()
    cli.ProgressBar.__call__ = step
elif moment == "writing":  # the encoder has written its temporary file, not yet renamed it
    from acestep_core import audio
    encode = audio._encode
    def held(*args, **kwargs):
        encode(*args, **kwargs)
        hold()
    audio._encode = held
sys.argv = ["acestep", *sys.argv[1:]]
runpy.run_module("acestep_core", run_name="__main__", alter_sys=True)
'''


def _held_run(models, tmp_path, moment):
    """The command line generating into an empty ``out`` folder, held at ``moment``; (process, out folder, what the
    out folder held at that moment)."""
    out = tmp_path / "out"
    out.mkdir()
    marker = tmp_path / "held"
    env = dict(os.environ, ACESTEP_TEST_HOLD=moment, ACESTEP_TEST_MARKER=str(marker), OMP_NUM_THREADS="1")
    args = ["generate", "--checkpoint", models, "--lm", "none", "--duration", "10", "--seed", "1", "--device", "cpu",
            "--out", str(out / "x.flac")]
    process = subprocess.Popen([sys.executable, "-c", SIGNAL_DRIVER, *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # bytes: the bar's "\r" stays "\r"
    deadline = time.monotonic() + 300
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run never reached {moment}: {process.communicate()[1].decode()[-2000:]}")
        time.sleep(0.05)
    return process, out, sorted(os.listdir(out))


@pytest.mark.parametrize("moment, sig", [("imports", signal.SIGINT), ("imports", signal.SIGTERM),
                                         ("generation", signal.SIGTERM), ("writing", signal.SIGTERM),
                                         ("writing", signal.SIGINT)])
def test_a_signal_ends_the_run_with_one_line_and_no_temporary(models, tmp_path, moment, sig):
    process, out, held = _held_run(models, tmp_path, moment)
    if moment == "writing":
        assert len(held) == 1 and held[0].endswith(".part"), held  # the moment is real: a temporary exists
    process.send_signal(sig)
    stdout, stderr = (text.decode() for text in process.communicate(timeout=120))
    name = signal.Signals(sig).name
    assert process.returncode == 128 + sig and stdout == "", stderr
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == \
        [f"error: interrupted ({name}); nothing was written"], stderr
    assert stderr.endswith(f"\nerror: interrupted ({name}); nothing was written\n") or moment == "imports"
    assert all(line.strip() for line in stderr.split("\n")[:-1]), stderr  # no blank line either
    if moment == "imports":
        assert stderr.strip() == f"error: interrupted ({name}); nothing was written"  # the one line, nothing else
    assert os.listdir(out) == []  # no .partial, no .part, no output


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(models, tmp_path, capsys):
    process, out, _ = _held_run(models, tmp_path, "writing")
    process.kill()  # SIGKILL: no handler runs, the temporary stays
    process.communicate(timeout=60)
    left = os.listdir(out)
    assert len(left) == 1 and f".partial.{process.pid}." in left[0] and left[0].endswith(".part"), left
    code = cli.main(["generate", "--checkpoint", models, "--lm", "none", "--duration", "10", "--seed", "1",
                     "--device", "cpu", "--out", str(out / "x.flac")])
    assert code == 0, capsys.readouterr().err
    assert os.listdir(out) == ["x.flac"]


def test_stale_temporaries_of_dead_runs_go_and_a_live_runs_stay(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead, live = finished.pid, os.getppid()
    (tmp_path / f".x.previous.{dead}.flac").write_text("the old song")  # moved aside, then the run was killed
    (tmp_path / f".x.partial.{dead}.flac").write_text("half a song")
    (tmp_path / f"..x.partial.{dead}.flac.0a1b2c3d.part").write_text("half a song")
    (tmp_path / f".x.partial.{live}.flac").write_text("another run's song")
    (tmp_path / f".y.partial.{dead}.flac").write_text("another name's")
    cli.outputs.remove_stale_temporaries(str(tmp_path / "x.flac"))
    assert sorted(os.listdir(tmp_path)) == sorted([f".x.partial.{live}.flac", f".y.partial.{dead}.flac", "x.flac"])
    assert (tmp_path / "x.flac").read_text() == "the old song"  # put back where it was


# dropdowns: each Model Loader list holds only what its input takes, judged from file headers

@pytest.fixture
def foreign_files(comfy):
    """Files a ComfyUI folder holds next to ACE-Step's: another model's Qwen3 (Qwen3-4B as image models ship it:
    151,936 ids, no audio codes), an SD-style VAE, and a second copy of the real text encoder (which must be
    listed). The tree already holds the 5 Hz LM file text_encoders/qwen_1.7b_ace15.safetensors. Removed after."""
    _, dirs, _ = comfy
    te_dir, vae_dir = os.path.join(dirs["models"], "text_encoders"), os.path.join(dirs["models"], "vae")
    made = [os.path.join(te_dir, "qwen_3_4b.safetensors"), os.path.join(vae_dir, "sdxl_vae.safetensors"),
            os.path.join(te_dir, "qwen_0.6b_ace15_copy.safetensors")]
    save_file({"model.embed_tokens.weight": torch.zeros(151936, 4),
               "model.layers.0.post_attention_layernorm.weight": torch.ones(4)}, made[0])
    save_file({"decoder.conv_in.weight": torch.zeros(8, 4, 3, 3), "encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)},
              made[1])
    shutil.copy(os.path.join(te_dir, "qwen_0.6b_ace15.safetensors"), made[2])
    yield
    for path in made:
        os.remove(path)


def test_model_loader_dropdowns_list_only_what_fits(comfy, foreign_files):
    nodes, _, pack = comfy
    host = sys.modules[pack.__name__ + ".nodes.comfy_adapter"]
    assert {"qwen_1.7b_ace15.safetensors", "qwen_3_4b.safetensors"} <= set(host.model_files("text_encoders"))
    assert "sdxl_vae.safetensors" in host.model_files("vae")  # the folders do offer them
    spec = nodes["AceStep15_ModelLoader"].GET_NODE_INFO_V1()["input"]["required"]  # what /object_info sends
    assert spec["text_encoder"][1]["options"] == ["auto", "qwen_0.6b_ace15.safetensors",
                                                  "qwen_0.6b_ace15_copy.safetensors"]
    assert spec["vae"][1]["options"] == ["auto", "ace_1.5_vae.safetensors"]
    assert spec["model"][1]["options"] == [o for o in spec["model"][1]["options"]
                                           if o.startswith(("acestep/acestep-v15-", "diffusion_models/acestep",
                                                            "checkpoints/ace_step"))]
    lm = nodes["AceStep15_LMLoader"].GET_NODE_INFO_V1()["input"]["required"]["lm"][1]["options"]
    assert "text_encoders/qwen_1.7b_ace15.safetensors" in lm and "text_encoders/qwen_3_4b.safetensors" not in lm
    assert not any("0.6b" in o for o in lm)


@pytest.mark.parametrize("widget, value, expected", [
    ("text_encoder", "qwen_1.7b_ace15.safetensors", "text_encoder='qwen_1.7b_ace15.safetensors' is not allowed: the "
                                                    "Qwen3-Embedding-0.6B text encoder"),
    ("text_encoder", "qwen_3_4b.safetensors", "text_encoder='qwen_3_4b.safetensors' is not allowed"),
    ("vae", "sdxl_vae.safetensors", "vae='sdxl_vae.safetensors' is not allowed: the ACE-Step 1.5 VAE"),
])
def test_model_loader_refuses_a_file_sent_past_its_dropdown(comfy, foreign_files, widget, value, expected):
    """An API prompt can send any string; the loader refuses what its list would not offer, before loading."""
    nodes = comfy[0]
    widgets = {"model": "diffusion_models/acestep_v1.5_turbo.safetensors", "text_encoder": "auto", "vae": "auto",
               "dtype": "fp32", "weight_dtype": "default", "vram_budget": 0.0, "resident_layers": -1}
    with pytest.raises(ValueError) as e:
        run_node(nodes["AceStep15_ModelLoader"], **{**widgets, widget: value})
    assert str(e.value).startswith(expected), str(e.value)


# ---- issue 18: checked once, at the request boundary
# The sampler, the DCW settings and the LM planner used to check these values a second time (ValueError, in other
# words). They now trust the request's types (asserts at most), and each value they refused is refused where the
# user gives it, with InputError naming the input: request() and the settings dataclasses (the API; the nodes
# build the same dataclasses), and resolve_sampler for what a variant cannot take (the pipeline before any work,
# the command line before loading).

from acestep_core import pipeline as pipeline_module, planning  # noqa: E402
from acestep_core.lm_planner.planner import LMSample  # noqa: E402
from acestep_core.schedule import resolve_sampler  # noqa: E402

FLOW = {"flow_edit": True, "task": "cover", **SRC}
V18_CASES = [  # (the check it replaces, fields, variant (None: request() refuses it), input named, part of allowed)
    ("turbo_schedule: 1-20 non-zero timesteps", {"timesteps": [0.0]}, "turbo", "timesteps", "1 to 20 non-zero"),
    ("turbo_schedule: 1-20 non-zero timesteps", {"timesteps": [1 - i / 30 for i in range(21)]}, "turbo",
     "timesteps", "1 to 20 non-zero"),
    ("turbo_schedule: 0 as float32 is no step", {"timesteps": [1e-46]}, "turbo", "timesteps", "1 to 20 non-zero"),
    ("_check_timesteps: in [0, 1]", {"timesteps": [1.2, 0.5]}, None, "timesteps", "between 0 and 1"),
    ("_check_timesteps: in [0, 1]", {"timesteps": [1.0, -0.1]}, None, "timesteps", "between 0 and 1"),
    ("_check_timesteps: descending", {"timesteps": [0.5, 0.5, 0.0]}, None, "timesteps", "from high to low"),
    ("_check_timesteps: descending in float32", {"timesteps": [0.50000001, 0.5]}, None, "timesteps",
     "from high to low"),
    ("base_schedule: at least 2 timesteps", {"timesteps": [1.0]}, "sft", "timesteps", "at least 2 values"),
    ("base_schedule/turbo_step_times: steps >= 1", {"steps": 0}, None, "steps", "an integer from 1 to 200"),
    ("base_schedule/turbo_step_times: an int", {"steps": 2.5}, None, "steps", "an integer"),
    ("base_schedule/turbo_step_times: an int", {"steps": True}, None, "steps", "an integer"),
    ("turbo_step_times: 1-20 steps", {"steps": 21}, "turbo", "steps", "1 to 20 on turbo models"),
    ("turbo_schedule/base_schedule: shift > 0", {"shift": 0.0}, None, "shift", "a number from 0.1 to 10"),
    ("turbo_schedule/base_schedule: shift > 0", {"shift": -1.0}, None, "shift", "a number from 0.1 to 10"),
    ("truncate_for_cover_noise: strength", {"cover_noise_strength": -0.1}, None, "cover_noise", "from 0 to 1"),
    ("truncate_for_cover_noise: strength", {"cover_noise_strength": 1.5}, None, "cover_noise", "from 0 to 1"),
    ("retake_mix: variance", {"retake_variance": -0.1}, None, "retake_variance", "from 0 to 1"),
    ("retake_mix: variance", {"retake_variance": 1.2}, None, "retake_variance", "from 0 to 1"),
    ("retake_mix: variance", {"retake_variance": True}, None, "retake_variance", "from 0 to 1"),
    ("repaint_settings: mode", {"repaint_mode": "gentle"}, None, "repaint_mode", "one of balanced"),
    ("repaint_settings: strength", {"repaint_strength": 1.5}, None, "repaint_strength", "from 0 to 1"),
    ("sample: guidance on turbo", {"guidance": 3.0}, "turbo", "guidance", "none on turbo models"),
    ("sample: sampler_mode", {"sampler_mode": "rk4"}, None, "sampler_mode", "one of euler, heun"),
    ("sample: infer_method", {"infer_method": "ddim"}, None, "infer_method", "one of ode, sde"),
    ("sample: heun with sde", {"sampler_mode": "heun", "infer_method": "sde"}, None, "sampler_mode",
     "Heun and SDE do not combine"),
    ("sample: velocity_ema_factor", {"velocity_ema": 1.5}, None, "velocity_ema", "from 0 to 1"),
    ("flow_edit: velocity_ema_factor", {"velocity_ema": -1.0, **FLOW}, None, "velocity_ema", "from 0 to 1"),
    ("flow_edit: n_avg >= 1", {"flow_edit_n_avg": 0, **FLOW}, None, "flow_edit_n_avg", "an integer from 1"),
    ("flow_edit: n_min <= n_max", {"flow_edit_n_min": 0.6, "flow_edit_n_max": 0.5, **FLOW}, None,
     "flow_edit_n_min", "at most the end of the edited part (0.5)"),
    ("flow_edit: n_max <= 1", {"flow_edit_n_max": 1.5, **FLOW}, None, "flow_edit_n_max", "from 0 to 1"),
    ("DcwSettings: mode", {"dcw_mode": "wave"}, None, "dcw_mode", "one of low, high, double, pix"),
    ("DcwSettings: scaler a number", {"dcw_scaler": "0.1"}, None, "dcw_scaler", "a number from 0 to 1"),
    ("DcwSettings: high_scaler not NaN", {"dcw_high_scaler": NAN}, None, "dcw_high_scaler", "a number from 0 to 1"),
    ("plan_batch: LM mode", {"lm_mode": "fast"}, None, "lm_mode", "one of off, codes, think"),
    ("plan_batch: a duration the LM writes codes for", {"duration": 0.1}, None, "duration", "from 10 to 600"),
    ("plan_batch: a duration the LM writes codes for", {"duration": 601}, None, "duration", "from 10 to 600"),
]


@pytest.mark.parametrize("replaces, fields, variant, name, allowed", V18_CASES,
                         ids=[f"{c[0]}:{c[3]}={c[1].get(c[3], '')}"[:70] for c in V18_CASES])
def test_v18_the_request_refuses_what_the_sampler_and_planner_checked_again(replaces, fields, variant, name,
                                                                            allowed):
    with pytest.raises(InputError) as e:
        resolve_sampler(request(**fields).sampler, variant or "turbo")
    assert e.value.name == name and allowed in e.value.allowed, str(e.value)
    assert str(e.value).startswith(f"{name}=") and " is not allowed: " in str(e.value)
    if variant is not None:  # a setting only this variant cannot take: request() itself takes it
        assert isinstance(request(**fields), request_module.Request)


def test_v18_what_the_boundary_lets_through_is_what_the_sampler_and_planner_take():
    """The canonical forms the low-level code relies on: steps 2.0 is the int 2 (turbo_step_times used to refuse
    the float), cover noise 0 is "off" (the pipeline then never truncates), and an LM in codes mode always gets a
    duration (plan_batch used to refuse none)."""
    sampler = request(steps=2.0, timesteps="1, 0.5").sampler
    assert sampler.steps == 2 and type(sampler.steps) is int and sampler.timesteps == (1.0, 0.5)
    assert request(cover_noise_strength=0.0, task="cover", **SRC).task.cover_noise == 0.0
    for fields in ({}, {"duration": 42.0}, {"audio_codes": [1] * 50}, {"task": "cover", **SRC}):
        req = request(lm_mode="codes", **fields)
        assert planning.given_metas(req, "codes")["duration"] == req.task.seconds > 0


V18_CLI_CASES = [  # (arguments, what the one error line starts with): the CLI refuses them before loading
    (["--steps", "21"], "error: --steps 21 is not allowed: 1 to 20 on turbo models"),
    (["--timesteps", "0"], "error: --timesteps '0' is not allowed: 1 to 20 non-zero timesteps on turbo models"),
    (["--timesteps", "0.50000001,0.5"], "error: --timesteps '0.50000001,0.5' is not allowed: numbers between 0"),
    (["--sampler", "heun", "--infer-method", "sde"], "error: --sampler 'heun' is not allowed: euler with"),
    (["--velocity-ema", "1.5"], "error: --velocity-ema 1.5 is not allowed: a number from 0 to 1"),
    (["--retake-variance", "2"], "error: --retake-variance 2.0 is not allowed: a number from 0 to 1"),
    (["--dcw-mode", "wave"], "error: --dcw-mode 'wave' is not allowed: one of low, high, double, pix"),
    (["--task", "cover", "--src-audio", "SRC", "--flow-edit", "--edit-n-avg", "0"],
     "error: --edit-n-avg 0 is not allowed: an integer from 1"),
]


@pytest.mark.parametrize("args, expected", V18_CLI_CASES, ids=[" ".join(c[0])[:50] for c in V18_CLI_CASES])
def test_v18_cli_refuses_them_before_loading(models, workdir, capsys, monkeypatch, args, expected):
    _assert_refused_before_loading(models, workdir, capsys, monkeypatch, [{"SRC": "src.wav"}.get(a, a) for a in args],
                                   expected)


def test_v18_sampler_node_refuses_them_before_running(comfy):
    nodes = comfy[0]
    text = run_node(nodes["AceStep15_TextEncode"], caption="x", lyrics="", language="en", bpm=0, keyscale="auto",
                    timesignature="auto").args[0]
    latent = {"samples": torch.zeros(1, 64, 300), "type": "audio"}
    for inputs, expected in [({"sampler_mode": "heun", "infer_method": "sde"}, "sampler_mode='heun' is not allowed"),
                             ({"velocity_ema": 1.5}, "velocity_ema=1.5 is not allowed"),
                             ({"retake_variance": -0.5}, "retake_variance=-0.5 is not allowed"),
                             ({"dcw_mode": "wave"}, "dcw_mode='wave' is not allowed"),
                             ({"timesteps": "0.50000001, 0.5"}, "timesteps='0.50000001, 0.5' is not allowed")]:
        with pytest.raises(ValueError, match="^" + expected) as e:  # model None: refused before it is used
            run_node(nodes["AceStep15_Sampler"], hidden={}, model=None, conditioning=text, latent=latent,
                     **{"seed": 0, **inputs})
        assert type(e.value).__name__ == "InputError"  # the pack's own copy of the class


def test_v18_load_lm_refuses_a_max_duration_the_lm_cannot_choose(plain_pipe):
    """MetasVocab.build used to refuse it at the first plan; the pipeline names it before reading the LM."""
    for bad in (601, 9, 60.5, "60"):
        with pytest.raises(InputError) as e:
            plain_pipe.load_lm("no-such-lm", max_duration=bad)
        assert e.value.name == "max_duration" and e.value.allowed == "an integer from 10 to 600 seconds"
    assert plain_pipe.planner is None


class _StubPlanner:
    """Stands in for the LM: records the inputs simple mode and understanding hand it."""

    def __init__(self):
        self.calls = []

    def _sample(self, **given):
        self.calls.append(given)
        return LMSample("a caption", "", 120, "A minor", "4", 30, "en", None, None, "text")

    def simple_mode(self, query, instrumental, language, *, seed, **sampling):
        return self._sample(query=query, instrumental=instrumental, language=language, seed=seed)

    def understand(self, codes, *, seed, **sampling):
        return self._sample(codes=len(codes), seed=seed)


def test_v18_simple_mode_and_understanding_check_each_input_once(plain_pipe, monkeypatch):
    """pipe.simple used to check query and seed, then planning.simple_song all of them again; pipe.understand
    checked the clip and the seed twice (its own call of audio_codes, then understand_codes)."""
    checks = []
    for module, name in ((planning, "check_query"), (planning, "check_bool"), (planning, "check_language"),
                         (planning, "check_one_seed"), (pipeline_module, "check_one_seed"),
                         (pipeline_module, "_check_clip")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _o=original, _n=name: (checks.append(_n), _o(*a))[1])
    stub = _StubPlanner()
    monkeypatch.setattr(plain_pipe, "_planner", lambda *a: stub)
    monkeypatch.setattr(plain_pipe, "_need_lm", lambda: None)
    desc = plain_pipe.simple("a love song", True, "unknown", seed=7)
    assert sorted(checks) == ["check_bool", "check_language", "check_one_seed", "check_query"]
    assert stub.calls == [{"query": "a love song", "instrumental": True, "language": None, "seed": 7}]
    assert desc.text.bpm == 120 and desc.text.language == "en"
    checks.clear()
    plain_pipe.understand(request_module.AudioClip(SONG, RATE), seed=3)
    assert sorted(checks) == ["_check_clip", "check_one_seed"] and stub.calls[-1]["seed"] == 3
    with pytest.raises(InputError, match="^language='xx' is not allowed"):  # refused before the LM is placed
        plain_pipe.simple("a love song", language="xx")
    assert len(stub.calls) == 2
