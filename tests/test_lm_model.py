"""The 5 Hz LM network and its loading: logits equal transformers' Qwen3ForCausalLM on the same tiny random weights
(prefill, cached decode, left padding), the static cache equals recomputation, and every file layout loads the
same tensors."""
import os

import pytest
import torch
from safetensors.torch import save_file

from acestep_core.errors import CheckpointError
from acestep_core.loading.lm import has_lm, load_lm, load_lm_and_tokenizer, load_lm_tokenizer
from acestep_core.models.lm import LMConfig
from devtools.lm_fixtures import (
    TINY_LM_CONFIG,
    hf_reference_lm,
    random_lm_state_dict,
    write_aio_with_lm,
    write_comfy_lm,
    write_official_lm,
)

PAD = 151643


@pytest.fixture(scope="module")
def weights():
    return random_lm_state_dict(seed=3)


@pytest.fixture(scope="module")
def files(tmp_path_factory, weights):
    root = str(tmp_path_factory.mktemp("lm"))
    models = os.path.join(root, "models")
    return {
        "official": write_official_lm(root, weights),
        "sharded": write_official_lm(root, weights, name="acestep-5Hz-lm-sharded", shards=3),
        "comfy": write_comfy_lm(models, weights),
        "aio": write_aio_with_lm(os.path.join(models, "checkpoints", "aio.safetensors"), weights, extra={
            "text_encoders.qwen3_06b.transformer.model.embed_tokens.weight": torch.zeros(151669, 4),
            "model.diffusion_model.decoder.proj_in.weight": torch.zeros(2, 2),
        }),
    }


@pytest.fixture(scope="module")
def ours(files):
    return load_lm(files["official"], dtype=torch.float32)


