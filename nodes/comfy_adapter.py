"""Every ``comfy.*`` / ``folder_paths`` import of the pack lives here.

Inside ComfyUI the nodes use its device and dtype choices, its model manager (our modules wrapped in
``ModelPatcher`` and loaded with ``load_models_gpu``, so ComfyUI offloads them like its own models and
``/free`` releases them), its progress bar, its interrupt flag and its folders. Outside ComfyUI (tests, a plain
Python session) the same functions fall back to plain PyTorch: CUDA when available, folders under the current
directory (or ``$ACESTEP_MODELS_DIR`` / ``$ACESTEP_OUTPUT_DIR``), no progress UI and a ``cancel_event``.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import torch

try:  # ComfyUI (or a stand-in providing the same modules)
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _utils
    import folder_paths as _folders
    from comfy.cli_args import args as _args
except ImportError:  # plain Python: the fallback below
    _mm = _patcher = _utils = _folders = _args = None
try:  # ComfyUI's weight patching: comfy.lora applies WeightAdapterBase patches when it loads a model
    import comfy.lora as _lora
    import comfy.weight_adapter as _weight_adapter
except ImportError:  # plain Python, or a stand-in without it: the core patches the weights around each run
    _lora = _weight_adapter = None

HF_FOLDER = "acestep"  # models/acestep/: official Hugging Face layout folders
LORA_FOLDER = "loras"  # models/loras/ (ComfyUI's folder_paths "loras", extra_model_paths.yaml included)
MODEL_EXTENSIONS = (".safetensors", ".sft")
cancel_event = threading.Event()  # fallback cancel switch (ComfyUI uses its own interrupt flag)


def in_comfyui() -> bool:
    return _mm is not None


# ---------------------------------------------------------------------- devices and dtypes

def compute_device() -> torch.device:
    if in_comfyui():
        return _mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def offload_device() -> torch.device:
    return _mm.unet_offload_device() if in_comfyui() else torch.device("cpu")


def low_vram_mode() -> bool:
    """ComfyUI runs with --lowvram or --novram."""
    return in_comfyui() and _mm.vram_state in (_mm.VRAMState.LOW_VRAM, _mm.VRAMState.NO_VRAM)


def bf16_supported() -> bool | None:
    """ComfyUI's answer to "can the compute device run bf16" (the core's dtype rule asks torch when None)."""
    return bool(_mm.should_use_bf16(compute_device())) if in_comfyui() else None


# ---------------------------------------------------------------------- model placement

class _Held(torch.nn.Module):
    """ModelPatcher writes bookkeeping attributes (``device``, ``model_loaded_weight_memory``, …) onto the module
    it manages; this bare container takes them instead of our model classes (whose ``device`` is read-only)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.device = None


