"""LoRA / LoKr / DoRA adapters (acestep_core.adapters) on the tiny DiT.

Every format is written at test time (devtools/lora_fixtures.py) and applied by our code; the DiT velocity
must equal what the reference libraries give when they apply the same file: ``peft`` for PEFT folders and
single-file LoRAs, ``lycoris-lora`` for LoKr and LyCORIS DoRA (≤ 1e-5 relative, float32). Strength is
linear, stacks add, the model is restored bit-identically, and every bad file gets an error naming it.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch
from lycoris import LycorisNetwork, create_lycoris
from lycoris.functional import factorization as lycoris_factorization
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from acestep_core.adapters import (
    bind,
    list_adapters,
    load_adapter,
    parse_lora_spec,
    patchable_weights,
    patched,
    weight_deltas,
)
from acestep_core.errors import CheckpointError, InputError
from acestep_core.loading.weights import read_safetensors
from acestep_core.models.config import AceStepConfig
from acestep_core.models.model import AceStepModel
from devtools import lora_fixtures as lf
from devtools.tiny import random_dit_checkpoint, tiny_config_json

logging.getLogger("LyCORIS").setLevel(logging.ERROR)
TOLERANCE = 1e-5


def _build(xl: bool):
    cfg = tiny_config_json(xl=xl)
    sd = random_dit_checkpoint(cfg, seed=0)
    model = AceStepModel.from_state_dict(sd, AceStepConfig.from_json(cfg))
    g = torch.Generator().manual_seed(3)
    enc_dim = cfg.get("encoder_hidden_size") or cfg["hidden_size"]
    inputs = (torch.randn(2, 11, 8, generator=g), torch.tensor([0.7, 0.3]), torch.randn(2, 11, 16, generator=g),
              torch.randn(2, 6, enc_dim, generator=g))
    tiny = SimpleNamespace(cfg=cfg, sd=sd, model=model, inputs=inputs)
    tiny.base = velocity(tiny, model)
    return tiny


@pytest.fixture(scope="module")
def tiny():
    return _build(xl=False)


@pytest.fixture(scope="module")
def tiny_xl():
    return _build(xl=True)


def velocity(tiny, model) -> torch.Tensor:
    """DiT velocity, cross-attention K/V included (they go through the adapted k/v projections too)."""
    x, t, context, enc = tiny.inputs
    with torch.no_grad():
        return model.decoder(x, t, context, model.decoder.cross_kv(enc))


def ours(tiny, path, strength=1.0) -> torch.Tensor:
    adapter = load_adapter(path)
    with patched(tiny.model, weight_deltas(tiny.model, [(adapter, strength)])):
        return velocity(tiny, tiny.model)


def assert_parity(tiny, got, ref):
    rel = ((got - ref).abs().max() / ref.abs().max()).item()
    print(f"parity: relative error {rel:.2e}")  # shown with pytest -s (the numbers in the report)
    assert rel <= TOLERANCE, rel
    effect = ((ref - tiny.base).abs().max() / tiny.base.abs().max()).item()
    assert effect > 1e-2, f"the adapter barely changes the output ({effect}): the comparison proves nothing"


def _our_name(name: str) -> str:
    """Our DiT module name for an original one (the patch convolution is not wrapped in a Sequential here)."""
    return name.replace("proj_in.1", "proj_in")


def peft_velocity(tiny, factors, r, alpha, magnitudes=None, **config) -> torch.Tensor:
    """The reference: PEFT's ``PeftModel.from_pretrained`` on a copy of the DiT, from a folder of our names."""
    folder = os.path.join(tiny.tmp, f"peft_ref_{len(os.listdir(tiny.tmp))}")
    targets = sorted({_our_name(n).rsplit(".", 1)[-1] for n in factors})
    lf.write_peft(folder, {_our_name(n): f for n, f in factors.items()}, r=r, alpha=alpha, target_modules=targets,
                  magnitudes=None if magnitudes is None else {_our_name(n): m for n, m in magnitudes.items()},
                  **config)
    reference = copy.deepcopy(tiny.model)
    peft_model = PeftModel.from_pretrained(reference.decoder, folder)
    loaded, stored = get_peft_model_state_dict(peft_model), load_file(os.path.join(folder, "adapter_model.safetensors"))
    assert loaded.keys() == stored.keys() and all(torch.equal(loaded[k], stored[k].float()) for k in stored)
    return velocity(tiny, reference)


@pytest.fixture(autouse=True)
def _tmp(tiny, tiny_xl, tmp_path):
    tiny.tmp = tiny_xl.tmp = str(tmp_path)


