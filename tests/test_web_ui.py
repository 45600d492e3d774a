"""The waveform data the nodes send to the frontend extension: peaks (Python and JavaScript agree), the source
peaks of the task nodes, and the per-item peaks and edited region of Save/Preview; plus the frontend's limits
module against the server's numbers. The JavaScript side runs under Node.js (skipped, with the reason, where
no `node` is installed)."""
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from acestep_core.audio import load_audio
from acestep_core.constants import (
    DURATION_MAX, EXTEND_OVERLAP_MAX, EXTEND_SECONDS_MIN, LATENT_RATE, MIN_WINDOW_SECONDS,
)
from acestep_core.peaks import PEAK_BINS, PEAK_SCALE, compute_peaks, peaks_summary
from devtools.comfy_harness import ROOT, TEST_AUDIO_RATE, song_signal

P = "AceStep15_"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js (`node`) is not installed: the JavaScript side "
                                                     "cannot run here")


def _node_eval(script: str, stdin: bytes = b"") -> str:
    done = subprocess.run([NODE, "--input-type=module", "-e", script], input=stdin, capture_output=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def _js_peaks(channels: torch.Tensor, bins: int) -> tuple[list[int], list[int]]:
    """web/acestep/peaks.js's computePeaks on float32 channels passed as raw little-endian bytes."""
    data = channels.contiguous().float().numpy().astype("<f4").tobytes()
    script = f"""
import {{ computePeaks }} from "./web/acestep/peaks.js";
const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const buf = Buffer.concat(chunks);
const all = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
const n = {channels.shape[-1]};
const channels = Array.from({{ length: {channels.shape[0]} }}, (_, c) => all.subarray(c * n, (c + 1) * n));
const p = computePeaks(channels, {bins});
process.stdout.write(JSON.stringify([p.min, p.max]));
"""
    lows, highs = json.loads(_node_eval(script, data))
    return lows, highs


def _signal(samples: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, samples, generator=g) * 0.4
    x[0, ::97] = (torch.arange(x[0, ::97].numel()) % 9 - 4 + 0.5) / PEAK_SCALE  # exact half steps: rounding rule
    x[1, 5] = float("nan")
    x[1, 7] = 3.0  # beyond full scale: clamped
    x[0, 11] = -float("inf")
    return x


@needs_node
@pytest.mark.parametrize("samples, bins", [(48000, PEAK_BINS), (4801, 7), (300, 1000), (12345, 333)])
def test_python_and_javascript_peaks_agree(samples, bins):
    signal = _signal(samples, seed=samples)
    assert compute_peaks(signal, bins) == _js_peaks(signal, bins)


def test_peaks_follow_the_definition():
    x = torch.tensor([[0.0, 0.5, -0.25, 1.0, float("nan"), -1.0, 0.2]])
    lows, highs = compute_peaks(x, 3)  # slices [0,2) [2,4) [4,7)
    assert lows == [0, -32, -127] and highs == [64, 127, 25]  # floor(v * 127 + 0.5); NaN counts as 0
    assert compute_peaks(torch.zeros(2, 0)) == ([], [])
    s = peaks_summary(song_signal(2.0), TEST_AUDIO_RATE, bins=50)
    assert s["seconds"] == 2.0 and s["bins"] == 50 and len(s["min"]) == len(s["max"]) == 50
    with pytest.raises(ValueError, match=r"shape \(1, 2, 3\)"):
        compute_peaks(torch.zeros(1, 2, 3))


@needs_node
def test_frontend_limits_are_the_servers_numbers(comfy):
    nodes, _, _ = comfy
    limits = json.loads(_node_eval('import * as L from "./web/acestep/limits.js"; '
                                   'process.stdout.write(JSON.stringify(L));'))
    extend = {i.id: i for i in nodes[P + "ExtendLatent"].GET_SCHEMA().inputs}
    repaint = {i.id: i for i in nodes[P + "RepaintLatent"].GET_SCHEMA().inputs}
    assert limits["LATENT_RATE"] == LATENT_RATE
    assert limits["FRAME_SECONDS"] == limits["MIN_WINDOW_SECONDS"] == MIN_WINDOW_SECONDS == 1 / LATENT_RATE
    assert limits["DURATION_MAX"] == DURATION_MAX
    assert [limits["EXTEND_SECONDS_MIN"], limits["EXTEND_SECONDS_MAX"]] == [EXTEND_SECONDS_MIN, DURATION_MAX] == [
        extend["seconds"].min, extend["seconds"].max]
    assert [limits["OVERLAP_MIN"], limits["OVERLAP_MAX"]] == [0, EXTEND_OVERLAP_MAX] == [extend["overlap"].min,
                                                                                         extend["overlap"].max]
    assert limits["END_OF_SOURCE"] == repaint["end"].default == repaint["end"].min
    assert [limits["PEAK_SCALE"], limits["PEAK_BINS"]] == [PEAK_SCALE, PEAK_BINS]


def test_the_extension_makes_no_external_requests_and_imports_no_internal_module():
    seen = 0
    for folder, _, files in os.walk(os.path.join(ROOT, "web")):
        for name in files:
            if not name.endswith(".js"):
                continue
            text = open(os.path.join(folder, name), encoding="utf-8").read()
            assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
            specifiers = re.findall(r"""(?:\bfrom|^import|\bimport\()\s*["']([^"']+)["']""", text, re.M)
            for spec in specifiers:  # only ComfyUI's public app module and our own modules
                assert spec == "../../scripts/app.js" or spec.startswith("./"), f"{name}: {spec}"
                seen += 1
    assert seen >= 8  # the entry point imports app and our modules, which import each other


# ------------------------------------------------------------------------------------------------ nodes

def _source(seconds=12.0):
    return {"waveform": song_signal(seconds)[None], "sample_rate": TEST_AUDIO_RATE}


@pytest.mark.parametrize("node, inputs, region", [
    ("RepaintLatent", {"start": 2.0, "end": 5.0, "mode": "balanced", "strength": 0.5},
     {"start": 2.0, "end": 5.0, "source_offset": 0.0}),
    ("RepaintLatent", {"start": 3.0, "end": -1.0, "mode": "balanced", "strength": 0.5},
     {"start": 3.0, "end": 12.0, "source_offset": 0.0}),
    ("ExtendLatent", {"direction": "after the end", "seconds": 4.0, "overlap": 1.0, "mode": "balanced"},
     {"start": 11.0, "end": 16.0, "source_offset": 0.0}),
    ("ExtendLatent", {"direction": "before the start", "seconds": 4.0, "overlap": 1.0, "mode": "balanced"},
     {"start": 0.0, "end": 5.0, "source_offset": 4.0}),
])
def test_task_and_output_nodes_send_peaks_and_the_edited_region(graph, node, inputs, region):
    run, model, text, dirs, _ = graph
    source = _source()
    out = run(P + node, audio=source, batch_size=2, **inputs)
    (summary,) = out.ui["acestep_source"]
    assert summary == peaks_summary(source["waveform"][0], TEST_AUDIO_RATE)
    assert summary["seconds"] == 12.0
    latent = run(P + "Sampler", hidden={}, model=model, conditioning=text, latent=out.args[0], seed=3).args[0]
    audio = run(P + "VAEDecode", model=model, latent=latent, normalize=True, tile_frames=64).args[0]
    assert {k: audio["acestep_edit"][k] for k in region} == region

    ui = run(P + "PreviewAudio", hidden={}, audio=audio).ui
    assert len(ui["audio"]) == 2 and len(ui["acestep_peaks"]) == 2
    for item, peaks in zip(audio["waveform"], ui["acestep_peaks"]):
        assert peaks == peaks_summary(item, audio["sample_rate"])
    (edit,) = ui["acestep_edit"]
    assert {k: edit[k] for k in region} == region
    assert edit["source"]["type"] == "temp" and edit["source"]["filename"].endswith(".flac")
    path = os.path.join(dirs["temp"], edit["source"]["subfolder"], edit["source"]["filename"])
    wav, rate = load_audio(path)
    assert rate == TEST_AUDIO_RATE and wav.shape == source["waveform"][0].shape
    assert torch.allclose(wav, source["waveform"][0], atol=1e-4)  # 16-bit FLAC of the source
    json.dumps(ui)  # ComfyUI sends it over the websocket and keeps it in the history


def test_results_without_an_edit_have_peaks_only(graph):
    run, model, text, _, _ = graph
    out = run(P + "EmptyLatent", duration=10.0, batch_size=1)
    assert out.ui is None or "acestep_source" not in out.ui  # text to music: no source to show
    latent = run(P + "Sampler", hidden={}, model=model, conditioning=text, latent=out.args[0], seed=1).args[0]
    audio = run(P + "VAEDecode", model=model, latent=latent, normalize=True, tile_frames=64).args[0]
    assert "acestep_edit" not in audio
    cover = run(P + "CoverLatent", audio=_source(), cover_strength=1.0, noise_strength=0.0, batch_size=1)
    assert cover.ui["acestep_source"][0]["seconds"] == 12.0
    ui = run(P + "PreviewAudio", hidden={}, audio=audio).ui
    assert "acestep_edit" not in ui and ui["acestep_peaks"][0]["seconds"] == 10.0


def test_edit_region_for_each_task(comfy):
    import importlib

    edit_region = importlib.import_module("acestep15_pack.nodes.ui").edit_region
    request = importlib.import_module("acestep15_pack.acestep_core.request")

    def task(kind, start=None, end=None, seconds=10.0, **kw):
        clip = request.AudioClip(torch.full((2, int(seconds * 100)), 0.1), 100)
        return request.Task(kind, clip, start=start, end=end, **kw)

    assert edit_region(task("repaint", 1.5, None)) == {"start": 1.5, "end": 10.0, "source_offset": 0.0}
    assert edit_region(task("lego", 2.0, 4.0, tracks="drums")) == {"start": 2.0, "end": 4.0, "source_offset": 0.0}
    assert edit_region(task("lego", tracks="drums")) is None  # lego over the whole song: nothing kept to compare
    assert edit_region(task("extract", tracks="vocals")) is None and edit_region(task("cover")) is None
    assert edit_region(task("extend", -3.0, 0.5)) == {"start": 0.0, "end": 3.5, "source_offset": 3.0}
    assert edit_region(request.Task("text2music")) is None


@pytest.mark.parametrize("node, inputs, names", [
    ("ModelLoader", {"model": "diffusion_models/acestep_v1.5_turbo.safetensors"},
     ["DiT: diffusion_models/acestep_v1.5_turbo.safetensors", "VAE: vae/ace_1.5_vae.safetensors",
      "text encoder: text_encoders/qwen_0.6b_ace15.safetensors"]),
    ("ModelLoader", {"model": "acestep/acestep-v15-base"}, ["DiT: acestep/acestep-v15-base"]),
    ("LMLoader", {"lm": "text_encoders/qwen_1.7b_ace15.safetensors"}, ["text_encoders/qwen_1.7b_ace15.safetensors"]),
])
def test_loader_texts_name_models_inside_the_models_folder(comfy, node, inputs, names):
    """The loaders' text on the node names each file as the dropdown does, never by its absolute path (long,
    private, and cut mid-path in the node's text box)."""
    from devtools.comfy_harness import run_node

    nodes, dirs, _ = comfy
    widgets = {"ModelLoader": {"text_encoder": "auto", "vae": "auto", "dtype": "fp32"}, "LMLoader": {"dtype": "auto"}}
    text = run_node(nodes[P + node], **widgets[node], **inputs).ui["text"][0]
    for name in names:
        assert name in text, text
    assert dirs["models"] not in text and not re.search(r"(^|\s)/\w", text), text
