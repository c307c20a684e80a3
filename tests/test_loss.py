"""Loss, assigner and box utilities against Ultralytics' v8DetectionLoss / TaskAlignedAssigner (test-only oracle)."""
import pytest
import torch
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import IterableSimpleNamespace
from ultralytics.utils import tal as ul_tal
from ultralytics.utils.loss import v8DetectionLoss
from ultralytics.utils.metrics import bbox_iou as ul_bbox_iou

import build_fred
from bench.bench_memory import LiveBytes, SavedTensors
from nets import build_model
from nets.assigner import TaskAlignedAssigner
from nets.loss import DetectionLoss, pad_targets, total_loss
from utils.boxes import bbox2dist, bbox_ciou, box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, dist2bbox, make_anchors

STRIDES = (8, 16, 32)
REG_MAX = 16
PARTS = ("box", "cls", "dfl")


def make_preds(batch: int, nc: int, shape: tuple[int, int], seed: int) -> list[torch.Tensor]:
    """Random raw head outputs [B, 4*16+nc, H/s, W/s] for the three levels, as leaves that require grad."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 4 * REG_MAX + nc, shape[0] // s, shape[1] // s, generator=gen).requires_grad_()
            for s in STRIDES]


def make_targets(counts: list[int], nc: int, shape: tuple[int, int], seed: int) -> torch.Tensor:
    """[M, 6] (batch_idx, cls, cx, cy, w, h) pixel targets inside the image, sorted by image; some boxes overlap."""
    gen = torch.Generator().manual_seed(seed)
    h, w = shape
    rows = []
    for image, n in enumerate(counts):
        wh = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.5, h * 0.5]) + 3
        top_left = torch.rand(n, 2, generator=gen) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat((top_left + wh / 2, wh), 1)
        if n > 3:  # near-duplicates: anchors claimed by several ground truths
            boxes[n // 2:n // 2 + 2] = boxes[:2] + torch.rand(2, 4, generator=gen)
        cls = torch.randint(0, nc, (n, 1), generator=gen).float()
        rows.append(torch.cat((torch.full((n, 1), float(image)), cls, boxes), 1))
    return torch.cat(rows) if rows else torch.zeros(0, 6)


_ORACLES = {}


def ultralytics_criterion(nc: int) -> v8DetectionLoss:
    """Ultralytics' loss of a yolov8n DetectionModel built from yaml (no download), gains 7.5 / 0.5 / 1.5."""
    if nc not in _ORACLES:
        model = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
        model.args = IterableSimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
        _ORACLES[nc] = v8DetectionLoss(model)
    return _ORACLES[nc]


