"""The text side: prompt strings (byte-exact against the original ACE-Step 1.5 and, where it agrees, the diffusers
port), the bundled Qwen3 tokenizer, and the Qwen3 text encoder loaded from the three file layouts."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from acestep_core import constants as C
from acestep_core.loading.text import BUNDLED_TOKENIZER, load_text_encoder, load_tokenizer, strip_text_encoder_prefix
from acestep_core.models.text_encoder import TextEncoder, encode_text_inputs, infer_qwen3_config
from acestep_core.tasks import TASKS
from acestep_core.prompts import (
    extract_caption,
    format_caption_prompt,
    format_lyrics_prompt,
    format_metas,
    task_instruction,
)
from acestep_core.errors import CheckpointError

EOT = 151643

# ---------------------------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------------------------


def test_vocabularies_match_the_original():
    assert len(C.VALID_LANGUAGES) == 51 and len(set(C.VALID_LANGUAGES)) == 51
    assert C.VALID_LANGUAGES[:3] == ("ar", "az", "bg") and C.VALID_LANGUAGES[-3:] == ("yue", "zh", "unknown")
    assert {"en", "zh", "ja", "ko", "yue", "unknown"} <= set(C.VALID_LANGUAGES)
    # the original builds a set of note + accidental + " " + mode
    original = {f"{n}{a} {m}" for n in "ABCDEFG" for a in ["", "#", "b", "♯", "♭"] for m in ["major", "minor"]}
    assert len(C.KEYSCALES) == 70 and set(C.KEYSCALES) == original
    assert {"C major", "F# minor", "B♭ major", "Eb minor"} <= set(C.KEYSCALES)
    assert C.TIME_SIGNATURES == ("2", "3", "4", "6")
    assert len(C.TRACK_NAMES) == 12 and C.TRACK_NAMES[0] == "woodwinds" and C.TRACK_NAMES[-1] == "vocals"
    assert (C.BPM_MIN, C.BPM_MAX, C.DURATION_MIN, C.DURATION_MAX) == (30, 300, 10, 600)
    assert (C.TEXT_MAX_TOKENS, C.LYRIC_MAX_TOKENS, C.SAMPLE_RATE, C.LATENT_RATE) == (256, 2048, 48000, 25)


def test_variant_defaults():
    d = C.VARIANT_DEFAULTS
    assert set(d) == {"turbo", "base", "sft", "xl_turbo", "xl_base", "xl_sft"}
    for name in ("turbo", "xl_turbo"):
        assert dataclasses.astuple(d[name]) == (8, 3.0, 1.0)
    for name in ("base", "xl_base"):
        assert dataclasses.astuple(d[name]) == (32, 3.0, 7.0)
    for name in ("sft", "xl_sft"):
        assert dataclasses.astuple(d[name]) == (50, 3.0, 7.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d["turbo"].steps = 4


def test_templates_match_diffusers(diffusers_pipeline):
    import diffusers.pipelines.ace_step.pipeline_ace_step as P

    assert C.SFT_GEN_PROMPT.format(instruction="{}", caption="{}", metas="{}") == P.SFT_GEN_PROMPT
    assert C.TASK_INSTRUCTIONS == P.TASK_INSTRUCTIONS
    assert C.TASK_INSTRUCTIONS["text2music"] == P.DEFAULT_DIT_INSTRUCTION
    assert set(TASKS) == set(P.TASK_TYPES) | {"extend", "cover-nofsq"}  # repaint outside the source; raw remix


# ---------------------------------------------------------------------------------------------------------------
# Prompt strings
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_pipeline():
    from diffusers.pipelines.ace_step.pipeline_ace_step import AceStepPipeline

    return AceStepPipeline


INSTRUCTION_CASES = [
    ("text2music", None, "Fill the audio semantic mask based on the given conditions:"),
    ("repaint", None, "Repaint the mask area based on the given conditions:"),
    ("cover", None, "Generate audio semantic tokens based on the given conditions:"),
    ("extract", None, "Extract the track from the audio:"),
    ("extract", "vocals", "Extract the VOCALS track from the audio:"),
    ("extract", ["backing_vocals"], "Extract the BACKING_VOCALS track from the audio:"),
    ("lego", None, "Generate the track based on the audio context:"),
    ("lego", "drums", "Generate the DRUMS track based on the audio context:"),
    ("complete", None, "Complete the input track:"),
    ("complete", [], "Complete the input track:"),
    ("complete", ["drums"], "Complete the input track with DRUMS:"),
    ("complete", ["bass", "guitar", "fx"], "Complete the input track with BASS | GUITAR | FX:"),
]


@pytest.mark.parametrize("task,tracks,expected", INSTRUCTION_CASES)
def test_task_instruction(task, tracks, expected, diffusers_pipeline):
    assert task_instruction(task, tracks) == expected
    name = tracks if isinstance(tracks, str) else (tracks[0] if tracks else None)
    classes = [tracks] if isinstance(tracks, str) else tracks
    assert diffusers_pipeline._get_task_instruction(task, track_name=name, complete_track_classes=classes) == expected


METAS_CASES = [
    # (bpm, timesignature, keyscale, duration) -> metas block
    ((120, "4", "C major", 60.0), "- bpm: 120\n- timesignature: 4\n- keyscale: C major\n- duration: 60 seconds\n"),
    ((None, None, None, None), "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"),
    ((90, "3", "F# minor", 47.9), "- bpm: 90\n- timesignature: 3\n- keyscale: F# minor\n- duration: 47 seconds\n"),
    ((None, "6", None, 215), "- bpm: N/A\n- timesignature: 6\n- keyscale: N/A\n- duration: 215 seconds\n"),
    ((0, " ", "  ", 0.0), "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 30 seconds\n"),
    ((300, "2", "B♭ major", 600),
     "- bpm: 300\n- timesignature: 2\n- keyscale: B♭ major\n- duration: 600 seconds\n"),
]


@pytest.mark.parametrize("args,expected", METAS_CASES)
def test_format_metas(args, expected, diffusers_pipeline):
    bpm, ts, ks, dur = args
    assert format_metas(bpm, ts, ks, dur) == expected
    assert format_metas(bpm=bpm, timesignature=ts, keyscale=ks, duration=dur) == expected
    theirs = diffusers_pipeline._build_metadata_string(bpm=bpm, keyscale=ks, timesignature=ts, audio_duration=dur)
    assert theirs == expected


def test_format_metas_writes_time_signature_verbatim_like_the_original():
    """The original writes the time signature as given ("4/4" stays "4/4"); ComfyUI strips a "/4" suffix.
    Requests pass the numerator (SongText turns "4/4" into "4")."""
    assert "- timesignature: 4/4\n" in format_metas(timesignature="4/4")
    assert "- timesignature: N/A\n" in format_metas(timesignature="N/A")


def test_caption_prompt_byte_exact(diffusers_pipeline):
    metas = format_metas(128, "4", "A minor", 95.5)
    expected = (
        "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n"
        "# Caption\nupbeat synthpop, female vocals, 80s drums\n\n"
        "# Metas\n- bpm: 128\n- timesignature: 4\n- keyscale: A minor\n- duration: 95 seconds\n<|endoftext|>\n"
    )
    instruction = task_instruction("text2music")
    caption = "upbeat synthpop, female vocals, 80s drums"
    assert format_caption_prompt(caption, instruction, metas) == expected
    # the instruction gets its trailing colon back
    assert format_caption_prompt(caption, instruction.rstrip(":"), metas) == expected
    text, lyr = diffusers_pipeline._format_prompt(
        diffusers_pipeline, caption, lyrics="[Verse]\nla la", vocal_language="en", audio_duration=95.5,
        instruction=instruction.rstrip(":"), bpm=128, keyscale="A minor", timesignature="4")
    assert text == expected
    expected_lyrics = "# Languages\nen\n\n# Lyric\n[Verse]\nla la<|endoftext|>"
    assert lyr == format_lyrics_prompt("[Verse]\nla la", "en") == expected_lyrics


def test_lyrics_prompt_byte_exact():
    expected = "# Languages\nunknown\n\n# Lyric\n[Instrumental]<|endoftext|>"
    assert format_lyrics_prompt("[Instrumental]", "unknown") == expected
    assert format_lyrics_prompt("", "ja") == "# Languages\nja\n\n# Lyric\n<|endoftext|>"


def test_pasted_sft_prompt_caption_is_extracted_like_the_original_not_diffusers(diffusers_pipeline):
    """The original extracts the "# Caption" block when a user pastes a whole SFT prompt as caption; the diffusers
    port does not. We follow the original."""
    metas = format_metas(None, None, None, None)
    pasted = format_caption_prompt("  dreamy lo-fi\npiano  ", task_instruction("repaint"), metas)
    assert extract_caption(pasted) == "dreamy lo-fi\npiano"
    ours = format_caption_prompt(pasted, task_instruction("text2music"), metas)
    assert ours == format_caption_prompt("dreamy lo-fi\npiano", task_instruction("text2music"), metas)
    theirs, _ = diffusers_pipeline._format_prompt(diffusers_pipeline, pasted, audio_duration=0)
    assert theirs != ours
    # without "# Metas" the caption runs to the end; without "# Instruction" nothing is touched (not even stripped)
    assert extract_caption("# Instruction\nx\n\n# Caption\nsoft rock \n") == "soft rock"
    assert extract_caption(" # Caption\nsoft rock ") == " # Caption\nsoft rock "


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _official_style_folder(path) -> str:
    """An HF folder whose tokenizer.json carries the post-processor of the official Qwen3-Embedding-0.6B files."""
    with gzip.open(BUNDLED_TOKENIZER, "rt", encoding="utf-8") as f:
        data = json.load(f)
    data["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        {"type": "TemplateProcessing",
         "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                  {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}],
         "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [EOT], "tokens": ["<|endoftext|>"]}}},
    ]}
    with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    return str(path)


def test_bundled_tokenizer_appends_endoftext(tokenizer):
    raw = Tokenizer.from_str(gzip.open(BUNDLED_TOKENIZER, "rt", encoding="utf-8").read())
    assert raw.encode("hello world").ids == [14990, 1879]  # the npm copy appends nothing
    assert tokenizer.encode("hello world", 256) == [14990, 1879, EOT]
    # the template's own <|endoftext|> is one special token, then the appended one
    ids = tokenizer.encode(format_caption_prompt("x", task_instruction("text2music"), format_metas()), 256)
    assert ids[-4:] == [198, EOT, 198, EOT] and ids.count(EOT) == 2
    lyric_ids = tokenizer.encode(format_lyrics_prompt("la", "en"), 2048)
    assert lyric_ids[-2:] == [EOT, EOT] and lyric_ids.count(EOT) == 2


def test_bundled_tokenizer_equals_official_style_folder_and_hf_fast_tokenizer(tokenizer, tmp_path):
    official = load_tokenizer(_official_style_folder(tmp_path))
    hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tmp_path, "tokenizer.json"))
    texts = [
        format_caption_prompt("lo-fi hip hop, mellow Rhodes, vinyl crackle",
                              task_instruction("complete", ["bass", "drums"]), format_metas(84, "4", "E♭ major", 183.2)),
        format_lyrics_prompt("[Verse 1]\n月光洒在窗台上\nÜber den Wolken, ça va?\n\n[Chorus - anthemic]\nOh!", "zh"),
        "<|im_start|>user\n<think></think>",
    ]
    for text in texts:
        for max_length in (256, 12, 1):
            ours = tokenizer.encode(text, max_length)
            assert ours == official.encode(text, max_length)
            assert ours == hf(text, truncation=True, max_length=max_length)["input_ids"]


def test_encode_batch_right_pads_and_truncates(tokenizer):
    long_text = "word " * 400
    ids, mask = tokenizer.encode_batch(["hello world", "a", long_text], max_length=256)
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == mask.shape == (3, 256)
    assert ids[0, :3].tolist() == [14990, 1879, EOT] and mask[0].tolist() == [1] * 3 + [0] * 253
    assert (ids[0, 3:] == EOT).all() and (ids[1, 2:] == EOT).all() and mask[1].sum() == 2
    # truncation keeps room for the appended <|endoftext|>
    assert mask[2].sum() == 256 and ids[2, -1] == EOT and ids[2, -2] != EOT
    ids2, mask2 = tokenizer.encode_batch(["hello world"], max_length=2)
    assert ids2.tolist() == [[14990, EOT]] and mask2.tolist() == [[1, 1]]
    with pytest.raises(ValueError):
        tokenizer.encode_batch("hello", 256)


def test_tokenizer_folder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable tokenizer file"):
        load_tokenizer(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# Text encoder
# ---------------------------------------------------------------------------------------------------------------

TINY = dict(vocab_size=151669, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=32768)
AIO_PREFIX = "text_encoders.qwen3_06b.transformer.model."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny Qwen3 (transformers' own model, eager attention) saved in the three layouts."""
    torch.manual_seed(0)
    config = Qwen3Config(**TINY, attn_implementation="eager")
    reference = Qwen3Model(config).eval()
    with torch.no_grad():  # non-trivial norm weights so that a missed norm would show
        for name, p in reference.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.3 * torch.randn_like(p))
    sd = {k: v.contiguous() for k, v in reference.state_dict().items()}
    root = tmp_path_factory.mktemp("qwen_tiny")
    hf = root / "Qwen3-Embedding-0.6B"
    hf.mkdir()
    save_file(sd, str(hf / "model.safetensors"))
    (hf / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "torch_dtype": "bfloat16", "hidden_act": "silu",
        "attention_bias": False, "tie_word_embeddings": True, "use_sliding_window": False, "rope_scaling": None,
        "bos_token_id": EOT, "eos_token_id": EOT, **TINY}))
    comfy = root / "qwen_0.6b_ace15.safetensors"
    save_file({"model." + k: v for k, v in sd.items()}, str(comfy))
    aio = root / "ace_step_1.5_aio.safetensors"
    foreign = {"model.diffusion_model.decoder.proj_in.1.weight": torch.zeros(3, 3),
               "vae.decoder.conv1.bias": torch.ones(2)}
    save_file({**{AIO_PREFIX + k: v for k, v in sd.items()}, **foreign}, str(aio))
    return reference, sd, {"hf": str(hf), "comfy": str(comfy), "aio": str(aio)}


