"""Frames at high resolution: what each way of getting a decoded 1280x720 frame costs, and the frame cache's size.

    python bench/bench_frame_cache.py [--root DIR] [--sequences 2] [--frames 30] [--scale 48000] [--gpu_batch 64]
    python bench/bench_frame_cache.py --quick        # a few frames, CPU smoke run

Generates a FRED-shaped set at 1280x720 (tools.synthetic.generate_fred) in --root (kept and reused when it exists)
or a temporary folder, and times, in this one process and thread, the median ms per frame of:
  event: decoding the PNG (read_image); reading a 24-bit cached frame (a copy out of the mapped file, pages in
         RAM); unpacking a packed cached frame (FrameCache.get); its ON and OFF planes (np.unpackbits)
  rgb:   decoding the JPEG: read_image (open + cv2.imdecode), cv2.imread, torchvision.io.decode_jpeg on the CPU;
         reading a 24-bit cached frame with its pages in RAM, and from the disk (pages dropped first with
         posix_fadvise; on tmpfs that is RAM again)
then the cache's bytes per frame and for --scale frames (FRED at stride 1 holds about 48,000 per modality) at long
side 640 and 1280, and what decoding alone would allow: a training sample reads 2.5 frames on average (mosaic
probability 0.5: 1 + 0.5 x 3), so N cores decoding and doing nothing else make at most N x 1000 / (2.5 x ms) img/s.
With CUDA: torchvision.io.decode_jpeg(device="cuda") on batches of --gpu_batch JPEGs (bytes read ahead), frames/s.

Measured (one H100 host, 16 cores, 125 GB RAM; --sequences 4 --frames 30: 128 event PNGs, 120 JPEGs of 120 kB):
  event: PNG decode 7.83 ms; packed cache unpack 0.78 ms; 24-bit cache copy 0.24 ms; ON/OFF planes 0.18 ms
  rgb:   JPEG decode 3.63 ms (read_image), 4.23 (cv2.imread), 3.29 (torchvision CPU); 24-bit cache copy 0.24 ms
         (RAM), 0.43 ms (pages dropped: this host's virtual disk); decode_jpeg on the GPU 8,750 frames/s (batch 64)
  sizes for 48,000 frames: 33.2 GB at 640 (24-bit); at 1280 RGB 132.7 GB, event packed 11.1 GB
Loader alone at input 1280 (bench_data.py --input 1280 --hsv_in_batch, 8 sequences x 60 frames, batch 32, mosaic
0.5), img/s with FRAME_CACHE off (decoding) / disk (cache in RAM), on two H100 hosts of 16 cores (A: the one above;
B: a faster CPU; compare within a host):
  RGB    8 workers: A 320 / 474, B 427 / 685;  12 workers: B 720 / 1,029;  15 workers: A 503 / 903, B 777 / 1,189
  event  8 workers: A 212 / 410, B 296 / 586;  15 workers: B 605 / 1,082 (disk: packed, 2 bits/px)
YOLOv8s at 1280 on host A's H100 (bench_train.measure_ceiling, CUDA graph) takes 459 img/s frozen (batch 32), 304
unfrozen (batch 16): decoding RGB JPEGs keeps up with 15 workers, not always with 8 (frozen phase).
"""
import argparse
import glob
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
import torchvision
from torchvision.io import decode_jpeg

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.image_io import read_image  # noqa: E402
from speed import frame_cache as fc  # noqa: E402
from tools.synthetic import generate_fred  # noqa: E402

FRAMES_PER_SAMPLE = 2.5  # mosaic probability 0.5: one frame, or four


def median_ms(fn, items: list, repeat: int) -> float:
    """Median over items (each timed `repeat` times, best kept) of fn(item)'s wall time, ms."""
    times = []
    for item in items:
        best = math.inf
        for _ in range(repeat):
            start = time.perf_counter()
            fn(item)
            best = min(best, time.perf_counter() - start)
        times.append(best * 1e3)
    return statistics.median(times)


def open_unverified(cache: fc.FrameCache) -> fc.FrameCache:
    """The same cache opened again from its .json (a new mapping; no checksum pass that would read it into RAM)."""
    with open(cache.bin_path[:-4] + ".json", encoding="utf-8") as f:
        return fc.FrameCache(cache.bin_path, json.load(f))