def ultralytics_loss(preds: list[torch.Tensor], targets: torch.Tensor, nc: int, shape) -> torch.Tensor:
    """Ultralytics' [3] loss (box, cls, dfl) * gains * batch size for our inputs (their boxes are normalised)."""
    boxes, scores = torch.cat([p.flatten(2) for p in preds], 2).split((4 * REG_MAX, nc), 1)
    h, w = shape
    batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2],
             "bboxes": targets[:, 2:6] / torch.tensor([w, h, w, h], dtype=torch.float32)}
    loss, _ = ultralytics_criterion(nc)({"boxes": boxes, "scores": scores, "feats": preds}, batch)
    return loss


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a - b| relative to the largest magnitude of b (0 when both are all zero)."""
    scale = max(b.abs().max().item(), a.abs().max().item())
    return 0.0 if scale == 0 else ((a - b).abs().max() / scale).item()


CASES = {
    "nc1_mixed": (1, [2, 0, 5, 1], (128, 160)),
    "nc3_mixed": (3, [3, 0, 8, 1], (128, 160)),
    "nc3_all_empty": (3, [0, 0, 0], (128, 160)),
    "nc1_many": (1, [20, 20, 0], (160, 128)),
    "nc3_many": (3, [20, 1, 20], (128, 160)),
}


@pytest.mark.parametrize("case", CASES)
def test_loss_and_gradients_equal_ultralytics(case):
    nc, counts, shape = CASES[case]
    preds = make_preds(len(counts), nc, shape, seed=len(case))
    targets = make_targets(counts, nc, shape, seed=nc)
    criterion = DetectionLoss(nc)

    parts = criterion(preds, targets, shape)
    ours_total = total_loss(parts, criterion.weight_dict, len(counts))
    ours_grads = torch.autograd.grad(ours_total, preds)
    theirs = ultralytics_loss(preds, targets, nc, shape)
    their_grads = torch.autograd.grad(theirs.sum(), preds)

    for i, name in enumerate(PARTS):
        assert parts[name].shape == () and parts[name].dtype == torch.float32
        ours_weighted = parts[name].detach() * criterion.weight_dict[name] * len(counts)
        assert rel_diff(ours_weighted, theirs[i].detach()) <= 1e-4, (name, ours_weighted, theirs[i])
    for ours_grad, their_grad in zip(ours_grads, their_grads):
        assert rel_diff(ours_grad, their_grad) <= 1e-4
    if sum(counts):
        assert parts["box"] > 0 and parts["dfl"] > 0
    else:
        assert parts["box"] == 0 and parts["dfl"] == 0 and parts["cls"] > 0


def test_loss_does_not_depend_on_target_order():
    nc, counts, shape = CASES["nc3_mixed"]
    preds = make_preds(len(counts), nc, shape, seed=3)
    targets = make_targets(counts, nc, shape, seed=4)
    criterion = DetectionLoss(nc)
    sorted_parts = criterion(preds, targets, shape)
    shuffled_parts = criterion(preds, targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))],
                               shape)
    for name in PARTS:
        assert rel_diff(shuffled_parts[name], sorted_parts[name]) <= 1e-5


@pytest.mark.parametrize("assigner", ["tal", "tal-small"])
@pytest.mark.parametrize("case", ["nc3_mixed", "nc1_last_image_empty"])
def test_padding_rows_change_nothing(case, assigner):
    """Targets padded to a fixed row count (CUDA graphs) give the same parts and gradients, exactly; padding rows sit
    on the last image, so one without targets checks that they never become its ground truth (their unit boxes
    would be small boxes to "tal-small")."""
    nc, counts, shape = {"nc1_last_image_empty": (1, [2, 5, 0], (96, 128))}.get(case) or CASES[case]
    targets = make_targets(counts, nc, shape, seed=11)
    criterion = DetectionLoss(nc, assigner=assigner)
    results = []
    for rows in (len(targets), len(targets) + 1, 4 * len(targets) + 16):
        preds = make_preds(len(counts), nc, shape, seed=11)
        parts = criterion(preds, pad_targets(targets, rows, len(counts)), shape)
        total_loss(parts, criterion.weight_dict, len(counts)).backward()
        results.append(([parts[k].detach() for k in PARTS], [p.grad for p in preds]))
    (ref_parts, ref_grads), *padded = results
    assert ref_parts[0] > 0 and all(torch.isfinite(v) for v in ref_parts)
    for parts, grads in padded:
        for a, b in zip(parts + grads, ref_parts + ref_grads):
            assert torch.equal(a, b)


def test_assigner_ignores_padding_rows():
    """Rows with batch index >= B are no anchor's target and leave the real assignment as it was, even when their
    boxes are real objects' boxes (padding sits on the last image, here one without targets)."""
    nc, counts, shape = 1, [3, 0], (96, 128)
    targets = make_targets(counts, nc, shape, seed=2)
    preds = make_preds(len(counts), nc, shape, seed=2)
    padding = targets.clone()
    padding[:, 0] = len(counts)
    criterion = DetectionLoss(nc)
    outs, parts = [], []
    for t in (targets, torch.cat((targets, padding))):
        seen = {}
        hook = criterion.assigner.register_forward_hook(lambda m, args, out: seen.update(out=out))
        parts.append(criterion(preds, t, shape))
        hook.remove()
        outs.append(seen["out"])
    (boxes, scores, fg, gt_idx), (boxes_p, scores_p, fg_p, gt_idx_p) = outs
    assert fg.any() and not fg[1].any()
    assert torch.equal(boxes, boxes_p) and torch.equal(scores, scores_p) and torch.equal(fg, fg_p)
    assert torch.equal(torch.where(fg, gt_idx, -1), torch.where(fg_p, gt_idx_p, -1)) and (gt_idx_p[~fg_p] == 6).all()
    assert all(torch.equal(parts[0][k], parts[1][k]) for k in PARTS)


