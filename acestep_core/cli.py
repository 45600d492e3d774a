"""Command line: ``python -m acestep_core generate --caption "..." --lyrics-file song.txt --duration 60 --out song.flac``.

Every bad input (argument, file, checkpoint, request) ends the run with exit status 1 (2 for unparseable
arguments) and one line ``error: <reason>`` on stderr; outputs are written only when the whole batch has been
generated and encoded, each file atomically, so a failed run leaves no partial file behind.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

from . import __version__
from .audio import check_save_options, fade, load_audio, save_audio

HF_REPO = "ACE-Step/Ace-Step1.5"
DEFAULT_CHECKPOINT = os.path.join(".", "models", "acestep", "Ace-Step1.5")
# The components of the main repository the pipeline uses (it also holds a 5 Hz LM we do not need).
HF_ALLOW_PATTERNS = ["acestep-v15-turbo/*", "vae/*", "Qwen3-Embedding-0.6B/*"]
TASK_HELP = "text2music (default), cover, repaint, extend, extract, lego, complete"
DTYPES = ("auto", "bf16", "fp16", "fp32")
TIME_SIGNATURE_FRACTIONS = {"2/4": "2", "3/4": "3", "4/4": "4", "6/8": "6"}


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
    parser = _Parser(prog="python -m acestep_core", description="ACE-Step 1.5: caption + lyrics -> 48 kHz stereo song.")
    parser.add_argument("--version", action="version", version=f"acestep_core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="generate audio", description="Generate audio with ACE-Step 1.5.")

    io = g.add_argument_group("model and output")
    io.add_argument("--checkpoint", default=None,
                    help="official layout folder (.../Ace-Step1.5), one acestep-v15-* folder, a Comfy-Org diffusion "
                         "model file or an all-in-one file (default: $ACESTEP_MODELS or ./models/acestep/Ace-Step1.5)")
    io.add_argument("--allow-download", action="store_true",
                    help=f"download {HF_REPO} (DiT turbo, VAE, text encoder) into --checkpoint when it is missing")
    io.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bf16 on a capable GPU, else fp32")
    io.add_argument("--device", default=None, help="cuda, cuda:1, cpu, mps ... (default: cuda if available)")
    io.add_argument("--out", default="song.flac",
                    help="output file; .flac, .wav, .mp3 or .opus; batch items 2.. get _1, _2 ... (default song.flac)")
    io.add_argument("--quality", default=None,
                    help="flac: 16|24, wav: 16|24|float, mp3: V0|128k|320k..., opus: 64k|128k...")
    io.add_argument("--save-latents", default=None, metavar="FILE.safetensors",
                    help="also write the final latents [B, T, 64] and the seeds")
    io.add_argument("--no-normalize", action="store_true", help="skip the -1 dBFS peak normalisation")
    io.add_argument("--fade-in", type=float, default=0.0, metavar="SECONDS", help="linear fade-in")
    io.add_argument("--fade-out", type=float, default=0.0, metavar="SECONDS", help="linear fade-out")

    text = g.add_argument_group("what to generate")
    text.add_argument("--caption", default=None, help="style / description of the music")
    text.add_argument("--lyrics", default=None, help="lyrics text ([verse], [chorus] ... tags allowed); '[Instrumental]' for none")
    text.add_argument("--lyrics-file", default=None, help="read the lyrics from a UTF-8 text file ('-' = stdin)")
    text.add_argument("--language", default=None, help="vocal language code (en, zh, ja, ... or unknown)")
    text.add_argument("--bpm", type=int, default=None, help="tempo, 30-300")
    text.add_argument("--key", default=None, help="key and scale, e.g. 'C major', 'F# minor'")
    text.add_argument("--timesig", default=None, help="beats per bar: 2, 3, 4 or 6 (2/4, 3/4, 4/4, 6/8 accepted)")
    text.add_argument("--duration", type=float, default=None, help="seconds, 10-600 (text2music default 120)")

    task = g.add_argument_group("task and source audio")
    task.add_argument("--task", default=None, help=TASK_HELP)
    task.add_argument("--src-audio", default=None, help="source audio file (cover, repaint, extend, extract, lego, complete)")
    task.add_argument("--ref-audio", default=None, help="timbre reference audio file")
    task.add_argument("--start", type=float, default=None, help="repaint / extend / lego window start, seconds")
    task.add_argument("--end", type=float, default=None, help="window end, seconds (default: end of the source)")
    task.add_argument("--track", action="append", default=None, help="track name for extract / lego / complete (repeatable)")
    task.add_argument("--repaint-mode", default=None, help="balanced (default), conservative or aggressive")
    task.add_argument("--repaint-strength", type=float, default=None, help="0-1, for balanced mode (default 0.5)")
    task.add_argument("--cover-strength", type=float, default=None,
                      help="fraction of the steps that follow the source (audio_cover_strength, default 1.0)")
    task.add_argument("--cover-noise", type=float, default=None,
                      help="start cover from the source instead of pure noise, 0-1 (default 0)")
    task.add_argument("--audio-codes", default=None,
                      help="5 Hz audio codes ('<|audio_code_N|>...' or integers); @FILE reads them from a file")

    s = g.add_argument_group("sampling")
    s.add_argument("--steps", type=int, default=None, help="diffusion steps (variant default: turbo 8)")
    s.add_argument("--shift", type=float, default=None, help="timestep shift (default 3.0)")
    s.add_argument("--guidance", type=float, default=None, help="CFG scale for base/sft models (turbo: unused)")
    s.add_argument("--seed", default=None, help="integer, or comma-separated seeds, one per batch item (default random)")
    s.add_argument("--batch", type=int, default=None, help="number of songs, 1-8 (default 1)")
    return parser


# --------------------------------------------------------------------------------------------------- pieces


def _read_text(path: str, what: str) -> str:
    if path == "-":
        return sys.stdin.read()
    if not os.path.isfile(path):
        raise UsageError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise UsageError(f"{what} file {path} is not UTF-8 text") from None


def _parse_seed(text: str | None):
    if text is None:
        return None
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise UsageError(f"--seed {text!r} is not allowed; use an integer or comma-separated integers") from None
    if not seeds or any(s < 0 or s >= 2**64 for s in seeds):
        raise UsageError(f"--seed {text!r} is not allowed; seeds are integers from 0 to 2^64-1")
    return seeds[0] if len(seeds) == 1 else seeds


def output_paths(out: str, count: int) -> list[str]:
    """song.flac → song.flac, song_1.flac, song_2.flac … (one per batch item)."""
    stem, ext = os.path.splitext(out)
    return [out if i == 0 else f"{stem}_{i}{ext}" for i in range(count)]


def _pipeline_api():
    """(AceStepPipeline, GenerationRequest); imported late so ``--help`` and input errors stay fast, and so tests
    can put a fake pipeline here."""
    from .pipeline import AceStepPipeline, GenerationRequest

    return AceStepPipeline, GenerationRequest


def _looks_like_file(path: str) -> bool:
    return path.lower().endswith((".safetensors", ".ckpt", ".pt", ".bin"))


def missing_checkpoint_message(path: str) -> str:
    return (f"no ACE-Step 1.5 models at {path}; put the official layout there "
            f"(huggingface-cli download {HF_REPO} --local-dir {path}: acestep-v15-turbo/, vae/, Qwen3-Embedding-0.6B/), "
            "or pass --checkpoint models/diffusion_models/acestep_v1.5_turbo.safetensors (Comfy-Org files, with "
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
                         f"huggingface-cli download {HF_REPO} --local-dir {path}") from None
    staging = os.path.normpath(path) + ".download"
    print(f"downloading {HF_REPO} into {path} ...", file=sys.stderr)
    try:
        snapshot_download(repo_id=HF_REPO, local_dir=staging, allow_patterns=HF_ALLOW_PATTERNS)
    except Exception as e:  # noqa: BLE001 - no network, hub down, disk full: one clear line, resumable later
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"downloading {HF_REPO} failed ({reason}); check the connection and re-run, "
                         f"or download by hand: huggingface-cli download {HF_REPO} --local-dir {path}") from None
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


class ProgressBar:
    """A one-line text bar on stderr, redrawn by the pipeline's per-step callback."""

    def __init__(self, stream=None, width: int = 30, label: str = "sampling"):
        self.stream = stream if stream is not None else sys.stderr
        self.width, self.label = width, label
        self.start = time.monotonic()
        self.drawn = False
        self.total = 0

    def __call__(self, step: int, total: int) -> None:
        total = max(int(total), 1)
        step = max(0, min(int(step), total))
        self.total = total
        filled = round(self.width * step / total)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {step}/{total} {time.monotonic() - self.start:6.1f}s")
        self.stream.flush()
        self.drawn = True

    def close(self, complete: bool = True) -> None:
        if self.drawn:
            if complete:
                self(self.total, self.total)
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def build_request_kwargs(args, lyrics: str | None, src, ref) -> dict:
    """GenerationRequest fields from the arguments; options not given are left out so the pipeline's defaults
    apply."""
    timesig = args.timesig
    if timesig is not None:
        timesig = TIME_SIGNATURE_FRACTIONS.get(timesig.strip(), timesig.strip())
    audio_codes = args.audio_codes
    if audio_codes is not None and audio_codes.startswith("@"):
        audio_codes = _read_text(audio_codes[1:], "--audio-codes").strip()
    kwargs = {
        "task": args.task, "caption": args.caption, "lyrics": lyrics, "language": args.language, "bpm": args.bpm,
        "keyscale": args.key, "timesignature": timesig, "duration": args.duration,
        "audio_codes": audio_codes, "repaint_start": args.start, "repaint_end": args.end,
        "repaint_mode": args.repaint_mode, "repaint_strength": args.repaint_strength,
        "tracks": tuple(args.track) if args.track else None, "audio_cover_strength": args.cover_strength,
        "cover_noise_strength": args.cover_noise, "steps": args.steps, "shift": args.shift,
        "guidance": args.guidance, "seed": _parse_seed(args.seed), "batch_size": args.batch,
        "normalize": False if args.no_normalize else None,
    }
    if src is not None:
        kwargs["src_audio"], kwargs["src_sample_rate"] = src
    if ref is not None:
        kwargs["ref_audio"], kwargs["ref_sample_rate"] = ref
    return {k: v for k, v in kwargs.items() if v is not None}


