"""Loading the 5 Hz LM and its tokenizer from every published layout.

* official folder ``acestep-5Hz-lm-{0.6B,1.7B,4B}/``: config.json, model.safetensors (or shards + index),
  tokenizer.json with the audio-code tokens;
* Comfy-Org file ``text_encoders/qwen_{1.7b,4b}_ace15.safetensors``: ``model.*`` names, no config, no tokenizer;
* the LM inside ComfyUI's all-in-one checkpoint, under ``text_encoders.qwen3_{2b,4b}.transformer.``.

Weights are memory-mapped and cast once into the requested dtype (``loading.weights``). Files without a
tokenizer get the bundled Qwen3 tokenizer plus the ``<|audio_code_N|>`` tokens, which gives the official ids.
"""
from __future__ import annotations

import gzip
import os
from typing import Iterable

import torch
from tokenizers import Tokenizer

from ..constants import (
    AUDIO_CODE_FIRST_ID, AUDIO_CODE_TOKEN, CODEBOOK_SIZE, DURATION_MAX, LM_COMFY_FILES, LM_EOS_ID, LM_FOLDER_ORDER,
    LM_FOLDER_PREFIX, LM_KEY_PREFIXES, LM_THINK_END_ID, LM_THINK_ID,
)
from ..errors import CheckpointError
from ..models.lm import LMConfig, QwenLM
from ..models.lm_tokenizer import LMTokenizer, add_audio_code_tokens
from .weights import assign_state_dict, read_json, read_safetensors, safetensors_keys, sharded_files

_EMBED = "model.embed_tokens.weight"
# A 5 Hz LM's vocabulary: the Qwen3 text ids, then one <|audio_code_N|> token per code value (at least). Other
# models' Qwen3 files (Qwen3-4B for image models, 151,936 ids) have a few padding rows past the text ids.
LM_MIN_VOCAB = AUDIO_CODE_FIRST_ID + CODEBOOK_SIZE
LM_EXPECTED = ("expected an acestep-5Hz-lm-* folder, a qwen_1.7b_ace15/qwen_4b_ace15 .safetensors file, or an "
               "all-in-one file with the LM; qwen_0.6b_ace15 is the text encoder")


class NotAnLM(CheckpointError):
    """A readable folder or file that holds no 5 Hz LM (a DiT, a text encoder, …), as opposed to a damaged LM."""


def lm_key_prefix(keys: Iterable[str], source: str = "LM") -> str:
    """The prefix in front of the transformers ``Qwen3ForCausalLM`` names in ``keys`` (see LM_KEY_PREFIXES)."""
    keys = set(keys)
    for prefix in LM_KEY_PREFIXES:
        if prefix + _EMBED in keys:
            return prefix
    looked = ", ".join(repr(p + _EMBED) for p in LM_KEY_PREFIXES)
    raise NotAnLM(f"{source}: no 5 Hz LM weights found (looked for {looked}; {LM_EXPECTED})")


def has_lm(path: str) -> bool:
    """Whether ``path`` (a folder or a safetensors file, e.g. an all-in-one checkpoint) holds a 5 Hz LM."""
    try:
        files = sharded_files(path) if os.path.isdir(path) else [path]
        shapes = {k: s for f in files for k, s in safetensors_keys(f).items()}
        prefix = lm_key_prefix(shapes, path)
    except CheckpointError:
        return False
    return shapes[prefix + _EMBED][0] >= LM_MIN_VOCAB


_GEOMETRY_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim")


def _read_config(folder: str) -> dict | None:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None
    config = read_json(path)
    for key in _GEOMETRY_KEYS:
        value = config.get(key)
        if key in config and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise CheckpointError(f"{path}: {key} is {value!r}; expected a positive integer")
    return config