@pytest.fixture
def lycoris_presets():
    """LyCORIS keeps its targets in class attributes; give each test a clean slate and restore it after."""
    names = ("ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "MODULE_ALGO_MAP", "NAME_ALGO_MAP",
             "LORA_PREFIX", "USE_FNMATCH", "TARGET_EXCLUDE_NAME")
    saved = {n: copy.deepcopy(getattr(LycorisNetwork, n)) for n in names}
    yield
    for n, v in saved.items():
        setattr(LycorisNetwork, n, v)


# --------------------------------------------------------------------------- the writers are the real formats


def test_fixture_factorization_is_lycoris():
    for dim in range(1, 300):
        for factor in (-1, 2, 3, 4, 8, 16):
            assert lf.factorization(dim, factor) == tuple(lycoris_factorization(dim, factor)), (dim, factor)


def test_peft_writer_matches_save_pretrained(tiny):
    """Our PEFT writer produces exactly the keys, shapes and config PEFT itself saves for the same setup."""
    shapes = lf.module_shapes(tiny.cfg)
    folder = lf.write_peft(os.path.join(tiny.tmp, "ours"), lf.lora_factors(shapes, 4), r=4, alpha=8,
                           magnitudes=lf.dora_magnitudes(tiny.sd, shapes))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(lf.ATTENTION), use_dora=True, lora_dropout=0.1,
                        task_type="FEATURE_EXTRACTION")
    peft_model = get_peft_model(copy.deepcopy(tiny.model.decoder), config)
    peft_model.save_pretrained(os.path.join(tiny.tmp, "peft"))
    theirs = load_file(os.path.join(tiny.tmp, "peft", "adapter_model.safetensors"))
    mine = load_file(os.path.join(folder, "adapter_model.safetensors"))
    assert {k: list(v.shape) for k, v in mine.items()} == {k: list(v.shape) for k, v in theirs.items()}
    with open(os.path.join(tiny.tmp, "peft", "adapter_config.json")) as f:
        their_config = json.load(f)
    with open(os.path.join(folder, "adapter_config.json")) as f:
        my_config = json.load(f)
    for field in ("peft_type", "task_type", "r", "lora_alpha", "use_dora", "use_rslora", "rank_pattern",
                  "alpha_pattern", "bias", "lora_bias", "modules_to_save"):
        assert my_config[field] == their_config[field], field
    assert sorted(my_config["target_modules"]) == sorted(their_config["target_modules"])


LOKR_CONFIGS = {
    "default": {"linear_dim": 2, "linear_alpha": 4},
    "decompose_both": {"linear_dim": 1, "linear_alpha": 3, "decompose_both": True},
    "full_matrix": {"linear_dim": 2, "linear_alpha": 4, "full_matrix": True},
    "tucker": {"linear_dim": 2, "linear_alpha": 4, "use_tucker": True},
    "factor": {"linear_dim": 2, "linear_alpha": 4, "factor": 4},
    "unbalanced": {"linear_dim": 2, "linear_alpha": 4, "unbalanced_factorization": True},
    "rs_lora": {"linear_dim": 2, "linear_alpha": 4, "rs_lora": True},
    "dora": {"linear_dim": 2, "linear_alpha": 4, "weight_decompose": True},
    "trainer_defaults": {},  # linear_dim 64 ≥ every tiny factor: LyCORIS falls back to whole w2 matrices
}


