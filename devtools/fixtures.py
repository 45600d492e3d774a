"""Writes deterministic tiny random ACE-Step 1.5 checkpoints in BOTH published layouts, at test time.

* official Hugging Face layout: ``<root>/acestep-v15-<variant>/`` (config.json, model.safetensors,
  silence_latent.pt), ``<root>/vae/`` (diffusers config + weight_g/weight_v), ``<root>/Qwen3-Embedding-0.6B/``
  (config.json, model.safetensors without prefix, the Qwen3 tokenizer files);
* Comfy-Org layout: ``<models>/diffusion_models/acestep_v1.5_<variant>.safetensors``,
  ``<models>/text_encoders/qwen_0.6b_ace15.safetensors`` (``model.`` prefix),
  ``<models>/vae/ace_1.5_vae.safetensors`` (stable-audio-tools names, parametrizations weight norm, [C] snake
  parameters) and ``<models>/checkpoints/ace_step_1.5_<variant>_aio.safetensors`` (all prefixed).

The same tensors go into both layouts, so loading either must give identical modules. All renamings here
are written independently of ``acestep_core`` (from the layouts documented by the references).
"""
from __future__ import annotations

import gzip
import json
import os

import torch
from safetensors.torch import save_file

from devtools.tiny import _generator, random_dit_checkpoint, random_tensor, tiny_config_json

TINY_VAE_CONFIG = {
    "_class_name": "AutoencoderOobleck",
    "audio_channels": 2,
    "channel_multiples": [1, 2],
    "decoder_channels": 4,
    "decoder_input_channels": 8,
    "downsampling_ratios": [2, 4],
    "encoder_hidden_size": 16,
    "sampling_rate": 200,  # hop 8 → 25 latent frames/s, like the real VAE (48 kHz / 1920)
}
TINY_QWEN3_CONFIG = {
    "architectures": ["Qwen3Model"],
    "model_type": "qwen3",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": 151669,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "attention_bias": False,
    "torch_dtype": "float32",
}
SILENCE_FRAMES = 400
BUNDLED_TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "acestep_core", "assets", "qwen3_tokenizer")


# --------------------------------------------------------------------------- VAE


def random_vae_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Diffusers-format (weight_g / weight_v) tiny Oobleck weights with non-trivial snake and gain values."""
    from diffusers import AutoencoderOobleck

    with torch.device("meta"):
        ref = AutoencoderOobleck(**{k: v for k, v in TINY_VAE_CONFIG.items() if not k.startswith("_")})
    out = {}
    for key, t in ref.state_dict().items():
        x = random_tensor(key, t.shape, seed)
        if key.endswith(("alpha", "beta")):
            x = 0.5 * torch.randn(t.shape, generator=_generator(seed, key))
        elif key.endswith("weight_g"):  # gains in [0.2, 0.6]: larger ones make the random network chaotic
            x = 0.2 + 0.4 * torch.rand(t.shape, generator=_generator(seed, key))
        elif key.endswith("weight_v"):
            x = torch.randn(t.shape, generator=_generator(seed, key))
        out[key] = x.contiguous()
    return out


def to_parametrizations(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """weight_g / weight_v → torch's parametrizations.weight.original0 / original1 names."""
    return {k.replace(".weight_g", ".parametrizations.weight.original0")
             .replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in sd.items()}


def to_stable_audio_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers Oobleck names → stable-audio-tools / ComfyUI names (nn.Sequential indices, snake params [C])."""
    unit = {"snake1": 0, "conv1": 1, "snake2": 2, "conv2": 3}
    blocks = {"encoder": {"res_unit1": 0, "res_unit2": 1, "res_unit3": 2, "snake1": 3, "conv1": 4},
              "decoder": {"snake1": 0, "conv_t1": 1, "res_unit1": 2, "res_unit2": 3, "res_unit3": 4}}
    out = {}
    for k, v in sd.items():
        *path, leaf = k.split(".")
        side = path[0]
        n_blocks = 1 + max(int(x.split(".")[2]) for x in sd if x.startswith(side + ".block."))
        if path[1] == "block":
            new = [side, "layers", str(int(path[2]) + 1), "layers", str(blocks[side][path[3]])]
            if len(path) == 5:
                new += ["layers", str(unit[path[4]])]
        else:
            new = [side, "layers", str({"conv1": 0, "snake1": n_blocks + 1, "conv2": n_blocks + 2}[path[1]])]
        out[".".join(new + [leaf])] = v.reshape(-1) if leaf in ("alpha", "beta") else v
    return out


def diffusers_vae_to_comfy(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """As in ComfyUI's ``ace_1.5_vae.safetensors``: stable-audio names, parametrizations weight norm."""
    return to_parametrizations(to_stable_audio_names(sd))


