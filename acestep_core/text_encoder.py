"""The text side of ACE-Step 1.5: prompt strings, the Qwen3 tokenizer and the Qwen3-Embedding-0.6B encoder.

Captions go through the full encoder (``last_hidden_state``); lyrics only through its token-embedding table (the
DiT's own lyric encoder does the rest). Prompt strings follow the original byte for byte.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from typing import Iterable, Mapping, Sequence

import torch
from tokenizers import Tokenizer, processors
from torch import nn
from transformers import Qwen3Config, Qwen3Model
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

from .constants import (
    BPM_MAX,
    BPM_MIN,
    DEFAULT_METAS_DURATION,
    DURATION_MAX,
    DURATION_MIN,
    ENDOFTEXT,
    ENDOFTEXT_ID,
    KEYSCALES,
    LYRIC_MAX_TOKENS,
    LYRICS_PROMPT,
    META_MISSING,
    METAS_TEMPLATE,
    QWEN3_MAX_POSITION_EMBEDDINGS,
    QWEN3_RMS_NORM_EPS,
    QWEN3_ROPE_THETA,
    SFT_GEN_PROMPT,
    TASK_INSTRUCTIONS,
    TASK_TYPES,
    TEXT_ENCODER_PREFIXES,
    TEXT_MAX_TOKENS,
    TIME_SIGNATURES,
    TRACK_CLASSES_SEPARATOR,
    TRACK_NAMES,
    VALID_LANGUAGES,
)
from .weights import CheckpointError, assign_state_dict, read_safetensors, safetensors_keys, sharded_files

BUNDLED_TOKENIZER = os.path.join(os.path.dirname(__file__), "assets", "qwen3_tokenizer", "tokenizer.json.gz")

# ---------------------------------------------------------------------------------------------------------------
# Input validation (None means "not given" for the optional metadata fields)
# ---------------------------------------------------------------------------------------------------------------


def _not_allowed(name: str, value, allowed: str) -> ValueError:
    return ValueError(f"{name} {value!r} is not allowed; expected {allowed}")


def check_task(task: str) -> None:
    if task not in TASK_TYPES:
        raise _not_allowed("task", task, f"one of {', '.join(TASK_TYPES)}")


def check_track_name(track: str) -> None:
    if not isinstance(track, str) or track.lower() not in TRACK_NAMES:
        raise _not_allowed("track name", track, f"one of {', '.join(TRACK_NAMES)}")


def check_language(language: str) -> None:
    if language not in VALID_LANGUAGES:
        raise _not_allowed("vocal language", language, f"one of {', '.join(VALID_LANGUAGES)}")


def check_keyscale(keyscale: str | None) -> None:
    if keyscale is not None and keyscale not in KEYSCALES:
        allowed = "a note A-G, an optional accidental (# b ♯ ♭) and 'major' or 'minor', e.g. 'F# minor'"
        raise _not_allowed("keyscale", keyscale, allowed)


def check_time_signature(timesignature: str | None) -> None:
    if timesignature is not None and str(timesignature) not in TIME_SIGNATURES:
        raise _not_allowed("time signature", timesignature, f"one of {', '.join(TIME_SIGNATURES)} (beats per bar)")


def check_bpm(bpm: int | None) -> None:
    if bpm is not None and not (isinstance(bpm, int) and BPM_MIN <= bpm <= BPM_MAX):
        raise _not_allowed("bpm", bpm, f"an integer from {BPM_MIN} to {BPM_MAX}")


def check_duration(duration: float | None) -> None:
    if duration is not None and not (DURATION_MIN <= duration <= DURATION_MAX):
        raise _not_allowed("duration", duration, f"{DURATION_MIN} to {DURATION_MAX} seconds")


# ---------------------------------------------------------------------------------------------------------------
# Prompt strings
# ---------------------------------------------------------------------------------------------------------------


def task_instruction(task: str, tracks: str | Sequence[str] | None = None) -> str:
    """The DiT instruction for ``task``: extract/lego take one track name, complete takes any number of them.
    Without tracks those three tasks use their generic instruction, as the original does."""
    check_task(task)
    if isinstance(tracks, str):
        tracks = [tracks]
    tracks = list(tracks or [])
    for track in tracks:
        check_track_name(track)
    if task in ("extract", "lego"):
        if len(tracks) > 1:
            raise ValueError(f"task {task!r} takes one track name, got {len(tracks)}: {tracks}")
        if tracks:
            return TASK_INSTRUCTIONS[task].format(TRACK_NAME=tracks[0].upper())
        return TASK_INSTRUCTIONS[f"{task}_default"]
    if task == "complete":
        if tracks:
            return TASK_INSTRUCTIONS[task].format(TRACK_CLASSES=TRACK_CLASSES_SEPARATOR.join(t.upper() for t in tracks))
        return TASK_INSTRUCTIONS["complete_default"]
    if tracks:
        raise ValueError(f"task {task!r} takes no track names, got {tracks}")
    return TASK_INSTRUCTIONS[task]


def format_metas(
    bpm: int | None = None,
    timesignature: str | None = None,
    keyscale: str | None = None,
    duration: float | None = None,
) -> str:
    """The "# Metas" block. Values are written as given (the original does not normalise "4/4" to "4"); missing
    bpm (None or 0), blank time signature/keyscale and "N/A" become "N/A"; duration is truncated to whole seconds,
    and a missing or non-positive duration is written as 30 seconds whatever the real length."""
    has_ts = timesignature is not None and str(timesignature).strip() and timesignature != META_MISSING
    has_duration = duration is not None and duration > 0
    return METAS_TEMPLATE.format(
        bpm=bpm if bpm else META_MISSING,
        timesignature=timesignature if has_ts else META_MISSING,
        keyscale=keyscale if keyscale is not None and keyscale.strip() else META_MISSING,
        duration=f"{int(duration) if has_duration else DEFAULT_METAS_DURATION} seconds",
    )


_PASTED_CAPTION = re.compile(r"#\s*Caption\s*\n(.*?)(?:\n\s*#\s*Metas|$)", re.DOTALL)


def extract_caption(caption: str) -> str:
    """If the user pasted a whole SFT prompt, keep only its "# Caption" block (stripped); else return as is."""
    if "# Instruction" in caption and "# Caption" in caption:
        match = _PASTED_CAPTION.search(caption)
        if match:
            return match.group(1).strip()
    return caption


def format_caption_prompt(caption: str, instruction: str, metas: str) -> str:
    """The caption-encoder input; ``metas`` comes from :func:`format_metas`."""
    if not instruction.endswith(":"):
        instruction += ":"
    return SFT_GEN_PROMPT.format(instruction=instruction, caption=extract_caption(caption), metas=metas)


def format_lyrics_prompt(lyrics: str, language: str) -> str:
    return LYRICS_PROMPT.format(language=language, lyrics=lyrics)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------


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


def load_tokenizer(folder: str | None = None) -> TextTokenizer:
    """The tokenizer of an HF ``Qwen3-Embedding-0.6B`` folder (its ``tokenizer.json`` as shipped), or the bundled
    copy of the Qwen3 tokenizer when ``folder`` is None."""
    if folder is None:
        with gzip.open(BUNDLED_TOKENIZER, "rt", encoding="utf-8") as f:
            tokenizer = Tokenizer.from_str(f.read())
        # The official Qwen3-Embedding tokenizer.json appends <|endoftext|> to every sequence through a
        # TemplateProcessing post-processor (QwenLM/Qwen3-Embedding#54); the original calls its tokenizer with
        # default add_special_tokens, so that token is part of every caption and lyrics input. The bundled (npm)
        # copy appends nothing, so install the same post-processor (the byte-level step only touches offsets).
        tokenizer.post_processor = processors.Sequence([
            processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            processors.TemplateProcessing(single=f"$A {ENDOFTEXT}", special_tokens=[(ENDOFTEXT, ENDOFTEXT_ID)]),
        ])
        source = BUNDLED_TOKENIZER
    else:
        source = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(source):
            raise CheckpointError(f"{folder}: no tokenizer.json in the text-encoder folder")
        try:
            tokenizer = Tokenizer.from_file(source)
        except Exception as e:  # tokenizers raises plain Exception subclasses for bad JSON
            raise CheckpointError(f"{source}: not a readable tokenizer file: {e}") from None
    if tokenizer.token_to_id(ENDOFTEXT) != ENDOFTEXT_ID:
        raise CheckpointError(f"{source}: not the Qwen3 tokenizer ({ENDOFTEXT} is not token {ENDOFTEXT_ID})")
    tokenizer.no_padding()
    return TextTokenizer(tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# Text encoder (Qwen3-Embedding-0.6B through transformers' Qwen3Model)
# ---------------------------------------------------------------------------------------------------------------


def text_encoder_prefix(keys: Iterable[str], source: str = "text encoder") -> str:
    """Which of the known layouts (all-in-one Comfy checkpoint, Comfy-Org single file, bare HF names) ``keys``
    use; returns the prefix in front of the transformers names."""
    keys = set(keys)
    for prefix in TEXT_ENCODER_PREFIXES:
        if prefix + "embed_tokens.weight" in keys:
            return prefix
    looked = ", ".join(repr(p + "embed_tokens.weight") for p in TEXT_ENCODER_PREFIXES)
    raise CheckpointError(f"{source}: no Qwen3 text-encoder weights found (looked for {looked})")


def strip_text_encoder_prefix(
    state_dict: Mapping[str, torch.Tensor], source: str = "text encoder"
) -> dict[str, torch.Tensor]:
    """The text-encoder tensors of ``state_dict`` under their bare transformers ``Qwen3Model`` names; keys outside
    the detected prefix (the DiT and VAE of an all-in-one checkpoint) are left out."""
    prefix = text_encoder_prefix(state_dict.keys(), source)
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


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
        config = Qwen3Config(**config_dict)
        config._attn_implementation = "sdpa"
        config.use_cache = False
        with torch.device("meta"):
            model = Qwen3Model(config)
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


def load_text_encoder(path: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> TextEncoder:
    """Load from an HF ``Qwen3-Embedding-0.6B`` folder (config.json + model.safetensors or shards), a Comfy-Org
    ``qwen_0.6b_ace15.safetensors`` or an all-in-one Comfy checkpoint (only the text-encoder tensors are read)."""
    config_dict = None
    if os.path.isdir(path):
        files = sharded_files(path)
        config_path = os.path.join(path, "config.json")
        if os.path.isfile(config_path):
            try:
                with open(config_path, encoding="utf-8") as f:
                    config_dict = json.load(f)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{config_path}: unreadable config: {e}") from None
        keys: Iterable[str] = [k for file in files for k in safetensors_keys(file)]
    else:
        files = [path]
        keys = safetensors_keys(path)
    prefix = text_encoder_prefix(keys, path)
    state_dict = read_safetensors(files, dtype=dtype, device=device, select=lambda k: k.startswith(prefix))
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return TextEncoder.from_state_dict(state_dict, config_dict, dtype=dtype, device=device, source=path)


def encode_text_inputs(
    tokenizer: TextTokenizer, encoder: TextEncoder, captions: Sequence[str], lyrics: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(text_hidden [B, Lt, H], text_mask [B, Lt], lyric_embeds [B, Ll, H], lyric_mask [B, Ll]) from formatted
    caption and lyrics prompts; masks are bool, as the original hands them to the condition encoder."""
    if len(captions) != len(lyrics):
        raise ValueError(f"got {len(captions)} caption prompts but {len(lyrics)} lyrics prompts")
    text_ids, text_mask = tokenizer.encode_batch(captions, TEXT_MAX_TOKENS)
    lyric_ids, lyric_mask = tokenizer.encode_batch(lyrics, LYRIC_MAX_TOKENS)
    device = encoder.device
    return (
        encoder.encode_caption(text_ids),
        text_mask.to(device).bool(),
        encoder.embed_lyrics(lyric_ids),
        lyric_mask.to(device).bool(),
    )
