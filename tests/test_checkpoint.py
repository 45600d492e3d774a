"""Loading both checkpoint layouts (official HF folder, Comfy-Org split files and all-in-one), variant
detection, the silence latent, and every bad-input case the loader must explain."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from acestep_core.loading.checkpoint import detect_variant, load_checkpoint, load_dit, resolve_paths
from acestep_core.loading.silence import silence_latent_for_vae, silence_slice
from acestep_core.errors import CheckpointError
from devtools.fixtures import build_tensors, write_comfy_layout, write_hf_layout


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    tensors = build_tensors("turbo", xl=False, seed=0)
    hf = write_hf_layout(str(tmp_path_factory.mktemp("hf")), tensors, "turbo")
    comfy = write_comfy_layout(str(tmp_path_factory.mktemp("comfy")), tensors, "turbo")
    return tensors, hf, comfy


def _same_state(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def loaded(layouts, tmp_path_factory):
    _, hf, comfy = layouts
    os.environ["ACESTEP_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    return {
        "hf": load_checkpoint(hf, dtype="fp32", device="cpu"),
        "comfy": load_checkpoint(comfy["dit"], dtype="fp32", device="cpu"),
        "aio": load_checkpoint(comfy["aio"], dtype="fp32", device="cpu"),
    }


def test_both_layouts_load_identical_modules(loaded):
    hf = loaded["hf"]
    for other in (loaded["comfy"], loaded["aio"]):
        _same_state(hf.model, other.model)
        _same_state(hf.vae, other.vae)
        _same_state(hf.text_encoder, other.text_encoder)
        assert other.variant == hf.variant == "turbo"
        assert other.model.config == hf.model.config or _geometry(other.model.config) == _geometry(hf.model.config)


def _geometry(cfg):
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "in_channels", "patch_size", "audio_acoustic_hidden_dim", "text_hidden_dim",
              "timbre_hidden_dim", "num_lyric_encoder_hidden_layers", "num_timbre_encoder_hidden_layers",
              "num_attention_pooler_hidden_layers", "pool_window_size", "fsq_dim")
    return {f: getattr(cfg, f) for f in fields}


def test_paths_resolved_per_layout(layouts):
    _, hf, comfy = layouts
    p = resolve_paths(hf)
    assert p.dit.endswith("acestep-v15-turbo") and p.vae.endswith("vae") and p.tokenizer_dir == p.text_encoder
    p = resolve_paths(os.path.join(hf, "acestep-v15-turbo"))  # the DiT folder itself
    assert p.vae == os.path.join(hf, "vae")
    p = resolve_paths(comfy["dit"])  # siblings found in the ComfyUI models folder
    assert p.vae == comfy["vae"] and p.text_encoder == comfy["text_encoder"] and p.tokenizer_dir is None
    p = resolve_paths(comfy["aio"])
    assert p.dit == p.vae == p.text_encoder == comfy["aio"]


def test_derived_silence_latent_matches_the_shipped_one(layouts, loaded):
    """Comfy-Org files ship no silence latent; ours is derived from the VAE and must equal what the official
    folder ships for the same VAE (there: a full-length posterior mean of silence, computed with diffusers)."""
    tensors = layouts[0]
    shipped = tensors["silence"].transpose(1, 2)  # [1, T, C]
    tol = dict(rtol=1e-5, atol=1e-5 * shipped.abs().max().item())
    frames = shipped.shape[1]
    torch.testing.assert_close(silence_latent_for_vae(loaded["comfy"].vae, frames=frames), shipped, **tol)
    # The one the loader derived is 600 s long like the official file: same head, steady middle.
    derived = loaded["comfy"].silence_latent
    assert derived.shape == (1, 15000, shipped.shape[2])
    torch.testing.assert_close(derived[:, : frames // 2], shipped[:, : frames // 2], **tol)
    torch.testing.assert_close(loaded["hf"].silence_latent, shipped)


def test_derived_silence_latent_is_cached_on_disk(loaded, tmp_path, monkeypatch):
    monkeypatch.setenv("ACESTEP_CACHE_DIR", str(tmp_path))
    vae = loaded["comfy"].vae
    first = silence_latent_for_vae(vae, frames=37)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("silence_latent-")
    import acestep_core.loading.silence as silence_module

    silence_module._memory_cache.clear()
    again = silence_latent_for_vae(vae, frames=37)  # read back from disk
    assert torch.equal(first, again)


def test_silence_slice_tiles_past_the_end():
    s = torch.arange(10.0).view(1, 10, 1)
    assert silence_slice(s, 4, start=3).flatten().tolist() == [3, 4, 5, 6]
    assert silence_slice(s, 25).flatten().tolist() == list(range(10)) * 2 + list(range(5))


def test_bf16_load_reads_straight_into_bf16(layouts):
    _, hf, comfy = layouts
    ckpt = load_checkpoint(comfy["aio"], dtype="bf16", device="cpu")
    for module in (ckpt.model, ckpt.vae, ckpt.text_encoder):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    assert ckpt.silence_latent.dtype == torch.bfloat16
    fp32 = load_dit(os.path.join(hf, "acestep-v15-turbo"), torch.float32).model
    for (k, a), b in zip(ckpt.model.state_dict().items(), fp32.state_dict().values()):
        assert torch.equal(a, b.to(torch.bfloat16)), k


@pytest.mark.parametrize("variant,xl", [("turbo", False), ("base", False), ("sft", False), ("xl_turbo", True),
                                        ("xl_sft", True), ("xl_base", True)])
def test_every_variant_loads_in_both_layouts(tmp_path, variant, xl):
    tensors = build_tensors(variant.replace("xl_", ""), xl=xl, seed=2)
    hf = write_hf_layout(str(tmp_path / "hf"), tensors, variant)
    comfy = write_comfy_layout(str(tmp_path / "comfy"), tensors, variant, dit_prefix="model.diffusion_model.")
    a = load_dit(os.path.join(hf, f"acestep-v15-{variant.replace('_', '-')}"))
    b = load_dit(comfy["dit"])
    assert a.variant == b.variant == variant, (a.variant_source, b.variant_source)
    assert a.model.config.is_xl == b.model.config.is_xl == xl
    _same_state(a.model, b.model)


def test_variant_detection_rules():
    assert detect_variant(["acestep-v15-turbo-shift3"], {"is_turbo": True}, False)[0] == "turbo"
    assert detect_variant(["acestep-v15-base"], {"is_turbo": False}, False)[0] == "base"
    assert detect_variant(["acestep-v15-sft"], {"is_turbo": False}, False)[0] == "sft"
    assert detect_variant(["acestep_v1.5_xl_sft_bf16.safetensors"], None, True)[0] == "xl_sft"
    assert detect_variant(["whatever.safetensors"], {"is_turbo": False, "model_version": "base"}, False)[0] == "base"
    variant, how = detect_variant(["my_merge.safetensors"], None, False)
    assert variant == "turbo" and "assuming" in how


def test_sharded_dit_folder(layouts, tmp_path):
    tensors, hf, _ = layouts
    dit_dir = tmp_path / "acestep-v15-turbo"
    shutil.copytree(os.path.join(hf, "acestep-v15-turbo"), dit_dir)
    full = load_file(str(dit_dir / "model.safetensors"))
    os.remove(dit_dir / "model.safetensors")
    keys = sorted(full)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, ks in halves.items():
        save_file({k: full[k] for k in ks}, str(dit_dir / name))
        weight_map.update({k: name for k in ks})
    (dit_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _same_state(load_dit(str(dit_dir)).model, load_dit(os.path.join(hf, "acestep-v15-turbo")).model)


# --------------------------------------------------------------------------- bad inputs


def _rewrite(src: str, dst: str, edit):
    tensors = load_file(src)
    edit(tensors)
    save_file(tensors, dst)
    return dst


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("decoder.layers.0.mlp.up_proj.weight"), "missing keys: decoder.layers.0.mlp.up_proj.weight"),
        (lambda t: t.__setitem__("decoder.extra.weight", torch.zeros(2)), "unexpected keys: decoder.extra.weight"),
        (lambda t: t.__setitem__("null_condition_emb", torch.zeros(1, 1, 7)), "shape mismatches: null_condition_emb"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_bad_dit_weights_are_named(layouts, tmp_path, edit, message):
    _, _, comfy = layouts
    bad = _rewrite(comfy["dit"], str(tmp_path / "acestep_v1.5_turbo.safetensors"), edit)
    with pytest.raises(CheckpointError) as e:
        load_dit(bad)
    assert bad in str(e.value) and message in str(e.value)


def test_unknown_layout_truncated_file_and_missing_path(layouts, tmp_path):
    _, _, comfy = layouts
    other = str(tmp_path / "sdxl.safetensors")
    save_file({"conv_in.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match="not an ACE-Step 1.5 diffusion model"):
        load_dit(other)
    truncated = str(tmp_path / "truncated.safetensors")
    with open(comfy["dit"], "rb") as f, open(truncated, "wb") as g:
        g.write(f.read()[: os.path.getsize(comfy["dit"]) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_dit(truncated)
    with pytest.raises(CheckpointError, match="no such file or folder"):
        resolve_paths(str(tmp_path / "nope"))
    empty = tmp_path / "empty_root"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no acestep-v15-\\* model folder"):
        resolve_paths(str(empty))


def test_missing_or_unsafe_silence_latent(layouts, tmp_path):
    _, hf, _ = layouts
    dit_dir = tmp_path / "acestep-v15-turbo"
    shutil.copytree(os.path.join(hf, "acestep-v15-turbo"), dit_dir)
    os.remove(dit_dir / "silence_latent.pt")
    with pytest.raises(CheckpointError, match="silence_latent.pt: missing"):
        load_dit(str(dit_dir))

    class NotATensor:  # a pickle that would run code under weights_only=False
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save(NotATensor(), dit_dir / "silence_latent.pt")
    with pytest.raises(CheckpointError, match="holds Python objects besides tensor data"):
        load_dit(str(dit_dir))


def test_missing_components_of_a_split_checkpoint(layouts, tmp_path):
    _, _, comfy = layouts
    lonely = tmp_path / "diffusion_models" / "acestep_v1.5_turbo.safetensors"
    lonely.parent.mkdir()
    shutil.copy(comfy["dit"], lonely)
    with pytest.raises(CheckpointError, match="no VAE found"):
        resolve_paths(str(lonely))
    with pytest.raises(CheckpointError, match="no text encoder found"):
        resolve_paths(str(lonely), vae=comfy["vae"])


def test_missing_tokenizer_is_explained(layouts, tmp_path):
    _, _, comfy = layouts
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_checkpoint(comfy["aio"], dtype="fp32", tokenizer_dir=str(tmp_path))
