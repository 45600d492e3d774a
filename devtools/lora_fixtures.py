"""Adapter files in every format the pack reads, written at test time for the tiny DiT (nothing downloaded).

* PEFT folder, as the official LoRA trainer saves it (``decoder.save_pretrained``): adapter_config.json +
  adapter_model.safetensors with ``base_model.model.<DiT module>.lora_{A,B}.weight`` (+ DoRA
  ``lora_magnitude_vector``);
* LyCORIS LoKr, as the official trainer saves it (``lycoris_net.save_weights`` with its metadata):
  lokr_weights.safetensors, ``lycoris_<DiT module with _>.{lokr_w1, lokr_w1_a, lokr_w1_b, lokr_w2, lokr_w2_a,
  lokr_w2_b, lokr_t2, alpha, dora_scale}`` and the trainer's config as JSON under the ``lokr_config`` metadata;
* single-file LoRAs in the namings of ComfyUI, PEFT without its folder, LyCORIS LoCon, kohya-style tools and
  diffusers (``lora_up/lora_down/alpha`` or ``lora_A/lora_B``, DoRA ``dora_scale``).

Module names are the original checkpoint's (``proj_in.1``), relative to the DiT. Shapes follow the tiny
config and the formats' own rules (LyCORIS' factorisation included); everything here is written
independently of ``acestep_core``, and the tests check the files against the peft and lycoris libraries.
"""
from __future__ import annotations

import json
import math
import os

import torch
from safetensors.torch import save_file

from devtools.tiny import _generator

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


# --------------------------------------------------------------------------- shapes


def module_shapes(config_json: dict, names: tuple[str, ...] | None = ATTENTION, conv: bool = False) -> dict:
    """DiT module (original name, relative to the DiT) → weight shape, for the Linear layers whose last name
    part is in ``names`` (None = every Linear), plus the patch-embedding Conv1d ``proj_in.1`` if ``conv``.

    ``names=None, conv=True`` is what the official LoKr trainer wraps: LyCORIS' default module classes
    (Linear, Conv1d, …) over the whole DiT; the ConvTranspose1d ``proj_out`` is not one of them."""
    d, inter = config_json["hidden_size"], config_json["intermediate_size"]
    q, kv = config_json["num_attention_heads"] * config_json["head_dim"], \
        config_json["num_key_value_heads"] * config_json["head_dim"]
    enc = config_json.get("encoder_hidden_size") or d
    shapes = {}
    for emb in ("time_embed", "time_embed_r"):
        shapes.update({f"{emb}.linear_1": (d, 256), f"{emb}.linear_2": (d, d), f"{emb}.time_proj": (6 * d, d)})
    shapes["condition_embedder"] = (d, enc)
    for i in range(config_json["num_hidden_layers"]):
        for attn in ("self_attn", "cross_attn"):
            p = f"layers.{i}.{attn}."
            shapes.update({p + "q_proj": (q, d), p + "k_proj": (kv, d), p + "v_proj": (kv, d), p + "o_proj": (d, q)})
        p = f"layers.{i}.mlp."
        shapes.update({p + "gate_proj": (inter, d), p + "up_proj": (inter, d), p + "down_proj": (d, inter)})
    shapes = {k: v for k, v in shapes.items() if names is None or k.rsplit(".", 1)[-1] in names}
    if conv:
        shapes["proj_in.1"] = (d, config_json["in_channels"], config_json["patch_size"])
    return shapes


def _randn(shape, seed: int, key: str, std: float) -> torch.Tensor:
    return std * torch.randn(*shape, generator=_generator(seed, key))


# --------------------------------------------------------------------------- LoRA (PEFT, single files)


