"""Audio in and out: reading any file ffmpeg can decode, writing flac / wav / mp3 / opus the way ComfyUI does,
and the waveform-level steps of ACE-Step 1.5 around the VAE (input preparation, the timbre-reference recipe,
anti-clipping and peak normalisation, the repaint splice, fades).

Files are read and written with PyAV (the ffmpeg bindings ComfyUI already depends on); resampling uses
``torchaudio.functional.resample`` (the same windowed-sinc kernel as the original's ``torchaudio.transforms.Resample``).
Waveforms are channels-first float32 tensors, ``[C, S]`` (or ``[B, C, S]`` for batches), nominally in [-1, 1].
"""
from __future__ import annotations

import math
import os
import random
import re
import secrets
import stat
from collections.abc import Mapping

import numpy as np
import torch

from .constants import REFERENCE_SECONDS, REFERENCE_SEGMENT_SECONDS, SAMPLE_RATE
from .errors import Described, InputError

SILENCE_THRESHOLD = 1e-6  # |x| below this everywhere = silent (the original's is_silence)
MODEL_CHANNELS = 2  # the VAE reads stereo: mono is duplicated, of more channels the first two are kept

SUPPORTED_EXTENSIONS = (".flac", ".wav", ".mp3", ".opus")
_QUALITY_DEFAULTS = {".flac": "16", ".wav": "16", ".mp3": "V0", ".opus": "128k"}
_QUALITY_HELP = {
    ".flac": "'16' or '24' (bits per sample)",
    ".wav": "'16', '24' (integer PCM) or 'float' (32-bit float)",
    ".mp3": "'V0' (VBR, ComfyUI's default) or a bit rate such as '128k' or '320k'",
    ".opus": "a bit rate such as '64k', '128k' or '320k'",
}
_BITRATE = re.compile(r"^(\d+)k$")
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_CHUNK = 1 << 16  # samples per encoded frame (the encoder re-chunks to its own frame size)


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - av is a requirement; the message says how to fix a broken install
        raise ImportError("reading and writing audio files needs PyAV: pip install av") from None
    return av


# --------------------------------------------------------------------------------------------------- files


