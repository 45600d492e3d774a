"""Optional integration test against a real ComfyUI server.

Skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout (the folder with ``main.py``). The server runs with
``COMFYUI_PYTHON`` (default: this interpreter; it needs ComfyUI's requirements and this pack's) and the extra
arguments in ``COMFYUI_ARGS`` (default ``--cpu``), over a temporary ``--base-directory`` holding tiny random
models, the workflows' placeholder input audio and ``custom_nodes/ComfyUI-ACE-Step-1.5`` (a symlink to this
repository), so the ComfyUI checkout itself is not touched. Every workflow in ``workflows/`` is converted to an
API prompt with the server's own ``/object_info``, queued through ``POST /prompt`` and must finish with
decodable audio. The LoRA node lists the tree's ``models/loras``, a LoRA stack changes the song and ComfyUI's
model manager restores the base (plus ``devtools/comfy_lora_check.py``, in ComfyUI's Python, at the weight
level). HTTP uses only the standard library.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/ComfyUI/venv/bin/python pytest tests/test_comfyui_server.py
"""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from devtools.comfy_harness import NOTE_TYPES, PACK_FOLDER, ROOT, running_comfyui, ui_to_api

COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
pytestmark = pytest.mark.skipif(
    not (COMFYUI_DIR and os.path.isfile(os.path.join(COMFYUI_DIR, "main.py"))),
    reason="real-ComfyUI integration test: set COMFYUI_DIR to a ComfyUI checkout (the folder with main.py), "
           "and COMFYUI_PYTHON to its Python if that is not this one")

PREFIX = "AceStep15_"
CATEGORY = "audio/ACE-Step 1.5"
START_TIMEOUT = 120.0
RUN_TIMEOUT = 300.0
WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))
AUDIO_EXTENSIONS = (".flac", ".mp3", ".opus", ".ogg", ".wav")
TEXT2MUSIC = os.path.join(ROOT, "workflows", "acestep15_text2music_turbo.json")


def _expected_node_ids() -> set[str]:
    """The 18 nodes of the pack, plus every AceStep15_ node a workflow uses or a node module defines."""
    ids = {PREFIX + n for n in ("ModelLoader", "TextEncode", "TimbreReference", "EmptyLatent", "CoverLatent",
                                "RepaintLatent", "ExtendLatent", "StemLatent", "Sampler", "VAEDecode", "VAEEncode",
                                "SaveAudio", "PreviewAudio", "LoraLoader", "LMLoader", "LMPlanner", "SimpleMode",
                                "UnderstandAudio")}
    for path in WORKFLOWS:
        with open(path, encoding="utf-8") as f:
            ids |= {n["type"] for n in json.load(f)["nodes"] if n["type"].startswith(PREFIX)}
    for path in glob.glob(os.path.join(ROOT, "nodes", "*.py")):
        with open(path, encoding="utf-8") as f:
            ids |= {PREFIX + m for m in re.findall(r'node_id\s*=\s*PREFIX\s*\+\s*"(\w+)"', f.read())}
    return ids


# ------------------------------------------------------------------------------------------------ HTTP helpers

