"""The condition encoder (``encoder.*``): caption, lyrics and timbre → one packed cross-attention sequence.

* caption: Qwen3-Embedding last hidden state → ``text_projector`` (no bias);
* lyrics: Qwen3 token embeddings → 8-layer lyric encoder (key padding masked);
* timbre: reference VAE latents [N_ref, T, 64] → 4-layer timbre encoder → position 0 per reference
  (XL checkpoints first prepend a learned CLS token; the 2B model keeps that token but never uses it);
* packing: [valid lyric tokens, valid timbre vectors, valid text tokens, then every padding slot].
"""
from __future__ import annotations

import torch
from torch import nn

from .config import AceStepConfig
from .layers import EncoderStack


def pack_sequences(a: torch.Tensor, b: torch.Tensor, mask_a: torch.Tensor, mask_b: torch.Tensor):
    """Concatenate along time and move valid positions to the front, keeping their order (stable sort)."""
    h = torch.cat([a, b], dim=1)
    m = torch.cat([mask_a, mask_b], dim=1)
    order = m.int().argsort(dim=1, descending=True, stable=True)
    h = torch.gather(h, 1, order[..., None].expand_as(h))
    new_mask = torch.arange(m.shape[1], device=m.device)[None] < m.sum(dim=1, keepdim=True)
    return h, new_mask


def unpack_references(vectors: torch.Tensor, order_mask: torch.Tensor):
    """Spread packed reference vectors [N, D] to [B, max_refs, D] (+ validity mask) by batch index.

    ``order_mask[n]`` is the batch item that reference n belongs to; references keep their relative order
    within an item, empty slots are zero vectors.
    """
    n, d = vectors.shape
    batch = int(order_mask.max().item()) + 1
    counts = torch.bincount(order_mask, minlength=batch)
    slots = int(counts.max().item())
    slot_in_item = torch.zeros_like(order_mask)
    for item in range(batch):
        where = (order_mask == item).nonzero().squeeze(-1)
        slot_in_item[where] = torch.arange(where.numel(), device=order_mask.device)
    flat = order_mask * slots + slot_in_item
    out = vectors.new_zeros(batch * slots, d).index_copy(0, flat, vectors)
    mask = torch.zeros(batch * slots, dtype=torch.long, device=vectors.device).index_fill(0, flat, 1)
    return out.view(batch, slots, d), mask.view(batch, slots)


class LyricEncoder(EncoderStack):
    def __init__(self, cfg: AceStepConfig):
        super().__init__(cfg, cfg.text_hidden_dim, cfg.num_lyric_encoder_hidden_layers)

    def forward(self, lyric_embeds: torch.Tensor, lyric_mask: torch.Tensor) -> torch.Tensor:
        return self.run_layers(self.embed_tokens(lyric_embeds), lyric_mask)


class TimbreEncoder(EncoderStack):
    def __init__(self, cfg: AceStepConfig, prepend_cls: bool):
        super().__init__(cfg, cfg.timbre_hidden_dim, cfg.num_timbre_encoder_hidden_layers)
        self.prepend_cls = prepend_cls
        self.special_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))

    def forward(self, refer_latents: torch.Tensor, order_mask: torch.Tensor):
        h = self.embed_tokens(refer_latents)
        if self.prepend_cls:
            h = torch.cat([self.special_token.expand(h.shape[0], 1, -1).to(h.dtype), h], dim=1)
        return unpack_references(self.run_layers(h)[:, 0], order_mask)


class ConditionEncoder(nn.Module):
    def __init__(self, cfg: AceStepConfig, is_xl: bool):
        super().__init__()
        self.text_projector = nn.Linear(cfg.text_hidden_dim, cfg.hidden_size, bias=False)
        self.lyric_encoder = LyricEncoder(cfg)
        self.timbre_encoder = TimbreEncoder(cfg, prepend_cls=is_xl)

    def forward(
        self,
        text_hidden: torch.Tensor,
        text_mask: torch.Tensor,
        lyric_embeds: torch.Tensor,
        lyric_mask: torch.Tensor,
        refer_latents: torch.Tensor,
        refer_order: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the packed condition [B, Ll + max_refs + Lt, D] and its validity mask (bool)."""
        text = self.text_projector(text_hidden)
        lyrics = self.lyric_encoder(lyric_embeds, lyric_mask)
        timbre, timbre_mask = self.timbre_encoder(refer_latents, refer_order)
        packed, mask = pack_sequences(lyrics, timbre, lyric_mask, timbre_mask)
        return pack_sequences(packed, text, mask, text_mask)

