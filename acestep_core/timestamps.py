"""Lyric timestamps: when each sung line (and word) of a generated song starts and ends, written as LRC or WebVTT.

The method is the official app's (``lyric_timestamp.py`` and ``scoring/dit_alignment.py`` upstream): the finished
latents are noised back to the last sampling step (t = 1/steps, fixed seed 42) and run once more through the DiT;
a few cross-attention heads that follow the singing ({layer: heads}, ``LYRIC_ALIGNMENT_HEADS`` or the config's
``lyric_alignment_layers_config``) give a lyric-token × frame map. The map is cleaned (row × column softmax
consensus, row and column medians taken off twice, squared, z-scored, averaged over the heads), a monotonic path
through it is found by dynamic time warping, and each token gets the first and last frame the path gives it. Tokens
are grouped into lines at newlines; section tags such as ``[Verse]`` and blank lines are not sung lines and are left
out (the app keeps them in its LRC), and each line is split into words where the tokenizer marks word starts.

Capturing the attention adds nothing to sampling: the maps come from hooks on the DiT's cross-attention modules,
installed for the extra pass only and removed after it; the pass stops after the last layer it needs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .constants import (
    ENDOFTEXT_ID, LYRIC_ALIGNMENT_HEADS, LYRIC_ALIGNMENT_SEED, LYRIC_ALIGNMENT_SUPPRESSION, LYRICS_PROMPT,
)

SECTION_TAG = re.compile(r"^\[[^\[\]]*\]$")  # a whole line in brackets: [Verse 1], [Chorus], [Instrumental]
# Scripts written without spaces between words: each of their tokens is a word of its own.
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True)
class TimedText:
    text: str
    start: float  # seconds from the start of the song
    end: float


@dataclass(frozen=True)
class LyricLine:
    text: str
    start: float
    end: float
    words: tuple[TimedText, ...] = ()


# ------------------------------------------------------------------ which heads, which tokens


def alignment_heads(configured: Mapping | None, layers: int, heads: int) -> dict[int, tuple[int, ...]]:
    """{layer: heads} to read: ``configured`` (a config.json's ``lyric_alignment_layers_config``) or the 2B
    default, keeping only the layers and heads this DiT has (as the app does). Empty when none of them exists."""
    chosen = LYRIC_ALIGNMENT_HEADS if not configured else configured
    kept = {int(layer): tuple(int(h) for h in hs if 0 <= int(h) < heads) for layer, hs in chosen.items()}
    return {layer: hs for layer, hs in sorted(kept.items()) if 0 <= layer < layers and hs}


def lyric_token_span(encode_plain: Callable[[str], list[int]], lyric_ids: Sequence[int], language: str) -> tuple[int, int]:
    """[start, end) of the lyrics themselves in the lyrics-prompt token ids: after the "# Languages … # Lyric"
    header (its length as the header alone tokenizes, as the app counts it) and before the first <|endoftext|>."""
    header = LYRICS_PROMPT.split("{lyrics}")[0].format(language=language)
    start = len(encode_plain(header))
    ids = list(lyric_ids)
    end = ids.index(ENDOFTEXT_ID) if ENDOFTEXT_ID in ids else len(ids)
    return start, max(start, end)


def has_sung_lines(lyrics: str) -> bool:
    """Whether ``lyrics`` has a line that is neither blank nor a section tag (else there is nothing to align)."""
    return any(line.strip() and not SECTION_TAG.match(line.strip()) for line in lyrics.splitlines())


# ------------------------------------------------------------------ the map → a monotonic path


def _median(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The 0.5 quantile along ``dim`` (the mean of the two middle values for an even count, by linear
    interpolation as torch.quantile does), kept as a size-1 dim; sort-based, so it has no input size limit."""
    n = x.shape[dim]
    s = x.sort(dim=dim).values
    lo = s.narrow(dim, (n - 1) // 2, 1)
    return lo if n % 2 else torch.lerp(lo, s.narrow(dim, n // 2, 1), 0.5)


def consensus_scores(maps: torch.Tensor, suppression: float = LYRIC_ALIGNMENT_SUPPRESSION) -> torch.Tensor:
    """Per-head attention maps [H, tokens, frames] → one alignment score map [tokens, frames] (float32, higher =
    the token is sung in that frame): where a token's softmax over frames and a frame's softmax over tokens agree,
    minus ``suppression`` × the row medians and then the column medians (clipped at 0), squared, z-scored over all
    heads together, averaged over the heads."""
    w = maps.float()
    p = torch.softmax(w, dim=-1) * torch.softmax(w, dim=-2)
    p = torch.relu(p - suppression * _median(p, -1))
    p = torch.relu(p - suppression * _median(p, -2))
    p = p**2
    std, mean = torch.std_mean(p, unbiased=False)
    return ((p - mean) / (std + 1e-9)).mean(dim=0)


def dtw_path(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through ``cost`` [N, M] from (0, 0) to (N-1, M-1), as (rows, cols) index arrays.

    Steps are diagonal, down (next row, same column) or right (same row, next column). Ties go as in the app's
    DTW: diagonal only when strictly cheapest, then down when strictly cheapest, else right; costs accumulate in
    float64 (the app's numba-compiled DTW promotes its float32 table to float64). Cells on one anti-diagonal do not
    depend on each other, so each anti-diagonal is one vector step.
    """
    x = np.asarray(cost, dtype=np.float64)
    n, m = x.shape
    total = np.full((n + 1, m + 1), np.inf)
    total[0, 0] = 0
    move = np.full((n + 1, m + 1), 2, dtype=np.int8)
    for k in range(2, n + m + 1):
        i = np.arange(max(1, k - m), min(n, k - 1) + 1)
        j = k - i
        diag, down, right = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        step = np.where((diag < down) & (diag < right), 0, np.where((down < diag) & (down < right), 1, 2))
        best = np.choose(step, (diag, down, right))
        total[i, j] = x[i - 1, j - 1] + best
        move[i, j] = step
    move[0, :] = 2
    move[:, 0] = 1
    rows, cols = [], []
    i, j = n, m
    while i > 0 or j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        step = move[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return np.array(rows[::-1]), np.array(cols[::-1])


def token_times(scores: np.ndarray, seconds: float) -> list[tuple[float, float]]:
    """(start, end) in seconds of each token (row) of a score map [tokens, frames] spanning ``seconds``: the first
    and last frame the path gives it. A token the path skips gets a zero-length span at the previous token's end."""
    rows, cols = dtw_path(-np.asarray(scores, dtype=np.float64))
    per_frame = seconds / scores.shape[-1]
    times: list[tuple[float, float]] = []
    for token in range(scores.shape[0]):
        frames = cols[rows == token]
        if frames.size:
            # the path may run along the border column -1 at the start (a degenerate map): clamp to 0
            start, end = max(0.0, float(frames[0] * per_frame)), max(0.0, float(frames[-1] * per_frame))
        else:
            start = end = times[-1][1] if times else 0.0
        times.append((start, max(start, end)))
    return times


# ------------------------------------------------------------------ tokens → lines and words


def token_texts(decode: Callable[[list[int]], str], ids: Sequence[int]) -> list[str]:
    """The text each token adds, by decoding growing prefixes: a token that ends inside a multi-byte character
    adds "" and the token that completes it adds the whole character."""
    texts, before = [], b""
    for n in range(1, len(ids) + 1):
        now = decode(list(ids[:n])).encode("utf-8", errors="surrogatepass")
        added = now[len(before):] if len(now) >= len(before) else b""
        try:
            texts.append(added.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append("")
        before = now
    return texts


def _words(decode, ids: list[int], texts: list[str], times: list[tuple[float, float]]) -> tuple[TimedText, ...]:
    """A line's tokens → its words: a word starts at a token that begins with whitespace or follows a
    whitespace-only token; in scripts written without spaces every token is a word. Tokens that end inside a
    character (text "") go with the token that completes it."""
    groups: list[tuple[list[int], bool]] = []  # (token indices, written without spaces)
    pending: list[int] = []
    separated = True
    for k, text in enumerate(texts):
        if text == "":
            pending.append(k)
            continue
        if not text.strip():
            separated, pending = True, []
            continue
        unspaced = bool(_UNSPACED.search(text))
        if separated or text[0].isspace() or unspaced or groups[-1][1]:
            groups.append(([*pending, k], unspaced))
        else:
            groups[-1][0].extend([*pending, k])
        pending, separated = [], False
    return tuple(TimedText(decode([ids[k] for k in g]).strip(), round(times[g[0]][0], 3), round(times[g[-1]][1], 3))
                 for g, _ in groups)


def group_lines(decode: Callable[[list[int]], str], ids: Sequence[int], times: Sequence[tuple[float, float]],
                keep_tags: bool = False) -> list[LyricLine]:
    """Token ids with their (start, end) → sung lines: a line ends with the token that carries its newline (that
    token's time included, as the app does); times are rounded to milliseconds. Blank lines are dropped, and so are
    section tags unless ``keep_tags``."""
    ids, texts = list(ids), token_texts(decode, ids)
    lines: list[LyricLine] = []
    first = 0
    for k in range(len(ids)):
        if "\n" not in texts[k] and k < len(ids) - 1:
            continue
        part = range(first, k + 1)
        first = k + 1
        text = decode([ids[i] for i in part]).strip()
        if not text or (SECTION_TAG.match(text) and not keep_tags):
            continue
        words = _words(decode, [ids[i] for i in part], [texts[i] for i in part], [times[i] for i in part])
        lines.append(LyricLine(text, round(times[part[0]][0], 3), round(times[part[-1]][1], 3), words))
    return lines


def align_lyrics(maps: torch.Tensor, ids: Sequence[int], seconds: float, decode: Callable[[list[int]], str],
                 keep_tags: bool = False) -> list[LyricLine]:
    """Cross-attention maps [H, tokens, frames] of the lyric tokens ``ids`` over a song of ``seconds`` → its sung
    lines with start, end and words."""
    if not len(ids):
        return []
    scores = consensus_scores(maps).numpy()
    return group_lines(decode, ids, token_times(scores, seconds), keep_tags)


# ------------------------------------------------------------------ LRC and WebVTT


def _lrc_time(seconds: float) -> str:
    total = round(max(0.0, seconds), 2)
    minutes = int(total // 60)
    return f"{minutes:02d}:{total - 60 * minutes:05.2f}"


def to_lrc(lines: Sequence[LyricLine], words: bool = False) -> str:
    """``[mm:ss.xx]line`` per line; ``words``: enhanced LRC, each word prefixed with ``<mm:ss.xx>``."""
    out = []
    for line in lines:
        text = " ".join(f"<{_lrc_time(w.start)}>{w.text}" for w in line.words) if words and line.words else line.text
        out.append(f"[{_lrc_time(line.start)}]{text}")
    return "\n".join(out) + ("\n" if out else "")


def _vtt_time(seconds: float) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def to_vtt(lines: Sequence[LyricLine]) -> str:
    """A WebVTT file: one numbered cue per line, from its start to its end."""
    cues = ["WEBVTT", ""]
    for n, line in enumerate(lines, 1):
        text = line.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        cues += [str(n), f"{_vtt_time(line.start)} --> {_vtt_time(line.end)}", text, ""]
    return "\n".join(cues)


# ------------------------------------------------------------------ the extra DiT pass


class _Captured(Exception):
    """Raised by the hook of the last layer needed: the rest of the pass is not computed."""


def cross_attention_maps(dit, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cross_kv, heads: dict,
                         keys: slice) -> torch.Tensor:
    """Run ``dit`` on (x, t, context, cross_kv) and return the cross-attention probabilities of ``heads``
    ({layer: heads}) over the condition slots ``keys``, as [B, heads, keys, frames] (float32). The probabilities
    are the DiT's own (its scaled dot product, softmax in float32, rounded to the model dtype, as an eager attention
    returns them); hooks installed for this call only read them."""
    maps: dict[int, torch.Tensor] = {}
    last = max(heads)

    def hook_for(index: int):
        def hook(attn, args, kwargs):
            chosen = list(heads[index])
            q = attn._heads(args[0], attn.q_proj, attn.q_norm)[:, chosen]
            group = attn.n_heads // attn.n_kv_heads
            k = kwargs["kv"][0][:, [h // group for h in chosen]]
            weights = (q @ k.transpose(-1, -2)) * attn.head_dim**-0.5
            probs = torch.softmax(weights.float(), dim=-1).to(q.dtype)
            maps[index] = probs[..., keys].transpose(-1, -2).float()
            if index == last:
                raise _Captured
        return hook

    handles = [dit.layers[i].cross_attn.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i in heads]
    try:
        dit(x, t, context, cross_kv)
    except _Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat([maps[i] for i in sorted(heads)], dim=1)


def noised_for_alignment(latents: torch.Tensor, steps: int, seed: int = LYRIC_ALIGNMENT_SEED) -> tuple[torch.Tensor, float]:
    """The finished latents [B, T, C] noised back to the last step, t = 1/steps: t·noise + (1 − t)·latents, the
    noise of each item drawn from a CPU generator seeded ``seed`` (the same on every device), as the app draws it
    per song."""
    t = 1.0 / steps
    noise = torch.stack([torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(seed))
                         for _ in range(latents.shape[0])]).to(latents)
    return t * noise + (1.0 - t) * latents, t


@torch.no_grad()
def lyric_attention(model, condition: torch.Tensor, context: torch.Tensor, latents: torch.Tensor, steps: int,
                    keys: slice) -> torch.Tensor:
    """The alignment heads' attention [B, H, keys, frames] of one extra DiT pass over the finished ``latents``
    with the packed ``condition`` [B, S, D] and DiT ``context`` [B, T, 2C] the song was made with."""
    cfg = model.config
    heads = alignment_heads(cfg.lyric_alignment_layers_config, cfg.num_hidden_layers, cfg.num_attention_heads)
    if not heads:
        raise ValueError(f"lyric timestamps: none of the alignment heads {dict(LYRIC_ALIGNMENT_HEADS)} exists in this "
                         f"DiT ({cfg.num_hidden_layers} layers × {cfg.num_attention_heads} heads); its config.json "
                         "must name them (lyric_alignment_layers_config)")
    dtype = model.dtype
    x, t = noised_for_alignment(latents.to(dtype), steps)
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=dtype)
    dit = model.decoder
    return cross_attention_maps(dit, x, tt, context.to(dtype), dit.cross_kv(condition.to(dtype)), heads, keys)


def time_lyrics(model, tokenizer, lyrics_prompt_ids: Sequence[int], language: str, condition: torch.Tensor,
                context: torch.Tensor, latents: torch.Tensor, steps: int, seconds: float,
                keep_tags: bool = False) -> list[list[LyricLine]]:
    """Sung lines of each song of a batch: ``latents`` [B, T, C] made with ``condition``/``context`` in ``steps``
    steps from the lyrics prompt tokenized as ``lyrics_prompt_ids`` (a ``TextTokenizer`` for decoding)."""
    plain = lambda text: tokenizer.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    decode = lambda ids: tokenizer.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    start, end = lyric_token_span(plain, lyrics_prompt_ids, language)
    ids = list(lyrics_prompt_ids)[start:end]
    if not has_sung_lines(decode(ids)):
        return [[] for _ in range(latents.shape[0])]
    maps = lyric_attention(model, condition, context, latents, steps, slice(start, end)).cpu()
    return [align_lyrics(m, ids, seconds, decode, keep_tags) for m in maps]
