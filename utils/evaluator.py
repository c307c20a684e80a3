"""The one evaluator: batched letterboxed inference, NMS, COCO metrics from pycocotools.

Used by train_fred.py (every EVAL_PERIOD epochs on the val split) and by eval_fred.py, so the
number printed during training and the number of the evaluation script are the same computation.

COCO conventions used throughout:
- image id = position of the frame in the ``frames`` list the loader's dataset was built from;
- category id = class id + 1 (COCO ids start at 1; FRED's class 0 "drone" is category 1);
- boxes [x, y, w, h] in original-image pixels.
Metrics are pycocotools' COCOeval(bbox) stats; -1 means "undefined" as in pycocotools (no ground
truth in that size range, or no ground truth at all).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import multiprocessing
import os
import time
from pathlib import PurePath
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from utils.engine import images_to_device, loss_means, raw_outputs, weighted_parts
from utils.letterbox import boxes_xyxy_letterbox_to_original
from utils.postprocess import non_max_suppression

LOGGER = logging.getLogger(__name__)

# COCOeval.stats index of each metric we report.
_STATS_KEYS = {"mAP50_95": 0, "mAP50": 1, "mAP75": 2, "AP_small": 3, "AP_medium": 4, "AP_large": 5, "AR100": 8}
SHARD_MIN_IMAGES = 200  # fewest images per process worth a process of its own in coco_eval(workers > 1)


class EvalResult(NamedTuple):
    """What evaluate() returns: metrics, COCO results, COCO ground truth, COCOeval precision array, and the loss
    (engine.evaluate_loss's dict) when evaluate() was given a criterion."""

    metrics: dict
    detections: list[dict]
    ground_truth: dict
    precision: np.ndarray  # COCOeval eval["precision"]: [T=10 IoUs, R=101 recalls, K classes, A=4 areas, M=3 maxDets]
    loss: dict | None = None


def fitness(metrics: dict) -> float:
    """Checkpoint selection score: 0.1 * mAP50 + 0.9 * mAP50:95 (undefined metrics count as 0)."""
    return 0.1 * max(metrics["mAP50"], 0.0) + 0.9 * max(metrics["mAP50_95"], 0.0)


def coco_ground_truth(frames: Sequence, orig_shapes: Sequence, class_names: Sequence[str],
                      data_root: str | None = None) -> dict:
    """COCO dataset dict for frames (image id = position); orig_shapes[i] = (h, w), or None to leave frame i out.

    file_name is the image path relative to data_root when given (and the image lies under it), else as in frames.
    """
    images, annotations = [], []
    root = os.path.abspath(os.path.expanduser(data_root)) if data_root else None
    for image_id, (frame, shape) in enumerate(zip(frames, orig_shapes)):
        if shape is None:
            continue
        h, w = int(shape[0]), int(shape[1])
        name = frame.image
        if root is not None:
            rel = os.path.relpath(os.path.abspath(name), root)
            name = name if rel.startswith("..") else PurePath(rel).as_posix()
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        boxes = np.asarray(frame.boxes, dtype=np.float64).reshape(-1, 5)
        if len(boxes) == 0:
            continue
        bw, bh = boxes[:, 3] * w, boxes[:, 4] * h
        xywh = np.stack([boxes[:, 1] * w - bw / 2, boxes[:, 2] * h - bh / 2, bw, bh], 1)
        for cls, (x, y, bw_, bh_) in zip(boxes[:, 0].astype(int).tolist(), xywh.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": [x, y, bw_, bh_], "area": bw_ * bh_, "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _top_detections(detections: list[dict], k: int) -> list[dict]:
    """The detections COCOeval scores: per (image, category) the k best by score (its stable order), in list order.

    COCOeval keeps the top maxDets[-1] (100) of each image and category and ignores the rest, after building
    an index of all of them; dropping the rest first gives the same numbers for less work."""
    if len(detections) <= k:
        return detections
    img = np.fromiter((d["image_id"] for d in detections), dtype=np.int64, count=len(detections))
    cat = np.fromiter((d["category_id"] for d in detections), dtype=np.int64, count=len(detections))
    score = np.fromiter((d["score"] for d in detections), dtype=np.float64, count=len(detections))
    order = np.lexsort((np.arange(len(detections)), -score, cat, img))  # by image, category, score, position
    group = np.r_[True, (np.diff(img[order]) != 0) | (np.diff(cat[order]) != 0)]
    starts = np.flatnonzero(group)
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = np.sort(order[rank < k])
    return [detections[i] for i in keep]


def _coco_pair(gt: dict, detections: list[dict]) -> tuple[COCO, COCO]:
    """pycocotools COCO objects for ground truth and results (copies: pycocotools writes into the dicts); results
    only of the detections COCOeval scores (_top_detections)."""
    detections = _top_detections(detections, max(COCOeval(iouType="bbox").params.maxDets))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        else:  # loadRes cannot take an empty list; an empty result set scores 0
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt["images"]), "categories": list(gt["categories"]), "annotations": []}
            coco_dt.createIndex()
    return coco_gt, coco_dt


