"""Audio tokenizer (25 Hz latents → 5 Hz FSQ codes) and detokenizer (5 Hz codes → 25 Hz "LM hints").

Tokenizer (``tokenizer.*``): ``audio_acoustic_proj`` (64 → D) on every frame, an attention pooler that
summarises each 5-frame window through a learned CLS token, then a single-level residual FSQ with levels
[8, 8, 8, 5, 5, 5] (64 000 codes). Detokenizer (``detokenizer.*``): each 5 Hz vector is repeated over the
window, offset by 5 learned tokens, run through two encoder layers and projected back to 64 channels.
The FSQ is ours, written to match vector-quantize-pytorch's ``ResidualFSQ`` as the original configures it
(symmetry-preserving levels, hard clamp after a tanh soft clamp at 1 + 1/(L − 1)).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import AceStepConfig
from .layers import EncoderStack


class FSQ(nn.Module):
    """Finite scalar quantiser with input/output projections (``tokenizer.quantizer.*``).

    Quantisation proper (level index, code value, code id) always runs in float32, as the original's
    library forces; ``float32_projections`` also runs the projections in float32 (the XL model does).
    """

    def __init__(self, dim: int, levels: list[int], float32_projections: bool = False):
        super().__init__()
        self.levels = list(levels)
        self.float32_projections = float32_projections
        self.project_in = nn.Linear(dim, len(levels))
        self.project_out = nn.Linear(len(levels), dim)

    @property
    def codebook_size(self) -> int:
        return int(torch.tensor(self.levels).prod())

    def _level_tensors(self, device):
        levels = torch.tensor(self.levels, device=device)
        basis = torch.cumprod(torch.tensor([1] + self.levels[:-1], device=device), 0)
        return levels, basis

    def _project(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if self.float32_projections:
            return nn.functional.linear(x.float(), linear.weight.float(), linear.bias.float())
        return linear(x)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h [..., D] → (quantised embedding [..., D] in h's dtype, code ids [...] int64)."""
        levels, basis = self._level_tensors(h.device)
        z = self._project(self.project_in, h)
        # Soft clamp with the bound in z's dtype (the original's buffer is cast along with the model).
        bound = (1 + 1 / (levels.float() - 1)).to(z.dtype)
        z = (z / bound).tanh() * bound
        level_index = torch.floor((levels - 1) * (z.float().clamp(-1, 1) + 1) / 2 + 0.5)
        codes = level_index * (2 / (levels - 1)) - 1
        ids = (level_index.long() * basis).sum(-1)
        return self._project(self.project_out, codes.to(z.dtype)).to(h.dtype), ids

    def embed_codes(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Code ids [...] → quantised embedding [..., D] (the original's ``get_output_from_indices``).

        The code values come from the original's implicit codebook, a float buffer that is rounded to the
        model dtype (e.g. −0.7143 → −0.71484375 in bf16); ``.to(dtype)`` reproduces that.
        """
        levels, basis = self._level_tensors(ids.device)
        level_index = (ids.long()[..., None] // basis) % levels
        codes = (level_index.float() * (2 / (levels - 1)) - 1).to(dtype)
        proj_dtype = torch.float32 if self.float32_projections else dtype
        return self._project(self.project_out, codes.to(proj_dtype)).to(dtype)


class AttentionPooler(EncoderStack):
    """Summarise each window of frames [B, N, P, D] into one vector [B, N, D] through a CLS token."""

    def __init__(self, cfg: AceStepConfig):
        super().__init__(cfg, cfg.hidden_size, cfg.num_attention_pooler_hidden_layers)
        self.special_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        b, n, p, d = windows.shape
        h = self.embed_tokens(windows)
        h = torch.cat([self.special_token.expand(b, n, 1, -1).to(h.dtype), h], dim=2).reshape(b * n, p + 1, -1)
        return self.run_layers(h)[:, 0].reshape(b, n, -1)


class AudioTokenizer(nn.Module):
    def __init__(self, cfg: AceStepConfig, float32_quantizer: bool):
        super().__init__()
        self.pool_window_size = cfg.pool_window_size
        self.audio_acoustic_proj = nn.Linear(cfg.audio_acoustic_hidden_dim, cfg.hidden_size)
        self.attention_pooler = AttentionPooler(cfg)
        self.quantizer = FSQ(cfg.fsq_dim, cfg.fsq_input_levels, float32_projections=float32_quantizer)

    def forward(self, latents: torch.Tensor, silence_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """25 Hz latents [B, T, 64] → (5 Hz quantised embeddings [B, ⌈T/5⌉, D], codes [B, ⌈T/5⌉]).

        T is padded up to a multiple of the window with the first frames of the silence latent [1, ≥P, 64].
        """
        b, t, _ = latents.shape
        pad = -t % self.pool_window_size
        if pad:
            fill = silence_latent[:, :pad].to(latents).expand(b, -1, -1)
            latents = torch.cat([latents, fill], dim=1)
        windows = latents.unflatten(1, (-1, self.pool_window_size))
        pooled = self.attention_pooler(self.audio_acoustic_proj(windows))
        return self.quantizer(pooled)


class AudioDetokenizer(EncoderStack):
    """5 Hz embeddings [B, N, D] → 25 Hz latent-space hints [B, N·P, 64]."""

    def __init__(self, cfg: AceStepConfig):
        super().__init__(cfg, cfg.hidden_size, cfg.num_attention_pooler_hidden_layers)
        self.pool_window_size = cfg.pool_window_size
        self.special_tokens = nn.Parameter(torch.zeros(1, cfg.pool_window_size, cfg.hidden_size))
        self.proj_out = nn.Linear(cfg.hidden_size, cfg.audio_acoustic_hidden_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        b, n, _ = embeddings.shape
        h = self.embed_tokens(embeddings)[:, :, None] + self.special_tokens[None].to(embeddings.dtype)
        h = self.run_layers(h.reshape(b * n, self.pool_window_size, -1))
        return self.proj_out(h).reshape(b, n * self.pool_window_size, -1)