def load_audio(path: str | os.PathLike, max_seconds: float | None = None,
               name: str = "audio", channels: int | None = None) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream of any file ffmpeg reads → (float32 waveform [C, S], sample rate).

    Integer PCM is scaled to [-1, 1) (s16 / 32768, s32 / 2^31), as ComfyUI's LoadAudio does. With
    ``max_seconds``, a longer file is refused from its header before anything is decoded, and decoding stops as
    soon as more than that has come out (for files whose header does not tell or lies), so any file size is
    safe. ``channels``: keep only the first that many channels while decoding (the model reads
    :data:`MODEL_CHANNELS`, see :func:`prepare_audio`), so a 7.1 or 12-channel file costs no more memory than
    stereo. Any channel count decodes (samples come out interleaved, one plane per frame). Only regular files
    are read: a FIFO, device or socket is refused rather than waited on. ``name`` is the input the file was
    given as, for messages.
    """
    av = _av()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: audio file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path} is a folder, not an audio file")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{name}: {path} is not a regular file (a FIFO, device or socket would be waited on); "
                         "save the audio to a file and give that")
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise ValueError(f"{name}: {path} has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            if max_seconds is not None:
                _refuse_long(name, path, _header_seconds(container, stream), max_seconds)
            limit = None if max_seconds is None or not rate else int((max_seconds + 1) * rate)
            # Same layout and rate, only the sample format changes: to packed float (one plane whatever the
            # channel count; PyAV's planar to_ndarray crashes the process from 8 channels on).
            to_float = av.AudioResampler(format="flt")
            chunks, decoded = [], 0
            for frame in container.decode(stream):
                for f in to_float.resample(frame):
                    chunks.append(_channels_first(f, channels))
                    decoded += chunks[-1].shape[-1]
                if limit is not None and decoded > limit:
                    _refuse_long(name, path, decoded / rate, max_seconds, "at least ")
            chunks.extend(_channels_first(f, channels) for f in to_float.resample(None))
    except av.FFmpegError as e:
        raise ValueError(f"{name}: {path} cannot be decoded: {e}") from None
    if not chunks or not rate:
        raise ValueError(f"{name}: {path} contains no audio samples")
    wav = torch.from_numpy(np.concatenate(chunks, axis=1).astype(np.float32, copy=False))
    if wav.shape[-1] == 0:
        raise ValueError(f"{name}: {path} contains no audio samples")
    if max_seconds is not None:
        _refuse_long(name, path, wav.shape[-1] / rate, max_seconds)
    return wav, int(rate)


def _channels_first(frame, keep: int | None) -> np.ndarray:
    """A packed float frame → [C, n] (only the first ``keep`` channels when given)."""
    x = frame.to_ndarray().reshape(frame.samples, -1).T
    return np.ascontiguousarray(x if keep is None else x[:keep])


def _header_seconds(container, stream) -> float | None:
    """The length the file's header declares (stream, then container), or None."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _refuse_long(name: str, path: str, seconds: float | None, max_seconds: float, prefix: str = "") -> None:
    if seconds is not None and seconds > max_seconds + 0.05:
        raise InputError(name, Described(f"{path} ({prefix}{seconds:.1f} s)"), f"audio of at most {max_seconds:g} s "
                                                                     "(trim it first)")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The tags of an audio file: container tags (flac, mp3, wav) merged with those of the first audio
    stream (Ogg/Opus keeps its tags there)."""
    av = _av()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        with av.open(path) as container:
            tags = dict(container.metadata)
            if container.streams.audio:
                for k, v in container.streams.audio[0].metadata.items():
                    tags.setdefault(k, v)
    except av.FFmpegError as e:
        raise ValueError(f"audio file {path} cannot be read: {e}") from None
    return tags


def _check_quality(ext: str, quality: str | None) -> str:
    q = _QUALITY_DEFAULTS[ext] if quality is None else str(quality).strip()
    ok = {
        ".flac": q in ("16", "24"),
        ".wav": q in ("16", "24", "float"),
        ".mp3": q.upper() == "V0" or bool(_BITRATE.match(q.lower())),
        ".opus": bool(_BITRATE.match(q.lower())),
    }[ext]
    if ok and ext in (".mp3", ".opus") and q.upper() != "V0" and not 6 <= int(_BITRATE.match(q.lower())[1]) <= 512:
        ok = False
    if not ok:
        raise InputError("quality", quality, f"{ext} files take {_QUALITY_HELP[ext]}")
    return q


def check_save_options(path: str | os.PathLike, quality: str | None = None) -> tuple[str, str]:
    """Check an output path's extension and the quality for it before any work; returns (extension, quality)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise ValueError(f"cannot save audio to {path}: extension {ext or '(none)'!r} is not supported; "
                         f"use one of {', '.join(SUPPORTED_EXTENSIONS)}")
    return ext, _check_quality(ext, quality)


def as_waveform(waveform, name: str = "waveform") -> torch.Tensor:
    """Tensor / ndarray [S] or [C, S] → float32 CPU tensor [C, S]; integer PCM scaled to [-1, 1)."""
    if not isinstance(waveform, (torch.Tensor, np.ndarray)):
        raise InputError(name, waveform, "a waveform tensor [channels, samples] or [samples]")
    x = torch.as_tensor(waveform).detach().cpu()
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise InputError(name, x, "a waveform [channels, samples] or [samples]")
    if x.dtype == torch.int16:
        x = x.float() / 32768.0
    elif x.dtype == torch.int32:
        x = x.float() / 2147483648.0
    elif x.dtype == torch.uint8:
        x = (x.float() - 128.0) / 128.0
    elif not x.is_floating_point():
        raise InputError(f"{name} dtype", str(x.dtype), "floating point, int16, int32 or uint8 samples")
    return x.float()