def _run_cocoeval(coco_gt: COCO, coco_dt: COCO, image_ids: Iterable[int] | None = None) -> COCOeval:
    """COCOeval(bbox) evaluated, accumulated and summarised, with pycocotools' prints silenced."""
    cocoeval = COCOeval(coco_gt, coco_dt, "bbox")
    if image_ids is not None:
        cocoeval.params.imgIds = sorted(image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return cocoeval


def _metrics_from_cocoeval(cocoeval: COCOeval) -> dict:
    """Our metric names from COCOeval.stats, plus fitness."""
    metrics = {key: float(cocoeval.stats[i]) for key, i in _STATS_KEYS.items()}
    metrics["fitness"] = fitness(metrics)
    return metrics


_SHARDS: list = []  # (gt, detections) per shard, set before the pool forks: the processes inherit, not unpickle
_ACCUMULATE_KEYS = ("dtScores", "dtMatches", "dtIgnore", "gtIgnore")  # what COCOeval.accumulate() reads


def _evaluate_shard(k: int) -> list:
    """COCOeval.evaluate() over shard k's images only: its evalImgs (category, area range, image order), each
    cut to what accumulate() reads (matches as booleans: accumulate only tests them) to keep the transfer small."""
    coco_gt, coco_dt = _coco_pair(*_SHARDS[k])
    cocoeval = COCOeval(coco_gt, coco_dt, "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        cocoeval.evaluate()
    return [None if e is None else {**{key: e[key] for key in _ACCUMULATE_KEYS},
                                    "dtMatches": e["dtMatches"].astype(bool)} for e in cocoeval.evalImgs]


def _run_cocoeval_sharded(gt: dict, detections: list[dict], workers: int) -> COCOeval:
    """_run_cocoeval() with COCOeval.evaluate() split over `workers` processes by image; accumulate() and
    summarize() then run once on the merged per-image results, so every number is pycocotools' own."""
    ids = sorted({int(im["id"]) for im in gt["images"]})
    chunks = [c.tolist() for c in np.array_split(np.asarray(ids), workers) if len(c)]
    shard_of = {i: k for k, chunk in enumerate(chunks) for i in chunk}
    images, anns, dets = ([[] for _ in chunks] for _ in range(3))
    for im in gt["images"]:
        images[shard_of[int(im["id"])]].append(im)
    for a in gt["annotations"]:
        anns[shard_of[int(a["image_id"])]].append(a)
    for d in detections:
        dets[shard_of[int(d["image_id"])]].append(d)
    _SHARDS[:] = [({**gt, "images": images[k], "annotations": anns[k]}, dets[k]) for k in range(len(chunks))]
    try:
        with multiprocessing.get_context("fork").Pool(len(chunks)) as pool:  # pycocotools is pure Python
            parts = pool.map(_evaluate_shard, range(len(chunks)))
    finally:
        _SHARDS.clear()
    cocoeval = COCOeval(iouType="bbox")
    p = cocoeval.params
    p.imgIds, p.catIds = ids, sorted({int(c["id"]) for c in gt["categories"]})
    p.maxDets = sorted(p.maxDets)
    n_areas = len(p.areaRng)
    merged = []  # evaluate()'s order: category, then area range, then image
    for k in range(len(p.catIds)):
        for a in range(n_areas):
            for chunk, part in zip(chunks, parts):
                start = (k * n_areas + a) * len(chunk)
                merged += part[start:start + len(chunk)]
    cocoeval.evalImgs = merged
    cocoeval._paramsEval = copy.deepcopy(p)
    with contextlib.redirect_stdout(io.StringIO()):
        cocoeval.accumulate()
        cocoeval.summarize()
    return cocoeval


def coco_eval(gt: dict, detections: list[dict], workers: int = 1) -> tuple[dict, np.ndarray]:
    """pycocotools bbox evaluation: (metrics dict, COCOeval precision array [T, R, K, A, M]).

    workers > 1: the per-image matching (COCOeval.evaluate, the slow part) runs in that many forked processes
    (used for at least SHARD_MIN_IMAGES images per process); the results are the same as with one.
    """
    if not gt["images"]:
        raise ValueError("no images to evaluate: the ground truth holds no images")
    workers = min(int(workers), len(gt["images"]) // SHARD_MIN_IMAGES)
    if workers > 1 and hasattr(os, "fork"):
        cocoeval = _run_cocoeval_sharded(gt, detections, workers)
    else:
        cocoeval = _run_cocoeval(*_coco_pair(gt, detections))
    return _metrics_from_cocoeval(cocoeval), cocoeval.eval["precision"]


def coco_metrics(gt: dict, detections: list[dict]) -> dict:
    """pycocotools bbox metrics: mAP50_95, mAP50, mAP75, AP_small/medium/large, AR100, fitness."""
    return coco_eval(gt, detections)[0]


def per_sequence_metrics(gt: dict, detections: list[dict], frames: Sequence) -> list[tuple[str, float, float, int]]:
    """(sequence, mAP50, mAP50_95, images) per sequence, worst mAP50:95 first (sequences without boxes last)."""
    coco_gt, coco_dt = _coco_pair(gt, detections)
    by_sequence: dict[str, list[int]] = {}
    for image in gt["images"]:
        by_sequence.setdefault(str(frames[image["id"]].sequence), []).append(image["id"])
    rows = []
    for sequence, ids in by_sequence.items():
        stats = _run_cocoeval(coco_gt, coco_dt, ids).stats
        rows.append((sequence, float(stats[1]), float(stats[0]), len(ids)))
    return sorted(rows, key=lambda r: (r[2] < 0, r[2], r[1], r[0]))


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timing is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_detections(dets: list[torch.Tensor], keep: np.ndarray, image_ids: np.ndarray, ratios: np.ndarray,
                      pads: np.ndarray, orig_shapes: np.ndarray) -> list[dict]:
    """COCO results for one batch: NMS output (letterbox xyxy) -> original-pixel [x, y, w, h]; one host copy."""
    counts = np.array([len(d) for d in dets])
    if counts.sum() == 0:
        return []
    rows = torch.cat(dets).float().cpu().numpy().astype(np.float64)  # [M, 6] x1, y1, x2, y2, score, cls
    row_image = np.repeat(np.arange(len(dets)), counts)
    rows, row_image = rows[keep[row_image]], row_image[keep[row_image]]
    rows[:, :4] = boxes_xyxy_letterbox_to_original(rows[:, :4], ratios[row_image], pads[row_image],
                                                   orig_shapes[row_image])  # each box with its image's letterbox
    xywh = np.round(np.concatenate([rows[:, :2], rows[:, 2:4] - rows[:, :2]], 1), 3)
    scores = np.round(rows[:, 4], 5)
    categories = rows[:, 5].astype(np.int64) + 1
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
            for i, c, b, s in zip(image_ids[row_image].tolist(), categories.tolist(), xywh.tolist(), scores.tolist())]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable[dict], frames: Sequence, device: torch.device | str,
             conf_thres: float = 0.001, iou_thres: float = 0.7, max_det: int = 300, amp: bool = True,
             amp_dtype: torch.dtype = torch.float16, class_names: Sequence[str] = ("drone",),
             data_root: str | None = None, coco_workers: int = 1, channels_last: bool = False,
             criterion: Callable | None = None) -> EvalResult:
    """Run model over a collate_fred loader of `frames` and score it with pycocotools (COCO bbox metrics).

    loader yields {"images": uint8 [B, C, H, W] letterboxed, "index": long [B] (position in frames),
    "orig_shapes": long [B, 2] (h, w), "ratios": float [B], "pads": float [B, 2] (pad_w, pad_h)}.
    The model in eval mode returns [B, 4 + nc, A] (cx, cy, w, h input pixels, class scores).
    Metrics gain `images` (frames scored) and `ms_per_image` (transfer + forward + NMS, data loading excluded).
    AMP applies on CUDA only; fp16 is advised: bf16 keeps ~3 significant digits of box coordinates.
    coco_workers: processes for pycocotools' per-image matching (coco_eval), same numbers as with one.
    channels_last: feed NHWC images (for a model in channels_last memory format, as trained on CUDA).
    criterion: also the loss (DetectionLoss) on the loader's "targets", from the same forward pass: the model runs
    with raw head outputs (BatchNorm on running statistics) that are then decoded, as in eval mode.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    n = len(frames)
    seen = np.zeros(n, dtype=bool)
    orig_shapes = np.zeros((n, 2), dtype=np.int64)
    detections: list[dict] = []
    seconds = 0.0
    use_amp = amp and device.type == "cuda"
    loss_sums, batches = torch.zeros(3, device=device), 0
    with raw_outputs(model) if criterion is not None else contextlib.nullcontext():
        for batch in loader:
            seconds += _evaluate_batch(model, batch, seen, orig_shapes, detections, device, use_amp, amp_dtype,
                                       channels_last, (conf_thres, iou_thres, max_det), criterion, loss_sums)
            batches += 1
    model.train(was_training)
    images_done = int(seen.sum())
    if images_done < n:
        LOGGER.warning("%d of %d frames were not returned by the loader (unreadable images?) and are not scored",
                       n - images_done, n)
    shapes = [tuple(s) if ok else None for s, ok in zip(orig_shapes.tolist(), seen)]
    gt = coco_ground_truth(frames, shapes, class_names, data_root)
    metrics, precision = coco_eval(gt, detections, coco_workers)
    metrics["images"] = images_done
    metrics["ms_per_image"] = 1000.0 * seconds / max(images_done, 1)
    return EvalResult(metrics, detections, gt, precision, loss_means(loss_sums, batches) if criterion else None)


def _evaluate_batch(model: torch.nn.Module, batch: dict, seen: np.ndarray, orig_shapes: np.ndarray,
                    detections: list[dict], device: torch.device, use_amp: bool, amp_dtype: torch.dtype,
                    channels_last: bool, nms: tuple[float, float, int], criterion: Callable | None,
                    loss_sums: torch.Tensor) -> float:
    """One batch of evaluate(): detections (and loss parts into loss_sums) added, frames marked seen; returns the
    seconds of transfer + forward + NMS."""
    index = batch["index"].numpy().astype(np.int64)
    keep = np.zeros(len(index), dtype=bool)  # first occurrence of each frame (a bad image may be replaced)
    keep[np.unique(index, return_index=True)[1]] = True
    keep &= ~seen[index]
    _sync(device)
    start = time.perf_counter()
    images = images_to_device(batch["images"], device, channels_last)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
        preds = model(images)
        if criterion is not None:  # raw head maps: score them, then decode as eval mode would
            targets = batch["targets"].to(device, non_blocking=True)
            loss_sums += weighted_parts(criterion(preds, targets, tuple(images.shape[2:])), criterion.weight_dict)
            preds = model.head.decode(preds)
    dets = non_max_suppression(preds.float(), conf_thres=nms[0], iou_thres=nms[1], max_det=nms[2])
    detections.extend(_batch_detections(dets, keep, index, batch["ratios"].numpy(), batch["pads"].numpy(),
                                        batch["orig_shapes"].numpy()))
    _sync(device)
    seen[index[keep]] = True
    orig_shapes[index[keep]] = batch["orig_shapes"].numpy()[keep]
    return time.perf_counter() - start

