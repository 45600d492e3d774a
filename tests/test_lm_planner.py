"""The planner: the metas state machine (allowed sets per state, injection, limits), the sampler, and plans /
simple mode / understanding / format end to end on a tiny random LM and on a scripted one."""
import pytest
import torch

from acestep_core.constants import BPM_MAX, BPM_MIN, KEYSCALES, TIME_SIGNATURES, VALID_LANGUAGES
from acestep_core.loading.lm import load_lm, load_lm_tokenizer
from acestep_core.lm_planner import Planner
from acestep_core.lm_planner.planner import Sampling
from acestep_core.lm_planner.constraints import MetasMachine, MetasVocab
from acestep_core.lm_planner.prompts import codes_prompt, format_cot, parse_metas, unconditional_codes_prompt
from acestep_core.lm_planner.sampling import cfg_combine, sample
from acestep_core.sampling import GenerationCancelled
from devtools.lm_fixtures import hf_reference_lm, official_like_tokenizer, random_lm_state_dict, write_comfy_lm

V = 217204
NEWLINE, EOS, PAD, FIRST_CODE = 198, 151645, 151643, 151669
NEG = float("-inf")


@pytest.fixture(scope="module")
def tokenizer():
    return load_lm_tokenizer(None, V)


@pytest.fixture(scope="module")
def official():
    return official_like_tokenizer()


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return MetasVocab.build(tokenizer, V, "cpu")


@pytest.fixture(scope="module")
def weights():
    return random_lm_state_dict(seed=11)


@pytest.fixture(scope="module")
def planner(tmp_path_factory, weights, tokenizer):
    lm = load_lm(write_comfy_lm(str(tmp_path_factory.mktemp("models")), weights), dtype=torch.float32)
    return Planner(lm, tokenizer, max_duration=12)


def ids_of(official, *tokens):
    return official.convert_tokens_to_ids(list(tokens))


def favour(token: int) -> torch.Tensor:
    logits = torch.randn(V, generator=torch.Generator().manual_seed(token))
    logits[token] = 50.0
    return logits


def drive(machine: MetasMachine, script: list[int]) -> list[int]:
    """Run the machine against a model that always wants the next token of ``script``: forced tokens must be the
    script's, sampled (greedy) ones must be allowed."""
    out = []
    while not machine.done and len(out) < len(script):
        wanted = script[len(out)]
        token = machine.next_forced()
        if token is None:
            scores = machine.constrain(favour(wanted))
            assert scores[wanted] > NEG, (len(out), wanted)
            token = int(scores.argmax())
        assert token == wanted, (len(out), token, wanted)
        machine.advance(token)
        out.append(token)
    return out


def finite(scores: torch.Tensor) -> set[int]:
    return set(torch.isfinite(scores).nonzero().flatten().tolist())


def to_value(machine, vocab, field):
    """Drive a fresh machine to the start of ``field``'s value (the fields before it written as scripted)."""
    values = {"bpm": " 90\n", "caption": " x\n", "duration": " 30\n", "keyscale": " C major\n",
              "language": " en\n"}
    script = list(vocab.think_open)
    for name in ("bpm", "caption", "duration", "keyscale", "language", "timesignature"):
        if name in machine.fields:
            script += vocab.names[name]
            if name == field:
                break
            script += vocab.tokenizer.encode_plain(values[name])
    drive(machine, script)
    assert (machine.stage, machine.field, list(machine.queue)) == ("value", field, [])
    return machine


# ------------------------------------------------------------------------------------------------ vocabulary


def test_fixed_text_is_forced_as_upstream_forces_it(vocab, official):
    assert vocab.think_open == [151667, NEWLINE] and vocab.think_close == [151668]
    assert vocab.names["bpm"] == ids_of(official, "bp", "m", ":")  # not the tokenizer's own "b" "pm" ":"
    assert vocab.names["keyscale"] == ids_of(official, "keys", "cale", ":")
    assert vocab.names["timesignature"] == ids_of(official, "times", "ign", "ature", ":")
    for name in ("caption", "duration", "genres", "language"):
        assert vocab.names[name] == ids_of(official, name, ":")


