"""The planner: what the 5 Hz LM adds before the DiT runs, and its two other uses.

``Planner.plan`` ("thinking"): the LM writes the missing metas and a rewritten caption (constrained, no CFG),
then the audio codes of the song (5 per second) with classifier-free guidance against the "NO USER INPUT"
branch. ``simple_mode`` turns a short description into caption, lyrics and metas; ``understand`` describes a
song from its codes; ``format`` rewrites a caption and lyrics. Generation reads top to bottom: build the
prompt, prefill the static KV cache, then one step per token (forced tokens go in together, without sampling).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from ..constants import (
    AUDIO_CODE_FIRST_ID,
    CODEBOOK_SIZE,
    CODES_PER_SECOND,
    DURATION_MAX,
    LM_CFG_SCALE,
    LM_COT_MAX_NEW_TOKENS,
    LM_EOS_ID,
    LM_MIN_P,
    LM_ONE_THREAD_MAX_BYTES,
    LM_NO_LYRICS,
    LM_NO_USER_INPUT,
    LM_TEMPERATURE,
    LM_TEXT_MAX_NEW_TOKENS,
    LM_TOP_K,
    LM_TOP_P,
    LM_UNDERSTAND_TOP_P,
    MAX_AUDIO_CODES,
)
from ..models.lm import QwenLM
from ..models.lm_tokenizer import LMTokenizer
from ..sampling import GenerationCancelled
from .constraints import MetasMachine, MetasVocab
from .prompts import (
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
from .sampling import cfg_combine, sample

MODES = ("codes", "think")
FOUR_METAS = ("bpm", "duration", "keyscale", "timesignature")  # all given: upstream skips the thinking phase

# on_token(phase, tokens_done, tokens_total): phase "metas" (thinking), "codes" or "text" (simple/understand/
# format); the totals of "metas" and "text" are budgets, the LM usually stops earlier.
TokenCallback = Callable[[str, int, int], None]


@dataclass
class Plan:
    """What the LM decided for one song. Metas are the values in the CoT (given by the user or written by the
    LM; None = absent); ``caption`` is the LM's caption (None unless it rewrote it); ``duration`` is the length
    the codes were generated for (the user's, else the LM's)."""

    bpm: int | None
    keyscale: str | None
    timesignature: str | None
    duration: float | None
    language: str | None
    caption: str | None
    codes: list[int]  # FSQ indices 0..63999, int(duration * 5) of them (none when planned with write_codes=False)
    cot: str  # "<think>...</think>" the codes were conditioned on
    metas_text: str  # what the LM wrote while thinking ("" when the metas were all given)
    seed: int


@dataclass
class LMSample:
    """Result of simple mode, understanding and format: a caption, lyrics and metas (None = not written)."""

    caption: str | None
    lyrics: str
    bpm: int | None
    keyscale: str | None
    timesignature: str | None
    duration: int | None
    language: str | None
    genres: str | None
    instrumental: bool | None
    text: str  # everything the LM wrote


@dataclass(frozen=True)
class Sampling:
    temperature: float = LM_TEMPERATURE
    top_p: float = LM_TOP_P
    top_k: int = LM_TOP_K
    min_p: float = LM_MIN_P


def given_metas(metas: Mapping[str, object] | None) -> dict:
    """The user's metas that count as given: bpm/duration > 0, non-blank keyscale/time signature/language other
    than "N/A" (and language other than "unknown"). Values keep their types (duration may be fractional)."""
    out = {}
    for key, value in (metas or {}).items():
        assert key in ("bpm", "duration", "keyscale", "timesignature", "language"), f"unknown metas field {key!r}"
        if value is None:
            continue
        if key in ("bpm", "duration"):
            number = float(value)
            if number > 0:
                out[key] = int(number) if key == "bpm" else number
        else:
            text = str(value).strip()
            if text and text.lower() != "n/a" and not (key == "language" and text.lower() == "unknown"):
                out[key] = text
    return out


def _injected(metas: Mapping[str, object]) -> dict[str, str]:
    """How given metas are written into the LM's text: whole seconds for the duration."""
    return {k: str(int(v)) if k == "duration" else str(v) for k, v in metas.items()}


def _int_or_none(value) -> int | None:
    return value if isinstance(value, int) else None


