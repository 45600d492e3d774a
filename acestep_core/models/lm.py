"""The 5 Hz LM: a Qwen3 causal language model with a static KV cache (the layout of gpt-fast).

One request allocates the cache once (``setup_cache``: batch rows x positions), runs ``forward`` on the prompt
(prefill) and then on one token, or a few forced tokens, at a time. Every row of the batch (the conditional and
unconditional CFG branches, one pair per song) shares the positions: a left-padded row keeps its padding at
positions 0..pad-1 and its first real token at position ``pad``, exactly as the original's transformers loop
numbers them. Padded keys are hidden from every query by ``key_valid``; a padded query sees only itself, which
keeps its (unused) activations finite.

``logit_rows`` restricts the output head to a contiguous slice of the vocabulary (the audio codes): the head is
the largest single matrix of the model, and the codes phase only ever samples from that slice.

On the CPU a bf16/fp16 model keeps its cache in float32: one-token attention over a half-precision cache is
several times slower there than in float32 (prompts still attend in the model dtype).

Parameter names are transformers' ``Qwen3ForCausalLM`` names without the ``model.`` prefix, so checkpoints load
with no renaming.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import LM_MAX_POSITION_EMBEDDINGS, LM_RMS_NORM_EPS, LM_ROPE_THETA
from ..errors import CheckpointError
from .layers import Attention, RMSNorm, SwiGLU, apply_rotary


@dataclass(frozen=True)
class LMConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = LM_ROPE_THETA
    rms_norm_eps: float = LM_RMS_NORM_EPS
    tie_embeddings: bool = True
    max_positions: int = LM_MAX_POSITION_EMBEDDINGS

    @classmethod
    def from_hf(cls, cfg: Mapping, source: str = "LM config") -> "LMConfig":
        """From a transformers ``config.json`` of a Qwen3 causal LM."""
        if cfg.get("model_type", "qwen3") != "qwen3":
            raise CheckpointError(f"{source}: model_type is {cfg.get('model_type')!r}, expected 'qwen3'")
        if cfg.get("rope_scaling"):
            raise CheckpointError(f"{source}: rope_scaling {cfg['rope_scaling']!r} is not supported (expected none)")
        if cfg.get("attention_bias", False):
            raise CheckpointError(f"{source}: attention_bias=true is not supported (Qwen3 has no q/k/v biases)")
        try:
            heads = int(cfg["num_attention_heads"])
            return cls(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=int(cfg["hidden_size"]),
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads", heads)),
                head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
                rope_theta=float(cfg.get("rope_theta", LM_ROPE_THETA)),
                rms_norm_eps=float(cfg.get("rms_norm_eps", LM_RMS_NORM_EPS)),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
                max_positions=int(cfg.get("max_position_embeddings", LM_MAX_POSITION_EMBEDDINGS)),
            )
        except KeyError as e:
            raise CheckpointError(f"{source}: config has no {e.args[0]!r}") from None

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]], source: str = "LM") -> "LMConfig":
        """From tensor shapes (names without the ``model.`` prefix), for files that come without config.json.
        RoPE theta, the norm epsilon and the context length are the published LMs' (not visible in weights)."""

        def dim(key: str, axis: int = 0) -> int:
            if key not in shapes:
                raise CheckpointError(f"{source}: cannot infer the LM geometry, tensor {key!r} is missing")
            return int(shapes[key][axis])

        layers = {int(m.group(1)) for k in shapes if (m := re.match(r"layers\.(\d+)\.", k))}
        if not layers:
            raise CheckpointError(f"{source}: no 'layers.N.*' tensors found in the LM weights")
        head_dim = dim("layers.0.self_attn.q_norm.weight")
        return cls(
            vocab_size=dim("embed_tokens.weight"),
            hidden_size=dim("embed_tokens.weight", 1),
            intermediate_size=dim("layers.0.mlp.gate_proj.weight"),
            num_layers=max(layers) + 1,
            num_heads=dim("layers.0.self_attn.q_proj.weight") // head_dim,
            num_kv_heads=dim("layers.0.self_attn.k_proj.weight") // head_dim,
            head_dim=head_dim,
            tie_embeddings="lm_head.weight" not in shapes,
        )


