"""Where the command line finds the models: ``--checkpoint``, ``$ACESTEP_MODELS`` or ``./models/acestep``, and the
optional download of the main repository (``--allow-download``).
"""
from __future__ import annotations

import os
import sys

from ..errors import UsageError

HF_REPO = "ACE-Step/Ace-Step1.5"


DEFAULT_CHECKPOINT = os.path.join(".", "models", "acestep")  # ComfyUI's models/acestep, run from the ComfyUI folder


HF_ALLOW_PATTERNS = ["acestep-v15-turbo/*", "vae/*", "Qwen3-Embedding-0.6B/*", "acestep-5Hz-lm-1.7B/*"]


HF_COMMAND = f'hf download {HF_REPO} --local-dir {{path}}'


HF_LM_COMMAND = f'hf download {HF_REPO} --include "acestep-5Hz-lm-1.7B/*" --local-dir {{path}}'


def default_checkpoint() -> str:
    return os.environ.get("ACESTEP_MODELS") or DEFAULT_CHECKPOINT


def _looks_like_file(path: str) -> bool:
    return path.lower().endswith((".safetensors", ".ckpt", ".pt", ".bin"))


def missing_checkpoint_message(path: str) -> str:
    return (f"no ACE-Step 1.5 models at {path}; download them with: {HF_COMMAND.format(path=path)} (older "
            "huggingface_hub: huggingface-cli download …), or pass --checkpoint "
            "models/diffusion_models/acestep_v1.5_turbo.safetensors (Comfy-Org files, with "
            "models/text_encoders/qwen_0.6b_ace15.safetensors and models/vae/ace_1.5_vae.safetensors) "
            "or an all-in-one models/checkpoints/ace_step_1.5_turbo_aio.safetensors, or add --allow-download")


def download_checkpoint(path: str) -> str:
    """Fetch the main repository's DiT/VAE/text-encoder folders into ``path`` (via a sibling ``.download`` folder
    renamed at the end, so an interrupted download never looks like a complete checkpoint; re-running resumes)."""
    if _looks_like_file(path):
        raise UsageError(f"--allow-download needs a folder for --checkpoint, not a file ({path})")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UsageError("--allow-download needs huggingface_hub (pip install huggingface_hub), or download by hand: "
                         f"{HF_COMMAND.format(path=path)}") from None
    staging = os.path.normpath(path) + ".download"
    print(f"downloading {HF_REPO} into {path} ...", file=sys.stderr)
    try:
        snapshot_download(repo_id=HF_REPO, local_dir=staging, allow_patterns=HF_ALLOW_PATTERNS)
    except Exception as e:  # noqa: BLE001 - no network, hub down, disk full: one clear line, resumable later
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"downloading {HF_REPO} failed ({reason}); check the connection and re-run, "
                         f"or download by hand: {HF_COMMAND.format(path=path)}") from None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    os.replace(staging, path)
    return path


def resolve_checkpoint(path: str | None, allow_download: bool) -> str:
    path = os.path.expanduser(path or default_checkpoint())
    if os.path.exists(path):
        return path
    if allow_download:
        return download_checkpoint(path)
    raise UsageError(missing_checkpoint_message(path))
