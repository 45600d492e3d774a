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

    def cover_hints(self, latents: torch.Tensor, silence_latent: torch.Tensor, fsq: bool = True) -> torch.Tensor:
        """The cover task's source context [B, T, 64] from source latents [B, T, 64].

        ``fsq=True``: re-quantised through the 5 Hz bottleneck (:meth:`audio_to_hints`, the cover task).
        ``fsq=False``: raw remix (upstream's ``cover-nofsq`` task, 83d02a0): the source latents themselves, in the
        model dtype. Upstream gets there by not flagging the item as a cover, so its condition keeps the VAE
        latents where a cover would put the detokenised FSQ codes; instruction and chunk mask stay the cover's.
        Audio codes from the LM are already quantised and take the :meth:`codes_to_hints` path either way.
        """
        if fsq:
            return self.audio_to_hints(latents, silence_latent)
        return latents.to(self.dtype)

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
