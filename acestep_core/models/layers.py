"""Building blocks shared by the DiT, the condition encoder and the audio tokenizer/detokenizer.

Qwen3 semantics throughout (as the original ACE-Step 1.5 code uses them): RMSNorm computed in float32,
SwiGLU MLP, grouped-query attention with per-head RMSNorm on q and k, RoPE (half-split, applied after the
q/k norm, self-attention only), never causal. Attention runs through
``torch.nn.functional.scaled_dot_product_attention``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32, cast back, then scale: the order Qwen3RMSNorm uses (matters in bf16).
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Rotary(nn.Module):
    """RoPE tables for positions 0..L-1 (Qwen3 layout: frequencies duplicated as [f | f]).

    The original model is cast with ``model.to(dtype)``, which also rounds the ``inv_freq`` buffer to that
    dtype before cos/sin are computed in float32; we reproduce that rounding (``freq_dtype``) so bf16 runs
    see the same angles. Tables are cached per (length, device, dtype): every sampling step reuses them.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.freq_dtype = torch.float32
        self._cache: dict = {}

    def inv_freq(self, device) -> torch.Tensor:
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        return (1.0 / (self.theta**exponent)).to(self.freq_dtype).float()

    def forward(self, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (length, str(device), dtype, self.freq_dtype)
        if key not in self._cache:
            pos = torch.arange(length, device=device, dtype=torch.float32)
            freqs = torch.outer(pos, self.inv_freq(device))
            emb = torch.cat([freqs, freqs], dim=-1)
            self._cache = {key: (emb.cos().to(dtype), emb.sin().to(dtype))}
        return self._cache[key]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, L, D]; cos/sin: [L, D]. Half-split rotation, computed in x's dtype like the original."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def attention_mask(
    length: int, device, sliding_window: int | None = None, key_padding: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Boolean SDPA mask (True = attend) for bidirectional attention.

    ``sliding_window`` w keeps |i - j| <= w (257 keys for w = 128); ``key_padding`` [B, L] (1 = valid)
    hides padded keys. Returns None when nothing is masked, so SDPA can take its unmasked fast path.
    """
    mask = None
    if sliding_window is not None and length - 1 > sliding_window:
        idx = torch.arange(length, device=device)
        mask = ((idx[:, None] - idx[None, :]).abs() <= sliding_window)[None, None]
    if key_padding is not None and not bool(key_padding.all()):
        keys = key_padding.bool()[:, None, None, :]
        mask = keys if mask is None else mask & keys
    return mask


class Attention(nn.Module):
    """GQA attention with q/k RMSNorm. Self-attention gets RoPE; cross-attention takes precomputed K/V."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, head_dim: int, eps: float, kv_dim: int | None = None):
        super().__init__()
        kv_dim = kv_dim or dim
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(kv_dim, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(kv_dim, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def _heads(self, x: torch.Tensor, proj: nn.Linear, norm: RMSNorm | None) -> torch.Tensor:
        h = proj(x).unflatten(-1, (-1, self.head_dim))
        if norm is not None:
            h = norm(h)
        return h.transpose(1, 2)  # [B, H, L, D]

    def key_value(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of a (cross-attention) context; computed once and reused across sampling steps."""
        return self._heads(context, self.k_proj, self.k_norm), self._heads(context, self.v_proj, None)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        q = self._heads(x, self.q_proj, self.q_norm)
        if kv is None:
            k, v = self.key_value(x)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        else:
            k, v = kv
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_heads != self.n_kv_heads)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    """Pre-norm transformer block used by every encoder-side module (lyric, timbre, pooler, detokenizer)."""

    def __init__(self, dim: int, hidden: int, n_heads: int, n_kv_heads: int, head_dim: int, eps: float, sliding: bool):
        super().__init__()
        self.sliding = sliding
        self.self_attn = Attention(dim, n_heads, n_kv_heads, head_dim, eps)
        self.input_layernorm = RMSNorm(dim, eps)
        self.post_attention_layernorm = RMSNorm(dim, eps)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor, rope, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class EncoderStack(nn.Module):
    """``embed_tokens`` → N encoder layers (sliding/full per layer type, RoPE from position 0) → RMSNorm.

    The lyric encoder, timbre encoder, attention pooler and detokenizer are all this stack with a different
    input width and number of layers; their parameter names follow the original checkpoint.
    """

    def __init__(self, cfg, in_dim: int, n_layers: int):
        super().__init__()
        self.sliding_window = cfg.sliding_window if cfg.use_sliding_window else None
        self.embed_tokens = nn.Linear(in_dim, cfg.hidden_size)
        self.layers = nn.ModuleList(
            EncoderLayer(
                cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                cfg.head_dim, cfg.rms_norm_eps, sliding=cfg.layer_types[i] == "sliding_attention",
            )
            for i in range(n_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)

    def run_layers(self, h: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        rope = self.rotary(h.shape[1], h.device, h.dtype)
        full = attention_mask(h.shape[1], h.device, None, key_padding)
        sliding = attention_mask(h.shape[1], h.device, self.sliding_window, key_padding)
        for layer in self.layers:
            h = layer(h, rope, sliding if layer.sliding else full)
        return self.norm(h)
