"""ACE-Step 1.5 for ComfyUI.

The model code lives in ``acestep_core`` (no ComfyUI imports); the ComfyUI nodes in ``nodes`` are thin
wrappers over it. Importing this package must stay cheap: no model, no torch work at import time.
"""
WEB_DIRECTORY = "./web"
