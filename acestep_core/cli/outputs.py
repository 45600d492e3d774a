"""What a run writes: one audio file per song (``song.flac``, ``song_1.flac`` …), the latents, the lyric timings;
checked before any work, written all or nothing (each file through a temporary sibling renamed at the end).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

from .. import __version__
from ..audio import save_audio
from ..errors import UsageError

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


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


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
    from ..timestamps import has_sung_lines

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
    from ..timestamps import to_lrc, to_vtt

    write = {"--lrc": to_lrc, "--vtt": to_vtt}
    return [(path, write[flag](result.lyrics_timing[i])) for flag, paths in timing_paths.items()
            for i, path in enumerate(paths)]
