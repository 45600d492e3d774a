"""Constrained decoding of the metas (the LM's "thinking") as a small state machine.

The LM writes ``<think>\\n`` and then one ``name: value\\n`` line per field in the order of LM_METAS_FIELDS. The
machine forces the fixed text (tags, field names), injects the fields the user gave verbatim, lets numbers and
choices follow only prefix trees of valid values (bpm 30–300, duration 10–max, time signature 2/3/4/6, the key
and language lists), and lets caption and genres be free text within limits. Behaviour follows upstream's
``MetadataConstrainedLogitsProcessor`` (6d467e4); the differences are listed in ``MetasMachine``'s docstring.

Per step the caller asks ``next_forced()`` (a token decided without logits: it can skip sampling and feed
several such tokens in one forward), else ``constrain(logits)`` (the logits with disallowed tokens at -inf),
samples, and reports the token with ``advance``. Allowed sets are tensors built once per tokenizer and device.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Collection, Mapping

import torch

from ..constants import (
    AUDIO_CODE_FIRST_ID,
    BPM_MAX,
    BPM_MIN,
    CODEBOOK_SIZE,
    DURATION_MAX,
    DURATION_MIN,
    KEYSCALES,
    LM_CAPTION_MAX_TOKENS,
    LM_EOS_ID,
    LM_FIELD_NAME_MAX_TOKENS,
    LM_METAS_FIELDS,
    LM_PAD_ID,
    TIME_SIGNATURES,
    VALID_LANGUAGES,
)
from ..models.lm_tokenizer import LMTokenizer

CHOICE_FIELDS = ("bpm", "duration", "keyscale", "language", "timesignature")  # values from a prefix tree
# Fields a free-written name after the caption may jump to (upstream maps these straight to their value).
_JUMP_FIELDS = ("duration", "genres", "keyscale", "language", "timesignature")


def single_token_runs(tokenizer: LMTokenizer, text: str) -> list[int]:
    """How the original forces a fixed string: repeatedly the longest prefix of what is left that encodes to a
    single token ("bpm:" becomes "bp" "m" ":", not the tokenizer's own "b" "pm" ":")."""
    out, pos = [], 0
    while pos < len(text):
        rest = text[pos:]
        for end in range(len(rest), 0, -1):
            ids = tokenizer.encode_plain(rest[:end])
            if len(ids) == 1:
                break
        else:
            raise ValueError(f"cannot force {rest!r}: no prefix is a single token")
        out.append(ids[0])
        pos += len(tokenizer.token_text(ids[0])) or end
    return out


def value_tree(tokenizer: LMTokenizer, name: str, values, newline: int) -> dict[tuple, list[int]]:
    """Prefix tree of the token sequences of " value" as they tokenize after "name:" in "name: value": maps each
    prefix to the tokens that may follow it (newline once a value is complete)."""
    context = tokenizer.encode_plain(f"{name}:")
    tree: dict[tuple, set] = {}
    for value in values:
        ids = tokenizer.encode_plain(f"{name}: {value}")
        if ids[: len(context)] != context:
            continue  # the value merged into the name's tokens: cannot be produced after a forced "name:"
        ids = ids[len(context):]
        for i in range(len(ids) + 1):
            tree.setdefault(tuple(ids[:i]), set()).add(ids[i] if i < len(ids) else newline)
    return {prefix: sorted(tokens) for prefix, tokens in tree.items()}


@dataclass
class MetasVocab:
    """Everything token-level the machine needs, computed once per (tokenizer, device, max duration)."""

    tokenizer: LMTokenizer
    device: torch.device
    vocab_size: int
    newline: int
    stop_ids: frozenset
    think_open: list[int]
    think_close: list[int]
    names: dict[str, list[int]]
    trees: dict[str, dict[tuple, list[int]]]
    allowed: dict[tuple[str, tuple], torch.Tensor] = field(default_factory=dict)
    code_block: torch.Tensor | None = None  # True at the valid audio-code tokens
    caption_block: torch.Tensor | None = None  # codes + backtick

    @classmethod
    def build(cls, tokenizer: LMTokenizer, vocab_size: int, device, max_duration: int = DURATION_MAX) -> "MetasVocab":
        assert DURATION_MIN <= max_duration <= DURATION_MAX, max_duration  # checked by AceStepPipeline.load_lm
        device = torch.device(device)
        newline = tokenizer.encode_plain("\n")[-1]
        values = {
            "bpm": [str(v) for v in range(BPM_MIN, BPM_MAX + 1)],
            "duration": [str(v) for v in range(DURATION_MIN, max_duration + 1)],
            "keyscale": list(KEYSCALES),
            "language": list(VALID_LANGUAGES),
            "timesignature": list(TIME_SIGNATURES),
        }
        trees = {name: value_tree(tokenizer, name, vals, newline) for name, vals in values.items()}
        vocab = cls(
            tokenizer=tokenizer, device=device, vocab_size=vocab_size, newline=newline,
            stop_ids=frozenset((LM_EOS_ID, LM_PAD_ID)),
            think_open=single_token_runs(tokenizer, "<think>") + single_token_runs(tokenizer, "\n"),
            think_close=single_token_runs(tokenizer, "</think>"),
            names={name: single_token_runs(tokenizer, f"{name}:") for name in LM_METAS_FIELDS},
            trees=trees,
        )
        for name, tree in trees.items():
            for prefix, tokens in tree.items():
                vocab.allowed[name, prefix] = torch.tensor(tokens, dtype=torch.long, device=device)
        codes = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        codes[AUDIO_CODE_FIRST_ID: AUDIO_CODE_FIRST_ID + CODEBOOK_SIZE] = True
        vocab.code_block = codes
        vocab.caption_block = codes.clone()
        vocab.caption_block[tokenizer.encode_plain("`")[-1]] = True
        return vocab

    def inject(self, value: str) -> list[int]:
        """The tokens of a user-given value as the original injects it: " {value}\\n" tokenized as a whole."""
        return self.tokenizer.encode_plain(f" {value}\n")


def _only(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    out = torch.full_like(logits, float("-inf"))
    out[allowed] = logits[allowed]
    return out


class MetasMachine:
    """The state of one constrained metas generation.

    ``given``: field → value to inject verbatim; ``skip``: fields left out entirely (upstream's skip_caption /
    skip_language / skip_genres); ``after_think``: "stop" ends the generation where "</think>" would come (the
    plan's thinking phase: the original forces EOS there), "text" writes "</think>" and continues with free
    text in which audio codes are blocked (lyrics in simple mode, understanding and format).

    Differences from upstream, all at the edges of its behaviour:
      * the genres field ends on a newline that is the top choice, as upstream does without its (unpublished)
        genres vocabulary, but the following field name is then written in full (upstream counts that newline
        into the next name and forces e.g. "eyscale:");
      * genres is capped like the caption (LM_CAPTION_MAX_TOKENS), and a field name written freely after the
        caption ends after LM_FIELD_NAME_MAX_TOKENS tokens without ':' (upstream has no cap on either);
      * when the name written after the caption is not a field (or hits that cap), the next field is forced on a
        new line (upstream forces it right after the unknown name, on the same line, where it cannot be parsed).
    """

    def __init__(self, vocab: MetasVocab, given: Mapping[str, object] | None = None,
                 skip: Collection[str] = ("genres",), after_think: str = "stop"):
        assert after_think in ("stop", "text"), after_think
        self.vocab = vocab
        self.given = {k: str(v) for k, v in (given or {}).items() if v is not None}
        assert set(self.given) <= set(LM_METAS_FIELDS), f"unknown metas fields {sorted(self.given)}"
        self.fields = [f for f in LM_METAS_FIELDS if f not in set(skip) or f in self.given]
        self.after_think = after_think
        self.stage = "open"
        self.field: str | None = None
        self.queue = deque(vocab.think_open)
        self._reset_value()

    # ----------------------------------------------------------------------------------------------- state

    @property
    def done(self) -> bool:
        return self.stage == "done"

    def _reset_value(self):
        self.prefix: list[int] = []  # tokens of a choice value so far
        self.text = ""  # text of a caption / genres value so far
        self.count = 0  # tokens of a caption / genres value so far
        self.after_newline = False  # caption: the last token held a newline
        self.ending = False  # caption: the LM is writing the next field's name
        self.name_text = ""
        self.name_count = 0

    def _next_field(self, current: str | None) -> str | None:
        start = 0 if current is None else LM_METAS_FIELDS.index(current) + 1
        for name in LM_METAS_FIELDS[start:]:
            if name in self.fields:
                return name
        return None

    def _enter_name(self, name: str | None, on_new_line: bool = False):
        self._reset_value()
        if name is None:
            if self.after_think == "stop":
                self.stage, self.field = "done", None
            else:
                self.stage, self.field = "close", None
                self.queue = deque(self.vocab.think_close)
            return
        self.stage, self.field = "name", name
        self.queue = deque(([self.vocab.newline] if on_new_line else []) + self.vocab.names[name])

    def _enter_value(self, name: str):
        self._reset_value()
        self.stage, self.field = "value", name
        if name in self.given:
            self.queue = deque(self.vocab.inject(self.given[name]))

    def _segment_done(self):
        """The forced tokens of the current stage are all out."""
        if self.stage == "open":
            self._enter_name(self._next_field(None))
        elif self.stage == "name":
            self._enter_value(self.field)
        elif self.stage == "value":  # an injected value, newline included
            self._enter_name(self._next_field(self.field))
        elif self.stage == "close":
            self.stage = "text"

    # ----------------------------------------------------------------------------------------------- steps

    def next_forced(self) -> int | None:
        """The next token when it does not depend on the logits, else None."""
        if self.stage in ("done", "text"):
            return None
        if self.queue:
            return self.queue[0]
        if self.stage != "value":
            return None
        if self.field in CHOICE_FIELDS:
            allowed = self.vocab.trees[self.field].get(tuple(self.prefix), [self.vocab.newline])
            return allowed[0] if len(allowed) == 1 else None
        limit_reached = self.count >= LM_CAPTION_MAX_TOKENS
        if self.field == "caption" and limit_reached and not (self.after_newline or self.ending):
            return self.vocab.newline
        if self.field == "genres" and limit_reached:
            return self.vocab.newline
        return None

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [V] (float) with the tokens the current state forbids at -inf. Some decisions read the
        logits themselves (which language; whether the caption goes on after a newline; whether genres ends)."""
        v = self.vocab
        if self.stage == "text":
            return logits.masked_fill(v.code_block, float("-inf"))
        if self.stage != "value" or self.next_forced() is not None:
            raise RuntimeError(f"constrain() called in a forced state ({self.stage}, {self.field})")
        if self.field in CHOICE_FIELDS:
            allowed = v.allowed.get((self.field, tuple(self.prefix)))
            if self.field == "language" and not self.prefix:
                # The original picks the most likely language's first token outright.
                allowed = allowed[logits[allowed].argmax()].reshape(1)
            return _only(logits, allowed)
        if self.field == "caption":
            return self._constrain_caption(logits)
        return self._constrain_genres(logits)

    def _constrain_caption(self, logits: torch.Tensor) -> torch.Tensor:
        v = self.vocab
        if self.after_newline:
            self.after_newline = False
            top = v.tokenizer.token_text(int(logits.argmax()))
            if top and top[0] not in " \t":  # an unindented line: the LM starts the next field's name
                self.ending, self.name_text, self.name_count = True, "", 0
        if self.ending:
            return logits
        if self.count >= LM_CAPTION_MAX_TOKENS:
            return _only(logits, torch.tensor([v.newline], device=logits.device))
        return logits.masked_fill(v.caption_block, float("-inf"))

    def _constrain_genres(self, logits: torch.Tensor) -> torch.Tensor:
        newline = self.vocab.newline
        if not self.text.strip():
            logits = logits.clone()
            logits[newline] = float("-inf")
            return logits
        others = torch.cat([logits[:newline], logits[newline + 1:]])
        if logits[newline] > others.max():
            return _only(logits, torch.tensor([newline], device=logits.device))
        return logits

    def advance(self, token: int) -> None:
        """Record the token that was generated (forced or sampled)."""
        if self.done:
            raise RuntimeError("the metas generation is already finished")
        if self.queue:
            if token != self.queue[0]:
                raise ValueError(f"token {token} given where the machine forces {self.queue[0]}")
            self.queue.popleft()
            if not self.queue:
                self._segment_done()
            return
        if token in self.vocab.stop_ids:
            self.stage = "done"
            return
        if self.stage != "value":
            return  # free text after </think>
        if self.field in CHOICE_FIELDS:
            if token == self.vocab.newline:
                self._enter_name(self._next_field(self.field))
            else:
                self.prefix.append(token)
        elif self.field == "caption":
            self._advance_caption(token)
        elif token == self.vocab.newline:  # genres
            self._enter_name(self._next_field(self.field))
        else:
            self.text += self.vocab.tokenizer.token_text(token)
            self.count += 1

    def _advance_caption(self, token: int):
        text = self.vocab.tokenizer.token_text(token)
        self.count += 1
        self.text += text
        self.after_newline = "\n" in text
        if not self.ending:
            return
        self.name_text += text
        self.name_count += 1
        if ":" in text:
            name = self.name_text.strip().rstrip(":").strip().lower()
            if name in _JUMP_FIELDS:
                self._enter_value(name)
            else:
                self._enter_name(self._next_field("caption"), on_new_line=True)
        elif self.name_count >= LM_FIELD_NAME_MAX_TOKENS:
            self._enter_name(self._next_field("caption"), on_new_line=True)
