"""acestep_core.audio: file round trips, metadata, atomic saves, input preparation, the timbre-reference recipe,
anti-clip / peak normalisation, the repaint splice and fades."""
import math
import os
import random

import numpy as np
import pytest
import torch

from acestep_core import audio
from acestep_core.audio import (
    fade,
    load_audio,
    postprocess,
    prepare_audio,
    read_metadata,
    reference_segments,
    repaint_splice,
    save_audio,
)
from acestep_core.errors import InputError

SR = 48000


def tone(seconds=1.0, rate=SR, channels=2, freq=440.0, amp=0.5):
    t = torch.arange(int(seconds * rate)) / rate
    wav = amp * torch.sin(2 * math.pi * freq * t)
    return torch.stack([wav * (1 - 0.3 * c) for c in range(channels)])


def snr_db(ref, test):
    return 10 * math.log10(float((ref ** 2).sum() / ((ref - test) ** 2).sum().clamp(min=1e-20)))


# --------------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("ext,quality,tol", [
    (".flac", None, 1 / 32768 + 1e-7), (".flac", "24", 2**-23 + 1e-7),
    (".wav", None, 1 / 32768 + 1e-7), (".wav", "24", 2**-23 + 1e-7), (".wav", "float", 0.0),
])
def test_lossless_round_trip(tmp_path, ext, quality, tol):
    x = torch.rand(2, SR + 123, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    path = save_audio(tmp_path / f"a{ext}", x, SR, quality=quality)
    y, rate = load_audio(path)
    assert rate == SR and y.dtype == torch.float32 and y.shape == x.shape
    assert (y - x).abs().max().item() <= tol


@pytest.mark.parametrize("ext,quality", [(".mp3", None), (".mp3", "128k"), (".opus", None), (".opus", "64k")])
def test_lossy_round_trip_keeps_length_and_rate(tmp_path, ext, quality):
    x = tone(2.0)
    y, rate = load_audio(save_audio(tmp_path / f"a{ext}", x, SR, quality=quality))
    assert rate == SR and y.shape == x.shape  # the decoders trim encoder delay and padding
    assert snr_db(x, y) > 15


def test_mono_and_other_rates(tmp_path):
    x = tone(1.0, rate=44100, channels=1)
    y, rate = load_audio(save_audio(tmp_path / "m.flac", x, 44100))
    assert rate == 44100 and y.shape == (1, 44100)
    y, rate = load_audio(save_audio(tmp_path / "m.mp3", x, 44100))  # 44.1 kHz is an MP3 rate: kept
    assert rate == 44100 and y.shape == (1, 44100)
    y, rate = load_audio(save_audio(tmp_path / "m.opus", x[0], 44100))  # [S] accepted; Opus has no 44.1 kHz
    assert rate == SR and y.shape == (1, SR)


def test_integer_pcm_input(tmp_path):
    x = (tone(0.5) * 32767).round().to(torch.int16)
    y, _ = load_audio(save_audio(tmp_path / "i.wav", x, SR))
    assert torch.allclose(y, x.float() / 32768, atol=1e-6)


@pytest.mark.parametrize("ext", [".flac", ".mp3", ".opus"])
def test_metadata_read_back(tmp_path, ext):
    meta = {"prompt": '{"3": {"class_type": "KSampler"}}', "workflow": '{"nodes": []}', "comment": "ünïcødé"}
    path = save_audio(tmp_path / f"meta{ext}", tone(0.5), SR, metadata=meta)
    tags = read_metadata(path)
    for k, v in meta.items():
        assert tags[k] == v


def test_flac_tags_are_container_tags_like_comfyui(tmp_path):
    import av

    path = save_audio(tmp_path / "c.flac", tone(0.2), SR, metadata={"prompt": "{}"})
    with av.open(path) as c:
        assert c.metadata["prompt"] == "{}"


def test_unsupported_extension_and_quality(tmp_path):
    with pytest.raises(ValueError, match=r"\.ogg.*\.flac, \.wav, \.mp3, \.opus"):
        save_audio(tmp_path / "a.ogg", tone(0.1), SR)
    with pytest.raises(ValueError, match="'\\(none\\)'"):
        save_audio(tmp_path / "noext", tone(0.1), SR)
    with pytest.raises(InputError, match="^quality='V9' is not allowed: .mp3 files take 'V0'"):
        save_audio(tmp_path / "a.mp3", tone(0.1), SR, quality="V9")
    with pytest.raises(InputError, match="^quality='8' is not allowed: .flac files take '16' or '24'"):
        save_audio(tmp_path / "a.flac", tone(0.1), SR, quality="8")
    with pytest.raises(ValueError, match="3 channels"):
        save_audio(tmp_path / "a.flac", torch.zeros(3, 100), SR)
    with pytest.raises(ValueError, match="NaN"):
        save_audio(tmp_path / "a.flac", torch.full((2, 100), float("nan")), SR)
    with pytest.raises(ValueError, match="sample_rate"):
        save_audio(tmp_path / "a.flac", tone(0.1), 0)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("ext", [".flac", ".mp3"])
def test_atomic_save_leaves_nothing_on_encoder_failure(tmp_path, monkeypatch, ext):
    target = tmp_path / f"out{ext}"
    target.write_bytes(b"previous content")
    real_frame = audio._frame
    calls = []

    def failing_frame(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the container header and some packets are already written by now
            raise RuntimeError("simulated encoder failure")
        return real_frame(*args, **kwargs)

    monkeypatch.setattr(audio, "_frame", failing_frame)
    with pytest.raises(RuntimeError, match="simulated"):
        save_audio(target, torch.rand(2, audio._CHUNK * 4) - 0.5, SR)
    assert len(calls) == 3
    assert target.read_bytes() == b"previous content"  # untouched
    assert sorted(os.listdir(tmp_path)) == [target.name]  # no temporary left behind


def test_save_creates_folder_and_returns_path(tmp_path):
    path = save_audio(str(tmp_path / "new" / "dir" / "x.wav"), tone(0.1), SR)
    assert os.path.isfile(path) and path.endswith("x.wav")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found.*missing.wav"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(ValueError, match="bad.mp3"):
        load_audio(bad)
    with pytest.raises(ValueError, match="folder"):
        load_audio(tmp_path)


# --------------------------------------------------------------------------------------------------- prepare


def test_prepare_mono_to_stereo_and_channels():
    x = tone(0.5, channels=1)
    y = prepare_audio(x, SR)
    assert y.shape == (2, SR // 2) and torch.equal(y[0], y[1]) and torch.equal(y[0], x[0])
    three = torch.stack([x[0], 0.5 * x[0], 0.25 * x[0]])
    assert torch.equal(prepare_audio(three, SR), three[:2])


def test_prepare_resamples_and_clamps():
    import torchaudio

    x = tone(1.0, rate=44100) * 3  # peaks 1.5: clamped
    y = prepare_audio(x, 44100)
    assert y.shape == (2, SR)
    expected = torchaudio.functional.resample(x, 44100, SR).clamp(-1, 1)
    assert torch.allclose(y, expected)
    assert y.abs().max() <= 1.0


# --------------------------------------------------------------------------------------------------- reference


def _original_recipe(wav, rng):
    """The original's algorithm (global-random version), written out independently for comparison."""
    target, seg = 30 * SR, 10 * SR
    if wav.shape[-1] < target:
        wav = torch.cat([wav] * math.ceil(target / wav.shape[-1]), dim=-1)
    total = wav.shape[-1]
    third = total // 3
    a = rng.randint(0, max(0, third - seg))
    b = third + rng.randint(0, max(0, third - seg))
    c = 2 * third + rng.randint(0, max(0, total - 2 * third - seg))
    return torch.cat([wav[:, a:a + seg], wav[:, b:b + seg], wav[:, c:c + seg]], -1), (a, b, c)


def test_reference_segments_seeded_and_exact_length():
    n = 95 * SR + 7
    ramp = torch.arange(n, dtype=torch.float64).expand(2, -1)  # sample index as value: positions are visible
    out = reference_segments(ramp, seed=1234)
    assert out.shape == (2, 30 * SR)
    assert torch.equal(out, reference_segments(ramp, seed=1234))
    assert not torch.equal(out, reference_segments(ramp, seed=1235))
    # same draws as the original makes from a global random state seeded with the same number
    random.seed(1234)
    expected, (a, b, c) = _original_recipe(ramp, random)
    assert torch.equal(out, expected)
    third = n // 3
    starts = [int(out[0, i * 10 * SR]) for i in range(3)]
    assert starts == [a, b, c]
    assert 0 <= a <= third - 10 * SR and third <= b <= 2 * third - 10 * SR and 2 * third <= c <= n - 10 * SR
    for i, s in enumerate(starts):  # each segment is contiguous
        assert torch.equal(out[0, i * 10 * SR:(i + 1) * 10 * SR], torch.arange(s, s + 10 * SR, dtype=torch.float64))


def test_reference_segments_short_input_is_tiled():
    short = torch.arange(7 * SR, dtype=torch.float64).expand(2, -1)  # 7 s → tiled 5× to 35 s
    out = reference_segments(short, seed=0)
    assert out.shape == (2, 30 * SR)
    random.seed(0)
    expected, _ = _original_recipe(short, random)
    assert torch.equal(out, expected)
    assert set(out[0].unique().tolist()) <= set(range(7 * SR))
    exactly_30 = torch.arange(30 * SR, dtype=torch.float64).expand(2, -1)  # thirds are exactly the segments
    assert torch.equal(reference_segments(exactly_30, seed=5), exactly_30)
    with pytest.raises(ValueError, match="shape"):
        reference_segments(torch.zeros(2, 0), seed=0)


# --------------------------------------------------------------------------------------------------- post-processing


def test_postprocess_anticlip_only():
    x = torch.zeros(3, 2, 1000)
    x[0, 0, 10] = 2.0  # peak 2: divided by 2
    x[0, 1, 20] = -1.0
    x[1, 1, 5] = 0.5  # peak 0.5: untouched
    out = postprocess(x, normalize=False)
    assert out[0, 0, 10] == 1.0 and out[0, 1, 20] == -0.5
    assert torch.equal(out[1], x[1]) and torch.equal(out[2], x[2])
    assert torch.equal(postprocess(x[1], normalize=False), x[1])  # [C, S] accepted
    assert x[0, 0, 10] == 2.0  # input not modified


def test_postprocess_peak_normalisation():
    x = torch.zeros(3, 2, 1000)
    x[0, 0, 10] = 3.0
    x[1, 1, 5] = -0.25
    x[2, 0, 0] = 5e-7  # below 1e-6: left as is
    out = postprocess(x)
    target = 10 ** (-1 / 20)  # 0.891250938…
    peaks = out.abs().amax(dim=(1, 2))
    assert torch.allclose(peaks[:2], torch.tensor([target, target]), rtol=0, atol=1e-7)
    assert out[1, 1, 5] < 0 and out[2, 0, 0] == 5e-7
    assert abs(postprocess(x, target_dbfs=-6.0).abs().amax().item() - 10 ** (-6 / 20)) < 1e-7
    assert torch.allclose(postprocess(x, target_dbfs=0.0)[:2].abs().amax(dim=(1, 2)), torch.ones(2))
    with pytest.raises(InputError, match="^target_dbfs=1.0 is not allowed: a peak level"):
        postprocess(x, target_dbfs=1.0)
    with pytest.raises(ValueError, match="shape"):
        postprocess(torch.zeros(10))


# --------------------------------------------------------------------------------------------------- repaint splice


def test_repaint_splice_hard_edges():
    gen, src = torch.full((2, 100), 2.0), torch.full((2, 100), 5.0)
    out = repaint_splice(gen, src, 30, 70, 0)
    assert torch.all(out[:, :30] == 5) and torch.all(out[:, 30:70] == 2) and torch.all(out[:, 70:] == 5)


def test_repaint_splice_crossfade_ramps_outside_region():
    gen, src = torch.ones(2, 200), torch.zeros(2, 200)
    out = repaint_splice(gen, src, 50, 150, 10)
    ramp = torch.linspace(0, 1, 12)[1:-1]
    assert torch.allclose(out[0, 40:50], ramp) and torch.allclose(out[0, 150:160], ramp.flip(0))
    assert torch.all(out[:, 50:150] == 1) and torch.all(out[:, :40] == 0) and torch.all(out[:, 160:] == 0)
    # ramps shortened at the edges of the audio
    out = repaint_splice(gen, src, 4, 197, 10)
    assert torch.allclose(out[0, :4], torch.linspace(0, 1, 6)[1:-1])
    assert torch.allclose(out[0, 197:], torch.linspace(1, 0, 5)[1:-1])


def test_repaint_splice_edge_cases():
    gen = torch.randn(2, 100, generator=torch.Generator().manual_seed(0))
    src = torch.randn(2, 100, generator=torch.Generator().manual_seed(1))
    assert torch.equal(repaint_splice(gen, src, 0, 100, 10), gen)  # region covers everything
    assert torch.equal(repaint_splice(gen, src, -5, 500, 10), gen)  # clamped to the same
    # generated longer than the source: the extra tail is kept as generated
    out = repaint_splice(torch.ones(2, 120), torch.zeros(2, 100), 20, 40, 0)
    assert out.shape == (2, 120) and torch.all(out[:, 100:] == 1) and torch.all(out[:, 40:100] == 0)
    # source longer: cut to the generated length
    assert repaint_splice(torch.ones(2, 80), torch.zeros(2, 100), 20, 40, 0).shape == (2, 80)
    # batched [B, C, S], one region for all
    out = repaint_splice(torch.ones(3, 2, 100), torch.zeros(3, 2, 100), 10, 20, 0)
    assert out.shape == (3, 2, 100) and torch.all(out[:, :, 10:20] == 1) and out.sum() == 3 * 2 * 10


# --------------------------------------------------------------------------------------------------- fades


def test_fade():
    x = torch.ones(2, 1000)
    out = fade(x, 100, fade_in_s=1.0, fade_out_s=2.0)
    assert torch.allclose(out[0, :100], torch.linspace(0, 1, 100))
    assert torch.allclose(out[0, -200:], torch.linspace(1, 0, 200))
    assert torch.all(out[:, 100:800] == 1) and torch.all(x == 1)
    assert fade(x, 100) is x
    assert torch.allclose(fade(torch.ones(5), 1, fade_in_s=100)[:], torch.linspace(0, 1, 5))  # clipped to length


def test_numpy_input_saves(tmp_path):
    x = tone(0.25).numpy().astype(np.float32)
    y, _ = load_audio(save_audio(tmp_path / "n.flac", x, SR))
    assert y.shape == x.shape
