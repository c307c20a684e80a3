"""The checkout itself: what git ignores, and no file pointing at files the project does not hold."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True)


needs_git = pytest.mark.skipif(shutil.which("git") is None or _git("rev-parse").returncode != 0,
                               reason="needs git and a git checkout")


@needs_git
def test_gitignore_covers_virtual_environments_but_not_project_folders():
    venvs = [".venv/lib/python3.11/site-packages/torch/__init__.py", "venv/bin/python", "env/pyvenv.cfg"]
    project = ["datasets/new_reader.py", "nets/new_net.py", "utils/new_util.py", "tests/test_new.py",
               "bench/bench_new.py", "datasets/env/reader.py", "utils/venv.py"]
    ignored = set(_git("check-ignore", "--no-index", *venvs, *project).stdout.split())
    assert ignored == set(venvs), ignored


@needs_git
def test_no_file_points_at_a_shared_folder_outside_the_project():
    outside = re.compile(r"(?<![\w.-])(?:\.\./)*" + "shared" + r"/\w+/[\w.-]+")  # e.g. a notes folder beside the repo
    hits = []
    for path in _git("ls-files", "--cached", "--others", "--exclude-standard").stdout.split("\n"):
        full = os.path.join(REPO, path)
        if not path or not os.path.isfile(full) or os.path.splitext(path)[1] not in (".py", ".md", ".txt", ""):
            continue
        with open(full, encoding="utf-8", errors="replace") as f:
            hits += [f"{path}:{n}: {m.group(0)}" for n, line in enumerate(f, 1) for m in outside.finditer(line)]
    assert not hits, "cite these by title, not by a path the project does not hold:\n" + "\n".join(hits)


def _requirements(name: str) -> dict:
    """{distribution name: specifier text} of a requirements file of the repository (comments skipped)."""
    out = {}
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                m = re.match(r"([A-Za-z0-9._-]+)\s*(.*)", line)
                out[m.group(1).lower()] = m.group(2).strip()
    return out


def test_dev_requirements_pin_both_opencv_wheels_to_one_version_the_product_accepts():
    from packaging.specifiers import SpecifierSet

    dev, product = _requirements("requirements-dev.txt"), _requirements("requirements.txt")
    gui, headless = dev.get("opencv-python", ""), dev.get("opencv-python-headless", "")
    assert gui.startswith("==") and gui == headless, "pin opencv-python and opencv-python-headless to one version"
    assert gui[2:] in SpecifierSet(product["opencv-python-headless"]), "the pin must satisfy requirements.txt"


def test_installed_opencv_wheels_share_one_version_and_cv2_is_whole():
    from importlib import metadata

    import cv2

    versions = {}
    for name in ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    assert len(set(versions.values())) <= 1, (
        f"OpenCV wheels of different versions share one cv2/ folder: {versions}; put them on the version of "
        "requirements-dev.txt: pip install --force-reinstall --no-deps opencv-python==V opencv-python-headless==V")
    assert all(v.startswith(cv2.__version__) for v in versions.values()), (cv2.__version__, versions)
    assert cv2.resize(np.zeros((4, 4), np.uint8), (2, 3)).shape == (3, 2)