def test_three_layouts_load_identically(tiny):
    reference, sd, paths = tiny
    encoders = {name: load_text_encoder(path) for name, path in paths.items()}
    for enc in encoders.values():
        loaded = enc.model.state_dict()
        assert loaded.keys() == sd.keys()
        for k in sd:
            assert torch.equal(loaded[k], sd[k]), k
        assert enc.hidden_size == 32 and enc.dtype == torch.float32
    ids = torch.tensor([[2, 29051, 198, 14449, EOT], [14990, 1879, EOT, EOT, EOT]])
    with torch.no_grad():
        expected = reference(input_ids=ids).last_hidden_state
    for enc in encoders.values():
        got = enc.encode_caption(ids)
        assert got.shape == (2, 5, 32)
        assert ((got - expected).norm() / expected.norm()).item() <= 1e-5
        assert torch.equal(enc.embed_lyrics(ids), sd["embed_tokens.weight"][ids])


def test_inferred_config_matches_the_original_geometry(tiny):
    _, sd, _ = tiny
    inferred = infer_qwen3_config(sd, "tiny")
    assert inferred == {"model_type": "qwen3", **TINY}
    # the real Qwen3-Embedding-0.6B shapes (meta tensors: nothing is allocated)
    shapes = {"embed_tokens.weight": (151669, 1024), "norm.weight": (1024,)}
    for i in range(28):
        shapes.update({f"layers.{i}.self_attn.q_proj.weight": (2048, 1024),
                       f"layers.{i}.self_attn.k_proj.weight": (1024, 1024),
                       f"layers.{i}.self_attn.q_norm.weight": (128,),
                       f"layers.{i}.mlp.gate_proj.weight": (3072, 1024)})
    real = infer_qwen3_config({k: torch.empty(s, device="meta") for k, s in shapes.items()}, "real")
    assert real == {"model_type": "qwen3", "vocab_size": 151669, "hidden_size": 1024, "intermediate_size": 3072,
                    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                    "rope_theta": 1e6, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768}


