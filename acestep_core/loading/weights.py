"""Reading safetensors files and putting their tensors into modules, with errors a user can act on.

Every loader in the package goes through here so that all of them
  * read memory-mapped (safetensors) and cast each tensor once, straight to the requested dtype/device,
  * build modules on the meta device and *assign* the loaded tensors (no random init, no second copy),
  * report missing / unexpected keys and shape mismatches naming the file.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import CheckpointError


def _open(path: str):
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found")
    try:
        return safe_open(path, framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def safetensors_keys(path: str) -> dict[str, list[int]]:
    """Key → shape of every tensor in a safetensors file, without reading the data."""
    with _open(path) as f:
        out = {}
        for k in f.keys():
            try:
                out[k] = list(f.get_slice(k).get_shape())
            except (SafetensorError, RuntimeError) as e:
                raise CheckpointError(f"{path}: tensor {k!r} is unreadable (truncated or corrupt?): {e}") from None
        return out


def read_safetensors(
    paths: str | Iterable[str],
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    select: Callable[[str], bool] | None = None,
    keep: Callable[[str, torch.Tensor], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Read tensors from one or more safetensors files.

    Floating-point tensors are cast to ``dtype`` (when given) as they are read, so a bf16 load of a bf16
    file is a plain memory-mapped read and a bf16 load of an fp32 file never materialises an fp32 model.
    Integer tensors, and those ``keep(key, tensor)`` picks (an fp8 file's float8 weights and their scales),
    keep their dtype. ``select`` filters keys before anything is read.
    """
    if isinstance(paths, str):
        paths = [paths]
    out: dict[str, torch.Tensor] = {}
    for path in paths:
        with _open(path) as f:
            for k in f.keys():
                if select is not None and not select(k):
                    continue
                try:
                    t = f.get_tensor(k)
                except (SafetensorError, RuntimeError) as e:
                    raise CheckpointError(f"{path}: tensor {k!r} is unreadable (truncated or corrupt?): {e}") from None
                if dtype is not None and t.is_floating_point() and t.dtype != dtype and not (keep and keep(k, t)):
                    t = t.to(dtype)
                out[k] = t.to(device) if str(device) != "cpu" else t
    return out


def read_json(path: str) -> dict:
    """A JSON object from a checkpoint's config file, with a clear error for anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object with the model's settings, got a "
                              f"{type(data).__name__}")
    return data


def sharded_files(folder: str, single: str = "model.safetensors") -> list[str]:
    """The weight files of a transformers-style folder: one file, or the shards named in its index."""
    path = os.path.join(folder, single)
    if os.path.isfile(path):
        return [path]
    index = path + ".index.json"
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: unreadable shard index: {e}") from None
        files = [os.path.join(folder, name) for name in dict.fromkeys(weight_map.values())]
        missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            raise CheckpointError(f"{index}: shard(s) missing: {', '.join(missing)}")
        return files
    raise CheckpointError(f"{folder}: no {single} (or {single}.index.json) found")


def assign_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Put ``state_dict`` into ``module`` (typically built on the meta device), strictly.

    Raises CheckpointError listing missing keys, unexpected keys, shape mismatches and integer tensors where the
    model has floating-point ones (first few of each).
    Modules meant for this keep no non-persistent buffers (RoPE tables are computed on the fly), so nothing
    is left on the meta device afterwards.
    """
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: file {list(state_dict[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    not_float = [
        f"{k} is {str(state_dict[k].dtype).replace('torch.', '')} (the model needs floating point)"
        for k in expected
        if k in state_dict and expected[k].is_floating_point() and not state_dict[k].is_floating_point()
    ]
    if missing or unexpected or wrong or not_float:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", wrong), ("non-float tensors", not_float)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(parts))
    module.load_state_dict(dict(state_dict), strict=True, assign=True)
    return module
