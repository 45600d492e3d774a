"""ACE-Step 1.5 for ComfyUI.

The model code lives in ``acestep_core`` (no ComfyUI imports); the ComfyUI nodes in ``nodes`` are thin
wrappers over it. Registration uses ComfyUI's V3 API (``comfy_entrypoint``); there is deliberately no
``NODE_CLASS_MAPPINGS``, which would make ComfyUI ignore the entry point. Importing the package loads no model
and does no GPU work.
"""
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entrypoint

    return await entrypoint()
