"""The frontend extension in a real browser against a real ComfyUI server.

Runs when ``COMFYUI_DIR`` points at a ComfyUI checkout (as tests/test_comfyui_server.py), Chromium is installed
(``CHROMIUM``, default: ``chromium`` on PATH, Debian package ``chromium``) and Node.js finds ``playwright-core``
(npm; in ``PLAYWRIGHT_NODE_MODULES``, default: this repository's gitignored ``node_modules``); otherwise skipped
with the reason. Nothing is downloaded. Each frontend is tested: the one ComfyUI's requirements install, and
every folder in ``COMFYUI_FRONTEND_ROOTS`` (os.pathsep-separated; ComfyUI's ``--front-end-root``, e.g. the
``comfyui_frontend_package/static`` folder of a newer comfyui-frontend-package wheel).

The flow (tests/browser/repaint_flow.mjs): load the repaint workflow, pick a source in Load Audio, drag across
the waveform, type in a widget, play the selection, queue, then check ComfyUI's player, our per-item waveform
with the highlighted edited region, and A/B against the source. Screenshots go to ``output/browser/`` (ignored
by git).
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import subprocess

import pytest

from devtools.comfy_harness import PACK_FOLDER, ROOT, make_comfy_tree, running_comfyui

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
NODE = shutil.which("node")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
NODE_MODULES = os.environ.get("PLAYWRIGHT_NODE_MODULES") or os.path.join(ROOT, "node_modules")
SHOTS = os.path.join(ROOT, "output", "browser")
WORKFLOW = os.path.join(ROOT, "workflows", "acestep15_repaint.json")
SONG = "acestep_browser_song.flac"  # a 30 s source with a shape (quiet intro, loud middle) picked in the browser
SONG_SECONDS, SONG_RATE = 30.0, 44100
FRAME = 0.04


def _missing() -> str | None:
    if not (COMFYUI_DIR and os.path.isfile(os.path.join(COMFYUI_DIR, "main.py"))):
        return "set COMFYUI_DIR to a ComfyUI checkout (the folder with main.py) to run the browser test"
    if NODE is None:
        return "Node.js (`node`) is not installed"
    if CHROMIUM is None:
        return "Chromium is not installed (Debian package `chromium`, or set CHROMIUM)"
    if not os.path.isfile(os.path.join(NODE_MODULES, "playwright-core", "package.json")):
        return (f"playwright-core not found in {NODE_MODULES} (npm install playwright-core there, or set "
                "PLAYWRIGHT_NODE_MODULES to the node_modules folder holding it)")
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
FRONTENDS = ["default"] + [p for p in os.environ.get("COMFYUI_FRONTEND_ROOTS", "").split(os.pathsep) if p]


def _song():
    import torch

    t = torch.arange(int(SONG_SECONDS * SONG_RATE)) / SONG_RATE
    envelope = 0.15 + 0.75 * torch.sin(torch.pi * t / SONG_SECONDS) ** 2 * (0.6 + 0.4 * torch.sin(2 * torch.pi * t))
    tone = torch.sin(2 * torch.pi * 220 * t) * envelope
    return torch.stack([tone, 0.8 * tone]).float()


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory):
    from acestep_core.audio import save_audio

    frontend = request.param
    base = str(tmp_path_factory.mktemp("comfyui_browser"))
    dirs = make_comfy_tree(base)
    save_audio(os.path.join(dirs["input"], SONG), _song(), SONG_RATE)
    settings = os.path.join(base, "user", "default")
    os.makedirs(settings)
    with open(os.path.join(settings, "comfy.settings.json"), "w") as f:
        json.dump({"Comfy.TutorialCompleted": True}, f)  # no template browser over the canvas on first start
    extra = [] if frontend == "default" else ["--front-end-root", frontend]
    with running_comfyui(COMFYUI_DIR, base, extra) as (url, _, log_path):
        tag = "default" if frontend == "default" else "root-" + os.path.basename(os.path.dirname(
            os.path.dirname(frontend.rstrip("/")))) or "custom"
        yield url, tag, log_path


@pytest.fixture(scope="module")
def flow(server):
    url, tag, log_path = server
    os.makedirs(SHOTS, exist_ok=True)
    env = dict(os.environ, PLAYWRIGHT_NODE_MODULES=NODE_MODULES, CHROMIUM=CHROMIUM)
    done = subprocess.run([NODE, os.path.join(ROOT, "tests", "browser", "repaint_flow.mjs"), url, WORKFLOW, SONG,
                           SHOTS, tag], capture_output=True, text=True, timeout=420, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    ours = [line for line in out["console"] if "acestep" in line.lower() or "internal module" in line]
    print(f"\nfrontend {out.get('frontend')} ({tag}); screenshots: {SHOTS}/{tag}-*.png; console lines about us: "
          f"{ours}")
    assert "error" not in out, out["error"] + "\n" + "\n".join(out["console"][-30:]) + "\n" + \
        open(log_path).read()[-3000:]
    return out


def _on_grid(seconds: float) -> bool:
    return abs(seconds / FRAME - round(seconds / FRAME)) < 1e-6


def test_the_source_waveform_appears_when_a_file_is_picked(flow):
    before = flow["before"]
    assert before["file"] == SONG and before["data"]["state"] == "ready"
    assert abs(float(before["data"]["seconds"]) - SONG_SECONDS) < 0.01
    assert (before["start"], before["end"]) == (10.0, 20.0)  # the workflow's values, shown as the selection
    assert before["data"]["selStart"] == "10" and before["data"]["selEnd"] == "20"


def test_dragging_sets_start_and_end_on_the_frame_grid(flow):
    width = flow["before"]["rect"]["width"]
    px = SONG_SECONDS / width  # seconds per pixel: the tolerance of a mouse position
    assert flow["dragToEnd"]["end"] == -1  # dragged past the end: -1, the node's "end of the song"
    assert abs(flow["dragToEnd"]["start"] - 0.6 * SONG_SECONDS) <= px + FRAME
    d = flow["dragged"]
    assert abs(d["start"] - 0.25 * SONG_SECONDS) <= px + FRAME and abs(d["end"] - 0.5 * SONG_SECONDS) <= px + FRAME
    e = flow["edgeMoved"]  # the end edge grabbed and moved; the start stays
    assert e["start"] == d["start"] and abs(e["end"] - 0.6 * SONG_SECONDS) <= px + FRAME
    for state in (d, e):
        assert _on_grid(state["start"]) and _on_grid(state["end"]), state
        assert state["data"]["valid"] == "1" and float(state["data"]["selStart"]) == state["start"]
    assert flow["typed"] == {"seen": "2", "restored": str(e["start"])}


def test_the_selection_plays_in_the_browser(flow):
    assert flow["playing"] == "1"


def test_saved_workflow_and_prompt_keep_their_format(flow):
    with open(WORKFLOW, encoding="utf-8") as f:
        original = {n["type"]: n.get("widgets_values") for n in json.load(f)["nodes"]}
    saved = flow["serialized"]
    e = flow["edgeMoved"]
    for node_type, values in original.items():
        if node_type == "AceStep15_RepaintLatent":
            assert saved[node_type] == [e["start"], e["end"], *values[2:]]
        elif node_type == "LoadAudio":
            assert saved[node_type][0] == SONG  # (how many UI entries follow is the frontend's own: 2 or 3)
        elif node_type == "AceStep15_Sampler":
            assert len(saved[node_type]) == len(values)  # the seed may be randomised after queueing
        else:
            assert saved[node_type] == values, node_type
    prompt = {v["class_type"]: v["inputs"] for v in flow["prompt"].values()}
    # Only the player's own empty entry, as the frontend sends for its native savers (the server ignores it).
    assert set(prompt["AceStep15_SaveAudio"]) - {"audio", "filename_prefix", "format", "quality"} <= {"audioUI"}
    assert prompt["AceStep15_SaveAudio"].get("audioUI", "") == ""
    assert not [k for k in prompt["AceStep15_RepaintLatent"] if k.startswith("acestep")]
    assert prompt["AceStep15_RepaintLatent"]["start"] == e["start"]
    # Collapsed advanced inputs are still saved and sent (hidden on the canvas only).
    assert {"apg_momentum", "timesteps", "retake_variance"} <= set(prompt["AceStep15_Sampler"])
    assert {"tile_frames", "fade_in", "fade_out"} <= set(prompt["AceStep15_VAEDecode"])


def test_the_result_has_comfyuis_player_our_waveform_and_the_edited_region(flow):
    r = flow["result"]
    e = flow["edgeMoved"]
    assert r["nativeVisible"] and "/view?" in r["nativeSrc"] and "ACE-Step_repaint" in r["nativeSrc"]
    assert r["data"]["items"] == "1" and r["peaks"] > 0
    assert math.isclose(r["seconds"], SONG_SECONDS, abs_tol=0.05)
    assert float(r["data"]["regionStart"]) == e["start"] and float(r["data"]["regionEnd"]) == e["end"]
    assert "type=temp" in r["sourceSrc"] and "ACE-Step_source" in r["sourceSrc"]
    inside, outside = flow["pixels"]["inside"], flow["pixels"]["outside"]
    assert inside[0] > inside[2] + 40, inside  # orange-tinted inside the edited region
    assert abs(outside[0] - outside[2]) < 30, outside  # the plain background outside it


def test_after_a_run_nodes_do_not_overlap_and_texts_name_no_absolute_path(flow):
    """The info texts and players a run adds fit the room the layout left for them; the loader names its files
    inside the models folder; the results' time label sits under the waveform, not on it."""
    boxes = flow["afterRun"]["boxes"]
    overlaps = [(a["title"], b["title"]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
                if _intersect(a["bounds"], b["bounds"])]
    assert not overlaps, overlaps
    texts = flow["afterRun"]["texts"]
    assert any("DiT: diffusion_models/" in t for t in texts), texts
    assert not [t for t in texts if "custom_nodes" in t or "/models/" in t or os.path.isabs(t.split(": ")[-1])], texts
    label = flow["afterRun"]["timeLabel"]
    assert label["labelTop"] >= label["canvasBottom"] - 0.5 and " / 0:30.00" in label["text"], label


def test_ab_plays_the_source_at_the_same_moment(flow):
    ab = flow["ab"]
    assert ab["side"] == "B" and not ab["sourcePaused"] and ab["resultPaused"]


def test_no_internal_module_warning_and_no_error_from_the_extension(flow):
    bad = [line for line in flow["console"] if "internal module" in line
           or (PACK_FOLDER in line and line.split(":")[0] in ("error", "pageerror"))
           or line.startswith("pageerror") and "acestep" in line.lower()]
    assert not bad, bad
    external = [u for u in flow["requests"] if PACK_FOLDER in u and not u.startswith("http://127.0.0.1")]
    assert not external, external


# ------------------------------------------------------------------------------ every workflow as a user opens it

WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))
COMMON_INPUTS = {  # what a user sets on every run: on screen without opening anything
    "AceStep15_TextEncode": ("caption", "lyrics"), "AceStep15_EmptyLatent": ("duration",),
    "AceStep15_Sampler": ("seed", "steps"), "AceStep15_LMPlanner": ("seed", "mode"),
}
FILE_PATH = re.compile(r"(?<![\w.])/(?:tmp|home|root|usr|work|var|mnt|opt|srv|Users)/|\b[A-Za-z]:\\")
COMBO_ROOM = 70  # px a combo row needs besides its label and value (margins, arrows, the gap between them)


