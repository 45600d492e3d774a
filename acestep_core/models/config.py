"""Model configuration: read from the checkpoint's config.json, or inferred from tensor shapes.

One dataclass describes the DiT and its companion modules (condition encoder, audio tokenizer,
detokenizer). XL checkpoints run a wider DiT over 2B-sized encoders, so the encoder-side geometry has its
own fields; ``encoder()`` returns the config those modules are built from.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

from ..errors import CheckpointError


def alternating_layer_types(n: int) -> list[str]:
    """Layer 0 sliding, layer 1 full, … — the original's default rule."""
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]


def _checked(name: str, kind: str, value, source: str):
    """A config.json value of the field's declared type (``kind`` as written in the dataclass)."""
    kind = kind.replace(" | None", "")
    ok = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "list[int]": lambda v: isinstance(v, list) and v and all(isinstance(x, int) and x > 0 for x in v),
        "dict": lambda v: isinstance(v, dict) and all(
            str(k).isdigit() and isinstance(h, list)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in h) for k, h in v.items()),
    }[kind]
    if not ok(value):
        what = {"int": "a positive integer", "float": "a number", "bool": "true or false", "str": "a string",
                "list[str]": "a list of strings", "list[int]": "a list of positive integers",
                "dict": 'a {"layer": [heads]} mapping'}[kind]
        raise CheckpointError(f"{source}: {name} is {value!r}; expected {what}")
    return value