class ManagedModules:
    """Named modules of one loaded model, moved to the compute device on demand.

    ``use(names)`` makes sure those modules are on the compute device: in ComfyUI through ``load_models_gpu``
    (full load: our layers are plain ``nn.Module`` and must sit on one device; ComfyUI frees other models to make
    room), outside by ``module.to(device)``.

    It is also the core memory manager's host (``budget``, ``free``, ``load``): each unit is its own ModelPatcher,
    loaded with the unit's working memory as ``memory_required``; a unit with streamed layers is loaded through a
    ModelPatcher of its resident view (the streamed layers stay in pinned CPU memory, outside ComfyUI's count)."""

    def __init__(self, modules: dict[str, torch.nn.Module], patchers: dict | None = None):
        self.modules = modules
        self.patchers = patchers if patchers is not None else {}
        self._views: dict[str, tuple] = {}  # unit → (resident view, its ModelPatcher)
        if in_comfyui() and patchers is None:
            for name, module in modules.items():
                self.patchers[name] = _new_patcher(module)

    def with_weight_deltas(self, name: str, deltas) -> "ManagedModules":
        """These modules with ``deltas`` (the core's ``WeightDeltas``: parameter name → change) on module ``name``,
        as ComfyUI weight patches on a clone of its ModelPatcher; the other patchers and this object stay as they
        are. ComfyUI adds the changes when it loads the clone for a run (each weight on the compute device, in
        float32, then cast to the weight's dtype), keeps the original tensors aside, and puts them back when another
        clone of the same module is loaded (e.g. a graph branch without the LoRA). Needs ``host_patches_weights()``."""
        if not host_patches_weights():
            raise RuntimeError("ComfyUI's weight patching (comfy.lora, comfy.weight_adapter) is not available here")
        patcher = self.patchers[name].clone()
        if len(deltas):  # none at all (every strength 0): the clone shares the base's weights as they are
            patches = {_HELD_PREFIX + param: _WeightDeltaPatch({param}, (deltas, param)) for param in deltas}
            added = patcher.add_patches(patches, 1.0)
            missing = sorted(set(patches) - set(added))
            if missing:
                raise RuntimeError(f"ComfyUI's ModelPatcher does not know the weights {missing[:3]} of {name}")
        derived = ManagedModules(self.modules, {**self.patchers, name: patcher})
        derived._views = self._views  # one resident-view patcher per unit, whichever clone loads it
        return derived

    def use(self, names) -> None:
        names = [n for n in names if n in self.modules]
        if in_comfyui():
            _mm.load_models_gpu([self.patchers[n] for n in names], force_full_load=True)
            return
        device = compute_device()
        for n in names:
            self.modules[n].to(device)

    # -------------------------------------------------------------- host of acestep_core.memory.MemoryManager

    def budget(self, device: torch.device) -> int:
        """Bytes our units may use on the device: its total less ComfyUI's reserve (``--reserve-vram``), ComfyUI
        evicting other models as needed; nothing with ``--novram`` (every layer then streams)."""
        if not in_comfyui():
            return _core_host().budget(device)
        if device.type == "cpu":
            return 1 << 62
        if _mm.vram_state == _mm.VRAMState.NO_VRAM:
            return 0
        return max(0, int(_mm.get_total_memory(device) - _mm.extra_reserved_memory()))

    def free(self, device: torch.device) -> int:
        if not in_comfyui():
            return _core_host().free(device)
        return int(_mm.get_free_memory(device)) if device.type != "cpu" else 1 << 62

    def load(self, device, loads, working: int, exclusive: bool, views: dict) -> None:
        """Units (name, resident view) on the device for the next phase. A whole unit goes through its own patcher
        (a LoRA clone's included); a view through a patcher of its own, the unit's other patcher unloaded first."""
        if not in_comfyui():
            return _core_host().load(device, loads, working, exclusive, views)
        patchers = []
        for name, view in loads:
            if view is self.modules[name]:
                if name in self._views:
                    _unload(self._views[name][0])
                patchers.append(self.patchers[name])
            else:
                # the whole unit's patcher (or a LoRA clone of it, whose patched weights ComfyUI puts back now)
                _unload(self.modules[name])
                if name not in self._views or self._views[name][0] is not view:
                    if name in self._views:
                        _unload(self._views[name][0])
                    self._views[name] = (view, _new_patcher(view))
                patchers.append(self._views[name][1])
        _mm.load_models_gpu(patchers, memory_required=int(working), force_full_load=True)
        for _, view in loads:  # --novram: ComfyUI leaves plain modules on the CPU; compute on the GPU all the same
            p = next(view.parameters(), None)
            if p is not None and p.device != device and device.type != "cpu":
                view.to(device)


def _new_patcher(module: torch.nn.Module):
    return _patcher.ModelPatcher(_Held(module), load_device=compute_device(), offload_device=offload_device())


def _unload(module: torch.nn.Module) -> None:
    """Take every loaded patcher holding ``module`` out of ComfyUI's loaded models (the module back on the
    offload device)."""
    for loaded in list(_mm.current_loaded_models):
        held = getattr(loaded.model, "model", None)
        if getattr(held, "module", None) is module:
            loaded.model_unload()
            _mm.current_loaded_models.remove(loaded)


def _core_host():
    from ..acestep_core.memory.manager import TorchHost

    return TorchHost()


_HELD_PREFIX = "module."  # a parameter's name in the patcher's model: _Held holds our module as ``module``


def host_patches_weights() -> bool:
    """Whether ComfyUI's model manager applies adapter weight changes itself (``ManagedModules.with_weight_deltas``);
    otherwise (plain Python, or a ComfyUI stand-in without ``comfy.lora``) the core patches them around each run."""
    return in_comfyui() and _weight_adapter is not None and hasattr(_lora, "calculate_weight")


if _weight_adapter is not None:
    class _WeightDeltaPatch(_weight_adapter.WeightAdapterBase):
        """One weight's change as a ComfyUI weight patch. The change itself is the core's (``WeightDeltas.delta``,
        given the weight ComfyUI is patching, so DoRA sees the unpatched weight); strengths are already in it.
        ``weights`` is (deltas, parameter name): ComfyUI's low-VRAM prefetch rebuilds a patch as
        ``type(patch)(patch.loaded_keys, patch.weights)``, which this constructor takes."""

        name = "acestep_adapters"

        def __init__(self, loaded_keys: set, weights: tuple):
            self.loaded_keys = loaded_keys
            self.weights = weights

        def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                             intermediate_dtype=torch.float32, original_weight=None):
            deltas, param = self.weights
            change = deltas.delta(param, weight)  # float32, on the weight's device
            if strength != 1.0:
                change.mul_(strength)
            weight += function(change).to(weight.dtype)
            return weight


