"""Waveform peaks: a compact picture of a song for the frontend's waveform display.

The song is cut into ``bins`` slices of equal length (slice ``i`` starts at sample ``floor(i * S / bins)``); each
slice gives its lowest and highest sample over all channels, quantised to integers in [-PEAK_SCALE, PEAK_SCALE]
(``floor(v * PEAK_SCALE + 0.5)``, clamped; a NaN sample counts as 0). ``web/acestep/peaks.js`` computes the same numbers from
audio decoded in the browser, so either summary draws the same picture.
"""
from __future__ import annotations

import torch

PEAK_SCALE = 127  # peaks are integers in [-PEAK_SCALE, PEAK_SCALE]
PEAK_BINS = 1000  # slices per song in the summaries the nodes return (about 8 KB of JSON per song)


def quantize(values: torch.Tensor) -> torch.Tensor:
    """Sample values as integers in [-PEAK_SCALE, PEAK_SCALE], rounded half up (in float64, like JavaScript)."""
    q = torch.floor(values.double() * PEAK_SCALE + 0.5).clamp(-PEAK_SCALE, PEAK_SCALE)
    return torch.nan_to_num(q, nan=0.0).to(torch.int64)


def compute_peaks(waveform: torch.Tensor, bins: int = PEAK_BINS) -> tuple[list[int], list[int]]:
    """(mins, maxs) of a waveform [channels, samples] (or [samples]) in min(bins, samples) slices."""
    if waveform.dim() == 1:
        waveform = waveform[None]
    if waveform.dim() != 2:
        raise ValueError(f"waveform has shape {tuple(waveform.shape)}; expected [channels, samples]")
    samples = waveform.shape[-1]
    n = max(0, min(int(bins), samples))
    if n == 0 or waveform.shape[0] == 0:
        return [], []
    wav = torch.nan_to_num(waveform.float(), nan=0.0)
    bounds = (torch.arange(n + 1, dtype=torch.int64) * samples) // n
    lengths = bounds[1:] - bounds[:-1]
    lows = torch.segment_reduce(wav.amin(dim=0), "min", lengths=lengths)
    highs = torch.segment_reduce(wav.amax(dim=0), "max", lengths=lengths)
    return quantize(lows).tolist(), quantize(highs).tolist()


def peaks_summary(waveform: torch.Tensor, sample_rate: int, bins: int = PEAK_BINS) -> dict:
    """The JSON-ready summary a node returns in its UI output: duration, slice count and the peaks."""
    lows, highs = compute_peaks(waveform, bins)
    return {"seconds": round(waveform.shape[-1] / sample_rate, 6), "bins": len(lows), "min": lows, "max": highs}
