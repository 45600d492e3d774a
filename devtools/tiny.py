"""Tiny ACE-Step 1.5 geometries and deterministic random weights for tests (nothing is downloaded).

Weights are drawn per tensor from a generator seeded by (seed, key), so the same key always gets the same
values whatever else the checkpoint holds, and values are scaled so activations stay O(1) through the
stacks (norm weights near 1, projections ~ 1/sqrt(fan_in), tables and tokens O(0.5)).
"""
from __future__ import annotations

import hashlib

import torch

from acestep_core.models.config import AceStepConfig
from acestep_core.models.model import AceStepModel, to_checkpoint_keys


def tiny_config_json(xl: bool = False, variant: str = "turbo") -> dict:
    """A config.json in the official layout. XL splits the DiT width (48) from the encoders' (32)."""
    cfg = {
        "architectures": ["AceStepConditionGenerationModel"],
        "model_type": "acestep",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "use_sliding_window": True,
        "sliding_window": 3,
        "layer_types": ["sliding_attention", "full_attention"] * 2,
        "in_channels": 24,
        "audio_acoustic_hidden_dim": 8,
        "patch_size": 2,
        "text_hidden_dim": 16,
        "timbre_hidden_dim": 8,
        "num_lyric_encoder_hidden_layers": 2,
        "num_timbre_encoder_hidden_layers": 2,
        "num_attention_pooler_hidden_layers": 2,
        "pool_window_size": 5,
        "fsq_dim": 32,
        "fsq_input_levels": [8, 8, 8, 5, 5, 5],
        "fsq_input_num_quantizers": 1,
        "vocab_size": 64003,
        "timbre_fix_frame": 750,
        "max_position_embeddings": 32768,
        "hidden_act": "silu",
        "data_proportion": 0.5,
        "timestep_mu": -0.4,
        "timestep_sigma": 1.0,
        "is_turbo": variant.endswith("turbo"),
        "model_version": variant,
        # The heads lyric timestamps read (the 2B default names heads this geometry does not have).
        "lyric_alignment_layers_config": {"1": [0, 3], "2": [1], "3": [2]},
    }
    if xl:
        cfg.update(hidden_size=48, intermediate_size=96, num_attention_heads=6, encoder_hidden_size=32,
                   encoder_intermediate_size=64, encoder_num_attention_heads=4, encoder_num_key_value_heads=2)
    return cfg


def _generator(seed: int, key: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def random_tensor(key: str, shape, seed: int = 0) -> torch.Tensor:
    g = _generator(seed, key)
    x = torch.randn(*shape, generator=g)
    name = key.rsplit(".", 1)[-1]
    if "norm" in key and name == "weight":
        return 1.0 + 0.2 * x
    if name == "bias":
        return 0.1 * x
    if name == "weight" and len(shape) >= 2:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        if "proj_out" in key and len(shape) == 3:  # ConvTranspose1d weight is [in, out, k]
            fan_in = shape[0]
        return x / fan_in**0.5
    return 0.5 * x  # scale_shift tables, special tokens, null embedding


def random_dit_checkpoint(config_json: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every tensor of a DiT checkpoint, with the original file's key names (float32)."""
    with torch.device("meta"):
        model = AceStepModel(AceStepConfig.from_json(config_json))
    keys = to_checkpoint_keys(model.state_dict())
    return {k: random_tensor(k, v.shape, seed) for k, v in keys.items()}


def random_silence_latent(frames: int = 400, channels: int = 8, seed: int = 0) -> torch.Tensor:
    """A stand-in for silence_latent.pt as stored: [1, channels, frames]."""
    return 0.5 * torch.randn(1, channels, frames, generator=_generator(seed, "silence_latent"))