def _lm_layout(path: str):
    """(weight files, key prefix, LMConfig, the keys to read, key → model name) of the LM at ``path``, from its
    config and safetensors headers only; every tensor the model needs is checked to be there with its shape. Raises
    CheckpointError with the reason otherwise (no such path, unreadable or truncated file, missing shard, a file
    holding no tensors, a missing or misshapen tensor, a text encoder in the LM's place)."""
    config_dict = None
    if os.path.isdir(path):
        files = sharded_files(path)
        config_dict = _read_config(path)
    elif os.path.isfile(path):
        files = [path]
    else:
        raise CheckpointError(f"{path}: no such LM folder or file")
    shapes = {k: s for f in files for k, s in safetensors_keys(f).items()}
    if not shapes:
        raise CheckpointError(f"{files[0]}: holds no tensors, so no 5 Hz LM")
    layer_prefix = next((p for p in LM_KEY_PREFIXES if any(k.startswith(p + "model.layers.") for k in shapes)), None)
    if layer_prefix is not None and layer_prefix + _EMBED not in shapes:
        raise CheckpointError(f"{path}: LM tensor {layer_prefix + _EMBED!r} is missing (a damaged or incomplete "
                              "download?)")
    prefix = lm_key_prefix(shapes, path)
    vocab = shapes[prefix + _EMBED][0]
    if vocab <= AUDIO_CODE_FIRST_ID:
        raise NotAnLM(
            f"{path}: vocabulary of {vocab} ids has no audio-code tokens: this is a Qwen3 text encoder (e.g. "
            f"qwen_0.6b_ace15 / Qwen3-Embedding-0.6B), not a 5 Hz LM (acestep-5Hz-lm-*, qwen_1.7b/4b_ace15)")
    if vocab < LM_MIN_VOCAB:
        raise NotAnLM(f"{path}: vocabulary of {vocab} ids has room for {vocab - AUDIO_CODE_FIRST_ID} audio-code "
                      f"tokens, a 5 Hz LM has {CODEBOOK_SIZE} or more: another model's Qwen3, not a 5 Hz LM "
                      "(acestep-5Hz-lm-*, qwen_1.7b/4b_ace15)")

    def bare(key: str) -> str:
        key = key[len(prefix):]
        return key[len("model."):] if key.startswith("model.") else key

    wanted = {k for k in shapes if k.startswith(prefix + "model.") or k == prefix + "lm_head.weight"}
    if config_dict is not None:
        cfg = LMConfig.from_hf(config_dict, os.path.join(path, "config.json"))
        if cfg.tie_embeddings:
            wanted.discard(prefix + "lm_head.weight")  # some exports store the tied copy too
    else:
        cfg = LMConfig.from_shapes({bare(k): s for k, s in shapes.items() if k in wanted}, path)
    with torch.device("meta"):  # names and shapes against the model, before any weight is read
        assign_state_dict(QwenLM(cfg), {bare(k): torch.empty(shapes[k], device="meta") for k in wanted}, path)
    return files, prefix, cfg, wanted, bare


def check_lm(path: str) -> None:
    """Raise a CheckpointError naming what is wrong unless ``path`` holds a complete 5 Hz LM (config and headers
    read, no weights; see :func:`_lm_layout`)."""
    _lm_layout(path)


