"""Where the units go is handed to the pipeline (``placement``), and nothing about a run is stored on it: how the
VAE ran and the memory report come back with the result (``GenerationResult.vae_run``, ``metadata["memory"]``,
``decode_with_run`` / ``encode_with_run``)."""
from __future__ import annotations

import pytest
import torch

from acestep_core.constants import VAE_ENCODE_WINDOW_CHOICES
from acestep_core.memory.manager import MemoryManager, MemorySettings, memory_manager
from acestep_core.memory.placement import LeaveLoaded
from acestep_core.memory.vae_tiles import VaeRun
from acestep_core.pipeline import AceStepPipeline
from acestep_core.request import AudioClip, RenderSettings, request
from devtools.fixtures import tiny_models_folder

REQ = dict(caption="synth pop", lyrics="[verse]\nla la", duration=10.0, seed=3, steps=3)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return AceStepPipeline.from_pretrained(tiny_models_folder(tmp_path_factory), dtype="fp32", device="cpu").ckpt


@pytest.fixture(scope="module")
def plain(ckpt):
    """A generation with the default placement, to compare the others with."""
    return AceStepPipeline(ckpt)(request(**REQ))


def test_the_default_placement_leaves_the_units_and_reports_only_the_vae(ckpt, plain):
    pipe = AceStepPipeline(ckpt)
    assert isinstance(pipe.placement, LeaveLoaded)
    assert "memory" not in plain.metadata  # no plan, nothing to tell
    assert plain.vae_run == VaeRun("cpu", tile=RenderSettings().tile_frames)  # the CPU: the whole tile fits


def test_a_run_stores_nothing_on_the_pipeline(ckpt):
    pipe = AceStepPipeline(ckpt)
    before = dict(vars(pipe))
    result = pipe(request(**REQ))
    pipe.decode(result.latents)
    pipe.encode([AudioClip(result.audio[0], result.sample_rate)])
    after = vars(pipe)
    assert after.keys() == before.keys() and all(after[k] is v for k, v in before.items())


def test_decode_and_encode_with_run_return_what_decode_and_encode_return(ckpt, plain):
    pipe = AceStepPipeline(ckpt)
    settings = RenderSettings(tile_frames=64)
    audio, run = pipe.decode_with_run(plain.latents, settings)
    assert torch.equal(audio, pipe.decode(plain.latents, settings)) and run == VaeRun("cpu", tile=64)
    rendered = pipe(request(**REQ, tile_frames=64))
    assert rendered.vae_run == run and torch.equal(rendered.audio, audio)
    clips = [AudioClip(plain.audio[0], plain.sample_rate)]
    latents, run = pipe.encode_with_run(clips)
    assert torch.equal(latents, pipe.encode(clips)) and run == VaeRun("cpu", window=VAE_ENCODE_WINDOW_CHOICES[0])
    assert pipe(request(**REQ, decode=False)).vae_run is None  # latents only: the VAE did not decode


class RecordingPlacement(LeaveLoaded):
    """A host's own placement: it is told the units each phase needs."""

    def __init__(self, calls: list):
        self.calls = calls

    def use(self, parts):
        self.calls.append(parts)


def test_a_hosts_placement_gets_the_parts_of_each_phase(ckpt, plain):
    calls = []
    result = AceStepPipeline(ckpt, placement=RecordingPlacement(calls))(request(**REQ))
    assert calls == [("model",), ("text_encoder", "model"), ("model",), ("vae",)]  # inputs, condition, DiT, VAE
    assert torch.equal(result.audio, plain.audio) and "memory" not in result.metadata


def test_a_memory_manager_handed_in_plans_each_request_and_reports_in_the_result(ckpt, plain):
    manager = memory_manager(ckpt, MemorySettings(budget_gb=8.0), "cpu")
    assert isinstance(manager, MemoryManager) and set(manager.units) == {"text_encoder", "model", "vae"}
    result = AceStepPipeline(ckpt, placement=manager)(request(**REQ))
    assert manager.plan is not None and result.metadata["memory"] == manager.report()
    assert result.metadata["memory"].startswith("weights resident: ") and "budget 8.0 GB" in result.metadata["memory"]
    assert torch.equal(result.audio, plain.audio) and result.vae_run == plain.vae_run
