"""The one evaluator: batched letterboxed inference, NMS, COCO metrics from pycocotools.

Used by train_fred.py (every EVAL_PERIOD epochs on the val split) and by eval_fred.py, so the
number printed during training and the number of the evaluation script are the same computation.

COCO conventions used throughout:
- image id = position of the frame in the ``frames`` list the loader's dataset was built from;
- category id = class id + 1 (COCO ids start at 1; FRED's class 0 "drone" is category 1);
- boxes [x, y, w, h] in original-image pixels.
Metrics are pycocotools' COCOeval(bbox) stats (matching and accumulation vectorized in evaluation/coco_arrays.py, same
numbers); -1 means "undefined" as in pycocotools (no ground truth in that size range, or no ground truth at all).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePath
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from evaluation.breakdown import sequence_subsets, subset_metrics
from evaluation.coco_arrays import (accumulate, match_results, results_array_to_dicts, results_dicts_to_array,
                                    summarize)
from evaluation.postprocess import non_max_suppression
from evaluation.val_loss import loss_means, raw_outputs
from nets.loss import weighted_parts
from utils.device_batches import prefetched, to_device
from utils.letterbox import boxes_xyxy_letterbox_to_original

LOGGER = logging.getLogger(__name__)

# COCOeval.stats index of each metric we report.
_STATS_KEYS = {"mAP50_95": 0, "mAP50": 1, "mAP75": 2, "AP_small": 3, "AP_medium": 4, "AP_large": 5, "AR100": 8}


@dataclass(frozen=True)
class EvalResult:
    """What evaluate() returns: metrics, COCO results (as rows; as dicts on first use of .detections), COCO ground
    truth, COCOeval precision array, and the loss (val_loss.evaluate_loss's dict) when evaluate() had a criterion."""

    metrics: dict
    results: np.ndarray  # float64 [N, 7] image_id, x, y, w, h, score, category_id: loadRes' array form
    ground_truth: dict
    precision: np.ndarray  # COCOeval eval["precision"]: [T=10 IoUs, R=101 recalls, K classes, A=4 areas, M=3 maxDets]
    loss: dict | None = None

    @cached_property
    def detections(self) -> list[dict]:
        """The COCO results as dicts (image_id, category_id, bbox [x, y, w, h], score), built on first use."""
        return results_array_to_dicts(self.results)


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


def _results_array(detections: Sequence[dict] | np.ndarray) -> np.ndarray:
    """Results as float64 [N, 7] image_id, x, y, w, h, score, category_id (dicts are converted)."""
    if isinstance(detections, np.ndarray):
        return detections.reshape(-1, 7).astype(np.float64, copy=False)
    return results_dicts_to_array(detections)


def _metrics_from_stats(stats: np.ndarray) -> dict:
    """Our metric names from COCOeval.stats, plus fitness."""
    metrics = {key: float(stats[i]) for key, i in _STATS_KEYS.items()}
    metrics["fitness"] = fitness(metrics)
    return metrics


def coco_eval(gt: dict, detections: Sequence[dict] | np.ndarray) -> tuple[dict, np.ndarray]:
    """pycocotools bbox evaluation: (metrics dict, COCOeval precision array [T, R, K, A, M]).

    detections: COCO results dicts or float64 [N, 7] rows image_id, x, y, w, h, score, category_id. The matching
    and accumulation run vectorized (evaluation/coco_arrays.py) with pycocotools' numbers.
    """
    if not gt["images"]:
        raise ValueError("no images to evaluate: the ground truth holds no images")
    matches = match_results(gt, _results_array(detections))
    precision, recall = accumulate(matches, [im["id"] for im in gt["images"]], [c["id"] for c in gt["categories"]])
    return _metrics_from_stats(summarize(precision, recall)), precision


def coco_metrics(gt: dict, detections: Sequence[dict] | np.ndarray) -> dict:
    """pycocotools bbox metrics: mAP50_95, mAP50, mAP75, AP_small/medium/large, AR100, fitness."""
    return coco_eval(gt, detections)[0]


def per_sequence_metrics(gt: dict, detections: Sequence[dict] | np.ndarray, frames: Sequence
                         ) -> list[tuple[str, float, float, int]]:
    """(sequence, mAP50, mAP50_95, images) per sequence, worst mAP50:95 first (sequences without boxes last).

    detections: COCO results dicts or float64 [N, 7] rows (as coco_eval)."""
    metrics = subset_metrics(gt, _results_array(detections), sequence_subsets(gt, frames))
    rows = [(sequence, m["mAP50"], m["mAP50_95"], m["images"]) for sequence, m in metrics.items()]
    return sorted(rows, key=lambda r: (r[2] < 0, r[2], r[1], r[0]))


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timing is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_results(dets: list[torch.Tensor], image_ids: np.ndarray, ratios: torch.Tensor, pads: torch.Tensor,
                   orig_shapes: torch.Tensor) -> np.ndarray:
    """COCO results rows float64 [M, 7] image_id, x, y, w, h, score, category_id of some images' NMS output.

    dets: per image [n, 6] letterbox x1, y1, x2, y2, score, class; image_ids [B], ratios [B], pads [B, 2] (pad_w,
    pad_h), orig_shapes [B, 2] (h, w) per image. The letterbox -> original mapping runs in float64 on the detections'
    device, then one host copy; boxes are rounded to 3 decimals, scores to 5."""
    counts = [len(d) for d in dets]
    if sum(counts) == 0:
        return np.zeros((0, 7))
    device = dets[0].device
    rows = torch.cat(dets).double()  # [M, 6]
    row_image = torch.repeat_interleave(torch.arange(len(dets), device=device),
                                        torch.tensor(counts, device=device), output_size=len(rows))
    per_image = torch.cat([torch.from_numpy(image_ids.astype(np.float64))[:, None], ratios.double()[:, None],
                           pads.double(), orig_shapes.double()], 1).to(device)[row_image]  # [M, 6]
    xyxy = boxes_xyxy_letterbox_to_original(rows[:, :4], per_image[:, 1], per_image[:, 2:4], per_image[:, 4:6])
    out = torch.cat([per_image[:, :1], xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2], rows[:, 4:5], rows[:, 5:6] + 1], 1)
    out = out.cpu().numpy()
    out[:, 1:5] = np.round(out[:, 1:5], 3)
    out[:, 5] = np.round(out[:, 5], 5)
    return out


