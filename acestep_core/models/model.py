"""The ACE-Step 1.5 DiT checkpoint as one module: DiT, condition encoder, audio tokenizer/detokenizer and
the learned unconditional embedding — the five top-level children of the original checkpoint."""
from __future__ import annotations

import torch
from torch import nn

from .audio_tokens import AudioDetokenizer, AudioTokenizer
from .condition import ConditionEncoder
from .config import AceStepConfig
from .dit import DiT
from .layers import Rotary
from ..loading.weights import assign_state_dict

# The original wraps the DiT's patch convolutions in Sequential(transpose, conv, transpose).
_CHECKPOINT_RENAMES = {"decoder.proj_in.1.": "decoder.proj_in.", "decoder.proj_out.1.": "decoder.proj_out."}


def from_checkpoint_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        for old, new in _CHECKPOINT_RENAMES.items():
            if k.startswith(old):
                k = new + k[len(old):]
        out[k] = v
    return out


def to_checkpoint_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        for old, new in _CHECKPOINT_RENAMES.items():
            if k.startswith(new):
                k = old + k[len(new):]
        out[k] = v
    return out


class AceStepModel(nn.Module):
    def __init__(self, cfg: AceStepConfig):
        super().__init__()
        self.config = cfg
        enc = cfg.encoder()
        self.decoder = DiT(cfg)
        self.encoder = ConditionEncoder(enc, is_xl=cfg.is_xl)
        self.tokenizer = AudioTokenizer(enc, float32_quantizer=cfg.is_xl)
        self.detokenizer = AudioDetokenizer(enc)
        self.null_condition_emb = nn.Parameter(torch.zeros(1, 1, enc.hidden_size))

    @property
    def dtype(self) -> torch.dtype:
        return self.null_condition_emb.dtype

    @property
    def device(self) -> torch.device:
        return self.null_condition_emb.device

    def match_rope_rounding(self, dtype: torch.dtype) -> None:
        """Round RoPE frequencies to ``dtype`` as ``model.to(dtype)`` does to the original's buffers."""
        for m in self.modules():
            if isinstance(m, Rotary):
                m.freq_dtype = dtype

    def codes_to_hints(self, codes: torch.Tensor) -> torch.Tensor:
        """5 Hz code ids [B, N] → 25 Hz hints [B, 5N, 64] (the path LM-written audio codes take)."""
        return self.detokenizer(self.tokenizer.quantizer.embed_codes(codes, self.dtype))

    def audio_to_hints(self, latents: torch.Tensor, silence_latent: torch.Tensor) -> torch.Tensor:
        """Re-quantise source latents [B, T, 64] through the 5 Hz bottleneck → hints [B, T, 64] (cover)."""
        quantized, _ = self.tokenizer(latents, silence_latent)
        return self.detokenizer(quantized)[:, : latents.shape[1]]

    @classmethod
    def from_state_dict(
        cls,
        state_dict: dict[str, torch.Tensor],
        config: AceStepConfig,
        source: str = "checkpoint",
    ) -> "AceStepModel":
        """Build on the meta device and assign the checkpoint's tensors (keys as in the original file)."""
        with torch.device("meta"):
            model = cls(config)
        assign_state_dict(model, from_checkpoint_keys(state_dict), source)
        model.match_rope_rounding(model.dtype)
        return model.eval().requires_grad_(False)
