"""Tiny random 5 Hz LM checkpoints in the layouts the pack reads, written at test time (nothing is downloaded).

* official folder ``<root>/acestep-5Hz-lm-<size>/``: config.json (Qwen3ForCausalLM), model.safetensors with
  transformers names (``model.*``; ``lm_head.weight`` only when untied), and tokenizer files built the way the
  official ones are: the Qwen3 tokenizer plus the ``<|audio_code_N|>`` added tokens, saved by transformers;
* Comfy-Org ``<models>/text_encoders/qwen_1.7b_ace15.safetensors`` (``model.*`` names, no tokenizer);
* the LM inside an all-in-one checkpoint, under ``text_encoders.qwen3_2b.transformer.``.

The real vocabulary size (217,204) is kept so that every real token id is valid; only the widths are tiny. The
layouts are written from the references (comfyui.md, lm-planner.md), independently of ``acestep_core``.
"""
from __future__ import annotations

import gzip
import json
import os

import torch
from safetensors.torch import save_file

from devtools.tiny import random_tensor

QWEN3_VOCAB = 151669
LM_VOCAB = 217204
TINY_LM_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": LM_VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "attention_bias": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "torch_dtype": "float32",
}
BUNDLED_TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "acestep_core", "assets", "qwen3_tokenizer",
                                 "tokenizer.json.gz")


def hf_config(config: dict | None = None):
    from transformers import Qwen3Config

    config = config or TINY_LM_CONFIG
    return Qwen3Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")})


def random_lm_state_dict(seed: int = 0, config: dict | None = None,
                         tied: bool | None = None) -> dict[str, torch.Tensor]:
    """transformers ``Qwen3ForCausalLM`` names → deterministic random tensors (``lm_head.weight`` only if untied)."""
    from transformers import Qwen3ForCausalLM

    config = dict(config or TINY_LM_CONFIG)
    if tied is not None:
        config["tie_word_embeddings"] = tied
    with torch.device("meta"):
        model = Qwen3ForCausalLM(hf_config(config))
    keys = {k: v.shape for k, v in model.state_dict().items()}
    if config["tie_word_embeddings"]:
        keys.pop("lm_head.weight", None)
    return {k: random_tensor("lm." + k, shape, seed) for k, shape in keys.items()}


def hf_reference_lm(state_dict: dict[str, torch.Tensor], config: dict | None = None):
    """transformers' own Qwen3ForCausalLM (SDPA attention, float32) holding ``state_dict``."""
    from transformers import Qwen3ForCausalLM

    cfg = hf_config(config)
    cfg._attn_implementation = "sdpa"
    model = Qwen3ForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def official_like_tokenizer():
    """A transformers tokenizer built the way the official LM tokenizer is: Qwen3's BPE with <|im_end|> as EOS,
    <|endoftext|> as pad, and the audio codes as added tokens at 151669 + N."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    with gzip.open(BUNDLED_TOKENIZER, "rt", encoding="utf-8") as f:
        backend = Tokenizer.from_str(f.read())
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens([f"<|audio_code_{i}|>" for i in range(LM_VOCAB - QWEN3_VOCAB)])
    return tok


def _save(tensors: dict[str, torch.Tensor], path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def write_official_lm(root: str, state_dict: dict[str, torch.Tensor], config: dict | None = None,
                      name: str = "acestep-5Hz-lm-1.7B", shards: int = 1, tokenizer=None) -> str:
    """``<root>/<name>/`` with config.json, weights (one file, or ``shards`` files with an index) and tokenizer."""
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    config = dict(config or TINY_LM_CONFIG)
    config["tie_word_embeddings"] = "lm_head.weight" not in state_dict
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    if shards == 1:
        _save(state_dict, os.path.join(folder, "model.safetensors"))
    else:
        keys = sorted(state_dict)
        weight_map = {}
        for i in range(shards):
            part = keys[i::shards]
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            _save({k: state_dict[k] for k in part}, os.path.join(folder, file))
            weight_map.update({k: file for k in part})
        with open(os.path.join(folder, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    (tokenizer or official_like_tokenizer()).save_pretrained(folder)
    return folder


def write_comfy_lm(models: str, state_dict: dict[str, torch.Tensor], size: str = "1.7b") -> str:
    """``<models>/text_encoders/qwen_<size>_ace15.safetensors``: the LM with ``model.`` names and no lm_head."""
    path = os.path.join(models, "text_encoders", f"qwen_{size}_ace15.safetensors")
    _save({k: v for k, v in state_dict.items() if k != "lm_head.weight"}, path)
    return path


def write_aio_with_lm(path: str, state_dict: dict[str, torch.Tensor], slot: str = "qwen3_2b",
                      extra: dict[str, torch.Tensor] | None = None) -> str:
    """An all-in-one checkpoint carrying the LM under ``text_encoders.<slot>.transformer.`` next to ``extra``
    tensors (e.g. the DiT and the 0.6B text encoder under their own prefixes)."""
    tensors = {f"text_encoders.{slot}.transformer.{k}": v for k, v in state_dict.items() if k != "lm_head.weight"}
    tensors.update(extra or {})
    _save(tensors, path)
    return path


# Qwen3 token ids the terse LM is built around (the same in the official and the bundled tokenizer).
NEWLINE_ID, ONE_ID, COLON_ID, EOS_ID, THINK_END_ID = 198, 16, 25, 151645, 151668


def terse_lm_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny LM that writes short, valid plans quickly, for graph and command-line tests (a random LM writes the
    text modes up to their 3,500-token budget and chooses songs up to 600 s long).

    Its weights are random except for four embedding columns and the final norm, which keeps only columns 1-3,
    with signs (+, -, +): a logit is then, up to scale, a fixed bilinear form of the current input token's
    embedding and the candidate's, k(x, y) = x1*y1 - x2*y2 + x3*y3 (column 0, constant, steadies the
    normalisation; the random layers add a little noise). The columns make it prefer, after an ordinary token or
    ":", a newline, then "1"; after a newline, ":"; after "</think>", the end of the turn. Under the planner's
    constraints: "bpm: 111", an empty caption (a newline, then ":" ends it), "duration: 11", keys, languages and
    time signatures at random, codes at random, and nothing after "</think>". (Tied embeddings make the form
    symmetric, so a caption word cannot be added without breaking the newline/":" pair.)"""
    sd = random_lm_state_dict(seed)
    e = sd["model.embed_tokens.weight"]
    e[:, :4] = 0.0
    e[:, 0] = 10.0
    e[:, 1] = 10.0
    e[NEWLINE_ID, 1], e[NEWLINE_ID, 2] = 20.0, 30.0
    e[COLON_ID, 2] = -20.0
    e[ONE_ID, 1] = 15.0
    e[EOS_ID, 1], e[EOS_ID, 3] = -50.0, 100.0
    e[THINK_END_ID, 1], e[THINK_END_ID, 3] = 0.0, 10.0
    norm = torch.zeros_like(sd["model.norm.weight"])
    norm[1:4] = torch.tensor([1.0, -1.0, 1.0])
    sd["model.norm.weight"] = norm
    return sd
