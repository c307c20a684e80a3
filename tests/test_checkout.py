"""The checkout itself: what git ignores, and no file pointing at files the project does not hold."""
import os
import re
import shutil
import subprocess

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
