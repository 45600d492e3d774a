"""Model choices for the loader and the loaded-model cache. No tensor math: paths, caching and the hand-over to
``acestep_core``'s loader; device placement goes through the adapter."""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, replace

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
    """What the ACESTEP_MODEL socket carries: the core pipeline plus its host-managed modules, and the adapters
    stacked on it by LoRA nodes. The cached base is never changed: a LoRA node returns a new value over the same
    weights (see ``with_adapter``)."""

    pipeline: object  # acestep_core.pipeline.AceStepPipeline
    modules: host.ManagedModules
    variant: str
    dtype: str
    paths: dict
    adapters: tuple = ()  # ((Adapter, strength), …) in graph order
    base: "LoadedModel | None" = None  # the loader's value this one stacks adapters on
    host_patched: bool = False  # ComfyUI's model manager applies the adapters (else the pipeline does, per run)

    def describe(self) -> str:
        p = self.paths
        return (f"variant: {self.variant} · dtype: {self.dtype}\nDiT: {p['dit']}\nVAE: {p['vae']}\n"
                f"text encoder: {p['text_encoder']}")

    @property
    def pipeline_adapters(self) -> tuple:
        """What the sampler hands to the pipeline's ``adapters``: the stack, unless ComfyUI already patches it."""
        return () if self.host_patched else self.adapters

    def with_adapter(self, adapter, strength: float) -> "LoadedModel":
        """This model with one more (adapter, strength) on top: checked against the model now (a LoRA for the other
        model size or with unknown keys fails here, naming its file), applied only while a sampler runs. In ComfyUI
        the whole stack becomes weight patches on a clone of the base DiT's ModelPatcher (one patch per weight, so
        every change is taken against the unpatched weight, as the core does); elsewhere the pipeline patches and
        restores the weights around each run."""
        from ..acestep_core.adapters import weight_deltas
        from ..acestep_core.pipeline import AceStepPipeline

        base = self.base or self
        stack = self.adapters + ((adapter, float(strength)),)
        deltas = weight_deltas(base.pipeline.model, stack)  # binds every adapter of the stack: errors name the file
        host_patched = host.host_patches_weights()
        modules = base.modules.with_weight_deltas("model", deltas) if host_patched else base.modules
        pipeline = AceStepPipeline(base.pipeline.ckpt)  # shares the loaded weights; only its before_use differs
        pipeline.before_use = modules.use
        return replace(base, pipeline=pipeline, modules=modules, adapters=stack, base=base, host_patched=host_patched)

    def describe_adapters(self) -> str:
        return "\n".join(f"LoRA {a.name} · {a.kind} · {len(a.targets)} weights · strength {s:g}"
                         for a, s in self.adapters)


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


# ---------------------------------------------------------------------------------------------------- LoRAs

def lora_choices() -> list[str]:
    """Entries for the LoRA node's dropdown: every adapter under the ``loras`` folders (models/loras, its
    subfolders and extra_model_paths.yaml entries), .safetensors files and PEFT / LoKr folders (the official
    trainer's output, placed there as a folder), as "/"-separated paths relative to their folder."""
    from ..acestep_core.adapters import list_adapters

    names = []
    for root in host.folder_paths_for(host.LORA_FOLDER):
        if os.path.isdir(root):
            names += list_adapters(root)
    return sorted(dict.fromkeys(names))


def resolve_lora(name: str) -> str:
    """A dropdown entry → its file or folder."""
    path = host.full_path(host.LORA_FOLDER, name) if name else None
    if path is None:
        roots = ", ".join(host.folder_paths_for(host.LORA_FOLDER)) or "models/loras"
        raise ValueError(f"lora_name={name!r} was not found in the loras folders ({roots}); put the .safetensors "
                         "file or the LoRA folder there and refresh the node list")
    return path
