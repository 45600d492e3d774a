"""Command line: ``acestep generate --caption "..." --lyrics-file song.txt --duration 60 --out song.flac``
(``python -m acestep_core generate …`` from the pack folder does the same); ``acestep generate --simple "a soft
Bengali love song"`` lets the 5 Hz LM write caption, lyrics and metas first; ``acestep understand --src-audio
song.flac`` describes a recording.

Order of work: every argument, file and request field is checked first (output paths included), then the model
is found and its variant read from its config or file header (settings the variant cannot take are refused
there), then one line says which model runs where, and only then is anything loaded. Every bad input ends the
run with exit status 1 (2 for unparseable arguments) and one line ``error: <reason>`` on stderr. Outputs are
written only when the whole batch has been generated and encoded, all or nothing, each file atomically.

This module holds the two commands and what they load; ``arguments`` the parser and the request fields it gives,
``checkpoints`` where the models are found, ``outputs`` what is written and how, ``progress`` the bars on stderr.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

from ..audio import MODEL_CHANNELS, check_save_options, load_audio
from ..checks import check_query
from ..constants import DURATION_MAX, VARIANTS
from ..errors import InputError, Interrupted, UsageError, shown
from ..options import PLAN_OPTIONS
from ..request import request
from ..tasks import SOURCE_TASKS
from .arguments import FLAGS, _input_files, _parse_seed, _read_text, build_parser, option_fields, request_fields
from .checkpoints import HF_LM_COMMAND, resolve_checkpoint
from .outputs import check_output_paths, check_timestamp_outputs, output_paths, timing_texts, write_outputs
from .progress import ProgressBar, TokenProgress


# --------------------------------------------------------------------------------------------------- pieces


def _check_device(device: str | None):
    """Catch a wrong --device before the model load (torch would fail later with a less helpful message)."""
    import torch

    from ..loading.checkpoint import resolve_device

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
    from ..adapters import load_adapter, parse_lora_spec

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
    from ..pipeline import AceStepPipeline

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
    from ..errors import CheckpointError
    from ..loading.lm import LM_EXPECTED, NotAnLM, check_lm, find_lm

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

    from ..planning import lm_work

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
    from ..memory.manager import MemorySettings

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

    from ..loading.checkpoint import dtype_name, inspect_checkpoint, resolve_dtype
    from ..loading.layout import model_folders
    from ..loading.lm import lm_name
    from ..schedule import resolve_sampler

    checkpoint = resolve_checkpoint(args.checkpoint, args.allow_download)
    folder = args.model
    if folder is None and req.task.rule.base_only and "acestep-v15-base" in model_folders(checkpoint):
        folder = "base"
    info = inspect_checkpoint(checkpoint, dit_folder=folder)
    resolve_sampler(req.sampler, info.variant)
    if loras:
        from ..adapters import check_fit

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
    from ..memory.estimates import Workload
    from ..memory.manager import load_device, memory_manager

    placed = device.type == "cuda" or memory.manual  # plan per request, one unit at a time when it must
    where = load_device(info, dtype, device, memory, Workload.of(req, info.variant)) if placed else device
    pipe = load_pipeline(checkpoint, folder, dtype, where, memory.weight_dtype)
    if uses_lm:
        load_lm(pipe, lm_path, args.lm_int8)
    if placed:  # the same weights and LM, handed a memory manager over both (the LM is loaded by now)
        from ..pipeline import AceStepPipeline

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
        from ..planning import summary

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

    from ..constants import LM_UNDERSTAND_TOP_P
    from ..loading.checkpoint import dtype_name, inspect_checkpoint, resolve_dtype
    from ..loading.lm import lm_name
    from ..checks import check_seed
    from ..request import AudioClip, PlanSettings

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