def _frame(av, samples: np.ndarray, layout: str, rate: int, pts: int):
    """One packed float frame from [C, n] samples."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T).reshape(1, -1), format="flt", layout=layout)
    frame.sample_rate = rate
    frame.pts = pts
    return frame


def _encode(av, path: str, ext: str, x: np.ndarray, rate: int, metadata: Mapping[str, str], quality: str) -> None:
    layout = "mono" if x.shape[0] == 1 else "stereo"
    if ext == ".flac":
        container_format, codec, sample_fmt = "flac", "flac", "s16" if quality == "16" else "s32"
    elif ext == ".wav":
        container_format, sample_fmt = "wav", {"16": "s16", "24": "s32", "float": "flt"}[quality]
        codec = {"16": "pcm_s16le", "24": "pcm_s24le", "float": "pcm_f32le"}[quality]
    elif ext == ".mp3":
        container_format, codec, sample_fmt = "mp3", "libmp3lame", "fltp"
    else:
        container_format, codec, sample_fmt = "opus", "libopus", "flt"
    with av.open(path, mode="w", format=container_format) as container:
        for key, value in metadata.items():
            container.metadata[str(key)] = str(value)
        stream = container.add_stream(codec, rate=rate, layout=layout)
        stream.codec_context.format = sample_fmt
        if ext == ".mp3" and quality.upper() == "V0":
            stream.codec_context.qscale = True  # VBR with global quality 0 = LAME -V0, as ComfyUI sets it
        elif ext in (".mp3", ".opus"):
            stream.bit_rate = int(_BITRATE.match(quality.lower())[1]) * 1000
        for start in range(0, x.shape[1], _CHUNK):
            for packet in stream.encode(_frame(av, x[:, start:start + _CHUNK], layout, rate, start)):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def save_audio(
    path: str | os.PathLike,
    waveform,
    sample_rate: int,
    metadata: Mapping[str, str] | None = None,
    quality: str | None = None,
) -> str:
    """Write ``waveform`` ([C, S] or [S], 1 or 2 channels) to ``path``; the extension picks the format.

    * ``.flac``: 16-bit (default) or 24-bit; ``.wav``: 16-bit PCM (default), 24-bit or 32-bit float;
      ``.mp3``: libmp3lame, V0 (default) or a bit rate; ``.opus``: libopus, 128k by default.
    * MP3 and Opus only take some sample rates; other rates are resampled to 48 kHz first.
    * ``metadata`` becomes container tags (Vorbis comments in flac, ID3 in mp3, OpusTags in opus; wav keeps
      only standard INFO keys such as ``title``), the way ComfyUI stores ``prompt`` / ``workflow``.
    * Integer formats clip to [-1, 1]; the float formats keep the values as given.

    Atomic: the file is encoded under a temporary name in the same folder and renamed over ``path`` only
    when complete, so a failure leaves no partial file and an existing file untouched. Returns the path.
    """
    av = _av()
    path = os.fspath(path)
    ext, quality = check_save_options(path, quality)
    x = as_waveform(waveform)
    if x.shape[0] not in (1, 2):
        raise ValueError(f"cannot save {x.shape[0]} channels to {path}; expected 1 (mono) or 2 (stereo)")
    if x.shape[1] == 0:
        raise ValueError(f"cannot save an empty waveform (0 samples) to {path}")
    if not torch.isfinite(x).all():
        raise ValueError(f"cannot save audio with NaN or infinite samples to {path}")
    if isinstance(sample_rate, float) and sample_rate.is_integer():
        sample_rate = int(sample_rate)
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise InputError("sample_rate", sample_rate, "a positive integer (Hz)")
    allowed_rates = {".mp3": MP3_RATES, ".opus": OPUS_RATES}.get(ext)
    if allowed_rates is not None and sample_rate not in allowed_rates:
        x = resample(x, sample_rate, SAMPLE_RATE)
        sample_rate = SAMPLE_RATE
    if ext == ".flac" or (ext == ".wav" and quality != "float"):
        x = x.clamp(-1.0, 1.0)

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.part")
    try:
        # Created with os.open so the final file gets the usual umask-derived permissions (mkstemp's are 0600).
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        _encode(av, tmp, ext, x.numpy(), sample_rate, metadata or {}, quality)
        os.replace(tmp, path)
    except OSError as e:  # the disk: full, read-only, gone (ffmpeg's I/O errors are OSErrors too); named by path
        _remove(tmp)
        raise OSError(e.errno, e.strerror, path) from None
    except av.FFmpegError as e:
        _remove(tmp)
        raise ValueError(f"encoding {path} failed: {e}") from None
    except BaseException:
        _remove(tmp)
        raise
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------- waveforms


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """torchaudio's default windowed-sinc resampler (Hann, width 6, rolloff 0.99), like the original's
    ``torchaudio.transforms.Resample``."""
    if orig_rate == new_rate:
        return waveform
    import torchaudio

    return torchaudio.functional.resample(waveform, int(orig_rate), int(new_rate))


def prepare_audio(waveform: torch.Tensor, sample_rate: int, target_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A checked recording (an AudioClip's float32 [C, S] and rate) → float32 stereo [2, S'] at ``target_rate``,
    clamped to [-1, 1], as the original prepares source and reference audio: mono is duplicated, of more channels
    only the first two are kept (no down-mix: in the usual orders of 5.1, 7.1 and beyond, ffmpeg's included, they
    are front left and front right)."""
    x = waveform
    if x.shape[0] == 1:
        x = x.repeat(MODEL_CHANNELS, 1)
    x = x[:MODEL_CHANNELS]
    return resample(x, sample_rate, target_rate).clamp(-1.0, 1.0).contiguous()


