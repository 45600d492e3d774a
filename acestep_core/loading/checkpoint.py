"""Loading ACE-Step 1.5 checkpoints of either published layout (see ``layout.py``): finding each component,
telling the variant, and reading memory-mapped safetensors straight into the requested dtype/device. The
Comfy-Org files carry no tokenizer (the pack ships the Qwen3 one) and no silence latent (derived from the VAE
once and cached)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

from ..constants import DTYPES, VARIANT_DEFAULTS
from ..errors import CheckpointError, InputError
from ..models.config import AceStepConfig
from ..models.model import AceStepModel
from ..models.text_encoder import TextEncoder
from ..models.vae import OobleckVAE, VaeConfig
from .silence import load_silence_latent_file, silence_latent_for_vae
from .text import load_text_encoder, load_tokenizer
from .layout import (
    AIO_TEXT_PREFIX, AIO_VAE_PREFIX, DEFAULT_DIT_DIR, DIT_MARKER, TEXT_ENCODER_DIR, adapter_kind,
    adapter_not_a_model, dit_prefix, is_dit_folder, is_text_encoder_file, is_vae_file, model_folders,
)
from .weights import read_json, read_safetensors, safetensors_keys, sharded_files




# --------------------------------------------------------------------------- dtype / device


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_DTYPE_NAMES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                "fp32": torch.float32, "float32": torch.float32}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, bf16_supported: bool | None = None
                  ) -> torch.dtype:
    """The weight dtype. "auto" is what the original runs: bf16 where the device supports it, else float32; fp16
    is never chosen on its own (the model can overflow into silence in fp16), only when asked for.
    ``bf16_supported``: the host's answer (ComfyUI's), else torch is asked."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if bf16_supported is None:
            bf16_supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_supported else torch.float32
    if dtype not in _DTYPE_NAMES:
        raise InputError("dtype", dtype, f"one of {', '.join(DTYPES)}")
    return _DTYPE_NAMES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 → "bf16" (the names DTYPES uses)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


# --------------------------------------------------------------------------- variants


def detect_variant(name_hints: list[str], config_json: dict | None, is_xl: bool) -> tuple[str, str]:
    """(variant, how it was decided). Variant is one of VARIANT_DEFAULTS' keys.

    Official configs say ``is_turbo``; base vs sft and the Comfy-Org files are told apart by the folder
    or file name (``acestep-v15-sft``, ``acestep_v1.5_xl_base_bf16.safetensors`` …).
    """
    kind, how = None, ""
    for hint in name_hints:
        low = os.path.basename(os.path.normpath(hint)).lower()
        for candidate in ("sft", "base", "turbo"):
            if re.search(rf"(^|[^a-z]){candidate}([^a-z]|$)", low):
                kind, how = candidate, f"name {os.path.basename(os.path.normpath(hint))!r}"
                break
        if kind:
            break
    if config_json is not None:
        if config_json.get("is_turbo") is True:
            kind, how = "turbo", "config.json is_turbo"
        elif kind is None and str(config_json.get("model_version", "")).lower() in ("base", "sft"):
            kind, how = str(config_json["model_version"]).lower(), "config.json model_version"
        elif kind is None and config_json.get("is_turbo") is False:
            kind, how = "base", "config.json is_turbo=false"
    if kind is None:
        kind, how = "turbo", "nothing told the variant; assuming turbo"
    return ("xl_" + kind if is_xl else kind), how


# --------------------------------------------------------------------------- components


@dataclass
class DitCheckpoint:
    model: AceStepModel
    variant: str
    variant_source: str
    path: str
    silence_latent: torch.Tensor | None = None  # [1, T, 64], only when the checkpoint ships one

    @property
    def defaults(self):
        return VARIANT_DEFAULTS[self.variant]


def read_dit_config(path: str) -> tuple[AceStepConfig, dict | None, str]:
    """(config, the official config.json or None, key prefix) of a DiT folder or file, without reading weights."""
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise CheckpointError(f"{path}: no config.json — not an ACE-Step 1.5 model folder")
        config_json = read_json(config_path)
        if config_json.get("model_type") not in (None, "acestep"):
            raise CheckpointError(f"{config_path}: model_type is {config_json.get('model_type')!r}, not 'acestep'")
        return AceStepConfig.from_json(config_json, source=config_path), config_json, ""
    shapes = safetensors_keys(path)
    prefix = dit_prefix(shapes)
    if prefix is None:
        raise CheckpointError(f"{path}: not an ACE-Step 1.5 diffusion model (no {DIT_MARKER!r} tensor)")
    config = AceStepConfig.from_shapes({k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)},
                                       source=path)
    return config, None, prefix


