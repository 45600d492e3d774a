"""VAE decode and encode sized to the free memory.

The decode tile is the requested length (512 latent frames by default) when it fits in the free memory, else the
largest of ``VAE_TILE_CHOICES`` below it that does; the encode window likewise from ``VAE_ENCODE_WINDOW_CHOICES``.
When not even the smallest fits, the VAE runs on the CPU in float32 (a temporary copy; the device's VAE is left
where it is) and the result comes back to the device. ``free`` is a function returning the free bytes, so the
choice can be tested anywhere; without one (or when it answers None) a CPU device counts as unlimited.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..constants import VAE_ENCODE_WINDOW_CHOICES, VAE_TILE_CHOICES
from .estimates import Workload, vae_decode_working, vae_encode_working


@dataclass(frozen=True)
class VaeRun:
    """How a decode or encode ran: on ``device`` with ``tile`` latent frames (decode) / ``window`` seconds
    (encode)."""

    device: str
    tile: int | None = None
    window: float | None = None

    def describe(self) -> str:
        size = f"tile {self.tile}" if self.tile is not None else f"window {self.window:g} s"
        return f"VAE on the CPU ({size}, float32)" if self.device == "cpu-fallback" else f"VAE {size}"


def device_free_memory(device: torch.device) -> int:
    """Bytes this process can still allocate on ``device``: the device's free memory plus torch's cached blocks,
    capped by ``torch.cuda.set_per_process_memory_fraction``; unlimited off CUDA."""
    if device.type != "cuda":
        return 1 << 62
    free, total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda d: 1.0)(device)
    return int(min(free + cached, fraction * total - torch.cuda.memory_allocated(device)))


def _available(free: Callable[[], int | None] | None, device: torch.device) -> int:
    """``free()``'s answer, or the device's own free memory when there is no ``free`` or it answers None."""
    available = free() if free is not None else None
    return device_free_memory(device) if available is None else available


def _choices(preferred: int, options) -> list:
    return sorted({preferred, *(o for o in options if o < preferred)}, reverse=True)


def choose_tile(free: int, vae_dtype: torch.dtype, frames: int, batch: int, preferred: int, config=None
                ) -> int | None:
    """The decode tile for ``free`` bytes: ``preferred`` or the largest smaller choice that fits; None when none
    does."""
    work = Workload(seconds=frames / 25, batch=batch)
    for tile in _choices(preferred, VAE_TILE_CHOICES):
        if vae_decode_working(vae_dtype, tile, work, config) <= free:
            return tile
    return None


def choose_window(free: int, vae_dtype: torch.dtype, preferred: float = VAE_ENCODE_WINDOW_CHOICES[0], config=None
                  ) -> float | None:
    """The encode window (seconds) for ``free`` bytes, likewise."""
    for seconds in _choices(preferred, VAE_ENCODE_WINDOW_CHOICES):
        if vae_encode_working(vae_dtype, seconds, config) <= free:
            return seconds
    return None


def cpu_copy(vae):
    """A float32 copy of ``vae`` on the CPU (built on the meta device, the weights copied over one by one)."""
    from ..models.vae import OobleckVAE

    with torch.device("meta"):
        copy = OobleckVAE(vae.config)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in vae.state_dict().items()}
    copy.load_state_dict(state, assign=True)
    return copy.eval().requires_grad_(False)


def decode(vae, latents: torch.Tensor, preferred: int = 512, overlap: int = 64,
           free: Callable[[], int] | None = None) -> tuple[torch.Tensor, VaeRun]:
    """``tiled_decode`` of latents [B, 64, T] with the tile chosen from the free memory (see the module
    docstring). Returns the audio (on the VAE's device) and how it ran."""
    from ..models.vae import tiled_decode

    p = next(vae.parameters())
    available = _available(free, p.device)
    tile = choose_tile(available, p.dtype, latents.shape[-1], latents.shape[0], preferred, vae.config)
    if tile is not None:
        return tiled_decode(vae, latents, chunk_size=tile, overlap=overlap), VaeRun(str(p.device.type), tile=tile)
    audio = tiled_decode(cpu_copy(vae), latents.to("cpu"), chunk_size=preferred, overlap=overlap)
    return audio.to(p.device, p.dtype), VaeRun("cpu-fallback", tile=preferred)


def encode(vae, audio: torch.Tensor, free: Callable[[], int] | None = None, generator=None, sample: bool = False
           ) -> tuple[torch.Tensor, VaeRun]:
    """``tiled_encode`` of [B, C, S] audio with the window chosen from the free memory (30 s where it fits, as
    the original). Returns the latents (on the VAE's device) and how it ran."""
    from ..models.vae import tiled_encode

    p = next(vae.parameters())
    available = _available(free, p.device)
    window = choose_window(available, p.dtype, config=vae.config)
    sr = vae.config.sampling_rate
    if window is not None:
        chunk = None if window == VAE_ENCODE_WINDOW_CHOICES[0] else int(window * sr)
        return (tiled_encode(vae, audio, chunk_samples=chunk, generator=generator, sample=sample),
                VaeRun(str(p.device.type), window=window))
    z = tiled_encode(cpu_copy(vae), audio.to("cpu", torch.float32), generator=generator, sample=sample)
    return z.to(p.device, p.dtype), VaeRun("cpu-fallback", window=VAE_ENCODE_WINDOW_CHOICES[0])