@pytest.fixture(scope="module")
def reference(weights):
    return hf_reference_lm(weights)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _batch():
    """Two rows, the second left-padded by 5: token ids across the text and audio-code range."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 217204, (2, 14), generator=g)
    mask = torch.ones(2, 14, dtype=torch.long)
    ids[1, :5], mask[1, :5] = PAD, 0
    return ids, mask


@torch.no_grad()
def test_prefill_logits_equal_transformers_with_left_padding(ours, reference):
    ids, mask = _batch()
    ref = reference(input_ids=ids, attention_mask=mask).logits
    ours.setup_cache(2, 32, mask.bool())
    got = ours.prefill(ids, 0, last_only=False)
    assert got.shape == ref.shape
    assert _rel(got[0], ref[0]) <= 1e-5
    assert _rel(got[1, 5:], ref[1, 5:]) <= 1e-5  # the padded positions' logits are never used
    assert torch.isfinite(got).all()


@torch.no_grad()
def test_cached_decode_equals_transformers_cache(ours, reference):
    ids, mask = _batch()
    out = reference(input_ids=ids, attention_mask=mask, use_cache=True)
    cache, full_mask = out.cache, mask
    ours.setup_cache(2, 32, mask.bool())
    ours.prefill(ids, 0)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        token = torch.randint(151669, 217204, (2, 1), generator=g)
        full_mask = torch.cat([full_mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        out = reference(input_ids=token, attention_mask=full_mask, cache=cache, use_cache=True)
        cache = out.cache
        got = ours.decode(token, 14 + step)
        assert _rel(got, out.logits[:, -1]) <= 1e-5, step


@torch.no_grad()
def test_static_cache_equals_full_recomputation(ours):
    """Prompt, then a run of 3 forced tokens in one call, then single tokens: each step's logits equal a fresh
    prefill of the whole sequence so far."""
    ids, mask = _batch()
    tail = torch.tensor([[151667, 198, 17808, 76, 25, 151700], [151667, 198, 17808, 76, 25, 151701]])
    ours.setup_cache(2, 32, mask.bool())
    steps = [ours.prefill(ids, 0), ours.prefill(tail[:, :3], 14)]
    steps += [ours.decode(tail[:, i:i + 1], 14 + i) for i in range(3, 6)]
    for n, got in zip([14, 17, 18, 19, 20], steps):
        ours.setup_cache(2, 32, mask.bool())
        full = ours.prefill(torch.cat([ids, tail], dim=1)[:, :n], 0)
        assert _rel(got, full) <= 1e-5, n


@torch.no_grad()
def test_prompts_prefilled_row_by_row_equal_the_padded_batch(ours):
    """The planner runs each prompt on its own cache row from its first real position and copies rows shared
    by several songs: same logits, and the same following decode steps, as prefilling the left-padded batch."""
    ids, mask = _batch()
    token = torch.tensor([[151700], [151700], [151800], [151800]])
    batch_ids, batch_mask = ids[[0, 0, 1, 1]], mask[[0, 0, 1, 1]]
    ours.setup_cache(4, 32, batch_mask.bool())
    expected_prefill = ours.prefill(batch_ids, 0)
    expected_step = ours.decode(token, 14)
    ours.setup_cache(4, 32, batch_mask.bool())
    first = ours.prefill(ids[:1], 0, rows=slice(0, 1))
    ours.copy_cache_row(0, slice(1, 2))
    second = ours.prefill(ids[1:, 5:], 5, rows=slice(2, 3))  # the padded row: its real tokens only
    ours.copy_cache_row(2, slice(3, 4))
    assert _rel(first, expected_prefill[:1]) <= 1e-5 and _rel(second, expected_prefill[2:3]) <= 1e-5
    assert _rel(ours.decode(token, 14), expected_step) <= 1e-5


@torch.no_grad()
def test_code_rows_head_is_a_slice_of_the_full_head(ours):
    ids, mask = _batch()
    ours.setup_cache(2, 32, mask.bool())
    full = ours.prefill(ids, 0)
    ours.setup_cache(2, 32, mask.bool())
    codes = ours.prefill(ids, 0, logit_rows=slice(151669, 151669 + 64000))
    assert codes.shape == (2, 64000)
    torch.testing.assert_close(codes, full[:, 151669:215669], rtol=0, atol=1e-6)


@torch.no_grad()
def test_untied_head_equals_transformers(tmp_path):
    weights = random_lm_state_dict(seed=5, tied=False)
    assert "lm_head.weight" in weights
    model = load_lm(write_official_lm(str(tmp_path), weights), dtype=torch.float32)
    assert model.lm_head is not None
    ids, mask = _batch()
    ref = hf_reference_lm(weights, dict(TINY_LM_CONFIG, tie_word_embeddings=False))(input_ids=ids, attention_mask=mask)
    model.setup_cache(2, 16, mask.bool())
    assert _rel(model.prefill(ids, 0, last_only=False)[0], ref.logits[0]) <= 1e-5


def test_config_from_shapes_equals_config_json(weights):
    shapes = {k[len("model."):] if k.startswith("model.") else k: list(v.shape) for k, v in weights.items()}
    assert LMConfig.from_shapes(shapes) == LMConfig.from_hf(TINY_LM_CONFIG)


def test_every_layout_loads_the_same_tensors(files, ours):
    reference = ours.state_dict()
    for name in ("sharded", "comfy", "aio"):
        model = load_lm(files[name], dtype=torch.float32)
        assert model.config == ours.config, name
        got = model.state_dict()
        assert got.keys() == reference.keys(), name
        for key in reference:
            assert torch.equal(got[key], reference[key]), (name, key)


def test_load_in_bf16_and_has_lm(files):
    model = load_lm(files["comfy"], dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert has_lm(files["aio"]) and has_lm(files["official"]) and has_lm(files["comfy"])


def test_tokenizer_of_each_layout(files):
    _, folder_tok = load_lm_and_tokenizer(files["official"], dtype=torch.float32)
    _, file_tok = load_lm_and_tokenizer(files["comfy"], dtype=torch.float32)
    assert folder_tok.source.endswith("tokenizer.json") and file_tok.source.endswith("tokenizer.json.gz")
    text = ("<|im_start|>user\n# Caption\nlo-fi ♭ 夜\n<|im_end|>\n<think>\n\n</think>\n\n"
            "<|audio_code_7|><|audio_code_65534|>")
    assert folder_tok.encode(text) == file_tok.encode(text)
    assert len(folder_tok) == len(file_tok) == 217204


def test_errors_name_the_file_and_the_problem(tmp_path, files):
    text_encoder = str(tmp_path / "qwen_0.6b_ace15.safetensors")
    save_file({"model.embed_tokens.weight": torch.zeros(151669, 4)}, text_encoder)
    with pytest.raises(CheckpointError, match="qwen_0.6b_ace15.*text encoder"):
        load_lm(text_encoder)
    dit = str(tmp_path / "dit.safetensors")
    save_file({"decoder.proj_in.weight": torch.zeros(2, 2)}, dit)
    with pytest.raises(CheckpointError, match="dit.safetensors: no 5 Hz LM weights"):
        load_lm(dit)
    assert not has_lm(dit) and not has_lm(text_encoder)
    from safetensors.torch import load_file

    broken = load_file(files["comfy"])
    del broken["model.layers.1.mlp.up_proj.weight"]
    path = str(tmp_path / "broken.safetensors")
    save_file(broken, path)
    with pytest.raises(CheckpointError, match="broken.safetensors.*layers.1.mlp.up_proj.weight"):
        load_lm(path)
    with pytest.raises(CheckpointError, match="no such LM"):
        load_lm(str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="no room for audio-code tokens"):
        load_lm_tokenizer(None, 151669)
    folder = write_official_lm(str(tmp_path), random_lm_state_dict(seed=1), dict(TINY_LM_CONFIG, hidden_size="32"))
    with pytest.raises(CheckpointError, match="config.json: hidden_size is '32'; expected a positive integer"):
        load_lm(folder)


def _prefilled(model):
    """``model`` with a fresh cache holding the prefilled ``_batch()`` (positions 0..13)."""
    ids, mask = _batch()
    model.setup_cache(2, 32, mask.bool())
    model.prefill(ids, 0)
    return model


@torch.no_grad()
def test_compiled_decode_step_traces_as_one_graph(ours):
    """The CUDA decode step must compile without graph breaks; traced here with the eager backend."""
    token = torch.tensor([[151700], [151700]])
    expected = _prefilled(ours).decode(token, 14)
    _prefilled(ours)
    ours.enable_compile(backend="eager")
    try:
        got = ours.decode(token, 14)
    finally:
        ours.disable_compile()
    assert _rel(got, expected) <= 1e-5


@torch.no_grad()
def test_a_failing_compilation_falls_back_to_eager(ours):
    token = torch.tensor([[151700], [151700]])
    expected = _prefilled(ours).decode(token, 14)
    _prefilled(ours)

    def broken_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler here")

    ours.enable_compile(backend=broken_compiler)
    with pytest.warns(UserWarning, match="running it eagerly"):
        got = ours.decode(token, 14)
    assert ours._compiled_decode is None
    assert torch.equal(got, expected)


@torch.no_grad()
def test_bf16_on_cpu_keeps_a_float32_cache_and_stays_close(files, ours):
    half = load_lm(files["official"], dtype=torch.bfloat16)
    token = torch.tensor([[151700], [151700]])
    results = [_prefilled(model).decode(token, 14).float() for model in (ours, half)]
    assert half.layers[0].self_attn.kv_cache.k.dtype == torch.float32
    assert _rel(results[1], results[0]) < 0.05
