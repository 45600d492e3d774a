"""ACE-Step 1.5, self-contained: models, checkpoint loading (official Hugging Face layout and Comfy-Org
files), the request, the sampler, every task, decoding and a command line. Never imports ComfyUI."""
from __future__ import annotations

import os
import re


def _version() -> str:
    """The one version string lives in pyproject.toml: read from the checkout the package sits in (a ComfyUI
    custom_nodes clone, an editable install), else from the installed distribution's metadata."""
    pyproject = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    try:
        with open(pyproject, encoding="utf-8") as f:
            match = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.MULTILINE)
        if match:
            return match.group(1)
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("acestep15-nodes")
    except PackageNotFoundError:
        return "unknown"


__version__ = _version()