def autocast_dtype(name: str) -> torch.dtype:
    """The AMP_DTYPE setting ("fp16" | "bf16") as the torch dtype that training and evaluation autocast to."""
    return torch.bfloat16 if name == "bf16" else torch.float16


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable[dict], frames: Sequence, device: torch.device | str,
             conf_thres: float = 0.001, iou_thres: float = 0.7, max_det: int = 300, amp: bool = True,
             amp_dtype: torch.dtype = torch.float16, class_names: Sequence[str] = ("drone",),
             data_root: str | None = None, channels_last: bool = False,
             criterion: Callable | None = None) -> EvalResult:
    """Run model over a collate_fred loader of `frames` and score it with COCOeval's bbox metrics (coco_eval).

    loader yields {"images": uint8 [B, C, H, W] letterboxed, "index": long [B] (position in frames),
    "orig_shapes": long [B, 2] (h, w), "ratios": float [B], "pads": float [B, 2] (pad_w, pad_h)}.
    The model in eval mode returns [B, 4 + nc, A] (cx, cy, w, h input pixels, class scores).
    Metrics gain `images` (frames scored) and `ms_per_image` (forward + NMS + results to the host; data loading
    excluded, and so is the copy to the device with its uint8 -> float conversion, except where on CUDA, one batch
    ahead on a side stream, it outlasts the previous batch's work). AMP applies on CUDA only; fp16 is advised: bf16
    keeps ~3 significant digits of box coordinates.
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
    results: list[np.ndarray] = [np.zeros((0, 7))]
    seconds = 0.0
    use_amp = amp and device.type == "cuda"
    loss_sums, batches = torch.zeros(3, device=device), 0
    _sync(device)  # GPU work queued before the call (e.g. loading the model) is not timed as the first batch's
    with raw_outputs(model) if criterion is not None else contextlib.nullcontext():
        for batch, tensors in prefetched(loader, device, lambda b: to_device(b, device, channels_last)):
            seconds += _evaluate_batch(model, batch, tensors, seen, orig_shapes, results, use_amp, amp_dtype,
                                       (conf_thres, iou_thres, max_det), criterion, loss_sums)
            batches += 1
    model.train(was_training)
    images_done = int(seen.sum())
    if images_done < n:
        LOGGER.warning("%d of %d frames were not returned by the loader (unreadable images?) and are not scored",
                       n - images_done, n)
    shapes = [tuple(s) if ok else None for s, ok in zip(orig_shapes.tolist(), seen)]
    gt = coco_ground_truth(frames, shapes, class_names, data_root)
    rows = np.concatenate(results)
    metrics, precision = coco_eval(gt, rows)
    metrics["images"] = images_done
    metrics["ms_per_image"] = 1000.0 * seconds / max(images_done, 1)
    return EvalResult(metrics, rows, gt, precision, loss_means(loss_sums, batches) if criterion else None)


def _evaluate_batch(model: torch.nn.Module, batch: dict, tensors: tuple[torch.Tensor, ...], seen: np.ndarray,
                    orig_shapes: np.ndarray, results: list[np.ndarray], use_amp: bool, amp_dtype: torch.dtype,
                    nms: tuple[float, float, int], criterion: Callable | None, loss_sums: torch.Tensor) -> float:
    """One batch of evaluate(): its results rows appended (and loss parts added into loss_sums), frames marked seen;
    returns the seconds of forward + NMS + results to the host. tensors: the batch's float images and its targets
    on the device (device_batches.to_device), copied there ahead of time (device_batches.prefetched)."""
    index = batch["index"].numpy().astype(np.int64)
    keep = np.zeros(len(index), dtype=bool)  # first occurrence of each frame (a bad image may be replaced)
    keep[np.unique(index, return_index=True)[1]] = True
    keep &= ~seen[index]
    images = tensors[0]
    start = time.perf_counter()  # the previous batch's work is done (its results reached the host)
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=use_amp):
        preds = model(images)
        if criterion is not None:  # raw head maps: score them, then decode as eval mode would
            loss_sums += weighted_parts(criterion(preds, tensors[1], tuple(images.shape[2:])), criterion.weight_dict)
            preds = model.head.decode(preds)
    dets = non_max_suppression(preds.float(), conf_thres=nms[0], iou_thres=nms[1], max_det=nms[2])
    kept = np.flatnonzero(keep)
    results.append(_batch_results([dets[i] for i in kept], index[kept], batch["ratios"][kept], batch["pads"][kept],
                                  batch["orig_shapes"][kept]))
    _sync(images.device)
    seen[index[keep]] = True
    orig_shapes[index[keep]] = batch["orig_shapes"].numpy()[keep]
    return time.perf_counter() - start