def test_value_trees_spell_exactly_the_valid_values(vocab, official):
    expected = {
        "bpm": {str(v) for v in range(BPM_MIN, BPM_MAX + 1)},
        "duration": {str(v) for v in range(10, 601)},
        "keyscale": set(KEYSCALES),
        "language": set(VALID_LANGUAGES),
        "timesignature": set(TIME_SIGNATURES),
    }
    for field, values in expected.items():
        tree = vocab.trees[field]
        spelled, stack = set(), [()]
        while stack:
            prefix = stack.pop()
            for token in tree[prefix]:
                if token == NEWLINE:
                    spelled.add(official.decode(list(prefix)))
                else:
                    stack.append(prefix + (token,))
        assert spelled == {" " + v for v in values}, field
        if field in ("keyscale", "language", "timesignature"):
            # a complete value never continues: the machine may force the newline (upstream does)
            assert all(tokens == [NEWLINE] for tokens in tree.values() if NEWLINE in tokens), field


# ------------------------------------------------------------------------------------------------ states


def test_a_whole_cot_is_accepted_and_written_as_scripted(vocab):
    tok = vocab.tokenizer
    script = (vocab.think_open + vocab.names["bpm"] + tok.encode_plain(" 120\n") + vocab.names["caption"]
              + tok.encode_plain(" A calm piano piece\n  with strings.\n") + tok.encode_plain("duration:")
              + tok.encode_plain(" 187\n") + vocab.names["keyscale"] + tok.encode_plain(" G major\n")
              + vocab.names["language"] + tok.encode_plain(" en\n") + vocab.names["timesignature"]
              + tok.encode_plain(" 4\n"))
    machine = MetasMachine(vocab)
    out = drive(machine, script)
    assert machine.done and out == script
    text = tok.decode(out)
    assert text == ("<think>\nbpm: 120\ncaption: A calm piano piece\n  with strings.\nduration: 187\n"
                    "keyscale: G major\nlanguage: en\ntimesignature: 4\n")
    assert parse_metas(text + "</think>") == {"bpm": 120, "caption": "A calm piano piece with strings.",
                                              "duration": 187, "keyscale": "G major", "language": "en",
                                              "timesignature": "4"}


def test_given_fields_are_injected_verbatim_whatever_the_model_wants(vocab):
    given = {"bpm": "87", "duration": "45", "keyscale": "F# minor", "language": "ja", "timesignature": "6/8"}
    machine = MetasMachine(vocab, given, skip=("genres", "caption"))
    out = []
    while not machine.done:
        token = machine.next_forced()
        assert token is not None  # nothing left to decide: no logits needed
        machine.advance(token)
        out.append(token)
    assert vocab.tokenizer.decode(out) == ("<think>\nbpm: 87\nduration: 45\nkeyscale: F# minor\nlanguage: ja\n"
                                           "timesignature: 6/8\n")


def test_bpm_allows_only_digits_that_can_still_reach_30_to_300(vocab, official):
    machine = to_value(MetasMachine(vocab), vocab, "bpm")
    digits = {d: ids_of(official, str(d))[0] for d in range(10)}
    assert machine.next_forced() == 220  # the space after "bpm:"
    machine.advance(220)
    assert finite(machine.constrain(torch.zeros(V))) == {digits[d] for d in range(1, 10)}
    machine.advance(digits[3])
    assert finite(machine.constrain(torch.zeros(V))) == set(digits.values())  # 30..39 (3 alone is too small)
    machine.advance(digits[0])
    assert finite(machine.constrain(torch.zeros(V))) == {NEWLINE, digits[0]}  # 30 or 300
    machine.advance(digits[0])
    assert machine.next_forced() == NEWLINE  # 300: nothing can follow
    machine.advance(NEWLINE)
    assert (machine.stage, machine.field) == ("name", "caption")


def test_duration_range_follows_the_maximum(tokenizer, official):
    vocab = MetasVocab.build(tokenizer, V, "cpu", max_duration=240)
    digits = {d: ids_of(official, str(d))[0] for d in range(10)}
    machine = to_value(MetasMachine(vocab, skip=("genres", "caption")), vocab, "duration")
    machine.advance(machine.next_forced())
    assert finite(machine.constrain(torch.zeros(V))) == {digits[d] for d in range(1, 10)}
    machine.advance(digits[2])
    machine.advance(digits[4])
    assert finite(machine.constrain(torch.zeros(V))) == {NEWLINE, digits[0]}  # 24 or 240
    machine.advance(digits[0])
    assert machine.next_forced() == NEWLINE
    with pytest.raises(AssertionError):  # AceStepPipeline.load_lm refuses max_duration=601 (test_bad_inputs.py)
        MetasVocab.build(tokenizer, V, "cpu", max_duration=601)