class Server:
    def __init__(self, url: str, proc: subprocess.Popen, log_path: str, dirs: dict, start_seconds: float):
        self.url, self.proc, self.log_path, self.dirs, self.start_seconds = url, proc, log_path, dirs, start_seconds
        self._object_info = None

    def request(self, method: str, path: str, body=None, timeout: float = 30.0) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def get_json(self, path: str):
        status, body = self.request("GET", path)
        assert status == 200, f"GET {path}: HTTP {status}: {body[:2000]!r}\n{self.log_tail()}"
        return json.loads(body)

    def object_info(self) -> dict:
        if self._object_info is None:
            self._object_info = self.get_json("/object_info")
        return self._object_info

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def log_tail(self, chars: int = 6000) -> str:
        return "---- server log (tail) ----\n" + self.log()[-chars:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from devtools.comfy_harness import make_comfy_tree

    base = str(tmp_path_factory.mktemp("comfyui_base"))
    t_tree = time.monotonic()
    dirs = make_comfy_tree(base)
    t_tree = time.monotonic() - t_tree
    t0 = time.monotonic()
    with running_comfyui(COMFYUI_DIR, base, start_timeout=START_TIMEOUT) as (url, proc, log_path):
        srv = Server(url, proc, log_path, dirs, time.monotonic() - t0)
        print(f"\ntiny model tree in {t_tree:.1f} s; ComfyUI up in {srv.start_seconds:.1f} s at {srv.url} "
              f"(log: {log_path})")
        yield srv


# ------------------------------------------------------------------------------------------------ registration

def test_pack_imports_and_registers_every_node(server):
    log = server.log()
    failed = [line for line in log.splitlines()
              if PACK_FOLDER in line and ("IMPORT FAILED" in line or "Cannot import" in line)]
    assert not failed, "\n".join(failed) + "\n" + server.log_tail()
    assert "Error while calling comfy_entrypoint" not in log, server.log_tail()

    info = server.object_info()
    missing = _expected_node_ids() - set(info)
    assert not missing, f"not in /object_info: {sorted(missing)}\n{server.log_tail()}"
    ours = {k: v for k, v in info.items() if k.startswith(PREFIX)}
    assert set(ours) == _expected_node_ids()
    for node_id, entry in ours.items():
        assert entry["category"] == CATEGORY, (node_id, entry["category"])
        assert entry["python_module"] == f"custom_nodes.{PACK_FOLDER}", (node_id, entry["python_module"])
        assert entry["display_name"].startswith("ACE-Step 1.5 "), (node_id, entry["display_name"])


def test_loader_lists_the_tiny_models(server):
    spec = server.object_info()[PREFIX + "ModelLoader"]["input"]["required"]

    def options(name):
        kind, opts = spec[name][0], (spec[name][1] if len(spec[name]) > 1 else {})
        return kind if isinstance(kind, list) else opts["options"]

    assert options("model") == [
        "acestep/acestep-v15-base", "acestep/acestep-v15-sft", "acestep/acestep-v15-turbo",
        "diffusion_models/acestep_v1.5_turbo.safetensors", "checkpoints/ace_step_1.5_turbo_aio.safetensors"]
    assert options("text_encoder") == ["auto", "qwen_0.6b_ace15.safetensors"]  # not the LM file qwen_1.7b_ace15
    assert options("vae") == ["auto", "ace_1.5_vae.safetensors"]


def test_workflow_templates_are_served(server):
    templates = server.get_json("/api/workflow_templates")  # {custom_nodes folder name: [workflow names]}
    expected = sorted(os.path.splitext(os.path.basename(p))[0] for p in WORKFLOWS)
    assert sorted(templates.get(PACK_FOLDER, [])) == expected, templates
    name = os.path.basename(WORKFLOWS[0])
    workflow = server.get_json(f"/api/workflow_templates/{urllib.parse.quote(PACK_FOLDER)}/{name}")
    with open(WORKFLOWS[0], encoding="utf-8") as f:
        assert workflow == json.load(f)


def test_web_extension_is_served(server):
    scripts = server.get_json("/extensions")
    path = f"/extensions/{PACK_FOLDER}/acestep.js"
    assert path in scripts, scripts
    # Served once: a `web` entry in pyproject's [tool.comfy] would serve it again under the project name.
    assert [s for s in scripts if s.endswith("/acestep.js")] == [path], scripts
    status, body = server.request("GET", urllib.parse.quote(path))
    assert status == 200 and body, status


# ------------------------------------------------------------------------------------------------ workflows

def _prompt(server, path: str) -> tuple[dict, dict]:
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    info = server.object_info()
    types = {n["type"] for n in workflow["nodes"] if n["type"] not in NOTE_TYPES}
    unknown = types - set(info)
    assert not unknown, f"{os.path.basename(path)}: node types the server does not know: {sorted(unknown)}"
    return ui_to_api(workflow, {t: info[t] for t in types}), workflow


def _queue(server, prompt: dict, workflow: dict) -> tuple[int, dict]:
    body = {"prompt": prompt, "client_id": uuid.uuid4().hex, "extra_data": {"extra_pnginfo": {"workflow": workflow}}}
    status, raw = server.request("POST", "/prompt", body)
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, {"raw": raw.decode(errors="replace")}


def _wait(server, prompt_id: str) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < RUN_TIMEOUT:
        history = server.get_json(f"/history/{prompt_id}")
        entry = history.get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"].get("status_str") in ("success", "error")):
            return entry
        time.sleep(0.5)
    pytest.fail(f"prompt {prompt_id} not done within {RUN_TIMEOUT:.0f} s\n{server.log_tail()}")


def _audio_outputs(outputs: dict) -> list[dict]:
    found = []
    for node_outputs in outputs.values():
        for entries in node_outputs.values():
            if isinstance(entries, list):
                found += [e for e in entries if isinstance(e, dict) and "filename" in e
                          and e["filename"].lower().endswith(AUDIO_EXTENSIONS)]
    return found


def _download_and_check(server, item: dict, tmp_path) -> None:
    """GET /view for one {filename, subfolder, type} output entry; the file must be non-empty, decodable audio."""
    query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
    code, data = server.request("GET", "/view?" + query, timeout=60)
    assert code == 200 and data, f"GET /view?{query}: HTTP {code}, {len(data)} bytes"
    _check_audio_file(data, item["filename"], tmp_path)


def _check_audio_file(data: bytes, name: str, tmp_path) -> None:
    ext = os.path.splitext(name)[1].lower()
    magic = {".flac": (b"fLaC",), ".opus": (b"OggS",), ".ogg": (b"OggS",), ".wav": (b"RIFF",),
             ".mp3": (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")}[ext]
    assert data.startswith(magic), f"{name}: starts with {data[:8]!r}, not an {ext} file"
    file = tmp_path / f"download{ext}"
    file.write_bytes(data)
    try:
        from acestep_core.audio import load_audio
    except ImportError:  # no PyAV/torch here: the header check above has to do
        return
    wav, rate = load_audio(str(file))
    assert wav.shape[-1] > 0 and rate > 0, (name, tuple(wav.shape), rate)
    import torch

    assert torch.isfinite(wav).all(), name


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_workflow_runs_on_the_server(server, path, tmp_path):
    prompt, workflow = _prompt(server, path)
    t0 = time.monotonic()
    status, reply = _queue(server, prompt, workflow)
    assert status == 200, f"POST /prompt: HTTP {status}: {json.dumps(reply, indent=1)[:4000]}"
    assert not reply.get("node_errors"), reply["node_errors"]
    entry = _wait(server, reply["prompt_id"])
    seconds = time.monotonic() - t0
    print(f"\n{os.path.basename(path)}: {entry['status']['status_str']} in {seconds:.1f} s")
    errors = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "success", (
        json.dumps(errors, indent=1)[:6000] + "\n" + server.log_tail())

    audio = _audio_outputs(entry["outputs"])
    assert audio, f"no audio in the outputs: {entry['outputs']}"
    for item in audio:
        _download_and_check(server, item, tmp_path)


def _defaults(server, node_type: str, **inputs) -> dict:
    """An API-prompt node with every widget at its /object_info default, then ``inputs`` on top."""
    info = server.object_info()[node_type]
    values = {}
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            opts = (spec[1] if len(spec) > 1 else {}) or {}
            if "default" in opts:
                values[name] = opts["default"]
            elif isinstance(spec[0], list) and spec[0]:
                values[name] = spec[0][0]
    return {"class_type": node_type, "inputs": {**values, **inputs}}


def test_encode_decode_and_preview_run_on_the_server(server, tmp_path):
    """The nodes no workflow uses: VAE Encode (audio → latent) and Preview Audio (a temp file)."""
    from devtools.comfy_harness import SOURCE_FILE

    prompt = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": SOURCE_FILE}},
        "2": _defaults(server, PREFIX + "ModelLoader", model="diffusion_models/acestep_v1.5_turbo.safetensors"),
        "3": _defaults(server, PREFIX + "VAEEncode", model=["2", 0], audio=["1", 0]),
        "4": _defaults(server, PREFIX + "VAEDecode", model=["2", 0], latent=["3", 0]),
        "5": _defaults(server, PREFIX + "PreviewAudio", audio=["4", 0]),
    }
    status, reply = _queue(server, prompt, {})
    assert status == 200 and not reply.get("node_errors"), f"HTTP {status}: {json.dumps(reply, indent=1)[:4000]}"
    entry = _wait(server, reply["prompt_id"])
    errors = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "success", json.dumps(errors, indent=1)[:6000] + "\n" + server.log_tail()
    audio = _audio_outputs(entry["outputs"])
    assert [a["type"] for a in audio] == ["temp"], entry["outputs"]
    _download_and_check(server, audio[0], tmp_path)


def test_an_execution_error_is_named_by_the_pack_not_its_folder(server):
    """ComfyUI heads its error toast and panel with the exception's module and class; a pack's modules are named
    by its folder's absolute path, so our errors report the module "ACE-Step" instead."""
    prompt, workflow = _prompt(server, os.path.join(ROOT, "workflows", "acestep15_repaint.json"))
    (repaint,) = [v for v in prompt.values() if v["class_type"] == PREFIX + "RepaintLatent"]
    repaint["inputs"].update(start=400.0, end=-1.0)  # past the end of the 40-s source: fails when it runs
    status, reply = _queue(server, prompt, workflow)
    assert status == 200 and not reply.get("node_errors"), f"HTTP {status}: {json.dumps(reply, indent=1)[:4000]}"
    entry = _wait(server, reply["prompt_id"])
    (error,) = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    assert error["node_type"] == PREFIX + "RepaintLatent", error
    assert error["exception_type"] == "ACE-Step.InputError", error["exception_type"]
    assert error["exception_message"].startswith("repaint window=(400.0, "), error["exception_message"]
    assert "custom_nodes" not in error["exception_type"] + error["exception_message"]


def _rejected(server, node_type: str, name: str, value) -> tuple[str, list[dict]]:
    """Queue the text2music workflow with one widget of one node changed; it must fail validation (HTTP 400).
    Returns the node's id and its errors."""
    prompt, workflow = _prompt(server, TEXT2MUSIC)
    matches = [k for k, v in prompt.items() if v["class_type"] == node_type]
    assert len(matches) == 1, matches
    prompt[matches[0]]["inputs"][name] = value
    status, reply = _queue(server, prompt, workflow)
    assert status == 400, f"{node_type}.{name}={value!r} was accepted: HTTP {status}: {reply}"
    node_errors = reply.get("node_errors", {})
    assert matches[0] in node_errors, reply
    return matches[0], node_errors[matches[0]]["errors"]


def test_invalid_timesteps_are_rejected_at_validation(server):
    _, errors = _rejected(server, PREFIX + "Sampler", "timesteps", "1, abc")
    assert errors and all(e["type"] == "custom_validation_failed" for e in errors), errors
    assert any("timesteps='1, abc' is not allowed" in e["details"] for e in errors), errors


@pytest.mark.parametrize("node, name, value, error_type", [
    ("Sampler", "steps", 999, "value_bigger_than_max"),
    ("Sampler", "shift", -1.0, "value_smaller_than_min"),
    ("Sampler", "guidance_method", "bogus", "value_not_in_list"),
    ("EmptyLatent", "batch_size", 0, "value_smaller_than_min"),
    ("TextEncode", "language", "xx", "value_not_in_list"),
    ("TextEncode", "bpm", 5, "custom_validation_failed"),
    ("SaveAudio", "format", "xyz", "custom_validation_failed"),
])
def test_bad_widget_values_are_rejected_at_validation(server, node, name, value, error_type):
    """ComfyUI skips its own min/max/option checks for every input a node's validate_inputs names (and for all
    inputs when it takes **kwargs): those the node names must be checked by the node, the others keep ComfyUI's."""
    _, errors = _rejected(server, PREFIX + node, name, value)
    assert {e["type"] for e in errors} == {error_type}, errors
    if error_type == "custom_validation_failed":  # reported once per input the node's validate_inputs names
        assert any(f"{name}=" in e["details"] for e in errors), errors
    else:
        assert [e["extra_info"]["input_name"] for e in errors] == [name], errors


# ------------------------------------------------------------------------------------------------ LoRAs

TURBO_FILE = "diffusion_models/acestep_v1.5_turbo.safetensors"


def test_lora_node_lists_the_loras_folder(server):
    from devtools.lora_fixtures import EXAMPLE_LOKR_FOLDER, EXAMPLE_LORA_FILE, EXAMPLE_PEFT_FOLDER

    spec = server.object_info()[PREFIX + "LoraLoader"]["input"]["required"]["lora_name"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
    assert options == sorted([EXAMPLE_LOKR_FOLDER, EXAMPLE_LORA_FILE, EXAMPLE_PEFT_FOLDER]), options


def _song(server, prefix: str, loras=()) -> dict:
    """A text2music prompt (float WAV out, so runs compare to the bit); ``loras`` stack LoRA nodes on the model."""
    prompt = {
        "1": _defaults(server, PREFIX + "ModelLoader", model=TURBO_FILE, dtype="fp32"),
        "2": _defaults(server, PREFIX + "TextEncode", caption="synth pop", lyrics="[Verse]\nla la"),
        "3": _defaults(server, PREFIX + "EmptyLatent", duration=10.0),
    }
    model = ["1", 0]
    for i, (name, strength) in enumerate(loras):
        prompt[str(10 + i)] = _defaults(server, PREFIX + "LoraLoader", model=model, lora_name=name, strength=strength)
        model = [str(10 + i), 0]
    prompt["4"] = _defaults(server, PREFIX + "Sampler", model=model, conditioning=["2", 0], latent=["3", 0], seed=11,
                            steps=3)
    prompt["5"] = _defaults(server, PREFIX + "VAEDecode", model=["1", 0], latent=["4", 0])
    prompt["6"] = _defaults(server, PREFIX + "SaveAudio", audio=["5", 0], filename_prefix=prefix, format="wav",
                            quality="float")
    return prompt


def _run_song(server, prompt: dict, tmp_path):
    """Queue, wait, download the WAV; returns (decoded audio, ids of the nodes ComfyUI served from its cache)."""
    from acestep_core.audio import load_audio

    status, reply = _queue(server, prompt, {})
    assert status == 200 and not reply.get("node_errors"), f"HTTP {status}: {json.dumps(reply, indent=1)[:4000]}"
    entry = _wait(server, reply["prompt_id"])
    errors = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "success", json.dumps(errors, indent=1)[:6000] + "\n" + server.log_tail()
    cached = [n for m in entry["status"].get("messages", []) if m[0] == "execution_cached" for n in m[1]["nodes"]]
    (item,) = _audio_outputs(entry["outputs"])
    code, data = server.request("GET", "/view?" + urllib.parse.urlencode(
        {k: item.get(k, "") for k in ("filename", "subfolder", "type")}), timeout=60)
    assert code == 200 and data.startswith(b"RIFF"), code
    path = tmp_path / item["filename"]
    path.write_bytes(data)
    return load_audio(str(path))[0], cached


def test_lora_changes_the_output_and_comfyui_restores_the_base(server, tmp_path):
    """Base, then two stacked LoRAs, then the base again: the LoRAs change the song, and the base run after them
    (really run: its sampler is not served from ComfyUI's cache) gives the first song back to the bit, so ComfyUI's
    model manager put the original weights back. devtools/comfy_lora_check.py checks the same at the weight level."""
    import torch

    from devtools.lora_fixtures import EXAMPLE_LOKR_FOLDER, EXAMPLE_LORA_FILE

    plain, _ = _run_song(server, _song(server, "lora_test/plain"), tmp_path)
    styled, _ = _run_song(server, _song(server, "lora_test/styled", [(EXAMPLE_LORA_FILE, 0.8),
                                                                      (EXAMPLE_LOKR_FOLDER, 0.5)]), tmp_path)
    again, cached = _run_song(server, _song(server, "lora_test/again"), tmp_path)
    assert "4" not in cached, f"the base sampler was served from the cache ({cached}): nothing was checked"
    assert styled.shape == plain.shape and (styled - plain).abs().max() > 1e-3
    assert torch.equal(again, plain)


def test_lora_weight_patches_in_comfyuis_model_manager(server, tmp_path):
    """devtools/comfy_lora_check.py in ComfyUI's Python, in-process: the stack as ModelPatcher weight patches equals
    the core's patched() path bit for bit (DoRA included), the base is restored in its own memory, strength 0 adds
    no patch."""
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("PYTHONPATH", None)
    out = subprocess.run([python, os.path.join(ROOT, "devtools", "comfy_lora_check.py"), COMFYUI_DIR,
                          server.dirs["models"], str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=RUN_TIMEOUT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nComfyUI weight patches: {result}")
    assert result["core_equals_comfyui"] and result["patched_weights"] > 0


def _low_vram(prompt: dict, **settings) -> dict:
    prompt["1"]["inputs"].update(settings)
    return prompt


def test_low_vram_loader_streams_and_gives_the_same_song(server, tmp_path):
    """The loader's low-VRAM settings (a 1-GB budget, one resident DiT layer): the units go through ComfyUI's
    model manager as their own ModelPatchers (the DiT as its resident view), the other layers stream, and the song
    equals the default loader's to the bit, with and without a LoRA (which the pipeline then patches)."""
    import torch

    from devtools.lora_fixtures import EXAMPLE_LORA_FILE

    plain, _ = _run_song(server, _song(server, "lowvram/plain"), tmp_path)
    low, _ = _run_song(server, _low_vram(_song(server, "lowvram/low"), vram_budget=1.0, resident_layers=1), tmp_path)
    assert torch.equal(low, plain)
    styled, _ = _run_song(server, _song(server, "lowvram/styled", [(EXAMPLE_LORA_FILE, 0.8)]), tmp_path)
    low_styled, _ = _run_song(server, _low_vram(_song(server, "lowvram/low_styled", [(EXAMPLE_LORA_FILE, 0.8)]),
                                                vram_budget=1.0, resident_layers=1), tmp_path)
    assert (styled - plain).abs().max() > 1e-3 and torch.equal(low_styled, styled)


# ---- issue 17 (h17a): what a real ComfyUI sends: many-channel and too-short files through LoadAudio, lone
# surrogates in the prompt's JSON. The server must answer with the pack's message and stay up.

def _encode_prompt(server, audio_file: str) -> dict:
    return {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": audio_file}},
        "2": _defaults(server, PREFIX + "ModelLoader", model=TURBO_FILE),
        "3": _defaults(server, PREFIX + "VAEEncode", model=["2", 0], audio=["1", 0]),
        "4": _defaults(server, PREFIX + "VAEDecode", model=["2", 0], latent=["3", 0]),
        "5": _defaults(server, PREFIX + "PreviewAudio", audio=["4", 0]),
    }


def _execution_error(server, prompt: dict, workflow: dict) -> str:
    status, reply = _queue(server, prompt, workflow)
    assert status == 200 and not reply.get("node_errors"), f"HTTP {status}: {reply}"
    entry = _wait(server, reply["prompt_id"])
    errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "error" and len(errors) == 1, entry["status"]
    return errors[0]["exception_message"]


def test_many_channel_short_and_surrogate_inputs_on_the_server(server, tmp_path):
    from devtools.audio_files import pcm16_noise, write_pcm16

    rate = 8000
    write_pcm16(os.path.join(server.dirs["input"], "h17a_12ch.wav"), pcm16_noise(12, 2 * rate), "12 channels", "wav",
                "pcm_s16le", rate)
    write_pcm16(os.path.join(server.dirs["input"], "h17a_7.1.flac"), pcm16_noise(8, 2 * rate), "7.1", "flac", "flac",
                rate)
    write_pcm16(os.path.join(server.dirs["input"], "h17a_short.wav"), pcm16_noise(2, 100), "stereo", "wav",
                "pcm_s16le", rate)
    for name in ("h17a_12ch.wav", "h17a_7.1.flac"):
        status, reply = _queue(server, _encode_prompt(server, name), {})
        assert status == 200 and not reply.get("node_errors"), f"HTTP {status}: {reply}"
        entry = _wait(server, reply["prompt_id"])
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000] + server.log_tail()
        _download_and_check(server, _audio_outputs(entry["outputs"])[0], tmp_path)
    message = _execution_error(server, _encode_prompt(server, "h17a_short.wav"), {})
    assert message.startswith("audio=<100 samples at 8000 Hz> is not allowed: at least 0.04 s of audio (320 samples "
                              "at 8000 Hz"), message
    prompt, workflow = _prompt(server, TEXT2MUSIC)
    [text_node] = [k for k, v in prompt.items() if v["class_type"] == PREFIX + "TextEncode"]
    prompt[text_node]["inputs"]["caption"] = "happy \ud83d song"  # sent as the JSON escape "\ud83d", as a browser does
    message = _execution_error(server, prompt, workflow)
    assert message.startswith("caption='happy \\ud83d song' is not allowed: valid Unicode text (character 7 is "
                              "U+D83D, a lone surrogate"), message
    assert server.proc.poll() is None and server.get_json("/system_stats")  # still serving


# ------------------------------------------------------------------------------------------------ LM speed

NODE_TO_CLI_MAX = 2.0  # the goal is 1.3x; the bound leaves room for a shared, busy machine (see benchmarks.md)


def _codes_rate(text: str) -> float:
    found = re.search(r"codes 600 tokens · (\d+) tokens/s", text)
    assert found, f"no codes speed in the planner's text: {text!r}"
    return float(found.group(1))


def test_lm_planner_node_decodes_as_fast_as_the_cli(server):
    """The default workflow's LM Planner (think, a 120-s song: 600 codes with CFG) on the tiny LM, timed per token
    by the node itself (its text: "codes 600 tokens · N tokens/s"), against the same plan in this process (the
    CLI's path: ``Planner.plan_batch`` on the same file): the node's codes phase within NODE_TO_CLI_MAX of it."""
    import torch

    from acestep_core.loading.lm import load_planner
    from acestep_core.planning import TokenClock

    api, _ = _prompt(server, TEXT2MUSIC)
    by_type = {v["class_type"]: k for k, v in api.items()}
    planner_id = by_type[PREFIX + "LMPlanner"]
    keep = {planner_id, *(link[0] for link in api[planner_id]["inputs"].values() if isinstance(link, list))}
    prompt = {k: v for k, v in api.items() if k in keep}
    prompt["preview"] = {"class_type": "PreviewAny", "inputs": {"source": [planner_id, 1]}}
    text_node = api[by_type[PREFIX + "TextEncode"]]["inputs"]
    assert api[by_type[PREFIX + "EmptyLatent"]]["inputs"]["duration"] == 120.0
    node_rates = []
    for seed in (1, 2, 3):  # the first run loads the LM; new seeds, so that ComfyUI runs the planner again
        prompt[planner_id]["inputs"]["seed"] = seed
        status, reply = _queue(server, prompt, {})
        assert status == 200 and not reply.get("node_errors"), reply
        entry = _wait(server, reply["prompt_id"])
        assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:4000] + server.log_tail()
        node_rates.append(_codes_rate(entry["outputs"][planner_id]["text"][0]))
    planner = load_planner(os.path.join(server.dirs["models"], "text_encoders", "qwen_1.7b_ace15.safetensors"),
                           torch.float32)
    cli_rates = []
    for seed in (1, 2, 3):
        clock = TokenClock()
        plans = planner.plan_batch(text_node["caption"], text_node["lyrics"], [seed], mode="think",
                                   metas={"duration": 120}, on_token=clock)
        assert len(plans[0].codes) == 600
        cli_rates.append(clock.rate("codes"))
    node, cli = max(node_rates[1:]), max(cli_rates[1:])
    print(f"\nLM Planner node: {1e3 / node:.2f} ms per code ({node:.0f} tokens/s, runs {node_rates}); "
          f"in process: {1e3 / cli:.2f} ms per code ({cli:.0f} tokens/s, runs {[round(r) for r in cli_rates]}); "
          f"node / CLI {cli / node:.2f}x")
    assert cli / node <= NODE_TO_CLI_MAX
