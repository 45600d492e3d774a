"""Weight streaming on the CPU: the same schedule the GPU runs (layers copied into device buffers ahead of use),
with outputs bit-identical to the fully loaded model — DiT velocities, cross-attention K/V, whole generations
(LoRA included), and a transformers Qwen3 stack (the LM's layout)."""
from __future__ import annotations


import pytest
import torch

from acestep_core.memory.manager import MemoryManager, MemorySettings, resident_view
from acestep_core.memory.streaming import StreamedLayers, stream_layers, unstream_layers
from acestep_core.pipeline import AceStepPipeline
from acestep_core.request import request
from devtools import lora_fixtures as lf
from devtools.fixtures import tiny_models_folder
from devtools.tiny import tiny_config_json

CPU = lambda: torch.device("cpu")  # noqa: E731


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tiny_models_folder(tmp_path_factory, "sft")


@pytest.fixture()
def pipe(root):
    return AceStepPipeline.from_pretrained(root, dtype="fp32", device="cpu")


def _velocity(decoder, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = decoder.proj_in.in_channels
    x = torch.randn(2, 37, 8, generator=g)
    context = torch.randn(2, 37, cfg - 8, generator=g)
    enc = torch.randn(2, 11, decoder.condition_embedder.in_features, generator=g)
    t = torch.tensor([0.7, 0.3])
    with torch.no_grad():
        kv = decoder.cross_kv(enc)
        return decoder(x, t, context, kv), kv


@pytest.mark.parametrize("resident,slots", [(0, 1), (0, 2), (1, 2), (3, 2), (2, 3)])
def test_streamed_decoder_velocity_and_cross_kv_are_bit_identical(pipe, resident, slots):
    decoder = pipe.model.decoder
    expected, expected_kv = _velocity(decoder)
    homes = [p.data_ptr() for p in decoder.parameters()]
    stack = stream_layers(decoder, "layers", resident, CPU, slots=slots, pin=False)
    assert isinstance(decoder.layers, StreamedLayers) and stack.streamed == 4 - resident
    got, got_kv = _velocity(decoder)
    assert torch.equal(got, expected)
    assert all(torch.equal(a, b) for pair, ref in zip(got_kv, expected_kv) for a, b in zip(pair, ref))
    # two passes (cross-K/V, forward): every streamed layer copied at least once; a buffer still holding its
    # layer from the first pass is reused by the second
    assert 4 - resident <= stack.streamer.copies <= 2 * (4 - resident)
    # between uses every parameter points at its own CPU tensor again
    assert [p.data_ptr() for p in decoder.parameters()] == homes
    unstream_layers(decoder, "layers")
    assert type(decoder.layers) is torch.nn.ModuleList
    assert torch.equal(_velocity(decoder)[0], expected)


def test_a_changed_weight_is_copied_again(pipe):
    """A buffer that still holds a layer is reused only while the tensor behind it is the same."""
    decoder = pipe.model.decoder
    stream_layers(decoder, "layers", 2, CPU, slots=2, pin=False)  # 2 streamed = 2 buffers: kept between passes
    _velocity(decoder)
    q = decoder.layers[3].self_attn.q_proj.weight
    original = q.data
    q.data = original * 1.5  # what adapters.patched does: a new tensor
    changed = _velocity(decoder)[0]
    q.data = original
    unstream_layers(decoder, "layers")
    q.data = original * 1.5
    assert torch.equal(changed, _velocity(decoder)[0])
    q.data = original


REQ = dict(caption="synth pop", lyrics="[verse]\nla la", duration=10.0, seed=3, steps=3, guidance=3.0)


def test_generation_with_streaming_equals_the_fully_loaded_model(root):
    plain = AceStepPipeline.from_pretrained(root, dtype="fp32", device="cpu")
    expected = plain(request(**REQ))
    streamed = AceStepPipeline.from_pretrained(root, dtype="fp32", device="cpu")
    ckpt = streamed.ckpt
    streamed = AceStepPipeline(ckpt, placement=MemoryManager(
        {"text_encoder": ckpt.text_encoder, "model": ckpt.model, "vae": ckpt.vae}, "cpu", ckpt.model.config,
        torch.float32, MemorySettings(budget_gb=1.0, resident_layers=1)))
    got = streamed(request(**REQ))
    assert isinstance(ckpt.model.decoder.layers, StreamedLayers)
    assert ckpt.model.decoder.layers.streamer.copies > 0
    assert "1/4 layers resident, 3 streamed" in got.metadata["memory"]
    assert torch.equal(got.latents, expected.latents)
    assert torch.equal(got.audio, expected.audio)


def test_lora_on_streamed_layers_equals_lora_on_the_loaded_model(root, tmp_path):
    paths = lf.write_example_loras(str(tmp_path), tiny_config_json())
    adapters = [(paths[lf.EXAMPLE_LORA_FILE], 0.8)]
    plain = AceStepPipeline.from_pretrained(root, dtype="fp32", device="cpu")
    base, styled = plain(request(**REQ)), plain(request(**REQ), adapters=adapters)
    assert not torch.equal(base.latents, styled.latents)
    streamed = AceStepPipeline.from_pretrained(root, dtype="fp32", device="cpu")
    ckpt = streamed.ckpt
    streamed = AceStepPipeline(ckpt, placement=MemoryManager(
        {"text_encoder": ckpt.text_encoder, "model": ckpt.model, "vae": ckpt.vae}, "cpu", ckpt.model.config,
        torch.float32, MemorySettings(budget_gb=1.0, resident_layers=2)))
    assert torch.equal(streamed(request(**REQ), adapters=adapters).latents, styled.latents)
    assert torch.equal(streamed(request(**REQ)).latents, base.latents)  # no stale patched layer left in a buffer


def test_resident_view_moves_only_the_resident_part(pipe):
    model = pipe.model
    stack = stream_layers(model.decoder, "layers", 1, CPU, pin=False)
    streamed = {id(m) for m in list(stack._modules.values())[1:]}
    view = resident_view(model, streamed)
    names = {n for n, _ in view.named_parameters()}
    assert "decoder.layers.0.self_attn.q_proj.weight" in names
    assert not any(n.startswith(("decoder.layers.1.", "decoder.layers.3.")) for n in names)
    assert names | {n for n, _ in model.named_parameters() if n.startswith(("decoder.layers.1.", "decoder.layers.2.",
                                                                              "decoder.layers.3."))} == \
        {n for n, _ in model.named_parameters()}
    view.to(torch.float64)  # moving the view changes the model's own parameters, streamed layers untouched
    assert model.decoder.layers[0].self_attn.q_proj.weight.dtype == torch.float64
    assert model.null_condition_emb.dtype == torch.float64
    assert model.decoder.layers[2].self_attn.q_proj.weight.dtype == torch.float32


def test_a_transformers_qwen3_stack_streams_too(pipe):
    """The text encoder is transformers' Qwen3Model, which iterates ``self.layers[: n]``: the LM's layout."""
    encoder = pipe.ckpt.text_encoder
    ids = torch.tensor([[5, 17, 300, 2, 9, 41]])
    expected = encoder.encode_caption(ids)
    stack = stream_layers(encoder.model, "layers", 0, CPU, slots=2, pin=False)
    got = encoder.encode_caption(ids)
    assert stack.streamer.copies == 2 and torch.equal(got, expected)


def test_the_manager_streams_an_lm_unit(pipe):
    """An LM unit (transformers' Qwen3ForCausalLM layout; the pack's LM keeps ``layers`` at the top) under a budget
    too small for it: its layers stream, its geometry is read from its config, the logits do not change."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from acestep_core.memory.estimates import Workload

    torch.manual_seed(0)
    lm = Qwen3ForCausalLM(Qwen3Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8)).eval()
    ids = torch.tensor([[3, 17, 250, 9, 41, 7]])
    with torch.no_grad():
        expected = lm(ids).logits
    ckpt = pipe.ckpt
    manager = MemoryManager({"text_encoder": ckpt.text_encoder, "model": ckpt.model, "vae": ckpt.vae, "lm": lm},
                            "cpu", ckpt.model.config, torch.float32, MemorySettings(budget_gb=0.001))
    assert manager.lm_size["num_hidden_layers"] == 4 and manager.lm_size["num_key_value_heads"] == 2
    plan = manager.prepare(Workload(30, 1, lm_codes=150))
    assert plan.streamed("lm") == 4 and "lm" in plan.peaks and isinstance(lm.model.layers, StreamedLayers)
    manager.use(("lm",))
    with torch.no_grad():
        got = lm(ids).logits
    assert lm.model.layers.streamer.copies >= 4 and torch.equal(got, expected)
