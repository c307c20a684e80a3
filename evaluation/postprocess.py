"""Post-processing of the decoded head output: confidence filter and class-aware non-maximum suppression."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

from utils.boxes import box_cxcywh_to_xyxy

NMS_CHUNK = 16384  # CUDA: most candidate boxes in one torchvision nms call (its overlap mask takes N^2 / 8 bytes)
NMS_COORD_LIMIT = 1e5  # coordinates are clamped to +/- this for the per-image/class shift (a wild box stays local)
MAX_NMS = 30000  # most candidate boxes per image (the best-scoring), as Ultralytics


def non_max_suppression(pred: Tensor, conf_thres: float = 0.001, iou_thres: float = 0.7, max_det: int = 300,
                        max_nms: int = MAX_NMS, chunk: int | None = None) -> list[Tensor]:
    """Detections per image from pred [B, 4 + nc, A] ((cx, cy, w, h) pixels, class scores after sigmoid).

    Each box keeps its best class; boxes scoring above conf_thres, at most max_nms best per image, go through
    class-aware NMS at iou_thres; the max_det best survivors are kept. Whole images share one torchvision nms call
    (boxes shifted apart per image and class) while their candidates number at most `chunk` (default: NMS_CHUNK on
    CUDA, where one call per image costs a host sync each; one image per call on the CPU, where larger calls cost
    more). Rows of equal score may come in another order than with one call per image.
    Returns B tensors [n, 6]: x1, y1, x2, y2, score, class, by decreasing score.
    """
    if not (0 <= conf_thres <= 1 and 0 <= iou_thres <= 1):
        raise ValueError(f"conf_thres and iou_thres must lie in [0, 1], got {conf_thres} and {iou_thres}")
    nc = pred.shape[1] - 4
    pred = pred.transpose(1, 2)  # [B, A, 4 + nc]
    scores, labels = pred[..., 4:].max(-1)  # [B, A]
    scores = scores.nan_to_num(nan=-1.0)  # a diverged model's NaN scores sort last (topk ranks NaN first)
    scores, order = scores.topk(min(max_nms, scores.shape[1]), dim=1)  # [B, K], best first
    boxes = box_cxcywh_to_xyxy(pred[..., :4].gather(1, order.unsqueeze(-1).expand(-1, -1, 4)))  # [B, K, 4]
    labels = labels.gather(1, order)
    counts = (scores > conf_thres).sum(1).tolist()  # scores fall along K: the candidates are a prefix (one host sync)

    detections = []
    if chunk is None:
        chunk = NMS_CHUNK if pred.is_cuda else 0
    for first, last in _image_chunks(counts, chunk):
        n = counts[first:last]
        keep = torch.arange(scores.shape[1], device=scores.device) < torch.tensor(n, device=scores.device)[:, None]
        image = torch.arange(first, last, device=scores.device)[:, None].expand_as(keep)[keep]  # [N]
        b, s, c = boxes[first:last][keep], scores[first:last][keep], labels[first:last][keep]
        kept = _nms_by_group(b, s, image * nc + c, iou_thres)  # by decreasing score
        kept = kept[torch.sort(image[kept], stable=True).indices]  # grouped by image, each by decreasing score
        per_image = torch.bincount(image[kept] - first, minlength=last - first)
        rank = torch.arange(len(kept), device=kept.device) - (per_image.cumsum(0) - per_image)[image[kept] - first]
        kept = kept[rank < max_det]
        rows = torch.cat((b[kept], s[kept, None], c[kept, None].to(b.dtype)), 1)
        detections.extend(rows.split(per_image.clamp(max=max_det).tolist()))
    return detections


def _image_chunks(counts: list[int], chunk: int) -> list[tuple[int, int]]:
    """Consecutive image ranges [first, last) whose candidate counts sum to at most chunk (or one image each)."""
    ranges, first, total = [], 0, 0
    for i, n in enumerate(counts):
        if i > first and total + n > chunk:
            ranges.append((first, i))
            first, total = i, 0
        total += n
    ranges.append((first, len(counts)))
    return ranges


def _nms_by_group(boxes_xyxy: Tensor, scores: Tensor, group: Tensor, iou_thres: float) -> Tensor:
    """torchvision nms within each group id (image * nc + class): boxes [N, 4], scores [N], group [N] -> kept
    indices by decreasing score. Groups are shifted apart in float64, so IoUs keep float32 boxes' precision."""
    if len(boxes_xyxy) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes_xyxy.device)
    boxes = boxes_xyxy.double().clamp(-NMS_COORD_LIMIT, NMS_COORD_LIMIT)  # NaN stays NaN: only its own IoUs fail
    finite = boxes.nan_to_num(nan=0.0)  # a diverged model's boxes do not spoil the shift
    span = finite.max() - finite.min() + 1.0  # no box of one group reaches into the next group's range
    return nms(boxes + (group.double() * span)[:, None], scores.double(), iou_thres)