@dataclass
class AceStepConfig:
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    # Encoder side (condition encoder, tokenizer, detokenizer, null embedding); None = same as the DiT.
    encoder_hidden_size: int | None = None
    encoder_intermediate_size: int | None = None
    encoder_num_attention_heads: int | None = None
    encoder_num_key_value_heads: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    use_sliding_window: bool = True
    sliding_window: int = 128
    layer_types: list[str] = field(default_factory=list)
    in_channels: int = 192
    audio_acoustic_hidden_dim: int = 64
    patch_size: int = 2
    text_hidden_dim: int = 1024
    timbre_hidden_dim: int = 64
    num_lyric_encoder_hidden_layers: int = 8
    num_timbre_encoder_hidden_layers: int = 4
    num_attention_pooler_hidden_layers: int = 2
    pool_window_size: int = 5
    fsq_dim: int = 2048
    fsq_input_levels: list[int] = field(default_factory=lambda: [8, 8, 8, 5, 5, 5])
    fsq_input_num_quantizers: int = 1
    timbre_fix_frame: int = 750
    is_turbo: bool | None = None
    model_version: str | None = None
    # {"layer": [heads]} of the cross-attention that follows the lyrics (lyric timestamps); None = the 2B default.
    lyric_alignment_layers_config: dict | None = None

    def __post_init__(self):
        needed = max(self.num_hidden_layers, self.num_lyric_encoder_hidden_layers,
                     self.num_timbre_encoder_hidden_layers, self.num_attention_pooler_hidden_layers)
        if not self.layer_types:
            self.layer_types = alternating_layer_types(needed)
        elif len(self.layer_types) < needed:
            raise CheckpointError(f"config: layer_types has {len(self.layer_types)} entries, {needed} needed")
        unknown = set(self.layer_types) - {"sliding_attention", "full_attention"}
        if unknown:
            raise CheckpointError(f"config: layer_types holds {sorted(unknown)}; expected sliding_attention or "
                                  "full_attention")
        for heads, kv in ((self.num_attention_heads, self.num_key_value_heads),
                          (self.encoder_num_attention_heads, self.encoder_num_key_value_heads)):
            if heads is not None and kv is not None and heads % kv:
                raise CheckpointError(f"config: {heads} attention heads cannot share {kv} key/value heads "
                                      "(not a multiple)")
        if not (self.rms_norm_eps > 0 and self.rope_theta > 0):
            raise CheckpointError(f"config: rms_norm_eps={self.rms_norm_eps} and rope_theta={self.rope_theta} must "
                                  "be positive")

    @property
    def is_xl(self) -> bool:
        return self.encoder().hidden_size != self.hidden_size

    def encoder(self) -> "AceStepConfig":
        """The geometry the encoder-side modules are built with (the DiT's own unless XL splits them)."""
        return dataclasses.replace(
            self,
            hidden_size=self.encoder_hidden_size or self.hidden_size,
            intermediate_size=self.encoder_intermediate_size or self.intermediate_size,
            num_attention_heads=self.encoder_num_attention_heads or self.num_attention_heads,
            num_key_value_heads=self.encoder_num_key_value_heads or self.num_key_value_heads,
            encoder_hidden_size=None, encoder_intermediate_size=None,
            encoder_num_attention_heads=None, encoder_num_key_value_heads=None,
        )

    @classmethod
    def from_json(cls, data: dict, source: str = "config.json") -> "AceStepConfig":
        """From an official ``config.json`` (unknown keys — training fields, auto_map, … — are ignored); every
        known field must have its type (positive integers for sizes)."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a JSON object with the model's settings")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data and data[f.name] is not None:
                values[f.name] = _checked(f.name, f.type, data[f.name], source)
        return cls(**values)

    @classmethod
    def from_shapes(cls, shapes: dict[str, list[int]], source: str = "checkpoint") -> "AceStepConfig":
        """Infer the geometry of a checkpoint that ships no config (Comfy-Org files) from its tensor shapes.

        Values that shapes cannot tell (RoPE theta, eps, sliding window, FSQ levels) are the published
        ACE-Step 1.5 ones, shared by every released variant.
        """
        def shape(key):
            if key not in shapes:
                raise CheckpointError(f"{source}: not an ACE-Step 1.5 DiT checkpoint (no tensor {key!r})")
            return shapes[key]

        def count(prefix):
            pat = re.compile(re.escape(prefix) + r"(\d+)\.")
            return 1 + max((int(m.group(1)) for k in shapes if (m := pat.match(k))), default=-1)

        head_dim = shape("decoder.layers.0.self_attn.q_norm.weight")[0]
        hidden = shape("decoder.layers.0.self_attn_norm.weight")[0]
        enc = "encoder.lyric_encoder.layers.0."
        enc_hidden = shape(enc + "input_layernorm.weight")[0]
        fsq_codebook_dim = shape("tokenizer.quantizer.project_in.weight")[0]
        default_levels = cls().fsq_input_levels
        if fsq_codebook_dim != len(default_levels):
            raise CheckpointError(f"{source}: FSQ with {fsq_codebook_dim} dims; only {len(default_levels)} "
                                  f"levels {default_levels} are known")
        proj_in = shape("decoder.proj_in.1.weight")  # [D, in_channels, patch]
        return cls(
            hidden_size=hidden,
            intermediate_size=shape("decoder.layers.0.mlp.gate_proj.weight")[0],
            num_hidden_layers=count("decoder.layers."),
            num_attention_heads=shape("decoder.layers.0.self_attn.q_proj.weight")[0] // head_dim,
            num_key_value_heads=shape("decoder.layers.0.self_attn.k_proj.weight")[0] // head_dim,
            head_dim=head_dim,
            encoder_hidden_size=enc_hidden if enc_hidden != hidden else None,
            encoder_intermediate_size=shape(enc + "mlp.gate_proj.weight")[0] if enc_hidden != hidden else None,
            encoder_num_attention_heads=(shape(enc + "self_attn.q_proj.weight")[0] // head_dim
                                         if enc_hidden != hidden else None),
            encoder_num_key_value_heads=(shape(enc + "self_attn.k_proj.weight")[0] // head_dim
                                         if enc_hidden != hidden else None),
            in_channels=proj_in[1],
            patch_size=proj_in[2],
            audio_acoustic_hidden_dim=shape("decoder.proj_out.1.weight")[1],
            text_hidden_dim=shape("encoder.text_projector.weight")[1],
            timbre_hidden_dim=shape("encoder.timbre_encoder.embed_tokens.weight")[1],
            num_lyric_encoder_hidden_layers=count("encoder.lyric_encoder.layers."),
            num_timbre_encoder_hidden_layers=count("encoder.timbre_encoder.layers."),
            num_attention_pooler_hidden_layers=count("tokenizer.attention_pooler.layers."),
            pool_window_size=shape("detokenizer.special_tokens")[1],
            fsq_dim=shape("tokenizer.quantizer.project_in.weight")[1],
        )
