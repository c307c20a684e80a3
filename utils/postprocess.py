"""Post-processing of the decoded head output: confidence filter and class-aware non-maximum suppression."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from utils.boxes import box_cxcywh_to_xyxy


def non_max_suppression(pred: Tensor, conf_thres: float = 0.001, iou_thres: float = 0.7, max_det: int = 300,
                        max_nms: int = 30000) -> list[Tensor]:
    """Detections per image from pred [B, 4 + nc, A] ((cx, cy, w, h) pixels, class scores after sigmoid).

    Each box keeps its best class; boxes scoring above conf_thres, at most max_nms best per image, go through
    class-aware NMS at iou_thres; the max_det best survivors are kept.
    Returns B tensors [n, 6]: x1, y1, x2, y2, score, class, by decreasing score.
    """
    if not (0 <= conf_thres <= 1 and 0 <= iou_thres <= 1):
        raise ValueError(f"conf_thres and iou_thres must lie in [0, 1], got {conf_thres} and {iou_thres}")
    pred = pred.transpose(1, 2)  # [B, A, 4 + nc]
    scores, labels = pred[..., 4:].max(-1)  # [B, A]
    scores = scores.nan_to_num(nan=-1.0)  # a diverged model's NaN scores sort last (topk ranks NaN first)
    scores, order = scores.topk(min(max_nms, scores.shape[1]), dim=1)  # [B, K], best first
    boxes = box_cxcywh_to_xyxy(pred[..., :4].gather(1, order.unsqueeze(-1).expand(-1, -1, 4)))  # [B, K, 4]
    labels = labels.gather(1, order)
    counts = (scores > conf_thres).sum(1).tolist()  # scores fall along K: the candidates are a prefix (one host sync)

    detections = []
    for image_boxes, image_scores, image_labels, n in zip(boxes, scores, labels, counts):
        image_boxes, image_scores, image_labels = image_boxes[:n], image_scores[:n], image_labels[:n]
        kept = batched_nms(image_boxes, image_scores, image_labels, iou_thres)[:max_det]
        detections.append(torch.cat((image_boxes[kept], image_scores[kept, None],
                                     image_labels[kept, None].to(image_boxes.dtype)), 1))
    return detections
