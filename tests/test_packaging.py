"""The wheel holds every module and data file of kdutils (a user's `pip install`).

An editable install hides a package left out of the wheel: the checkout is on
the path. Here the wheel is built and its file list compared with the tree's.
(`make test-install` then installs that wheel in a fresh environment and uses it.)
"""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _package_files() -> set[str]:
    """Every file of the kdutils package in the tree, as paths from the root."""
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "kdutils").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("kdutils-*.whl")
    return path


def test_wheel_holds_every_module_and_data_file(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = {n for n in z.namelist() if n.startswith("kdutils/")}
    missing = _package_files() - names
    assert not missing, f"left out of the wheel: {sorted(missing)}"
    # every subpackage, found by setuptools' discovery, not a hand-kept list
    subpackages = {p.parent.name for p in (ROOT / "kdutils").glob("*/__init__.py")}
    assert {"distillers", "losses", "pipelines", "plots"} <= subpackages
    for sub in subpackages:
        assert f"kdutils/{sub}/__init__.py" in names


def test_wheel_declares_the_dependencies(wheel):
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(meta).decode()
    requires = {
        line.split(":", 1)[1].split(">")[0].split("=")[0].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    }
    assert {"torch", "torchvision", "numpy", "matplotlib", "scipy"} <= requires


def test_the_package_version_is_the_projects():
    import tomllib

    import kdutils

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert kdutils.__version__ == project["version"]


def test_the_layer_contract_holds():
    """pyproject.toml's [tool.importlinter] layers: no import circle, no lower
    layer importing a higher one (what `make test-lint` checks, from pytest)."""
    lint = Path(sys.executable).parent / "lint-imports"  # requirements.txt pins it
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
