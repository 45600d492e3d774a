"""Command line: ``acestep generate --caption "..." --lyrics-file song.txt --duration 60 --out song.flac``
(``python -m acestep_core generate …`` from the pack folder does the same); ``acestep generate --simple "a soft
Bengali love song"`` lets the 5 Hz LM write caption, lyrics and metas first; ``acestep understand --src-audio
song.flac`` describes a recording.

Order of work: every argument, file and request field is checked first (output paths included), then the model
is found and its variant read from its config or file header (settings the variant cannot take are refused
there), then one line says which model runs where, and only then is anything loaded. Every bad input ends the
run with exit status 1 (2 for unparseable arguments) and one line ``error: <reason>`` on stderr. Outputs are
written only when the whole batch has been generated and encoded, all or nothing, each file atomically.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
import os
import re
import sys
import time
from collections.abc import Sequence

from . import __version__
from .audio import MODEL_CHANNELS, check_save_options, load_audio, save_audio
from .constants import DTYPES, DURATION_MAX, LM_UNDERSTAND_TOP_P, VARIANTS, WEIGHT_DTYPES
from .errors import InputError, Interrupted, shown
from .options import (
    BY_KEY, FLOW_EDIT_OPTIONS, PLAN_OPTIONS, RENDER_OPTIONS, SAMPLER_OPTIONS, SONG_OPTIONS, SWITCH, TASK_OPTIONS,
)
from .options import Option, option
from .request import SOURCE_TASKS, TASKS, check_query, request

HF_REPO = "ACE-Step/Ace-Step1.5"
DEFAULT_CHECKPOINT = os.path.join(".", "models", "acestep")  # ComfyUI's models/acestep, run from the ComfyUI folder
HF_ALLOW_PATTERNS = ["acestep-v15-turbo/*", "vae/*", "Qwen3-Embedding-0.6B/*", "acestep-5Hz-lm-1.7B/*"]
HF_COMMAND = f'hf download {HF_REPO} --local-dir {{path}}'
HF_LM_COMMAND = f'hf download {HF_REPO} --include "acestep-5Hz-lm-1.7B/*" --local-dir {{path}}'
# The command line's name for each request field (and each name an error may give), so that a message names the flag
# the user typed; the options' flags come from their table.
FLAGS = {
    "task": "--task", "audio_codes": "--audio-codes", "src_audio": "--src-audio",
    "ref_audio": "--ref-audio", "vram_budget": "--vram-budget", "resident_layers": "--resident-layers",
    "weight_dtype": "--weight-dtype", "query": "--simple", "flow_edit": "--flow-edit", "quality": "--quality",
    **{name: o.flag for o in BY_KEY.values() if o.flag for name in (o.key, o.label)},
}
# What a flag's default is where the command line decides it differently from the request.
CLI_DEFAULTS = {"lm_mode": "think when an LM is found, else off"}


class UsageError(Exception):
    """A bad input found by the command line itself; printed as one ``error:`` line."""


class _Parser(argparse.ArgumentParser):
    """argparse prints a usage block before its error; we print the one line only (``-h`` shows usage)."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(2)


