"""The 5 Hz LM's tokenizer: Qwen3's byte-level BPE plus the ``<|audio_code_N|>`` added tokens (id 151669 + N)."""
from __future__ import annotations

from functools import lru_cache

from tokenizers import AddedToken, Tokenizer

from ..constants import AUDIO_CODE_FIRST_ID, AUDIO_CODE_TOKEN


def add_audio_code_tokens(tokenizer: Tokenizer, count: int) -> None:
    """Append ``<|audio_code_0|>`` … ``<|audio_code_{count-1}|>`` as added tokens, as the official LM tokenizer has
    them (the Comfy-Org LM files ship no tokenizer; the bundled Qwen3 one stops at id 151668)."""
    if tokenizer.get_vocab_size(with_added_tokens=True) != AUDIO_CODE_FIRST_ID:
        raise ValueError(f"expected the plain Qwen3 tokenizer ({AUDIO_CODE_FIRST_ID} ids) before adding audio codes")
    tokenizer.add_tokens([AddedToken(AUDIO_CODE_TOKEN.format(i), normalized=False) for i in range(count)])


class LMTokenizer:
    """Encodes prompts and decodes generations the way the original calls its transformers tokenizer:
    ``encode`` = ``tokenizer(text)`` (the file's post-processor applies; Qwen's adds nothing), ``encode_plain``
    = ``encode(text, add_special_tokens=False)`` (what the original's state machine uses), ``decode`` keeps
    special tokens."""

    def __init__(self, tokenizer: Tokenizer, source: str):
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.source = source
        self.token_text = lru_cache(maxsize=None)(self._token_text)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_plain(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def _token_text(self, token_id: int) -> str:
        """The text of one token on its own (a partial UTF-8 sequence decodes to U+FFFD, as in transformers)."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)
