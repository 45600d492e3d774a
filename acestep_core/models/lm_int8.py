"""Int8 weight-only LM for the CPU: the decode step is memory-bound (it reads every weight once per token), so
int8 weights with one scale per output channel read half the bytes of bf16.

``quantize_lm_int8(lm)`` replaces the seven projections of every layer with :class:`Int8Linear` and gives the LM
an int8 copy of its head rows (the tied embedding stays as it is, for the token lookups). The matmul is torch's
weight-only int8 kernel (``torch._weight_int8pack_mm``: the int8 weight and the per-channel scales go in as they
are, activations in bf16) for the decode steps; a prompt's prefill, and devices without that kernel, dequantise
the weight for one bf16 matmul instead (no bandwidth gain there, the same numbers up to rounding). Symmetric rounding: ``scale = max|w| / 127`` per output row, ``w ≈ q * scale``.

Not lossless: greedy plans equal the bf16 model's where the top two logits are further apart than the
quantisation error (``bench/lm_int8_error.py`` measures that error on the 1.7B geometry).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

COMPUTE_DTYPE = torch.bfloat16  # activations and scales; the int8 kernel's fast path on the CPU
# Rows (tokens x batch) up to which the int8 kernel runs; a prompt's prefill has more, and there the kernel is
# slower than dequantising the weight for one bf16 matmul (measured, 6144 x 2048: equal at ~32 rows, 4x slower
# at 200).
INT8_KERNEL_MAX_ROWS = 16


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [N, K], scales [N] in COMPUTE_DTYPE) with ``weight ≈ q * scale[:, None]``, per output row."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
    scale = scale.to(COMPUTE_DTYPE)
    q = torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def int8_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x @ (weight * scales[:, None]).T`` in COMPUTE_DTYPE, returned in x's dtype."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1]).to(scales.dtype)
    if _HAS_INT8_KERNEL and x.device.type == "cpu" and flat.shape[0] <= INT8_KERNEL_MAX_ROWS:
        out = torch._weight_int8pack_mm(flat, weight, scales)
    else:
        out = F.linear(flat, weight.to(scales.dtype)) * scales
    return out.reshape(*shape[:-1], weight.shape[0]).to(x.dtype)


_HAS_INT8_KERNEL = hasattr(torch, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """A bias-free ``nn.Linear`` with int8 weights and per-output-channel scales."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear takes bias-free layers only")
        q, scales = quantize_rows(linear.weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight, self.scales)


def quantize_lm_int8(lm, head_rows: slice | None = None):
    """In place: int8 projections in every layer and an int8 head over ``head_rows`` (the audio-code rows the
    codes phase reads; None = the whole head). Returns ``lm``."""
    for layer in lm.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear(child))
    rows = head_rows or slice(0, lm.config.vocab_size)
    q, scales = quantize_rows(lm.head_weight[rows])
    lm.int8_head = (rows, q, scales)
    return lm