def load_lm(path: str, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu") -> QwenLM:
    """The LM of an official folder, a Comfy-Org LM file or an all-in-one checkpoint (only its LM tensors are read)."""
    files, prefix, cfg, wanted, bare = _lm_layout(path)
    state_dict = read_safetensors(files, dtype=dtype, device=device, select=wanted.__contains__)
    with torch.device("meta"):
        model = QwenLM(cfg)
    assign_state_dict(model, {bare(k): v for k, v in state_dict.items()}, path)
    return model.eval().requires_grad_(False)


def load_lm_tokenizer(folder: str | None = None, vocab_size: int | None = None) -> LMTokenizer:
    """The tokenizer.json of an official LM folder, or (``folder`` None, or a folder without one) the bundled
    Qwen3 tokenizer with ``vocab_size - 151669`` audio-code tokens added."""
    source = os.path.join(folder, "tokenizer.json") if folder else None
    if source and os.path.isfile(source):
        try:
            tokenizer = Tokenizer.from_file(source)
        except Exception as e:  # tokenizers raises plain Exception subclasses for bad JSON
            raise CheckpointError(f"{source}: not a readable tokenizer file: {e}") from None
    else:
        from .text import BUNDLED_TOKENIZER  # (loading.text imports the text encoder, i.e. transformers)

        if vocab_size is None or vocab_size <= AUDIO_CODE_FIRST_ID:
            raise CheckpointError(f"the LM vocabulary size ({vocab_size}) leaves no room for audio-code tokens")
        with gzip.open(BUNDLED_TOKENIZER, "rt", encoding="utf-8") as f:
            tokenizer = Tokenizer.from_str(f.read())
        add_audio_code_tokens(tokenizer, vocab_size - AUDIO_CODE_FIRST_ID)
        source = BUNDLED_TOKENIZER
    expected = {"<|im_end|>": LM_EOS_ID, "<think>": LM_THINK_ID, "</think>": LM_THINK_END_ID,
                AUDIO_CODE_TOKEN.format(0): AUDIO_CODE_FIRST_ID}
    for token, token_id in expected.items():
        if tokenizer.token_to_id(token) != token_id:
            raise CheckpointError(f"{source}: not the 5 Hz LM tokenizer ({token} is {tokenizer.token_to_id(token)}, "
                                  f"expected {token_id})")
    return LMTokenizer(tokenizer, source)


def load_lm_and_tokenizer(path: str, dtype: torch.dtype = torch.bfloat16,
                          device: torch.device | str = "cpu") -> tuple[QwenLM, LMTokenizer]:
    """Both halves of the planner's model from one path (see :func:`load_lm`, :func:`load_lm_tokenizer`)."""
    model = load_lm(path, dtype, device)
    tokenizer = load_lm_tokenizer(path if os.path.isdir(path) else None, model.config.vocab_size)
    if len(tokenizer) > model.config.vocab_size:
        raise CheckpointError(f"{tokenizer.source}: {len(tokenizer)} tokens, but the LM {path} has only "
                              f"{model.config.vocab_size} embeddings")
    return model, tokenizer


def find_lm(paths, damaged: list[str] | None = None) -> str | None:
    """The LM that goes with a checkpoint when none is named (``paths``: ``checkpoint.CheckpointPaths``): the LM
    inside an all-in-one file; next to an official model folder, an ``acestep-5Hz-lm-*`` folder (1.7B, the app's
    default, first); next to a Comfy-Org DiT file, ``text_encoders/qwen_{1.7b,4b}_ace15.safetensors``. None when
    there is none. A candidate that is there but damaged (truncated file, missing tensor, …) is skipped, never
    silently: the reason (naming it) is appended to ``damaged`` for the caller to report."""
    dit = os.path.abspath(paths.dit)
    if os.path.isdir(dit):
        root = os.path.dirname(os.path.normpath(dit))
        names = [n for n in sorted(os.listdir(root)) if n.startswith(LM_FOLDER_PREFIX)]
        ordered = [n for n in LM_FOLDER_ORDER if n in names] + [n for n in names if n not in LM_FOLDER_ORDER]
        candidates = [os.path.join(root, n) for n in ordered]
    else:  # an all-in-one file's own LM first
        folder = os.path.join(os.path.dirname(os.path.dirname(dit)), "text_encoders")
        candidates = ([dit] if has_lm(dit) else []) + [os.path.join(folder, n) for n in LM_COMFY_FILES]
    for candidate in candidates:
        if not os.path.exists(candidate):
            continue
        try:
            check_lm(candidate)
        except CheckpointError as e:
            if damaged is not None:
                damaged.append(str(e))
            continue
        return candidate
    return None


def lm_name(path: str) -> str:
    """How messages name an LM: its folder or file name."""
    return os.path.basename(os.path.normpath(path))


def load_planner(path: str, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                 max_duration: int = DURATION_MAX):
    """An ``lm_planner.Planner`` over the LM at ``path`` (see :func:`load_lm_and_tokenizer`)."""
    from ..lm_planner import Planner

    lm, tokenizer = load_lm_and_tokenizer(path, dtype, device)
    return Planner(lm, tokenizer, max_duration=max_duration)
