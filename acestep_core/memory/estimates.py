"""How much device memory each unit needs: its weights and the working memory of one request.

Weights are counted from the modules themselves (a loaded one as stored, or one built on the meta device for a
planned dtype, so the real 2B, XL and LM geometries cost nothing to measure). A streamable unit is a fixed part
plus equal layers (the DiT's ``decoder.layers``, the LM's ``layers``).

Working memory is counted from the shapes a request gives: the DiT holds every layer's cross-attention K/V for
the whole generation plus one layer's activations at a time; the LM its KV cache; the VAE one tile. The counts
follow the code (which tensors are alive together inside a layer) with ``WORKING_MARGIN`` on top for allocator
rounding and kernel workspaces. They are estimates; ``bench/bench_lowvram.py`` prints them next to
``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..constants import (
    DEFAULT_DURATION, LM_GEOMETRIES, LYRIC_MAX_TOKENS, MIN_LATENT_FRAMES, QWEN3_EMBEDDING_GEOMETRY,
    REFERENCE_SECONDS, TEXT_MAX_TOKENS, WORKING_MARGIN,
)
from ..models.config import AceStepConfig
from ..models.vae import VaeConfig

GIB = 1 << 30
LATENTS_PER_SECOND = 25  # 48 kHz / hop 1920


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class UnitSize:
    """A unit's weights on the compute device: ``fixed`` bytes whenever it runs, plus ``layers`` streamable layers
    of ``layer`` bytes each (0 for a unit that is always placed whole)."""

    name: str
    fixed: int
    layer: int = 0
    layers: int = 0

    @property
    def total(self) -> int:
        return self.fixed + self.layer * self.layers

    def resident(self, layers: int) -> int:
        """Bytes on the device with ``layers`` layers resident (streaming buffers not included)."""
        return self.fixed + self.layer * max(0, min(layers, self.layers))


def stored_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers as they are stored now (any device, meta included)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def planned_bytes(module: nn.Module, dtype: torch.dtype,
                  fp8: Callable[[str, nn.Module], bool] | None = None) -> int:
    """Bytes of ``module`` loaded in ``dtype`` (floating tensors; others keep theirs), with the Linear weights that
    ``fp8(name, linear)`` selects stored as float8 plus one float32 scale per output channel."""
    size = element_size(dtype)
    total, seen = 0, set()
    for name, sub in module.named_modules():
        quantised = fp8 is not None and isinstance(sub, nn.Linear) and fp8(name, sub)
        for pname, p in sub.named_parameters(recurse=False):
            if id(p) in seen:  # tied weights (an LM head sharing the embedding) count once
                continue
            seen.add(id(p))
            if quantised and pname == "weight":
                total += p.numel() + 4 * p.shape[0]
            else:
                total += p.numel() * (size if p.is_floating_point() else p.element_size())
        total += sum(b.numel() * b.element_size() for b in sub.buffers(recurse=False))
    return total


def stack_size(name: str, module: nn.Module, layers: nn.ModuleList | None, measure: Callable[[nn.Module], int]
               ) -> UnitSize:
    """``module`` as a fixed part plus its (equal) ``layers``, each measured with ``measure``. This is the hook a
    decoder-only stack (the DiT, the LM) is sized with."""
    total = measure(module)
    if not layers:
        return UnitSize(name, total)
    per_layer = measure(layers[0])
    return UnitSize(name, total - per_layer * len(layers), per_layer, len(layers))


def decoder_fp8(name: str, module: nn.Module) -> bool:
    """Which Linear layers of the DiT checkpoint take fp8 weights: those of the diffusion decoder, as upstream
    quantises (the condition encoder, the audio tokenizer/detokenizer and the FSQ path stay as loaded)."""
    return name.startswith("decoder.")


def layers_fp8(name: str, module: nn.Module) -> bool:
    """The LM's decoder-layer Linears (embeddings and the output head stay as loaded)."""
    return name.startswith("layers.") or name.startswith("model.layers.")


def dit_size(config: AceStepConfig, dtype: torch.dtype, fp8: bool = False) -> UnitSize:
    """The DiT checkpoint (decoder, condition encoder, audio tokenizer/detokenizer) as one unit, built on the meta
    device; its decoder layers are the streamable ones."""
    from ..models.model import AceStepModel

    with torch.device("meta"):
        model = AceStepModel(config)
    rule = decoder_fp8 if fp8 else None
    whole = planned_bytes(model, dtype, rule)
    layer = planned_bytes(model.decoder.layers[0], dtype, (lambda n, m: True) if fp8 else None)
    return UnitSize("model", whole - layer * len(model.decoder.layers), layer, len(model.decoder.layers))


def _qwen3(geometry: dict, causal: bool) -> nn.Module:
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(**geometry)
    with torch.device("meta"):
        return Qwen3ForCausalLM(config) if causal else Qwen3Model(config)


