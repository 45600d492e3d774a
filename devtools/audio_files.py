"""Audio files the way recorders write them, for tests: 16-bit PCM with any channel count and layout (a 12-channel
WAV, a 7.1 FLAC), encoded by ffmpeg through PyAV."""
from __future__ import annotations

import av
import numpy as np


def pcm16_noise(channels: int, samples: int, seed: int = 0) -> np.ndarray:
    """int16 noise [channels, samples], a different level per channel (so a swapped or mixed channel shows)."""
    rng = np.random.default_rng(seed)
    levels = (1 + np.arange(channels))[:, None] / channels
    return (rng.uniform(-0.5, 0.5, (channels, samples)) * levels * 32767).astype(np.int16)


def write_pcm16(path, x: np.ndarray, layout: str, container: str, codec: str, rate: int) -> str:
    """int16 [C, S] → ``path`` in ``container`` with ``codec`` (e.g. "wav"/"pcm_s16le" with layout "12 channels",
    "flac"/"flac" with "7.1"); returns the path."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        stream.codec_context.format = "s16"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.T).reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return str(path)
