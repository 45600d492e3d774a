"""The ACE-Step 1.5 diffusion transformer (``decoder.*`` in the checkpoint).

Input channels are ordered [source/hints 64 | chunk mask 64 | noisy latent 64]; time is patched by 2
(25 Hz latents → 12.5 tokens/s). Each layer: AdaLN-modulated self-attention (RoPE, sliding band on even
layers) → plain cross-attention over the packed condition → AdaLN-modulated SwiGLU. The output is the
flow-matching velocity v ≈ noise − x0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import AceStepConfig
from .layers import Attention, RMSNorm, Rotary, SwiGLU, attention_mask


class TimestepEmbedding(nn.Module):
    """Sinusoid of t·1000 (256 dims, cos first) → MLP → ``temb`` [B, D] and six modulation vectors [B, 6, D]."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.time_proj = nn.Linear(dim, dim * 6)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        # t·1000 happens in t's dtype (bf16 rounding included), the trigonometry in float32, as in the original.
        args = (t * 1000)[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)
        temb = self.linear_2(F.silu(self.linear_1(emb)))
        return temb, self.time_proj(F.silu(temb)).unflatten(1, (6, -1))


class DiTLayer(nn.Module):
    def __init__(self, cfg: AceStepConfig, sliding: bool):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.sliding = sliding
        self.self_attn_norm = RMSNorm(d, eps)
        self.self_attn = Attention(d, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, eps)
        self.cross_attn_norm = RMSNorm(d, eps)
        self.cross_attn = Attention(d, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, eps)
        self.mlp_norm = RMSNorm(d, eps)
        self.mlp = SwiGLU(d, cfg.intermediate_size)
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 6, d))

    def forward(self, x, modulation, rope, mask, cross_kv):
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.scale_shift_table + modulation).chunk(6, dim=1)
        h = (self.self_attn_norm(x) * (1 + scale1) + shift1).type_as(x)
        x = (x + self.self_attn(h, rope, mask) * gate1).type_as(x)
        x = x + self.cross_attn(self.cross_attn_norm(x), kv=cross_kv)
        h = (self.mlp_norm(x) * (1 + scale2) + shift2).type_as(x)
        return (x + self.mlp(h) * gate2).type_as(x)


class DiT(nn.Module):
    def __init__(self, cfg: AceStepConfig):
        super().__init__()
        d = cfg.hidden_size
        enc_dim = cfg.encoder_hidden_size or d
        self.patch_size = cfg.patch_size
        self.sliding_window = cfg.sliding_window if cfg.use_sliding_window else None
        self.proj_in = nn.Conv1d(cfg.in_channels, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.time_embed = TimestepEmbedding(d)
        self.time_embed_r = TimestepEmbedding(d)
        self.condition_embedder = nn.Linear(enc_dim, d)
        self.layers = nn.ModuleList(
            DiTLayer(cfg, sliding=cfg.layer_types[i] == "sliding_attention")
            for i in range(cfg.num_hidden_layers)
        )
        self.norm_out = RMSNorm(d, cfg.rms_norm_eps)
        self.proj_out = nn.ConvTranspose1d(d, cfg.audio_acoustic_hidden_dim, kernel_size=cfg.patch_size,
                                           stride=cfg.patch_size)
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 2, d))
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)

    def cross_kv(self, encoder_hidden_states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention K/V of the packed condition [B, S, enc_dim].

        They depend only on the condition, so a sampler computes them once per generation and passes them
        to every step. The original's condition mask is discarded by its DiT: every slot (padding included)
        is attended, so no mask goes with them.
        """
        enc = self.condition_embedder(encoder_hidden_states)
        return [layer.cross_attn.key_value(enc) for layer in self.layers]

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        cross_kv: list[tuple[torch.Tensor, torch.Tensor]],
        r: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: noisy latent [B, T, 64]; t: [B] in [0, 1]; context: [B, T, 128] (source | chunk mask);
        r: the mean-flow second time (inference always uses r = t, the default). Returns velocity [B, T, 64]."""
        r = t if r is None else r
        temb_t, mod_t = self.time_embed(t)
        temb_r, mod_r = self.time_embed_r(t - r)
        temb, modulation = temb_t + temb_r, mod_t + mod_r

        length = x.shape[1]
        h = torch.cat([context, x], dim=-1)
        if length % self.patch_size:
            h = F.pad(h, (0, 0, 0, self.patch_size - length % self.patch_size))
        # contiguous: a transposed residual stream makes every linear below copy its weight (2x slower bf16 on CPU)
        h = self.proj_in(h.transpose(1, 2)).transpose(1, 2).contiguous()

        rope = self.rotary(h.shape[1], h.device, h.dtype)
        sliding = attention_mask(h.shape[1], h.device, self.sliding_window)
        for layer, kv in zip(self.layers, cross_kv):
            h = layer(h, modulation, rope, sliding if layer.sliding else None, kv)

        shift, scale = (self.scale_shift_table + temb[:, None]).chunk(2, dim=1)
        h = (self.norm_out(h) * (1 + scale) + shift).type_as(h)
        return self.proj_out(h.transpose(1, 2)).transpose(1, 2)[:, :length]