def lycoris_network(reference, config):
    """The official trainer's LyCORIS set-up on ``reference.decoder``: apply_preset(targets), then
    create_lycoris with the config's fields (its "full" preset keeps LyCORIS' default module classes, so every
    Linear and Conv1d of the DiT is wrapped), then apply_to."""
    config = {**lf.LOKR_CONFIG_DEFAULTS, **config}
    LycorisNetwork.apply_preset({"target_module": ["Linear", "Conv1d", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm"],
                                 "target_name": config["target_modules"]})
    extra = {"dora_wd": True} if config["weight_decompose"] else {}
    net = create_lycoris(reference.decoder, 1.0, linear_dim=config["linear_dim"], linear_alpha=config["linear_alpha"],
                         algo="lokr", factor=config["factor"], decompose_both=config["decompose_both"],
                         use_tucker=config["use_tucker"], use_scalar=config["use_scalar"],
                         full_matrix=config["full_matrix"], bypass_mode=config["bypass_mode"],
                         rs_lora=config["rs_lora"], unbalanced_factorization=config["unbalanced_factorization"],
                         **extra)
    net.apply_to()
    return net


def _lycoris_state(path):
    """A LyCORIS file as LyCORIS expects it on our module (``proj_in``, not the original's ``proj_in.1``)."""
    return {k.replace("lycoris_proj_in_1.", "lycoris_proj_in."): v for k, v in load_file(path).items()}


@pytest.mark.parametrize("variant", sorted(LOKR_CONFIGS))
def test_lokr_parity_with_lycoris(tiny, lycoris_presets, variant):
    """LoKr files as the official trainer writes them (every DiT Linear and the patch Conv1d, its metadata)
    give the velocity LyCORIS gives with the trainer's create_lycoris + load."""
    config = LOKR_CONFIGS[variant]
    path = lf.write_lokr(os.path.join(tiny.tmp, "run", "lokr_weights.safetensors"),
                         lf.module_shapes(tiny.cfg, names=None, conv=True), config, base=tiny.sd)
    stored = load_file(path)
    expected_roles = {"decompose_both": "lokr_w1_a", "tucker": "lokr_t2", "dora": "dora_scale",
                      "default": "lokr_w2_a", "full_matrix": "lokr_w2"}
    if variant in expected_roles:  # the variant really exercises its layout
        assert any(k.endswith("." + expected_roles[variant]) for k in stored)

    reference = copy.deepcopy(tiny.model)
    net = lycoris_network(reference, config)
    state = _lycoris_state(path)
    theirs = net.state_dict()
    assert state.keys() == theirs.keys()
    assert all(state[k].shape == theirs[k].shape for k in state)
    assert all(torch.equal(state[k], theirs[k]) for k in state if k.endswith(".alpha"))  # what LyCORIS stores
    net.load_state_dict(state, strict=True)
    adapter = load_adapter(os.path.dirname(path))
    assert adapter.kind == "LyCORIS LoKr" + (" + DoRA" if variant == "dora" else "")
    assert_parity(tiny, ours(tiny, os.path.dirname(path)), velocity(tiny, reference))

    # the same tensors under ComfyUI's names (its trainer's LoKr) are the same change
    comfy = lf.write_lokr(os.path.join(tiny.tmp, "comfy_lokr.safetensors"),
                          lf.module_shapes(tiny.cfg, names=None, conv=True), config, base=tiny.sd, naming="comfyui")
    a = weight_deltas(tiny.model, [(adapter, 1.0)])
    b = weight_deltas(tiny.model, [(load_adapter(comfy), 1.0)])
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_lokr_parity_with_lycoris_xl(tiny_xl, lycoris_presets):
    config = LOKR_CONFIGS["default"]
    path = lf.write_lokr(os.path.join(tiny_xl.tmp, "xl", "lokr_weights.safetensors"),
                         lf.module_shapes(tiny_xl.cfg, names=None, conv=True), config)
    reference = copy.deepcopy(tiny_xl.model)
    lycoris_network(reference, config).load_state_dict(_lycoris_state(path), strict=True)
    assert_parity(tiny_xl, ours(tiny_xl, path), velocity(tiny_xl, reference))


@pytest.mark.parametrize("per_output", [True, False], ids=["dora_scale_out", "dora_scale_in"])
def test_lycoris_dora_lora_parity(tiny, lycoris_presets, per_output):
    """LyCORIS LoRA with DoRA (dora_scale [out, 1] or [1, in]) against LyCORIS' own weight decomposition."""
    shapes = lf.module_shapes(tiny.cfg)
    magnitudes = lf.dora_magnitudes(tiny.sd, shapes, per_output=per_output)
    scales = {n: m.view(-1, 1) if per_output else m.view(1, -1) for n, m in magnitudes.items()}
    path = lf.write_lora_file(os.path.join(tiny.tmp, "dora.safetensors"), lf.lora_factors(shapes, 2), 4.0,
                              "lycoris", dora_scales=scales)
    reference = copy.deepcopy(tiny.model)
    LycorisNetwork.apply_preset({"target_module": [], "target_name": [r".*\.[qkvo]_proj$"]})
    net = create_lycoris(reference.decoder, 1.0, linear_dim=2, linear_alpha=4.0, algo="lora", dora_wd=True,
                         wd_on_output=per_output)
    net.apply_to()
    net.load_state_dict(load_file(path), strict=True)
    assert load_adapter(path).kind == "LoRA + DoRA"
    assert_parity(tiny, ours(tiny, path), velocity(tiny, reference))


# --------------------------------------------------------------------------- PEFT and single files vs peft


PEFT_CASES = {
    "official": dict(rank=4, r=4, alpha=8, names=lf.ATTENTION, conv=False, config={}),
    "rslora_patterns": dict(rank={"default": 4, "o_proj": 2}, r=4, alpha=8, names=lf.ATTENTION, conv=False,
                            config={"use_rslora": True, "rank_pattern": {"o_proj": 2},
                                    "alpha_pattern": {r"layers\.1\.self_attn\.q_proj": 3}}),
    "every_linear_and_conv": dict(rank=3, r=3, alpha=6, names=None, conv=True, config={}),
    "dora": dict(rank=4, r=4, alpha=8, names=lf.ATTENTION, conv=True, config={}, dora=True),
}


@pytest.mark.parametrize("case", sorted(PEFT_CASES))
def test_peft_folder_parity(tiny, case):
    spec = PEFT_CASES[case]
    shapes = lf.module_shapes(tiny.cfg, names=spec["names"], conv=spec["conv"])
    rank = spec["rank"]
    if isinstance(rank, dict):
        rank = {n: rank.get(n.rsplit(".", 1)[-1], rank["default"]) for n in shapes}
    factors = lf.lora_factors(shapes, rank)
    magnitudes = lf.dora_magnitudes(tiny.sd, shapes) if spec.get("dora") else None
    folder = lf.write_peft(os.path.join(tiny.tmp, "adapter"), factors, r=spec["r"], alpha=spec["alpha"],
                           magnitudes=magnitudes, **spec["config"])
    reference = peft_velocity(tiny, factors, spec["r"], spec["alpha"], magnitudes, **spec["config"])
    assert_parity(tiny, ours(tiny, folder), reference)


@pytest.mark.parametrize("style", sorted(lf.LORA_FILE_STYLES))
def test_single_file_parity(tiny, style):
    """ComfyUI / kohya / LyCORIS LoCon / bare PEFT / diffusers namings, alpha in the file (diffusers: none, so
    scale 1), stored in bfloat16 as trainers usually save them; the reference is PEFT on the same factors."""
    shapes = lf.module_shapes(tiny.cfg, names=("q_proj", "v_proj", "o_proj", "down_proj"), conv=True)
    factors = lf.lora_factors(shapes, 4)
    factors = {n: {k: v.to(torch.bfloat16).float() for k, v in f.items()} for n, f in factors.items()}
    alpha = None if style == "diffusers" else 6.0
    path = lf.write_lora_file(os.path.join(tiny.tmp, f"{style}.safetensors"), factors, alpha, style,
                              dtype=torch.bfloat16)
    reference = peft_velocity(tiny, factors, r=4, alpha=4 if alpha is None else alpha)
    adapter = load_adapter(path)
    assert adapter.kind == "LoRA" and len(adapter.targets) == len(shapes)
    assert bool(adapter.notes) == (alpha is None)  # a file without alpha says it was applied at scale 1
    assert_parity(tiny, ours(tiny, path), reference)


def test_xl_parity_and_size_mismatch(tiny, tiny_xl):
    shapes_xl = lf.module_shapes(tiny_xl.cfg)
    factors = lf.lora_factors(shapes_xl, 4)
    xl_folder = lf.write_peft(os.path.join(tiny.tmp, "xl"), factors, r=4, alpha=8)
    assert_parity(tiny_xl, ours(tiny_xl, xl_folder), peft_velocity(tiny_xl, factors, 4, 8))

    two_b = lf.write_peft(os.path.join(tiny.tmp, "2b"), lf.lora_factors(lf.module_shapes(tiny.cfg), 4), r=4, alpha=8)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*this model is the XL DiT: hidden size 48") as e:
        weight_deltas(tiny_xl.model, [(load_adapter(two_b), 1.0)])
    # the first offending key in the file (safetensors keeps keys sorted)
    assert "2b/adapter_model.safetensors" in str(e.value) and "layers.0.cross_attn.k_proj" in str(e.value)
    with pytest.raises(CheckpointError,
                       match=r"shape mismatch.*\[16, 48\] weight but .* is \[16, 32\].*this model is the 2B DiT"):
        weight_deltas(tiny.model, [(load_adapter(xl_folder), 1.0)])


# --------------------------------------------------------------------------- strength, stacking, restoring


@pytest.fixture
def two_adapters(tiny):
    """A PEFT LoRA on attention and a LoKr on the MLPs and attention, both as files; plus their factors."""
    shapes = lf.module_shapes(tiny.cfg)
    factors = lf.lora_factors(shapes, 4, seed=1)
    peft_folder = lf.write_peft(os.path.join(tiny.tmp, "a"), factors, r=4, alpha=8)
    lokr_path = lf.write_lokr(os.path.join(tiny.tmp, "b", "lokr_weights.safetensors"),
                              lf.module_shapes(tiny.cfg, names=("q_proj", "gate_proj", "down_proj")),
                              {"linear_dim": 2, "linear_alpha": 4}, seed=2)
    return SimpleNamespace(peft=load_adapter(peft_folder), lokr=load_adapter(lokr_path), factors=factors,
                           peft_folder=peft_folder, lokr_path=lokr_path)


def _hand_patched(tiny, changes: dict) -> AceStepModel:
    """A copy of the model whose weights are set by hand: decoder.<module>.weight += change."""
    model = copy.deepcopy(tiny.model)
    for name, change in changes.items():
        param = model.get_parameter(f"decoder.{_our_name(name)}.weight")
        param.data = param.data + change.reshape(param.shape)
    return model


def test_strength_zero_is_the_base(tiny, two_adapters):
    deltas = weight_deltas(tiny.model, [(two_adapters.peft, 0.0), (two_adapters.lokr, 0.0)])
    assert len(deltas) == 0
    with patched(tiny.model, deltas):
        assert torch.equal(velocity(tiny, tiny.model), tiny.base)


@pytest.mark.parametrize("strength", [-0.7, 0.5, 2.5])
def test_strength_scales_the_change(tiny, two_adapters, strength):
    """Strength s gives base + s·ΔW, with ΔW = (alpha / r) · B @ A computed here from the fixture's factors."""
    unit = weight_deltas(tiny.model, [(two_adapters.peft, 1.0)])
    scaled = weight_deltas(tiny.model, [(two_adapters.peft, strength)])
    assert unit.keys() == scaled.keys() and len(unit) == 32
    for name in unit:
        expected = strength * unit[name]  # equal up to float32 rounding (the strength goes into the small factor)
        torch.testing.assert_close(scaled[name], expected, rtol=0, atol=1e-6 * expected.abs().max().item())
    by_hand = {n: strength * 2.0 * f["up"] @ f["down"] for n, f in two_adapters.factors.items()}
    expected = velocity(tiny, _hand_patched(tiny, by_hand))
    with patched(tiny.model, scaled):
        got = velocity(tiny, tiny.model)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= TOLERANCE


def test_two_adapters_add(tiny, two_adapters):
    stack = weight_deltas(tiny.model, [(two_adapters.peft, 0.8), (two_adapters.lokr, -1.5)])
    a = weight_deltas(tiny.model, [(two_adapters.peft, 1.0)])
    b = weight_deltas(tiny.model, [(two_adapters.lokr, 1.0)])
    assert set(stack) == set(a) | set(b) and set(a) & set(b)  # they share the q projections
    for name in stack:
        expected = 0.8 * a[name] if name in a else torch.zeros_like(stack[name])
        expected = expected - 1.5 * b[name] if name in b else expected
        torch.testing.assert_close(stack[name], expected, rtol=0, atol=1e-7)


def test_two_peft_adapters_match_peft_multi_adapter(tiny, two_adapters):
    """The upstream inference path for stacked LoRAs: PeftModel with two named adapters active together,
    each adapter's scaling multiplied by its strength (acestep/core/lora/scaling.py)."""
    shapes = lf.module_shapes(tiny.cfg, names=("q_proj", "k_proj"))
    other = lf.write_peft(os.path.join(tiny.tmp, "c"), lf.lora_factors(shapes, 2, seed=5), r=2, alpha=2,
                          target_modules=("q_proj", "k_proj"))
    reference = copy.deepcopy(tiny.model)
    peft_model = PeftModel.from_pretrained(reference.decoder, two_adapters.peft_folder, adapter_name="first")
    peft_model.load_adapter(other, adapter_name="second")
    peft_model.base_model.set_adapter(["first", "second"])
    strengths = {"first": 1.7, "second": -0.6}
    for module in reference.decoder.modules():
        if isinstance(module, LoraLayer):
            for adapter, strength in strengths.items():
                if adapter in module.scaling:
                    module.scaling[adapter] *= strength
    stack = [(two_adapters.peft, strengths["first"]), (load_adapter(other), strengths["second"])]
    with patched(tiny.model, weight_deltas(tiny.model, stack)):
        got = velocity(tiny, tiny.model)
    assert_parity(tiny, got, velocity(tiny, reference))


def _snapshot(model):
    return {k: (v.detach().clone(), v.data_ptr()) for k, v in model.named_parameters()}


def _assert_restored(model, snapshot, same_storage=True):
    for name, param in model.named_parameters():
        value, ptr = snapshot[name]
        assert torch.equal(param, value) and param.dtype == value.dtype, name
        if same_storage:
            assert param.data_ptr() == ptr, name


def test_restored_bit_identical_and_base_unaffected(tiny, two_adapters):
    snapshot = _snapshot(tiny.model)
    deltas = weight_deltas(tiny.model, [(two_adapters.peft, 1.3), (two_adapters.lokr, 0.4)])
    with patched(tiny.model, deltas):
        patched_velocity = velocity(tiny, tiny.model)
        for name in deltas:  # each weight = (W + ΔW) in float32, cast back
            original = snapshot[name][0]
            assert torch.equal(tiny.model.get_parameter(name), original + deltas.delta(name, original))
    assert not torch.allclose(patched_velocity, tiny.base)
    _assert_restored(tiny.model, snapshot)
    assert torch.equal(velocity(tiny, tiny.model), tiny.base)  # the next use without the LoRA is the base

    with pytest.raises(ZeroDivisionError), patched(tiny.model, deltas):  # restored when the block raises
        1 / 0
    _assert_restored(tiny.model, snapshot)

    with patched(tiny.model, deltas, offload_originals=True):
        assert torch.equal(velocity(tiny, tiny.model), patched_velocity)
    _assert_restored(tiny.model, snapshot, same_storage=False)

    with patched(tiny.model, deltas):  # never patched twice
        with pytest.raises(RuntimeError, match="already patched"), patched(tiny.model, deltas):
            pass
    _assert_restored(tiny.model, snapshot)


def test_bf16_patch_in_weight_dtype_and_file_exact_after(tiny, two_adapters):
    """A bf16 model is patched in bf16 (ΔW added in float32, one rounding) and is bit-identical to the
    checkpoint file afterwards."""
    path = os.path.join(tiny.tmp, "model.safetensors")
    save_file(tiny.sd, path)
    model = AceStepModel.from_state_dict(read_safetensors(path, torch.bfloat16), AceStepConfig.from_json(tiny.cfg))
    deltas = weight_deltas(model, [(two_adapters.peft, 1.0), (two_adapters.lokr, 2.0)])
    originals = {name: model.get_parameter(name).detach().clone() for name in deltas}
    with patched(model, deltas):
        for name, original in originals.items():
            weight = model.get_parameter(name)
            assert weight.dtype == torch.bfloat16
            assert torch.equal(weight, (original.float() + deltas.delta(name, original)).to(torch.bfloat16))
    from acestep_core.models.model import to_checkpoint_keys
    assert all(torch.equal(v, read_safetensors(path, torch.bfloat16)[k])
               for k, v in to_checkpoint_keys(model.state_dict()).items())


def test_deltas_follow_the_weights_device_and_strength_validation(tiny, two_adapters):
    deltas = weight_deltas(tiny.model, [(two_adapters.peft, 1.0)])
    name = next(iter(deltas))
    assert deltas[name].dtype == torch.float32 and deltas[name].shape == tiny.model.get_parameter(name).shape
    with pytest.raises(InputError, match="strength of LoRA a=nan is not allowed: a finite number"):
        weight_deltas(tiny.model, [(two_adapters.peft, float("nan"))])


# --------------------------------------------------------------------------- names, folders, specs


def test_names_resolve_to_our_parameters(tiny, tiny_xl):
    for model in (tiny.model, tiny_xl.model):
        index = patchable_weights(model)  # raises if any spelling were ambiguous
        assert index["proj_in_1"] == index["proj_in.1"] == index["proj_in_conv"] == "decoder.proj_in.weight"
        assert index["layers.3.cross_attn.to_out.0"] == "decoder.layers.3.cross_attn.o_proj.weight"
        assert index["encoder.lyric_encoder.layers.0.self_attn.q_proj"] == \
            "encoder.lyric_encoder.layers.0.self_attn.q_proj.weight"
        assert not any(v.startswith("decoder.proj_out") for v in index.values())  # ConvTranspose1d: not patchable
    # a ComfyUI-named LoRA may also change the condition encoder
    shapes = {"encoder.lyric_encoder.layers.0.self_attn.q_proj": (32, 32)}
    factors = lf.lora_factors(shapes, 2)
    path = os.path.join(tiny.tmp, "enc.safetensors")
    save_file({"diffusion_model.encoder.lyric_encoder.layers.0.self_attn.q_proj.lora_up.weight": factors[
        "encoder.lyric_encoder.layers.0.self_attn.q_proj"]["up"],
        "diffusion_model.encoder.lyric_encoder.layers.0.self_attn.q_proj.lora_down.weight": factors[
        "encoder.lyric_encoder.layers.0.self_attn.q_proj"]["down"]}, path)
    assert list(bind(load_adapter(path), tiny.model)) == ["encoder.lyric_encoder.layers.0.self_attn.q_proj.weight"]


def test_folders_and_listing(tiny):
    root = os.path.join(tiny.tmp, "loras")
    shapes = lf.module_shapes(tiny.cfg)
    factors = lf.lora_factors(shapes, 4)
    lf.write_peft(os.path.join(root, "official", "adapter"), factors, r=4, alpha=8)  # <output>/adapter/
    lf.write_lokr(os.path.join(root, "lokr_run", "lokr_weights.safetensors"), shapes, {"linear_dim": 2})
    lf.write_lora_file(os.path.join(root, "styles", "comfy.safetensors"), factors, 8.0, "comfyui")
    lf.write_lora_file(os.path.join(root, "single.safetensors"), factors, 8.0, "kohya")
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not an adapter")
    names = list_adapters(root)
    assert names == ["lokr_run", "official/adapter", "single.safetensors", "styles/comfy.safetensors"]
    kinds = [load_adapter(os.path.join(root, n)).kind for n in names]
    assert kinds == ["LyCORIS LoKr", "PEFT LoRA", "LoRA", "LoRA"]
    # the trainer's output folder and the weights file itself both read as the PEFT adapter (alpha/r from config)
    by_output = load_adapter(os.path.join(root, "official"))
    by_file = load_adapter(os.path.join(root, "official", "adapter", "adapter_model.safetensors"))
    assert by_output.kind == by_file.kind == "PEFT LoRA"
    assert by_file.targets[0].update.scale == 2.0
    # PEFT and the alpha-carrying ComfyUI file of the same factors are the same change
    a = weight_deltas(tiny.model, [(by_output, 1.0)])
    b = weight_deltas(tiny.model, [(load_adapter(os.path.join(root, "styles", "comfy.safetensors")), 1.0)])
    assert all(torch.equal(a[n], b[n]) for n in a) and a.keys() == b.keys()


@pytest.mark.parametrize("spec, expected", [
    ("my_lora.safetensors", ("my_lora.safetensors", 1.0)),
    ("my_lora.safetensors:0.7", ("my_lora.safetensors", 0.7)),
    ("dir/official:-1.5", ("dir/official", -1.5)),
    ("C:\\loras\\x.safetensors", ("C:\\loras\\x.safetensors", 1.0)),
    ("C:\\loras\\x.safetensors:2", ("C:\\loras\\x.safetensors", 2.0)),
])
def test_parse_lora_spec(spec, expected):
    assert parse_lora_spec(spec) == expected


def test_parse_lora_spec_refuses_infinite_strength():
    with pytest.raises(InputError, match="finite"):
        parse_lora_spec("x.safetensors:inf")


# --------------------------------------------------------------------------- bad files


def _lora_tensors(tiny, style="comfyui", **kwargs):
    path = lf.write_lora_file(os.path.join(tiny.tmp, "good.safetensors"),
                              lf.lora_factors(lf.module_shapes(tiny.cfg), 4), 8.0, style, **kwargs)
    return load_file(path)


def _file(tiny, tensors, name="bad.safetensors"):
    path = os.path.join(tiny.tmp, name)
    save_file(tensors, path)
    return path


Q = "diffusion_model.decoder.layers.0.self_attn.q_proj"


def _bad_unknown_key(tiny):
    return _file(tiny, {**_lora_tensors(tiny), "decoder.layers.0.foo.bar": torch.zeros(2)}), \
        ["not part of a LoRA", "'decoder.layers.0.foo.bar'"]


def _bad_loha(tiny):
    return _file(tiny, {"lycoris_layers_0_self_attn_q_proj.hada_w1_a": torch.zeros(32, 2)}), ["LoHa", "hada_w1_a"]


def _bad_layer_index(tiny):
    t = _lora_tensors(tiny)
    t = {k.replace("layers.0.", "layers.99."): v for k, v in t.items()}
    return _file(tiny, t), ["match no Linear", "layers.99", "layer 99 does not exist"]


def _bad_norm_target(tiny):
    return _file(tiny, {"diffusion_model.decoder.layers.0.self_attn_norm.lora_up.weight": torch.zeros(32, 2),
                        "diffusion_model.decoder.layers.0.self_attn_norm.lora_down.weight": torch.zeros(2, 32)}), \
        ["match no Linear", "self_attn_norm"]


def _bad_truncated(tiny):
    path = lf.write_lora_file(os.path.join(tiny.tmp, "cut.safetensors"),
                              lf.lora_factors(lf.module_shapes(tiny.cfg), 4), 8.0)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path, ["truncated or corrupt"]


def _bad_garbage(tiny):
    path = os.path.join(tiny.tmp, "garbage.safetensors")
    with open(path, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return path, ["truncated or corrupt"]


def _bad_empty(tiny):
    return _file(tiny, {}), ["holds no tensors"]


def _bad_rank(tiny):
    return _file(tiny, {Q + ".lora_up.weight": torch.zeros(32, 4), Q + ".lora_down.weight": torch.zeros(2, 32)}), \
        ["mismatched rank", "up [32, 4], down [2, 32]", Q]


def _bad_missing_partner(tiny):
    return _file(tiny, {Q + ".lora_down.weight": torch.zeros(2, 32), Q + ".alpha": torch.tensor(2.0)}), \
        ["no lora_B / lora_up", Q]


def _bad_lokr_shapes(tiny):
    k = "lycoris_layers_0_self_attn_q_proj"
    return _file(tiny, {k + ".lokr_w1": torch.zeros(4, 4), k + ".lokr_w2_a": torch.zeros(8, 2),
                        k + ".lokr_w2_b": torch.zeros(3, 8), k + ".alpha": torch.tensor(2.0)}), \
        ["lokr_w2_a and lokr_w2_b", "lokr_w2_b [3, 8]", k]


def _bad_lokr_missing(tiny):
    k = "lycoris_layers_0_self_attn_q_proj"
    return _file(tiny, {k + ".lokr_w1": torch.zeros(4, 4), k + ".lokr_w2_a": torch.zeros(8, 2)}), \
        ["needs lokr_w2 or both lokr_w2_a and lokr_w2_b", k]


def _bad_alpha(tiny):
    t = _lora_tensors(tiny)
    t[Q + ".alpha"] = torch.ones(2)
    return _file(tiny, t), ["alpha has shape [2]", Q]


def _bad_integer(tiny):
    t = _lora_tensors(tiny)
    t[Q + ".lora_up.weight"] = torch.zeros(32, 4, dtype=torch.int64)
    return _file(tiny, t), ["torch.int64", Q + ".lora_up.weight"]


def _bad_same_weight_twice(tiny):
    t = _lora_tensors(tiny)
    t["base_model.model.layers.0.self_attn.q_proj.lora_A.weight"] = t[Q + ".lora_down.weight"].clone()
    t["base_model.model.layers.0.self_attn.q_proj.lora_B.weight"] = t[Q + ".lora_up.weight"].clone()
    return _file(tiny, t), ["both change decoder.layers.0.self_attn.q_proj.weight"]


def _bad_dora_size(tiny):
    t = _lora_tensors(tiny)
    t[Q + ".dora_scale"] = torch.ones(7, 1)
    return _file(tiny, t), ["DoRA magnitude of shape [7, 1]", "expected 32 values", Q]


def _peft(tiny, config=None, tensors=None, name="peft"):
    shapes = lf.module_shapes(tiny.cfg)
    folder = lf.write_peft(os.path.join(tiny.tmp, name), lf.lora_factors(shapes, 4), r=4, alpha=8)
    path = os.path.join(folder, "adapter_config.json")
    if config:
        with open(path) as f:
            data = json.load(f)
        data.update(config)
        with open(path, "w") as f:
            json.dump(data, f)
    if tensors:
        weights = os.path.join(folder, "adapter_model.safetensors")
        save_file(tensors(load_file(weights)), weights)
    return folder


def _bad_peft_rank(tiny):
    return _peft(tiny, {"r": 8}), ["has rank 4 but adapter_config.json says r = 8", "base_model.model.layers.0"]


def _bad_peft_json(tiny):
    folder = _peft(tiny)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        f.write("{not json")
    return folder, ["adapter_config.json", "not valid JSON"]


def _bad_peft_type(tiny):
    return _peft(tiny, {"peft_type": "LOHA"}), ["adapter_config.json", "peft_type is 'LOHA'"]


def _bad_peft_dora(tiny):
    return _peft(tiny, {"use_dora": True}), ["lacks lora_magnitude_vector", "use_dora = True"]


def _bad_peft_option(tiny):
    return _peft(tiny, {"modules_to_save": ["condition_embedder"]}), ["modules_to_save", "not supported"]


def _bad_peft_alpha_key(tiny):
    def add_alpha(t):
        return {**t, "base_model.model.layers.0.self_attn.q_proj.alpha": torch.tensor(4.0)}
    return _peft(tiny, tensors=add_alpha), ["alpha tensors, which a PEFT LoRA file does not hold"]


def _bad_pickle(tiny):
    folder = os.path.join(tiny.tmp, "pickled")
    os.makedirs(folder)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 4, "lora_alpha": 8}, f)
    torch.save({}, os.path.join(folder, "adapter_model.bin"))
    return folder, ["adapter_model.bin", "pickle"]