def test_batch_of_64_images_equals_ultralytics():
    nc, shape = 1, (128, 160)
    counts = torch.randint(0, 7, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    preds = make_preds(64, nc, shape, seed=64)
    targets = make_targets(counts, nc, shape, seed=64)
    criterion = DetectionLoss(nc)
    parts = criterion(preds, targets, shape)
    total_loss(parts, criterion.weight_dict, 64).backward()
    theirs = ultralytics_loss(preds, targets, nc, shape)
    for i, name in enumerate(PARTS):
        assert rel_diff(parts[name].detach() * criterion.weight_dict[name] * 64, theirs[i].detach()) <= 1e-4
    assert all(torch.isfinite(p.grad).all() for p in preds)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loss_under_autocast_is_float32_inside(dtype):
    nc, counts, shape = CASES["nc3_mixed"]
    preds = make_preds(len(counts), nc, shape, seed=7)
    targets = make_targets(counts, nc, shape, seed=7)
    criterion = DetectionLoss(nc)
    low = [p.detach().to(dtype).requires_grad_() for p in preds]
    with torch.autocast("cpu", dtype=dtype):
        parts = criterion(low, targets, shape)
        total_loss(parts, criterion.weight_dict, len(counts)).backward()
    upcast = criterion([p.detach().float() for p in low], targets, shape)  # same inputs, no autocast
    full = criterion(preds, targets, shape)
    for name in PARTS:
        assert parts[name].dtype == torch.float32 and torch.isfinite(parts[name])
        assert rel_diff(parts[name].detach(), upcast[name].detach()) <= 1e-6
        assert rel_diff(parts[name].detach(), full[name].detach()) <= 3e-2
    assert all(p.grad.dtype == dtype and torch.isfinite(p.grad.float()).all() for p in low)


def _half_preds_and_flat_bytes(batch: int, nc: int, shape: tuple[int, int]) -> tuple[list[torch.Tensor], int]:
    """fp16 channels_last head maps (as the model gives them under AMP on CUDA), leaves that require grad, and the
    bytes of one float32 copy of all of them ([B, 4 * reg_max + nc, A])."""
    preds = [p.detach().half().contiguous(memory_format=torch.channels_last).requires_grad_()
             for p in make_preds(batch, nc, shape, seed=5)]
    return preds, sum(p.numel() for p in preds) * 4


def test_loss_saves_no_copy_of_every_anchors_outputs_for_backward():
    """Issue 21: backward needs the class logits and the foreground slots' DFL logits, not a float32 copy of all
    4 * reg_max + nc outputs of every anchor (the concatenated maps, which a view of the logits kept alive)."""
    nc, shape, batch = 1, (256, 256), 2
    preds, flat_bytes = _half_preds_and_flat_bytes(batch, nc, shape)
    targets = pad_targets(make_targets([1, 1], nc, shape, seed=0), 4, batch)
    with SavedTensors(exclude=tuple(preds)) as saved:
        parts = DetectionLoss(nc)(preds, targets, shape)
    total_loss(parts, DetectionLoss(nc).weight_dict, batch).backward()
    assert parts["box"] > 0 and all(torch.isfinite(p.grad.float()).all() for p in preds)
    assert 0 < saved.total < flat_bytes / 8, (saved.total, flat_bytes)


def test_loss_holds_one_float32_copy_of_the_maps():
    """Issue 21: low-precision maps are cast to float32 once, after their concatenation: at no point does the loss
    hold the per-level float32 copies beside the concatenated one, nor a copy of every anchor's DFL logits to pick
    the foreground's (no target rows: only the maps' copies and the no-grad decode of every anchor's box count)."""
    nc, shape, batch = 1, (256, 256), 2
    preds, flat_bytes = _half_preds_and_flat_bytes(batch, nc, shape)
    targets = torch.zeros(0, 6)
    live = LiveBytes()
    with live:
        parts = DetectionLoss(nc)(preds, targets, shape)
    assert parts["cls"] > 0
    assert flat_bytes <= live.peak < 2.3 * flat_bytes, (live.peak, flat_bytes)


def test_loss_rejects_maps_that_do_not_fit():
    preds = make_preds(2, 3, (128, 160), seed=0)
    targets = make_targets([1, 1], 3, (128, 160), seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        DetectionLoss(1)(preds, targets, (128, 160))
    with pytest.raises(ValueError, match="input"):
        DetectionLoss(3)(preds, targets, (160, 160))


def test_total_loss_is_weighted_sum_times_batch():
    parts = {"box": torch.tensor(2.0), "cls": torch.tensor(3.0), "dfl": torch.tensor(5.0)}
    assert total_loss(parts, DetectionLoss(1).weight_dict, 4).item() == pytest.approx((7.5 * 2 + 0.5 * 3 + 1.5 * 5) * 4)


def test_assigner_equals_ultralytics():
    gen = torch.Generator().manual_seed(0)
    nc, shape, batch = 3, (128, 160), 4
    feats = [torch.zeros(batch, 1, shape[0] // s, shape[1] // s) for s in STRIDES]
    anchor_points, stride_tensor = make_anchors(feats, STRIDES)
    anchors_px = anchor_points * stride_tensor
    num_anchors = len(anchors_px)

    counts = [5, 0, 8, 2]
    targets = make_targets(counts, nc, shape, seed=1)
    targets[::4, 4:6] = torch.rand(len(targets[::4]), 2, generator=gen) * 10 + 2  # tiny boxes: widened to 16 px
    targets[8, 2:] = targets[7, 2:]  # a duplicate box (image 2): equal overlaps, the tie goes to the first
    targets[8, 1] = (targets[7, 1] + 1) % nc
    gt_boxes = box_cxcywh_to_xyxy(targets[:, 2:6])
    gt_batch, gt_labels = targets[:, 0].long(), targets[:, 1].long()

    # Predictions: boxes of random size centred on their anchors, so overlaps vary and compete.
    wh = torch.rand(batch, num_anchors, 2, generator=gen) * 60 + 8
    pd_boxes = torch.cat((anchors_px - wh / 2, anchors_px + wh / 2), -1)
    pd_scores = torch.rand(batch, num_anchors, nc, generator=gen)

    max_gt = max(counts)
    padded_boxes = torch.zeros(batch, max_gt, 4)
    padded_labels = torch.zeros(batch, max_gt, 1)
    slot = torch.cat([torch.arange(n) for n in counts])
    padded_boxes[gt_batch, slot] = gt_boxes
    padded_labels[gt_batch, slot, 0] = gt_labels.float()
    padded_mask = (padded_boxes.sum(-1, keepdim=True) > 0).float()

    oracle = ul_tal.TaskAlignedAssigner(topk=10, num_classes=nc, alpha=0.5, beta=6.0, stride=list(STRIDES))
    _, their_boxes, their_scores, their_fg, their_idx = oracle(pd_scores, pd_boxes, anchors_px, padded_labels,
                                                                padded_boxes, padded_mask)
    claims = oracle.get_pos_mask(pd_scores, pd_boxes, padded_labels, padded_boxes, anchors_px, padded_mask)[0].sum(-2)
    assert claims.max() > 1  # the highest-overlap resolution is exercised

    assigner = TaskAlignedAssigner(topk=10, num_classes=nc, alpha=0.5, beta=6.0, min_box_side=16.0)
    boxes, scores, fg, idx = assigner(pd_scores, pd_boxes, anchors_px, gt_labels, gt_boxes, gt_batch)

    assert torch.equal(fg, their_fg)
    assert fg.sum() > 20
    assert rel_diff(scores, their_scores) <= 1e-6
    assert torch.equal(boxes[fg], their_boxes[fg]) and torch.equal(boxes[~fg], torch.zeros_like(boxes[~fg]))
    first_of_image = torch.tensor([0] + counts[:-1]).cumsum(0)
    assert torch.equal(idx[fg], (their_idx + first_of_image[:, None])[fg])
    assert (idx[~fg] == len(targets)).all()


def test_assigner_without_ground_truths():
    assigner = TaskAlignedAssigner(num_classes=2)
    anchors = torch.rand(50, 2) * 100
    boxes, scores, fg, idx = assigner(torch.rand(3, 50, 2), torch.rand(3, 50, 4) * 100, anchors,
                                      torch.zeros(0, dtype=torch.long), torch.zeros(0, 4),
                                      torch.zeros(0, dtype=torch.long))
    assert not fg.any() and (scores == 0).all() and (boxes == 0).all() and (idx == 0).all()


SMALL_SHAPE = (128, 160)
TINY_TARGETS = torch.tensor([[0, 0, 100.3, 60.7, 6.0, 5.0], [1, 0, 40.2, 90.1, 4.0, 7.0], [1, 0, 131.0, 30.0, 9.0, 6.0]])


def fresh_head_preds(box_bin: int | None) -> list[torch.Tensor]:
    """Raw head maps for SMALL_SHAPE with a low class logit (score ~3e-4) and, per side, all DFL bins equal (a fresh
    head: boxes 15 strides wide, none overlapping a tiny box by more than ~0.2% IoU) or all mass on box_bin (0: point
    boxes that overlap nothing)."""
    preds = []
    for s in STRIDES:
        p = torch.zeros(2, 4 * REG_MAX + 1, SMALL_SHAPE[0] // s, SMALL_SHAPE[1] // s)
        p[:, -1] = -8.0
        if box_bin is not None:
            p[:, :4 * REG_MAX].view(2, 4, REG_MAX, *p.shape[-2:])[:, :, box_bin] = 30.0
        preds.append(p.requires_grad_())
    return preds


def assign(criterion: DetectionLoss, preds: list[torch.Tensor], targets: torch.Tensor) -> tuple:
    """(loss parts, the assigner's (boxes, scores, fg, gt_idx)) of one call of criterion."""
    seen = {}
    hook = criterion.assigner.register_forward_hook(lambda m, args, out: seen.update(out=out))
    parts = criterion(preds, targets, SMALL_SHAPE)
    hook.remove()
    return parts, seen["out"]


@pytest.mark.parametrize("box_bin", [None, 0], ids=["fresh_head", "no_overlap"])
def test_tal_small_gives_tiny_ground_truths_a_signal(box_bin):
    """Tiny boxes (4-9 px) that no predicted box overlaps usefully: "tal" gives them no target score (the metric
    score^0.5 * IoU^6 is 0, or ~1e-19 and lost to the normaliser's 1e-9), so neither box nor class loss sees them;
    "tal-small" makes each of their candidate anchors a positive with at least its floor of target score, and the
    box loss then has a gradient."""
    results = {}
    for name in ("tal", "tal-small"):
        preds = fresh_head_preds(box_bin)
        criterion = DetectionLoss(1, assigner=name)
        parts, (_, scores, fg, gt_idx) = assign(criterion, preds, TINY_TARGETS)
        (parts["box"] + parts["dfl"]).backward()
        results[name] = (parts, scores, fg, gt_idx, sum(p.grad.abs().sum() for p in preds), criterion.assigner)
    parts, scores, _, _, grad, _ = results["tal"]
    assert scores.max() < 1e-9 and parts["box"] < 1e-9 and grad < 1e-9
    parts, scores, fg, gt_idx, grad, assigner = results["tal-small"]
    assert assigner.small_floor > 0
    for i in range(len(TINY_TARGETS)):
        mine = fg & (gt_idx == i)
        assert mine.any(), f"ground truth {i} has no positive"
        assert (scores[mine].sum(-1) >= assigner.small_floor).all()
    assert parts["box"] > 0.5 and grad > 1e-3


def test_tal_small_equals_tal_without_small_boxes():
    """Every box at least 4 finest strides across: "tal-small" gives the same parts and gradients as "tal"."""
    nc, counts, shape = 3, [4, 0, 6, 2], (256, 320)
    targets = make_targets(counts, nc, shape, seed=5)
    targets[:, 4:6] = targets[:, 4:6].clamp(min=40)
    results = []
    for name in ("tal", "tal-small"):
        preds = make_preds(len(counts), nc, shape, seed=5)
        parts = DetectionLoss(nc, assigner=name)(preds, targets, shape)
        total_loss(parts, DetectionLoss(nc).weight_dict, len(counts)).backward()
        results.append([parts[k].detach() for k in PARTS] + [p.grad for p in preds])
    assert results[0][0] > 0
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_loss_rejects_an_unknown_assigner():
    with pytest.raises(ValueError, match="'tal', 'tal-small'"):
        DetectionLoss(1, assigner="atss")


def test_build_criterion_passes_the_assigner():
    model = build_model("n", 1)
    for name, floor in (("tal", 0.0), ("tal-small", None)):
        assigner = build_fred.build_criterion({"NUM_CLASSES": 1, "ASSIGNER": name}, model).assigner
        assert assigner.small_floor == floor if floor is not None else assigner.small_floor > 0


def test_box_utilities_equal_ultralytics():
    gen = torch.Generator().manual_seed(0)
    feats = [torch.zeros(2, 1, 16, 20), torch.zeros(2, 1, 8, 10), torch.zeros(2, 1, 4, 5)]
    their_anchors = ul_tal.make_anchors(feats, torch.tensor(STRIDES, dtype=torch.float32))
    for ours, theirs in zip(make_anchors(feats, STRIDES), their_anchors):
        assert torch.equal(ours, theirs)
    anchors, stride_tensor = make_anchors(feats, torch.tensor([8.0, 16.0, 32.0]))
    assert anchors.shape == (420, 2) and stride_tensor.shape == (420, 1)
    assert torch.equal(anchors[20], torch.tensor([0.5, 1.5])) and stride_tensor[-1].item() == 32

    distance = torch.rand(3, 420, 4, generator=gen) * 10
    for xywh in (True, False):
        assert torch.equal(dist2bbox(distance, anchors, xywh=xywh), ul_tal.dist2bbox(distance, anchors, xywh=xywh))
    boxes = dist2bbox(distance, anchors, xywh=False)
    assert torch.allclose(bbox2dist(anchors, boxes), distance, atol=1e-5)
    assert torch.equal(bbox2dist(anchors, boxes, REG_MAX), ul_tal.bbox2dist(anchors, boxes, REG_MAX - 1))
    assert torch.allclose(box_xyxy_to_cxcywh(boxes), dist2bbox(distance, anchors, xywh=True), atol=1e-5)
    assert torch.allclose(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes, atol=1e-5)

    other = boxes + torch.randn(boxes.shape, generator=gen) * 3
    ciou = bbox_ciou(boxes, other)
    assert ciou.shape == (3, 420)
    assert torch.allclose(ciou, ul_bbox_iou(boxes, other, xywh=False, CIoU=True).squeeze(-1), rtol=1e-6, atol=1e-7)
    assert torch.allclose(bbox_ciou(boxes, boxes), torch.ones(3, 420), atol=1e-5)