@pytest.fixture(scope="module")
def opened(server):
    url, tag, log_path = server
    os.makedirs(SHOTS, exist_ok=True)
    env = dict(os.environ, PLAYWRIGHT_NODE_MODULES=NODE_MODULES, CHROMIUM=CHROMIUM)
    done = subprocess.run([NODE, os.path.join(ROOT, "tests", "browser", "workflows_check.mjs"), url, SHOTS, tag,
                           SONG, *WORKFLOWS], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nfrontend {out.get('frontend')} ({tag}); screenshots: {SHOTS}/{tag}-acestep15_*.png")
    assert "error" not in out, out["error"] + "\n" + "\n".join(out["console"][-30:]) + "\n" + \
        open(log_path).read()[-3000:]
    assert sorted(out["workflows"]) == sorted(os.path.basename(p)[:-5] for p in WORKFLOWS)
    out["base"] = os.path.dirname(log_path)
    return out


def _intersect(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _inside(inner, outer) -> bool:
    return (inner[0] >= outer[0] and inner[1] >= outer[1] and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


def test_no_two_nodes_overlap(opened):
    overlaps = []
    for name, w in opened["workflows"].items():
        nodes = w["nodes"]
        for i, a in enumerate(nodes):
            overlaps += [(name, a["title"], b["title"]) for b in nodes[i + 1:] if _intersect(a["bounds"], b["bounds"])]
    assert not overlaps, overlaps


def test_saved_sizes_are_what_the_frontend_draws(opened):
    """A node the frontend has to grow on load is one the layout did not plan for (the overlaps of old)."""
    grown = [(name, n["title"], n["size"], [round(v) for v in n["needs"]])
             for name, w in opened["workflows"].items() for n in w["nodes"]
             if n["needs"][0] > n["size"][0] + 0.5 or n["needs"][1] > n["size"][1] + 0.5]
    assert not grown, grown


def test_the_whole_graph_is_on_screen_at_the_saved_view(opened):
    """In a 1600 x 1000 window every node lies inside the canvas panel and clear of the frontend's minimap."""
    off = []
    for name, w in opened["workflows"].items():
        assert w["panel"] is not None, name
        for n in w["nodes"]:
            if not _inside(n["screen"], w["panel"]) or (w["minimap"] and _intersect(n["screen"], w["minimap"])):
                off.append((name, n["title"], [round(v) for v in n["screen"]]))
    assert not off, (off, opened["workflows"][off[0][0]]["panel"], opened["workflows"][off[0][0]]["minimap"])


def test_advanced_inputs_start_collapsed_and_the_common_ones_show(opened):
    shown, missing = [], []
    for name, w in opened["workflows"].items():
        for n in w["nodes"]:
            if not n["type"].startswith("AceStep15_"):
                continue
            shown += [(name, n["type"], x["name"]) for x in n["widgets"] if x["advanced"] and x["visible"]]
            visible = {x["name"] for x in n["widgets"] if x["visible"]}
            linked = {x["name"] for x in n["widgets"] if x["linked"]}  # fed by a link: shown as the input
            missing += [(name, n["type"], c) for c in COMMON_INPUTS.get(n["type"], ())
                        if c not in visible and c not in linked]
            if any(x["advanced"] for x in n["widgets"]):
                assert n["showAdvanced"] is False, (name, n["type"], n["showAdvanced"])
    assert not shown, shown
    assert not missing, missing


def test_no_absolute_path_and_no_cut_file_name_on_any_node(opened):
    base = opened["base"]
    texts = [(name, n["title"], x["name"], v) for name, w in opened["workflows"].items() for n in w["nodes"]
             for x in n["widgets"] for v in (x["value"], x["text"]) if isinstance(v, str)]
    texts += [("dom", "", "", t) for w in opened["workflows"].values() for t in w["nodeTexts"]]
    assert texts
    absolute = [t for t in texts if base in t[3] or "custom_nodes" in t[3] or FILE_PATH.search(t[3])]
    assert not absolute, absolute
    cut = [(name, n["title"], x["name"], x["value"]) for name, w in opened["workflows"].items() for n in w["nodes"]
           for x in n["widgets"] if x["type"] == "combo" and x["visible"]
           and x["labelPx"] + x["valuePx"] + COMBO_ROOM > n["size"][0]]
    assert not cut, cut


def test_an_error_reads_as_the_pack_and_its_message(opened):
    toast, details = opened["toast"], opened["errorDetails"]
    assert "custom_nodes" not in toast and opened["base"] not in toast, toast
    # 1.43 heads the toast with the exception's type and message; 1.58 names the node and keeps both for details.
    assert "ACE-Step.InputError: repaint window=(400.0" in toast or "Repaint (from audio) failed" in toast, toast
    assert "repaint window=(400.0, " in details and "is not allowed" in details, details
    # Wherever the details name the error (its heading, "Exception Type", the traceback's last line), they name it
    # by the pack, not by the pack folder's path (the traceback's file lines are ComfyUI's report and stay).
    assert set(re.findall(r"(\S*InputError)(?=:|\s*$)", details, re.M)) == {"ACE-Step.InputError"}, details
