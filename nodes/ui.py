"""What the nodes send to the pack's frontend extension (web/acestep.js) in their UI output, besides the files.

- Task nodes with a source (Cover, Repaint, Extend, Stems) return ``acestep_source``: the source's peaks, so the
  waveform can be drawn when the source is not a file the browser can fetch (any AUDIO, not just Load Audio).
- VAE Decode tags the AUDIO of a repaint/extend result with the edited region and the source (``EDIT_KEY``);
  other audio nodes build new AUDIO dicts, so the tag only survives a direct Decode → Save/Preview link.
- Save/Preview return ``acestep_peaks`` (one summary per batch item) and, for a tagged result,
  ``acestep_edit``: the edited region on the result's time axis and the source as a temporary FLAC for A/B.

- Save/Preview with Lyric Timestamps connected return ``acestep_lyrics``: each song's sung lines
  ({text, start, end}), which the results panel shows in time with its player; Save also writes them as .lrc and
  .vtt next to each file.

Everything here is JSON (lists of dicts), as ComfyUI's history and websocket messages need.
"""
from __future__ import annotations

import os

import torch

from ..acestep_core.audio import save_audio
from ..acestep_core.peaks import peaks_summary
from . import comfy_adapter as host

UI_SOURCE = "acestep_source"
UI_PEAKS = "acestep_peaks"
UI_EDIT = "acestep_edit"
UI_LYRICS = "acestep_lyrics"
EDIT_KEY = "acestep_edit"  # extra key of an AUDIO dict from VAE Decode: {start, end, source_offset, source, source_rate}


def source_ui(task) -> dict | None:
    """``ui`` of a task node: the source's peaks (None when the task has no source)."""
    if task.source is None:
        return None
    return {UI_SOURCE: [peaks_summary(task.source.waveform, task.source.sample_rate)]}


def edit_region(task) -> dict | None:
    """Where a repaint/extend/lego result differs from its source, on the result's time axis (seconds):
    {"start", "end", "source_offset"}; ``source_offset`` is where the source begins in the result (extend
    before the start). None for tasks without a window."""
    if task is None or task.source is None or task.window is None:
        return None
    offset, _ = task.window.padding(task.source.seconds)
    window = task.window.shifted(offset)
    return {"start": round(window.start, 6), "end": round(window.end, 6), "source_offset": round(offset, 6)}


def tag_edit(audio: dict, task) -> dict:
    """VAE Decode's AUDIO with the edited region and the source attached (unchanged for other tasks)."""
    region = edit_region(task)
    if region is None:
        return audio
    return {**audio, EDIT_KEY: {**region, "source": task.source.waveform, "source_rate": task.source.sample_rate}}


def _write_source(edit: dict) -> dict:
    """The source of an edit as a temporary FLAC; returns its {filename, subfolder, type} entry."""
    target = host.save_target("ACE-Step_source_" + os.urandom(3).hex(), host.temp_directory())
    name = f"{target.filename}_{target.counter:05}_.flac"
    save_audio(os.path.join(target.folder, name), edit["source"].float().cpu(), edit["source_rate"])
    return {"filename": name, "subfolder": target.subfolder, "type": "temp"}


def write_lyric_files(directory: str, files: list[dict], timing: list) -> None:
    """Each song's lines as ``<file stem>.lrc`` and ``.vtt`` next to its audio file (``files``: the Save entries,
    ``subfolder`` relative to ``directory``); written under temporary names first, renamed when all are written."""
    from ..acestep_core.timestamps import to_lrc, to_vtt

    staged = []
    try:
        for entry, lines in zip(files, timing):
            stem = os.path.splitext(os.path.join(directory, entry["subfolder"], entry["filename"]))[0]
            for ext, text in ((".lrc", to_lrc(lines)), (".vtt", to_vtt(lines))):
                tmp = f"{stem}.partial{ext}"
                staged.append((tmp, stem + ext))
                with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                    f.write(text)
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def lyrics_ui(timing: list) -> list[list[dict]]:
    """Each song's lines as JSON for the results panel."""
    return [[{"text": line.text, "start": line.start, "end": line.end} for line in lines] for lines in timing]


def results_ui(audio: dict, files: list[dict], timing: list | None = None) -> dict:
    """``ui`` of Save/Preview: the files (ComfyUI's player), each item's peaks, for an edit the region and the
    source to compare with, and with ``timing`` (Lyric Timestamps) each song's sung lines."""
    waveform = audio["waveform"]
    if waveform.dim() == 2:
        waveform = waveform[None]
    rate = int(audio["sample_rate"])
    ui = {"audio": files, UI_PEAKS: [peaks_summary(item, rate) for item in waveform.float().cpu()]}
    edit = audio.get(EDIT_KEY)
    if isinstance(edit, dict) and isinstance(edit.get("source"), torch.Tensor):
        region = {k: edit[k] for k in ("start", "end", "source_offset")}
        ui[UI_EDIT] = [{**region, "source": _write_source(edit)}]
    if timing is not None:
        ui[UI_LYRICS] = lyrics_ui(timing)
    return ui
