"""Data check: decode every selected image of a FRED index and summarise what training would use.

The label files were already parsed by the index (bad ones are in index.stats["bad_files"]); here every
selected image is read with datasets.image_io.read_image, as training reads it. An image that cannot be read,
is truncated or does not decode is a bad file, named with the reason, and its frame is left out of the counts.
`SUMMARY_KEYS` are the keys of the one-line JSON summary printed by `train_fred.py --check_data`.
"""
from multiprocessing.pool import ThreadPool

from tqdm import tqdm

from datasets.fred_index import MAX_PLAUSIBLE_BOXES, Frame, FredIndex
from datasets.image_io import printable, read_image

SUMMARY_KEYS = ("modality", "train_sequences", "val_sequences", "train_frames", "val_frames", "boxes",
                "empty_frames", "unlabeled_frames", "bad_files", "dropped_boxes")


def _why_unreadable(path: str) -> str:
    """Why the image at path cannot be used ("" when it reads)."""
    return read_image(path)[1]


def _unreadable(frames: list[Frame], workers: int, progress: bool) -> dict[str, str]:
    """{image path: reason} of the frames' images that cannot be used, read by a pool of threads (file reads and
    OpenCV release the GIL)."""
    paths = [f.image for f in frames]
    with ThreadPool(max(1, workers)) as pool:
        results = pool.imap(_why_unreadable, paths, chunksize=64)
        reasons = list(tqdm(results, total=len(paths), desc="decoding images", unit="img", disable=not progress))
    return {p: reason for p, reason in zip(paths, reasons) if reason}


def check_data(index: FredIndex, workers: int = 2, progress: bool = True) -> dict:
    """Decode every selected image; return the summary (SUMMARY_KEYS, plus bad_file_list and other details)."""
    bad_images = _unreadable(index.train + index.val, workers, progress)
    train = [f for f in index.train if f.image not in bad_images]
    val = [f for f in index.val if f.image not in bad_images]
    kept = train + val
    bad_list = list(index.stats["bad_files"]) + [f"{p}: {bad_images[p]}" for p in sorted(bad_images)]
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
        "implausible_boxes": list(index.stats["implausible_boxes"]),
        "suspicious_label_files": list(index.stats["suspicious_label_files"]),
        "empty_sequences": list(index.stats["empty_sequences"]),
        "unreadable_folders": list(index.stats["unreadable_folders"]),
    }


def usable(summary: dict) -> bool:
    """True while training can run on the checked data: train and val both keep frames."""
    return summary["train_frames"] > 0 and summary["val_frames"] > 0


def _ids(ids: list[str], limit: int = 30) -> str:
    """Space-separated ids, cut after limit."""
    return " ".join(ids[:limit]) + (f" ... (+{len(ids) - limit})" if len(ids) > limit else "")


def _listed(title: str, items: list[str], limit: int) -> list[str]:
    """Lines '  title: count' and the first limit items indented below ([] when there are none)."""
    if not items:
        return []
    more = [f"    ... and {len(items) - limit} more"] if len(items) > limit else []
    return [f"  {title}: {len(items)}"] + [f"    {item}" for item in items[:limit]] + more


def format_summary(summary: dict, max_bad: int = 20) -> str:
    """Readable multi-line text of a check_data summary (at most max_bad entries per list); names that are not
    UTF-8 are shown with \\xNN escapes."""
    s = summary
    lines = [
        f"FRED data check: modality {s['modality']}, split {s['split']}, root {s['root']}",
        f"  train: {s['train_sequences']} sequences, {s['train_frames']} frames  (ids {_ids(s['train_sequence_ids'])})",
        f"  val:   {s['val_sequences']} sequences, {s['val_frames']} frames  (ids {_ids(s['val_sequence_ids'])})",
        f"  boxes: {s['boxes']}, empty (negative) frames: {s['empty_frames']}, "
        f"dropped boxes (far outside the image, or nothing left after clipping): {s['dropped_boxes']}",
        *_listed("boxes far outside the image (dropped)", s["implausible_boxes"], max_bad),
        *_listed(f"label files with more than {MAX_PLAUSIBLE_BOXES} boxes in a frame (kept: check them)",
                 s["suspicious_label_files"], max_bad),
        f"  images without a label file (not annotated, left out): {s['unlabeled_frames']}",
        *_listed("sequences without images (nothing used from them)", s["empty_sequences"], max_bad),
        *_listed("folders that cannot be read (skipped)", s["unreadable_folders"], max_bad),
    ]
    if s["missing_sequences"]:
        lines.append(f"  split sequences not on disk: {len(s['missing_sequences'])} ({_ids(s['missing_sequences'])})")
    if s["unused_sequences"]:
        lines.append(f"  sequences on disk outside the split (unused): {len(s['unused_sequences'])} "
                     f"({_ids(s['unused_sequences'])})")
    lines.append(f"  bad files (left out): {s['bad_files']}")
    lines += _listed("bad files (left out)", s["bad_file_list"], max_bad)[1:]
    if not usable(s):
        empty = " and ".join(side for side in ("train", "val") if s[f"{side}_frames"] == 0)
        lines.append(f"  NOT USABLE: no {empty} frames left under {s['root']}")
    return printable("\n".join(lines))