def load_dit(path: str, dtype: torch.dtype = torch.float32, device="cpu", weight_dtype: str = "default"
             ) -> DitCheckpoint:
    """A DiT checkpoint: an official variant folder, or a Comfy-Org diffusion-model / all-in-one file.
    ``weight_dtype``: the decoder's Linear weights as loaded ("default") or in an fp8 format (``memory.fp8``)."""
    from ..memory.fp8 import check_weight_dtype, dit_from_state_dict, keeps_for_quantising, keeps_stored_dtype

    check_weight_dtype(weight_dtype)
    keep = keeps_stored_dtype if weight_dtype == "default" else keeps_for_quantising
    device = torch.device(device)
    config, config_json, prefix = read_dit_config(path)
    if os.path.isdir(path):
        files = sharded_files(path)
        state = read_safetensors(files, dtype, device, keep=keep)
        source = files[0] if len(files) == 1 else f"{path} (sharded)"
        silence_path = os.path.join(path, "silence_latent.pt")
        if not os.path.isfile(silence_path):
            raise CheckpointError(
                f"{silence_path}: missing. The official folder ships it next to model.safetensors; "
                "download the folder again (or use the Comfy-Org files, whose silence latent is derived "
                "from the VAE)")
        silence = load_silence_latent_file(silence_path, dtype, device, channels=config.audio_acoustic_hidden_dim)
    else:
        state = read_safetensors(path, dtype, device, select=lambda k: k.startswith(prefix), keep=keep)
        state = {k[len(prefix):]: v for k, v in state.items()}
        source, silence = path, None
    model = dit_from_state_dict(state, config, dtype, weight_dtype, source=source)
    variant, how = detect_variant([path], config_json, config.is_xl)
    return DitCheckpoint(model, variant, how, path, silence)


def load_vae(path: str, dtype: torch.dtype = torch.float32, device="cpu") -> OobleckVAE:
    """The VAE: an official ``vae/`` folder, a Comfy-Org VAE file, or an all-in-one file (``vae.`` keys)."""
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        cfg = VaeConfig.from_diffusers_config(read_json(config_path), config_path)
        files = sharded_files(path, "diffusion_pytorch_model.safetensors")
        raw = read_safetensors(files, None, "cpu")
        source = files[0]
    else:
        keys = safetensors_keys(path)
        prefix = AIO_VAE_PREFIX if any(k.startswith(AIO_VAE_PREFIX) for k in keys) else ""
        raw = read_safetensors(path, None, "cpu", select=lambda k: k.startswith(prefix))
        raw = {k[len(prefix):]: v for k, v in raw.items()}
        cfg, source = None, path
    # Weight norm is fused in float32 inside from_state_dict, then cast to ``dtype``: the stored (g, v)
    # pairs are read once as stored, never as a full float32 model.
    return OobleckVAE.from_state_dict(raw, config=cfg, dtype=dtype, device=device, source=source)


# --------------------------------------------------------------------------- the whole set


@dataclass
class AceStepCheckpoint:
    """Everything generation needs, loaded."""

    dit: DitCheckpoint
    vae: OobleckVAE
    text_encoder: TextEncoder
    tokenizer: object
    silence_latent: torch.Tensor  # [1, T, 64] in the model dtype
    paths: dict = field(default_factory=dict)

    @property
    def model(self) -> AceStepModel:
        return self.dit.model

    @property
    def variant(self) -> str:
        return self.dit.variant


@dataclass
class CheckpointPaths:
    dit: str
    vae: str
    text_encoder: str
    tokenizer_dir: str | None  # None = the Qwen3 tokenizer shipped with the pack


def _find_file(folder: str, preferred: list[str], marker) -> str | None:
    if not os.path.isdir(folder):
        return None
    names = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
    for name in preferred + names:
        candidate = os.path.join(folder, name)
        if name in names and marker(candidate):
            return candidate
    return None