def text_encoder_size(dtype: torch.dtype, geometry: dict = QWEN3_EMBEDDING_GEOMETRY) -> UnitSize:
    """Qwen3-Embedding-0.6B (placed whole: it runs once per request)."""
    return UnitSize("text_encoder", planned_bytes(_qwen3(geometry, causal=False), dtype))


def lm_size(size: str, dtype: torch.dtype, fp8: bool = False) -> UnitSize:
    """A 5 Hz LM (``"0.6B"``, ``"1.7B"``, ``"4B"``; tied embeddings) as a streamable stack, built on the meta device
    with transformers' Qwen3ForCausalLM (the parameter layout the pack's LM reads)."""
    model = _qwen3(LM_GEOMETRIES[size], causal=True)
    rule = layers_fp8 if fp8 else None
    whole = planned_bytes(model, dtype, rule)
    layers = model.model.layers
    layer = planned_bytes(layers[0], dtype, (lambda n, m: True) if fp8 else None)
    return UnitSize("lm", whole - layer * len(layers), layer, len(layers))


def vae_size(dtype: torch.dtype, config: VaeConfig | None = None) -> UnitSize:
    from ..models.vae import OobleckVAE

    with torch.device("meta"):
        vae = OobleckVAE(config or VaeConfig())
    return UnitSize("vae", planned_bytes(vae, dtype))


# -------------------------------------------------------------------------------------------------- working memory


@dataclass(frozen=True)
class Workload:
    """The shapes of one request that decide the working memory.

    ``seconds``: the generated latents' length; ``batch``: songs at once; ``cfg``: the DiT runs conditional and
    unconditional rows together; ``conditions``: cross-attention K/V sets alive at once (flow-edit keeps two);
    ``source_seconds``: audio the VAE encodes (an audio task's source, or the 30-s timbre reference);
    ``reference``: a timbre reference is encoded while the condition is built; ``lm_codes``: 5 Hz codes the LM
    writes (0 = no LM)."""

    seconds: float = 240.0
    batch: int = 1
    cfg: bool = False
    conditions: int = 1
    source_seconds: float = 0.0
    lm_codes: int = 0
    reference: bool = False

    @property
    def frames(self) -> int:
        return max(MIN_LATENT_FRAMES, int(round(self.seconds * LATENTS_PER_SECOND)))

    @classmethod
    def of(cls, req, variant: str, lm: bool = False) -> "Workload":
        """The workload of a checked request (``acestep_core.request.Request``) on a model variant."""
        from ..schedule import resolve_sampler

        task = req.task
        source = task.source.seconds if task.source is not None else 0.0
        if task.source is not None:
            before, after = task.window.padding(source) if task.window is not None else (0.0, 0.0)
            seconds = source + before + after
        elif task.audio_codes is not None:
            seconds = max(map(len, task.codes_per_song)) / 5
        else:
            seconds = DEFAULT_DURATION if task.duration is None else task.duration
        if req.text.timbre is not None:
            source = max(source, float(REFERENCE_SECONDS))
        guided = resolve_sampler(req.sampler, variant).guidance > 1.0
        return cls(seconds=seconds, batch=task.batch_size, cfg=guided,
                   conditions=2 if task.flow_edit is not None else 1, source_seconds=source,
                   lm_codes=int(seconds * 5) if lm else 0, reference=req.text.timbre is not None)


def _margin(nbytes: float) -> int:
    return int(math.ceil(nbytes * WORKING_MARGIN))


def _layer_working(tokens: int, hidden: int, intermediate: int, attn_width: int, kv_width: int, esize: int) -> float:
    """Peak bytes alive inside one transformer layer for ``tokens`` rows: the residual stream and its normalised
    copy (the RMSNorm runs in float32), q/k/v with their rotated copies, then the MLP's gate, up and product."""
    norm = 3 * 4 * hidden  # x.float(), its square, the normalised result
    attention = (2 * attn_width + 3 * kv_width + attn_width) * esize  # q, rotated q, k, v, rotated k, output
    mlp = 3 * intermediate * esize
    return tokens * (2 * hidden * esize + norm + max(attention, mlp))


def condition_length() -> int:
    """The packed condition's longest length: lyrics, one timbre vector, caption."""
    return LYRIC_MAX_TOKENS + 1 + TEXT_MAX_TOKENS


def dit_working(config: AceStepConfig, dtype: torch.dtype, work: Workload) -> int:
    """The sampling phase: every layer's cross-attention K/V (per condition alive), the sliding-window mask (and
    the int64 distance table it is built from), one layer's activations over the patched tokens, the sampler's
    latents in float32."""
    esize = element_size(dtype)
    rows = work.batch * (2 if work.cfg else 1)
    tokens = math.ceil(work.frames / config.patch_size)
    kv_width = config.num_key_value_heads * config.head_dim
    cross_kv = config.num_hidden_layers * 2 * rows * condition_length() * kv_width * esize * work.conditions
    mask = tokens * tokens * 9  # bool mask + the int64 |i - j| table it is made from
    layer = _layer_working(rows * tokens, config.hidden_size, config.intermediate_size,
                           config.num_attention_heads * config.head_dim, kv_width, esize)
    sampler = 12 * work.batch * work.frames * config.audio_acoustic_hidden_dim * 4
    return _margin(cross_kv + mask + layer + sampler)


