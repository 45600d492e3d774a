"""Regenerate the README's option tables from acestep_core/options.py (tests/test_options.py checks they agree):
    .venv/bin/python scripts/build_docs.py
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from acestep_core.options import readme_with_tables  # noqa: E402

if __name__ == "__main__":
    path = os.path.join(ROOT, "README.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    new = readme_with_tables(text)
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    print("README.md option tables " + ("updated" if new != text else "already current"))