def warm_read_ms(cache: fc.FrameCache, order: list[int], repeat: int) -> float:
    """Median ms to copy a 24-bit frame out of the cache, its pages in RAM (read once first); unmapped after."""
    warm = open_unverified(cache)
    for i in order:
        np.array(warm.get(i))
    return median_ms(lambda i: np.array(warm.get(i)), order, repeat)


def cold_read_ms(cache: fc.FrameCache, order: list[int]) -> float:
    """Median ms to copy a 24-bit frame out of the cache with its pages dropped from RAM first (random order; the
    pages must be mapped by no one: posix_fadvise leaves mapped pages where they are)."""
    fd = os.open(cache.bin_path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    fresh = open_unverified(cache)
    return median_ms(lambda i: np.array(fresh.get(i)), order, 1)


def row(name: str, ms: float, cores: int) -> str:
    """One table line: ms per frame, frames/s on one core, decoding-only img/s ceiling of `cores` cores."""
    return f"  {name:<48}{ms:9.2f}{1000 / ms:11.0f}{cores * 1000 / (FRAMES_PER_SAMPLE * ms):12.0f}"


def sizes(scale: int) -> str:
    """Cache bytes per 1280x720 frame and GB for `scale` frames: long side 640 (24-bit, event frames too: the resize
    blends their colours) and 1280 (RGB 24-bit, event frames packed)."""
    raw640, raw1280, packed1280 = 640 * 360 * 3, 1280 * 720 * 3, 2 * 1280 * 720 // 8
    return "\n".join(f"  {what:<44}{b / 1e6:9.3f} MB/frame {b * scale / 1e9:8.1f} GB for {scale} frames"
                     for what, b in (("long side 640, RGB and event (24-bit)", raw640),
                                     ("long side 1280, RGB (24-bit)", raw1280),
                                     ("long side 1280, event (packed, 2 bits/px)", packed1280)))


def bench_event(paths: list[str], cache_dir: str, repeat: int, cores: int) -> list[str]:
    """Event rows: PNG decode, 24-bit cache read, packed cache unpack, ON/OFF planes."""
    packed = fc.build_frame_cache(paths, 1280, os.path.join(cache_dir, "packed"), workers=cores, progress=False)
    n_packed = int(np.count_nonzero(packed.encodings == fc.EVENT_PLANES))
    raw = np.concatenate([packed.get(i).reshape(-1) for i in range(len(paths))])  # what a 24-bit cache maps
    h, w = packed.shapes[0]
    step = h * w * 3
    stored = np.fromfile(packed.bin_path, dtype=np.uint8)
    planes = [stored[packed.offsets[i]:packed.offsets[i] + packed.sizes[i]] for i in range(len(paths))]
    half = len(planes[0]) // 2
    idx = list(range(len(paths)))
    return [f"event, {len(paths)} PNG frames {w}x{h} ({n_packed} packed at 2 bits/px)",
            row("decode the PNG (read_image)", median_ms(read_image, paths, repeat), cores),
            row("24-bit cache: copy a frame out (RAM)", median_ms(lambda i: raw[i * step:(i + 1) * step].copy(),
                                                                   idx, repeat), cores),
            row("packed cache: FrameCache.get (unpack)", median_ms(packed.get, idx, repeat), cores),
            row("packed cache: ON and OFF planes (unpackbits)",
                median_ms(lambda p: (np.unpackbits(p[:half]), np.unpackbits(p[half:])), planes, repeat), cores),
            f"  cache on disk: {os.path.getsize(packed.bin_path) / len(paths) / 1e6:.3f} MB/frame packed"]


def bench_rgb(paths: list[str], cache_dir: str, repeat: int, cores: int) -> list[str]:
    """RGB rows: JPEG decodes on the CPU, 24-bit cache read from RAM and from disk."""
    cache = fc.build_frame_cache(paths, 1280, os.path.join(cache_dir, "rgb"), workers=cores, progress=False)
    data = [torchvision.io.read_file(p) for p in paths]
    idx = list(range(len(paths)))
    order = random.Random(0).sample(idx, len(idx))
    h, w = cache.shapes[0]
    jpeg_kb = statistics.mean(os.path.getsize(p) for p in paths) / 1e3
    return [f"rgb, {len(paths)} JPEG frames {w}x{h} ({jpeg_kb:.0f} kB each on average)",
            row("decode the JPEG: read_image (open + imdecode)", median_ms(read_image, paths, repeat), cores),
            row("decode the JPEG: cv2.imread", median_ms(cv2.imread, paths, repeat), cores),
            row("decode the JPEG: torchvision decode_jpeg (CPU)", median_ms(decode_jpeg, data, repeat), cores),
            row("24-bit cache: copy a frame out (RAM)", warm_read_ms(cache, idx, repeat), cores),
            row("24-bit cache: copy a frame out (from disk)", cold_read_ms(cache, order), cores),
            f"  cache on disk: {os.path.getsize(cache.bin_path) / len(paths) / 1e6:.3f} MB/frame 24-bit"]


def bench_gpu_decode(paths: list[str], batch: int, rounds: int) -> str:
    """torchvision.io.decode_jpeg on CUDA, batches of `batch` JPEG byte tensors: frames/s (decoded on the GPU)."""
    data = [torchvision.io.read_file(p) for p in paths]
    batches = [[data[(k * batch + j) % len(data)] for j in range(batch)] for k in range(rounds)]
    decode_jpeg(batches[0], device="cuda")  # warm-up: nvJPEG handles, memory pool
    torch.cuda.synchronize()
    start = time.perf_counter()
    for b in batches:
        decode_jpeg(b, device="cuda")
    torch.cuda.synchronize()
    per_s = rounds * batch / (time.perf_counter() - start)
    return (f"rgb on the GPU ({torch.cuda.get_device_name()}): decode_jpeg(device='cuda'), batches of {batch}: "
            f"{per_s:.0f} frames/s ({per_s / FRAMES_PER_SAMPLE:.0f} training samples/s of decoding)")


def main() -> None:
    """Generate (or reuse) the set, time the frame sources, print the tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="FRED set to use or create (default: a temporary folder, removed at the end)")
    p.add_argument("--sequences", type=int, default=2)
    p.add_argument("--frames", type=int, default=30, help="RGB frames per sequence (event frames: a few more)")
    p.add_argument("--repeat", type=int, default=3, help="timings per frame, the best kept")
    p.add_argument("--scale", type=int, default=48000, help="frames per modality for the size figures")
    p.add_argument("--gpu_batch", type=int, default=64, help="JPEGs per decode_jpeg(device='cuda') call")
    p.add_argument("--gpu_rounds", type=int, default=20, help="timed GPU decode batches")
    p.add_argument("--quick", action="store_true", help="1 sequence of 6 frames, 1 timing each (CPU)")
    args = p.parse_args()
    if args.quick:
        args.sequences, args.frames, args.repeat = 1, 6, 1
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    cores = os.cpu_count() or 1
    tmp = None if args.root else tempfile.mkdtemp(prefix="bench_frame_cache_")
    root = args.root or tmp
    try:
        if not (os.path.isdir(root) and os.listdir(root)):
            start = time.perf_counter()
            generate_fred(root, sequences=args.sequences, frames=args.frames, seed=0, size=(720, 1280),
                          workers=cores)
            print(f"generated {args.sequences} sequences x {args.frames} frames at 1280x720 in {root} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        cache_dir = os.path.join(root, ".bench_frame_cache")
        shutil.rmtree(cache_dir, ignore_errors=True)
        event = sorted(glob.glob(os.path.join(root, "**", "Event", "Frames", "*.png"), recursive=True))
        rgb = sorted(glob.glob(os.path.join(root, "**", "PADDED_RGB", "*.jpg"), recursive=True))
        if not event or not rgb:
            sys.exit(f"{root} holds no */Event/Frames/*.png or no */PADDED_RGB/*.jpg: give an empty --root to "
                     "generate a set there")
        print(f"\none thread per timing, median of the frames; img/s ceiling: decoding only, {cores} cores, "
              f"{FRAMES_PER_SAMPLE} frames per sample")
        print(f"  {'':<48}{'ms/frame':>9}{'frames/s':>11}{'img/s ceil':>12}")
        for line in bench_event(event, cache_dir, args.repeat, cores) + bench_rgb(rgb, cache_dir, args.repeat, cores):
            print(line, flush=True)
        print(f"\nframe cache size at FRED's scale (over FRAME_CACHE_MAX_GB, default 100, the files are decoded):\n"
              f"{sizes(args.scale)}")
        if torch.cuda.is_available():
            print("\n" + bench_gpu_decode(rgb, args.gpu_batch, args.gpu_rounds), flush=True)
        else:
            print("\n(no CUDA: decode_jpeg on the GPU not measured)")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(os.path.join(root, ".bench_frame_cache"), ignore_errors=True)


if __name__ == "__main__":
    main()
