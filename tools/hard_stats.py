"""Detectability of every labelled drone in a FRED-shaped tree, measured on the images without training a model.

A box is compared with a ring around it (the box grown by its larger side on every side, at least RING_MIN_PX; the
ring leaves out every labelled box of the frame and, in RGB, the black padding of PADDED_RGB):
- RGB (PADDED_RGB frames): contrast = max over the B, G, R channels of |mean inside the box - mean of the ring| /
  std of the ring (the std floored at STD_FLOOR grey levels). A drone below RGB_VISIBLE = 1 is invisible: its box
  differs from the ring by less than the ring's own pixel spread (sensor noise, JPEG, texture of trees, buildings,
  clouds), so nothing singles the box out among patches around it.
- Events (Event/Frames): z = (n - lam) / sqrt(lam + 1), n the event pixels (either polarity) inside the box, lam the
  count expected there from the ring's event density (noise, hot pixels, rain, insects, lamps, branch) times the
  box's area; the Poisson spread of lam plus one, so that with no events around a box needs EVENT_VISIBLE event
  pixels. A drone below EVENT_VISIBLE = 3 is invisible: a hovering drone with still propellers (n about 0) or one
  drowned in rain (n about lam).

Reported per modality and split (the split's train / val sequences) for all boxes and per condition: night, rain,
sunset, hovering, occluded (the generator manifest's per-frame record), clutter (a background other than open sky),
insects (a sequence with insects) and the box's own size bucket (its width at 1280 px, tools.synthetic.SIZE_BUCKETS):
boxes, the share below the visibility threshold, and the median measure. A default-profile tree records no frame
conditions: night and rain are its sequences' conditions. A tree without a manifest (real FRED) is reported per
split and size only.

    python -m tools.hard_stats ROOT [--modality rgb,event] [--split canonical] [--stride 1] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from datasets.event_frames import EVENT_BACKGROUND
from datasets.fred_index import build_fred_index
from tools.synthetic import CLUTTERED_BACKGROUNDS, MANIFEST_NAME, REFERENCE_WIDTH, SIZE_BUCKETS

RING_MIN_PX = 4        # the ring is at least this many pixels wide
STD_FLOOR = 2.0        # grey levels: a ring flatter than this (JPEG-flattened sky) counts as this noisy
RGB_VISIBLE = 1.0      # RGB contrast below this (in ring standard deviations): invisible
EVENT_VISIBLE = 3.0    # event z below this: invisible
PAD_LEVEL = 8          # a PADDED_RGB row / column whose brightest pixel is at most this is padding (black + JPEG)
CONDITION_ROWS = ("all", "night", "rain", "sunset", "hovering", "occluded", "clutter", "insects") + tuple(
    f"size={name}" for name, _ in SIZE_BUCKETS)


def _sums(integral: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Sums over integer rectangles x1, y1, x2, y2 (x2, y2 exclusive) [N, 4] of an integral image [H+1, W+1(, C)]."""
    x1, y1, x2, y2 = boxes.T
    return integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]