def test_keyscale_language_and_time_signature_choices(vocab, official):
    machine = to_value(MetasMachine(vocab), vocab, "keyscale")
    # " Ab", " Db", " Eb" are single Qwen3 tokens: the tree follows the real tokenization of "keyscale: Ab minor".
    assert {official.decode([t]) for t in finite(machine.constrain(torch.zeros(V)))} == {
        " A", " B", " C", " D", " E", " F", " G", " Ab", " Db", " Eb"}
    machine.advance(ids_of(official, "ĠC")[0])
    assert {official.decode([t]) for t in finite(machine.constrain(torch.zeros(V)))} == {
        " major", " minor", "#", "b", "♯", "♭"}
    for token in official("♭ minor", add_special_tokens=False)["input_ids"]:
        machine.advance(token)
    assert machine.next_forced() == NEWLINE
    machine.advance(NEWLINE)
    for token in vocab.names["language"]:
        machine.advance(token)
    # The language's first token is the most likely one among the languages', whatever else is likelier.
    logits = torch.zeros(V)
    logits[ids_of(official, "Ġzh")[0]], logits[ids_of(official, "Ġen")[0]], logits[5000] = 3.0, 2.0, 9.0
    assert finite(machine.constrain(logits)) == set(ids_of(official, "Ġzh"))
    machine.advance(ids_of(official, "Ġy")[0])  # "yue" continues with a forced "ue"
    assert machine.next_forced() == ids_of(official, "ue")[0]
    machine.advance(machine.next_forced())
    assert machine.next_forced() == NEWLINE
    machine.advance(NEWLINE)
    for token in vocab.names["timesignature"] + [220]:
        assert machine.next_forced() == token
        machine.advance(token)
    assert finite(machine.constrain(torch.zeros(V))) == set(ids_of(official, "2", "3", "4", "6"))
    machine.advance(ids_of(official, "3")[0])
    assert machine.next_forced() == NEWLINE
    machine.advance(NEWLINE)
    assert machine.done  # "</think>" is where the plan's thinking stops


def test_caption_blocks_codes_and_backticks_and_is_capped(vocab, official):
    machine = to_value(MetasMachine(vocab), vocab, "caption")
    allowed = finite(machine.constrain(torch.zeros(V)))
    blocked = set(range(V)) - allowed
    assert blocked == set(range(FIRST_CODE, FIRST_CODE + 64000)) | set(ids_of(official, "`"))
    assert NEWLINE in allowed and FIRST_CODE + 64000 in allowed  # upstream leaves codes >= 64000 open here
    word = ids_of(official, "Ġla")[0]
    for _ in range(512):
        assert machine.next_forced() is None
        machine.advance(word)
    assert machine.next_forced() == NEWLINE  # the caption's length limit


def test_caption_goes_on_after_an_indented_line_and_ends_with_a_field_name(vocab, official):
    machine = to_value(MetasMachine(vocab), vocab, "caption")
    machine.advance(ids_of(official, "ĠSoft")[0])
    machine.advance(NEWLINE)
    indent = ids_of(official, "ĠĠ")[0]
    assert torch.isneginf(machine.constrain(favour(indent))[FIRST_CODE])  # indentation: still the caption
    machine.advance(indent)
    machine.advance(ids_of(official, ".Ċ")[0])
    scores = machine.constrain(favour(ids_of(official, "keys")[0]))  # an unindented line: the next field's name
    assert torch.isfinite(scores).all()  # written freely, as upstream does
    for token in ids_of(official, "keys", "cale", ":"):
        machine.advance(token)
    assert (machine.stage, machine.field) == ("value", "keyscale")  # straight to that field's value


def test_an_unknown_name_after_the_caption_forces_the_next_field_on_a_new_line(vocab, official):
    machine = to_value(MetasMachine(vocab), vocab, "caption")
    machine.advance(ids_of(official, "ĠSoft")[0])
    machine.advance(NEWLINE)
    name = official("mood:", add_special_tokens=False)["input_ids"]
    machine.constrain(favour(name[0]))
    for token in name:
        machine.advance(token)
    forced = []
    while machine.next_forced() is not None and machine.stage == "name":
        forced.append(machine.next_forced())
        machine.advance(forced[-1])
    assert forced == [NEWLINE] + vocab.names["duration"]