def decode_step_bytes(config, head_rows: int, element_size: int = 4) -> int:
    """Bytes of weights one decode step reads (every layer, the final norm and ``head_rows`` rows of the head),
    at ``element_size`` bytes per weight."""
    h, q, kv = config.hidden_size, config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    layer = h * (2 * q + 2 * kv) + 3 * h * config.intermediate_size + 2 * h + 2 * config.head_dim
    return (config.num_layers * layer + h + head_rows * h) * element_size


def _small_lm_threads(generate):
    """Runs a generation loop under ``Planner.threads``."""
    @functools.wraps(generate)
    def run(self, *args, **kwargs):
        with self.threads():
            return generate(self, *args, **kwargs)
    return run


class Planner:
    """Runs the LM for plans, simple mode, understanding and format.

    ``max_duration``: the longest duration the LM may choose (upstream: 600 s on large GPUs, less on small ones).
    ``compile``: compile the decode step (None = on CUDA when triton is installed; a failed compilation falls
    back to eager with a warning). ``cuda_graph``: otherwise replay the decode step as a CUDA graph while the LM
    is on a CUDA device (None = whenever not compiled; a failed capture falls back to eager with a warning)."""

    def __init__(self, lm: QwenLM, tokenizer: LMTokenizer, max_duration: int = DURATION_MAX,
                 compile: bool | None = None, cuda_graph: bool | None = None):
        if len(tokenizer) > lm.config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the LM only {lm.config.vocab_size}")
        self.lm = lm
        self.tokenizer = tokenizer
        self.max_duration = max_duration
        n_codes = min(CODEBOOK_SIZE, lm.config.vocab_size - AUDIO_CODE_FIRST_ID)
        self.code_rows = slice(AUDIO_CODE_FIRST_ID, AUDIO_CODE_FIRST_ID + n_codes)
        self._vocabs: dict[str, MetasVocab] = {}
        if compile is None:
            compile = lm.device.type == "cuda" and importlib.util.find_spec("triton") is not None
        self.compiled = compile
        if self.compiled:
            lm.enable_compile()
        if cuda_graph is None:
            cuda_graph = not compile
        if cuda_graph and hasattr(lm, "enable_cuda_graph"):
            lm.enable_cuda_graph()  # used only while the LM is on a CUDA device (the host may move it)
        self.step_bytes = decode_step_bytes(lm.config, n_codes)

    @property
    def keeps_cache(self) -> bool:
        """The KV cache stays between runs while a compiled or captured decode step refers to it."""
        return self.compiled or (getattr(self.lm, "cuda_graphs", None) is not None and self.lm.device.type == "cuda")

    @contextlib.contextmanager
    def threads(self):
        """One CPU thread for the decode loop of a small LM (see ``LM_ONE_THREAD_MAX_BYTES``): its per-token ops
        are too small to share between threads, and each shared op waits for every thread; on a busy machine a
        descheduled thread stalls every op (measured: 2 threads 124-233 ms per code where 1 thread took 15-23)."""
        before = torch.get_num_threads()
        if self.lm.device.type != "cpu" or self.step_bytes > LM_ONE_THREAD_MAX_BYTES or before == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def vocab(self) -> MetasVocab:
        """The state machine's token tables on the LM's current device (the host may move the LM)."""
        key = str(self.lm.device)
        if key not in self._vocabs:
            self._vocabs[key] = MetasVocab.build(self.tokenizer, self.lm.config.vocab_size, self.lm.device,
                                                 self.max_duration)
        return self._vocabs[key]

    # ------------------------------------------------------------------------------------------- plans

    def plan(self, caption: str, lyrics: str, *, seed: int = 0, **options) -> Plan:
        """One song's plan; ``options`` as :meth:`plan_batch`."""
        return self.plan_batch(caption, lyrics, seeds=[seed], **options)[0]

    @torch.inference_mode()
    def plan_batch(
        self,
        caption: str,
        lyrics: str,
        seeds: Sequence[int],
        *,
        mode: str = "think",
        metas: Mapping[str, object] | None = None,
        rewrite_caption: bool = True,
        detect_language: bool = True,
        negative_prompt: str = LM_NO_USER_INPUT,
        cfg_scale: float = LM_CFG_SCALE,
        temperature: float = LM_TEMPERATURE,
        top_p: float = LM_TOP_P,
        top_k: int = LM_TOP_K,
        min_p: float = LM_MIN_P,
        on_token: TokenCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        write_codes: bool = True,
    ) -> list[Plan]:
        """Plans for ``len(seeds)`` songs of one caption and lyrics; they share the thinking (seeded by seeds[0])
        and get their own codes (seeded by their seed), decoded together as one batch.

        ``mode``: "codes" takes ``metas`` as given and writes only the codes (needs a duration); "think" first
        lets the LM write the metas the user left out (bpm, duration, keyscale, timesignature, language), and a
        caption when ``rewrite_caption``, keeping the given ones verbatim. As upstream, with all four of bpm,
        duration, keyscale and timesignature given there is nothing to think about and the caption is kept.
        ``detect_language=False`` leaves the language out unless given. ``cfg_scale`` <= 1 turns CFG off.
        ``write_codes=False`` stops after the thinking (metas and caption only, every plan without codes: upstream's
        "dit" inference type, for songs whose structure comes from elsewhere).

        The inputs are trusted as ``planning.plan_request`` hands them over from a checked request (the LM's
        settings from ``PlanSettings``, the duration from ``Task``); a failed assert is a caller's bug."""
        assert mode in MODES and len(seeds) >= 1, (mode, seeds)
        given = given_metas(metas)
        assert mode == "think" or (write_codes and "duration" in given), "LM mode 'codes' writes codes for a duration"
        duration = given.get("duration")
        assert duration is None or 1 <= int(duration * CODES_PER_SECOND) <= MAX_AUDIO_CODES, duration
        sampling = Sampling(temperature, top_p, top_k, min_p)

        metas_text = ""
        if mode == "think" and not all(k in given for k in FOUR_METAS):
            skip = {"genres"}
            if not rewrite_caption:
                skip.add("caption")
            if not detect_language:
                skip.add("language")
            machine = MetasMachine(self.vocab(), _injected(given), skip, after_think="stop")
            tokens = self._generate_text(metas_prompt(caption, lyrics), machine, sampling, seeds[0],
                                         LM_COT_MAX_NEW_TOKENS, "metas", on_token, should_cancel)
            metas_text = self.tokenizer.decode(tokens)
            # The machine stops where "</think>" would come; closing the tag lets the parser read every field
            # even when stray code tokens sit in a caption (upstream's parser stops at the first one).
            written = parse_metas(metas_text + "</think>")
        else:
            written = {k: int(v) if k == "duration" else v for k, v in given.items() if k in FOUR_METAS}
        cot = format_cot(written)

        if duration is None and isinstance(written.get("duration"), int):
            duration = float(written["duration"])
        n_codes = int(duration * CODES_PER_SECOND) if duration else None
        if write_codes:
            uncond = unconditional_codes_prompt(negative_prompt) if cfg_scale > 1 else None
            codes = self._generate_codes(codes_prompt(caption, lyrics, cot), uncond, n_codes, list(seeds), cfg_scale,
                                         sampling, on_token, should_cancel)
        else:
            codes = [[] for _ in seeds]
        timesignature = written.get("timesignature")
        return [
            Plan(
                bpm=_int_or_none(written.get("bpm")),
                keyscale=written.get("keyscale"),
                timesignature=None if timesignature is None else str(timesignature),
                duration=duration if duration or not write_codes else len(song) / CODES_PER_SECOND,
                language=written.get("language"),
                caption=written.get("caption") if metas_text and rewrite_caption else None,
                codes=song,
                cot=cot,
                metas_text=metas_text,
                seed=int(seed),
            )
            for song, seed in zip(codes, seeds)
        ]

    # ------------------------------------------------------------------------------------------- text modes

    @torch.inference_mode()
    def simple_mode(self, query: str, instrumental: bool = False, language: str | None = None, *, seed: int = 0,
                    temperature: float = LM_TEMPERATURE, top_p: float = LM_TOP_P, top_k: int = LM_TOP_K,
                    min_p: float = LM_MIN_P, on_token: TokenCallback | None = None,
                    should_cancel: Callable[[], bool] | None = None) -> LMSample:
        """A short description ("a soft Bengali love song") → caption, lyrics and metas. ``language`` (if given
        and not "unknown") is written into the metas as the vocal language."""
        given = given_metas({"language": language})
        result = self._describe(inspiration_prompt(query, instrumental), given, (), Sampling(temperature, top_p,
                                top_k, min_p), seed, on_token, should_cancel)
        if not result.lyrics and instrumental:
            result.lyrics = LM_NO_LYRICS
        result.instrumental = instrumental
        return result

    @torch.inference_mode()
    def understand(self, codes: Sequence[int], *, seed: int = 0, temperature: float = LM_TEMPERATURE,
                   top_p: float = LM_UNDERSTAND_TOP_P, top_k: int = LM_TOP_K, min_p: float = LM_MIN_P,
                   on_token: TokenCallback | None = None,
                   should_cancel: Callable[[], bool] | None = None) -> LMSample:
        """A song's 5 Hz codes (e.g. from the audio tokenizer) → caption, lyrics and metas. No codes: the LM
        invents an example song, as upstream does."""
        return self._describe(understand_prompt(codes), {}, (), Sampling(temperature, top_p, top_k, min_p), seed,
                              on_token, should_cancel)

    @torch.inference_mode()
    def format(self, caption: str, lyrics: str, metas: Mapping[str, object] | None = None, *, seed: int = 0,
               temperature: float = LM_TEMPERATURE, top_p: float = LM_TOP_P, top_k: int = LM_TOP_K,
               min_p: float = LM_MIN_P, on_token: TokenCallback | None = None,
               should_cancel: Callable[[], bool] | None = None) -> LMSample:
        """Rewrite a caption and lyrics into a richer caption, metas and formatted lyrics; given ``metas`` are
        kept (as upstream, a given language is not written at all). Lyrics fall back to the input's."""
        caption = caption if caption and caption.strip() else LM_NO_USER_INPUT
        lyrics = lyrics if lyrics and lyrics.strip() else LM_NO_LYRICS
        given = given_metas(metas)
        skip = ("language",) if "language" in given else ()
        given.pop("language", None)
        result = self._describe(format_prompt(caption, lyrics), given, skip, Sampling(temperature, top_p, top_k,
                                min_p), seed, on_token, should_cancel)
        result.lyrics = result.lyrics or lyrics
        return result

    def _describe(self, prompt, given, skip, sampling, seed, on_token, should_cancel) -> LMSample:
        machine = MetasMachine(self.vocab(), _injected(given), skip, after_think="text")
        tokens = self._generate_text(prompt, machine, sampling, seed, LM_TEXT_MAX_NEW_TOKENS, "text", on_token,
                                     should_cancel)
        text = self.tokenizer.decode(tokens)
        fields = parse_metas(text)
        return LMSample(
            caption=fields.get("caption"), lyrics=extract_lyrics(text), bpm=_int_or_none(fields.get("bpm")),
            keyscale=fields.get("keyscale"), timesignature=fields.get("timesignature"),
            duration=_int_or_none(fields.get("duration")), language=fields.get("language"),
            genres=fields.get("genres"), instrumental=None, text=text,
        )

    def release(self):
        """Free the KV cache (kept between calls only while a compiled or captured decode step refers to it)."""
        self.lm.release_cache()

    # ------------------------------------------------------------------------------------------- decoding

    @_small_lm_threads
    def _generate_text(self, prompt: str, machine: MetasMachine, sampling: Sampling, seed: int, max_new: int,
                       phase: str, on_token, should_cancel) -> list[int]:
        """Constrained generation without CFG (batch 1) until the machine is done, EOS, or ``max_new`` tokens."""
        lm = self.lm
        prompt_ids = self.tokenizer.encode(prompt)
        uniforms = torch.rand(max_new, generator=torch.Generator().manual_seed(int(seed)))
        lm.setup_cache(1, len(prompt_ids) + max_new)
        out: list[int] = []
        feed, pos = prompt_ids, 0
        try:
            while True:
                while not machine.done and len(out) < max_new and (token := machine.next_forced()) is not None:
                    machine.advance(token)
                    out.append(token)
                    feed = feed + [token]
                if on_token is not None:
                    on_token(phase, len(out), max_new)
                if machine.done or len(out) >= max_new:
                    return out
                _check_cancel(should_cancel, phase, len(out))
                logits = lm.prefill(torch.tensor([feed]), pos)[0].float()
                pos += len(feed)
                scores = machine.constrain(logits)
                token = int(sample(scores[None], uniforms[len(out): len(out) + 1], sampling.temperature,
                                   sampling.top_k, sampling.top_p, sampling.min_p)[0])
                machine.advance(token)
                out.append(token)
                feed = [token]
        finally:
            if not self.keeps_cache:
                lm.release_cache()

    @_small_lm_threads
    def _generate_codes(self, cond_prompt: str, uncond_prompt: str | None, n_codes: int | None, seeds: list[int],
                        cfg_scale: float, sampling: Sampling, on_token, should_cancel,
                        max_codes: int = MAX_AUDIO_CODES) -> list[list[int]]:
        """Audio codes for each seed: rows [cond x n, uncond x n] sharing positions (the shorter prompt
        left-padded), decoded together; the token drawn for a song goes into both of its rows. Exactly
        ``n_codes`` codes (the original masks EOS until then and forces it after); ``n_codes`` None (no duration
        known) lets EOS end each song, within ``max_codes``."""
        lm, n = self.lm, len(seeds)
        prompts = [self.tokenizer.encode(cond_prompt)]
        if uncond_prompt is not None:
            prompts.append(self.tokenizer.encode(uncond_prompt))
        width = max(len(p) for p in prompts)
        valid = torch.zeros((n * len(prompts), width), dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            valid[i * n: (i + 1) * n, width - len(prompt):] = True
        free_length = n_codes is None
        steps = max_codes if free_length else n_codes
        uniforms = torch.stack([torch.rand(steps, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        uniforms = uniforms.to(lm.device)
        # The head only needs the code rows, unless EOS may be drawn (free length): then the full vocabulary,
        # masked to codes + EOS.
        head = None if free_length else self.code_rows
        allowed = None
        if free_length:
            allowed = torch.zeros(lm.config.vocab_size, dtype=torch.bool, device=lm.device)
            allowed[self.code_rows] = True
            allowed[LM_EOS_ID] = True
        lm.setup_cache(n * len(prompts), width + steps, valid)
        codes = torch.empty((n, steps), dtype=torch.long, device=lm.device)
        positions = torch.arange(width, width + steps, device=lm.device)
        finished = torch.zeros(n, dtype=torch.bool, device=lm.device)
        length = steps
        try:
            # Each prompt runs once, on the first of its n rows and from its first real (left-padded) position.
            first_logits = []
            for i, prompt in enumerate(prompts):
                first_logits.append(lm.prefill(torch.tensor([prompt]), width - len(prompt), head,
                                               rows=slice(i * n, i * n + 1)))
                if n > 1:
                    lm.copy_cache_row(i * n, slice(i * n + 1, (i + 1) * n))
            logits = torch.cat([x.expand(n, -1) for x in first_logits])
            for i in range(steps):
                _check_cancel(should_cancel, "codes", i)
                scores = cfg_combine(logits[:n], logits[n:], cfg_scale) if uncond_prompt else logits[:n].float()
                if free_length:
                    scores = scores.masked_fill(~allowed, float("-inf"))
                    scores[finished] = float("-inf")
                    scores[finished, LM_EOS_ID] = 0.0
                token = sample(scores, uniforms[:, i], sampling.temperature, sampling.top_k, sampling.top_p,
                               sampling.min_p)
                if free_length:
                    finished |= token == LM_EOS_ID
                    token = torch.where(finished, torch.full_like(token, LM_EOS_ID), token) - AUDIO_CODE_FIRST_ID
                codes[:, i] = token
                if on_token is not None:
                    on_token("codes", i + 1, steps)
                if i + 1 == steps or (free_length and bool(finished.all())):
                    length = i + 1
                    break
                step = (token + AUDIO_CODE_FIRST_ID)[:, None]
                logits = lm.decode(step.repeat(len(prompts), 1), width + i, head, positions[i: i + 1])
        finally:
            if not self.keeps_cache:
                lm.release_cache()
        codes = codes[:, :length].cpu().tolist()
        if free_length:  # a song ends at its first EOS
            eos_code = LM_EOS_ID - AUDIO_CODE_FIRST_ID
            codes = [row[: row.index(eos_code)] if eos_code in row else row for row in codes]
        return codes


def _check_cancel(should_cancel, phase: str, done: int):
    if should_cancel is not None and should_cancel():
        raise GenerationCancelled(f"LM cancelled during the {phase} phase after {done} tokens")