def _rings(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Outer rectangles [N, 4] of the rings: each box grown by its larger side (RING_MIN_PX at least), clipped."""
    grow = np.maximum(RING_MIN_PX, (boxes[:, 2:] - boxes[:, :2]).max(1, keepdims=True))
    outer = np.concatenate([boxes[:, :2] - grow, boxes[:, 2:] + grow], 1)
    return np.clip(outer, 0, [shape[1], shape[0], shape[1], shape[0]])


def _outside_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: True outside every box."""
    out = np.ones(shape, bool)
    for x1, y1, x2, y2 in boxes:
        out[y1:y2, x1:x2] = False
    return out


def content_mask(image: np.ndarray) -> np.ndarray:
    """bool [H, W]: the camera's picture inside a padded frame (rows and columns brighter than PAD_LEVEL somewhere)."""
    grey = image.max(2) if image.ndim == 3 else image
    rows, cols = np.flatnonzero(grey.max(1) > PAD_LEVEL), np.flatnonzero(grey.max(0) > PAD_LEVEL)
    mask = np.zeros(grey.shape, bool)
    if rows.size and cols.size:
        mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
    return mask


def rgb_contrast(image: np.ndarray, boxes: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Contrast of each box against its ring, float64 [N] (NaN where the ring has under 8 pixels): image BGR uint8
    [H, W, 3], boxes int [N, 4] x1, y1, x2, y2 (exclusive ends); valid bool [H, W], the pixels a ring may use
    (default: content_mask(image))."""
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    shape = image.shape[:2]
    valid = content_mask(image) if valid is None else valid
    ring = (valid & _outside_boxes(boxes, shape)).astype(np.float32)
    img = image.astype(np.float32)
    inside = _sums(cv2.integral(img, sdepth=cv2.CV_64F), boxes)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], 1)[:, None].astype(np.float64)
    s, q = cv2.integral2(img * ring[..., None], sdepth=cv2.CV_64F)
    outer = _rings(boxes, shape)
    n = _sums(cv2.integral(ring, sdepth=cv2.CV_64F), outer)[:, None]
    ring_mean = _sums(s, outer) / np.maximum(n, 1)
    ring_var = np.maximum(_sums(q, outer) / np.maximum(n, 1) - ring_mean ** 2, 0)
    contrast = np.abs(inside / np.maximum(area, 1) - ring_mean) / np.maximum(np.sqrt(ring_var), STD_FLOOR)
    return np.where(n[:, 0] >= 8, contrast.max(1), np.nan)


def event_pixels(event: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels of an event frame (BGR uint8 [H, W, 3]) that fired, either polarity."""
    return (event != np.array(EVENT_BACKGROUND[::-1], np.uint8)).any(2)


def event_excess(fired: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, n, lam) per box, float64 [N] each: event pixels n inside the box, lam the count expected from the ring's
    density, z = (n - lam) / sqrt(lam + 1); fired bool [H, W], boxes int [N, 4] x1, y1, x2, y2."""
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    ring = _outside_boxes(boxes, fired.shape).astype(np.float32)
    hits = fired.astype(np.float32)
    n = _sums(cv2.integral(hits, sdepth=cv2.CV_64F), boxes)
    outer = _rings(boxes, fired.shape)
    density = _sums(cv2.integral(hits * ring, sdepth=cv2.CV_64F), outer) / np.maximum(
        _sums(cv2.integral(ring, sdepth=cv2.CV_64F), outer), 1)
    lam = density * np.prod(boxes[:, 2:] - boxes[:, :2], 1)
    return (n - lam) / np.sqrt(lam + 1), n, lam


def _pixel_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Normalised label boxes [N, 5] (cls, cx, cy, w, h) -> int pixel boxes [N, 4] x1, y1, x2, y2, at least 1 px."""
    h, w = shape
    cx, cy, bw, bh = boxes[:, 1] * w, boxes[:, 2] * h, boxes[:, 3] * w, boxes[:, 4] * h
    x1, y1 = np.round(cx - bw / 2), np.round(cy - bh / 2)
    out = np.stack([x1, y1, np.maximum(np.round(cx + bw / 2), x1 + 1), np.maximum(np.round(cy + bh / 2), y1 + 1)], 1)
    return np.clip(out, 0, [w - 1, h - 1, w, h]).astype(np.int64)


def measure(root: str, modality: str, split: str = "canonical", stride: int = 1) -> list[dict]:
    """One record per labelled box of every `stride`-th annotated frame of each split side: split, sequence, frame
    stem, width (px at 1280), value (contrast or z), visible, and the frame's conditions (tags, a set of names)."""
    index = build_fred_index(root, modality, split=split)
    manifest_path = Path(root) / MANIFEST_NAME
    sequences = json.loads(manifest_path.read_text()).get("sequences", {}) if manifest_path.is_file() else {}
    records = []
    for side, frames in (("train", index.train), ("val", index.val)):
        for frame in frames[::stride]:
            if not len(frame.boxes):
                continue
            image = cv2.imread(frame.image, cv2.IMREAD_COLOR)
            boxes = _pixel_boxes(frame.boxes, image.shape[:2])
            if modality == "rgb":
                values, threshold = rgb_contrast(image, boxes), RGB_VISIBLE
            else:
                values, threshold = event_excess(event_pixels(image), boxes)[0], EVENT_VISIBLE
            entry = sequences.get(frame.sequence, {})
            stem = Path(frame.image).stem
            recorded = entry.get("frames", {}).get(modality, {}).get(stem, {})
            tags = {k for k in ("night", "rain", "hovering", "occluded") if recorded.get(k) is True}
            tags |= {entry.get("condition")} & {"night", "rain"} if not recorded else set()   # default profile
            tags |= {"sunset"} if entry.get("condition") == "sunset" else set()
            tags |= {"clutter"} if entry.get("background") in CLUTTERED_BACKGROUNDS else set()
            tags |= {"insects"} if entry.get("hard", {}).get("insects", 0) > 0 else set()
            scale = REFERENCE_WIDTH / image.shape[1]
            for box, value in zip(boxes, values):
                if np.isnan(value):
                    continue
                width = float(box[2] - box[0]) * scale
                bucket = next(name for name, upper in SIZE_BUCKETS if width < upper)
                records.append({"split": side, "sequence": frame.sequence, "stem": stem, "width": width,
                                "value": float(value), "visible": bool(value >= threshold),
                                "tags": tags | {"all", f"size={bucket}"}})
    return records


def summarise(records: list[dict]) -> dict[str, dict[str, dict]]:
    """{split ("train", "val", "all"): {condition row: {boxes, invisible (share), median}}} of measure()'s records;
    rows without boxes are left out."""
    out: dict[str, dict[str, dict]] = {}
    for side in ("train", "val", "all"):
        rows = {}
        for name in CONDITION_ROWS:
            values = np.array([r["value"] for r in records if name in r["tags"] and side in (r["split"], "all")])
            seen = np.array([r["visible"] for r in records if name in r["tags"] and side in (r["split"], "all")])
            if values.size:
                rows[name] = {"boxes": int(values.size), "invisible": float(1 - seen.mean()),
                              "median": float(np.median(values))}
        out[side] = rows
    return out


def format_summary(title: str, summary: dict[str, dict[str, dict]]) -> str:
    """A text table: one row per condition, boxes / invisible share / median per split."""
    head = f"{title:<14}" + "".join(f" | {side + ' boxes':>11} {'invis.':>6} {'median':>7}" for side in summary)
    lines = [head]
    for name in CONDITION_ROWS:
        if not any(name in rows for rows in summary.values()):
            continue
        cells = []
        for rows in summary.values():
            r = rows.get(name)
            cells.append(f" | {r['boxes']:>11} {r['invisible']:>6.0%} {r['median']:>7.2f}" if r else
                         f" | {'-':>11} {'':>6} {'':>7}")
        lines.append(f"{name:<14}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: measure a tree's boxes and print one table per modality (and write them as JSON)."""
    ap = argparse.ArgumentParser(prog="python -m tools.hard_stats", description=__doc__.splitlines()[0])
    ap.add_argument("root", help="FRED root (a tools.synthetic tree: its manifest gives the conditions)")
    ap.add_argument("--modality", default="rgb,event", help="rgb, event or rgb,event")
    ap.add_argument("--split", default="canonical", help="a split of datasets.splits (canonical, challenging, ...)")
    ap.add_argument("--stride", type=int, default=1, help="measure every n-th annotated frame")
    ap.add_argument("--json", help="write the summaries here")
    args = ap.parse_args(argv)
    result = {}
    for modality in [m.strip() for m in args.modality.split(",") if m.strip()]:
        if modality not in ("rgb", "event"):
            ap.error(f"--modality: rgb or event, got {modality!r}")
        start = time.perf_counter()
        summary = summarise(measure(args.root, modality, args.split, max(1, args.stride)))
        threshold = f"contrast < {RGB_VISIBLE:g}" if modality == "rgb" else f"z < {EVENT_VISIBLE:g}"
        print(format_summary(modality, summary))
        print(f"({modality}: invisible = {threshold}; {time.perf_counter() - start:.1f} s)\n")
        result[modality] = summary
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