def test_skipped_fields_are_left_out(vocab):
    tok = vocab.tokenizer
    script = (vocab.think_open + vocab.names["bpm"] + tok.encode_plain(" 95\n") + vocab.names["duration"]
              + tok.encode_plain(" 60\n") + vocab.names["keyscale"] + tok.encode_plain(" A minor\n")
              + vocab.names["timesignature"] + tok.encode_plain(" 3\n"))
    machine = MetasMachine(vocab, skip=("genres", "caption", "language"))
    assert drive(machine, script) == script and machine.done


def test_text_modes_write_the_close_tag_then_free_text_without_codes(vocab, official):
    given = {"bpm": "90", "caption": "Calm.", "duration": "30", "genres": "ambient", "keyscale": "C major",
             "language": "en", "timesignature": "4"}
    machine = MetasMachine(vocab, given, skip=(), after_think="text")
    out = []
    while (token := machine.next_forced()) is not None:
        machine.advance(token)
        out.append(token)
    assert vocab.tokenizer.decode(out).endswith("genres: ambient\nkeyscale: C major\nlanguage: en\n"
                                                "timesignature: 4\n</think>")
    blocked = set(range(V)) - finite(machine.constrain(torch.zeros(V)))
    assert blocked == set(range(FIRST_CODE, FIRST_CODE + 64000))
    machine.advance(ids_of(official, "Hello")[0])
    assert not machine.done
    machine.advance(EOS)
    assert machine.done


def test_genres_ends_when_a_newline_is_the_top_choice(vocab, official):
    machine = MetasMachine(vocab, {"bpm": "90", "duration": "30"}, skip=("caption",), after_think="text")
    while machine.next_forced() is not None:
        machine.advance(machine.next_forced())
    assert (machine.stage, machine.field) == ("value", "genres")
    assert torch.isneginf(machine.constrain(favour(NEWLINE))[NEWLINE])  # an empty genres cannot end
    machine.advance(ids_of(official, "Ġpop")[0])
    assert torch.isfinite(machine.constrain(favour(5000))).all()  # free while the newline is not on top
    assert finite(machine.constrain(favour(NEWLINE))) == {NEWLINE}
    machine.advance(NEWLINE)
    forced = []
    while machine.stage == "name":
        forced.append(machine.next_forced())
        machine.advance(forced[-1])
    assert forced == vocab.names["keyscale"]  # the whole name (upstream would force "eyscale:")


# ------------------------------------------------------------------------------------------------ sampling


def test_sampling_filters_and_draws_by_inverse_cdf():
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = probs.log()[None].repeat(2000, 1)
    grid = (torch.arange(2000) + 0.5) / 2000

    def reachable(**kw):
        return set(sample(logits, grid, 1.0, **kw).tolist())

    assert reachable() == {0, 1, 2, 3, 4}
    assert reachable(top_k=3) == {0, 1, 2}
    assert reachable(top_p=0.6) == {0, 1}  # the token that crosses p is kept
    assert reachable(top_p=0.75) == {0, 1, 2}
    assert reachable(min_p=0.25) == {0, 1, 2}  # p >= 0.125
    # Temperature after the filters: kept {0, 1} drawn with weights 0.5^(1/T) : 0.2^(1/T).
    drawn = sample(logits, grid, 0.5, top_p=0.6)
    share = (drawn == 0).float().mean().item()
    assert abs(share - 0.25 / (0.25 + 0.04)) < 1e-3
    # Shuffled vocabulary order: the same token for the same uniform.
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(perm[sample(logits[:, perm], grid, 0.7)], sample(logits, grid, 0.7))
    assert torch.equal(sample(logits, grid, 0.0), torch.zeros(2000, dtype=torch.long))  # greedy


def test_cfg_is_computed_in_float32():
    cond = torch.tensor([[1.0, 2.0, -1.0]], dtype=torch.bfloat16)
    uncond = torch.tensor([[0.5, 3.0, -1.0]], dtype=torch.bfloat16)
    out = cfg_combine(cond, uncond, 2.0)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[1.5, 1.0, -1.0]]))


# ------------------------------------------------------------------------------------------------ plans


