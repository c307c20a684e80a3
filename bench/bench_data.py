"""Data-only speed of our training samples on generated frames: the DataLoader's img/s (mosaic on, prob 0.5) with
FRAME_CACHE off vs disk, and the CPU cost of one sample (FredDataset.__getitem__), per modality.

    python bench/bench_data.py [--root DIR] [--modality event|rgb|fusion[,...]] [--cache off,disk] [--input 640]
                               [--workers 8] [--batch 32] [--batches 60] [--rounds 1] [--sample_ms N]
                               [--hsv_in_batch] [--quick]

Generates a FRED-shaped set at 1280x720 (tools.synthetic.generate_fred) in --root (kept and reused when it
exists) or a temporary folder, then times the DataLoader of train_fred.py's training set (input 640, mosaic prob
0.5, HSV, flip, affine: config_fred's defaults) without a model, for each modality of --modality (a comma list) and
each FRAME_CACHE mode of --cache: without the cache, and with the disk caches as train_fred.py builds them
(build_fred.build_frame_caches; for fusion below the event frames' size one cache of the fused samples, RGB frame
and event polarity planes, at their own size the RGB cache and the packed event cache; their build time reported
apart). The first `--warmup` batches (worker start-up) are not timed. --quick: a small set, 2 workers, batch 8,
for a CPU. The workers start as the trainer's do (datasets.fred_dataset.worker_init).
--sample_ms N: also the mean ms of N training samples made one after another in this process (the disk caches,
a DataLoader worker's heap settings: utils/heap.py; after one untimed sample of every frame, so that the caches'
pages are mapped), the CPU cost of a sample without the loader's processes.
--rounds R: every measurement R times, the modalities and modes interleaved within each round (a shared, noisy
machine drifts between them alike); the table gives the median of the rounds and their range.
"""
import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.augment import Augmentation  # noqa: E402
from build_fred import build_frame_caches  # noqa: E402
from datasets.fred_dataset import FredDataset, collate_fred, worker_init  # noqa: E402
from datasets.fred_index import build_fred_index  # noqa: E402
from tools.synthetic import generate_fred  # noqa: E402
from utils.heap import keep_freed_memory  # noqa: E402


def training_set(frames: list, input_size: int, caches: dict, hsv_in_batch: bool = False) -> FredDataset:
    """The training set of the bench: mosaic prob 0.5, config defaults otherwise (hsv_in_batch: the HSV jitter left
    to the batch, as train_fred.py on CUDA); caches: FredDataset's frame_cache / event_cache keywords."""
    aug = Augmentation(mosaic=True, mosaic_prob=0.5, hsv_in_batch=hsv_in_batch)
    return FredDataset(frames, (input_size, input_size), aug, **caches)


def loader_img_per_s(ds: FredDataset, workers: int, batch: int, batches: int, warmup: int) -> float:
    """Images per second of the training DataLoader of ds over `batches` batches after `warmup` untimed ones."""
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=(warmup + batches) * batch,
                                             generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate_fred,
                        worker_init_fn=worker_init, persistent_workers=False, prefetch_factor=4 if workers else None)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    images = sum(len(b["images"]) for b in it)
    return images / (time.perf_counter() - start)


def sample_ms(ds: FredDataset, count: int) -> float:
    """Mean ms of one training sample of ds (__getitem__ in this process) over `count` samples of fixed random
    indices, after one untimed sample of every index (the caches' pages mapped, as in a worker after its first
    epoch)."""
    for i in range(len(ds)):
        ds[i]
    start = time.perf_counter()
    for i in np.random.default_rng(0).integers(0, len(ds), count):
        ds[int(i)]
    return (time.perf_counter() - start) / count * 1e3


