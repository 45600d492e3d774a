"""Every workflow in workflows/: valid UI-format JSON, only nodes of this pack or core ComfyUI, every required
input filled, a Note explaining it, and the graph runs through the node functions in topological order on tiny
checkpoints, writing real audio. Core audio nodes are played by small stand-ins with ComfyUI's behaviour (PyAV
load into {waveform [1, C, S], sample_rate}; FLAC/MP3/Opus files named {prefix}_{counter:05}_.ext)."""
import glob
import inspect
import json
import os

import pytest
import torch

from acestep_core.audio import load_audio, save_audio
from acestep_core.constants import DCW_THINK_HIGH_SCALER, DCW_THINK_MODE, DCW_THINK_SCALER
from devtools.comfy_harness import (
    CORE_WIDGETS, NOTE_TYPES, ROOT, run_node, topological_order, ui_to_api, widget_names,
)

WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))
TASKS = {"text2music_turbo", "text2music_sft_apg", "timbre_reference", "cover", "repaint", "extend", "extract",
         "lego", "complete", "native_audio_chain", "lora_stack", "simple_mode", "understand_cover"}


def test_a_workflow_per_task():
    names = {os.path.basename(p)[len("acestep15_"):-len(".json")] for p in WORKFLOWS}
    assert names == TASKS


