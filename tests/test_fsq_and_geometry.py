"""FSQ against the library the original imports (vector-quantize-pytorch's ResidualFSQ, configured as the
original configures it), and parameter counts at full geometry on the meta device."""
from __future__ import annotations

import pytest
import torch

from acestep_core.constants import XL_DIT_GEOMETRY
from acestep_core.models.audio_tokens import FSQ
from acestep_core.models.config import AceStepConfig
from acestep_core.models.model import AceStepModel


def _original_quantizer(dim=32, levels=(8, 8, 8, 5, 5, 5)):
    vq = pytest.importorskip("vector_quantize_pytorch")
    ref = vq.ResidualFSQ(dim=dim, levels=list(levels), num_quantizers=1).eval()
    ours = FSQ(dim, list(levels))
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if k.startswith("project_")})
    return ours, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fsq_quantize_matches_vector_quantize_pytorch(dtype):
    """fp32, and bf16 as the 2B model runs it (model.to(bf16) casts the library's float buffers too)."""
    ours, ref = _original_quantizer()
    ours, ref = ours.to(dtype), ref.to(dtype)
    h = 3 * torch.randn(4, 50, 32, generator=torch.Generator().manual_seed(0)).to(dtype)  # hits the clamps
    with torch.no_grad():
        q_ours, ids_ours = ours(h)
        q_ref, ids_ref = ref(h)
    assert torch.equal(ids_ours, ids_ref.squeeze(-1).long())
    assert ids_ours.min() >= 0 and ids_ours.max() < 64000 and len(ids_ours.unique()) > 20
    if dtype == torch.float32:
        torch.testing.assert_close(q_ours, q_ref, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(q_ours, q_ref)


def test_fsq_codes_to_embedding_matches_vector_quantize_pytorch():
    ours, ref = _original_quantizer()
    ids = torch.tensor([[0, 1, 7, 8, 511, 512, 2559, 2560, 12799, 12800, 35847, 63999]])
    with torch.no_grad():
        torch.testing.assert_close(ours.embed_codes(ids, torch.float32), ref.get_output_from_indices(ids[..., None]),
                                   rtol=1e-6, atol=1e-6)


def test_bf16_codebook_rounding_like_the_original():
    """In a bf16 model the original's implicit codebook buffer holds bf16-rounded code values."""
    vq = pytest.importorskip("vector_quantize_pytorch")
    ours, ref = _original_quantizer()
    ids = torch.tensor([[1, 12345, 63999]])
    ref = ref.to(torch.bfloat16)  # what model.to(bf16) does to the original's quantiser and its buffers
    codebook = ref.layers[0].implicit_codebook
    assert codebook.dtype == torch.bfloat16 and codebook[1, 0].item() == -0.71484375
    with torch.no_grad():
        expected = ref.get_output_from_indices(ids[..., None])
        got = ours.to(torch.bfloat16).embed_codes(ids, torch.bfloat16)
    assert vq is not None and torch.equal(got, expected)


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "config, expected",
    [
        (AceStepConfig(), {"decoder": 1_575_458_880, "encoder": 608_367_616, "null": 2048,
                           "total": 2_393_872_518}),
        (AceStepConfig(**XL_DIT_GEOMETRY),
         {"decoder": 4_168_897_088, "encoder": 608_367_616, "null": 2048, "total": 4_987_310_726}),
    ],
    ids=["2B", "XL"],
)
def test_parameter_counts_at_full_geometry(config, expected):
    with torch.device("meta"):
        model = AceStepModel(config)
    assert _count(model.decoder) == expected["decoder"]
    # The reference's condition-encoder figure, 608,369,664, includes null_condition_emb (2,048).
    assert _count(model.encoder) + model.null_condition_emb.numel() == 608_369_664
    assert _count(model.tokenizer.audio_acoustic_proj) == 133_120
    assert _count(model.tokenizer.attention_pooler) == 104_872_448
    assert _count(model.tokenizer.quantizer) == 26_630
    assert _count(model.detokenizer) == 105_011_776
    assert _count(model) == expected["total"]


@pytest.mark.parametrize("xl", [False, True], ids=["2B", "XL"])
def test_geometry_inferred_from_full_size_shapes(xl):
    """Comfy-Org files carry no config: the geometry read off the tensor shapes must be the published one."""
    from acestep_core.models.model import to_checkpoint_keys

    published = AceStepConfig(**XL_DIT_GEOMETRY) if xl else AceStepConfig()
    with torch.device("meta"):
        model = AceStepModel(published)
    shapes = {k: list(v.shape) for k, v in to_checkpoint_keys(model.state_dict()).items()}
    assert len(shapes) == 677 if not xl else len(shapes) > 677  # the official 2B file holds 677 tensors
    inferred = AceStepConfig.from_shapes(shapes)
    assert inferred == published
    assert inferred.is_xl == xl


def test_rope_frequencies_are_rounded_like_a_bf16_model():
    """model.to(bf16) rounds the original's inv_freq buffer; a bf16 load must see the same angles."""
    from acestep_core.models.layers import Rotary

    rope = Rotary(128, 1_000_000.0)
    exact = rope.inv_freq("cpu")
    rope.freq_dtype = torch.bfloat16
    rounded = rope.inv_freq("cpu")
    assert torch.equal(rounded, exact.to(torch.bfloat16).float()) and not torch.equal(rounded, exact)
    with torch.device("meta"):
        model = AceStepModel(AceStepConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=32))
    model.match_rope_rounding(torch.bfloat16)
    assert model.decoder.rotary.freq_dtype == torch.bfloat16
    assert model.encoder.lyric_encoder.rotary.freq_dtype == torch.bfloat16