# ---------------------------------------------------------------------- progress and cancel

class Progress:
    """Per-step progress: ComfyUI's progress bar on the node (created at the first step, when the total is
    known), or nothing outside ComfyUI."""

    def __init__(self, node_id: str | None = None):
        self.node_id = node_id
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not in_comfyui():
            return
        if self.bar is None:
            self.bar = _utils.ProgressBar(total, node_id=self.node_id)
        self.bar.update_absolute(done, total)


def progress_text(text: str, node_id: str | None) -> None:
    """A line of text under the node while it runs (ComfyUI's progress text, e.g. the LM's tokens/s); nothing
    outside ComfyUI or in a ComfyUI without it."""
    if not in_comfyui() or node_id is None:
        return
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None and hasattr(server, "send_progress_text"):
        server.send_progress_text(text, node_id)


def check_interrupted() -> bool:
    """Raises ComfyUI's interrupt exception after the user pressed Cancel (ComfyUI then reports the run as
    interrupted); outside ComfyUI returns whether ``cancel_event`` is set."""
    if in_comfyui():
        _mm.throw_exception_if_processing_interrupted()
        return False
    return cancel_event.is_set()


# ---------------------------------------------------------------------- folders

def _fallback_models_dir() -> str:
    return os.environ.get("ACESTEP_MODELS_DIR", os.path.join(os.getcwd(), "models"))


def register_model_folder() -> None:
    """Register ``models/acestep`` (official layout folders) with ComfyUI's folder_paths, once."""
    if in_comfyui() and HF_FOLDER not in _folders.folder_names_and_paths:
        _folders.add_model_folder_path(HF_FOLDER, os.path.join(_folders.models_dir, HF_FOLDER), is_default=True)


def folder_paths_for(kind: str) -> list[str]:
    """Folders searched for ``kind`` (acestep, diffusion_models, text_encoders, vae, checkpoints)."""
    if in_comfyui():
        register_model_folder()
        try:
            return list(_folders.get_folder_paths(kind))
        except KeyError:
            return []
    base = _fallback_models_dir()
    extra = {"diffusion_models": ["unet"], "text_encoders": ["clip"]}.get(kind, [])
    return [os.path.join(base, name) for name in [kind, *extra]]


def model_files(kind: str) -> list[str]:
    """Model files under the ``kind`` folders, relative paths with ``/`` (ComfyUI's own listing when inside)."""
    if in_comfyui():
        register_model_folder()
        try:
            names = _folders.get_filename_list(kind)
        except KeyError:
            return []
        return sorted(n for n in names if n.lower().endswith(MODEL_EXTENSIONS))
    found = set()
    for root in folder_paths_for(kind):
        for dirpath, _, files in os.walk(root, followlinks=True):
            for f in files:
                if f.lower().endswith(MODEL_EXTENSIONS):
                    found.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(found)


def full_path(kind: str, name: str) -> str | None:
    for root in folder_paths_for(kind):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    return None


def output_directory() -> str:
    if in_comfyui():
        return _folders.get_output_directory()
    return os.environ.get("ACESTEP_OUTPUT_DIR", os.path.join(os.getcwd(), "output"))


def temp_directory() -> str:
    if in_comfyui():
        return _folders.get_temp_directory()
    return os.path.join(output_directory(), "temp")


@dataclass
class SaveTarget:
    folder: str  # absolute folder to write into
    filename: str  # file name stem ("%batch_num%" still in it)
    counter: int  # first free counter
    subfolder: str  # relative to the output/temp directory, as the UI wants it


def save_target(prefix: str, directory: str) -> SaveTarget:
    """ComfyUI's naming: ``{prefix}_{counter:05}_.{ext}`` with the counter continuing existing files."""
    if in_comfyui():
        folder, filename, counter, subfolder, _ = _folders.get_save_image_path(prefix, directory)
        return SaveTarget(folder, filename, counter, subfolder)
    subfolder, filename = os.path.split(os.path.normpath(prefix))
    folder = os.path.join(directory, subfolder)
    if os.path.commonpath([os.path.abspath(directory), os.path.abspath(folder)]) != os.path.abspath(directory):
        raise ValueError(f"filename_prefix={prefix!r} is not allowed: it must stay inside {directory}")
    os.makedirs(folder, exist_ok=True)
    counter = 1
    stem = filename + "_"
    for f in os.listdir(folder):
        if f.startswith(stem) and f[len(stem):len(stem) + 5].isdigit():
            counter = max(counter, int(f[len(stem):len(stem) + 5]) + 1)
    return SaveTarget(folder, filename, counter, subfolder)


def metadata_enabled() -> bool:
    """False when ComfyUI runs with --disable-metadata."""
    return not (in_comfyui() and getattr(_args, "disable_metadata", False))