def _core_node(node_type: str, inputs: dict, dirs: dict) -> tuple:
    if node_type == "LoadAudio":
        wav, rate = load_audio(os.path.join(dirs["input"], inputs["audio"]))
        return ({"waveform": wav[None], "sample_rate": rate},), None
    if node_type in ("SaveAudio", "SaveAudioMP3", "SaveAudioOpus", "PreviewAudio"):
        ext = {"SaveAudioMP3": "mp3", "SaveAudioOpus": "opus"}.get(node_type, "flac")
        folder = dirs["temp"] if node_type == "PreviewAudio" else dirs["output"]
        prefix = inputs.get("filename_prefix", "preview")
        files = []
        for i, item in enumerate(inputs["audio"]["waveform"]):
            path = os.path.join(folder, f"{prefix}_{i + 1:05}_.{ext}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_audio(path, item, inputs["audio"]["sample_rate"])
            files.append(path)
        return (), files
    raise AssertionError(f"no stand-in for core node {node_type}")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_workflow_is_valid_and_runs(comfy, path):
    nodes, dirs, _ = comfy
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    infos = {node_id: cls.GET_NODE_INFO_V1() for node_id, cls in nodes.items()}

    # Structure: known nodes, consistent links, a note, every required input linked or set.
    types = [n["type"] for n in workflow["nodes"]]
    assert set(types) <= set(infos) | set(CORE_WIDGETS), set(types) - set(infos) - set(CORE_WIDGETS)
    assert any(t in NOTE_TYPES and len(n["widgets_values"][0]) > 100 for t, n in zip(types, workflow["nodes"]))
    by_id = {n["id"]: n for n in workflow["nodes"]}
    assert len(by_id) == len(workflow["nodes"]) and workflow["last_node_id"] >= max(by_id)
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        assert link_id in by_id[src]["outputs"][src_slot]["links"]
        assert by_id[dst]["inputs"][dst_slot]["link"] == link_id and by_id[dst]["inputs"][dst_slot]["type"] == kind
        assert by_id[src]["outputs"][src_slot]["type"] == kind
    prompt = ui_to_api(workflow, infos)
    for node_id, node in prompt.items():
        info = infos.get(node["class_type"])
        if info is None:
            assert "audio" in node["inputs"] or node["class_type"] == "LoadAudio"
            continue
        n_widgets = len(by_id[int(node_id)]["widgets_values"])
        assert n_widgets == len(widget_names(info)), f"{node['class_type']}: widgets_values do not match the schema"
        for name, spec in info["input"]["required"].items():
            assert name in node["inputs"], f"{node['class_type']} (node {node_id}): required input {name!r} unset"
            value = node["inputs"][name]
            if isinstance(spec[0], list) or spec[0] == "COMBO":
                options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
                assert value in options, f"{node['class_type']}.{name}={value!r} not among the options"
        validate = nodes[node["class_type"]].validate_inputs
        if "validate_inputs" in vars(nodes[node["class_type"]]):  # ComfyUI passes the inputs it names
            params = inspect.signature(validate).parameters  # (None for a linked one: known when the node runs)
            assert validate(**{k: None if isinstance(v, list) else v for k, v in node["inputs"].items()
                               if k in params}) is True

    # Run in topological order, each node with every widget's value as the frontend sends it (run_node).
    results, written, sampler_notes = {}, [], []
    for node_id in topological_order(prompt):
        node = prompt[node_id]
        inputs = {k: (results[v[0]][v[1]] if isinstance(v, list) else v) for k, v in node["inputs"].items()}
        if node["class_type"] in nodes:
            out = run_node(nodes[node["class_type"]], {"prompt": prompt, "extra_pnginfo": {"workflow": workflow},
                                                       "unique_id": node_id}, **inputs)
            results[node_id] = out.args or ()
            if node["class_type"] == "AceStep15_Sampler":
                sampler_notes.append(out.ui["text"][0])
            for entry in (out.ui or {}).get("audio", []):
                base = dirs["temp"] if entry["type"] == "temp" else dirs["output"]
                written.append(os.path.join(base, entry["subfolder"], entry["filename"]))
        else:
            results[node_id], files = _core_node(node["class_type"], inputs, dirs)
            written += files or []
    assert written
    # The README's promise: after the LM thought, the Sampler's DCW widgets at their defaults take the app's think
    # values (a default sent as if set would keep the variant's).
    think_dcw = f"DCW {DCW_THINK_MODE} {DCW_THINK_SCALER:g}/{DCW_THINK_HIGH_SCALER:g}"
    thought = [note for note in sampler_notes if "\nLM think" in note]
    assert all(think_dcw in note for note in thought), thought
    if os.path.basename(path) == "acestep15_text2music_turbo.json":
        assert thought  # the LM planned in think mode here
    for file in written:
        wav, rate = load_audio(file)
        assert wav.shape[0] == 2 and wav.shape[1] > rate * 5 and torch.isfinite(wav).all()


TITLE = 30  # LiteGraph draws a node's title bar above its pos


def _boxes(workflow: dict) -> list[tuple[str, list[float]]]:
    return [(n.get("title") or n["type"], [n["pos"][0], n["pos"][1] - TITLE, n["size"][0], n["size"][1] + TITLE])
            for n in workflow["nodes"]]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_saved_layout_has_no_overlapping_nodes(path):
    """The saved boxes (title bar included) are apart; tests/test_browser.py checks them against what the
    frontends actually draw."""
    with open(path, encoding="utf-8") as f:
        boxes = _boxes(json.load(f))
    overlaps = [(a, b) for i, (a, p) in enumerate(boxes) for b, q in boxes[i + 1:]
                if p[0] < q[0] + q[2] and q[0] < p[0] + p[2] and p[1] < q[1] + q[3] and q[1] < p[1] + p[3]]
    assert not overlaps, overlaps


def test_each_workflow_has_its_own_example_lyrics():
    """Sung lyrics are never copied from one workflow to another (a cover, a repaint and an extension each get
    text that fits their task); instrumental and empty lyrics may repeat."""
    seen = {}
    for path in WORKFLOWS:
        with open(path, encoding="utf-8") as f:
            for node in json.load(f)["nodes"]:
                linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
                if node["type"] == "AceStep15_TextEncode" and "lyrics" not in linked:
                    lyrics = node["widgets_values"][1]
                    if lyrics.strip() and lyrics.strip() != "[Instrumental]":
                        seen.setdefault(lyrics, []).append(os.path.basename(path))
    assert seen and all(len(names) == 1 for names in seen.values()), {k[:40]: v for k, v in seen.items()}