def _metadata_for(kwargs: dict, result_meta: dict, seed: int, checkpoint: str) -> dict[str, str]:
    params = {k: v for k, v in kwargs.items() if k not in ("src_audio", "ref_audio")}
    params.update({k: v for k, v in result_meta.items() if k != "seeds"})
    params["seed"] = seed
    params["checkpoint"] = os.path.basename(os.path.normpath(checkpoint))
    params["generator"] = f"acestep_core {__version__}"
    tags = {"acestep": json.dumps(params, ensure_ascii=False, default=_json_default)}
    if kwargs.get("caption"):
        tags["comment"] = kwargs["caption"]
    return tags


def _temp_sibling(path: str, tag: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.{tag}.{os.getpid()}{ext}")  # same extension: same codec choice


def write_outputs(result, paths: list[str], kwargs: dict, checkpoint: str, quality: str | None,
                  latents_path: str | None, fades: tuple[float, float]) -> None:
    """Encode every item (and the latents) under temporary names, then rename them all: all or nothing."""
    staged: list[tuple[str, str]] = []
    try:
        for i, path in enumerate(paths):
            wav = fade(result.audio[i], result.sample_rate, *fades)
            tmp = _temp_sibling(path, "partial")
            staged.append((tmp, path))
            save_audio(tmp, wav, result.sample_rate, _metadata_for(kwargs, result.metadata, result.seeds[i], checkpoint),
                       quality=quality)
        if latents_path is not None:
            import torch
            from safetensors.torch import save_file

            seeds = [int(s) for s in result.seeds]
            seed_dtype = torch.int64 if all(s < 2**63 for s in seeds) else torch.uint64
            meta = {k: v for k, v in kwargs.items() if k not in ("src_audio", "ref_audio")}
            meta.update(result.metadata)
            tmp = _temp_sibling(latents_path, "partial")
            staged.append((tmp, latents_path))
            os.makedirs(os.path.dirname(os.path.abspath(latents_path)), exist_ok=True)
            save_file({"latents": result.latents.detach().float().cpu().contiguous(),
                       "seeds": torch.tensor(seeds, dtype=seed_dtype)}, tmp,
                      metadata={"acestep": json.dumps(meta, ensure_ascii=False, default=_json_default),
                                "sample_rate": str(result.sample_rate)})
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


# --------------------------------------------------------------------------------------------------- main


def _precheck(args) -> None:
    """Cheap checks of the metadata fields before the (slow) model load; the pipeline's validate() has the
    final word after it."""
    from .request import (
        check_bpm,
        check_duration,
        check_keyscale,
        check_language,
        check_time_signature,
        check_track_name,
    )

    if args.language is not None:
        check_language(args.language)
    check_keyscale(args.key)
    if args.timesig is not None:
        check_time_signature(TIME_SIGNATURE_FRACTIONS.get(args.timesig.strip(), args.timesig.strip()))
    check_bpm(args.bpm)
    check_duration(args.duration)
    for track in args.track or ():
        check_track_name(track)
    if args.batch is not None and not 1 <= args.batch <= 8:
        raise UsageError(f"--batch {args.batch} is not allowed; use 1 to 8")


def _check_device(device: str | None) -> None:
    """Catch a wrong --device before the model load (torch would fail later with a less helpful message)."""
    if device in (None, "auto"):
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a device; use e.g. cuda, cuda:0, cpu or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available to this torch (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageError(f"--device {device}: MPS is not available on this machine")


def generate(args) -> int:
    if args.lyrics is not None and args.lyrics_file is not None:
        raise UsageError("give either --lyrics or --lyrics-file, not both")
    check_save_options(args.out, args.quality)
    if args.save_latents is not None and not args.save_latents.lower().endswith(".safetensors"):
        raise UsageError(f"--save-latents {args.save_latents!r}: the file name must end in .safetensors")
    for label, value in (("--fade-in", args.fade_in), ("--fade-out", args.fade_out)):
        if not value >= 0:
            raise UsageError(f"{label} {value} is not allowed; use seconds >= 0")
    lyrics = _read_text(args.lyrics_file, "--lyrics-file") if args.lyrics_file is not None else args.lyrics
    _precheck(args)
    _check_device(args.device)
    src = load_audio(args.src_audio) if args.src_audio else None
    ref = load_audio(args.ref_audio) if args.ref_audio else None
    kwargs = build_request_kwargs(args, lyrics, src, ref)

    checkpoint = resolve_checkpoint(args.checkpoint, args.allow_download)
    AceStepPipeline, GenerationRequest = _pipeline_api()
    request = GenerationRequest(**kwargs)
    t0 = time.monotonic()
    print(f"loading {checkpoint} ...", file=sys.stderr)
    pipe = AceStepPipeline.from_pretrained(checkpoint, dtype=args.dtype, device=args.device)
    pipe.validate(request)
    print(f"loaded in {time.monotonic() - t0:.1f}s", file=sys.stderr)

    bar = ProgressBar()
    t1 = time.monotonic()
    try:
        result = pipe(request, on_step=bar, should_cancel=None)
    except BaseException:
        bar.close(complete=False)
        raise
    bar.close()
    if result.audio is None:
        raise UsageError("the pipeline returned no audio")
    paths = output_paths(args.out, result.audio.shape[0])
    write_outputs(result, paths, kwargs, checkpoint, args.quality, args.save_latents, (args.fade_in, args.fade_out))
    seconds = result.audio.shape[-1] / result.sample_rate
    print(f"generated {len(paths)} x {seconds:.1f}s in {time.monotonic() - t1:.1f}s "
          f"(seeds {', '.join(str(s) for s in result.seeds)})", file=sys.stderr)
    for path in paths + ([args.save_latents] if args.save_latents else []):
        print(path)
    return 0


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return generate(args)
    except KeyboardInterrupt:
        sys.stderr.write("\nerror: interrupted; nothing was written\n")
        return 130
    except (UsageError, ValueError, OSError) as e:  # CheckpointError is a ValueError
        sys.stderr.write(f"error: {_one_line(e)}\n")
        return 1
    return 2