def default_checkpoint() -> str:
    return os.environ.get("ACESTEP_MODELS") or DEFAULT_CHECKPOINT


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="acestep", description="ACE-Step 1.5: caption + lyrics -> 48 kHz stereo song. "
                                                 "Also runs as: python -m acestep_core")
    parser.add_argument("--version", action="version", version=f"acestep_core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="generate audio", description="Generate audio with ACE-Step 1.5.")

    io = g.add_argument_group("model and output")
    io.add_argument("--checkpoint", default=None,
                    help="models folder holding acestep-v15-*/, vae/, Qwen3-Embedding-0.6B/ (default: "
                         "$ACESTEP_MODELS or ./models/acestep), one acestep-v15-* folder, a Comfy-Org diffusion "
                         "model file or an all-in-one file")
    io.add_argument("--model", default=None,
                    help="which model folder of --checkpoint: turbo (default), base, sft, xl-turbo, xl-base, "
                         "xl-sft, or a folder name; extract/lego/complete use base when it is there")
    io.add_argument("--allow-download", action="store_true",
                    help=f"download {HF_REPO} (turbo, VAE, text encoder) into --checkpoint when it is missing")
    io.add_argument("--lora", action="append", default=None, metavar="PATH[:STRENGTH]",
                    help="apply a LoRA/LoKr: a .safetensors file or a PEFT/LoKr folder, strength 1 unless given "
                         "(negative and above 1 allowed); repeat to stack several")
    io.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 on a capable GPU, else fp32")
    io.add_argument("--device", default=None, help="cuda, cuda:1, cpu, mps ... (default: cuda if available)")
    vram = g.add_argument_group("low VRAM (see the README's VRAM section)")
    vram.add_argument("--vram-budget", type=float, default=None, metavar="GB",
                      help="GPU memory to plan for (default: what is free); the text encoder, DiT and VAE then take "
                           "turns on the GPU and DiT layers that do not fit stream from CPU memory")
    vram.add_argument("--resident-layers", type=int, default=None, metavar="N",
                      help="DiT layers kept on the GPU, the others streamed (default: as many as the budget allows)")
    vram.add_argument("--weight-dtype", default="default", choices=WEIGHT_DTYPES,
                      help="fp8_*: the DiT's Linear weights in 8 bits with per-channel scales (about half the DiT's "
                           "memory); _fast: the GPU's fp8 matmul where it exists")
    io.add_argument("--out", default="song.flac",
                    help="output file; .flac, .wav, .mp3 or .opus; batch items 2.. get _1, _2 ... (default song.flac)")
    io.add_argument("--quality", default=None,
                    help="flac: 16|24, wav: 16|24|float, mp3: V0|128k|320k..., opus: 64k|128k...")
    io.add_argument("--save-latents", default=None, metavar="FILE.safetensors",
                    help="also write the final latents [B, T, 64] and the seeds")
    io.add_argument("--lrc", default=None, metavar="FILE.lrc",
                    help="also write when each sung line starts, as LRC ([mm:ss.xx]line; one extra DiT pass; batch: "
                         "FILE_1.lrc, ...)")
    io.add_argument("--vtt", default=None, metavar="FILE.vtt",
                    help="also write the sung lines as WebVTT subtitles (start and end of each line)")
    add_options(io, RENDER_OPTIONS)

    text = g.add_argument_group("what to generate")
    add_options(text, SONG_OPTIONS[:2])
    text.add_argument("--lyrics-file", default=None, help="read the lyrics from a UTF-8 text file ('-' = stdin)")
    add_options(text, SONG_OPTIONS[2:])
    add_options(text, [option("task", "duration")])

    task = g.add_argument_group("task and source audio")
    task.add_argument("--task", default=None, help=", ".join(TASKS) + " (default text2music)")
    task.add_argument("--src-audio", default=None, help="source audio file, at most 600 s (cover, repaint, extend, "
                                                         "extract, lego, complete; needs --task)")
    task.add_argument("--ref-audio", default=None, help="timbre reference audio file, at most 600 s")
    task.add_argument("--audio-codes", default=None,
                      help="5 Hz audio codes ('<|audio_code_N|>...' or integers); @FILE reads them from a file")
    add_options(task, [o for o in TASK_OPTIONS if o.name not in ("batch_size", "duration")])
    task.add_argument("--flow-edit", action="store_true",
                      help="cover / cover-nofsq: morph the source from --source-caption/--source-lyrics towards "
                           "--caption/--lyrics")
    add_options(task, FLOW_EDIT_OPTIONS)

    s = g.add_argument_group("sampling")
    add_options(s, SAMPLER_OPTIONS + (option("task", "batch_size"),))

    lm = g.add_argument_group("5 Hz LM planner (see the README's LM section)")
    _add_lm_path(lm)
    add_options(lm, PLAN_OPTIONS)
    lm.add_argument("--simple", default=None, metavar="QUERY",
                    help="simple mode: the LM turns a short description into caption, lyrics and metas (your "
                         "--bpm/--key/--timesig/--duration/--language win), then the song is generated")
    lm.add_argument("--instrumental", action="store_true", help="simple mode: a song without vocals")

    u = sub.add_parser("understand", help="describe a recording with the 5 Hz LM",
                       description="The 5 Hz LM listens to a recording (its 5 Hz codes, from the VAE and the model's "
                                   "audio tokenizer) and writes its caption, lyrics, bpm, key, time signature, "
                                   "duration and language.")
    u.add_argument("--src-audio", required=True, help="the recording, at most 600 s")
    u.add_argument("--checkpoint", default=None, help="models folder or file, as for generate (default: "
                                                      "$ACESTEP_MODELS or ./models/acestep)")
    u.add_argument("--model", default=None, help="which model folder of --checkpoint (its VAE and audio tokenizer "
                                                 "read the recording; default turbo)")
    _add_lm_path(u)
    u.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 on a capable GPU, else fp32")
    u.add_argument("--device", default=None, help="cuda, cpu, mps ... (default: cuda if available)")
    u.add_argument("--seed", default=None, help="integer (default random)")
    add_options(u, [replace(option("lm", name), default=LM_UNDERSTAND_TOP_P) if name == "top_p" else option("lm", name)
                    for name in ("temperature", "top_p", "top_k", "min_p")])
    u.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def _add_lm_path(group) -> None:
    group.add_argument("--lm", default=None, metavar="PATH",
                       help="the 5 Hz LM: an acestep-5Hz-lm-* folder, a qwen_1.7b_ace15/qwen_4b_ace15 .safetensors "
                            "file or an all-in-one file; default: the one next to the models (acestep-5Hz-lm-1.7B "
                            "beside acestep-v15-*, models/text_encoders/qwen_*_ace15, the all-in-one's own); "
                            "none = no LM")
    group.add_argument("--lm-int8", action="store_true",
                       help="CPU only: the LM's layers and head in int8 with per-channel scales (half the bytes "
                            "per token of bf16, faster where memory bandwidth limits; close to, not equal to, "
                            "bf16: see docs/benchmarks.md)")


def option_help(opt: Option) -> str:
    """An option's help on the command line: what it does, its range or choices and its default."""
    allowed = opt.allowed()
    default = CLI_DEFAULTS.get(opt.key) or opt.default_text()
    if opt.kind == "seed":
        allowed = "an integer, or comma-separated integers, one per song"
    return f"{opt.help} ({allowed + '; ' if allowed else ''}default: {default})"


def add_options(group, options) -> None:
    """The flags of table options (``acestep_core.options``): one per flag (options sharing a flag take one value
    each), a ``--no-…`` switch for a setting that is on by default; values are checked by the request, so a bad one
    ends the run with the request's one-line message naming the flag."""
    by_flag: dict[str, list[Option]] = {}
    for opt in options:
        if opt.flag:
            by_flag.setdefault(opt.flag, []).append(opt)
    for flag, opts in by_flag.items():
        opt = opts[0]
        if len(opts) > 1:
            group.add_argument(flag, type=float, nargs=len(opts), default=None,
                               metavar=tuple(o.metavar or o.name.upper() for o in opts),
                               help="; ".join(o.help.rstrip(".") for o in opts) + " (default: "
                                    + " ".join(o.default_text() for o in opts) + ")")
        elif opt.kind == "bool":
            assert opt.default is True and flag.startswith("--no-"), flag
            group.add_argument(flag, action="store_true", help=f"{opt.help} Given: off.")
        elif opt.kind == "switch":
            group.add_argument(flag, default=None, choices=SWITCH, help=option_help(opt))
        elif opt.kind == "fields":
            group.add_argument(flag, action="append", default=None, metavar=opt.metavar,
                               help=option_help(opt) + " Comma-separated, or repeat the flag.")
        else:
            kind = {"int": int, "float": float}.get(opt.kind)
            group.add_argument(flag, default=None, help=option_help(opt), metavar=opt.metavar,
                               **({"type": kind} if kind else {}))


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def option_fields(args, options) -> dict:
    """The request fields of the table options given on the command line (not given = left out)."""
    fields = {}
    for opt in options:
        if not opt.flag or not hasattr(args, _dest(opt.flag)):
            continue
        value = getattr(args, _dest(opt.flag))
        shared = [o for o in options if o.flag == opt.flag]
        if len(shared) > 1 and value is not None:
            value = value[shared.index(opt)]
        elif opt.kind == "bool":
            value = False if value else None
        elif opt.kind == "switch":
            value = {"on": True, "off": False}.get(value)
        elif opt.kind == "seed":
            value = _parse_seed(value, opt.flag)
        elif opt.kind == "fields" and value is not None:  # repeated flags: one comma-separated list
            value = ",".join(value)
        if value is not None:
            fields[opt.key] = value
    return fields


# --------------------------------------------------------------------------------------------------- pieces


def _read_text(path: str, flag: str) -> str:
    if path == "-":  # the bytes, decoded strictly (sys.stdin's own decoding may turn bad bytes into surrogates)
        stdin = getattr(sys.stdin, "buffer", None)
        try:
            return sys.stdin.read() if stdin is None else stdin.read().decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"{flag} -: standard input is not UTF-8 text (byte {e.start + 1} is "
                             f"0x{e.object[e.start]:02x})") from None
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a folder; give a text file")
    if not os.path.isfile(path):  # a FIFO or device would be waited on
        raise UsageError(f"{flag} {path}: " + ("not a regular file" if os.path.exists(path) else "file not found"))
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {path}: not UTF-8 text") from None


