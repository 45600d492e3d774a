"""LoRA weight patching inside real ComfyUI's model manager, checked at the weight level (run by
tests/test_comfyui_server.py with ComfyUI's Python; it prints one JSON line and exits 0, or fails an assert).

    COMFYUI_PYTHON devtools/comfy_lora_check.py COMFYUI_DIR MODELS_DIR SCRATCH_DIR

ComfyUI is imported in-process (``--cpu``) with its folders pointed at MODELS_DIR (the tiny tree of
``devtools.comfy_harness.make_comfy_tree``); the pack is loaded as ComfyUI loads a custom node and its nodes run
as ComfyUI's executor calls them. A DoRA LoRA is written into SCRATCH_DIR, added as an extra "loras" folder (as
extra_model_paths.yaml does). Checked:
  * the LoRA nodes hand the stack to the DiT's ModelPatcher (one weight patch per changed weight) and the Sampler's
    latents equal the core's own ``patched()`` path on the same stack, bit for bit (fp32);
  * a branch without LoRAs, run after the LoRA branch, gives the same latents as before it, and every weight of
    the cached model is then back in its own memory with its own bits;
  * strength 0 adds no patch at all.
"""
from __future__ import annotations

import json
import os
import sys

COMFYUI_DIR, MODELS_DIR, SCRATCH = sys.argv[1:4]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.argv = ["main.py", "--cpu"]
sys.path[:0] = [COMFYUI_DIR, ROOT]

import torch  # noqa: E402
import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()
import folder_paths  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from devtools import comfy_harness as h  # noqa: E402
from devtools import lora_fixtures as lf  # noqa: E402
from devtools.tiny import tiny_config_json  # noqa: E402

P = "AceStep15_"
folder_paths.models_dir = MODELS_DIR
for kind, (paths, extensions) in list(folder_paths.folder_names_and_paths.items()):
    folder_paths.folder_names_and_paths[kind] = ([os.path.join(MODELS_DIR, os.path.basename(p)) for p in paths],
                                                 extensions)
dit_file = os.path.join(MODELS_DIR, "diffusion_models", "acestep_v1.5_turbo.safetensors")
shapes = lf.module_shapes(tiny_config_json())
lf.write_lora_file(os.path.join(SCRATCH, "dora.safetensors"), lf.lora_factors(shapes, 2, seed=7), 2.0, "lycoris",
                   dora_scales={n: m.view(-1, 1) for n, m in lf.dora_magnitudes(load_file(dit_file), shapes, 7).items()})
folder_paths.add_model_folder_path("loras", SCRATCH)

nodes = h.node_classes()
pack = h.load_pack()
host = sys.modules[pack.__name__ + ".nodes.comfy_adapter"]
request = sys.modules[pack.__name__ + ".acestep_core.request"].request
assert host.host_patches_weights(), "ComfyUI's comfy.lora / comfy.weight_adapter were not found"


def run(node, hidden=None, **inputs):
    return h.run_node(nodes[P + node], hidden, **inputs)


options = nodes[P + "LoraLoader"].GET_NODE_INFO_V1()["input"]["required"]["lora_name"][1]["options"]
assert "dora.safetensors" in options and lf.EXAMPLE_LORA_FILE in options, options
model = run("ModelLoader", model="diffusion_models/acestep_v1.5_turbo.safetensors", text_encoder="auto", vae="auto",
            dtype="fp32").args[0]
text = run("TextEncode", caption="synth pop", lyrics="[Verse]\nla", language="en", bpm=0, keyscale="auto",
           timesignature="auto").args[0]
latent = run("EmptyLatent", duration=10.0, batch_size=1).args[0]
dit = model.pipeline.model


def sample(m):
    return run("Sampler", {"unique_id": "1"}, model=m, conditioning=text, latent=latent, seed=4, steps=3).args[0][
        "samples"]


plain = sample(model)
memory = {name: (p.data_ptr(), p.detach().clone()) for name, p in dit.named_parameters()}
stack = model
for name, strength in ((lf.EXAMPLE_LORA_FILE, 0.8), ("dora.safetensors", 1.0), (lf.EXAMPLE_LOKR_FOLDER, -0.5)):
    stack = run("LoraLoader", model=stack, lora_name=name, strength=strength).args[0]
patcher = stack.modules.patchers["model"]
adapters = sys.modules[pack.__name__ + ".acestep_core.adapters"]
changed = len(adapters.weight_deltas(dit, stack.adapters))
assert stack.host_patched and stack.pipeline_adapters == ()
assert len(patcher.patches) == changed and all(len(p) == 1 for p in patcher.patches.values()), len(patcher.patches)
assert not model.modules.patchers["model"].patches  # the loader's patcher is not changed

with_loras = sample(stack)  # ComfyUI patches the weights when it loads the clone
after = sample(model)  # the branch without LoRAs: ComfyUI puts the originals back when it loads the base patcher
assert torch.equal(after, plain), "the branch without LoRAs changed after the LoRA branch ran"
for name, p in dit.named_parameters():
    pointer, values = memory[name]
    assert p.data_ptr() == pointer and torch.equal(p.detach(), values), f"{name} was not restored"

core = model.pipeline(request(caption="synth pop", lyrics="[Verse]\nla", language="en", duration=10.0, seed=4,
                              steps=3), adapters=stack.adapters)
core = core.latents.transpose(1, 2)
difference = (with_loras - plain).abs().max().item()
assert difference > 1e-2, difference
assert torch.equal(core, with_loras), f"ComfyUI's patch path and the core's differ by {(core - with_loras).abs().max()}"

off = run("LoraLoader", model=model, lora_name=lf.EXAMPLE_LORA_FILE, strength=0.0).args[0]
assert not off.modules.patchers["model"].patches
assert torch.equal(sample(off), plain)
print(json.dumps({"patched_weights": changed, "lora_vs_plain_max_abs": difference, "core_equals_comfyui": True}))
