"""Token sampling for the LM: CFG, then top-k → min-p → top-p on the un-tempered logits → temperature → draw.

The draw is an inverse-CDF lookup of one uniform number per token; the uniforms come from a CPU
``torch.Generator`` seeded per song, so a seed gives the same tokens on CPU and GPU (up to float differences in
the logits), as the DiT's noise does. Everything else runs on the logits' device.
"""
from __future__ import annotations

import torch


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` in float32."""
    cond, uncond = cond.float(), uncond.float()
    return uncond + scale * (cond - uncond)


def sample(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
           min_p: float = 0.0) -> torch.Tensor:
    """One token per row of ``logits`` [R, V] (disallowed tokens at -inf); ``uniforms`` [R] in [0, 1).

    Filters follow the original's order and semantics (top-k keeps ties with the k-th value; top-p keeps the
    smallest prefix of the sorted distribution whose mass exceeds p, computed before the temperature); min-p
    (ComfyUI's option, absent upstream) drops tokens below ``min_p`` times the top probability, between the two.
    ``temperature <= 0`` is greedy."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    values, order = logits.sort(dim=-1, descending=True, stable=True)
    neg_inf = float("-inf")
    if 0 < top_k < values.shape[-1]:
        values = values.masked_fill(values < values[:, top_k - 1: top_k], neg_inf)
    if min_p > 0:
        probs = values.softmax(dim=-1)
        values = values.masked_fill(probs < min_p * probs[:, :1], neg_inf)
    if 0 < top_p < 1:
        mass = values.softmax(dim=-1).cumsum(dim=-1)
        remove = torch.zeros_like(mass, dtype=torch.bool)
        remove[:, 1:] = mass[:, :-1] > top_p  # keep the token that crosses p
        values = values.masked_fill(remove, neg_inf)
    cdf = (values / temperature).softmax(dim=-1).cumsum(dim=-1)
    target = (uniforms.to(cdf.device, torch.float32) * cdf[:, -1]).unsqueeze(-1)
    index = torch.searchsorted(cdf, target, right=True)
    last_kept = torch.isfinite(values).sum(dim=-1, keepdim=True) - 1
    index = torch.minimum(index, last_kept)
    return order.gather(-1, index).squeeze(-1)
