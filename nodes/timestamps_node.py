"""The ACE-Step 1.5 Lyric Timestamps node: the Sampler's output (or any audio LATENT + the conditioning it was made
with) → when each sung line starts and ends, as LRC text and as per-song lines that Save Audio writes next to the
songs (.lrc and .vtt) and the results panel shows while playing."""
from __future__ import annotations

from comfy_api.latest import io

from ..acestep_core.errors import Described, InputError
from ..acestep_core.request import Request
from ..acestep_core.timestamps import to_lrc
from .acestep_nodes import (
    CATEGORY, LATENT_ALIGNMENT_KEY, PREFIX, AceStepLyricTiming, AceStepModel, AceStepText, _latent_task,
)


class LyricTimestamps(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=PREFIX + "LyricTimestamps",
            display_name="ACE-Step 1.5 Lyric Timestamps",
            category=CATEGORY,
            description="When each sung line starts and ends, read from the model's attention to the lyrics as the "
                        "official app makes its LRC (one extra DiT pass). Outputs the LRC text; connect "
                        "lyric_timing to ACE-Step 1.5 Save Audio to write .lrc and .vtt files next to the songs "
                        "and see the current line while playing. Section tags such as [Verse] are not sung lines.",
            inputs=[
                AceStepModel.Input("model", tooltip="The model (and LoRAs) the songs were made with."),
                io.Latent.Input("latent", tooltip="The ACE-Step 1.5 Sampler's output (before VAE Decode)."),
                AceStepText.Input("conditioning", optional=True,
                                  tooltip="Only for latents that did not come from the ACE-Step 1.5 Sampler: the "
                                          "Caption & Lyrics they were made with (the Sampler's output carries "
                                          "its own)."),
                io.Boolean.Input("word_times", default=False, advanced=True,
                                 tooltip="Enhanced LRC: a <mm:ss.xx> time before every word as well."),
            ],
            outputs=[
                io.String.Output(display_name="lrc", tooltip="[mm:ss.xx]line per sung line; songs of a batch one "
                                                             "after another, a blank line between them."),
                AceStepLyricTiming.Output(display_name="lyric_timing",
                                          tooltip="The lines of each song, for ACE-Step 1.5 Save/Preview Audio."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, conditioning=None, word_times=False) -> io.NodeOutput:
        task = _latent_task(latent)  # checks the LATENT
        pipe, adapters = model.pipeline, model.pipeline_adapters
        alignment = latent.get(LATENT_ALIGNMENT_KEY)
        if alignment is None:
            if conditioning is None:
                raise InputError("conditioning", None, "connect the Caption & Lyrics the latents were made with "
                                                       "(or take the latent from the ACE-Step 1.5 Sampler)")
            alignment = pipe.alignment_inputs(Request(conditioning, task), adapters)
        latents = latent["samples"].transpose(1, 2)
        if latents.shape[0] != alignment.condition.shape[0]:
            raise InputError("latent", Described(f"<{latents.shape[0]} songs>"),
                             f"the {alignment.condition.shape[0]} songs the Sampler made")
        timing = pipe.time_lyrics(alignment, latents, adapters)
        lrc = "\n".join(to_lrc(lines, words=word_times) for lines in timing)
        shown = lrc if any(timing) else "(no sung lines: the lyrics are empty or only section tags)"
        return io.NodeOutput(lrc, timing, ui={"text": [shown]})