def _parse_seed(text: str | None, flag: str = "--seed"):
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        seeds = []
    if not seeds:
        raise UsageError(f"{flag} {text!r} is not allowed: an integer 0 … 2^64-1, or comma-separated integers")
    return seeds[0] if len(seeds) == 1 else seeds


def output_paths(out: str, count: int) -> list[str]:
    """song.flac → song.flac, song_1.flac, song_2.flac … (one per batch item)."""
    stem, ext = os.path.splitext(out)
    return [out if i == 0 else f"{stem}_{i}{ext}" for i in range(count)]


def check_output_paths(paths: list[tuple[str, str]], inputs: Sequence[tuple[str, str | None]] = ()) -> None:
    """(flag, path) pairs: each a file name (not a folder) in a folder that exists or can be made and written
    (a file is created there and removed again: /proc and read-only mounts pass the permission bits), and none of
    the ``inputs`` (flag, path) files; checked before any work so a run never ends without its files."""
    for flag, path in paths:
        for input_flag, source in inputs:
            if source and os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
                raise UsageError(f"{flag} {path}: is the {input_flag} file, which writing would overwrite; give "
                                 "another name")
        full = os.path.abspath(path)
        if os.path.isdir(path):
            raise UsageError(f"{flag} {path}: is a folder; give a file name such as "
                             f"{os.path.join(path, 'song.flac')}")
        folder = os.path.dirname(full)
        existing = folder
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise UsageError(f"{flag} {path}: {existing} is a file, so the folder {folder} cannot be made")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {path}: the folder {existing} is not writable")
        probe = os.path.join(existing, f".acestep-probe.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as e:
            raise UsageError(f"{flag} {path}: files cannot be created in {existing} ({e.strerror})") from None


def _input_files(args) -> list[tuple[str, str | None]]:
    """The files a generate run reads, (flag, path), that no output may overwrite."""
    from .adapters import parse_lora_spec

    codes = args.audio_codes[1:] if args.audio_codes and args.audio_codes.startswith("@") else None
    return [("--src-audio", args.src_audio), ("--ref-audio", args.ref_audio), ("--lyrics-file", args.lyrics_file),
            ("--audio-codes", codes), ("--checkpoint", args.checkpoint),
            *(("--lora", parse_lora_spec(spec)[0]) for spec in args.lora or ())]


def _looks_like_file(path: str) -> bool:
    return path.lower().endswith((".safetensors", ".ckpt", ".pt", ".bin"))


def missing_checkpoint_message(path: str) -> str:
    return (f"no ACE-Step 1.5 models at {path}; download them with: {HF_COMMAND.format(path=path)} (older "
            "huggingface_hub: huggingface-cli download …), or pass --checkpoint "
            "models/diffusion_models/acestep_v1.5_turbo.safetensors (Comfy-Org files, with "
            "models/text_encoders/qwen_0.6b_ace15.safetensors and models/vae/ace_1.5_vae.safetensors) "
            "or an all-in-one models/checkpoints/ace_step_1.5_turbo_aio.safetensors, or add --allow-download")


def download_checkpoint(path: str) -> str:
    """Fetch the main repository's DiT/VAE/text-encoder folders into ``path`` (via a sibling ``.download`` folder
    renamed at the end, so an interrupted download never looks like a complete checkpoint; re-running resumes)."""
    if _looks_like_file(path):
        raise UsageError(f"--allow-download needs a folder for --checkpoint, not a file ({path})")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UsageError("--allow-download needs huggingface_hub (pip install huggingface_hub), or download by hand: "
                         f"{HF_COMMAND.format(path=path)}") from None
    staging = os.path.normpath(path) + ".download"
    print(f"downloading {HF_REPO} into {path} ...", file=sys.stderr)
    try:
        snapshot_download(repo_id=HF_REPO, local_dir=staging, allow_patterns=HF_ALLOW_PATTERNS)
    except Exception as e:  # noqa: BLE001 - no network, hub down, disk full: one clear line, resumable later
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"downloading {HF_REPO} failed ({reason}); check the connection and re-run, "
                         f"or download by hand: {HF_COMMAND.format(path=path)}") from None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    os.replace(staging, path)
    return path


