"""The published checkpoint layouts, told apart from file names, config files and safetensors headers only (cheap:
no weights are read and no model code is imported, so listing models for a dropdown stays fast).

Official Hugging Face layout (``ACE-Step/Ace-Step1.5`` and the separate variant repos)::

    <root>/acestep-v15-<variant>/   config.json, model.safetensors (or sharded + index), silence_latent.pt
    <root>/vae/                     config.json, diffusion_pytorch_model.safetensors
    <root>/Qwen3-Embedding-0.6B/    config.json, model.safetensors, tokenizer.json, …

Comfy-Org repackaged files (``Comfy-Org/ace_step_1.5_ComfyUI_files``)::

    diffusion_models/acestep_v1.5_<variant>[_bf16].safetensors   DiT checkpoint keys (maybe model.diffusion_model.)
    text_encoders/qwen_0.6b_ace15.safetensors                     Qwen3 keys with a ``model.`` prefix
    vae/ace_1.5_vae.safetensors                                   stable-audio-tools Oobleck names
    checkpoints/ace_step_1.5_turbo_aio.safetensors                all three, prefixed (model.diffusion_model.,
                                                                  text_encoders.qwen3_06b.transformer., vae.)
"""
from __future__ import annotations

import os
import re

from ..constants import (
    ADAPTER_KEY_SUFFIXES, AUDIO_CODE_FIRST_ID, LOKR_WEIGHTS_FILE, PEFT_ADAPTER_SUBFOLDER, PEFT_CONFIG_FILE,
    TEXT_ENCODER_PREFIXES,
)
from ..errors import CheckpointError
from .weights import read_json, safetensors_keys

DIT_PREFIX = "model.diffusion_model."
AIO_VAE_PREFIX = "vae."
AIO_TEXT_PREFIX = "text_encoders.qwen3_06b.transformer."  # (+ "model.")
DIT_MARKER = "encoder.lyric_encoder.layers.0.input_layernorm.weight"  # what ComfyUI detects ACE 1.5 by
TEXT_ENCODER_DIR = "Qwen3-Embedding-0.6B"
DIT_DIR_PATTERN = re.compile(r"acestep-v15-")
DEFAULT_DIT_DIR = "acestep-v15-turbo"


def dit_prefix(keys) -> str | None:
    """The prefix under which a safetensors file holds an ACE-Step 1.5 DiT ("" for a Comfy-Org DiT file,
    "model.diffusion_model." in an all-in-one file), or None when it holds none (judged by the tensor ComfyUI
    detects ACE-Step 1.5 by)."""
    for prefix in ("", DIT_PREFIX):
        if prefix + DIT_MARKER in keys:
            return prefix
    return None


def is_acestep_dit_file(path: str) -> bool:
    """True for a safetensors file holding the ACE-Step 1.5 DiT (reads the header only)."""
    try:
        return dit_prefix(safetensors_keys(path)) is not None
    except CheckpointError:
        return False


def is_vae_file(path: str) -> bool:
    """True for a safetensors file holding an Oobleck VAE (decoder Snake activations, ``decoder.….beta``), as the
    ACE-Step 1.5 VAE is; SD/Flux-style VAEs have none (reads the header only)."""
    try:
        return any(k.startswith("decoder.") and k.endswith("beta") for k in safetensors_keys(path))
    except CheckpointError:
        return False


def is_text_encoder_file(path: str, width: int | None = None) -> bool:
    """True for a safetensors file holding the Qwen3 text encoder (Qwen3-Embedding-0.6B, ``qwen_0.6b_ace15``):
    Qwen3 names and a vocabulary of at most the Qwen3 text ids. The 5 Hz LMs (``qwen_1.7b/4b_ace15``, audio-code
    tokens past id 151668) share the folder and the names, and other models' Qwen encoders have padded
    vocabularies; neither is one. ``width``: the hidden size the DiT's text projector takes (reads the header only)."""
    try:
        shapes = safetensors_keys(path)
    except CheckpointError:
        return False
    for prefix in TEXT_ENCODER_PREFIXES:
        embed = shapes.get(prefix + "embed_tokens.weight")
        if embed is not None:
            return len(embed) == 2 and embed[0] <= AUDIO_CODE_FIRST_ID and (width is None or embed[1] == width)
    return False


def is_dit_folder(path: str) -> bool:
    """An official model folder: an acestep-v15-* folder with config.json, or any folder whose config.json
    describes an AceStep model next to its weights."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    if DIT_DIR_PATTERN.match(os.path.basename(os.path.normpath(path))):
        return True
    try:
        data = read_json(config)
    except CheckpointError:
        return False
    is_acestep = data.get("model_type") == "acestep" or any("AceStep" in str(a) for a in data.get("architectures") or [])
    return is_acestep and any(os.path.isfile(os.path.join(path, name))
                              for name in ("model.safetensors", "model.safetensors.index.json"))


def find_dit_folders(root: str, depth: int = 3) -> list[str]:
    """Official DiT folders under ``root`` (up to ``depth`` levels down), as relative paths with "/"."""
    found = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        rel = os.path.relpath(dirpath, root)
        if rel.count(os.sep) >= depth - 1:
            dirnames[:] = []
        dirnames.sort()
        if rel != "." and is_dit_folder(dirpath):
            found.append(rel.replace(os.sep, "/"))
            dirnames[:] = []
    return sorted(found)


def model_folders(root: str) -> list[str]:
    """The acestep-v15-* model folders directly inside an official root (empty for anything else)."""
    if not os.path.isdir(root) or is_dit_folder(root):
        return []
    return sorted(d for d in os.listdir(root)
                  if DIT_DIR_PATTERN.match(d) and os.path.isfile(os.path.join(root, d, "config.json")))


def adapter_kind(path: str) -> str | None:
    """What adapter ``path`` is — "a PEFT LoRA folder", "a LoKr folder", "a LoRA/LoKr file" — or None (file names
    and a safetensors header only). For telling a user who gave an adapter where a model belongs what it is."""
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, sub, PEFT_CONFIG_FILE)) for sub in ("", PEFT_ADAPTER_SUBFOLDER)):
            return "a PEFT LoRA folder"
        return "a LoKr folder" if os.path.isfile(os.path.join(path, LOKR_WEIGHTS_FILE)) else None
    try:
        keys = safetensors_keys(path)
    except CheckpointError:
        return None
    roles = {role for key in keys for suffix, role in ADAPTER_KEY_SUFFIXES.items() if key.endswith(suffix)}
    return "a LoRA/LoKr file" if roles - {"alpha"} else None


def adapter_not_a_model(path: str, kind: str) -> CheckpointError:
    """The error for an adapter given where a model belongs: what it is, and the three ways to apply it."""
    return CheckpointError(f"{path}: {kind}, an adapter, not a model; load a model and apply the adapter on top: "
                           f"--lora {path} (command line), pipe(req, adapters=[({path!r}, 1.0)]) (Python), or the "
                           "ACE-Step 1.5 LoRA Loader node with the file in models/loras (ComfyUI)")