class KVCache(nn.Module):
    """Keys and values of one layer for every row and position of a request, [B, H_kv, S, D]."""

    def __init__(self, batch: int, n_kv_heads: int, length: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: int, rows: slice):
        keys, values = self.k[rows], self.v[rows]
        keys.index_copy_(2, input_pos, k.to(keys.dtype))
        values.index_copy_(2, input_pos, v.to(values.dtype))
        return keys[:, :, :kv_len], values[:, :, :kv_len]


class CausalAttention(Attention):
    """Qwen3 self-attention (q/k RMSNorm, then RoPE) that writes to and reads from the layer's KV cache."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kv_cache: KVCache | None = None  # set by QwenLM.setup_cache

    def forward(self, x, rope, mask, input_pos: torch.Tensor, kv_len: int, rows: slice) -> torch.Tensor:
        q = apply_rotary(self._heads(x, self.q_proj, self.q_norm), *rope)
        k = apply_rotary(self._heads(x, self.k_proj, self.k_norm), *rope)
        v = self._heads(x, self.v_proj, None)
        k, v = self.kv_cache.update(input_pos, k, v, kv_len, rows)
        if k.dtype != q.dtype:  # a float32 cache on the CPU (see the module docstring)
            if q.shape[2] == 1:
                q = q.to(k.dtype)
            else:
                k, v = k.to(q.dtype), v.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_heads != self.n_kv_heads)
        return self.o_proj(out.transpose(1, 2).flatten(2).to(x.dtype))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.self_attn = CausalAttention(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                                         cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, mask, input_pos, kv_len, rows):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, input_pos, kv_len, rows)
        return x + self.mlp(self.post_attention_layernorm(x))


def _sub_slice(outer: slice, inner: slice) -> slice | None:
    """``inner`` (absolute, step 1) relative to ``outer``, or None when it is not inside."""
    if outer.start <= inner.start and inner.stop <= outer.stop:
        return slice(inner.start - outer.start, inner.stop - outer.start)
    return None


class QwenLM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.cache_batch = 0
        self.cache_length = 0
        self.int8_head: tuple | None = None  # (rows, int8 weight, scales): models/lm_int8.py
        self._compiled_decode = None
        self._compiled_ran = False
        self.cuda_graphs: dict | None = None  # (batch, cache length, head rows) -> _DecodeGraph; None = off

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    # ------------------------------------------------------------------------------------------------- cache

    def setup_cache(self, batch: int, length: int, key_valid: torch.Tensor | None = None):
        """Allocate (or reuse, when large enough for the same batch) the KV cache and the RoPE tables.

        ``key_valid`` [batch, n] (bool, True = real token) marks the left padding of the prompt rows; every
        position from n on is valid. The cache length is rounded up to 256 so that a compiled decode step
        sees a handful of shapes across requests rather than one per request."""
        length = -(-length // 256) * 256
        if length > self.config.max_positions:
            raise ValueError(f"the LM request needs {length} positions; the model allows {self.config.max_positions}")
        if batch != self.cache_batch or length > self.cache_length:
            dtype, device = self.dtype, self.device
            if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
                dtype = torch.float32
            for layer in self.layers:
                layer.self_attn.kv_cache = KVCache(batch, self.config.num_kv_heads, length, self.config.head_dim,
                                                   dtype, device)
            self.register_buffer("key_valid", torch.ones(batch, length, dtype=torch.bool, device=device),
                                 persistent=False)
            cos, sin = self._rope_tables(length)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
            self.cache_batch, self.cache_length = batch, length
            if self.cuda_graphs:
                self.cuda_graphs.clear()  # they point at the old cache
        self.key_valid.fill_(True)
        if key_valid is not None:
            self.key_valid[:, : key_valid.shape[1]] = key_valid.to(self.device, torch.bool)

    def _rope_tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [length, head_dim] in the model dtype. The original casts the loaded model with ``.to(dtype)``,
        which rounds the ``inv_freq`` buffer to that dtype too; the angles are then computed in float32."""
        cfg, device = self.config, self.device
        exponent = torch.arange(0, cfg.head_dim, 2, dtype=torch.int64, device=device).float() / cfg.head_dim
        inv_freq = (1.0 / cfg.rope_theta**exponent).to(self.dtype).float()
        freqs = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def release_cache(self):
        for layer in self.layers:
            layer.self_attn.kv_cache = None
        for name in ("key_valid", "rope_cos", "rope_sin"):
            self._buffers.pop(name, None)
        self.cache_batch = self.cache_length = 0
        if self.cuda_graphs:
            self.cuda_graphs.clear()

    # ------------------------------------------------------------------------------------------------- forward

    def forward(
        self,
        tokens: torch.Tensor,
        input_pos: torch.Tensor,
        kv_len: int,
        logit_rows: slice | None = None,
        last_only: bool = True,
        rows: slice = slice(None),
    ) -> torch.Tensor:
        """Logits [B, V'] of the last position (or [B, L, V'] with ``last_only=False``) for ``tokens`` [B, L] at
        positions ``input_pos`` [L]; attention reads cache positions 0..kv_len-1 (kv_len > the last position).
        ``rows`` selects the cache rows the B token rows belong to (all of them by default)."""
        key_pos = torch.arange(kv_len, device=tokens.device)
        query_pos = input_pos[:, None]
        visible = (key_pos <= query_pos) & self.key_valid[rows, None, None, :kv_len]
        mask = visible | (key_pos == query_pos)  # a padded query attends to itself only
        rope = (self.rope_cos[input_pos], self.rope_sin[input_pos])
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x, rope, mask, input_pos, kv_len, rows)
        x = self.norm(x[:, -1] if last_only else x)
        if self.int8_head is not None:
            rows, q, scales = self.int8_head
            inside = _sub_slice(rows, logit_rows or slice(0, self.config.vocab_size))
            if inside is not None:
                from .lm_int8 import int8_linear

                return int8_linear(x, q[inside], scales[inside])
        weight = self.head_weight if logit_rows is None else self.head_weight[logit_rows]
        return F.linear(x, weight)

    def prefill(self, tokens: torch.Tensor, start: int = 0, logit_rows: slice | None = None,
                last_only: bool = True, rows: slice = slice(None)) -> torch.Tensor:
        """Run ``tokens`` [B, L] at positions start..start+L-1 (the prompt, or a run of forced tokens), on the cache
        rows ``rows``. A left-padded prompt can run on its own row from its first real position: padded keys
        are masked anyway, so that gives the same cache as running the padded batch, for less work."""
        length = tokens.shape[1]
        if start + length > self.cache_length:
            raise ValueError(f"position {start + length} is past the KV cache ({self.cache_length}); call setup_cache")
        input_pos = torch.arange(start, start + length, device=self.device)
        return self(tokens.to(self.device), input_pos, start + length, logit_rows, last_only, rows)

    def copy_cache_row(self, source: int, targets: slice):
        """Copy one row's keys and values to other rows (songs of a batch that share a prompt)."""
        for layer in self.layers:
            cache = layer.self_attn.kv_cache
            cache.k[targets] = cache.k[source: source + 1]
            cache.v[targets] = cache.v[source: source + 1]

    def decode(self, tokens: torch.Tensor, pos: int, logit_rows: slice | None = None,
               pos_tensor: torch.Tensor | None = None) -> torch.Tensor:
        """One token per row [B, 1] at position ``pos``: the compiled step when enabled, else eager.
        ``pos_tensor`` ([1] on the model's device, = pos) spares the compiled step a host-to-device copy, which
        would wait for the GPU every step."""
        if self.cuda_graphs is not None and self._compiled_decode is None and self.device.type == "cuda":
            return self._decode_graphed(tokens, pos, logit_rows, pos_tensor)
        if self._compiled_decode is None:
            return self.prefill(tokens, pos, logit_rows)
        if pos_tensor is None:
            pos_tensor = torch.tensor([pos], device=self.device)
        try:
            logits = self._compiled_decode(tokens.to(self.device), pos_tensor, logit_rows)
        except Exception as e:  # compilation fails before anything runs (no compiler, no triton, ...)
            if self._compiled_ran:
                raise
            warnings.warn(f"torch.compile of the LM decode step failed, running it eagerly: {e}", stacklevel=2)
            self._compiled_decode = None
            return self.prefill(tokens, pos, logit_rows)
        self._compiled_ran = True
        return logits

    def _decode_full_cache(self, tokens: torch.Tensor, pos: torch.Tensor, logit_rows: slice | None):
        # Static shapes for torch.compile / CUDA graphs: the position is a tensor and attention spans the whole
        # cache (the mask hides positions past ``pos``).
        return self(tokens, pos, self.cache_length, logit_rows)

    def enable_cuda_graph(self):
        """Replay the one-token decode step as a CUDA graph: one graph per (batch, cache length, head rows),
        captured at its first step over the static KV cache (attention spans the whole cache, the position is a
        device tensor), so a step costs one launch instead of a few hundred. Only on CUDA; a capture that fails
        warns once and the step runs eagerly from then on."""
        self.cuda_graphs = {}

    def disable_cuda_graph(self):
        self.cuda_graphs = None

    def _decode_graphed(self, tokens, pos: int, logit_rows, pos_tensor):
        """The decode step through a CUDA graph. The logits returned are the graph's output buffer: valid until
        the next step (the planner samples from them before it)."""
        key = (self.cache_batch, self.cache_length, None if logit_rows is None else (logit_rows.start,
                                                                                      logit_rows.stop))
        graph = self.cuda_graphs.get(key)
        if graph is None:
            try:
                graph = _DecodeGraph(self, tokens, pos, logit_rows)
            except Exception as e:  # no graph support, an op that cannot be captured, out of memory, ...
                warnings.warn(f"CUDA graph capture of the LM decode step failed, running it eagerly: {e}",
                              stacklevel=3)
                self.cuda_graphs = None
                return self.prefill(tokens, pos, logit_rows)
            self.cuda_graphs[key] = graph
        return graph(tokens, pos, pos_tensor)

    def enable_compile(self, backend="inductor", mode: str | None = "reduce-overhead"):
        """Compile the one-token decode step (``torch.compile``; CUDA graphs with inductor's "reduce-overhead").
        Only worth it on CUDA; the first request pays the compilation."""
        mode = mode if backend == "inductor" else None
        self._compiled_decode = torch.compile(self._decode_full_cache, backend=backend, mode=mode, fullgraph=True)
        self._compiled_ran = False

    def disable_compile(self):
        self._compiled_decode = None


class _DecodeGraph:
    """One captured decode step: static token and position inputs, a static logits output. Capturing runs the
    step a few times on a side stream first (cuDNN/cuBLAS choose their kernels); each run writes the same keys
    and values at the same position as the real step, so the cache is unchanged by it."""

    WARMUP = 2

    def __init__(self, lm: QwenLM, tokens: torch.Tensor, pos: int, logit_rows: slice | None):
        device = lm.device
        self.tokens = tokens.to(device).clone()
        self.pos = torch.tensor([pos], device=device)
        step = lambda: lm(self.tokens, self.pos, lm.cache_length, logit_rows)  # noqa: E731
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step()

    def __call__(self, tokens: torch.Tensor, pos: int, pos_tensor: torch.Tensor | None) -> torch.Tensor:
        self.tokens.copy_(tokens, non_blocking=True)
        if pos_tensor is not None:
            self.pos.copy_(pos_tensor)
        else:
            self.pos.fill_(pos)
        self.graph.replay()
        return self.logits
