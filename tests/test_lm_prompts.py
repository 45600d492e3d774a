"""LM prompts byte for byte as upstream (6d467e4) writes them (the strings quoted in lm-planner.md and upstream's
acestep/constants.py), their token ids equal to those of a tokenizer built like the official one, and the CoT
writing and parsing."""
import pytest

from acestep_core.loading.lm import load_lm_tokenizer
from acestep_core.lm_planner.prompts import (
    codes_prompt,
    extract_lyrics,
    format_cot,
    format_prompt,
    inspiration_prompt,
    metas_prompt,
    parse_metas,
    unconditional_codes_prompt,
    understand_prompt,
)
from devtools.lm_fixtures import official_like_tokenizer

# lm-planner.md, "Prompts": user metas bpm 120, duration 10, key C major, time signature 4.
CODES_CONDITIONAL = (
    "<|im_start|>system\n# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n<|im_end|>\n"
    "<|im_start|>user\n# Caption\n{caption}\n\n# Lyric\n{lyrics}\n<|im_end|>\n<|im_start|>assistant\n"
    "<think>\nbpm: 120\nduration: 10\nkeyscale: C major\ntimesignature: 4\n</think>\n\n"
)
CODES_UNCONDITIONAL = (
    "<|im_start|>system\n# Instruction\nGenerate audio semantic tokens based on the given conditions:\n\n<|im_end|>\n"
    "<|im_start|>user\nNO USER INPUT<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
INSPIRATION = (
    "<|im_start|>system\n# Instruction\nExpand the user's input into a more detailed and specific musical "
    "description:\n\n<|im_end|>\n<|im_start|>user\n{query}\n\ninstrumental: false<|im_end|>\n<|im_start|>assistant\n"
)
# upstream build_formatted_prompt_for_understanding / _for_format with DEFAULT_LM_UNDERSTAND/REWRITE_INSTRUCTION.
UNDERSTAND = (
    "<|im_start|>system\n# Instruction\nUnderstand the given musical conditions and describe the audio semantics "
    "accordingly:\n\n<|im_end|>\n<|im_start|>user\n<|audio_code_5|><|audio_code_63999|><|audio_code_0|><|im_end|>\n"
    "<|im_start|>assistant\n"
)
FORMAT = (
    "<|im_start|>system\n# Instruction\nFormat the user's input into a more detailed and specific musical "
    "description:\n\n<|im_end|>\n<|im_start|>user\n# Caption\nLatin pop, reggaeton\n\n# Lyric\n[Verse 1]\nTengo un "
    "nudo<|im_end|>\n<|im_start|>assistant\n"
)

CAPTION = "A dreamy lo-fi track with soft ♭ piano: rain, vinyl crackle — 夜の雨"
LYRICS = "[Verse]\nWalking in the rain 🌧\n\n[Chorus]\nLa la la, ça va?\n"


@pytest.fixture(scope="module")
def ours():
    return load_lm_tokenizer(None, 217204)


@pytest.fixture(scope="module")
def official():
    return official_like_tokenizer()


def every_prompt():
    cot = format_cot({"bpm": 120, "duration": 10, "keyscale": "C major", "timesignature": "4"})
    return {
        "codes": codes_prompt(CAPTION, LYRICS, cot),
        "codes_uncond": unconditional_codes_prompt(),
        "codes_uncond_negative": unconditional_codes_prompt("harsh noise, distortion"),
        "metas": metas_prompt(CAPTION, LYRICS),
        "inspiration": inspiration_prompt("a soft Bengali love song", True),
        "understand": understand_prompt([5, 63999, 0, 12]),
        "format": format_prompt(CAPTION, LYRICS),
    }


def test_codes_prompts_are_byte_exact():
    cot = format_cot({"bpm": 120, "duration": 10, "keyscale": "C major", "timesignature": "4"})
    assert codes_prompt("{caption}", "{lyrics}", cot) == CODES_CONDITIONAL
    for negative in ("NO USER INPUT", "", "   ", None):
        assert unconditional_codes_prompt(negative) == CODES_UNCONDITIONAL
    assert unconditional_codes_prompt(" harsh noise ") == CODES_UNCONDITIONAL.replace(
        "NO USER INPUT<|im_end|>", " harsh noise <|im_end|>")


def test_metas_prompt_is_the_conditional_prompt_up_to_the_assistant_turn():
    expected = CODES_CONDITIONAL[: CODES_CONDITIONAL.index("<think>")]
    assert metas_prompt("{caption}", "{lyrics}") == expected
    assert expected.endswith("<|im_start|>assistant\n")


def test_simple_understand_and_format_prompts_are_byte_exact():
    assert inspiration_prompt("{query}", False) == INSPIRATION
    assert inspiration_prompt("{query}", True) == INSPIRATION.replace("instrumental: false", "instrumental: true")
    assert inspiration_prompt("  ", False) == INSPIRATION.replace("{query}", "NO USER INPUT")
    assert understand_prompt([5, 63999, 0]) == UNDERSTAND
    assert understand_prompt([]) == UNDERSTAND.replace("<|audio_code_5|><|audio_code_63999|><|audio_code_0|>",
                                                       "NO USER INPUT")
    assert format_prompt("Latin pop, reggaeton", "[Verse 1]\nTengo un nudo") == FORMAT


def test_prompt_token_ids_equal_the_official_tokenizer(ours, official):
    for name, text in every_prompt().items():
        assert ours.encode(text) == official(text)["input_ids"], name


def test_bundled_tokenizer_ids_equal_the_official_tokenizer(ours, official):
    texts = [
        "keyscale: F♯ minor\nkeyscale: B♭ major\n", "language: yue\n", "bpm: 120\nduration: 215\n",
        "caption: An emotional ballad.\n  The track opens with piano.\n",
        "ÄÖÜ ß € 🎵 中文歌词 한국어 العربية",
        "<think>\n\n</think>\n\n" + "".join(f"<|audio_code_{i}|>" for i in (0, 1, 63999, 64000, 65534)),
        "<|audio_code_12|>text<|audio_code_13|> <|audio_code_14|>\n<|endoftext|><|im_end|>",
        "   leading spaces\t\ttabs\r\nwindows line\n\n\n", "",
    ]
    for text in texts:
        ids = ours.encode(text)
        assert ids == official(text)["input_ids"], text
        assert ours.decode(ids) == official.decode(ids, skip_special_tokens=False), text
    assert ours.encode("<|audio_code_0|><|audio_code_65534|>") == [151669, 217203]
    assert ours.token_id("<|im_end|>") == official.eos_token_id == 151645
    assert ours.token_id("<|endoftext|>") == official.pad_token_id == 151643


def test_cot_is_sorted_yaml_as_upstream_writes_it():
    assert format_cot({"timesignature": "4/4", "keyscale": "C major", "bpm": "120", "duration": 10}) == (
        "<think>\nbpm: 120\nduration: 10\nkeyscale: C major\ntimesignature: 4\n</think>")
    assert format_cot({"timesignature": "6/8", "language": "no", "keyscale": "B♭ minor", "caption": None}) == (
        "<think>\nkeyscale: B♭ minor\nlanguage: 'no'\ntimesignature: 6/8\n</think>")
    assert format_cot({}) == "<think>\n\n</think>"
    assert format_cot({"genres": "pop", "bpm": 90}) == "<think>\nbpm: 90\n</think>"  # genres is not in the CoT
    long = ("A dreamy lo-fi hip hop track with soft piano chords, vinyl crackle and a slow boom bap beat: rain "
            "outside")
    assert format_cot({"caption": long}) == (
        "<think>\ncaption: 'A dreamy lo-fi hip hop track with soft piano chords, vinyl crackle and a\n"
        "  slow boom bap beat: rain outside'\n</think>")


def test_parse_reads_what_the_lm_writes():
    text = ("<think>\nbpm: 96\ncaption: An emotional ballad.\n  The track opens with piano\n  and strings.\n"
            "duration: 187\ngenres: indie folk\nkeyscale: G major\nlanguage: en\ntimesignature: 3\n</think>\n\n"
            "<|audio_code_1|><|audio_code_2|><|im_end|>")
    assert parse_metas(text) == {
        "bpm": 96, "caption": "An emotional ballad. The track opens with piano and strings.", "duration": 187,
        "genres": "indie folk", "keyscale": "G major", "language": "en", "timesignature": "3"}
    # The thinking phase stops before "</think>": fields are read up to the first audio code.
    assert parse_metas("<think>\nbpm: 120\nduration: 30\nkeyscale: A minor\n<|im_end|>") == {
        "bpm": 120, "duration": 30, "keyscale": "A minor"}
    assert parse_metas("<think>\nbpm: fast\nmood: sad\n</think>") == {"bpm": "fast"}


def test_lyrics_are_what_follows_the_think_block():
    text = "<think>\nbpm: 90\n</think>\n\n# Lyric\n[Verse]\nHello\n\n[Chorus]\nWorld\n<|im_end|>"
    assert extract_lyrics(text) == "[Verse]\nHello\n\n[Chorus]\nWorld"
    assert extract_lyrics("<think>\nbpm: 90\n</think>\n[Instrumental]<|endoftext|>") == "[Instrumental]"
    assert extract_lyrics("<think>\nbpm: 90\n") == ""
