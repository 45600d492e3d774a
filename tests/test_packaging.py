"""The pack as a Python package: one version string, and `pip install .` giving the `acestep` command that runs
from any folder (the README's CLI install step)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

import acestep_core
from acestep_core import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject_version() -> str:
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        return re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M).group(1)


def test_one_version_string(capsys):
    assert acestep_core.__version__ == _pyproject_version()
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"acestep_core {_pyproject_version()}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install --no-deps .` of the pack folder into a fresh target folder (the dependencies come from the
    test environment)."""
    target = tmp_path_factory.mktemp("site")
    wheels = tmp_path_factory.mktemp("wheels")
    source = tmp_path_factory.mktemp("pack") / "pack"  # a copy: setuptools writes build/ into the folder it builds
    skip = {".venv", ".git", "node_modules", "output", "models", "build"}  # the checkout's own, not the package's
    shutil.copytree(ROOT, source, ignore=lambda folder, names: [n for n in names if n == "__pycache__" or (
        os.path.samefile(folder, ROOT) and n in skip)])
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(wheels)],
                   check=True, timeout=600, capture_output=True)
    (wheel,) = os.listdir(wheels)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheels / wheel)], check=True, timeout=600, capture_output=True)
    return target


def test_pip_install_gives_the_acestep_command(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    script = installed / "bin" / "acestep"
    assert script.is_file()
    out = subprocess.run([sys.executable, str(script), "--version"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    # Away from the checkout the version comes from the installed metadata: the same string.
    assert out.returncode == 0 and out.stdout.strip() == f"acestep_core {_pyproject_version()}", out.stderr
    out = subprocess.run([sys.executable, str(script), "generate", "--checkpoint", str(tmp_path / "none")], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.startswith("error: no ACE-Step 1.5 models at")
    for module in ("models/dit.py", "loading/checkpoint.py", "request.py", "assets/qwen3_tokenizer/tokenizer.json.gz"):
        assert (installed / "acestep_core" / module).is_file(), module
