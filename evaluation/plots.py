"""Evaluation pictures drawn with OpenCV: the precision-recall curve and a grid of sample frames."""
from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from utils.letterbox import boxes_xyxy_original_to_letterbox, letterbox

GREEN, RED, BLUE, ORANGE = (0, 170, 0), (0, 0, 230), (200, 90, 20), (20, 130, 240)  # BGR
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _write(path: str, image: np.ndarray) -> None:
    """cv2.imwrite that raises instead of returning False."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, image):
        raise OSError(f"could not write {path}")


def _mean_valid(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Mean over axes of entries > -1 (COCOeval's -1 marks 'no ground truth'); NaN where none is valid."""
    valid = values > -1
    total = np.where(valid, values, 0.0).sum(axis=axes)
    count = valid.sum(axis=axes)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def pr_curves(precision: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall [101], precision at IoU 0.5 [101], precision averaged over IoU 0.5:0.95 [101]), classes averaged.

    precision: COCOeval eval["precision"] [T=10, R=101, K, A, M]; area "all" and the largest maxDets are used.
    """
    p = precision[:, :, :, 0, -1]  # [T, R, K]
    recall = np.linspace(0.0, 1.0, p.shape[1])
    return recall, _mean_valid(p[0], (1,)), _mean_valid(p, (0, 2))


def plot_pr_curve(precision: np.ndarray, path: str, title: str = "precision-recall") -> None:
    """Write a PNG with COCO's interpolated precision-recall curves at IoU 0.5 and averaged over 0.5:0.95."""
    width, height, left, right, top, bottom = 720, 540, 70, 20, 40, 60
    canvas = np.full((height, width, 3), 255, np.uint8)
    pw, ph = width - left - right, height - top - bottom

    def xy(r: np.ndarray, p: np.ndarray) -> np.ndarray:
        return np.stack([left + r * pw, top + (1 - p) * ph], 1).round().astype(np.int32)

    for v in np.linspace(0, 1, 6):  # grid and tick labels every 0.2
        x, y = int(round(left + v * pw)), int(round(top + (1 - v) * ph))
        cv2.line(canvas, (x, top), (x, top + ph), (225, 225, 225), 1)
        cv2.line(canvas, (left, y), (left + pw, y), (225, 225, 225), 1)
        cv2.putText(canvas, f"{v:.1f}", (x - 12, top + ph + 20), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(canvas, f"{v:.1f}", (left - 35, y + 5), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (left + pw, top + ph), (0, 0, 0), 1)
    cv2.putText(canvas, "recall", (left + pw // 2 - 25, height - 15), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "precision", (5, top - 12), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (left + 90, top - 12), _FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    recall, p50, p50_95 = pr_curves(precision)
    legend_y = top + 25
    for curve, colour, name in ((p50, BLUE, "IoU 0.50"), (p50_95, ORANGE, "IoU 0.50:0.95")):
        if np.isnan(curve).all():
            continue
        ok = ~np.isnan(curve)
        cv2.polylines(canvas, [xy(recall[ok], curve[ok])], False, colour, 2, cv2.LINE_AA)
        ap = float(np.nanmean(curve))
        cv2.line(canvas, (left + pw - 230, legend_y - 5), (left + pw - 200, legend_y - 5), colour, 2)
        cv2.putText(canvas, f"{name}  AP {ap:.3f}", (left + pw - 190, legend_y), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        legend_y += 22
    if legend_y == top + 25:
        cv2.putText(canvas, "no ground truth boxes", (left + 20, top + 40), _FONT, 0.6, RED, 1, cv2.LINE_AA)
    _write(path, canvas)


def choose_samples(ground_truth: dict, detections: list[dict], count: int, score_thres: float) -> list[int]:
    """Image ids spread evenly over the evaluated frames, preferring frames with a GT box or a confident detection."""
    ids = [im["id"] for im in ground_truth["images"]]
    busy = {a["image_id"] for a in ground_truth["annotations"]}
    busy |= {d["image_id"] for d in detections if d["score"] >= score_thres}
    preferred = [i for i in ids if i in busy]
    pool = preferred if len(preferred) >= count else preferred + [i for i in ids if i not in busy]
    if len(pool) <= count:
        return sorted(pool)
    return sorted(pool[int(k)] for k in np.linspace(0, len(pool) - 1, count).round())


def _sample_view(path: str, tile: tuple[int, int], truth: list, found: list) -> np.ndarray:
    """The image at path letterboxed into tile (h, w) with boxes truth (xywh, red) and found (xywh, score; green)."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        image = np.full((*tile, 3), 60, np.uint8)
        cv2.putText(image, "unreadable", (10, tile[0] // 2), _FONT, 0.6, RED, 1, cv2.LINE_AA)
        return image
    image, ratio, pad = letterbox(image, tile)
    image = np.ascontiguousarray(image)
    for boxes, colour in ((truth, RED), (found, GREEN)):
        if not boxes:
            continue
        b = np.asarray(boxes, np.float64)
        xyxy = boxes_xyxy_original_to_letterbox(np.concatenate([b[:, :2], b[:, :2] + b[:, 2:4]], 1), ratio, pad)
        for k, (x1, y1, x2, y2) in enumerate(xyxy.round().astype(int).tolist()):
            cv2.rectangle(image, (x1, y1), (x2, y2), colour, 1)
            if colour == GREEN:
                cv2.putText(image, f"{b[k, 4]:.2f}", (x1, max(y1 - 3, 10)), _FONT, 0.4, colour, 1, cv2.LINE_AA)
    return image


def plot_samples(frames: Sequence, ground_truth: dict, detections: list[dict], path: str, count: int = 16,
                 score_thres: float = 0.25, tile: tuple[int, int] = (225, 400), columns: int = 4) -> None:
    """Write a grid of frames: ground truth in red, detections with score >= score_thres in green with the score;
    fused frames (with an event_image) show their RGB frame above their event frame."""
    ids = choose_samples(ground_truth, detections, count, score_thres)
    gt_by_image: dict[int, list] = {}
    for a in ground_truth["annotations"]:
        gt_by_image.setdefault(a["image_id"], []).append(a["bbox"])
    dt_by_image: dict[int, list] = {}
    for d in detections:
        if d["score"] >= score_thres:
            dt_by_image.setdefault(d["image_id"], []).append([*d["bbox"], d["score"]])
    streams = 2 if getattr(frames[ids[0]] if ids else None, "event_image", "") else 1
    size = (tile[0] * streams, tile[1])  # a fused frame: its RGB frame above its event frame, the same boxes on both
    tiles = []
    for image_id in ids:
        frame = frames[image_id]
        paths = [frame.image, frame.event_image] if streams == 2 else [frame.image]
        views = [_sample_view(p, tile, gt_by_image.get(image_id, []), dt_by_image.get(image_id, [])) for p in paths]
        image = np.concatenate(views, 0)
        caption = f"{frame.sequence}: {os.path.basename(frame.image)}"
        cv2.rectangle(image, (0, 0), (min(tile[1], 7 * len(caption) + 6), 16), (0, 0, 0), -1)
        cv2.putText(image, caption, (3, 12), _FONT, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(image)
    tile = size
    if not tiles:
        tiles.append(np.full((*tile, 3), 60, np.uint8))
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    tiles += [np.full((*tile, 3), 255, np.uint8)] * (rows * columns - len(tiles))
    grid = np.concatenate([np.concatenate(tiles[r * columns:(r + 1) * columns], 1) for r in range(rows)], 0)
    legend = np.full((22, grid.shape[1], 3), 255, np.uint8)
    cv2.putText(legend, f"red: ground truth   green: detections (score >= {score_thres:.2f})", (5, 16), _FONT, 0.5,
                (0, 0, 0), 1, cv2.LINE_AA)
    _write(path, np.concatenate([legend, grid], 0))