def test_bf16_load_matches_the_original_loading_procedure(tiny):
    """The original loads in fp32 then calls .to(bfloat16), which also rounds the RoPE inv_freq buffer."""
    reference, sd, paths = tiny
    ref = Qwen3Model(Qwen3Config(**TINY, attn_implementation="sdpa")).eval()
    ref.load_state_dict(sd)
    ref = ref.to(torch.bfloat16)
    enc = load_text_encoder(paths["comfy"], dtype=torch.bfloat16)
    assert enc.dtype == torch.bfloat16
    assert torch.equal(enc.model.rotary_emb.inv_freq, ref.rotary_emb.inv_freq)
    ids = torch.tensor([[2, 29051, 198, 14449, 279, 7699, EOT]])
    with torch.no_grad():
        assert torch.equal(enc.encode_caption(ids), ref(input_ids=ids).last_hidden_state)


def test_encode_text_inputs(tiny, tokenizer):
    _, _, paths = tiny
    enc = load_text_encoder(paths["hf"])
    metas = format_metas(100, "4", "D major", 30)
    t2m = task_instruction("text2music")
    captions = [format_caption_prompt("rock", t2m, metas),
                format_caption_prompt("a much longer caption about jazz and strings", t2m, metas)]
    lyrics = [format_lyrics_prompt("[Verse]\nhello there", "en"), format_lyrics_prompt("[Instrumental]", "unknown")]
    text_hidden, text_mask, lyric_embeds, lyric_mask = encode_text_inputs(tokenizer, enc, captions, lyrics)
    n0, n1 = len(tokenizer.encode(captions[0], 256)), len(tokenizer.encode(captions[1], 256))
    assert text_hidden.shape == (2, n1, 32) and text_mask.dtype == torch.bool
    assert text_mask.sum(1).tolist() == [n0, n1]
    assert lyric_embeds.shape == (2, lyric_mask.shape[1], 32) and lyric_mask.dtype == torch.bool
    # causal attention + right padding: the padded item's real positions equal encoding it alone
    alone, _ = tokenizer.encode_batch(captions[:1], 256)
    assert torch.allclose(text_hidden[0, :n0], enc.encode_caption(alone)[0], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="2 caption prompts but 1 lyrics"):
        encode_text_inputs(tokenizer, enc, captions, lyrics[:1])