def lora_factors(shapes: dict, rank: int | dict, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Random LoRA factors: module → {"down": [r, in(, k)], "up": [out, r(, 1)]}; ``rank`` per module if a dict.
    Both factors non-zero, sized so that each adapted weight changes by about a tenth (times the scale)."""
    out = {}
    for name, shape in shapes.items():
        r = rank[name] if isinstance(rank, dict) else rank
        fan_in = math.prod(shape[1:])
        down = _randn((r, *shape[1:]), seed, f"{name}.down", 1 / math.sqrt(fan_in))
        up = _randn((shape[0], r, *[1] * (len(shape) - 2)), seed, f"{name}.up", 0.1 / math.sqrt(r))
        out[name] = {"down": down, "up": up}
    return out


def dora_magnitudes(base: dict[str, torch.Tensor], shapes: dict, seed: int = 0, per_output: bool = True) -> dict:
    """DoRA magnitudes near the base weights' own norms (per output channel, or per input channel): module →
    a vector. ``base`` holds the DiT checkpoint tensors (``decoder.<module>.weight``)."""
    out = {}
    for name in shapes:
        w = base[f"decoder.{name}.weight"].float()
        dims = tuple(range(1, w.dim())) if per_output else (0, *range(2, w.dim()))
        norm = torch.linalg.vector_norm(w, dim=dims).flatten()
        out[name] = norm * (1 + 0.2 * torch.randn(norm.shape, generator=_generator(seed, f"{name}.dora")))
    return out


def write_peft(folder: str, factors: dict, r: int, alpha: float, target_modules=ATTENTION, use_rslora=False,
               magnitudes: dict | None = None, rank_pattern: dict | None = None, alpha_pattern: dict | None = None,
               dtype: torch.dtype | None = None) -> str:
    """A PEFT LoRA folder as ``decoder.save_pretrained`` writes it (the official trainer's task type)."""
    tensors = {}
    for name, f in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = f["down"]
        tensors[f"base_model.model.{name}.lora_B.weight"] = f["up"]
        if magnitudes is not None:  # PEFT keeps a conv's magnitude as [1, out, 1]
            m = magnitudes[name]
            tensors[f"base_model.model.{name}.lora_magnitude_vector"] = m if f["down"].dim() == 2 else m.view(1, -1, 1)
    config = {
        "peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "base_model_name_or_path": None,
        "r": r, "lora_alpha": alpha, "lora_dropout": 0.1, "target_modules": list(target_modules), "bias": "none",
        "use_rslora": use_rslora, "use_dora": magnitudes is not None, "rank_pattern": rank_pattern or {},
        "alpha_pattern": alpha_pattern or {}, "fan_in_fan_out": False, "init_lora_weights": True,
        "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None, "lora_bias": False,
        "inference_mode": True, "revision": None,
    }
    os.makedirs(folder, exist_ok=True)
    _save(tensors, os.path.join(folder, "adapter_model.safetensors"), dtype, {"format": "pt"})
    with open(os.path.join(folder, "adapter_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return folder


def _diffusers_name(name: str) -> str:
    for old, new in ((".q_proj", ".to_q"), (".k_proj", ".to_k"), (".v_proj", ".to_v"), (".o_proj", ".to_out.0"),
                     ("proj_in.1", "proj_in_conv")):
        name = name.replace(old, new)
    return name


# style → (module name → key stem, up suffix, down suffix)
LORA_FILE_STYLES = {
    "comfyui": (lambda n: f"diffusion_model.decoder.{n}", ".lora_up.weight", ".lora_down.weight"),
    "comfyui_checkpoint": (lambda n: f"model.diffusion_model.decoder.{n}", ".lora_up.weight", ".lora_down.weight"),
    "peft_single": (lambda n: f"base_model.model.{n}", ".lora_B.weight", ".lora_A.weight"),
    "lycoris": (lambda n: "lycoris_" + n.replace(".", "_"), ".lora_up.weight", ".lora_down.weight"),
    "kohya": (lambda n: "lora_unet_decoder_" + n.replace(".", "_"), ".lora_up.weight", ".lora_down.weight"),
    "diffusers": (lambda n: "transformer." + _diffusers_name(n), ".lora_B.weight", ".lora_A.weight"),
    "bare_decoder": (lambda n: f"decoder.{n}", ".lora_B.weight", ".lora_A.weight"),
}


def write_lora_file(path: str, factors: dict, alpha: float | None, style: str = "comfyui",
                    dora_scales: dict | None = None, dtype: torch.dtype | None = None) -> str:
    """A single-file LoRA in one of ``LORA_FILE_STYLES``; ``alpha`` None writes no alpha keys (scale 1);
    ``dora_scales`` are written as LyCORIS ``dora_scale`` tensors, shaped as given."""
    stem, up_suffix, down_suffix = LORA_FILE_STYLES[style]
    tensors = {}
    for name, f in factors.items():
        key = stem(name)
        tensors[key + down_suffix] = f["down"]
        tensors[key + up_suffix] = f["up"]
        if alpha is not None:
            tensors[key + ".alpha"] = torch.tensor(float(alpha))
        if dora_scales is not None:
            tensors[key + ".dora_scale"] = dora_scales[name]
    return _save(tensors, path, dtype)


# --------------------------------------------------------------------------- LyCORIS LoKr


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS' split of a dimension into m ≤ n with m·n = dimension: m = ``factor`` when it divides, else the
    largest divisor not above √dimension (nor above ``factor`` when one is given)."""
    if factor > 0 and dimension % factor == 0:
        return min(factor, dimension // factor), max(factor, dimension // factor)
    limit = math.isqrt(dimension) if factor <= 0 else min(factor, math.isqrt(dimension))
    m = max(d for d in range(1, limit + 1) if dimension % d == 0)
    return m, dimension // m


# The official trainer's LoKRConfig defaults (acestep/training/configs.py), as stored in the metadata.
LOKR_CONFIG_DEFAULTS = {
    "linear_dim": 64, "linear_alpha": 128, "factor": -1, "decompose_both": False, "use_tucker": False,
    "use_scalar": False, "weight_decompose": False, "target_modules": list(ATTENTION), "full_matrix": False,
    "bypass_mode": False, "rs_lora": False, "unbalanced_factorization": False,
}


def lokr_module(shape: tuple, config: dict, seed: int, name: str) -> dict[str, torch.Tensor]:
    """Random LoKr tensors for one weight, shaped as LyCORIS lays them out for ``config`` (the trainer's
    LoKRConfig fields), with the alpha LyCORIS stores."""
    dim, full = config["linear_dim"], config["full_matrix"]
    out_l, out_k = factorization(shape[0], config["factor"])
    if config["unbalanced_factorization"]:
        out_l, out_k = out_k, out_l
    in_m, in_n = factorization(shape[1], config["factor"])
    kernel = tuple(shape[2:])
    fan_in = math.prod(shape[1:])
    t = {}

    def rnd(key, shp, std):
        t[key] = _randn(shp, seed, f"{name}.{key}", std)

    if config["decompose_both"] and dim < max(out_l, in_m) / 2 and not full:
        rnd("lokr_w1_a", (out_l, dim), 1.0)
        rnd("lokr_w1_b", (dim, in_m), 1 / math.sqrt(dim))
    else:
        rnd("lokr_w1", (out_l, in_m), 1.0)
    std2 = 0.05 / math.sqrt(fan_in)
    if dim >= max(out_k, in_n) / 2 or full:
        rnd("lokr_w2", (out_k, in_n, *kernel), std2)
    elif kernel and config["use_tucker"] and any(k != 1 for k in kernel):
        rnd("lokr_t2", (dim, dim, *kernel), 1 / math.sqrt(dim))
        rnd("lokr_w2_a", (dim, out_k), 1.0)
        rnd("lokr_w2_b", (dim, in_n), std2)
    else:
        rnd("lokr_w2_a", (out_k, dim), 1.0)
        rnd("lokr_w2_b", (dim, in_n * math.prod(kernel)), std2 / math.sqrt(dim))
    # LyCORIS stores alpha · rank / r_factor, and alpha = rank when both factors are whole. The trainer's
    # rs_lora never reaches the modules (create_lycoris does not pass it on), so r_factor is the rank.
    both_full = "lokr_w1" in t and "lokr_w2" in t
    t["alpha"] = torch.tensor(float(dim if both_full else (config["linear_alpha"] or dim)))
    return t


def write_lokr(path: str, shapes: dict, config: dict | None = None, seed: int = 0, base: dict | None = None,
               metadata: bool = True, naming: str = "lycoris", dtype: torch.dtype | None = None) -> str:
    """A LoKr file as the official trainer writes it: LyCORIS keys for every module in ``shapes``, alpha,
    ``dora_scale`` [out, 1] when ``weight_decompose`` (needs ``base``, the DiT checkpoint tensors), and the
    config under the ``lokr_config`` metadata (unless ``metadata`` is False). ``naming="comfyui"`` writes
    the same tensors under ComfyUI's names (``diffusion_model.decoder.<module>.lokr_w1`` …)."""
    config = {**LOKR_CONFIG_DEFAULTS, **(config or {})}
    tensors = {}
    for name, shape in shapes.items():
        key = "lycoris_" + name.replace(".", "_") if naming == "lycoris" else f"diffusion_model.decoder.{name}"
        for role, tensor in lokr_module(shape, config, seed, name).items():
            tensors[f"{key}.{role}"] = tensor
        if config["weight_decompose"]:
            m = dora_magnitudes(base, {name: shape}, seed)[name]
            tensors[f"{key}.dora_scale"] = m.view(-1, *[1] * (len(shape) - 1))
    meta = {"algo": "lokr", "format": "lycoris"}
    if metadata:
        meta["lokr_config"] = json.dumps(config, ensure_ascii=True)
    return _save(tensors, path, dtype, meta)


def _save(tensors: dict, path: str, dtype: torch.dtype | None, metadata: dict | None = None) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in tensors.items()}, path,
              metadata=metadata)
    return path


# --------------------------------------------------------------------------- a loras folder


EXAMPLE_LORA_FILE = "acestep_style.safetensors"  # names the LoRA workflow and the ComfyUI tests use
EXAMPLE_LOKR_FOLDER = "acestep_lokr"
EXAMPLE_PEFT_FOLDER = "official_trainer/adapter"


def write_example_loras(folder: str, config_json: dict, seed: int = 0) -> dict[str, str]:
    """A ``models/loras`` folder for the tiny models: a ComfyUI-named single-file LoRA on the attention
    projections, the official trainer's LoKr as a folder, and the official trainer's PEFT output as a
    folder in a subfolder. Returns the dropdown name → path of each."""
    attention = module_shapes(config_json)
    written = {
        EXAMPLE_LORA_FILE: write_lora_file(os.path.join(folder, EXAMPLE_LORA_FILE),
                                           lora_factors(attention, rank=4, seed=seed), alpha=4.0),
        EXAMPLE_LOKR_FOLDER: write_lokr(os.path.join(folder, EXAMPLE_LOKR_FOLDER, "lokr_weights.safetensors"),
                                        module_shapes(config_json, names=None, conv=True),
                                        {"linear_dim": 4, "linear_alpha": 8}, seed=seed + 1),
        EXAMPLE_PEFT_FOLDER: write_peft(os.path.join(folder, EXAMPLE_PEFT_FOLDER),
                                        lora_factors(attention, rank=4, seed=seed + 2), r=4, alpha=8),
    }
    return {name: (os.path.dirname(path) if name == EXAMPLE_LOKR_FOLDER else path) for name, path in written.items()}