def condition_working(config: AceStepConfig, dtype: torch.dtype, work: Workload) -> int:
    """The condition phase: the lyric encoder over the longest lyrics (the largest encoder pass) for the batch, the
    caption through the text encoder, and the packed condition it returns."""
    enc = config.encoder()
    esize = element_size(dtype)
    lyrics = work.batch * LYRIC_MAX_TOKENS
    layer = _layer_working(lyrics, enc.hidden_size, enc.intermediate_size, enc.num_attention_heads * enc.head_dim,
                           enc.num_key_value_heads * enc.head_dim, esize)
    mask = LYRIC_MAX_TOKENS ** 2 * 9
    text = QWEN3_EMBEDDING_GEOMETRY
    caption = _layer_working(TEXT_MAX_TOKENS, text["hidden_size"], text["intermediate_size"],
                             text["num_attention_heads"] * text["head_dim"],
                             text["num_key_value_heads"] * text["head_dim"], esize)
    packed = 3 * work.batch * condition_length() * enc.hidden_size * esize * work.conditions
    return _margin(layer + mask + caption + packed)


def lm_cache_dtype(dtype: torch.dtype, device=None) -> torch.dtype:
    """The LM's KV-cache dtype: the model's, except float32 for a half-precision LM on the CPU (models/lm.py)."""
    cpu = device is not None and torch.device(device).type == "cpu"
    return torch.float32 if cpu and dtype in (torch.bfloat16, torch.float16) else dtype


def lm_working(size: str | dict, dtype: torch.dtype, work: Workload, prompt_tokens: int = LYRIC_MAX_TOKENS + 512,
               device=None) -> int:
    """The LM phase: its KV cache over the prompt, the chain of thought and the codes for the conditional and
    unconditional rows of every song (positions rounded up to 256, as the LM allocates them; float32 on the CPU,
    see :func:`lm_cache_dtype`), the prompt's prefill activations, the float32 logits of a step. ``size``: "0.6B",
    "1.7B", "4B" or a geometry dict (transformers Qwen3 names, as ``LM_GEOMETRIES``)."""
    g = LM_GEOMETRIES[size] if isinstance(size, str) else size
    esize = element_size(dtype)
    rows = 2 * work.batch
    positions = -(-(prompt_tokens + work.lm_codes + 512) // 256) * 256
    cache_esize = element_size(lm_cache_dtype(dtype, device))
    kv = 2 * g["num_hidden_layers"] * rows * positions * g["num_key_value_heads"] * g["head_dim"] * cache_esize
    prefill = _layer_working(prompt_tokens, g["hidden_size"], g["intermediate_size"],
                             g["num_attention_heads"] * g["head_dim"], g["num_key_value_heads"] * g["head_dim"], esize)
    mask = prompt_tokens * positions  # bool [L, kv_len] of the prefill
    logits = 3 * rows * g["vocab_size"] * 4
    return _margin(kv + prefill + mask + logits)


def _vae_decoder_peak_per_frame(config: VaeConfig) -> int:
    """The largest activation of the VAE decoder per latent frame, in values: the widest stage times its samples
    per frame (the last two stages, 128 x 1920 and 256 x 960 values for the real VAE)."""
    mult = (1, *config.channel_multiples)
    n = len(config.downsampling_ratios)
    per_frame, peak = 1, 0
    for i, stride in enumerate(reversed(config.downsampling_ratios)):
        per_frame *= stride
        peak = max(peak, config.decoder_channels * mult[n - i - 1] * per_frame)
    return peak


def vae_decode_working(dtype: torch.dtype, tile_frames: int, work: Workload, config: VaeConfig | None = None) -> int:
    """One decode tile (about four stage-sized tensors alive in a residual unit: its input, the snake output, the
    two convolutions') plus the decoded song accumulating on the device."""
    config = config or VaeConfig()
    esize = element_size(dtype)
    tile = min(tile_frames, work.frames)
    per_frame = _vae_decoder_peak_per_frame(config)
    audio = 2 * work.batch * work.frames * config.hop_length * config.audio_channels * esize
    return _margin(4 * tile * per_frame * esize + audio)


def vae_encode_working(dtype: torch.dtype, window_seconds: float, config: VaeConfig | None = None) -> int:
    """One encode window: the encoder's first stage runs ``encoder_hidden_size`` channels at the audio rate (about
    four such tensors alive), the window moved to the device in the VAE dtype."""
    config = config or VaeConfig()
    esize = element_size(dtype)
    samples = int(window_seconds * config.sampling_rate)
    return _margin(samples * (4 * config.encoder_hidden_size + config.audio_channels) * esize)
