"""Model choices for the loader and the loaded-model cache. No tensor math: paths, caching and the hand-over to
``acestep_core``'s loader; device placement goes through the adapter."""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, replace

from . import comfy_adapter as host

AUTO = "auto"
_HEADER_CACHE: dict[tuple[str, str, float], bool] = {}
_LOADED: "OrderedDict[tuple, dict]" = OrderedDict()  # file choice → {memory settings: LoadedModel over one load}
# Reused when the loader runs again with the same choice (ComfyUI keeps node outputs between runs itself, so
# this matters only after its cache dropped them); one at a time keeps RAM to one model's worth.
MAX_CACHED_MODELS = 1


# Which header check (``acestep_core.loading.layout``, the one owner of "which file is what") a file of each model
# folder must pass to be offered in a dropdown.
_FILE_CHECKS = {"diffusion_models": "is_acestep_dit_file", "checkpoints": "is_acestep_dit_file",
                "text_encoders": "is_text_encoder_file", "vae": "is_vae_file"}
_WHAT = {"text_encoders": "the Qwen3-Embedding-0.6B text encoder (qwen_0.6b_ace15.safetensors; the 5 Hz LM files "
                          "qwen_1.7b/4b_ace15 go to the LM Loader)",
         "vae": "the ACE-Step 1.5 VAE (ace_1.5_vae.safetensors)"}
_INPUT = {"text_encoders": "text_encoder", "vae": "vae"}


def _passes(kind: str, path: str) -> bool:
    """The core's header check for a file of folder ``kind``, cached per file version (the dropdowns are rebuilt
    on every refresh)."""
    from ..acestep_core.loading import layout

    check = _FILE_CHECKS[kind]
    try:
        key = (check, path, os.path.getmtime(path))
    except OSError:
        return False
    if key not in _HEADER_CACHE:
        _HEADER_CACHE[key] = getattr(layout, check)(path)
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
            if path and _passes(kind, path):
                choices.append(f"{kind}/{name}")
    return list(dict.fromkeys(choices))


def component_choices(kind: str) -> list[str]:
    """"auto" and the files of ``kind`` ("text_encoders", "vae") that hold what that input takes, told by their
    headers: the 5 Hz LM files next to the text encoder, and other models' VAEs, are not offered."""
    files = [n for n in host.model_files(kind) if (path := host.full_path(kind, n)) and _passes(kind, path)]
    return [AUTO] + files


def _resolve(input_name: str, choice: str, where: str) -> str:
    """A dropdown entry ``<folder kind>/<name>`` → its path; not found: the input, the value and where to put it."""
    kind, _, name = choice.partition("/")
    path = host.full_path(kind, name) if name else None
    if path is None:
        raise ValueError(f"{input_name}={choice!r} was not found. {where}, then refresh.")
    return path


def resolve_choice(choice: str) -> str:
    return _resolve("model", choice, "Put the official Hugging Face folders under models/acestep/ (acestep-v15-turbo/, "
                    "vae/, Qwen3-Embedding-0.6B/) or the Comfy-Org files under models/diffusion_models/, "
                    "models/text_encoders/ and models/vae/ (or the all-in-one file under models/checkpoints/)")


def _component_path(kind: str, choice: str, preferred: str) -> str | None:
    """A file picked in a dropdown; with "auto", the usual Comfy-Org file name when present (else the core looks
    next to the model)."""
    if choice != AUTO:
        path = host.full_path(kind, choice)
        if path is None:
            raise ValueError(f"{kind} file {choice!r} was not found in models/{kind}/; refresh the node list")
        if not _passes(kind, path):  # a value sent past the dropdown (API prompts)
            raise ValueError(f"{_INPUT[kind]}={choice!r} is not allowed: {_WHAT[kind]}")
        return path
    return host.full_path(kind, preferred)


SHOWN_FOLDERS = (host.HF_FOLDER, "diffusion_models", "checkpoints", "text_encoders", "vae", host.LORA_FOLDER)


def shown_path(path: str | None) -> str:
    """A model file or folder as a node shows it: ``<folder kind>/<path inside it>`` (the dropdown's spelling),
    never the absolute path (long, private, and cut mid-path in a node's text); a path outside the model folders
    shows its last two parts."""
    if not path:
        return "none"
    path = os.path.abspath(path)
    for kind in SHOWN_FOLDERS:
        for root in host.folder_paths_for(kind):
            root = os.path.abspath(root)
            if os.path.commonpath([root, path]) == root and path != root:
                return f"{kind}/" + os.path.relpath(path, root).replace(os.sep, "/")
    return "/".join(path.replace(os.sep, "/").split("/")[-2:])


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
    low_vram: bool = False  # layers may stream / weights are fp8: the pipeline patches adapters itself
    memory: str = ""  # the loader's memory settings and first plan, for its text

    def describe(self) -> str:
        p = self.paths
        text = (f"variant: {self.variant} · dtype: {self.dtype}\nDiT: {shown_path(p['dit'])}\n"
                f"VAE: {shown_path(p['vae'])}\ntext encoder: {shown_path(p['text_encoder'])}")
        return text + (f"\n{self.memory}" if self.memory else "")

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
        # ComfyUI's weight patches need whole, full-precision units: with streamed layers or fp8 weights the
        # pipeline patches (fp8 layers requantise themselves)
        host_patched = host.host_patches_weights() and not base.low_vram
        modules = base.modules.with_weight_deltas("model", deltas) if host_patched else base.modules
        # the same weights; only the placement differs: a memory manager with the loader's settings whose host is
        # ``modules`` (the LoRA's patcher clone, when ComfyUI patches)
        ckpt = base.pipeline.ckpt
        pipeline = AceStepPipeline(ckpt, placement=_manager(ckpt, base.pipeline.placement.settings, modules))
        return replace(base, pipeline=pipeline, modules=modules, adapters=stack, base=base, host_patched=host_patched)

    def describe_adapters(self) -> str:
        return "\n".join(f"LoRA {a.name} · {a.kind} · {len(a.targets)} weights · strength {s:g}"
                         for a, s in self.adapters)


