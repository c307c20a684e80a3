"""utils/heap.py: a DataLoader worker keeps the memory of its freed sample arrays instead of faulting it in again."""
import subprocess
import sys

import pytest

# a fused Mosaic sample's large arrays (two 2H x 2W canvases, 640 x 640 outputs), made and freed sample after sample:
# how many pages the process faults in per sample once warm
PROGRAM = """
import resource, sys
import numpy as np
if sys.argv[1] == "worker":
    from datasets.fred_dataset import worker_init
    worker_init(0)
def sample():
    canvases = [np.full((1280, 1280, 3), 114, np.uint8) for _ in range(2)]
    outs = [np.full((640, 640, 3), 114, np.uint8) for _ in range(3)] + [np.ones((640, 640, 5), np.uint8)]
    return sum(int(a[-1, -1, 0]) for a in canvases + outs)
for _ in range(3):
    sample()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    sample()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_sample(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and ru_minflt: Linux")
def test_a_worker_reuses_freed_sample_memory_without_page_faults():
    pages = (2 * 1280 * 1280 * 3 + 3 * 640 * 640 * 3 + 640 * 640 * 5) / 4096  # what one sample touches
    assert faults_per_sample("plain") > 0.2 * pages  # glibc returns it to the OS: faulted in again every sample
    assert faults_per_sample("worker") < 0.01 * pages
