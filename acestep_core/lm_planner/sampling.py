"""Token sampling for the LM: CFG, then top-k → min-p → top-p on the un-tempered logits → temperature → draw.

The draw is an inverse-CDF lookup of one uniform number per token; the uniforms come from a CPU
``torch.Generator`` seeded per song, so a seed gives the same tokens on CPU and GPU (up to float differences in
the logits), as the DiT's noise does. Everything else runs on the logits' device.

On the CPU the descending sort (the one step that cost more than the rest of a tiny LM's step together: 2-5 ms
for the 64,000 code logits with torch's stable sort) sorts unique 64-bit keys (the value's order, then the
index) with numpy's vectorised sort instead: the same order as torch's stable sort, ties included, in a tenth
of the time.
"""
from __future__ import annotations

import functools

import numpy as np
import torch


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` in float32."""
    cond, uncond = cond.float(), uncond.float()
    return uncond + scale * (cond - uncond)


@functools.lru_cache(maxsize=4)
def _indices(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint64)


def sort_descending(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, order) of float32 ``logits`` [R, V] sorted in descending order, equal values in index order
    (``torch.sort(descending=True, stable=True)``). NaN is not expected (disallowed tokens are -inf)."""
    if logits.device.type != "cpu" or logits.shape[-1] >= 2**31:
        return logits.sort(dim=-1, descending=True, stable=True)
    bits = (logits.contiguous().numpy() + np.float32(0.0)).view(np.int32)  # -0.0 + 0.0 = 0.0 (a tie in torch)
    # Order-preserving map of the float bits to integers (negative floats count down), flipped to descend and
    # made unsigned, then put above the index: unique keys whose ascending order is the stable descending one.
    ascending = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    descending = (~ascending).view(np.uint32) ^ np.uint32(0x80000000)
    keys = (descending.astype(np.uint64) << np.uint64(32)) | _indices(bits.shape[-1])
    keys.sort(axis=-1)
    low = keys.view(np.uint32)[..., 0::2] if np.little_endian else keys.view(np.uint32)[..., 1::2]
    order = torch.from_numpy(low.astype(np.int64))
    return logits.gather(-1, order), order


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
    values, order = sort_descending(logits)
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