def load_model(model: str, text_encoder: str = AUTO, vae: str = AUTO, dtype: str = AUTO,
               weight_dtype: str = "default", vram_budget: float = 0.0, resident_layers: int = -1) -> LoadedModel:
    """Load (or reuse) the model picked in the loader. ``weight_dtype``: see ``acestep_core.memory.fp8``;
    ``vram_budget`` GB (0 = what ComfyUI can give) and ``resident_layers`` (-1 = as many as fit): the low-VRAM
    settings (``acestep_core.memory``)."""
    from ..acestep_core.loading.checkpoint import dtype_name, load_checkpoint, resolve_dtype
    from ..acestep_core.memory.manager import MemorySettings
    from ..acestep_core.pipeline import AceStepPipeline

    path = resolve_choice(model)
    is_file = os.path.isfile(path)
    te_path = _component_path("text_encoders", text_encoder, "qwen_0.6b_ace15.safetensors") if is_file or text_encoder != AUTO else None
    vae_path = _component_path("vae", vae, "ace_1.5_vae.safetensors") if is_file or vae != AUTO else None
    chosen = dtype_name(resolve_dtype(dtype, host.compute_device(), host.bf16_supported()))
    settings = MemorySettings(vram_budget or None, None if resident_layers < 0 else resident_layers, weight_dtype)
    key = (path, te_path, vae_path, chosen, weight_dtype, _mtime(path))
    if key in _LOADED:
        _LOADED.move_to_end(key)
        variants = _LOADED[key]
        if settings not in variants:  # the same weights with other memory settings: its own pipeline and plan
            variants[settings] = _with_memory(next(iter(variants.values())), settings)
        return variants[settings]
    ckpt = load_checkpoint(path, dtype=chosen, device=host.offload_device(), vae=vae_path, text_encoder=te_path,
                           weight_dtype=weight_dtype)
    modules = host.ManagedModules({"model": ckpt.model, "text_encoder": ckpt.text_encoder, "vae": ckpt.vae})
    loaded = _with_memory(LoadedModel(AceStepPipeline(ckpt), modules, ckpt.variant, chosen, dict(ckpt.paths)),
                          settings)
    _LOADED[key] = {settings: loaded}
    while len(_LOADED) > MAX_CACHED_MODELS:
        _LOADED.popitem(last=False)
    return loaded


def _manager(ckpt, settings, modules):
    """A memory manager over ``ckpt``'s units for ``settings``, placing them through ``modules`` (ComfyUI's model
    manager)."""
    from ..acestep_core.memory.manager import memory_manager

    return memory_manager(ckpt, settings, host.compute_device(), host=modules)


def _with_memory(loaded: LoadedModel, settings) -> LoadedModel:
    """``loaded``'s weights in a pipeline of their own, placed by a memory manager for ``settings``. Low-VRAM mode
    (layers may stream, adapters patched by the pipeline) when a setting asks for it, the weights are fp8, ComfyUI
    runs with --lowvram/--novram, or the DiT does not fit the card whole for a 4-minute song; otherwise every unit
    is placed whole, as ComfyUI places its own models, with its working memory passed to ComfyUI's model
    manager."""
    from dataclasses import replace as _replace

    from ..acestep_core.memory.estimates import Workload
    from ..acestep_core.pipeline import AceStepPipeline

    ckpt = loaded.pipeline.ckpt
    memory = _manager(ckpt, settings, loaded.modules)
    low = settings.manual or settings.weight_dtype != "default" or host.low_vram_mode() or \
        memory.plan_for(Workload()).streamed("model") > 0
    memory.settings = _replace(settings, stream=low)
    text = f"weights: {settings.weight_dtype}" + (" · low VRAM: layers may stream" if low else "")
    if settings.budget_gb is not None:
        text += f" · budget {settings.budget_gb:g} GB"
    if settings.resident_layers is not None:
        text += f" · {settings.resident_layers} resident layers"
    return _replace(loaded, pipeline=AceStepPipeline(ckpt, placement=memory), low_vram=low, memory=text)


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


# ---------------------------------------------------------------------------------------------------- the 5 Hz LM

