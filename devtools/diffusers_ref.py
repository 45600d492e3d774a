"""The diffusers 0.42.1 port of ACE-Step 1.5, built on the same tiny random weights as our modules.

The key mapping is the one the diffusers converter applies to the original checkpoint (split by prefix,
rename the attention projections and the patch convolutions), written out here independently of
``acestep_core`` so that a mistake in our loader cannot hide in both places.
"""
from __future__ import annotations

import torch

_ATTN = {".q_proj.": ".to_q.", ".k_proj.": ".to_k.", ".v_proj.": ".to_v.", ".o_proj.": ".to_out.0.",
         ".q_norm.": ".norm_q.", ".k_norm.": ".norm_k."}


def _rename(key: str) -> str:
    for a, b in _ATTN.items():
        key = key.replace(a, b)
    return key


def split_for_diffusers(ckpt: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts = {"transformer": {}, "condition_encoder": {}, "audio_tokenizer": {}, "detokenizer": {}}
    for k, v in ckpt.items():
        if k.startswith("decoder."):
            k = k[len("decoder."):].replace("proj_in.1.", "proj_in_conv.").replace("proj_out.1.", "proj_out_conv.")
            parts["transformer"][_rename(k)] = v
        elif k.startswith("encoder."):
            parts["condition_encoder"][_rename(k[len("encoder."):])] = v
        elif k == "null_condition_emb":
            parts["condition_encoder"][k] = v
        elif k.startswith("tokenizer."):
            parts["audio_tokenizer"][_rename(k[len("tokenizer."):])] = v
        elif k.startswith("detokenizer."):
            parts["detokenizer"][_rename(k[len("detokenizer."):])] = v
    return parts


def diffusers_modules(config_json: dict, is_turbo: bool = False):
    """(transformer, condition_encoder, audio_tokenizer, detokenizer) of diffusers for an original config.json,
    with their own (random) initialisation; the caller loads weights."""
    from diffusers import (AceStepAudioTokenDetokenizer, AceStepAudioTokenizer, AceStepConditionEncoder,
                           AceStepTransformer1DModel)

    c = config_json
    enc_hidden = c.get("encoder_hidden_size") or c["hidden_size"]
    enc = dict(
        hidden_size=enc_hidden,
        intermediate_size=c.get("encoder_intermediate_size") or c["intermediate_size"],
        num_attention_heads=c.get("encoder_num_attention_heads") or c["num_attention_heads"],
        num_key_value_heads=c.get("encoder_num_key_value_heads") or c["num_key_value_heads"],
        head_dim=c["head_dim"], rope_theta=c["rope_theta"], rms_norm_eps=c["rms_norm_eps"],
        sliding_window=c["sliding_window"],
    )
    transformer = AceStepTransformer1DModel(
        hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"], head_dim=c["head_dim"], in_channels=c["in_channels"],
        audio_acoustic_hidden_dim=c["audio_acoustic_hidden_dim"], patch_size=c["patch_size"],
        rope_theta=c["rope_theta"], rms_norm_eps=c["rms_norm_eps"], sliding_window=c["sliding_window"],
        layer_types=c["layer_types"][: c["num_hidden_layers"]], encoder_hidden_size=enc_hidden,
        is_turbo=is_turbo,
    )
    cond = AceStepConditionEncoder(
        text_hidden_dim=c["text_hidden_dim"], timbre_hidden_dim=c["timbre_hidden_dim"],
        num_lyric_encoder_hidden_layers=c["num_lyric_encoder_hidden_layers"],
        num_timbre_encoder_hidden_layers=c["num_timbre_encoder_hidden_layers"], **enc,
    )
    tok = AceStepAudioTokenizer(
        audio_acoustic_hidden_dim=c["audio_acoustic_hidden_dim"], pool_window_size=c["pool_window_size"],
        fsq_dim=c["fsq_dim"], fsq_input_levels=c["fsq_input_levels"],
        fsq_input_num_quantizers=c["fsq_input_num_quantizers"],
        num_attention_pooler_hidden_layers=c["num_attention_pooler_hidden_layers"], **enc,
    )
    detok = AceStepAudioTokenDetokenizer(
        audio_acoustic_hidden_dim=c["audio_acoustic_hidden_dim"], pool_window_size=c["pool_window_size"],
        num_attention_pooler_hidden_layers=c["num_attention_pooler_hidden_layers"], **enc,
    )
    return transformer, cond, tok, detok


def build_diffusers(config_json: dict, ckpt: dict[str, torch.Tensor], silence_latent_btc: torch.Tensor):
    """(transformer, condition_encoder, audio_tokenizer, detokenizer) in float32 with our weights."""
    transformer, cond, tok, detok = diffusers_modules(config_json)
    parts = split_for_diffusers(ckpt)
    parts["condition_encoder"]["silence_latent"] = silence_latent_btc
    for module, name in ((transformer, "transformer"), (cond, "condition_encoder"), (tok, "audio_tokenizer"),
                         (detok, "detokenizer")):
        module.load_state_dict(parts[name], strict=True)
        module.eval().float()
    return transformer, cond, tok, detok
