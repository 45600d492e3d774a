"""The lyric line of the results panel in a real browser against a real ComfyUI (skipped as tests/test_browser.py
is, with its reason). A text-to-music graph with ACE-Step 1.5 Lyric Timestamps → Save Audio runs on a tiny official
turbo folder whose alignment heads are sharpened (random weights otherwise attend evenly and every line gets the
same time); the browser plays the result, seeks by clicking the waveform, and the line shown must be the one the
server's timing gives for the player's time (tests/browser/lyrics_flow.mjs). The tiny VAE's 200 Hz audio does not
play in Chromium, so the flow gives the row's <audio> element a playable tone of the same length."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request

import pytest

from devtools.comfy_harness import ROOT, make_comfy_tree, running_comfyui
from tests.test_browser import CHROMIUM, COMFYUI_DIR, FRONTENDS, NODE, NODE_MODULES, SHOTS, _missing

pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
P = "AceStep15_"
LYRICS = "[Verse]\nHello bright world\nSing it once again\n\n[Chorus]\nWe rise and fall\n"
HOLD = 2.0  # web/acestep/lyrics.js LINE_HOLD_SECONDS


def _sharpen_alignment_heads(models: str) -> None:
    """Scale the cross-attention queries of the tiny turbo's alignment layers (its config names layers 1-3)."""
    import re

    from safetensors.torch import load_file, save_file

    path = os.path.join(models, "acestep", "acestep-v15-turbo", "model.safetensors")
    tensors = load_file(path)
    keys = [k for k in tensors if re.fullmatch(r"decoder\.layers\.[123]\.cross_attn\.q_norm\.weight", k)]
    assert len(keys) == 3, sorted(tensors)[:10]
    for key in keys:
        tensors[key] = tensors[key] * 30
    save_file(tensors, path)


def _workflow(url: str, path: str) -> None:
    from scripts import build_workflows as b

    with urllib.request.urlopen(url + "/object_info", timeout=30) as r:
        infos = json.load(r)
    specs = [
        b.loader("acestep/acestep-v15-turbo"),
        b.text(caption="synth pop", lyrics=LYRICS),
        ("latent", P + "EmptyLatent", {"duration": 12.0, "batch_size": 1}, {}),
        b.sampler(seed=0),
        b.decode(),
        ("lyrics", P + "LyricTimestamps", {"word_times": False}, {"model": ("loader", 0), "latent": ("sampler", 0)}),
        ("save", P + "SaveAudio", {"filename_prefix": "lyrics/song", "format": "flac", "quality": "default"},
         {"audio": ("decode", 0), "lyric_timing": ("lyrics", 1)}),
    ]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(b.build("lyrics_browser_check", "Lyric timestamps in the browser (test).", specs, infos), f)


@pytest.fixture(scope="module", params=FRONTENDS)
def flow(request, tmp_path_factory):
    frontend = request.param
    base = str(tmp_path_factory.mktemp("comfyui_lyrics"))
    dirs = make_comfy_tree(base)
    _sharpen_alignment_heads(dirs["models"])
    settings = os.path.join(base, "user", "default")
    os.makedirs(settings)
    with open(os.path.join(settings, "comfy.settings.json"), "w") as f:
        json.dump({"Comfy.TutorialCompleted": True}, f)
    extra = [] if frontend == "default" else ["--front-end-root", frontend]
    with running_comfyui(COMFYUI_DIR, base, extra) as (url, _, log_path):
        workflow = os.path.join(base, "lyrics_workflow.json")
        _workflow(url, workflow)
        tag = "lyrics-" + ("default" if frontend == "default" else "root")
        os.makedirs(SHOTS, exist_ok=True)
        env = dict(os.environ, PLAYWRIGHT_NODE_MODULES=NODE_MODULES, CHROMIUM=CHROMIUM)
        done = subprocess.run([NODE, os.path.join(ROOT, "tests", "browser", "lyrics_flow.mjs"), url, workflow, SHOTS,
                               tag], capture_output=True, text=True, timeout=420, env=env, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-4000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert "error" not in out, out["error"] + "\n" + "\n".join(out["console"][-30:]) + "\n" + \
            open(log_path).read()[-3000:]
        out["files"] = sorted(os.listdir(os.path.join(dirs["output"], "lyrics")))
        yield out


def _expected(lines: list[dict], t: float) -> str:
    """The rule the panel follows: the last line started at t, while t is within its end + the hold."""
    started = [line for line in lines if line["start"] <= t]
    return started[-1]["text"] if started and t <= started[-1]["end"] + HOLD else ""


def test_the_panel_shows_the_line_the_player_is_at(flow):
    lines = flow["lines"][0]
    assert [line["text"] for line in lines] == ["Hello bright world", "Sing it once again", "We rise and fall"]
    samples = flow["samples"]
    assert "/view?" in flow["media"]["original"] and abs(flow["media"]["duration"] - flow["media"]["seconds"]) < 0.01
    assert all(not s["paused"] and s["visible"] for s in samples[:-1]), (samples, flow.get("media"))
    for s in samples:
        # the panel follows the player within a few frames (0.36 s seen on a loaded 2-core VM)
        assert abs(s["at"] - s["current"]) < 0.5, s
        assert s["text"] == _expected(lines, s["at"]), (s, lines)
    assert len({s["text"] for s in samples}) >= 2, samples  # the line changes as the player moves


def test_save_wrote_lrc_and_vtt_next_to_the_song(flow):
    stems = {os.path.splitext(name)[0] for name in flow["files"]}
    assert len(stems) == 1 and sorted(os.path.splitext(n)[1] for n in flow["files"]) == [".flac", ".lrc", ".vtt"]


def test_no_error_from_the_extension(flow):
    bad = [line for line in flow["console"] if line.startswith("pageerror") or
           (line.startswith("error") and "acestep" in line.lower())]
    assert not bad, bad
