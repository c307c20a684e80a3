"""Task-aligned assigner (TOOD, Feng et al. 2021) as trained with YOLOv8: which anchors learn which ground truth.

Ground truths come as one flat list for the whole batch, gt i belonging to image gt_batch[i], instead of a padded
[B, max_gt] tensor: every quantity is a [M, A] (ground truth x anchor) tensor, and per-anchor decisions over the
ground truths of one image are scatter reductions into [B, A]. This needs neither the per-image maximum count (a host
sync) nor padding, and has no loop over images or targets.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from utils.boxes import bbox_ciou, box_cxcywh_to_xyxy, box_xyxy_to_cxcywh


def _reduce_per_image(values: Tensor, gt_batch: Tensor, batch_size: int, reduce: str, initial: float) -> Tensor:
    """Reduce [M, A] values over the ground truths of each image -> [B, A] (images without any get initial)."""
    out = values.new_full((batch_size, values.shape[1]), initial)
    index = gt_batch[:, None].expand_as(values)
    return out.scatter_reduce_(0, index, values, reduce=reduce, include_self=True)


class TaskAlignedAssigner(nn.Module):
    """Assign ground truths to anchors by the alignment metric score^alpha * CIoU^beta.

    An anchor is a candidate of a ground truth when its centre lies strictly inside the box (sides shorter than
    min_box_side are first widened to it about the centre, so tiny objects still get anchors); each ground truth takes
    its topk candidates by metric; an anchor claimed by several ground truths keeps the one it overlaps most. Target
    scores are the one-hot class times the metric normalised so that each ground truth's best anchor gets its best IoU.
    Same rule as Ultralytics 8.4's TaskAlignedAssigner (min_box_side = its stride_val = the second-finest stride,
    see DetectionLoss) when small_floor is 0.

    Small boxes (small_floor > 0): a ground truth with sqrt(w * h) < small_side ranks its candidates before every
    other anchor, so it keeps min(topk, candidates) positives even where no predicted box overlaps it, and each of
    them gets a target score of at least small_floor. Without this, a box much smaller than the predicted boxes
    (a fresh head predicts boxes 15 strides wide) has IoU ~1e-3 with all of them, a metric ~1e-19 that the 1e-9 of
    the normaliser wipes out, and so no box, DFL or class signal at all.
    """

    def __init__(self, topk: int = 10, num_classes: int = 1, alpha: float = 0.5, beta: float = 6.0,
                 eps: float = 1e-9, min_box_side: float = 16.0, small_side: float = 0.0, small_floor: float = 0.0):
        """Store the hyper-parameters; min_box_side and small_side are in pixels (the units of the boxes given to
        forward); small_floor in [0, 1], 0 = off."""
        super().__init__()
        if not 0.0 <= small_floor <= 1.0:
            raise ValueError(f"TaskAlignedAssigner: small_floor must be in [0, 1], got {small_floor}")
        self.topk = topk
        self.num_classes = num_classes
        self.alpha = alpha
        self.beta = beta
        self.eps = eps
        self.min_box_side = min_box_side
        self.small_side = small_side
        self.small_floor = small_floor

    @torch.no_grad()
    def forward(self, pd_scores: Tensor, pd_bboxes: Tensor, anchor_points: Tensor, gt_labels: Tensor,
                gt_bboxes: Tensor, gt_batch: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Assign targets to the anchors of a batch.

        Args: pd_scores [B, A, C] class probabilities; pd_bboxes [B, A, 4] predicted xyxy boxes; anchor_points [A, 2]
        (x, y); gt_labels [M] long class ids; gt_bboxes [M, 4] xyxy; gt_batch [M] long image index of each ground
        truth, >= B for padding rows (any valid class id and finite box), which take part in nothing: padding to a
        fixed M gives the loss the static shapes a CUDA graph needs. Boxes and anchor points in the same units.
        Returns (target_bboxes [B, A, 4] xyxy (zeros on background), target_scores [B, A, C], fg_mask [B, A] bool,
        target_gt_idx [B, A] long: index into the M rows, M on background).
        """
        batch_size, num_anchors, _ = pd_scores.shape
        num_gt = gt_bboxes.shape[0]
        gt_range = torch.arange(num_gt, device=gt_bboxes.device)
        real = gt_batch < batch_size  # [M]; padding rows are then parked on the last image, never a candidate
        gt_batch = gt_batch.clamp(max=batch_size - 1)

        in_gt = self._anchors_in_boxes(anchor_points, gt_bboxes) & real[:, None]  # [M, A]
        overlaps = bbox_ciou(gt_bboxes[:, None, :], pd_bboxes[gt_batch]).clamp(min=0)  # [M, A]
        overlaps = torch.where(in_gt, overlaps, 0.0)
        class_scores = pd_scores[gt_batch, :, gt_labels]  # [M, A]: score of each anchor for the gt's class
        align_metric = torch.where(in_gt, class_scores.pow(self.alpha) * overlaps.pow(self.beta), 0.0)

        # Each ground truth keeps its topk anchors by metric, among those inside it.
        topk = min(self.topk, num_anchors)
        rank = align_metric
        if self.small_floor > 0:  # a small box's candidates come first, zero metric or not (metric <= 1)
            wh = gt_bboxes[:, 2:] - gt_bboxes[:, :2]
            small = (wh[:, 0] * wh[:, 1] < self.small_side ** 2)[:, None] & in_gt  # [M, A]
            rank = torch.where(small, align_metric + 1.0, align_metric)
        topk_index = rank.topk(topk, dim=-1).indices
        in_topk = torch.zeros_like(in_gt).scatter_(-1, topk_index, True)
        mask_pos = in_topk & in_gt  # [M, A]

        # An anchor claimed by several ground truths goes to the first ground truth of its image it overlaps most
        # (among all where it is a candidate, not only the claimants).
        claims = _reduce_per_image(mask_pos.to(overlaps.dtype), gt_batch, batch_size, "sum", 0.0)  # [B, A]
        best_overlap = _reduce_per_image(overlaps, gt_batch, batch_size, "amax", 0.0)
        first_best = torch.where(overlaps == best_overlap[gt_batch], gt_range[:, None], num_gt)
        best_gt = _reduce_per_image(first_best, gt_batch, batch_size, "amin", num_gt)  # [B, A]
        is_best = best_gt[gt_batch] == gt_range[:, None]
        mask_pos = torch.where(claims[gt_batch] > 1, is_best, mask_pos)

        target_gt_idx = _reduce_per_image(torch.where(mask_pos, gt_range[:, None], num_gt), gt_batch, batch_size,
                                          "amin", num_gt)  # [B, A], num_gt on background
        fg_mask = target_gt_idx < num_gt

        # Normalise: per ground truth, metric * (its best positive IoU) / (its best positive metric).
        align_metric = align_metric * mask_pos
        best_metric = align_metric.amax(dim=-1, keepdim=True)  # [M, 1]
        best_iou = (overlaps * mask_pos).amax(dim=-1, keepdim=True)
        norm_metric = align_metric * best_iou / (best_metric + self.eps)
        if self.small_floor > 0:
            norm_metric = torch.where(small & mask_pos, norm_metric.clamp(min=self.small_floor), norm_metric)
        anchor_weight = _reduce_per_image(norm_metric, gt_batch, batch_size, "amax", 0.0) * fg_mask  # [B, A]

        padded_labels = torch.cat((gt_labels, gt_labels.new_zeros(1)))  # index num_gt = background
        padded_boxes = torch.cat((gt_bboxes, gt_bboxes.new_zeros(1, 4)))
        target_bboxes = padded_boxes[target_gt_idx]
        target_scores = pd_scores.new_zeros(batch_size, num_anchors, self.num_classes)
        target_scores.scatter_(-1, padded_labels[target_gt_idx].unsqueeze(-1), anchor_weight.unsqueeze(-1))
        return target_bboxes, target_scores, fg_mask, target_gt_idx

    def _anchors_in_boxes(self, anchor_points: Tensor, gt_bboxes: Tensor) -> Tensor:
        """[M, A] bool: anchor point strictly inside the xyxy box, sides widened to at least min_box_side."""
        cxcywh = box_xyxy_to_cxcywh(gt_bboxes)
        side = cxcywh[:, 2:]
        cxcywh = torch.cat((cxcywh[:, :2], torch.where(side < self.min_box_side, self.min_box_side, side)), -1)
        x1, y1, x2, y2 = box_cxcywh_to_xyxy(cxcywh)[:, :, None].unbind(1)  # each [M, 1]
        ax, ay = anchor_points.unbind(-1)  # each [A]
        return (ax - x1 > self.eps) & (ay - y1 > self.eps) & (x2 - ax > self.eps) & (y2 - ay > self.eps)