def resolve_checkpoint(path: str | None, allow_download: bool) -> str:
    path = os.path.expanduser(path or default_checkpoint())
    if os.path.exists(path):
        return path
    if allow_download:
        return download_checkpoint(path)
    raise UsageError(missing_checkpoint_message(path))


class TokenProgress:
    """The LM's progress on stderr: a bar for the audio codes (their count is known), a token counter for the
    thinking and the text modes (they stop when the LM is done, well before their budget); both with the phase's
    tokens per second (``planning.TokenClock``)."""

    LABELS = {"metas": "LM thinking", "codes": "LM codes", "text": "LM writing"}
    EVERY = 0.1  # seconds between redraws (a token takes milliseconds)

    def __init__(self, stream=None):
        from .planning import TokenClock

        self.stream = stream if stream is not None else sys.stderr
        self.clock = TokenClock(clock=time.monotonic)
        self.phase, self.bar, self.start, self.drawn = None, None, time.monotonic(), 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.clock(phase, done, total)
        now = time.monotonic()
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = ProgressBar(self.stream, label=self.LABELS.get(phase, phase)) if phase == "codes" else None
            self.start = self.drawn = now
        elif now - self.drawn < self.EVERY and done < total:
            return
        self.drawn = now
        rate = self.clock.rate(phase)
        speed = f" {rate:.0f} tokens/s" if rate else ""
        if self.bar is not None:
            self.bar(done, total, speed)
        else:
            self.stream.write(f"\r{self.LABELS.get(phase, phase)}: {done} tokens {now - self.start:6.1f}s{speed}")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close(complete=False)
        elif self.phase is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.phase, self.bar = None, None


class ProgressBar:
    """A one-line text bar on stderr, redrawn by the pipeline's per-step callback."""

    def __init__(self, stream=None, width: int = 30, label: str = "sampling"):
        self.stream = stream if stream is not None else sys.stderr
        self.width, self.label = width, label
        self.start = time.monotonic()
        self.drawn = False
        self.total = 0
        self.suffix = ""

    def __call__(self, step: int, total: int, suffix: str = "") -> None:
        total = max(int(total), 1)
        step = max(0, min(int(step), total))
        self.total, self.suffix = total, suffix
        filled = round(self.width * step / total)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {step}/{total} {time.monotonic() - self.start:6.1f}s{suffix}")
        self.stream.flush()
        self.drawn = True

    def close(self, complete: bool = True) -> None:
        if self.drawn:
            if complete:
                self(self.total, self.total, self.suffix)
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def request_fields(args, lyrics: str | None, src, ref) -> dict:
    """Flat request fields from the arguments; options not given are left out so the defaults apply."""
    audio_codes = args.audio_codes
    if audio_codes is not None and audio_codes.startswith("@"):
        audio_codes = _read_text(audio_codes[1:], "--audio-codes").strip()
        if not audio_codes:
            raise UsageError(f"--audio-codes {args.audio_codes}: the file is empty (expected <|audio_code_N|> tokens "
                             "or integers)")
    fields = {
        "task": args.task, "audio_codes": audio_codes, "flow_edit": True if args.flow_edit else None,
        **option_fields(args, tuple(BY_KEY.values())), "lyrics": lyrics,
    }
    if src is not None:
        fields["src_audio"], fields["src_sample_rate"] = src
    if ref is not None:
        fields["ref_audio"], fields["ref_sample_rate"] = ref
    return {k: v for k, v in fields.items() if v is not None}


def _metadata_for(fields: dict, result_meta: dict, index: int, model: str) -> dict:
    """The tags of song ``index``: the request fields, what the run used, and its own LM plan and seed."""
    params = {k: v for k, v in fields.items() if k not in ("src_audio", "ref_audio")}
    params.update({k: v for k, v in result_meta.items() if k not in ("seeds", "lm")})
    params["seed"] = result_meta["seeds"][index] if "seeds" in result_meta else None
    if result_meta.get("lm"):
        plan = dict(result_meta["lm"])
        plan["seed"] = plan.pop("seeds")[index]
        if plan.get("codes"):
            plan["codes"] = plan["codes"][index]
        params["lm"] = plan
    params["model"] = model
    params["generator"] = f"acestep_core {__version__}"
    return params


def _tags(params: dict, path: str) -> dict[str, str]:
    """File tags: the parameters as JSON under "acestep" and the caption as "comment"; WAV keeps only standard
    INFO tags, so there the JSON goes into "comment" (ICMT)."""
    text = json.dumps(params, ensure_ascii=False, default=_json_default)
    if path.lower().endswith(".wav"):
        return {"comment": text}
    tags = {"acestep": text}
    if params.get("caption"):
        tags["comment"] = params["caption"]
    return tags