def _bad_folder(tiny):
    folder = os.path.join(tiny.tmp, "nothing_here")
    os.makedirs(folder)
    with open(os.path.join(folder, "readme.md"), "w") as f:
        f.write("x")
    return folder, ["not a LoRA folder", "adapter_config.json", "lokr_weights.safetensors"]


def _bad_missing(tiny):
    return os.path.join(tiny.tmp, "nope.safetensors"), ["no such LoRA file or folder"]


BAD_FILES = {f.__name__[5:]: f for f in (
    _bad_unknown_key, _bad_loha, _bad_layer_index, _bad_norm_target, _bad_truncated, _bad_garbage, _bad_empty,
    _bad_rank, _bad_missing_partner, _bad_lokr_shapes, _bad_lokr_missing, _bad_alpha, _bad_integer,
    _bad_same_weight_twice, _bad_dora_size, _bad_peft_rank, _bad_peft_json, _bad_peft_type, _bad_peft_dora,
    _bad_peft_option, _bad_peft_alpha_key, _bad_pickle, _bad_folder, _bad_missing)}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_get_clear_errors(tiny, case):
    """Each bad file is refused, at load or when bound to the model, naming the file and what is wrong;
    the model is left untouched."""
    path, fragments = BAD_FILES[case](tiny)
    snapshot = _snapshot(tiny.model)
    with pytest.raises(CheckpointError) as e:
        weight_deltas(tiny.model, [(load_adapter(path), 1.0)])
    message = str(e.value)
    assert tiny.tmp in message, message  # names the file or folder
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    _assert_restored(tiny.model, snapshot)