_LM_HEADER_CACHE: dict[tuple[str, float], bool] = {}
_LOADED_LMS: "OrderedDict[tuple, LoadedLM]" = OrderedDict()
MAX_CACHED_LMS = 1


def _has_lm(path: str) -> bool:
    """The core's header check (an LM's embedding with audio-code rows), cached per file version."""
    from ..acestep_core.loading.lm import has_lm

    key = (path, _mtime(path))
    if key not in _LM_HEADER_CACHE:
        _LM_HEADER_CACHE[key] = has_lm(path)
    return _LM_HEADER_CACHE[key]


def lm_choices() -> list[str]:
    """Entries for the LM Loader's dropdown: ``acestep/acestep-5Hz-lm-*`` (official folders, the app's default
    1.7B first), ``text_encoders/qwen_{1.7b,4b}_ace15.safetensors`` (Comfy-Org; any LM file there) and
    ``checkpoints/<all-in-one>`` carrying an LM. Only what holds a 5 Hz LM is listed (headers are read, not
    weights); a folder or file named as the published LMs are is listed even when damaged, so that choosing it
    tells what is wrong (a truncated download) instead of the LM silently missing from the list."""
    from ..acestep_core.constants import LM_COMFY_FILES, LM_FOLDER_ORDER, LM_FOLDER_PREFIX

    folders = []
    for root in host.folder_paths_for(host.HF_FOLDER):
        if os.path.isdir(root):
            folders += [n for n in sorted(os.listdir(root))
                        if n.startswith(LM_FOLDER_PREFIX) and os.path.isdir(os.path.join(root, n))]
    rank = {name: i for i, name in enumerate(LM_FOLDER_ORDER)}
    choices = [f"{host.HF_FOLDER}/{n}" for n in sorted(dict.fromkeys(folders), key=lambda n: (rank.get(n, 99), n))]
    for kind in ("text_encoders", "checkpoints"):
        for name in host.model_files(kind):
            path = host.full_path(kind, name)
            if path and ((kind == "text_encoders" and os.path.basename(name) in LM_COMFY_FILES) or _has_lm(path)):
                choices.append(f"{kind}/{name}")
    return choices


@dataclass
class LoadedLM:
    """What the ACESTEP_LM socket carries: the planner (LM + tokenizer) and the LM's own host-managed module (one
    ModelPatcher in ComfyUI, so its model manager offloads the LM before the DiT is loaded)."""

    planner: object  # acestep_core.lm_planner.Planner
    modules: host.ManagedModules
    name: str
    dtype: str
    path: str

    @property
    def lm(self):
        return self.planner.lm

    def describe(self) -> str:
        cfg = self.lm.config
        size = sum(p.numel() for p in self.lm.parameters()) / 1e9
        return (f"LM: {self.name} · {size:.2f}B parameters · {cfg.num_layers} layers · dtype: {self.dtype}\n"
                f"{shown_path(self.path)}")

    def place(self, codes: int = 0, batch: int = 1, text_tokens: int = 0) -> None:
        """Put the LM on the compute device for a run writing ``codes`` codes for ``batch`` songs (or
        ``text_tokens`` tokens of text), with its working memory (KV cache, logits) as ComfyUI's
        ``memory_required``, so other models make room first."""
        from ..acestep_core.memory.estimates import Workload, lm_working
        from ..acestep_core.memory.manager import lm_geometry

        device = host.compute_device()
        work = Workload(seconds=0.0, batch=batch, lm_codes=codes + text_tokens)
        working = lm_working(lm_geometry(self.lm), self.lm.dtype, work, device=device)
        self.modules.load(device, [("lm", self.lm)], working, False, {"lm": self.lm})

    def done(self) -> None:
        """After a run: free the KV cache, so the memory goes back before the DiT runs."""
        self.planner.release()


def resolve_lm(choice: str) -> str:
    return _resolve("lm", choice, "Put the Comfy-Org file text_encoders/qwen_1.7b_ace15.safetensors (or qwen_4b_ace15) "
                    "in models/text_encoders/, or the official acestep-5Hz-lm-1.7B folder in models/acestep/")


def load_lm(choice: str, dtype: str = AUTO) -> LoadedLM:
    """Load (or reuse) the LM picked in the LM Loader, on ComfyUI's offload device; it goes to the compute device
    for each planner run (``LoadedLM.place``)."""
    from ..acestep_core.loading.checkpoint import dtype_name, resolve_dtype
    from ..acestep_core.loading.lm import lm_name, load_planner

    path = resolve_lm(choice)
    torch_dtype = resolve_dtype(dtype, host.compute_device(), host.bf16_supported())
    chosen = dtype_name(torch_dtype)
    key = (path, chosen, _mtime(path))
    if key in _LOADED_LMS:
        _LOADED_LMS.move_to_end(key)
        return _LOADED_LMS[key]
    planner = load_planner(path, torch_dtype, host.offload_device())
    loaded = LoadedLM(planner, host.ManagedModules({"lm": planner.lm}), lm_name(path), chosen, path)
    _LOADED_LMS[key] = loaded
    while len(_LOADED_LMS) > MAX_CACHED_LMS:
        _LOADED_LMS.popitem(last=False)
    return loaded
