"""Data check: decode every selected image of a FRED index and summarise what training would use.

The label files were already parsed by the index (bad ones are in index.stats["bad_files"]); here every
selected image is read with cv2.imread. An image that does not decode is a bad file and its frame is left out
of the counts. `SUMMARY_KEYS` are the keys of the one-line JSON summary printed by `train_fred.py --check_data`.
"""
from multiprocessing.pool import ThreadPool

import cv2
from tqdm import tqdm

from datasets.fred_index import Frame, FredIndex

SUMMARY_KEYS = ("modality", "train_sequences", "val_sequences", "train_frames", "val_frames", "boxes",
                "empty_frames", "unlabeled_frames", "bad_files", "dropped_boxes")


def image_decodes(path: str) -> bool:
    """True when OpenCV can decode the image at path."""
    try:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
    except cv2.error:
        return False
    return image is not None and image.size > 0


def _undecodable(frames: list[Frame], workers: int, progress: bool) -> set[str]:
    """Image paths among frames that do not decode, read by a pool of threads (OpenCV releases the GIL)."""
    paths = [f.image for f in frames]
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # the summary reports unreadable files
    try:
        with ThreadPool(max(1, workers)) as pool:
            results = pool.imap(image_decodes, paths, chunksize=64)
            ok = list(tqdm(results, total=len(paths), desc="decoding images", unit="img", disable=not progress))
    finally:
        cv2.utils.logging.setLogLevel(level)
    return {p for p, good in zip(paths, ok) if not good}


def check_data(index: FredIndex, workers: int = 2, progress: bool = True) -> dict:
    """Decode every selected image; return the summary (SUMMARY_KEYS, plus bad_file_list and other details)."""
    bad_images = _undecodable(index.train + index.val, workers, progress)
    train = [f for f in index.train if f.image not in bad_images]
    val = [f for f in index.val if f.image not in bad_images]
    kept = train + val
    bad_list = list(index.stats["bad_files"]) + [f"{p}: image does not decode" for p in sorted(bad_images)]
    return {
        "modality": index.modality,
        "train_sequences": len(index.train_sequences),
        "val_sequences": len(index.val_sequences),
        "train_frames": len(train),
        "val_frames": len(val),
        "boxes": sum(len(f.boxes) for f in kept),
        "empty_frames": sum(len(f.boxes) == 0 for f in kept),
        "unlabeled_frames": index.stats["unlabeled_frames"],
        "bad_files": len(bad_list),
        "dropped_boxes": index.stats["dropped_boxes"],
        "bad_file_list": bad_list,
        "root": index.stats["root"],
        "split": index.stats["split"],
        "train_sequence_ids": list(index.train_sequences),
        "val_sequence_ids": list(index.val_sequences),
        "missing_sequences": list(index.stats["missing_sequences"]),
        "unused_sequences": list(index.stats["unused_sequences"]),
    }


def usable(summary: dict) -> bool:
    """True while training can run on the checked data: train and val both keep frames."""
    return summary["train_frames"] > 0 and summary["val_frames"] > 0


def _ids(ids: list[str], limit: int = 30) -> str:
    """Space-separated ids, cut after limit."""
    return " ".join(ids[:limit]) + (f" ... (+{len(ids) - limit})" if len(ids) > limit else "")


def format_summary(summary: dict, max_bad: int = 20) -> str:
    """Readable multi-line text of a check_data summary (at most max_bad bad files listed)."""
    s = summary
    lines = [
        f"FRED data check: modality {s['modality']}, split {s['split']}, root {s['root']}",
        f"  train: {s['train_sequences']} sequences, {s['train_frames']} frames  (ids {_ids(s['train_sequence_ids'])})",
        f"  val:   {s['val_sequences']} sequences, {s['val_frames']} frames  (ids {_ids(s['val_sequence_ids'])})",
        f"  boxes: {s['boxes']}, empty (negative) frames: {s['empty_frames']}, "
        f"dropped boxes (nothing left after clipping): {s['dropped_boxes']}",
        f"  images without a label file (not annotated, left out): {s['unlabeled_frames']}",
    ]
    if s["missing_sequences"]:
        lines.append(f"  split sequences not on disk: {len(s['missing_sequences'])} ({_ids(s['missing_sequences'])})")
    if s["unused_sequences"]:
        lines.append(f"  sequences on disk outside the split (unused): {len(s['unused_sequences'])} "
                     f"({_ids(s['unused_sequences'])})")
    lines.append(f"  bad files (left out): {s['bad_files']}")
    lines += [f"    {b}" for b in s["bad_file_list"][:max_bad]]
    if len(s["bad_file_list"]) > max_bad:
        lines.append(f"    ... and {len(s['bad_file_list']) - max_bad} more")
    if not usable(s):
        empty = " and ".join(side for side in ("train", "val") if s[f"{side}_frames"] == 0)
        lines.append(f"  NOT USABLE: no {empty} frames left under {s['root']}")
    return "\n".join(lines)
