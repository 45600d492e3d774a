"""The plan step: a request and the 5 Hz LM → the request the DiT runs; and the LM's two other uses, simple mode
and understanding, as request-level functions.

:func:`plan` (``plan(planner, request) -> request``, the one way the pipeline and the LM Planner node plan) reads
top to bottom:
  1. what the LM is to do for this request (:func:`lm_work`): write codes (text2music), only metas and a caption
     (the song's structure comes from the source audio or the user's codes), or nothing (LM off, or a task upstream
     runs without the LM: cover, repaint/extend, extract);
  2. the metas it is given: the user's bpm, key, time signature, and the duration unless the LM may decide it
     (the user's, the source's or the codes' length, else the default length);
  3. ``Planner.plan_batch`` with one seed per song (:func:`lm_seeds`: the LM's own seed setting, else the songs'
     seeds) (one shared thinking, one batched codes decode);
  4. the plan applied (:func:`apply_plans`): metas the user left out and the LM may decide fill the DiT prompt,
     the LM's caption replaces the user's when rewriting, each song's codes become its DiT hints (text2music →
     the cover-from-codes path) and the plans are recorded in ``Request.plans``.
As upstream, the LM's language is never applied to the DiT (the user's stays).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from .constants import (
    CODES_PER_SECOND, DURATION_MAX, DURATION_MIN, KEYSCALES, LM_SKIPPED_TASKS, LM_UNDERSTAND_TOP_P, TIME_SIGNATURES,
    VALID_LANGUAGES,
)
from .checks import check_bool, check_language, check_one_seed, check_query, item_seeds
from .request import PlanSettings, Request, SongText

TokenCallback = Callable[[str, int, int], None]  # (phase, done, total): phase "metas", "codes" or "text"
PHASE_LABELS = {"metas": "thinking", "codes": "codes", "text": "writing"}


class TokenClock:
    """Wraps a token callback and times each phase: its tokens and its tokens per second after the first token
    (the prompt's prefill excluded), for the progress text of the CLI and the nodes.

    ``report(text)`` (optional) gets a progress line ("LM codes 300/600 · 285 tokens/s") at most every
    ``every`` seconds and at each phase's last token."""

    def __init__(self, on_token: TokenCallback | None = None, report: Callable[[str], None] | None = None,
                 every: float = 0.25, clock: Callable[[], float] = time.perf_counter):
        self.on_token, self.report, self.every, self.clock = on_token, report, every, clock
        self.phases: dict[str, list] = {}  # phase -> [first done, first time, last done, last time, total]
        self.reported = float("-inf")

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self.clock()
        entry = self.phases.setdefault(phase, [done, now, done, now, total])
        entry[2:] = [done, now, total]
        if self.on_token is not None:
            self.on_token(phase, done, total)
        if self.report is not None and (now - self.reported >= self.every or done >= total):
            self.reported = now
            self.report(self.line(phase))

    def rate(self, phase: str) -> float | None:
        """Tokens per second of ``phase`` after its first token (None before two tokens)."""
        first, t0, done, t1, _ = self.phases.get(phase, (0, 0.0, 0, 0.0, 0))
        return (done - first) / (t1 - t0) if done > first and t1 > t0 else None

    def line(self, phase: str) -> str:
        """e.g. "LM codes 300/600 · 285 tokens/s" (codes, whose count is known) or "LM thinking 41 tokens"."""
        _, _, done, _, total = self.phases[phase]
        count = f"{done}/{total}" if phase == "codes" else f"{done} tokens"
        rate = self.rate(phase)
        return f"LM {PHASE_LABELS.get(phase, phase)} {count}" + (f" · {rate:.0f} tokens/s" if rate else "")

    def summary(self) -> str:
        """Every phase's tokens and speed: "LM speed: thinking 41 tokens · 390 tokens/s; codes 600 · …"."""
        parts = []
        for phase, (_, _, done, _, _) in self.phases.items():
            rate = self.rate(phase)
            speed = f" · {rate:.0f} tokens/s" if rate else ""
            parts.append(f"{PHASE_LABELS.get(phase, phase)} {done} tokens{speed}")
        return "LM speed: " + "; ".join(parts) if parts else ""


# ---------------------------------------------------------------------------------------------------- what to do

def lm_work(req: Request) -> tuple[str | None, str]:
    """What the LM does for ``req``: ("codes", …) metas (think) then codes; ("metas", …) only metas and caption
    (think, with the structure given by source audio or codes); (None, why) nothing."""
    mode, task = req.lm.mode, req.task
    if mode == "off":
        return None, "LM off"
    if req.plans:
        return None, "already planned"
    if task.rule.instruction in LM_SKIPPED_TASKS:
        return None, f"the LM is skipped for {task.kind} (the official app runs it without the LM)"
    given = "the source audio" if task.source is not None else "the given audio codes" \
        if task.audio_codes is not None else None
    if given is None:
        return "codes", f"LM {mode}: {'metas, caption and ' if mode == 'think' else ''}audio codes"
    if mode == "codes":
        return None, f"LM codes: nothing to write, the song follows {given}"
    return "metas", f"LM think: metas and caption only, the song follows {given}"


def lm_seeds(req: Request) -> list[int]:
    """One LM seed per song: the LM's own seed setting, else the songs' (the sampler's) seeds (one seed → seed + i).
    Random when neither is set: a host whose songs draw random seeds (the pipeline) puts the drawn ones in the
    request's sampler seed before planning, so the plan and the DiT follow the same seeds."""
    seed = req.lm.seed if req.lm.seed is not None else req.sampler.seed
    return item_seeds(seed, req.task.batch_size)


def given_metas(req: Request, work: str) -> dict:
    """The metas handed to the LM as given (kept verbatim, never rewritten). The duration is the length the DiT
    will produce whenever that is fixed: by the source or the codes, by the user, by "codes" mode or because the LM
    may not decide it (then the default length)."""
    text, task, settings = req.text, req.task, req.lm
    metas = {"bpm": text.bpm, "keyscale": text.keyscale, "timesignature": text.timesignature}
    fixed = work == "metas" or task.duration is not None or settings.mode == "codes" or \
        "duration" not in settings.decide
    metas["duration"] = task.seconds if fixed else None
    return metas


# ---------------------------------------------------------------------------------------------------- the step

def lm_codes(req: Request, planner) -> int:
    """Codes per song the plan of ``req`` writes at most, what the LM's working memory is sized for: none when the LM
    has nothing to do or writes metas only; else 5 a second of the song's fixed length, or of the longest the LM
    may choose (``planner.max_duration``)."""
    work, _ = lm_work(req)
    if work != "codes":
        return 0
    fixed = given_metas(req, work)["duration"]
    return int((fixed if fixed is not None else planner.max_duration) * CODES_PER_SECOND)


def plan(planner, req: Request, *, on_token: TokenCallback | None = None,
         should_cancel: Callable[[], bool] | None = None) -> Request:
    """``req`` planned by ``planner`` (an ``lm_planner.Planner``): everything comes from the request, the seeds
    too (:func:`lm_seeds`); ``req`` itself when the LM has nothing to do (see :func:`lm_work`). ``on_token(phase,
    done, total)``: the LM's progress; ``should_cancel()``: True (or raising) stops between tokens."""
    work, _ = lm_work(req)
    if work is None:
        return req
    settings = req.lm
    plans = planner.plan_batch(
        req.text.caption, req.text.lyrics, lm_seeds(req), mode=settings.mode,
        metas=given_metas(req, work), rewrite_caption=settings.rewrite_caption,
        detect_language="language" in settings.decide, negative_prompt=settings.negative_prompt,
        cfg_scale=settings.cfg_scale, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
        min_p=settings.min_p, on_token=on_token, should_cancel=should_cancel, write_codes=work == "codes")
    return apply_plans(req, plans)


def apply_plans(req: Request, plans: Sequence) -> Request:
    """The request with the plans applied (see the module docstring). The plans share their metas and caption
    (one thinking for the batch); each brings its own codes (none in metas-only plans)."""
    first, text, settings = plans[0], req.text, req.lm
    filled = {}
    for name in ("bpm", "keyscale", "timesignature"):
        value = getattr(first, name)
        if getattr(text, name) is None and name in settings.decide and value is not None:
            filled[name] = value
    if settings.rewrite_caption and first.caption:
        filled["caption"] = first.caption
    task = req.task
    if any(p.codes for p in plans):
        if not all(p.codes for p in plans):
            raise ValueError("the LM ended a song before writing any audio code; try another seed")
        codes = [tuple(p.codes) for p in plans]
        duration = min(max(float(first.duration), DURATION_MIN), DURATION_MAX)
        task = dataclasses.replace(task, audio_codes=codes, duration=duration)
    return dataclasses.replace(req, text=dataclasses.replace(text, **filled), task=task, plans=tuple(plans))


def thought(req: Request) -> bool:
    """The LM planned this request in think mode (the app then uses its think DCW values)."""
    return bool(req.plans) and req.lm.mode == "think"


def describe_plans(req: Request) -> dict | None:
    """What the LM decided, for the result's metadata and the saved file's tags (None when it did not run)."""
    if not req.plans:
        return None
    first = req.plans[0]
    return {
        "mode": req.lm.mode, "bpm": first.bpm, "keyscale": first.keyscale, "timesignature": first.timesignature,
        "duration": first.duration, "language": first.language, "caption": first.caption,
        "cfg_scale": req.lm.cfg_scale, "temperature": req.lm.temperature, "top_p": req.lm.top_p,
        "top_k": req.lm.top_k, "seeds": [p.seed for p in req.plans],
        "codes": [list(p.codes) for p in req.plans] if first.codes else None,
    }


def summary(req: Request) -> str:
    """What the LM decided: "LM think · bpm 120 · A minor · time signature 4 · 60 s · …", the caption below."""
    plan = describe_plans(req)
    if plan is None:
        return ""
    parts = [f"LM {plan['mode']}"]
    if plan["bpm"] is not None:
        parts.append(f"bpm {plan['bpm']}")
    if plan["keyscale"]:
        parts.append(plan["keyscale"])
    if plan["timesignature"]:
        parts.append(f"time signature {plan['timesignature']}")
    if plan["duration"]:
        parts.append(f"{plan['duration']:g} s")
    if plan["language"]:
        parts.append(f"language {plan['language']}")
    if plan["codes"] is not None:
        parts.append(f"{len(plan['codes'][0])} codes")
    line = " · ".join(parts)
    if plan["caption"] and req.lm.rewrite_caption:
        line += f"\ncaption: {plan['caption']}"
    return line


# ---------------------------------------------------------------------------------------------------- other uses

@dataclass(frozen=True)
class Description:
    """A song described by the LM (simple mode or understanding), as request values: ``text`` is a checked
    SongText (values the LM wrote that are not valid inputs are left out); ``duration`` in seconds or None."""

    caption: str
    lyrics: str
    text: SongText
    duration: float | None
    language: str | None  # the language the LM wrote (None = none, or not one of the valid codes)
    raw: str  # everything the LM wrote

    def summary(self, duration: float | None = None) -> str:
        """"bpm 120 · A minor · time signature 4 · 180 s · language en", then the caption on its own line
        (``duration``: the one to show, default the LM's)."""
        text, duration = self.text, duration or self.duration
        metas = [f"bpm {text.bpm}" if text.bpm else "", text.keyscale or "",
                 f"time signature {text.timesignature}" if text.timesignature else "",
                 f"{duration:g} s" if duration else "", f"language {self.language}" if self.language else ""]
        return f"{' · '.join(m for m in metas if m)}\ncaption: {self.caption}"


def _describe(sample, language: str | None, fallback_caption: str) -> Description:
    caption = (sample.caption or "").strip() or fallback_caption
    written = sample.language if sample.language in VALID_LANGUAGES else None
    bpm = sample.bpm if isinstance(sample.bpm, int) and 30 <= sample.bpm <= 300 else None
    keyscale = sample.keyscale if sample.keyscale in KEYSCALES else None
    timesignature = str(sample.timesignature) if str(sample.timesignature) in TIME_SIGNATURES else None
    duration = float(sample.duration) if sample.duration and DURATION_MIN <= sample.duration <= DURATION_MAX else None
    text = SongText(caption, sample.lyrics, language or written or "unknown", bpm, keyscale, timesignature)
    return Description(caption, sample.lyrics, text, duration, written, sample.text)


def _sampling(settings: PlanSettings) -> dict:
    return dict(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k, min_p=settings.min_p)


def check_simple_inputs(query, instrumental=False, language=None, seed=0) -> tuple[str, bool, str | None, int]:
    """Simple mode's inputs in their canonical form, or :class:`~acestep_core.errors.InputError`: each host
    (``AceStepPipeline.simple``, the Simple Mode node) checks them here once, before the LM is placed, and hands
    the result to :func:`simple_song`."""
    language = None if language is None else check_language(language)
    return check_query(query), check_bool("instrumental", instrumental), language, check_one_seed(seed)


def simple_song(planner, query: str, instrumental: bool = False, language: str | None = None, seed: int = 0,
                settings: PlanSettings | None = None, on_token: TokenCallback | None = None,
                should_cancel: Callable[[], bool] | None = None) -> Description:
    """Simple mode: a short description ("a soft Bengali love song") → caption, lyrics, metas and a duration.
    ``language`` (None or "unknown" = the LM chooses) is the vocal language; ``settings`` gives the sampling.
    The inputs as :func:`check_simple_inputs` returns them (not checked again here)."""
    language = None if language in (None, "unknown") else language
    settings = settings or PlanSettings()
    sample = planner.simple_mode(query, instrumental, language, seed=seed, **_sampling(settings),
                                 on_token=on_token, should_cancel=should_cancel)
    return _describe(sample, language, query.strip())


def understand_codes(planner, codes: Sequence[int], seed: int = 0, settings: PlanSettings | None = None,
                     on_token: TokenCallback | None = None,
                     should_cancel: Callable[[], bool] | None = None) -> Description:
    """Understanding: a song's 5 Hz codes → its caption, lyrics and metas (default sampling: top-p off, as
    upstream). ``seed``: checked by the host (``AceStepPipeline.audio_codes`` read the codes with it)."""
    settings = settings or PlanSettings(top_p=LM_UNDERSTAND_TOP_P)
    sample = planner.understand(list(codes), seed=seed, **_sampling(settings), on_token=on_token,
                                should_cancel=should_cancel)
    return _describe(sample, None, "")