def silence_latent_of(vae_sd: dict[str, torch.Tensor], frames: int = SILENCE_FRAMES) -> torch.Tensor:
    """What the official silence_latent.pt is: the VAE posterior mean of digital silence, [1, C, frames].
    Computed here with the diffusers VAE (independent of ours) at full length."""
    from diffusers import AutoencoderOobleck

    vae = AutoencoderOobleck(**{k: v for k, v in TINY_VAE_CONFIG.items() if not k.startswith("_")})
    vae.load_state_dict(vae_sd)
    hop = 1
    for r in TINY_VAE_CONFIG["downsampling_ratios"]:
        hop *= r
    with torch.no_grad():
        mean = vae.encode(torch.zeros(1, 2, frames * hop)).latent_dist.mean
    return mean[:, :, :frames].contiguous()


# --------------------------------------------------------------------------- text encoder


def random_qwen3_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    from transformers import Qwen3Config, Qwen3Model

    cfg = Qwen3Config(**{k: v for k, v in TINY_QWEN3_CONFIG.items() if k not in ("architectures", "model_type",
                                                                                  "torch_dtype")})
    with torch.device("meta"):
        model = Qwen3Model(cfg)
    return {k: random_tensor("qwen." + k, v.shape, seed) for k, v in model.state_dict().items()}


def _copy_tokenizer_files(folder: str):
    with gzip.open(os.path.join(BUNDLED_TOKENIZER, "tokenizer.json.gz"), "rb") as f:
        data = f.read()
    with open(os.path.join(folder, "tokenizer.json"), "wb") as f:
        f.write(data)
    src = os.path.join(BUNDLED_TOKENIZER, "tokenizer_config.json")
    if os.path.isfile(src):
        with open(src, "rb") as f, open(os.path.join(folder, "tokenizer_config.json"), "wb") as g:
            g.write(f.read())


# --------------------------------------------------------------------------- writers


def _save(tensors: dict[str, torch.Tensor], path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def _json(data: dict, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def build_tensors(variant: str = "turbo", xl: bool = False, seed: int = 0) -> dict:
    cfg = tiny_config_json(xl=xl, variant=variant)
    vae = random_vae_state_dict(seed)
    return {
        "config": cfg,
        "dit": random_dit_checkpoint(cfg, seed),
        "vae": vae,
        "qwen": random_qwen3_state_dict(seed),
        "silence": silence_latent_of(vae),
    }


def write_hf_layout(root: str, tensors: dict, variant: str = "turbo") -> str:
    dit_dir = os.path.join(root, f"acestep-v15-{variant.replace('_', '-')}")
    _json(tensors["config"], os.path.join(dit_dir, "config.json"))
    _save(tensors["dit"], os.path.join(dit_dir, "model.safetensors"))
    torch.save(tensors["silence"], os.path.join(dit_dir, "silence_latent.pt"))
    _json(TINY_VAE_CONFIG, os.path.join(root, "vae", "config.json"))
    _save(tensors["vae"], os.path.join(root, "vae", "diffusion_pytorch_model.safetensors"))
    te = os.path.join(root, "Qwen3-Embedding-0.6B")
    _json(TINY_QWEN3_CONFIG, os.path.join(te, "config.json"))
    _save(tensors["qwen"], os.path.join(te, "model.safetensors"))
    _copy_tokenizer_files(te)
    return root


def tiny_models_folder(tmp_path_factory, *variants: str) -> str:
    """A fresh official models folder (pytest's ``tmp_path_factory``) holding the tiny ``variants`` (default turbo)
    with seed-0 tensors, and a temporary cache for the derived silence latents unless one is set."""
    os.environ.setdefault("ACESTEP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    root = str(tmp_path_factory.mktemp("models"))
    for variant in variants or ("turbo",):
        write_hf_layout(root, build_tensors(variant, seed=0), variant)
    return root


def write_comfy_layout(models: str, tensors: dict, variant: str = "turbo", dit_prefix: str = "") -> dict:
    """Split files + all-in-one; returns their paths."""
    name = variant
    paths = {
        "dit": os.path.join(models, "diffusion_models", f"acestep_v1.5_{name}.safetensors"),
        "text_encoder": os.path.join(models, "text_encoders", "qwen_0.6b_ace15.safetensors"),
        "vae": os.path.join(models, "vae", "ace_1.5_vae.safetensors"),
        "aio": os.path.join(models, "checkpoints", f"ace_step_1.5_{name}_aio.safetensors"),
    }
    comfy_vae = diffusers_vae_to_comfy(tensors["vae"])
    _save({dit_prefix + k: v for k, v in tensors["dit"].items()}, paths["dit"])
    _save({"model." + k: v for k, v in tensors["qwen"].items()}, paths["text_encoder"])
    _save(comfy_vae, paths["vae"])
    aio = {"model.diffusion_model." + k: v for k, v in tensors["dit"].items()}
    aio.update({"vae." + k: v for k, v in comfy_vae.items()})
    aio.update({"text_encoders.qwen3_06b.transformer.model." + k: v for k, v in tensors["qwen"].items()})
    _save(aio, paths["aio"])
    return paths
