"""Loading the caption/lyrics text side: the Qwen3 tokenizer (an official folder's ``tokenizer.json`` or the copy
bundled with the pack) and the Qwen3-Embedding-0.6B weights from any of the three published layouts."""
from __future__ import annotations

import gzip
import os
from typing import Iterable, Mapping

import torch
from tokenizers import Tokenizer, processors

from ..constants import ENDOFTEXT, ENDOFTEXT_ID, TEXT_ENCODER_PREFIXES
from ..errors import CheckpointError
from ..models.text_encoder import TextEncoder, TextTokenizer
from .weights import read_json, read_safetensors, safetensors_keys, sharded_files

BUNDLED_TOKENIZER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "qwen3_tokenizer",
                                 "tokenizer.json.gz")


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


def load_text_encoder(path: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> TextEncoder:
    """Load from an HF ``Qwen3-Embedding-0.6B`` folder (config.json + model.safetensors or shards), a Comfy-Org
    ``qwen_0.6b_ace15.safetensors`` or an all-in-one Comfy checkpoint (only the text-encoder tensors are read)."""
    config_dict = None
    if os.path.isdir(path):
        files = sharded_files(path)
        config_path = os.path.join(path, "config.json")
        if os.path.isfile(config_path):
            config_dict = read_json(config_path)
            for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "head_dim"):
                value = config_dict.get(key)
                if key in config_dict and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                    raise CheckpointError(f"{config_path}: {key} is {value!r}; expected a positive integer")
        keys: Iterable[str] = [k for file in files for k in safetensors_keys(file)]
    else:
        files = [path]
        keys = safetensors_keys(path)
    prefix = text_encoder_prefix(keys, path)
    state_dict = read_safetensors(files, dtype=dtype, device=device, select=lambda k: k.startswith(prefix))
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return TextEncoder.from_state_dict(state_dict, config_dict, dtype=dtype, device=device, source=path)
