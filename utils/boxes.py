"""Box formats, Complete IoU and the anchor-point geometry of the YOLOv8 head.

Formats are named in the function names: xyxy = (x1, y1, x2, y2) corners, cxcywh = (centre x, centre y, width,
height). Anchor points and distances are in grid units of their level (pixels / stride) unless the caller scales them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_convert


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert [..., 4] (cx, cy, w, h) boxes to [..., 4] (x1, y1, x2, y2)."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert [..., 4] (x1, y1, x2, y2) boxes to [..., 4] (cx, cy, w, h)."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def bbox_ciou(box1_xyxy: Tensor, box2_xyxy: Tensor, eps: float = 1e-7) -> Tensor:
    """Elementwise Complete IoU (Zheng et al. 2020) of broadcastable [..., 4] xyxy boxes -> [...].

    CIoU = IoU - centre_distance^2 / enclosing_diagonal^2 - alpha * v, where v measures the aspect-ratio mismatch and
    the trade-off alpha is treated as a constant in backward. eps is added to heights, union and diagonal.
    """
    ax1, ay1, ax2, ay2 = box1_xyxy.unbind(-1)
    bx1, by1, bx2, by2 = box2_xyxy.unbind(-1)
    aw, ah = ax2 - ax1, ay2 - ay1 + eps
    bw, bh = bx2 - bx1, by2 - by1 + eps

    overlap_w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    overlap_h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = overlap_w * overlap_h
    union = aw * ah + bw * bh - inter + eps
    iou = inter / union

    enclose_w = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    enclose_h = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    diagonal_sq = enclose_w.square() + enclose_h.square() + eps
    centre_dist_sq = ((bx1 + bx2 - ax1 - ax2).square() + (by1 + by2 - ay1 - ay2).square()) / 4

    v = (4 / math.pi**2) * (torch.atan(bw / bh) - torch.atan(aw / ah)).square()
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - (centre_dist_sq / diagonal_sq + alpha * v)


def make_anchors(feats: Sequence[Tensor], strides: Sequence[float] | Tensor,
                 offset: float = 0.5) -> tuple[Tensor, Tensor]:
    """Anchor points of every cell of the feature maps feats[i] [B, C, H_i, W_i], level by level, row-major.

    Returns (anchor_points [A, 2] (x, y) in grid units of their level, stride_tensor [A, 1]), A = sum(H_i * W_i);
    pixel positions are anchor_points * stride_tensor. dtype and device follow feats[0]. No host sync or host-to-device
    copy: strides given as numbers (or a CPU tensor) are filled in, a tensor on the feature device is indexed.
    """
    dtype, device = feats[0].dtype, feats[0].device
    strides_on_device = isinstance(strides, Tensor) and strides.device == device
    points, level_strides = [], []
    for i, feat in enumerate(feats):
        h, w = feat.shape[-2:]
        xs = torch.arange(w, dtype=dtype, device=device) + offset
        ys = torch.arange(h, dtype=dtype, device=device) + offset
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 2))
        if strides_on_device:
            level_strides.append(strides[i].to(dtype).expand(h * w, 1))
        else:
            level_strides.append(torch.full((h * w, 1), float(strides[i]), dtype=dtype, device=device))
    return torch.cat(points), torch.cat(level_strides)


def dist2bbox(distance: Tensor, anchor_points: Tensor, xywh: bool = True, dim: int = -1) -> Tensor:
    """Boxes from (left, top, right, bottom) distances to anchor points (4 and 2 entries along dim, broadcastable).

    Returns cxcywh boxes if xywh else xyxy, in the units of the inputs, with 4 entries along dim.
    """
    left_top, right_bottom = distance.chunk(2, dim)
    top_left_corner = anchor_points - left_top
    bottom_right_corner = anchor_points + right_bottom
    if xywh:
        centre = (top_left_corner + bottom_right_corner) / 2
        return torch.cat((centre, bottom_right_corner - top_left_corner), dim)
    return torch.cat((top_left_corner, bottom_right_corner), dim)


def bbox2dist(anchor_points: Tensor, bbox_xyxy: Tensor, reg_max: int | None = None) -> Tensor:
    """(left, top, right, bottom) distances [..., 4] from anchor points [..., 2] to the sides of xyxy boxes [..., 4].

    With reg_max (the number of DFL bins, 16 for YOLOv8) distances are clamped to [0, reg_max - 1 - 0.01], so that
    the two bins around each distance exist.
    """
    top_left, bottom_right = bbox_xyxy.chunk(2, -1)
    distance = torch.cat((anchor_points - top_left, bottom_right - anchor_points), -1)
    if reg_max is not None:
        distance = distance.clamp(0, reg_max - 1 - 0.01)
    return distance
