"""Ready for more detection levels (a stride-4 P2 level) and more input channels (RGB + event fusion).

The head, loss, assigner, decoder and NMS take the strides as a parameter: here they run with four levels
(4, 8, 16, 32) on hand-made feature maps, against Ultralytics' yolov8-p2 where it has the same part. The network
takes in_channels: a 5-channel model trains, freezes and loads 3-channel weights (all but the stem conv).
"""
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from evaluation.evaluator import evaluate
from evaluation.postprocess import non_max_suppression
from nets import build_model, freeze_backbone, load_weights
from nets.loss import DetectionLoss, total_loss
from nets.yolov8 import REG_MAX, Detect
from evaluation.val_loss import raw_outputs

P2_STRIDES = (4, 8, 16, 32)
P2_CHANNELS = (32, 64, 128, 256)  # the widths yolov8n-p2 feeds its head
SHAPE = (64, 96)  # input (h, w), a multiple of the largest stride


def feature_maps(batch: int, seed: int, channels=P2_CHANNELS, strides=P2_STRIDES) -> list[torch.Tensor]:
    """Random feature maps [B, c, H/s, W/s], one per level."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, SHAPE[0] // s, SHAPE[1] // s, generator=g) for c, s in zip(channels, strides)]


def ultralytics_p2_head(nc: int) -> nn.Module:
    """The Detect head of Ultralytics' yolov8n-p2 (built from yaml, no download), strides 4, 8, 16, 32."""
    pytest.importorskip("ultralytics", reason="ultralytics is the test-only oracle: pip install ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel("yolov8n-p2.yaml", nc=nc, verbose=False)


def test_detect_head_with_four_levels_equals_ultralytics_p2_head():
    model = ultralytics_p2_head(2)
    theirs = model.model[-1].eval()
    assert theirs.stride.tolist() == list(P2_STRIDES)
    ours = Detect(2, P2_CHANNELS, P2_STRIDES)
    for i in range(4):  # the same Ultralytics initialisation, level by level
        torch.testing.assert_close(ours.cls[i][-1].bias, theirs.cv3[i][-1].bias, rtol=1e-6, atol=0)
    renamed = {k.replace("cv2.", "box.", 1).replace("cv3.", "cls.", 1): v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(renamed, strict=True)
    with torch.no_grad():
        for m in ours.modules():  # output biases spread, so that scores and boxes vary
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.normal_()
        theirs.load_state_dict({k.replace("box.", "cv2.", 1).replace("cls.", "cv3.", 1): v
                                for k, v in ours.state_dict().items()})
    feats = feature_maps(2, seed=1)

    with torch.no_grad():
        decoded, reference = ours.eval()(feats), theirs(feats)[0]
    assert decoded.shape == reference.shape == (2, 6, sum((SHAPE[0] // s) * (SHAPE[1] // s) for s in P2_STRIDES))
    assert reference[:, :4].std() > 1.0 and reference[:, 4:].std() > 1e-3  # not a degenerate comparison
    torch.testing.assert_close(decoded, reference, rtol=1e-4, atol=1e-3)
    maps = ours.train()(feats)
    assert [tuple(m.shape) for m in maps] == [(2, 4 * REG_MAX + 2, SHAPE[0] // s, SHAPE[1] // s) for s in P2_STRIDES]


def test_decode_and_nms_of_four_levels_give_boxes_in_input_pixels():
    """One confident cell per level, every side one DFL bin from its anchor: a box 2 strides wide around the cell."""
    nc = 1
    head = Detect(nc, P2_CHANNELS, P2_STRIDES).eval()
    cells = {4: (2, 3), 8: (1, 8), 16: (2, 1), 32: (1, 2)}  # stride -> (row, column) of the confident cell
    maps = []
    for rank, s in enumerate(P2_STRIDES):
        m = torch.zeros(1, 4 * REG_MAX + nc, SHAPE[0] // s, SHAPE[1] // s)
        m[:, 1:4 * REG_MAX:REG_MAX] = 50.0  # bin 1 of each side: a distance of one stride
        m[:, 4 * REG_MAX] = -20.0  # background everywhere ...
        m[0, 4 * REG_MAX, cells[s][0], cells[s][1]] = 4.0 - rank  # ... but one cell, decreasing score by level
        maps.append(m)
    detections = non_max_suppression(head.decode(maps), conf_thres=0.25, iou_thres=0.7)[0]

    expected = torch.tensor([[(col + 0.5) * s - s, (row + 0.5) * s - s, (col + 0.5) * s + s, (row + 0.5) * s + s]
                             for s, (row, col) in cells.items()])
    assert detections.shape == (4, 6)
    torch.testing.assert_close(detections[:, :4], expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(detections[:, 4], torch.sigmoid(torch.tensor([4.0, 3.0, 2.0, 1.0])))
    assert (detections[:, 5] == 0).all()


def test_detection_loss_with_four_levels_equals_ultralytics_p2_loss():
    pytest.importorskip("ultralytics")
    from ultralytics.utils import IterableSimpleNamespace
    from ultralytics.utils.loss import v8DetectionLoss

    nc, batch = 2, 3
    model = ultralytics_p2_head(nc)
    model.args = IterableSimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    oracle = v8DetectionLoss(model)
    criterion = DetectionLoss(nc, strides=P2_STRIDES)
    assert criterion.assigner.min_box_side == oracle.assigner.stride_val == 8  # tiny boxes: 2 x 2 P2 cells

    g = torch.Generator().manual_seed(2)
    wh = torch.cat((torch.rand(4, 2, generator=g) * 5 + 2, torch.rand(5, 2, generator=g) * 40 + 8))  # tiny + larger
    cxy = torch.rand(9, 2, generator=g) * (torch.tensor([SHAPE[1], SHAPE[0]]) - wh) + wh / 2
    targets = torch.cat((torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2.0])[:, None],
                         torch.randint(0, nc, (9, 1), generator=g).float(), cxy, wh), 1)
    preds = [torch.randn(batch, 4 * REG_MAX + nc, SHAPE[0] // s, SHAPE[1] // s, generator=g).requires_grad_()
             for s in P2_STRIDES]

    parts = criterion(preds, targets, SHAPE)
    ours = total_loss(parts, criterion.weight_dict, batch)
    ours_grads = torch.autograd.grad(ours, preds)
    boxes, scores = torch.cat([p.flatten(2) for p in preds], 2).split((4 * REG_MAX, nc), 1)
    their_batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2],
                   "bboxes": targets[:, 2:6] / torch.tensor([SHAPE[1], SHAPE[0]] * 2, dtype=torch.float32)}
    theirs, _ = oracle({"boxes": boxes, "scores": scores, "feats": preds}, their_batch)
    their_grads = torch.autograd.grad(theirs.sum(), preds)

    assert all(parts[k] > 0 for k in ("box", "cls", "dfl"))
    weighted = torch.stack([parts[k].detach() * criterion.weight_dict[k] * batch for k in ("box", "cls", "dfl")])
    torch.testing.assert_close(weighted, theirs.detach(), rtol=1e-4, atol=0)
    assert ours_grads[0][:, :4 * REG_MAX].abs().sum() > 0  # the P2 level's box logits learn (its tiny targets)
    for mine, their in zip(ours_grads, their_grads):
        torch.testing.assert_close(mine, their, rtol=1e-4, atol=1e-6)


def test_detect_rejects_strides_that_do_not_fit_its_levels():
    with pytest.raises(ValueError, match=r"4 input levels.*3 strides"):
        Detect(1, P2_CHANNELS)  # the default strides (8, 16, 32) are three
    with pytest.raises(ValueError, match="increase"):
        Detect(1, P2_CHANNELS, (8, 4, 16, 32))


def test_detection_loss_rejects_strides_out_of_order():
    with pytest.raises(ValueError, match="increase"):
        DetectionLoss(1, strides=(8, 4, 16, 32))


class FourLevelNet(nn.Module):
    """A stand-in for a P2 model: a 5-channel input, pooled to four levels by 1x1 convs, and a 4-level Detect head."""

    def __init__(self, in_channels: int = 5, num_classes: int = 1):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, c, 1) for c in P2_CHANNELS)
        self.head = Detect(num_classes, P2_CHANNELS, P2_STRIDES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """Average-pool x to strides 4..32, then the head."""
        return self.head([conv(nn.functional.avg_pool2d(x, s)) for conv, s in zip(self.convs, P2_STRIDES)])


def test_evaluate_scores_a_four_level_five_channel_model():
    """evaluate() with its loss: the raw maps of four levels are scored and decoded, NMS and COCO follow."""
    torch.manual_seed(0)
    model = FourLevelNet()
    frames = [SimpleNamespace(image=f"/d/{i}.png", sequence="0", boxes=np.array([[0, 0.3 + 0.1 * i, 0.5, 0.2, 0.3]],
                                                                                  np.float32)) for i in range(3)]
    images = torch.randint(0, 256, (3, 5, *SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([[i, 0, (0.3 + 0.1 * i) * SHAPE[1], 0.5 * SHAPE[0], 0.2 * SHAPE[1], 0.3 * SHAPE[0]]
                            for i in range(3)])
    batch = {"images": images, "targets": targets, "index": torch.arange(3), "orig_shapes": torch.tensor([SHAPE] * 3),
             "ratios": torch.ones(3), "pads": torch.zeros(3, 2)}
    criterion = DetectionLoss(1, strides=P2_STRIDES)

    result = evaluate(model, [batch], frames, "cpu", criterion=criterion)

    with torch.no_grad(), raw_outputs(model):
        parts = criterion(model(images.float() / 255), targets, SHAPE)
    assert result.loss["loss"] == pytest.approx(total_loss(parts, criterion.weight_dict, 1).item(), rel=1e-5)
    assert result.metrics["images"] == 3 and len(result.results) > 0
    with torch.no_grad():  # no letterbox here (ratio 1, no pad): the results are the NMS boxes, clipped, as x, y, w, h
        detections = non_max_suppression(model.eval()(images.float() / 255))
    xyxy = torch.cat(detections).double()[:, :4].clamp(min=0).minimum(torch.tensor([SHAPE[1], SHAPE[0]] * 2))
    expected = torch.cat((xyxy[:, :2], xyxy[:, 2:4] - xyxy[:, :2]), 1).numpy()
    np.testing.assert_allclose(result.results[:, 1:5], expected, atol=2e-3)


def test_five_channel_model_trains_and_freezes():
    model = build_model("n", 1, in_channels=5).train()
    criterion = DetectionLoss(1, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)
    images = torch.rand(2, 5, *SHAPE)
    targets = torch.tensor([[0, 0, 40.0, 30.0, 20.0, 16.0], [1, 0, 60.0, 20.0, 6.0, 5.0]])
    for frozen in (True, False):
        freeze_backbone(model, frozen)
        model.zero_grad(set_to_none=True)
        parts = criterion(model(images), targets, SHAPE)
        total_loss(parts, criterion.weight_dict, 2).backward()
        stem = model.backbone.stem.conv.weight
        assert stem.shape[1] == 5
        assert (stem.grad is None) == frozen and stem.requires_grad != frozen
        assert all(p.grad is not None for p in model.head.parameters() if p.requires_grad)
    with torch.no_grad():
        out = model.eval()(images)
    assert out.shape == (2, 5, sum((SHAPE[0] // s) * (SHAPE[1] // s) for s in (8, 16, 32)))


def test_three_channel_weights_load_into_a_five_channel_model_but_the_stem_conv(caplog):
    src = build_model("n", 1, in_channels=3)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01)  # different from any fresh initialisation
    dst = build_model("n", 1, in_channels=5)
    stem_before = dst.backbone.stem.conv.weight.clone()
    with caplog.at_level(logging.INFO, logger="nets.weights"):
        report = load_weights(dst, {"model": src.state_dict(), "phi": "n", "num_classes": 1, "in_channels": 3})
    stem = "backbone.stem.conv.weight"
    assert report["skipped_keys"] == report["missing_keys"] == [stem]
    assert report["loaded"] == report["total"] - 1
    assert "skipped 1 (input channels: 1)" in caplog.text
    assert torch.equal(dst.backbone.stem.conv.weight, stem_before)
    source = src.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in dst.state_dict().items() if k != stem)
