"""YOLOv8 detection loss: task-aligned assignment, CIoU box loss, distribution focal loss (DFL), BCE classification.

Numerically the loss of Ultralytics' v8DetectionLoss (tests/test_loss.py compares part by part, gradients included),
computed without host syncs or loops over images: the box and DFL terms are summed over all anchors with the
(zero on background) target-score weight instead of gathering the foreground with a boolean mask, and the targets
stay one flat list (see nets/assigner.py) instead of a tensor padded to the per-image maximum count.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nets.assigner import TaskAlignedAssigner
from utils.boxes import bbox2dist, bbox_ciou, box_cxcywh_to_xyxy, dist2bbox, make_anchors

LOSS_PARTS = ("box", "cls", "dfl")  # names of the loss parts, in the order they are stacked
# Assignment rules (config ASSIGNER): "tal" = Ultralytics' task-aligned assigner; "tal-small" = the same, except that
# a ground truth smaller than SMALL_SIDE_STRIDES finest strides (sqrt(w * h), 32 px for YOLOv8) makes all its
# candidate anchors positives with a target score of at least SMALL_FLOOR (see TaskAlignedAssigner).
ASSIGNERS = ("tal", "tal-small")
SMALL_SIDE_STRIDES = 4.0
SMALL_FLOOR = 0.5


def distribution_focal_loss(pred_dist: Tensor, target: Tensor) -> Tensor:
    """DFL (Li et al. 2020) of logits pred_dist [..., 4, reg_max] for distances target [..., 4] -> [...].

    Cross-entropy towards the two bins around each target distance, weighted by proximity, averaged over 4 sides.
    """
    reg_max = pred_dist.shape[-1]
    target = target.clamp(0, reg_max - 1 - 0.01)
    left = target.long()
    weight_left = left + 1 - target
    log_prob = F.log_softmax(pred_dist, dim=-1)
    log_prob_left = log_prob.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    log_prob_right = log_prob.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    return -(log_prob_left * weight_left + log_prob_right * (1 - weight_left)).mean(-1)


def pad_targets(targets: Tensor, rows: int, batch_size: int) -> Tensor:
    """targets [M, 6] -> [rows, 6] (rows >= M): padding rows (batch_idx = batch_size, class 0, a unit box) that
    DetectionLoss ignores; a fixed row count gives the loss static shapes (CUDA graphs)."""
    pad = targets.new_ones(rows - targets.shape[0], 6)  # filled on the device: no host-to-device copy
    pad[:, 0] = batch_size
    pad[:, 1] = 0
    return torch.cat((targets, pad))


def total_loss(parts: dict[str, Tensor], weight_dict: dict[str, float], batch_size: int) -> Tensor:
    """Loss to back-propagate: sum of weight_dict[k] * parts[k], times batch_size (Ultralytics' scale)."""
    return sum(weight * parts[name] for name, weight in weight_dict.items()) * batch_size


class DetectionLoss:
    """YOLOv8 loss for num_classes classes on feature levels of the given strides with reg_max DFL bins.

    Any number of levels, finest first: (8, 16, 32) for YOLOv8, (4, 8, 16, 32) for a model with a P2 level.
    """

    def __init__(self, num_classes: int, strides: Sequence[float] = (8, 16, 32), reg_max: int = 16,
                 tal_topk: int = 10, box_gain: float = 7.5, cls_gain: float = 0.5, dfl_gain: float = 1.5,
                 assigner: str = "tal"):
        """Build the assigner (one of ASSIGNERS); the gains go to self.weight_dict (see total_loss)."""
        if assigner not in ASSIGNERS:
            raise ValueError(f"DetectionLoss: assigner must be one of {', '.join(map(repr, ASSIGNERS))}, got "
                             f"{assigner!r}")
        self.num_classes = num_classes
        self.strides = tuple(float(s) for s in strides)
        if not self.strides or self.strides[0] <= 0 or any(b <= a for a, b in zip(self.strides, self.strides[1:])):
            raise ValueError(f"DetectionLoss: strides {self.strides} must be positive and increase from the finest "
                             "level (the order of the head's maps)")
        self.reg_max = reg_max
        self.weight_dict = {"box": box_gain, "cls": cls_gain, "dfl": dfl_gain}
        # Ground-truth sides below the second-finest stride are widened to it when choosing candidate anchors, so a
        # tiny object gets about 2 x 2 cells of the finest level: 16 px for (8, 16, 32), 8 px for (4, 8, 16, 32).
        # Ultralytics' rule (its stride_val) for any number of levels; one level uses its own stride.
        min_box_side = self.strides[1] if len(self.strides) > 1 else self.strides[0]
        small = assigner == "tal-small"
        self.assigner = TaskAlignedAssigner(topk=tal_topk, num_classes=num_classes, alpha=0.5, beta=6.0,
                                            min_box_side=min_box_side,
                                            small_side=SMALL_SIDE_STRIDES * self.strides[0] if small else 0.0,
                                            small_floor=SMALL_FLOOR if small else 0.0)

    def __call__(self, preds: list[Tensor], targets: Tensor, input_shape: tuple[int, int]) -> dict[str, Tensor]:
        """Unweighted loss parts {"box", "cls", "dfl"} (0-d float32 tensors), each normalised by the target-score sum.

        preds: per level [B, 4 * reg_max + num_classes, H_i, W_i] raw head outputs (any float dtype; computed in
        float32 with autocast off). targets: [M, 6] (batch_idx, cls, cx, cy, w, h) in input pixels, M may be 0; rows
        with batch_idx >= B are padding (pad_targets) and change nothing.
        input_shape: (h, w) of the network input, checked against the feature-map sizes.
        """
        self._check_shapes(preds, input_shape)
        with torch.autocast(device_type=preds[0].device.type, enabled=False):
            return self._loss(preds, targets.float())

    def _check_shapes(self, preds: list[Tensor], input_shape: tuple[int, int]) -> None:
        """Raise ValueError unless preds has one map per stride, with channels and sizes that fit input_shape."""
        channels = 4 * self.reg_max + self.num_classes
        expected = [(math.ceil(input_shape[0] / s), math.ceil(input_shape[1] / s)) for s in self.strides]
        found = [tuple(p.shape[-2:]) for p in preds]
        if found != expected or any(p.shape[1] != channels for p in preds):
            raise ValueError(f"DetectionLoss(num_classes={self.num_classes}, strides={self.strides}, "
                             f"reg_max={self.reg_max}) expects maps of {channels} channels and sizes {expected} for "
                             f"input {tuple(input_shape)}, got {[tuple(p.shape[1:]) for p in preds]}: check the "
                             f"model's num_classes and the input shape passed to the loss.")

    def _loss(self, preds: list[Tensor], targets: Tensor) -> dict[str, Tensor]:
        """Loss parts for preds of any float dtype and float32 targets (see __call__), in float32."""
        # One float32 copy of the maps, cast after concatenating them (no per-level float32 copies beside it).
        pred_dist, pred_logits = torch.cat([p.flatten(2) for p in preds], 2).float().split(
            (4 * self.reg_max, self.num_classes), 1)
        pred_dist = pred_dist.transpose(1, 2).unflatten(2, (4, self.reg_max))  # [B, A, 4, reg_max], a view
        # Its own copy: the BCE saves it for backward, and a view would keep all of the concatenated maps alive.
        pred_logits = pred_logits.transpose(1, 2).contiguous()  # [B, A, C]
        anchor_points, stride_tensor = make_anchors([p[:1, :1].detach().float() for p in preds], self.strides, 0.5)

        bins = torch.arange(self.reg_max, dtype=pred_dist.dtype, device=pred_dist.device)
        with torch.no_grad():  # every anchor's box, for the assigner only
            pred_bboxes = dist2bbox(pred_dist.softmax(-1).matmul(bins), anchor_points, xywh=False)  # [B, A, 4] xyxy

        target_bboxes, target_scores, _, _ = self.assigner(
            pred_logits.detach().sigmoid(),
            pred_bboxes * stride_tensor,
            anchor_points * stride_tensor,
            targets[:, 1].long(),
            box_cxcywh_to_xyxy(targets[:, 2:6]),
            targets[:, 0].long(),
        )
        target_scores_sum = target_scores.sum().clamp(min=1)

        cls = F.binary_cross_entropy_with_logits(pred_logits, target_scores, reduction="sum") / target_scores_sum

        # The box and DFL terms weigh each anchor by its target score, zero on background: compute them on the
        # foreground only. Each ground-truth row has at most topk positives, so its anchors fit in rows * topk slots
        # taken by weight (a fixed count: static shapes; slots left over weigh 0). The weighted terms go back to
        # their anchors' places before summing, so the sum does not depend on the slot count (padding rows).
        anchor_weight = target_scores.sum(-1).flatten()  # [B * A]
        slots = min(targets.shape[0] * self.assigner.topk, anchor_weight.numel())
        weight, index = anchor_weight.topk(slots)  # [S], indices into B * A
        image, anchor = index // anchor_points.shape[0], index % anchor_points.shape[0]
        dist = pred_dist[image, anchor]  # [S, 4, reg_max], gathered from the view (no copy of every anchor's)
        points = anchor_points[anchor]  # [S, 2]
        boxes = dist2bbox(dist.softmax(-1).matmul(bins), points, xywh=False)  # [S, 4] xyxy, grid units
        target_boxes = target_bboxes[image, anchor] / stride_tensor[anchor]
        target_ltrb = bbox2dist(points, target_boxes, self.reg_max)
        terms = torch.stack(((1 - bbox_ciou(boxes, target_boxes)) * weight,
                             distribution_focal_loss(dist, target_ltrb) * weight), 1)  # [S, 2] box, DFL
        per_anchor = terms.new_zeros(anchor_weight.numel(), 2).index_put((index,), terms)  # [B * A, 2]
        box, dfl = per_anchor.sum(0) / target_scores_sum
        return {"box": box, "cls": cls, "dfl": dfl}


def weighted_parts(parts: dict, weights: dict) -> torch.Tensor:
    """Stack weight * part for box, cls, dfl: tensor [3]; its sum is the per-image loss."""
    return torch.stack([parts[k].float() * weights[k] for k in LOSS_PARTS])
