"""Model choices for the loader and the loaded-model cache. No tensor math: paths, caching and the hand-over to
``acestep_core``'s loader; device placement goes through the adapter."""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

from . import comfy_adapter as host

AUTO = "auto"
_HEADER_CACHE: dict[tuple[str, float], bool] = {}
_LOADED: "OrderedDict[tuple, LoadedModel]" = OrderedDict()
# Reused when the loader runs again with the same choice (ComfyUI keeps node outputs between runs itself, so
# this matters only after its cache dropped them); one at a time keeps RAM to one model's worth.
MAX_CACHED_MODELS = 1


def _is_acestep_dit_file(path: str) -> bool:
    """The core's header check, cached per file version (the dropdown is rebuilt on every refresh)."""
    from ..acestep_core.loading.layout import is_acestep_dit_file

    try:
        key = (path, os.path.getmtime(path))
    except OSError:
        return False
    if key not in _HEADER_CACHE:
        _HEADER_CACHE[key] = is_acestep_dit_file(path)
    return _HEADER_CACHE[key]


def model_choices() -> list[str]:
    """Entries for the loader's ``model`` dropdown: ``acestep/<folder>`` (official layout),
    ``diffusion_models/<file>`` (Comfy-Org split files) and ``checkpoints/<file>`` (all-in-one)."""
    from ..acestep_core.loading.layout import find_dit_folders

    choices = []
    for root in host.folder_paths_for(host.HF_FOLDER):
        if os.path.isdir(root):
            choices += [f"{host.HF_FOLDER}/{rel}" for rel in find_dit_folders(root)]
    for kind in ("diffusion_models", "checkpoints"):
        for name in host.model_files(kind):
            path = host.full_path(kind, name)
            if path and _is_acestep_dit_file(path):
                choices.append(f"{kind}/{name}")
    return list(dict.fromkeys(choices))


def component_choices(kind: str) -> list[str]:
    return [AUTO] + host.model_files(kind)


def resolve_choice(choice: str) -> str:
    kind, _, name = choice.partition("/")
    path = host.full_path(kind, name) if name else None
    if path is None:
        raise ValueError(
            f"model={choice!r} was not found. Put the official Hugging Face folders under models/acestep/ "
            "(acestep-v15-turbo/, vae/, Qwen3-Embedding-0.6B/) or the Comfy-Org files under models/diffusion_models/, "
            "models/text_encoders/ and models/vae/ (or the all-in-one file under models/checkpoints/), then refresh.")
    return path


def _component_path(kind: str, choice: str, preferred: str) -> str | None:
    """A file picked in a dropdown; with "auto", the usual Comfy-Org file name when present (else the core looks
    next to the model)."""
    if choice != AUTO:
        path = host.full_path(kind, choice)
        if path is None:
            raise ValueError(f"{kind} file {choice!r} was not found in models/{kind}/; refresh the node list")
        return path
    return host.full_path(kind, preferred)


@dataclass
class LoadedModel:
    """What the ACESTEP_MODEL socket carries: the core pipeline plus its host-managed modules."""

    pipeline: object  # acestep_core.pipeline.AceStepPipeline
    modules: host.ManagedModules
    variant: str
    dtype: str
    paths: dict

    def describe(self) -> str:
        p = self.paths
        return (f"variant: {self.variant} · dtype: {self.dtype}\nDiT: {p['dit']}\nVAE: {p['vae']}\n"
                f"text encoder: {p['text_encoder']}")


def load_model(model: str, text_encoder: str = AUTO, vae: str = AUTO, dtype: str = AUTO) -> LoadedModel:
    """Load (or reuse) the model picked in the loader."""
    from ..acestep_core.loading.checkpoint import dtype_name, load_checkpoint, resolve_dtype
    from ..acestep_core.pipeline import AceStepPipeline

    path = resolve_choice(model)
    is_file = os.path.isfile(path)
    te_path = _component_path("text_encoders", text_encoder, "qwen_0.6b_ace15.safetensors") if is_file or text_encoder != AUTO else None
    vae_path = _component_path("vae", vae, "ace_1.5_vae.safetensors") if is_file or vae != AUTO else None
    chosen = dtype_name(resolve_dtype(dtype, host.compute_device(), host.bf16_supported()))
    key = (path, te_path, vae_path, chosen, _mtime(path))
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    ckpt = load_checkpoint(path, dtype=chosen, device=host.offload_device(), vae=vae_path, text_encoder=te_path)
    pipe = AceStepPipeline(ckpt)
    modules = host.ManagedModules({"model": ckpt.model, "text_encoder": ckpt.text_encoder, "vae": ckpt.vae})
    pipe.before_use = modules.use
    loaded = LoadedModel(pipe, modules, ckpt.variant, chosen, dict(ckpt.paths))
    _LOADED[key] = loaded
    while len(_LOADED) > MAX_CACHED_MODELS:
        _LOADED.popitem(last=False)
    return loaded


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0
