"""Data check: decode every selected image of a FRED index and summarise what training would use.

The label files were already parsed by the index (bad ones are in index.stats["bad_files"]); here every
selected image is read with datasets.image_io.read_image, as training reads it. An image that cannot be read,
is truncated or does not decode is a bad file, named with the reason, and its frame is left out of the counts.
`summary_keys(modality)` are the keys of the one-line JSON summary printed by `train_fred.py --check_data`.

Modality fusion (frames = fused RGB + event pairs; both images are read) adds, per sequence and in total, the
pairs the index made, the RGB and event frames left unpaired, the pairs' time offsets, and the agreement of the
two label sets: the RGB_YOLO boxes of a pair's PADDED_RGB frame against its Event_YOLO boxes (the two frames
share one coordinate space), matched one to one greedily by IoU in the selected frames (FRAME_STRIDE applies)
where both have boxes; a sequence whose mean IoU is below LABEL_AGREEMENT_MIN_IOU is listed as disagreeing.
"""
import os
from multiprocessing.pool import ThreadPool

import numpy as np
from tqdm import tqdm

from datasets.fred_index import LABEL_DIRS, MAX_PLAUSIBLE_BOXES, Frame, FredIndex, clip_boxes_cxcywh, parse_label_file
from datasets.image_io import printable, read_image
from datasets.splits import sort_ids

SUMMARY_KEYS = ("modality", "train_sequences", "val_sequences", "train_frames", "val_frames", "boxes",
                "empty_frames", "unlabeled_frames", "bad_files", "dropped_boxes")
FUSION_SUMMARY_KEYS = ("unpaired_rgb", "unpaired_event", "label_agreement")
# A sequence's RGB and event labels disagree below this mean IoU. Labels of the same drone at the same moment
# differ by the event box spanning the frame's 33 ms window (it covers the drone at both ends) and the RGB box's
# blur: at FRED's fastest, a 17 px Betafpv at 10 px per frame, that is IoU 17 / 27 = 0.63 for one frame, and a
# sequence's mean is higher (slower and hovering frames). Labels shifted by a drone's width or more (sequence 110:
# about 104 px on drones 10-60 px wide; sequence 68: misaligned) have IoU near 0. 0.3 lies between the two.
LABEL_AGREEMENT_MIN_IOU = 0.3


def summary_keys(modality: str) -> tuple[str, ...]:
    """Keys of the JSON summary line for modality: SUMMARY_KEYS, and for fusion FUSION_SUMMARY_KEYS after them."""
    return SUMMARY_KEYS + (FUSION_SUMMARY_KEYS if modality == "fusion" else ())


def _why_unreadable(path: str) -> str:
    """Why the image at path cannot be used ("" when it reads)."""
    return read_image(path)[1]


def _unreadable(frames: list[Frame], workers: int, progress: bool) -> dict[str, str]:
    """{image path: reason} of the frames' images that cannot be used, read by a pool of threads (file reads and
    OpenCV release the GIL)."""
    paths = [f.image for f in frames] + [f.event_image for f in frames if f.event_image]
    with ThreadPool(max(1, workers)) as pool:
        results = pool.imap(_why_unreadable, paths, chunksize=64)
        reasons = list(tqdm(results, total=len(paths), desc="decoding images", unit="img", disable=not progress))
    return {p: reason for p, reason in zip(paths, reasons) if reason}


