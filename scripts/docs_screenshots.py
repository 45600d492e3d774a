"""Copy the browser test's screenshots of the bundled workflows into docs/images/ as small PNGs for the README.

Run tests/test_browser.py first (it writes output/browser/default-acestep15_*.png: each workflow as ComfyUI's
pinned frontend opens it in a 1600 x 1000 window), then:
    .venv/bin/python scripts/docs_screenshots.py
Each image is cropped to the canvas (no browser tabs), scaled to WIDTH pixels and stored with a 256-colour
palette, which keeps it well under 300 KB.
"""
from __future__ import annotations

import glob
import os
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = os.path.join(ROOT, "output", "browser")
OUT = os.path.join(ROOT, "docs", "images")
CANVAS = (56, 38, 1600, 1000)  # left, top, right, bottom of the graph canvas in the test's window (below the tabs)
WIDTH = 900


def main() -> int:
    shots = sorted(glob.glob(os.path.join(SHOTS, "default-acestep15_*.png")))
    if not shots:
        print(f"no screenshots in {SHOTS}: run tests/test_browser.py first", file=sys.stderr)
        return 1
    os.makedirs(OUT, exist_ok=True)
    for path in shots:
        name = os.path.basename(path).removeprefix("default-")
        image = Image.open(path).convert("RGB").crop(CANVAS)
        image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
        target = os.path.join(OUT, name)
        image.quantize(colors=256, method=Image.MEDIANCUT, dither=Image.NONE).save(target, optimize=True)
        print(f"{target}: {os.path.getsize(target) // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
