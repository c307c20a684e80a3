"""Time the FRED index cold and cached on a generated tree of placeholder frames.

    python bench/bench_index.py [--frames 100000] [--sequences 40] [--modality event]

Writes empty placeholder image files and real label files (one box, or empty for one frame in ten) under a
temporary folder, then times build_fred_index: cold (no cache), cached (nothing changed), and after one
label file changed (one sequence parsed again). The OS file cache is warm in every case.
"""
import argparse
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.fred_index import build_fred_index  # noqa: E402


def make_tree(root: str, sequences: int, frames: int, modality: str) -> None:
    """Write sequences 0..sequences-1 with frames // sequences placeholder frames each."""
    per_seq = frames // sequences
    image_sub = os.path.join("Event", "Frames") if modality == "event" else "PADDED_RGB"
    label_sub = "Event_YOLO" if modality == "event" else "RGB_YOLO"
    for sid in range(sequences):
        image_dir = os.path.join(root, str(sid), image_sub)
        label_dir = os.path.join(root, str(sid), label_sub)
        os.makedirs(image_dir)
        os.makedirs(label_dir)
        for i in range(per_seq):
            stem = f"Video_{sid}_{i * 33333}"
            open(os.path.join(image_dir, stem + ".png"), "wb").close()
            with open(os.path.join(label_dir, stem + ".txt"), "w") as f:
                if i % 10:
                    f.write(f"0 {0.3 + i % 7 * 0.05:.6f} 0.454861 0.028906 0.034722\n")


def timed(root: str, modality: str) -> tuple[float, object]:
    """(seconds, index) of one build_fred_index call."""
    start = time.perf_counter()
    index = build_fred_index(root, modality)
    return time.perf_counter() - start, index


def main() -> None:
    """Build the tree, time the three cases, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--sequences", type=int, default=40)
    parser.add_argument("--modality", default="event", choices=["rgb", "event"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the tree holds 40 of the split's 231 sequences: no warning about it
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        make_tree(root, args.sequences, args.frames, args.modality)
        print(f"tree: {args.sequences} sequences, {args.frames} frames, written in {time.perf_counter() - start:.1f} s")
        cold, index = timed(root, args.modality)
        frames = len(index.train) + len(index.val)
        print(f"cold:    {cold:6.2f} s  ({frames} frames indexed, {index.stats['parsed_sequences']} sequences parsed)")
        cached, index = timed(root, args.modality)
        print(f"cached:  {cached:6.2f} s  ({index.stats['cached_sequences']} sequences from the cache, "
              f"{index.stats['parsed_sequences']} parsed)")
        label = index.train[5].label
        with open(label, "a") as f:
            f.write("0 0.5 0.5 0.01 0.01\n")
        changed, index = timed(root, args.modality)
        print(f"1 label file changed: {changed:6.2f} s  ({index.stats['parsed_sequences']} sequence parsed again)")
        print(f"cache file: {os.path.getsize(index.stats['cache_file']) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