def summary(values: list[float], fmt: str) -> str:
    """'median (min-max)' of values, or the one value."""
    med = format(statistics.median(values), fmt)
    return med if len(values) == 1 else f"{med} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> None:
    """Generate (or reuse) the set, time the loaders and samples, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="FRED set to use or create (default: a temporary folder, removed at the end)")
    p.add_argument("--modality", default="event",
                   help="comma list of rgb (RGB JPEGs), event (PNG event frames), fusion (both: RGB + event planes)")
    p.add_argument("--cache", default="off,disk", help="comma list of FRAME_CACHE modes to time: off, disk")
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--frames", type=int, default=60, help="frames per sequence")
    p.add_argument("--input", type=int, default=640, help="square network input size")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=60, help="timed batches per loader")
    p.add_argument("--warmup", type=int, default=4, help="untimed batches first (worker start-up)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of every measurement")
    p.add_argument("--sample_ms", type=int, default=0, help="also time this many single samples (disk caches)")
    p.add_argument("--hsv_in_batch", action="store_true",
                   help="workers leave the HSV jitter to the GPU (train_fred.py's HSV_ON_GPU on CUDA)")
    p.add_argument("--quick", action="store_true", help="small set, 2 workers, batch 8, 12 batches (CPU)")
    args = p.parse_args()
    modalities, modes = args.modality.split(","), args.cache.split(",")
    if not set(modalities) <= {"rgb", "event", "fusion"} or not set(modes) <= {"off", "disk"}:
        p.error(f"--modality takes rgb, event, fusion and --cache off, disk; got {args.modality!r}, {args.cache!r}")
    cv2.setNumThreads(0)  # as train_fred.main does: the workers fill the cores
    if args.quick:
        args.sequences, args.frames, args.workers, args.batch, args.batches, args.warmup = 4, 12, 2, 8, 12, 2
    logging.basicConfig(level=logging.WARNING)
    tmp = None if args.root else tempfile.mkdtemp(prefix="bench_data_")
    root = args.root or tmp
    try:
        if not (os.path.isdir(root) and os.listdir(root)):
            start = time.perf_counter()
            generate_fred(root, sequences=args.sequences, frames=args.frames, seed=0, size=(720, 1280),
                          workers=os.cpu_count() or 1)
            print(f"generated {args.sequences} sequences x {args.frames} frames at 1280x720 in {root} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        logging.getLogger("datasets.fred_index").setLevel(logging.ERROR)  # a partial set: no missing-sequence note
        cache_dir = os.path.join(root, ".fred_frame_cache")
        shutil.rmtree(cache_dir, ignore_errors=True)
        sets, built = {}, {}
        for modality in modalities:
            frames = build_fred_index(root, modality).train
            print(f"{len(frames)} {modality} training frames; input {args.input}, mosaic prob 0.5, {args.workers} "
                  f"workers, batch {args.batch}, {args.batches} timed batches", flush=True)
            for mode in modes:
                cfg = {"FRAME_CACHE": mode, "INPUT_SHAPE": [args.input, args.input], "FRAME_CACHE_DIR": cache_dir,
                       "DATA_ROOT": root, "FRAME_CACHE_MAX_GB": 1e3}
                start = time.perf_counter()
                caches = build_frame_caches(cfg, frames, "train", progress=False)
                build_s = time.perf_counter() - start
                start = time.perf_counter()
                build_frame_caches(cfg, frames, "train", progress=False)
                gb = sum(c.nbytes for c in caches.values() if c is not None) / 1e9
                built[modality, mode] = (build_s, time.perf_counter() - start, gb) if mode == "disk" else None
                sets[modality, mode] = training_set(frames, args.input, caches, args.hsv_in_batch)
        img_s = {key: [] for key in sets}
        ms = {key: [] for key in sets if key[1] == "disk" and args.sample_ms}
        for _ in range(args.rounds):
            for key, ds in sets.items():
                img_s[key].append(loader_img_per_s(ds, args.workers, args.batch, args.batches, args.warmup))
            if ms:
                keep_freed_memory()  # as in a DataLoader worker
            for key in ms:
                ms[key].append(sample_ms(sets[key], args.sample_ms))
        print(f"\n{'modality':<10}{'FRAME_CACHE':<13}{'img/s':>22}{'ms/sample':>24}{'build s':>9}{'reuse s':>9}"
              f"{'cache GB':>10}")
        for key, values in img_s.items():
            extra = "" if built[key] is None else "{:9.1f}{:9.2f}{:10.2f}".format(*built[key])
            print(f"{key[0]:<10}{key[1]:<13}{summary(values, '.0f'):>22}"
                  f"{summary(ms[key], '.3f') if key in ms else '':>24}{extra}")
        for modality in modalities:
            if "off" in modes and "disk" in modes:
                ratio = statistics.median(img_s[modality, "disk"]) / statistics.median(img_s[modality, "off"])
                print(f"{modality}: disk / off {ratio:.2f}x")
        if {"event", "fusion"} <= set(modalities):
            for mode in modes:
                line = (f"fusion / event, {mode}: img/s "
                        f"{statistics.median(img_s['fusion', mode]) / statistics.median(img_s['event', mode]):.2f}x")
                if ("fusion", mode) in ms:
                    line += (f", ms/sample "
                             f"{statistics.median(ms['fusion', mode]) / statistics.median(ms['event', mode]):.2f}x")
                print(line)
        print(f"(cpu count {os.cpu_count()}, rounds {args.rounds})")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
