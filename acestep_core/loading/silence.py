"""The silence latent: the VAE latent of digital silence, [1, T, 64] at 25 Hz.

The model leans on it everywhere (text2music source, padding, "no reference audio" timbre input, repaint
fill); zeros instead give drone-like audio. Official folders ship it as ``silence_latent.pt`` ([1, 64, 15000],
600 s); for the Comfy-Org files, which ship none, it is derived from the VAE once and cached on disk.
"""
from __future__ import annotations

import copy
import hashlib
import os
import pickle

import torch

from ..models.vae import OobleckVAE, derive_silence_latent
from ..errors import CheckpointError

SILENCE_FRAMES = 15000  # the shipped file's length: 600 s at 25 Hz
_memory_cache: dict[str, torch.Tensor] = {}


def load_silence_latent_file(path: str, dtype: torch.dtype, device, channels: int | None = None) -> torch.Tensor:
    """Read ``silence_latent.pt`` → [1, T, C]: a plain float tensor [1, C, T] (``weights_only=True``: a pickle
    holding Python objects is refused, never run), with ``channels`` latent channels when given, at least one
    frame, and finite values."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: holds Python objects besides tensor data, which are never loaded for "
                              "safety; replace it with the file from the official model folder") from None
    except Exception:  # noqa: BLE001 - a truncated or foreign file: torch's message is long and says nothing useful
        raise CheckpointError(f"{path}: not a readable tensor file (truncated or corrupt?); replace it with the "
                              "file from the official model folder") from None
    expected = f"[1, {channels if channels else 'channels'}, frames]"
    if not isinstance(data, torch.Tensor) or data.dim() != 3 or data.shape[0] != 1:
        shape = list(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise CheckpointError(f"{path}: expected a {expected} tensor, got {shape}")
    if channels is not None and data.shape[1] != channels:
        raise CheckpointError(f"{path}: expected a {expected} tensor, got {list(data.shape)} (a silence latent "
                              "of another model?)")
    if data.shape[2] == 0 or not data.is_floating_point():
        raise CheckpointError(f"{path}: expected a {expected} float tensor with at least one frame, got "
                              f"{list(data.shape)} {str(data.dtype).replace('torch.', '')}")
    if not torch.isfinite(data).all():
        raise CheckpointError(f"{path}: contains NaN or infinite values")
    return data.transpose(1, 2).to(device=device, dtype=dtype).contiguous()


def silence_slice(silence: torch.Tensor, frames: int, start: int = 0) -> torch.Tensor:
    """Frames [start, start + frames) of the silence latent [1, T, C], tiled when past its end."""
    total = silence.shape[1]
    if start + frames <= total:
        return silence[:, start:start + frames]
    repeats = -(-(start + frames) // total)
    return silence.repeat(1, repeats, 1)[:, start:start + frames]


def _cache_dir() -> str:
    root = os.environ.get("ACESTEP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "acestep_core")
    return root


def _fingerprint(vae: OobleckVAE) -> str:
    """Identify a VAE by its weights: a hash over a few decoder/encoder tensors (cheap, content-based)."""
    h = hashlib.sha256()
    state = vae.state_dict()
    for key in sorted(state)[:: max(1, len(state) // 16)]:
        t = state[key].detach().float().cpu().contiguous()
        h.update(key.encode())
        h.update(t.numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


def silence_latent_for_vae(vae: OobleckVAE, frames: int = SILENCE_FRAMES,
                           use_disk_cache: bool = True) -> torch.Tensor:
    """The silence latent of this VAE (float32, [1, frames, 64]), derived once and cached in memory and on
    disk (``$ACESTEP_CACHE_DIR`` or ``~/.cache/acestep_core``)."""
    key = f"{_fingerprint(vae)}-{frames}"
    if key in _memory_cache:
        return _memory_cache[key]
    path = os.path.join(_cache_dir(), f"silence_latent-{key}.pt")
    silence = None
    if use_disk_cache and os.path.isfile(path):
        try:
            silence = load_silence_latent_file(path, torch.float32, "cpu")
        except CheckpointError:
            silence = None  # a damaged cache entry is simply rebuilt
    if silence is None:
        # Derive in float32 even for a bf16/fp16 VAE: it is done once, and the result is reused forever.
        reference = vae if next(vae.parameters()).dtype == torch.float32 else copy.deepcopy(vae).float()
        silence = derive_silence_latent(reference, frames).float().cpu().clone()
        if use_disk_cache:
            tmp = path + f".tmp{os.getpid()}"  # a killed run's leftover has another pid: never read, never in the way
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                torch.save(silence.transpose(1, 2).contiguous(), tmp)  # stored like the official file
                os.replace(tmp, path)
            except OSError:
                pass  # read-only home: keep the in-memory copy only
            finally:
                if os.path.exists(tmp):  # a failed save, or a signal in the middle
                    os.unlink(tmp)
    _memory_cache[key] = silence
    return silence