def test_strip_prefix_helper(tiny):
    _, sd, _ = tiny
    for prefix in C.TEXT_ENCODER_PREFIXES:
        prefixed = {prefix + k: v for k, v in sd.items()}
        if prefix == AIO_PREFIX:
            prefixed["vae.decoder.conv1.bias"] = torch.zeros(1)  # other parts of an all-in-one file are left out
        assert strip_text_encoder_prefix(prefixed, "src").keys() == sd.keys()
    comfy = {"model." + k: v for k, v in sd.items()}
    enc = TextEncoder.from_state_dict(strip_text_encoder_prefix(comfy, "src"), source="src")
    assert torch.equal(enc.model.norm.weight, sd["norm.weight"])


def test_bad_checkpoints_raise_checkpoint_error(tiny, tmp_path):
    _, sd, paths = tiny
    missing = {k: v for k, v in sd.items() if k != "layers.1.mlp.up_proj.weight"}
    message = r"mine\.safetensors: weights do not fit the model: 1 missing keys: layers\.1\.mlp\.up_proj\.weight"
    with pytest.raises(CheckpointError, match=message):
        TextEncoder.from_state_dict(missing, source="mine.safetensors")
    wrong = dict(sd, **{"layers.0.mlp.up_proj.weight": torch.zeros(65, 32)})
    with pytest.raises(CheckpointError, match=r"shape mismatches: layers\.0\.mlp\.up_proj\.weight"):
        TextEncoder.from_state_dict(wrong, source="mine.safetensors")
    with pytest.raises(CheckpointError, match=r"cfg: config model_type is 'llama'"):
        TextEncoder.from_state_dict(sd, {"model_type": "llama", **TINY}, source="cfg")
    message = r"noq: cannot infer the text-encoder geometry, 'layers\.0\.self_attn\.q_norm\.weight' is missing"
    with pytest.raises(CheckpointError, match=message):
        TextEncoder.from_state_dict({k: v for k, v in sd.items() if "q_norm" not in k}, source="noq")
    # config.json geometry disagreeing with the tensors
    bad_cfg = tmp_path / "badcfg"
    bad_cfg.mkdir()
    save_file(sd, str(bad_cfg / "model.safetensors"))
    (bad_cfg / "config.json").write_text(json.dumps({"model_type": "qwen3", **dict(TINY, intermediate_size=96)}))
    with pytest.raises(CheckpointError, match=r"badcfg: weights do not fit the model: .*shape mismatches"):
        load_text_encoder(str(bad_cfg))
    # a file without text-encoder tensors, a truncated file, an empty folder
    other = tmp_path / "dit.safetensors"
    save_file({"decoder.x": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match=r"dit\.safetensors: no Qwen3 text-encoder weights found"):
        load_text_encoder(str(other))
    data = open(paths["comfy"], "rb").read()
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt\.safetensors"):
        load_text_encoder(str(corrupt))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_text_encoder(str(tmp_path / "empty"))