def reference_segments(waveform: torch.Tensor, seed: int | None, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """The original's timbre-reference recipe on a prepared [2, S] waveform → exactly 30 s [2, 30·rate].

    Audio shorter than 30 s is first tiled (repeated whole) to at least 30 s. The length is split into thirds and
    one 10 s segment is taken from each (front, middle, back), concatenated in that order.

    Deviation: the original draws the three segment starts from Python's global, unseeded ``random``; here
    they come from ``random.Random(seed)`` so a generation is reproducible. The draws are made in the same
    order with the same ``randint`` bounds, so the seed plays the role of the global random state.
    """
    if not isinstance(waveform, torch.Tensor) or waveform.dim() != 2 or waveform.shape[-1] == 0:
        shape = tuple(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise ValueError(f"reference waveform has shape {shape}; expected a prepared [channels, samples] tensor")
    target = REFERENCE_SECONDS * sample_rate
    segment = REFERENCE_SEGMENT_SECONDS * sample_rate
    if waveform.shape[-1] < target:
        waveform = waveform.repeat(1, math.ceil(target / waveform.shape[-1]))
    total = waveform.shape[-1]
    third = total // 3
    rng = random.Random(seed)
    front = rng.randint(0, max(0, third - segment))
    middle = third + rng.randint(0, max(0, third - segment))
    back = 2 * third + rng.randint(0, max(0, (total - 2 * third) - segment))
    return torch.cat([waveform[:, s:s + segment] for s in (front, middle, back)], dim=-1)


def _peaks(audio: torch.Tensor) -> torch.Tensor:
    """Per-item peak |x| as [B, 1, 1]."""
    return audio.abs().amax(dim=(1, 2), keepdim=True)


def postprocess(audio: torch.Tensor, normalize: bool = True, target_dbfs: float = -1.0) -> torch.Tensor:
    """Decoded audio [B, C, S] (or [C, S]) → float32, anti-clipped and optionally peak-normalised.

    Anti-clip: each item whose peak exceeds 1 is divided by its peak; the others are untouched
    (``generate_music_decode.py``). Normalisation: each item is scaled so its peak is ``target_dbfs`` dBFS
    (10^(dB/20)); items with a peak below 1e-6 are left alone (``audio_utils.normalize_audio``). The original
    silently skips a positive target; here it is an error.
    """
    if target_dbfs > 0 or not math.isfinite(target_dbfs):
        raise InputError("target_dbfs", target_dbfs, "a peak level ≤ 0 dBFS (e.g. -1.0)")
    if audio.dim() not in (2, 3):
        raise ValueError(f"audio has shape {tuple(audio.shape)}; expected [batch, channels, samples] or "
                         "[channels, samples]")
    squeeze = audio.dim() == 2
    x = audio[None] if squeeze else audio
    x = x.float()
    peak = _peaks(x)
    if bool((peak > 1.0).any()):
        x = x / peak.clamp(min=1.0)
    if normalize:
        peak = _peaks(x)
        target = 10.0 ** (target_dbfs / 20.0)
        gain = torch.where(peak < 1e-6, torch.ones_like(peak), target / peak.clamp(min=1e-6))
        x = x * gain
    return x[0] if squeeze else x


def repaint_splice(
    generated: torch.Tensor,
    original: torch.Tensor,
    start_sample: int,
    end_sample: int,
    crossfade_samples: int,
) -> torch.Tensor:
    """Put the untouched source back outside a repainted region ([C, S] or [B, C, S], same region for all).

    Inside [start, end) the generated audio is kept; outside it the original waveform replaces it (removing the
    VAE's reconstruction error there). The crossfades lie *outside* the region: ``crossfade_samples`` before
    ``start`` rise linearly towards 1 and as many after ``end`` fall towards 0, both without their end points
    (``linspace(0, 1, n + 2)[1:-1]``), shortened at the edges of the audio. Lengths may differ: the overlap is
    spliced and any extra generated tail is kept as is. A region covering everything returns ``generated``
    unchanged. Mirrors ``repaint_waveform_splice.py`` of the original.
    """
    n = min(generated.shape[-1], original.shape[-1])
    start = max(0, min(int(start_sample), n))
    end = max(start, min(int(end_sample), n))
    if start == 0 and end >= n:
        return generated.clone()
    mask = torch.zeros(n, device=generated.device, dtype=torch.float32)
    mask[start:end] = 1.0
    cf = int(crossfade_samples)
    if cf > 0:
        left = start - max(start - cf, 0)
        if left > 0:
            mask[start - left:start] = torch.linspace(0.0, 1.0, left + 2, device=mask.device)[1:-1]
        right = min(end + cf, n) - end
        if right > 0:
            mask[end:end + right] = torch.linspace(1.0, 0.0, right + 2, device=mask.device)[1:-1]
    src = original[..., :n].to(device=generated.device, dtype=torch.float32)
    spliced = (mask * generated[..., :n].float() + (1.0 - mask) * src).to(generated.dtype)
    if generated.shape[-1] > n:
        spliced = torch.cat([spliced, generated[..., n:]], dim=-1)
    return spliced


def fade(audio: torch.Tensor, sample_rate: int, fade_in_s: float = 0.0, fade_out_s: float = 0.0) -> torch.Tensor:
    """Linear fade-in / fade-out over the last dimension (``round(seconds · rate)`` samples each, ramps from
    exactly 0 to 1 and 1 to 0, clipped to the audio length), as the original's ``apply_fade``. The seconds are
    checked where they are given (RenderSettings)."""
    n_in, n_out = round(fade_in_s * sample_rate), round(fade_out_s * sample_rate)
    if n_in <= 0 and n_out <= 0:
        return audio
    out = audio.clone()
    total = out.shape[-1]
    if n_in > 0:
        n = min(n_in, total)
        out[..., :n] *= torch.linspace(0.0, 1.0, n, dtype=out.dtype, device=out.device)
    if n_out > 0:
        n = min(n_out, total)
        out[..., total - n:] *= torch.linspace(1.0, 0.0, n, dtype=out.dtype, device=out.device)
    return out
