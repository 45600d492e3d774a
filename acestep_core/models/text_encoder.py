"""The caption/lyrics text side of ACE-Step 1.5 as modules: the Qwen3 tokenizer wrapper and the
Qwen3-Embedding-0.6B encoder (transformers' ``Qwen3Model``).

Captions go through the full encoder (``last_hidden_state``); lyrics only through its token-embedding table (the
DiT's own lyric encoder does the rest).
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from transformers import Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from ..constants import (
    ENDOFTEXT_ID,
    LYRIC_MAX_TOKENS,
    QWEN3_MAX_POSITION_EMBEDDINGS,
    QWEN3_RMS_NORM_EPS,
    QWEN3_ROPE_THETA,
    TEXT_MAX_TOKENS,
)
from ..errors import CheckpointError
from ..loading.weights import assign_state_dict


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` that tokenizes one prompt at a time and right-pads the batch with
    <|endoftext|>, as the original does (its caption encoder runs without a mask, so padding side matters)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pad_id = ENDOFTEXT_ID

    def encode(self, text: str, max_length: int) -> list[int]:
        # Truncation leaves room for the tokens the post-processor appends, like a transformers fast tokenizer
        # called with truncation=True, max_length=max_length.
        self.tokenizer.enable_truncation(max_length)
        return self.tokenizer.encode(text).ids

    def count(self, text: str) -> int:
        """How many tokens ``text`` has before any truncation (special tokens included)."""
        self.tokenizer.no_truncation()
        return len(self.tokenizer.encode(text).ids)

    def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, both LongTensor [B, L] with L the longest item."""
        if isinstance(texts, str) or not texts:
            raise ValueError("encode_batch expects a non-empty list of strings")
        rows = [self.encode(text, max_length) for text in texts]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask



def infer_qwen3_config(state_dict: Mapping[str, torch.Tensor], source: str = "text encoder") -> dict:
    """A Qwen3 config dict from tensor shapes (bare names), for files that come without config.json. RoPE theta,
    norm epsilon and context length cannot be seen in the weights; they are Qwen3-Embedding-0.6B's."""

    def rows(key: str) -> int:
        if key not in state_dict:
            raise CheckpointError(f"{source}: cannot infer the text-encoder geometry, {key!r} is missing")
        return int(state_dict[key].shape[0])

    layer_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"layers\.(\d+)\.", k))}
    if not layer_ids:
        raise CheckpointError(f"{source}: no 'layers.N.*' tensors found in the text-encoder weights")
    head_dim = rows("layers.0.self_attn.q_norm.weight")
    return {
        "model_type": "qwen3",
        "vocab_size": rows("embed_tokens.weight"),
        "hidden_size": int(state_dict["embed_tokens.weight"].shape[1]),
        "intermediate_size": rows("layers.0.mlp.gate_proj.weight"),
        "num_hidden_layers": max(layer_ids) + 1,
        "num_attention_heads": rows("layers.0.self_attn.q_proj.weight") // head_dim,
        "num_key_value_heads": rows("layers.0.self_attn.k_proj.weight") // head_dim,
        "head_dim": head_dim,
        "rope_theta": QWEN3_ROPE_THETA,
        "rms_norm_eps": QWEN3_RMS_NORM_EPS,
        "max_position_embeddings": QWEN3_MAX_POSITION_EMBEDDINGS,
    }


class TextEncoder(nn.Module):
    """Qwen3-Embedding-0.6B: full forward for captions, embedding lookup for lyrics."""

    def __init__(self, model: Qwen3Model):
        super().__init__()
        self.model = model

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        config_dict: dict | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        source: str = "text encoder",
    ) -> "TextEncoder":
        """Build from bare transformers names (see :func:`strip_text_encoder_prefix`); the geometry comes from
        ``config_dict`` (an HF config.json) when given, else from the tensor shapes."""
        if config_dict is None:
            config_dict = infer_qwen3_config(state_dict, source)
        elif config_dict.get("model_type", "qwen3") != "qwen3":
            raise CheckpointError(f"{source}: config model_type is {config_dict['model_type']!r}, expected 'qwen3'")
        try:
            config = Qwen3Config(**config_dict)
            config._attn_implementation = "sdpa"
            config.use_cache = False
            with torch.device("meta"):
                model = Qwen3Model(config)
        except (TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{source}: the text-encoder config cannot build a Qwen3 model: "
                                  f"{' '.join(str(e).split())[:200]}") from None
        state_dict = {
            k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state_dict.items()
        }
        assign_state_dict(model, state_dict, source)
        # The rotary frequencies are not in checkpoints: rebuild them on the real device. The original casts the
        # loaded model with .to(dtype), which rounds this buffer to the model dtype too (the rotary forward casts
        # it back to fp32), so round it the same way; in fp32 this changes nothing.
        with torch.device(device):
            rotary = Qwen3RotaryEmbedding(config)
        rotary.inv_freq = rotary.inv_freq.to(dtype)
        rotary.original_inv_freq = rotary.original_inv_freq.to(dtype)
        model.rotary_emb = rotary
        return cls(model).eval().requires_grad_(False)

    @torch.no_grad()
    def encode_caption(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``last_hidden_state`` [B, L, H]. Called without an attention mask, as the original does: plain causal
        attention, so right-padding tokens see the real tokens but never the other way round."""
        return self.model(input_ids=input_ids.to(self.device), use_cache=False).last_hidden_state

    @torch.no_grad()
    def embed_lyrics(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings only [B, L, H]."""
        return self.model.embed_tokens(input_ids.to(self.device))


def fit_to_length(ids: torch.Tensor, mask: torch.Tensor, length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ([B, L] → [B, length]) with ``pad_id`` / 0, or crop when ``length`` < L, as the original's
    ``_pad_sequences`` does (``F.pad`` with a negative width crops)."""
    width = length - ids.shape[1]
    return F.pad(ids, (0, width), value=pad_id), F.pad(mask, (0, width), value=0)


def encode_text_inputs(
    tokenizer: TextTokenizer, encoder: TextEncoder, captions: Sequence[str], lyrics: Sequence[str],
    text_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(text_hidden [B, Lt, H], text_mask [B, Lt], lyric_embeds [B, Ll, H], lyric_mask [B, Ll]) from formatted
    caption and lyrics prompts; masks are bool, as the original hands them to the condition encoder.

    ``text_length``: pad or crop the caption ids to this length before encoding. The original does this to the
    non-cover caption of a cover with ``audio_cover_strength`` < 1: it pads those ids to the cover caption's
    length, and the text2music instruction is one token longer than the cover one, so the padding width is −1
    and the last id (the <|endoftext|> the tokenizer appends after the prompt's closing "\n") is dropped. Pass
    the cover caption's length (``text_hidden.shape[1]`` of the cover prompt) to reproduce it.
    """
    if len(captions) != len(lyrics):
        raise ValueError(f"got {len(captions)} caption prompts but {len(lyrics)} lyrics prompts")
    text_ids, text_mask = tokenizer.encode_batch(captions, TEXT_MAX_TOKENS)
    if text_length is not None:
        text_ids, text_mask = fit_to_length(text_ids, text_mask, text_length, tokenizer.pad_id)
    lyric_ids, lyric_mask = tokenizer.encode_batch(lyrics, LYRIC_MAX_TOKENS)
    device = encoder.device
    return (
        encoder.encode_caption(text_ids),
        text_mask.to(device).bool(),
        encoder.embed_lyrics(lyric_ids),
        lyric_mask.to(device).bool(),
    )
