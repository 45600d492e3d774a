"""fp8 weights: quantisation per output channel, the decoder-only selection, fp8 files read as they are equal to
quantising at load, ComfyUI's fp8 layouts, the error against full precision within the documented bound (velocity
and final latents, same seed), LoRA on fp8 layers, the estimate of the stored size."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from acestep_core.loading.checkpoint import load_checkpoint, load_dit
from acestep_core.memory.estimates import dit_size, stored_bytes
from acestep_core.memory.fp8 import Fp8Linear, dequantize, quantize, quantized_state_dict, weight_format
from acestep_core.models.config import AceStepConfig
from acestep_core.pipeline import AceStepPipeline
from acestep_core.request import request
from devtools import lora_fixtures as lf
from devtools.fixtures import build_tensors, write_comfy_layout, write_hf_layout
from devtools.tiny import tiny_config_json

# Relative L2 error against the float32 model (tiny random checkpoint, float32 compute). Documented in the README
# (VRAM section) next to the full-size figures of bench/bench_lowvram.py.
VELOCITY_BOUND = {"fp8_e4m3fn": 0.10, "fp8_e5m2": 0.18}  # measured: 0.053-0.080, 0.093-0.138
LATENT_BOUND = {"fp8_e4m3fn": 0.08, "fp8_e5m2": 0.16}  # measured: 0.033-0.059, 0.110-0.118


@pytest.fixture(scope="module")
def tensors():
    return build_tensors("turbo", seed=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory, tensors):
    os.environ.setdefault("ACESTEP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return write_hf_layout(str(tmp_path_factory.mktemp("models")), tensors, "turbo")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("fmt", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_quantize_uses_one_scale_per_output_channel(fmt):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 40, generator=g) * torch.logspace(-3, 1, 6)[:, None]  # rows of very different size
    w[2] = 0
    q, scale = quantize(w, fmt)
    assert q.dtype == fmt and scale.dtype == torch.float32 and scale.shape == (6,)
    fmax = torch.finfo(fmt).max
    assert torch.equal(q[[0, 1, 3, 4, 5]].float().abs().amax(1), torch.full((5,), fmax))  # every row spans the range
    assert scale[2] == 1 and not q[2].float().any()
    mantissa = {torch.float8_e4m3fn: 3, torch.float8_e5m2: 2}[fmt]
    error = (dequantize(q, scale, torch.float32) - w).abs()
    assert (error <= w.abs() * 2.0 ** -(mantissa + 1) + scale[:, None] * 2.0 ** -9).all()


def test_fp8_linear_computes_with_the_dequantised_weight():
    linear = torch.nn.Linear(24, 16)
    fp8 = Fp8Linear.from_linear(linear, torch.float8_e4m3fn)
    x = torch.randn(3, 5, 24)
    assert torch.equal(fp8(x), F.linear(x, dequantize(fp8.weight, fp8.weight_scale, x.dtype), linear.bias))
    assert isinstance(fp8, torch.nn.Linear)  # adapters find it by type


def test_only_the_decoder_linears_are_fp8(root):
    model = load_dit(os.path.join(root, "acestep-v15-turbo"), torch.float32, "cpu", "fp8_e4m3fn").model
    fp8 = {n for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert fp8 == {n for n in linears if n.startswith("decoder.")} and fp8
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if not n.startswith("decoder."))
    assert weight_format(model) == "fp8_e4m3fn"
    # norms, the modulation tables and the patch convolutions of the decoder stay as loaded
    assert model.decoder.layers[0].self_attn_norm.weight.dtype == torch.float32
    assert model.decoder.proj_in.weight.dtype == torch.float32


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_an_fp8_file_gives_the_weights_quantising_at_load_gives(tmp_path, tensors, weight_dtype):
    paths = write_comfy_layout(str(tmp_path), tensors)
    fmt = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[weight_dtype]
    fp8_file = str(tmp_path / "diffusion_models" / "acestep_v1.5_turbo_fp8.safetensors")
    save_file(quantized_state_dict(tensors["dit"], fmt, lambda k: k.startswith("decoder.")), fp8_file)
    assert os.path.getsize(fp8_file) < 0.8 * os.path.getsize(paths["dit"])
    at_load = load_dit(paths["dit"], torch.bfloat16, "cpu", weight_dtype).model.state_dict()
    from_file = load_dit(fp8_file, torch.bfloat16, "cpu", "default").model.state_dict()
    assert at_load.keys() == from_file.keys()
    for key in at_load:
        assert at_load[key].dtype == from_file[key].dtype and torch.equal(at_load[key], from_file[key]), key
    assert from_file["decoder.layers.0.mlp.up_proj.weight_scale"].dtype == torch.float32  # scales not cast


def test_comfyui_fp8_layouts_load_with_their_scales(tmp_path, tensors):
    """A scalar ``scale_weight`` per layer (ComfyUI's scaled fp8), or no scale at all (a plain fp8 cast)."""
    dit = tensors["dit"]
    key = "decoder.layers.1.self_attn.o_proj"
    w = dit[key + ".weight"]
    scaled = dict(dit)
    scale = w.abs().max() / 448
    scaled[key + ".weight"], scaled[key + ".scale_weight"] = (w / scale).to(torch.float8_e4m3fn), scale
    plain = dict(dit)
    plain[key + ".weight"] = w.to(torch.float8_e4m3fn)
    for state, expected in ((scaled, (w / scale).to(torch.float8_e4m3fn).float() * scale),
                            (plain, w.to(torch.float8_e4m3fn).float())):
        path = str(tmp_path / "fp8.safetensors")
        save_file(state, path)
        layer = load_dit(path, torch.float32, "cpu").model.get_submodule(key)
        assert isinstance(layer, Fp8Linear) and torch.equal(dequantize(layer.weight, layer.weight_scale,
                                                                        torch.float32), expected)


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_error_against_full_precision_stays_within_the_documented_bound(root, weight_dtype):
    full = load_checkpoint(root, dtype="fp32", device="cpu")
    fp8 = load_checkpoint(root, dtype="fp32", device="cpu", weight_dtype=weight_dtype)
    g = torch.Generator().manual_seed(0)
    cfg = full.model.config
    x, context = torch.randn(1, 60, 8, generator=g), torch.randn(1, 60, cfg.in_channels - 8, generator=g)
    enc = torch.randn(1, 9, cfg.hidden_size, generator=g)
    t = torch.tensor([0.6])
    with torch.no_grad():
        v_full = full.model.decoder(x, t, context, full.model.decoder.cross_kv(enc))
        v_fp8 = fp8.model.decoder(x, t, context, fp8.model.decoder.cross_kv(enc))
    assert 0 < rel(v_fp8, v_full) < VELOCITY_BOUND[weight_dtype]
    req = dict(caption="synth pop", lyrics="[verse]\nla la", duration=20.0, seed=3)
    latents_full = AceStepPipeline(full)(request(**req)).latents
    latents_fp8 = AceStepPipeline(fp8)(request(**req)).latents
    assert 0 < rel(latents_fp8, latents_full) < LATENT_BOUND[weight_dtype]


def test_lora_patches_fp8_layers_and_restores_them_exactly(root, tmp_path):
    paths = lf.write_example_loras(str(tmp_path), tiny_config_json())
    adapters = [(paths[lf.EXAMPLE_LORA_FILE], 1.0)]
    req = dict(caption="synth pop", lyrics="[verse]\nla la", duration=10.0, seed=3, steps=3)
    full = AceStepPipeline(load_checkpoint(root, dtype="fp32", device="cpu"))
    fp8 = AceStepPipeline(load_checkpoint(root, dtype="fp32", device="cpu", weight_dtype="fp8_e4m3fn"))
    before = {k: (v.data_ptr(), v.clone()) for k, v in fp8.model.state_dict().items()}
    base = fp8(request(**req)).latents
    styled = fp8(request(**req), adapters=adapters).latents
    styled_full = full(request(**req), adapters=adapters).latents
    base_full = full(request(**req)).latents
    # the LoRA moves the fp8 model as it moves the full one; fp8 adds its usual error, no more
    assert rel(styled - base, styled_full - base_full) < 0.5
    assert rel(styled, styled_full) < LATENT_BOUND["fp8_e4m3fn"]
    for k, v in fp8.model.state_dict().items():
        assert v.data_ptr() == before[k][0] and torch.equal(v, before[k][1]), k
    assert torch.equal(fp8(request(**req)).latents, base)


def test_the_fp8_estimate_is_what_loading_stores(root):
    model = load_dit(os.path.join(root, "acestep-v15-turbo"), torch.bfloat16, "cpu", "fp8_e5m2").model
    planned = dit_size(AceStepConfig.from_json(tiny_config_json()), torch.bfloat16, fp8=True)
    assert planned.total == stored_bytes(model)
    assert planned.layer == stored_bytes(model.decoder.layers[0])
