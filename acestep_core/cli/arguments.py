"""The command line's arguments: the parser (the options' flags, help and ranges from ``acestep_core.options``),
the request fields they give, and the files they name. A bad argument is a :class:`UsageError` (one line).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from .. import __version__
from ..constants import DTYPES, LM_UNDERSTAND_TOP_P, WEIGHT_DTYPES
from ..errors import UsageError
from ..options import (
    BY_KEY, FLOW_EDIT_OPTIONS, PLAN_OPTIONS, RENDER_OPTIONS, SAMPLER_OPTIONS, SONG_OPTIONS, SWITCH, TASK_OPTIONS,
    Option, option,
)
from ..tasks import TASKS
from .checkpoints import HF_REPO

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


class _Parser(argparse.ArgumentParser):
    """argparse prints a usage block before its error; we print the one line only (``-h`` shows usage)."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see --help)\n")
        raise SystemExit(2)


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


def _input_files(args) -> list[tuple[str, str | None]]:
    """The files a generate run reads, (flag, path), that no output may overwrite."""
    from ..adapters import parse_lora_spec

    codes = args.audio_codes[1:] if args.audio_codes and args.audio_codes.startswith("@") else None
    return [("--src-audio", args.src_audio), ("--ref-audio", args.ref_audio), ("--lyrics-file", args.lyrics_file),
            ("--audio-codes", codes), ("--checkpoint", args.checkpoint),
            *(("--lora", parse_lora_spec(spec)[0]) for spec in args.lora or ())]


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