def resolve_paths(path: str, vae: str | None = None, text_encoder: str | None = None,
                  tokenizer_dir: str | None = None, dit_folder: str | None = None) -> CheckpointPaths:
    """Work out where each component lives from one user-given path (plus optional overrides).

    ``path`` may be an official root (``dit_folder`` picks among several ``acestep-v15-*`` folders; default
    turbo, else the only one), one DiT folder of it, a Comfy-Org diffusion-model file (the VAE and text
    encoder are then looked up in the sibling ``vae/`` and ``text_encoders/`` model folders unless given),
    or an all-in-one file.
    """
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or folder")
    if os.path.isdir(path) and not is_dit_folder(path):
        dits = model_folders(path)
        if not dits and adapter_kind(path):
            raise adapter_not_a_model(path, adapter_kind(path))
        if not dits:
            raise CheckpointError(f"{path}: no acestep-v15-* model folder inside (expected the official layout: "
                                  f"acestep-v15-turbo/, vae/, {TEXT_ENCODER_DIR}/)")
        if dit_folder is None:
            dit_folder = DEFAULT_DIT_DIR if DEFAULT_DIT_DIR in dits else dits[0] if len(dits) == 1 else None
            if dit_folder is None:
                raise CheckpointError(f"{path}: several model folders ({', '.join(dits)}); choose one")
        else:
            dit_folder = _folder_name(dit_folder, dits, path)
        root, dit = path, os.path.join(path, dit_folder)
    elif dit_folder is not None:
        raise CheckpointError(f"{path}: one model, not a models folder; a model folder ({dit_folder!r}) can only be "
                              "chosen inside a folder holding acestep-v15-* folders")
    elif os.path.isdir(path):
        root, dit = os.path.dirname(os.path.normpath(path)), path
    else:
        root, dit = None, path

    if root is not None:  # official layout
        vae = vae or os.path.join(root, "vae")
        text_encoder = text_encoder or os.path.join(root, TEXT_ENCODER_DIR)
        for label, p in (("vae", vae), ("text encoder", text_encoder)):
            if not os.path.exists(p):
                raise CheckpointError(f"{p}: missing ({label} of the official layout)")
    else:  # a single file
        keys = safetensors_keys(dit)
        if dit_prefix(keys) is None:
            kind = adapter_kind(dit)
            raise adapter_not_a_model(dit, kind) if kind else CheckpointError(
                f"{dit}: not an ACE-Step 1.5 diffusion model (no {DIT_MARKER!r} tensor)")
        if any(k.startswith(AIO_VAE_PREFIX) for k in keys) and vae is None:
            vae = dit
        if any(k.startswith(AIO_TEXT_PREFIX) for k in keys) and text_encoder is None:
            text_encoder = dit
        models_dir = os.path.dirname(os.path.dirname(os.path.abspath(dit)))
        vae = vae or _find_file(os.path.join(models_dir, "vae"), ["ace_1.5_vae.safetensors"], is_vae_file)
        prefix = dit_prefix(keys) or ""
        width = keys[prefix + "encoder.text_projector.weight"][1] if prefix + "encoder.text_projector.weight" in keys else 1024
        text_encoder = text_encoder or _find_file(os.path.join(models_dir, "text_encoders"),
                                                  ["qwen_0.6b_ace15.safetensors"],
                                                  lambda p: is_text_encoder_file(p, width))
        if vae is None:
            raise CheckpointError(f"{dit}: no VAE found; put ace_1.5_vae.safetensors in {models_dir}/vae "
                                  "or pass the VAE path")
        if text_encoder is None:
            raise CheckpointError(f"{dit}: no text encoder found; put qwen_0.6b_ace15.safetensors in "
                                  f"{models_dir}/text_encoders or pass the text-encoder path")
    if tokenizer_dir is None and os.path.isdir(text_encoder) and os.path.isfile(os.path.join(text_encoder, "tokenizer.json")):
        tokenizer_dir = text_encoder
    return CheckpointPaths(dit, vae, text_encoder, tokenizer_dir)


def _folder_name(choice: str, folders: list[str], root: str) -> str:
    """A model folder by its name or by its variant: "base" and "xl-sft" mean acestep-v15-base and
    acestep-v15-xl-sft."""
    for candidate in (choice, "acestep-v15-" + choice.lower().replace("_", "-")):
        if candidate in folders:
            return candidate
    raise CheckpointError(f"{root}: no model folder {choice!r}; found {', '.join(folders)}")


@dataclass
class CheckpointInfo:
    """What a checkpoint is, read from config files and headers only (no weights)."""

    paths: CheckpointPaths
    config: AceStepConfig
    variant: str
    variant_source: str


def inspect_checkpoint(path: str, vae: str | None = None, text_encoder: str | None = None,
                       tokenizer_dir: str | None = None, dit_folder: str | None = None) -> CheckpointInfo:
    """Where each component is and which variant the DiT is, without loading anything."""
    paths = resolve_paths(path, vae, text_encoder, tokenizer_dir, dit_folder)
    config, config_json, _ = read_dit_config(paths.dit)
    variant, how = detect_variant([paths.dit], config_json, config.is_xl)
    return CheckpointInfo(paths, config, variant, how)


def load_checkpoint(path: str, dtype="auto", device=None, vae: str | None = None,
                    text_encoder: str | None = None, tokenizer_dir: str | None = None,
                    dit_folder: str | None = None, vae_dtype=None, weight_dtype: str = "default") -> AceStepCheckpoint:
    """Load every component from either layout (see ``resolve_paths`` for what ``path`` may be). ``weight_dtype``:
    see ``load_dit``."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    vae_dtype = resolve_dtype(vae_dtype, device) if vae_dtype is not None else dtype
    paths = resolve_paths(path, vae, text_encoder, tokenizer_dir, dit_folder)
    dit = load_dit(paths.dit, dtype, device, weight_dtype)
    vae_model = load_vae(paths.vae, vae_dtype, device)
    text = load_text_encoder(paths.text_encoder, dtype, device)
    tokenizer = load_tokenizer(paths.tokenizer_dir)
    silence = dit.silence_latent
    if silence is None:
        silence = silence_latent_for_vae(vae_model).to(device=device, dtype=dtype)
    return AceStepCheckpoint(dit, vae_model, text, tokenizer, silence, paths=vars(paths))
