"""Data-only img/s of our training loader (mosaic on, prob 0.5) with FRAME_CACHE off vs disk, on generated frames.

    python bench/bench_data.py [--root DIR] [--modality event|rgb|fusion] [--input 640] [--workers 8] [--batch 32]
                               [--batches 60] [--hsv_in_batch] [--quick]

Generates a FRED-shaped set at 1280x720 (tools.synthetic.generate_fred) in --root (kept and reused when it
exists) or a temporary folder, then times the DataLoader of train_fred.py's training set (input 640, mosaic prob
0.5, HSV, flip, affine: config_fred's defaults) without a model: first without the cache, then with the disk cache
(its build time reported apart). The first `--warmup` batches (worker start-up) are not timed. --quick: a small set,
2 workers, batch 8, for a CPU. --modality fusion: RGB + event planes, with the event frame cache as train_fred.py
builds it (build_fred.build_frame_caches: polarity planes at the input's long side). The workers start as the
trainer's do (datasets.fred_dataset.worker_init).
"""
import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

import cv2
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.augment import Augmentation  # noqa: E402
from build_fred import build_frame_caches  # noqa: E402
from datasets.fred_dataset import FredDataset, collate_fred, worker_init  # noqa: E402
from datasets.fred_index import build_fred_index  # noqa: E402
from speed.frame_cache import build_frame_cache  # noqa: E402
from tools.synthetic import generate_fred  # noqa: E402


def loader_img_per_s(frames: list, cache, input_size: int, workers: int, batch: int, batches: int,
                     warmup: int, hsv_in_batch: bool = False, event_cache=None) -> float:
    """Images per second of the training DataLoader over `batches` batches after `warmup` untimed ones
    (hsv_in_batch: the workers leave the HSV jitter to the batch, as train_fred.py on CUDA; event_cache: fused
    frames' event frame cache)."""
    aug = Augmentation(mosaic=True, mosaic_prob=0.5, hsv_in_batch=hsv_in_batch)
    ds = FredDataset(frames, (input_size, input_size), aug, frame_cache=cache, event_cache=event_cache)
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


def main() -> None:
    """Generate (or reuse) the set, time the loader off and disk, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="FRED set to use or create (default: a temporary folder, removed at the end)")
    p.add_argument("--modality", default="event", choices=("rgb", "event", "fusion"),
                   help="PNG event frames, RGB JPEGs, or both (RGB + event planes)")
    p.add_argument("--sequences", type=int, default=8)
    p.add_argument("--frames", type=int, default=60, help="frames per sequence")
    p.add_argument("--input", type=int, default=640, help="square network input size")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=60, help="timed batches per mode")
    p.add_argument("--warmup", type=int, default=4, help="untimed batches first (worker start-up)")
    p.add_argument("--hsv_in_batch", action="store_true",
                   help="workers leave the HSV jitter to the GPU (train_fred.py's HSV_ON_GPU on CUDA)")
    p.add_argument("--quick", action="store_true", help="small set, 2 workers, batch 8, 12 batches (CPU)")
    args = p.parse_args()
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
        frames = build_fred_index(root, args.modality).train
        cache_dir = os.path.join(root, ".fred_frame_cache")
        shutil.rmtree(cache_dir, ignore_errors=True)
        print(f"{len(frames)} {args.modality} training frames; input {args.input}, mosaic prob 0.5, "
              f"{args.workers} workers, batch {args.batch}, {args.batches} timed batches", flush=True)

        rows = [("off", loader_img_per_s(frames, None, args.input, args.workers, args.batch, args.batches,
                                         args.warmup, args.hsv_in_batch), None, None, None)]
        start = time.perf_counter()
        cache = build_frame_cache([f.image for f in frames], args.input, cache_dir, workers=os.cpu_count() or 1)
        event_cache = build_frame_caches({"FRAME_CACHE": "disk", "INPUT_SHAPE": [args.input, args.input],
                                          "FRAME_CACHE_DIR": cache_dir, "DATA_ROOT": root, "FRAME_CACHE_MAX_GB": 1e3},
                                         frames, "train", progress=False)["event_cache"]
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        build_frame_cache([f.image for f in frames], args.input, cache_dir, progress=False)
        reuse_s = time.perf_counter() - start
        rows.append(("disk", loader_img_per_s(frames, cache, args.input, args.workers, args.batch, args.batches,
                                              args.warmup, args.hsv_in_batch, event_cache), build_s, reuse_s,
                     (cache.nbytes + (event_cache.nbytes if event_cache else 0)) / 1e9))
        print(f"\n{'FRAME_CACHE':<12}{'img/s':>9}{'build s':>10}{'reuse s':>10}{'cache GB':>10}")
        for mode, ips, b, r, gb in rows:
            extra = "" if b is None else f"{b:10.1f}{r:10.2f}{gb:10.2f}"
            print(f"{mode:<12}{ips:9.0f}{extra}")
        print(f"disk / off: {rows[1][1] / rows[0][1]:.2f}x  (cpu count {os.cpu_count()})")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