@torch.no_grad()
def test_codes_equal_the_original_cfg_loop_on_transformers(planner, weights, official):
    """Greedy codes mode against the original's pt loop run on transformers: [cond, uncond] left-padded with
    an attention mask, CFG on the audio-code tokens in float32, the chosen token appended to both rows."""
    metas = {"bpm": 120, "duration": 10, "keyscale": "C major", "timesignature": "4"}
    plan = planner.plan("calm piano", "[verse]\nhello", mode="codes", metas=metas, temperature=0.0)
    assert len(plan.codes) == 50 and plan.metas_text == ""
    model = hf_reference_lm(weights)
    official.padding_side = "left"
    batch = official([codes_prompt("calm piano", "[verse]\nhello", format_cot(metas)),
                      unconditional_codes_prompt()], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = model(input_ids=ids, attention_mask=mask, use_cache=True)
    expected = []
    for step in range(50):
        logits = out.logits[:, -1, FIRST_CODE: FIRST_CODE + 64000].float()
        code = int((logits[1] + 2.0 * (logits[0] - logits[1])).argmax())
        expected.append(code)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        out = model(input_ids=torch.tensor([[FIRST_CODE + code]] * 2), attention_mask=mask,
                    cache=out.cache, use_cache=True)
    assert plan.codes == expected


def test_thinking_on_a_random_lm_gives_valid_metas_and_exact_code_count(planner):
    plan = planner.plan("dreamy synthwave", "[chorus]\nneon lights", temperature=0.0, seed=3)
    assert BPM_MIN <= plan.bpm <= BPM_MAX
    assert plan.keyscale in KEYSCALES and plan.language in VALID_LANGUAGES
    assert plan.timesignature in TIME_SIGNATURES
    assert plan.duration in (10.0, 11.0, 12.0)  # max_duration=12 for the test planner
    assert len(plan.codes) == int(plan.duration * 5)
    assert all(0 <= c < 64000 for c in plan.codes)
    assert plan.metas_text.startswith("<think>\nbpm: ")
    assert plan.cot == format_cot(parse_metas(plan.metas_text + "</think>"))
    assert plan.caption == parse_metas(plan.metas_text + "</think>")["caption"]


def test_given_metas_are_kept_and_four_given_skip_the_thinking(planner):
    plan = planner.plan("rock", "", metas={"bpm": 87, "keyscale": "F# minor", "duration": 10.5,
                                           "language": "unknown"}, temperature=0.0, rewrite_caption=False)
    assert (plan.bpm, plan.keyscale, plan.duration) == (87, "F# minor", 10.5)
    assert "bpm: 87\n" in plan.metas_text and "keyscale: F# minor\n" in plan.metas_text
    assert "duration: 10\n" in plan.metas_text and "caption:" not in plan.metas_text
    assert plan.caption is None and len(plan.codes) == 52  # int(10.5 * 5)
    four = {"bpm": 100, "duration": 10, "keyscale": "D major", "timesignature": "3/4"}
    plan = planner.plan("rock", "", metas=four, mode="think", temperature=0.0)
    assert plan.metas_text == "" and plan.cot == "<think>\nbpm: 100\nduration: 10\nkeyscale: D major\n" \
                                                 "timesignature: 3\n</think>"
    # The planner trusts what planning.plan_request hands over from a checked request; the request refuses the
    # values (tests/test_bad_inputs.py::test_v18_the_request_refuses_what_the_sampler_and_planner_checked_again).
    with pytest.raises(AssertionError, match="'codes' writes codes for a duration"):
        planner.plan("rock", "", mode="codes", metas={"bpm": 100})
    with pytest.raises(AssertionError, match="fast"):
        planner.plan("rock", "", mode="fast")
    for duration in (0.1, 601):
        with pytest.raises(AssertionError, match=str(duration)):
            planner.plan("rock", "", mode="codes", metas={"duration": duration})
    with pytest.raises(AssertionError, match="unknown metas field 'tempo'"):
        planner.plan("rock", "", metas={"tempo": 120})


def test_same_seed_same_plan(planner):
    options = dict(mode="codes", metas={"duration": 10, "bpm": 90}, temperature=0.85, top_p=0.9)
    first = planner.plan("jazz", "la", seed=7, **options)
    assert planner.plan("jazz", "la", seed=7, **options) == first
    assert planner.plan("jazz", "la", seed=8, **options).codes != first.codes
    assert planner.plan("jazz", "la", seed=7, cfg_scale=1.0, **options).codes != first.codes  # CFG matters


def test_a_batch_shares_the_thinking_and_has_its_own_codes(planner):
    plans = planner.plan_batch("folk", "[verse]\nhome", seeds=[1, 2, 3], temperature=0.85)
    assert len({p.metas_text for p in plans}) == 1 and len({p.cot for p in plans}) == 1
    assert [p.seed for p in plans] == [1, 2, 3]
    assert all(len(p.codes) == int(p.duration * 5) for p in plans)
    assert len({tuple(p.codes) for p in plans}) == 3
    single = planner.plan("folk", "[verse]\nhome", seed=1, temperature=0.85)
    assert single.metas_text == plans[0].metas_text


def test_progress_and_cancel(planner):
    calls = []
    planner.plan("x", "", mode="codes", metas={"duration": 10}, on_token=lambda *a: calls.append(a))
    assert calls == [("codes", i, 50) for i in range(1, 51)]
    seen = []

    def cancel_after_five():
        seen.append(1)
        return len(seen) > 5

    with pytest.raises(GenerationCancelled, match="codes phase after 5"):
        planner.plan("x", "", mode="codes", metas={"duration": 10}, should_cancel=cancel_after_five)


# ------------------------------------------------------------------------------------------------ scripted LM


class ScriptedLM:
    """Stands in for QwenLM: whatever it is fed, it wants the next token of a script (then EOS), and records the
    batches it is given. Lets the text modes run to their end deterministically."""

    def __init__(self, real, prompt_length: int, script: list[int]):
        self.config, self.device = real.config, real.device
        self.prompt_length, self.script, self.batches = prompt_length, script, []

    def setup_cache(self, batch, length, key_valid=None):
        self.valid = key_valid

    def release_cache(self):
        pass

    def prefill(self, tokens, start=0, logit_rows=None, last_only=True, rows=slice(None)):
        self.batches.append((tokens.clone(), start, rows))
        done = start + tokens.shape[1] - self.prompt_length
        wanted = self.script[done] if done < len(self.script) else EOS
        logits = torch.zeros(tokens.shape[0], self.config.vocab_size)
        logits[:, wanted] = 10.0
        return logits if logit_rows is None else logits[:, logit_rows]

    def decode(self, tokens, pos, logit_rows=None, pos_tensor=None):
        return self.prefill(tokens, pos, logit_rows)

    def copy_cache_row(self, source, targets):
        pass


def scripted(planner, prompt, text):
    tok = planner.tokenizer
    lm = ScriptedLM(planner.lm, len(tok.encode(prompt)), tok.encode(text))
    return Planner(lm, tok, max_duration=planner.max_duration, compile=False), lm


def test_simple_mode_reads_caption_metas_and_lyrics(planner):
    from acestep_core.lm_planner.prompts import inspiration_prompt

    text = ("<think>\nbpm: 72\ncaption: A soft Bengali love song.\nduration: 11\ngenres: ballad\n"
            "keyscale: E minor\nlanguage: bn\ntimesignature: 4\n</think>\n\n# Lyric\n[Verse]\nAmi tomake")
    fake, lm = scripted(planner, inspiration_prompt("a soft Bengali love song", False), text)
    result = fake.simple_mode("a soft Bengali love song", language="bn", temperature=0.0)
    assert (result.caption, result.bpm, result.duration, result.keyscale, result.language) == (
        "A soft Bengali love song.", 72, 11, "E minor", "bn")
    assert (result.genres, result.timesignature, result.lyrics) == ("ballad", "4", "[Verse]\nAmi tomake")
    assert result.instrumental is False and result.text.endswith("<|im_end|>")
    fed = planner.tokenizer.decode(lm.batches[0][0][0].tolist())
    assert fed.endswith("instrumental: false<|im_end|>\n<|im_start|>assistant\n<think>\nbpm: ")


def test_understand_and_format(planner):
    from acestep_core.lm_planner.prompts import format_prompt, understand_prompt

    text = ("<think>\nbpm: 128\ncaption: Driving techno.\nduration: 10\ngenres: techno\nkeyscale: A minor\n"
            "language: unknown\ntimesignature: 4\n</think>\n\n[Instrumental]")
    fake, _ = scripted(planner, understand_prompt([1, 2, 3]), text)
    result = fake.understand([1, 2, 3], temperature=0.0)
    assert (result.caption, result.bpm, result.lyrics, result.language) == ("Driving techno.", 128,
                                                                            "[Instrumental]", "unknown")
    # format: a given language is left out of the metas (as upstream), the other given metas are injected.
    text = "<think>\nbpm: 100\ncaption: Latin pop.\nduration: 10\ngenres: pop\nkeyscale: C major\n" \
           "timesignature: 4\n</think>\n\n"
    fake, _ = scripted(planner, format_prompt("Latin pop", "[Verse]\nHola"), text)
    result = fake.format("Latin pop", "[Verse]\nHola", metas={"bpm": 100, "language": "es"}, temperature=0.0)
    assert (result.bpm, result.caption, result.language) == (100, "Latin pop.", None)
    assert result.lyrics == "[Verse]\nHola"  # nothing written after </think>: the input's lyrics


def test_plan_feeds_the_cot_and_both_branches(planner):
    from acestep_core.lm_planner.prompts import metas_prompt

    text = "<think>\nbpm: 90\ncaption: Warm jazz.\nduration: 10\nkeyscale: C major\nlanguage: en\n" \
           "timesignature: 4\n"
    fake, lm = scripted(planner, metas_prompt("jazz", "la"), text)
    plan = fake.plan("jazz", "la", temperature=0.0, negative_prompt="harsh noise")
    assert plan.caption == "Warm jazz." and plan.duration == 10.0 and len(plan.codes) == 50
    # The codes phase: each prompt prefilled on its own cache row, the shorter one from its left-padded start.
    (cond, cond_start, cond_rows), (uncond, uncond_start, uncond_rows) = [b for b in lm.batches if b[1] == 0
                                                                          or b[2] == slice(1, 2)][-2:]
    assert planner.tokenizer.decode(cond[0].tolist()) == codes_prompt("jazz", "la", plan.cot)
    assert planner.tokenizer.decode(uncond[0].tolist()) == unconditional_codes_prompt("harsh noise")
    assert (cond_start, cond_rows, uncond_rows) == (0, slice(0, 1), slice(1, 2))
    assert uncond_start == cond.shape[1] - uncond.shape[1] > 0
    assert not lm.valid[1, :uncond_start].any() and bool(lm.valid[1, uncond_start:].all())  # left padding
    assert bool(lm.valid[0].all())
    step = lm.batches[-1]
    assert step[0].shape == (2, 1) and step[0][0, 0] == step[0][1, 0]  # one code, fed to both branches
    assert plan.cot == ("<think>\nbpm: 90\ncaption: Warm jazz.\nduration: 10\nkeyscale: C major\nlanguage: en\n"
                        "timesignature: 4\n</think>")


class EosAtLM(ScriptedLM):
    """Codes phase stand-in: every row wants code 5, until song ``r`` (cond row r) wants EOS from step stop[r]."""

    def __init__(self, real, stops):
        super().__init__(real, 0, [])
        self.stops, self.step = stops, 0

    def prefill(self, tokens, start=0, logit_rows=None, last_only=True, rows=slice(None)):
        logits = torch.zeros(tokens.shape[0], self.config.vocab_size)
        logits[:, FIRST_CODE + 5] = 5.0
        if rows == slice(None):  # a decode step on all rows: [cond x n, uncond x n]
            self.step += 1
            for song, stop in enumerate(self.stops):
                if self.step >= stop:
                    logits[song, EOS] = 20.0
        return logits


def test_without_a_duration_each_song_ends_at_its_eos(planner):
    lm = EosAtLM(planner.lm, stops=[3, 6])
    fake = Planner(lm, planner.tokenizer, compile=False)
    codes = fake._generate_codes("cond", "uncond", None, [1, 2], 2.0, Sampling(temperature=0.0), None, None,
                                 max_codes=40)
    assert codes == [[5, 5, 5], [5] * 6]
    lm = EosAtLM(planner.lm, stops=[1000, 1000])
    codes = Planner(lm, planner.tokenizer, compile=False)._generate_codes(
        "cond", None, None, [1], 1.0, Sampling(temperature=0.0), None, None, max_codes=40)
    assert codes == [[5] * 40]  # no EOS: stops at the longest duration
