"""The LM's prompts and the parsing of what it writes, byte for byte as upstream (6d467e4) builds and reads them.

Prompts are the Qwen3 chat template of a system + user conversation with the assistant turn left open; the codes
prompt continues that turn with the chain of thought ("CoT": the metas as sorted YAML in think tags) and "\\n\\n".
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import yaml

from ..constants import (
    AUDIO_CODE_TOKEN,
    LM_CHAT_TURN,
    LM_COT_KEYS,
    LM_COT_SEPARATOR,
    LM_COT_TEMPLATE,
    LM_EMPTY_COT,
    LM_GENERATION_PROMPT,
    LM_INSPIRED_INSTRUCTION,
    LM_INSTRUCTION,
    LM_NO_USER_INPUT,
    LM_REWRITE_INSTRUCTION,
    LM_SYSTEM_CONTENT,
    LM_UNDERSTAND_INSTRUCTION,
    LM_USER_CAPTION_LYRICS,
    LM_USER_FORMAT,
    LM_USER_INSPIRATION,
)


def chat_prompt(instruction: str, user: str) -> str:
    """System "# Instruction" message + user message + the open assistant turn."""
    system = LM_SYSTEM_CONTENT.format(instruction=instruction)
    return (LM_CHAT_TURN.format(role="system", content=system) + LM_CHAT_TURN.format(role="user", content=user)
            + LM_GENERATION_PROMPT)


def metas_prompt(caption: str, lyrics: str) -> str:
    """The thinking phase: the LM continues with "<think>" and writes the metas."""
    return chat_prompt(LM_INSTRUCTION, LM_USER_CAPTION_LYRICS.format(caption=caption, lyrics=lyrics))


def codes_prompt(caption: str, lyrics: str, cot: str) -> str:
    """The conditional codes prompt: the metas prompt continued by the CoT and "\\n\\n"."""
    return metas_prompt(caption, lyrics) + cot + LM_COT_SEPARATOR


def unconditional_codes_prompt(negative_prompt: str = LM_NO_USER_INPUT) -> str:
    """The CFG branch in the training-dropout format: the negative prompt alone (blank → "NO USER INPUT") as the
    user message and an empty CoT."""
    meaningful = bool(negative_prompt and negative_prompt.strip()) and negative_prompt.strip() != LM_NO_USER_INPUT
    user = negative_prompt if meaningful else LM_NO_USER_INPUT
    return chat_prompt(LM_INSTRUCTION, user) + LM_EMPTY_COT + LM_COT_SEPARATOR


def inspiration_prompt(query: str, instrumental: bool) -> str:
    """Simple mode: a short description → caption, metas and lyrics. A blank query becomes "NO USER INPUT"."""
    query = query if query and query.strip() else LM_NO_USER_INPUT
    return chat_prompt(LM_INSPIRED_INSTRUCTION,
                       LM_USER_INSPIRATION.format(query=query, instrumental="true" if instrumental else "false"))


def understand_prompt(codes: Sequence[int]) -> str:
    """Understanding: the audio codes of a song → its metas, caption and lyrics. Without codes the user message
    is "NO USER INPUT" and the LM invents a song (upstream's understand_music)."""
    return chat_prompt(LM_UNDERSTAND_INSTRUCTION, codes_to_text(codes) if len(codes) else LM_NO_USER_INPUT)


def format_prompt(caption: str, lyrics: str) -> str:
    """Format/rewrite: the user's caption and lyrics → a richer caption, metas and formatted lyrics."""
    return chat_prompt(LM_REWRITE_INSTRUCTION, LM_USER_FORMAT.format(caption=caption, lyrics=lyrics))


def codes_to_text(codes: Sequence[int]) -> str:
    return "".join(AUDIO_CODE_TOKEN.format(int(c)) for c in codes)


def format_cot(metas: Mapping[str, object]) -> str:
    """The CoT of the codes prompt: the known keys with a value, as YAML (sorted keys, unicode kept, PyYAML's
    default line width, so long captions wrap). Time signatures "N/4" become "N" and digit strings integers."""
    items = {}
    for key in LM_COT_KEYS:
        value = metas.get(key)
        if value is None:
            continue
        if key == "timesignature" and isinstance(value, str) and value.endswith("/4"):
            value = value.split("/")[0]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        items[key] = value
    body = yaml.dump(items, allow_unicode=True, sort_keys=True).strip() if items else ""
    return LM_COT_TEMPLATE.format(yaml=body)


# --------------------------------------------------------------------------------------------------- reading


def join_caption_lines(caption: str) -> str:
    """A YAML-wrapped caption on one line: stripped non-empty lines joined by single spaces."""
    return " ".join(line.strip() for line in caption.split("\n") if line.strip())


def _typed(key: str, value: str):
    if key in ("bpm", "duration"):
        try:
            return int(value.strip())
        except ValueError:
            return value.strip()
    if key == "caption":
        return join_caption_lines(value)
    return value.strip()


_KNOWN_FIELDS = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def parse_metas(text: str) -> dict:
    """The ``key: value`` fields the LM wrote: inside the think tags when both are there, else everything before
    the first audio code. A line that starts without indentation and holds ':' starts a field, indented lines
    continue it, lines starting with '<' are tags. bpm/duration become ints when they parse."""
    match = _THINK.search(text)
    body = match.group(1).strip() if match else text.split("<|audio_code_")[0].strip()
    fields: dict = {}
    key, lines = None, []

    def close():
        if key in _KNOWN_FIELDS and lines:
            fields[key] = _typed(key, "\n".join(lines))

    for line in body.split("\n"):
        if line.strip().startswith("<"):
            continue
        if line and not line[0].isspace() and ":" in line:
            close()
            name, value = line.split(":", 1)
            key, lines = name.strip().lower(), ([value] if value.strip() else [])
        elif line.startswith((" ", "\t")) and key:
            lines.append(line)
    close()
    return fields


_LYRIC_HEADER = re.compile(r"^#\s*Lyri[c|cs]?\s*\n", re.IGNORECASE)
_STOP_TAIL = re.compile(r"(<\|im_end\|>|<\|endoftext\|>)\s*$")


def extract_lyrics(text: str) -> str:
    """What the LM wrote after "</think>" (understand / simple / format modes), without a leading "# Lyric"
    header and the end-of-turn token."""
    if "</think>" not in text:
        return ""
    after = text.split("</think>", 1)[1].strip()
    after = _LYRIC_HEADER.sub("", after)
    return _STOP_TAIL.sub("", after).strip()