def _temp_sibling(path: str, tag: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.{tag}.{os.getpid()}{ext}")  # same extension: same codec choice


def _pid_running(pid: int) -> bool:
    if os.name == "nt":  # no cheap, safe check there: such files are ignored (their names carry another pid)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temporaries(path: str) -> None:
    """The temporary siblings of ``path`` left by a run that was killed outright (SIGKILL, a power cut): those
    whose process id is no longer running. A ``.partial`` file (and the encoder's ``.part`` file inside its name)
    is removed; a ``.previous`` file (the old output, moved aside while the new one was renamed in) goes back to
    its name if nothing took it, else is removed. Another live run's files are left alone."""
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    pattern = re.compile(rf"\.?\.{re.escape(stem)}\.(partial|previous)\.(\d+){re.escape(ext)}(\.[0-9a-f]+\.part)?")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for entry in names:
        match = pattern.fullmatch(entry)
        if match is None or int(match.group(2)) == os.getpid() or _pid_running(int(match.group(2))):
            continue
        stale = os.path.join(folder, entry)
        try:
            if match.group(1) == "previous" and not match.group(3) and not os.path.exists(path):
                os.replace(stale, path)
            else:
                os.unlink(stale)
        except OSError:
            pass


def _commit(staged: list[tuple[str, str]]) -> None:
    """Rename every staged file over its target, all or nothing: a target that already exists is moved aside
    first and put back if a later rename fails."""
    done, aside = [], []
    try:
        for tmp, path in staged:
            if os.path.exists(path):
                backup = _temp_sibling(path, "previous")
                aside.append((backup, path))
                os.replace(path, backup)
            os.replace(tmp, path)
            done.append(path)
    except BaseException as e:  # a failed rename, or a signal (SIGTERM, Ctrl-C) in the middle: put everything back
        failed = path
        for path in done:
            os.unlink(path)
        for backup, path in aside:
            if os.path.exists(backup):
                os.replace(backup, path)
        if isinstance(e, OSError):
            raise _write_error(failed, e) from None
        raise
    for backup, _ in aside:
        os.unlink(backup)


def _write_error(path: str, error: Exception, tmp: str | None = None) -> UsageError:
    """A write that failed at the end (full disk, folder gone, …) as one line naming the flag and the file the user
    gave, never a temporary name (--out takes audio extensions only: a .safetensors file is --save-latents, .lrc
    and .vtt files are --lrc and --vtt)."""
    flag = {".safetensors": "--save-latents", ".lrc": "--lrc", ".vtt": "--vtt"}.get(
        os.path.splitext(path)[1].lower(), "--out")
    reason = error.strerror if isinstance(error, OSError) and error.strerror else " ".join(str(error).split())
    return UsageError(f"{flag} {path}: writing it failed ({reason.replace(tmp, path) if tmp else reason}); "
                      "nothing was written")


def write_outputs(result, paths: list[str], fields: dict, model: str, quality: str | None,
                  latents_path: str | None, texts: Sequence[tuple[str, str]] = ()) -> None:
    """Encode every item (and the latents, and ``texts``: (path, UTF-8 text) such as LRC files) under temporary
    names, then rename them all: all or nothing."""
    from safetensors import SafetensorError

    staged: list[tuple[str, str]] = []
    for path in paths + [p for p, _ in texts] + ([latents_path] if latents_path is not None else []):
        remove_stale_temporaries(path)
    try:
        for path, text in texts:
            tmp = _temp_sibling(path, "partial")
            staged.append((tmp, path))
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
        for i, path in enumerate(paths):
            tmp = _temp_sibling(path, "partial")
            staged.append((tmp, path))
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            meta = {**result.metadata, "seeds": list(result.seeds)}
            save_audio(tmp, result.audio[i], result.sample_rate, _tags(_metadata_for(fields, meta, i, model), path),
                       quality=quality)
        if latents_path is not None:
            import torch
            from safetensors.torch import save_file

            seeds = [int(s) for s in result.seeds]
            seed_dtype = torch.int64 if all(s < 2**63 for s in seeds) else torch.uint64
            meta = {k: v for k, v in fields.items() if k not in ("src_audio", "ref_audio")}
            meta.update(result.metadata)
            tmp = _temp_sibling(latents_path, "partial")
            staged.append((tmp, latents_path))
            os.makedirs(os.path.dirname(os.path.abspath(latents_path)), exist_ok=True)
            save_file({"latents": result.latents.detach().float().cpu().contiguous(),
                       "seeds": torch.tensor(seeds, dtype=seed_dtype)}, tmp,
                      metadata={"acestep": json.dumps(meta, ensure_ascii=False, default=_json_default),
                                "sample_rate": str(result.sample_rate)})
        _commit(staged)
    except (OSError, ValueError, SafetensorError) as e:  # while writing staged[-1]
        raise _write_error(staged[-1][1], e, staged[-1][0]) from None
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def check_timestamp_outputs(args, lyrics: str | None) -> list[tuple[str, str]]:
    """The (flag, path) of --lrc / --vtt, checked before any work: the file name's ending, and sung lines to time
    (the lyrics as given; simple mode writes its own unless --instrumental)."""
    from .timestamps import has_sung_lines

    timed = [(flag, path) for flag, path in (("--lrc", args.lrc), ("--vtt", args.vtt)) if path is not None]
    for flag, path in timed:
        if not path.lower().endswith(flag.replace("--", ".")):
            raise UsageError(f"{flag} {path!r}: the file name must end in {flag.replace('--', '.')}")
    if timed and (args.simple is None or args.instrumental) and not has_sung_lines(lyrics or ""):
        flag, path = timed[0]
        what = "simple mode with --instrumental writes none" if args.simple is not None else \
            "the lyrics have none (blank or section tags only); give --lyrics or --lyrics-file"
        raise UsageError(f"{flag} {path!r}: there are no sung lines to time: {what}")
    return timed


def timing_texts(result, timing_paths: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(path, LRC or WebVTT text) of each song, from ``result.lyrics_timing``."""
    from .timestamps import to_lrc, to_vtt

    write = {"--lrc": to_lrc, "--vtt": to_vtt}
    return [(path, write[flag](result.lyrics_timing[i])) for flag, paths in timing_paths.items()
            for i, path in enumerate(paths)]


def _check_device(device: str | None):
    """Catch a wrong --device before the model load (torch would fail later with a less helpful message)."""
    import torch

    from .loading.checkpoint import resolve_device

    if device not in (None, "auto"):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise UsageError(f"--device {device!r} is not a device; use e.g. cuda, cuda:0, cpu or mps") from None
        if dev.type not in ("cpu", "cuda", "mps"):  # meta, xla, …: torch knows them, the pipeline cannot run there
            raise UsageError(f"--device {device!r} is not allowed: cpu, cuda, cuda:N or mps")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is available to this torch (use --device cpu)")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
        if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError(f"--device {device}: MPS is not available on this machine")
    return resolve_device(device)


def load_loras(specs: list[str]) -> list:
    """``--lora PATH[:STRENGTH]`` values → [(Adapter, strength)], each file read and checked on its own (cheap:
    adapter files are small); a missing or unreadable file ends the run naming it."""
    if not specs:
        return []
    from .adapters import load_adapter, parse_lora_spec

    loras = []
    for spec in specs:
        path, strength = parse_lora_spec(spec)
        loras.append((load_adapter(path), strength))
    return loras


def describe_loras(loras: list) -> str:
    """The first line's LoRA part: " · LoRA name (strength), …" (empty without LoRAs)."""
    if not loras:
        return ""
    return " · LoRA " + ", ".join(f"{adapter.name} ({strength:g})" for adapter, strength in loras)


def load_pipeline(path: str, model_folder: str | None, dtype, device, weight_dtype: str = "default"):
    """The loaded pipeline (a seam for tests)."""
    from .pipeline import AceStepPipeline

    return AceStepPipeline.from_pretrained(path, dtype=dtype, device=device, dit_folder=model_folder,
                                           weight_dtype=weight_dtype)


def load_lm(pipe, path: str, int8: bool = False) -> None:
    """The 5 Hz LM onto the loaded pipeline (a seam for tests)."""
    pipe.load_lm(path, int8=int8)


def _check_lm_int8(args, device) -> None:
    if getattr(args, "lm_int8", False) and device.type != "cpu":
        raise UsageError(f"--lm-int8: the int8 LM runs on the CPU only (device here: {device.type}); leave it out")


def resolve_lm(choice: str | None, info) -> str | None:
    """``--lm``: "none" → None; a path → that path, if it holds a 5 Hz LM; not given → the LM next to the models
    (``loading.lm.find_lm``), or None. Reads file headers only."""
    from .errors import CheckpointError
    from .loading.lm import LM_EXPECTED, NotAnLM, check_lm, find_lm

    if choice is not None and choice.lower() == "none":
        return None
    if choice is None:  # a damaged LM found next to the models is skipped with a warning naming the reason
        damaged: list[str] = []
        found = find_lm(info.paths, damaged)
        for reason in damaged:
            print(f"warning: 5 Hz LM skipped: {reason}", file=sys.stderr)
        return found
    path = os.path.expanduser(choice)
    if not os.path.exists(path):
        raise UsageError(f"--lm {choice}: no such file or folder")
    try:
        check_lm(path)
    except NotAnLM:
        raise UsageError(f"--lm {choice}: no 5 Hz LM in it ({LM_EXPECTED})") from None
    except CheckpointError as e:  # a damaged LM: the real reason (truncated file, missing tensor, …)
        raise UsageError(f"--lm {choice}: {e}") from None
    return path


def _no_lm_message(what: str, checkpoint: str) -> str:
    folder = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
    return (f"{what} needs the 5 Hz LM, and none was found next to {checkpoint}; download it with: "
            f"{HF_LM_COMMAND.format(path=folder)} (or the Comfy-Org file text_encoders/qwen_1.7b_ace15.safetensors), "
            "or give --lm PATH")


def _lm_mode(args, req, lm_path: str | None, checkpoint: str) -> str:
    """The LM mode this run uses: --lm-mode as given (an LM must be there), else think when an LM is there and the
    task is one the LM plans, else off."""
    from dataclasses import replace

    from .planning import lm_work

    if args.lm_mode is not None:
        if args.lm_mode != "off" and lm_path is None:
            raise UsageError(_no_lm_message(f"--lm-mode {args.lm_mode}", checkpoint))
        return args.lm_mode
    if lm_path is None:
        return "off"
    return "think" if lm_work(replace(req, lm=replace(req.lm, mode="think")))[0] is not None else "off"


def _simple_fields(fields: dict, desc) -> dict:
    """The request fields after simple mode: the LM's caption, lyrics and metas where the user gave none."""
    out = dict(fields, caption=desc.caption, lyrics=desc.lyrics)
    text = desc.text
    for key, value in (("bpm", text.bpm), ("keyscale", text.keyscale), ("timesignature", text.timesignature),
                       ("duration", desc.duration), ("language", text.language)):
        if out.get(key) is None and value is not None:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------------- main


def generate(args) -> int:
    # 1. Everything the user typed, before any model work.
    if args.lyrics is not None and args.lyrics_file is not None:
        raise UsageError("give either --lyrics or --lyrics-file, not both")
    if args.src_audio is not None and args.task is None:
        raise UsageError(f"--src-audio needs --task: one of {', '.join(SOURCE_TASKS)}")
    if args.simple is not None and (args.caption is not None or args.lyrics is not None or args.lyrics_file):
        raise UsageError("--simple writes the caption and lyrics: give either --simple or --caption/--lyrics")
    if args.simple is not None and args.task not in (None, "text2music"):
        raise UsageError(f"--simple makes a new song: not with --task {args.task}")
    if args.instrumental and args.simple is None:
        raise UsageError("--instrumental is for simple mode (--simple QUERY)")
    check_output_paths([("--out", args.out)])  # the batch's other names once the batch size is known
    check_save_options(args.out, args.quality)
    if args.save_latents is not None and not args.save_latents.lower().endswith(".safetensors"):
        raise UsageError(f"--save-latents {args.save_latents!r}: the file name must end in .safetensors")
    lyrics = _read_text(args.lyrics_file, "--lyrics-file") if args.lyrics_file is not None else args.lyrics
    timed = check_timestamp_outputs(args, lyrics)
    device = _check_device(args.device)
    from .memory.manager import MemorySettings

    memory = MemorySettings(args.vram_budget, args.resident_layers, args.weight_dtype)
    src = load_audio(args.src_audio, DURATION_MAX, "--src-audio", MODEL_CHANNELS) if args.src_audio else None
    ref = load_audio(args.ref_audio, DURATION_MAX, "--ref-audio", MODEL_CHANNELS) if args.ref_audio else None
    fields = request_fields(args, lyrics, src, ref)
    if args.simple is not None:
        check_query(args.simple)
        if "seed" not in fields:  # simple mode and song from one seed, so the run can be repeated
            import random

            fields["seed"] = random.SystemRandom().randint(0, 2**32 - 1)
    req = request(**fields)
    loras = load_loras(args.lora or [])
    paths = output_paths(args.out, req.task.batch_size)
    check_output_paths([("--out", p) for p in paths] + ([("--save-latents", args.save_latents)]
                                                        if args.save_latents else []), _input_files(args))
    timing_paths = {flag: output_paths(path, req.task.batch_size) for flag, path in timed}
    check_output_paths([(flag, p) for flag, ps in timing_paths.items() for p in ps], _input_files(args))

    # 2. Which model and LM, and can they take these settings (read from configs/headers, nothing loaded yet).
    from dataclasses import replace

    from .loading.checkpoint import dtype_name, inspect_checkpoint, resolve_dtype
    from .loading.layout import model_folders
    from .loading.lm import lm_name
    from .request import resolve_sampler

    checkpoint = resolve_checkpoint(args.checkpoint, args.allow_download)
    folder = args.model
    if folder is None and req.task.rule.base_only and "acestep-v15-base" in model_folders(checkpoint):
        folder = "base"
    info = inspect_checkpoint(checkpoint, dit_folder=folder)
    resolve_sampler(req.sampler, info.variant)
    if loras:
        from .adapters import check_fit

        check_fit(loras, info.config)  # keys and shapes against this model's size, before any weight is read
    lm_path = resolve_lm(args.lm, info)
    if args.simple is not None and lm_path is None:
        raise UsageError(_no_lm_message("--simple", checkpoint))
    mode = _lm_mode(args, req, lm_path, checkpoint)
    if mode != req.lm.mode:  # the default: think with an LM found
        req = replace(req, lm=replace(req.lm, mode=mode))
        fields["lm_mode"] = mode
    uses_lm = mode != "off" or args.simple is not None
    if uses_lm:
        _check_lm_int8(args, device)
    dtype = resolve_dtype(args.dtype, device)
    name = os.path.basename(os.path.normpath(info.paths.dit))
    weights = "" if memory.weight_dtype == "default" else f" · {memory.weight_dtype}"
    lm_part = f" · LM {lm_name(lm_path)} ({'simple, ' if args.simple is not None else ''}{mode})" if uses_lm else ""
    print(f"ACE-Step 1.5 {info.variant} ({name}) · {dtype_name(dtype)}{weights} · {device} · {req.task.kind}"
          + lm_part + describe_loras(loras), file=sys.stderr)
    if req.task.rule.base_only and VARIANTS[info.variant].kind != "base":
        print(f"warning: the official app offers {req.task.kind} only on the base model; this runs {name} "
              "(add --model base)", file=sys.stderr)

    # 3. Load, (simple mode,) generate, write.
    t0 = time.monotonic()
    from .memory.estimates import Workload
    from .memory.manager import load_device, memory_manager

    placed = device.type == "cuda" or memory.manual  # plan per request, one unit at a time when it must
    where = load_device(info, dtype, device, memory, Workload.of(req, info.variant)) if placed else device
    pipe = load_pipeline(checkpoint, folder, dtype, where, memory.weight_dtype)
    if uses_lm:
        load_lm(pipe, lm_path, args.lm_int8)
    if placed:  # the same weights and LM, handed a memory manager over both (the LM is loaded by now)
        from .pipeline import AceStepPipeline

        pipe = AceStepPipeline(pipe.ckpt, pipe.planner, memory_manager(pipe.ckpt, memory, device,
                                                                       planner=pipe.planner))
    print(f"loaded in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    tokens = TokenProgress()
    if args.simple is not None:
        seeds = req.lm.seed if req.lm.seed is not None else req.sampler.seed
        first = seeds[0] if isinstance(seeds, tuple) else seeds
        try:
            desc = pipe.simple(args.simple, args.instrumental, fields.get("language"), seed=first, settings=req.lm,
                               on_token=tokens)
        finally:
            tokens.close()
        print(f"simple mode: {desc.summary()}", file=sys.stderr)
        fields = _simple_fields(fields, desc)
        req = request(**fields)
        fields["simple"] = {"query": args.simple, "instrumental": args.instrumental}  # tags
    if loras:
        fields["loras"] = [{"name": adapter.name, "strength": strength} for adapter, strength in loras]  # tags
    bar = ProgressBar()
    t1 = time.monotonic()

    def warn(message: str) -> None:
        bar.close(complete=False)
        tokens.close()
        print(f"warning: {message}", file=sys.stderr)

    def step(i: int, total: int) -> None:
        tokens.close()
        bar(i, total)

    extra = {"on_token": tokens} if uses_lm else {}
    if timed:
        extra["timestamps"] = True
    try:
        result = pipe(req, on_step=step, should_cancel=None, on_warning=warn, adapters=loras, **extra)
    except BaseException:
        tokens.close()
        bar.close(complete=False)
        raise
    bar.close()
    write_outputs(result, paths, fields, name, args.quality, args.save_latents, timing_texts(result, timing_paths))
    if result.metadata.get("lm"):
        from .planning import summary

        print(summary(result.request), file=sys.stderr)
    seconds = result.audio.shape[-1] / result.sample_rate
    print(f"generated {len(paths)} x {seconds:.1f}s in {time.monotonic() - t1:.1f}s "
          f"(seeds {', '.join(str(s) for s in result.seeds)})", file=sys.stderr)
    if result.metadata.get("memory"):
        vae = result.vae_run
        print(f"memory: {result.metadata['memory']}" + (f" · {vae.describe()}" if vae else ""), file=sys.stderr)
    for path in paths + ([args.save_latents] if args.save_latents else []) + \
            [p for ps in timing_paths.values() for p in ps]:
        print(path)
    return 0


def understand(args) -> int:
    """``acestep understand``: a recording → caption, lyrics and metas, as the 5 Hz LM hears it."""
    import random

    from .constants import LM_UNDERSTAND_TOP_P
    from .loading.checkpoint import dtype_name, inspect_checkpoint, resolve_dtype
    from .loading.lm import lm_name
    from .request import AudioClip, PlanSettings, check_seed

    # 1. Everything the user typed.
    device = _check_device(args.device)
    given = {k[len("lm_"):]: v for k, v in option_fields(args, PLAN_OPTIONS).items()}
    settings = PlanSettings(**{"top_p": LM_UNDERSTAND_TOP_P, **given})
    seed = check_seed(_parse_seed(args.seed))
    if isinstance(seed, tuple):
        raise UsageError(f"--seed {args.seed!r} is not allowed: one integer")
    seed = random.SystemRandom().randint(0, 2**32 - 1) if seed is None else seed
    wav, rate = load_audio(args.src_audio, DURATION_MAX, "--src-audio", MODEL_CHANNELS)
    clip = AudioClip(wav, rate, "--src-audio")

    # 2. Which model and LM.
    checkpoint = resolve_checkpoint(args.checkpoint, False)
    info = inspect_checkpoint(checkpoint, dit_folder=args.model)
    lm_path = resolve_lm(args.lm, info)
    if lm_path is None:
        raise UsageError(_no_lm_message("understand", checkpoint))
    _check_lm_int8(args, device)
    dtype = resolve_dtype(args.dtype, device)
    name = os.path.basename(os.path.normpath(info.paths.dit))
    print(f"ACE-Step 1.5 {info.variant} ({name}) · {dtype_name(dtype)} · {device} · understand · "
          f"LM {lm_name(lm_path)}", file=sys.stderr)

    # 3. Load, listen, print.
    t0 = time.monotonic()
    pipe = load_pipeline(checkpoint, args.model, dtype, device)
    load_lm(pipe, lm_path, args.lm_int8)
    print(f"loaded in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    tokens = TokenProgress()
    try:
        desc = pipe.understand(clip, seed, settings, on_token=tokens)
    finally:
        tokens.close()
    text = desc.text
    values = {"caption": desc.caption, "bpm": text.bpm, "keyscale": text.keyscale,
              "timesignature": text.timesignature, "duration": desc.duration, "language": desc.language,
              "lyrics": desc.lyrics, "seed": seed}
    if args.json:
        print(json.dumps(values, ensure_ascii=False))
    else:
        for key in ("caption", "bpm", "keyscale", "timesignature", "duration", "language"):
            if values[key] not in (None, ""):
                print(f"{key}: {values[key]:g}" if isinstance(values[key], float) else f"{key}: {values[key]}")
        print(f"lyrics:\n{desc.lyrics}" if desc.lyrics else "lyrics:")
    print(f"(seed {seed})", file=sys.stderr)
    return 0


def _one_line(e: BaseException) -> str:
    if isinstance(e, InputError) and e.name.startswith("--"):  # a file given on the command line
        return f"{e.name} {e.value} is not allowed: {e.allowed}"
    if isinstance(e, InputError) and e.name in FLAGS:
        return f"{FLAGS[e.name]} {shown(e.value)} is not allowed: {e.allowed}"
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return generate(args)
        if args.command == "understand":
            return understand(args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (acestep_core.__main__ raises Interrupted for both)
        stop = e if isinstance(e, Interrupted) else Interrupted()
        sys.stderr.write(f"{stop.line}\n")  # progress lines were ended on the way out
        return stop.exit_code
    except (UsageError, ValueError, OSError) as e:  # CheckpointError and InputError are ValueErrors
        sys.stderr.write(f"error: {_one_line(e)}\n")
        return 1
    return 2
