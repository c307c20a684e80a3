"""non_max_suppression against Ultralytics' non_max_suppression (test-only oracle)."""
import pytest
import torch
from ultralytics.utils.nms import non_max_suppression as ul_non_max_suppression

from evaluation.postprocess import non_max_suppression


def make_prediction(batch: int, nc: int, num_boxes: int, seed: int) -> torch.Tensor:
    """[B, 4 + nc, A] (cx, cy, w, h, scores): boxes jittered around a few centres, so NMS has work; last image scores
    below 0.01 everywhere."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, 12, 2, generator=gen) * 560 + 40
    which = torch.randint(0, 12, (batch, num_boxes), generator=gen)
    xy = centres.gather(1, which[..., None].expand(-1, -1, 2)) + torch.randn(batch, num_boxes, 2, generator=gen) * 6
    wh = torch.rand(batch, num_boxes, 2, generator=gen) * 30 + 25
    scores = torch.rand(batch, num_boxes, nc, generator=gen) ** 2
    scores[-1] *= 0.01
    return torch.cat((xy, wh, scores), -1).transpose(1, 2).contiguous()


CASES = {
    "nc1_low_conf": dict(nc=1, num_boxes=300, conf_thres=0.001, iou_thres=0.7, max_det=300, max_nms=30000),
    "nc3_low_conf_many_boxes": dict(nc=3, num_boxes=2000, conf_thres=0.001, iou_thres=0.7, max_det=300,
                                    max_nms=30000),
    "nc3_conf_025": dict(nc=3, num_boxes=400, conf_thres=0.25, iou_thres=0.5, max_det=300, max_nms=30000),
    "nc3_max_det_5": dict(nc=3, num_boxes=400, conf_thres=0.001, iou_thres=0.7, max_det=5, max_nms=30000),
    "nc1_max_nms_40": dict(nc=1, num_boxes=400, conf_thres=0.001, iou_thres=0.6, max_det=300, max_nms=40),
}


@pytest.mark.parametrize("case", CASES)
def test_nms_equals_ultralytics(case):
    args = dict(CASES[case])
    pred = make_prediction(4, args.pop("nc"), args.pop("num_boxes"), seed=len(case))
    ours = non_max_suppression(pred, **args)
    theirs = ul_non_max_suppression(pred.clone(), **args)
    uncapped = non_max_suppression(pred, **{**args, "max_det": 10_000})

    assert len(ours) == len(theirs) == 4
    for image, (mine, their) in enumerate(zip(ours, theirs)):
        assert mine.shape == their.shape and mine.shape[1] == 6
        assert torch.equal(mine, their)  # same rows, same order (decreasing score)
        assert (mine[1:, 4] <= mine[:-1, 4]).all()
        assert len(mine) == min(args["max_det"], len(uncapped[image]))
    assert ours[-1].shape == (0, 6) if args["conf_thres"] >= 0.01 else len(ours[-1]) > 0
    assert all(len(mine) > 0 for mine in ours[:-1])
    if args["max_det"] == 5:
        assert all(len(full) > 5 for full in uncapped[:-1])  # truncation really happened
    assert sum(len(full) for full in uncapped) < sum(int((pred[:, 4:].amax(1) > args["conf_thres"]).sum(1)[i])
                                                     for i in range(4))  # boxes were suppressed


def test_nms_returns_empty_tensors_when_nothing_passes():
    pred = make_prediction(2, 2, 50, seed=0)
    pred[:, 4:] = 0.0
    out = non_max_suppression(pred, conf_thres=0.1)
    assert [o.shape for o in out] == [(0, 6), (0, 6)]


def test_nms_rejects_thresholds_outside_unit_interval():
    with pytest.raises(ValueError, match="conf_thres"):
        non_max_suppression(make_prediction(1, 1, 10, seed=0), conf_thres=1.5)


def test_nan_scores_are_never_detections():
    pred = torch.zeros(1, 5, 4)
    pred[0, :4] = torch.tensor([[10.0, 40.0, 70.0, 100.0], [10.0, 40.0, 70.0, 100.0], [8.0] * 4, [8.0] * 4])
    pred[0, 4] = torch.tensor([float("nan"), 0.9, 0.5, float("nan")])
    out = non_max_suppression(pred, conf_thres=0.25)[0]
    assert out[:, 4].tolist() == pytest.approx([0.9, 0.5])


@pytest.mark.parametrize("chunk", [1, 300, 2500])
def test_images_sharing_an_nms_call_give_each_image_alone(chunk):
    """However the images are grouped into torchvision nms calls (chunk = most candidates per call), each image's
    detections equal those of the image on its own."""
    pred = make_prediction(5, 3, 600, seed=7)
    grouped = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6, max_det=50, chunk=chunk)
    for image in range(5):
        alone = non_max_suppression(pred[image:image + 1], conf_thres=0.001, iou_thres=0.6, max_det=50)[0]
        assert torch.equal(grouped[image], alone)
    assert len(grouped) == 5 and all(len(g) == 50 for g in grouped[:-1])


@pytest.mark.parametrize("wild", [float("nan"), float("inf"), 1e20])
def test_wild_boxes_of_one_image_leave_the_others_alone(wild):
    """Non-finite or huge coordinates in image 0 do not change the NMS of the images sharing its call."""
    pred = make_prediction(3, 1, 200, seed=3)
    expected = non_max_suppression(pred[1:], conf_thres=0.001, chunk=10_000)
    pred[0, :4, :5] = wild
    pred[0, 0, 5] = -wild
    out = non_max_suppression(pred, conf_thres=0.001, chunk=10_000)
    assert all(torch.equal(a, b) for a, b in zip(out[1:], expected))