def check_data(index: FredIndex, workers: int = 2, progress: bool = True) -> dict:
    """Decode every selected image; return the summary (summary_keys(index.modality), plus bad_file_list and other
    details; for fusion the per-sequence pairing and label agreement)."""
    bad_images = _unreadable(index.train + index.val, workers, progress)
    train = [f for f in index.train if f.image not in bad_images and f.event_image not in bad_images]
    val = [f for f in index.val if f.image not in bad_images and f.event_image not in bad_images]
    kept = train + val
    bad_list = list(index.stats["bad_files"]) + [f"{p}: {bad_images[p]}" for p in sorted(bad_images)]
    summary = {
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
    if index.modality == "fusion":
        summary.update(_fusion_summary(index, kept, workers, progress))
    return summary


def matched_ious(a: np.ndarray, b: np.ndarray) -> list[float]:
    """IoUs of boxes a [N, 4] and b [M, 4] (x1, y1, x2, y2) matched one to one, greedily by the highest IoU left:
    min(N, M) values."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    union = (a[:, 2:] - a[:, :2]).prod(1)[:, None] + (b[:, 2:] - b[:, :2]).prod(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    ious = []
    for _ in range(min(len(a), len(b))):
        i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
        ious.append(float(iou[i, j]))
        iou[i, :] = -1.0
        iou[:, j] = -1.0
    return ious


def _xyxy(boxes: np.ndarray) -> np.ndarray:
    """[N, 4] x1, y1, x2, y2 of [N, 5] (cls, cx, cy, w, h) boxes."""
    centre, size = boxes[:, 1:3], boxes[:, 3:5]
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def rgb_label_of(frame: Frame) -> str:
    """The RGB_YOLO file of a fused frame's PADDED_RGB image (<seq>/RGB_YOLO/<stem>.txt)."""
    seq_dir = os.path.dirname(os.path.dirname(frame.image))
    return os.path.join(seq_dir, LABEL_DIRS["rgb"], os.path.splitext(os.path.basename(frame.image))[0] + ".txt")


def _label_ious(frame: Frame) -> list[float]:
    """Matched IoUs of a fused frame's RGB_YOLO boxes against its (event) boxes; [] unless both files have boxes
    (an RGB label file that is absent or does not parse is not compared)."""
    path = rgb_label_of(frame)
    if not len(frame.boxes) or not os.path.isfile(path):
        return []
    rows, _, error = parse_label_file(path)
    if error is not None or not rows:
        return []
    rgb, keep = clip_boxes_cxcywh(np.asarray(rows, dtype=np.float64))
    return matched_ious(_xyxy(rgb[keep]), _xyxy(frame.boxes.astype(np.float64)))


def _fusion_summary(index: FredIndex, frames: list[Frame], workers: int, progress: bool) -> dict:
    """Fusion's part of the summary: totals of unpaired frames, label_agreement (mean matched IoU, None without a
    pair of boxes), "sequences" {id: pairing counts and offsets, frames, compared frames, label_iou} and the
    sequences whose labels disagree."""
    with ThreadPool(max(1, workers)) as pool:
        results = pool.imap(_label_ious, frames, chunksize=64)
        ious = list(tqdm(results, total=len(frames), desc="comparing RGB and event labels", unit="pair",
                         disable=not progress))
    per_seq = {sid: {**index.stats["pairing"][sid], "frames": 0, "compared_frames": 0, "matched_boxes": 0,
                     "label_iou": None} for sid in sort_ids(index.stats["pairing"])}
    sums = dict.fromkeys(per_seq, 0.0)
    for frame, values in zip(frames, ious):
        seq = per_seq[frame.sequence]
        seq["frames"] += 1
        seq["compared_frames"] += bool(values)
        seq["matched_boxes"] += len(values)
        sums[frame.sequence] += sum(values)
    for sid, seq in per_seq.items():
        if seq["matched_boxes"]:
            seq["label_iou"] = round(sums[sid] / seq["matched_boxes"], 4)
    all_ious = [v for values in ious for v in values]
    return {
        "unpaired_rgb": index.stats["unpaired_rgb"],
        "unpaired_event": index.stats["unpaired_event"],
        "label_agreement": round(float(np.mean(all_ious)), 4) if all_ious else None,
        "pairs": index.stats["pairs"],
        "offset_median_ms": index.stats["offset_median_ms"],
        "offset_max_ms": index.stats["offset_max_ms"],
        "pair_tolerance_s": index.stats["pair_tolerance_s"],
        "sequences": per_seq,
        "disagreeing_sequences": [sid for sid, seq in per_seq.items()
                                  if seq["label_iou"] is not None and seq["label_iou"] < LABEL_AGREEMENT_MIN_IOU],
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
    if s["modality"] == "fusion":
        lines += _fusion_lines(s, max_bad)
    lines.append(f"  bad files (left out): {s['bad_files']}")
    lines += _listed("bad files (left out)", s["bad_file_list"], max_bad)[1:]
    if not usable(s):
        empty = " and ".join(side for side in ("train", "val") if s[f"{side}_frames"] == 0)
        lines.append(f"  NOT USABLE: no {empty} frames left under {s['root']}")
    return printable("\n".join(lines))


def _fusion_lines(s: dict, max_bad: int) -> list[str]:
    """The fusion part of format_summary: pairing and label agreement, in total and per sequence."""
    agreement = "none compared" if s["label_agreement"] is None else f"{s['label_agreement']:.3f}"
    lines = [f"  pairs (PADDED_RGB and event frames at most {s['pair_tolerance_s'] * 1000:g} ms apart): {s['pairs']}, "
             f"unpaired RGB frames: {s['unpaired_rgb']}, unpaired event frames: {s['unpaired_event']}; "
             f"offsets median {s['offset_median_ms']:g} ms, max {s['offset_max_ms']:g} ms",
             f"  label agreement (mean IoU of RGB_YOLO and Event_YOLO boxes of pairs where both have boxes): "
             f"{agreement}",
             "  per sequence:"]
    for sid, q in s["sequences"].items():
        iou = "no boxes to compare" if q["label_iou"] is None else \
            f"label IoU {q['label_iou']:.3f} ({q['compared_frames']} frames)"
        lines.append(f"    {sid}: {q['pairs']} pairs, unpaired RGB {q['unpaired_rgb']}, event {q['unpaired_event']}, "
                     f"offset median {q['offset_median_ms']:g} / max {q['offset_max_ms']:g} ms, "
                     f"{q['frames']} fused frames, {iou}")
    disagree = [f"{sid}: mean IoU {s['sequences'][sid]['label_iou']:.3f} over {s['sequences'][sid]['compared_frames']}"
                f" frames: check its RGB_YOLO and Event_YOLO labels" for sid in s["disagreeing_sequences"]]
    return lines + _listed(f"labels disagree (mean IoU below {LABEL_AGREEMENT_MIN_IOU:g})", disagree, max_bad)
