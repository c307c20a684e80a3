"""The evaluator: metrics equal pycocotools', hand-computed AP, and the letterbox round trip inside evaluate()."""
import contextlib
import copy
import io
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.fred_dataset import FredDataset, collate_fred
from datasets.fred_index import build_fred_index
from evaluation import coco_arrays, evaluator
from evaluation.evaluator import coco_ground_truth, coco_metrics, evaluate, fitness, per_sequence_metrics
from tools.synthetic import generate_fred
from utils.letterbox import boxes_xyxy_original_to_letterbox, letterbox

STATS = {"mAP50_95": 0, "mAP50": 1, "mAP75": 2, "AP_small": 3, "AP_medium": 4, "AP_large": 5, "AR100": 8}


def reference_eval(gt: dict, detections: list[dict]) -> COCOeval:
    """COCOeval(bbox) computed straight from pycocotools on private copies (evaluated, accumulated, summarised)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


def reference_stats(gt: dict, detections: list[dict]) -> np.ndarray:
    """COCOeval(bbox).stats straight from pycocotools."""
    return reference_eval(gt, detections).stats


def make_gt(boxes_per_image: list[list[tuple]], size=(720, 1280), num_classes: int = 1) -> dict:
    """COCO dataset from per-image lists of (cls, x, y, w, h) pixel boxes."""
    images = [{"id": i, "file_name": f"{i}.png", "width": size[1], "height": size[0]}
              for i in range(len(boxes_per_image))]
    anns = []
    for i, boxes in enumerate(boxes_per_image):
        for c, x, y, w, h in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c + 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(num_classes)]}


def random_case(seed: int, num_classes: int = 2):
    """GT of assorted sizes (some images empty) and noisy detections with false positives."""
    rng = np.random.default_rng(seed)
    per_image = []
    for i in range(30):
        n = 0 if i % 7 == 0 else int(rng.integers(1, 4))
        boxes = []
        for _ in range(n):
            w, h = (float(v) for v in rng.choice([12.0, 50.0, 150.0]) * rng.uniform(0.7, 1.3, 2))
            x, y = float(rng.uniform(0, 1280 - w)), float(rng.uniform(0, 720 - h))
            boxes.append((int(rng.integers(num_classes)), x, y, w, h))
        per_image.append(boxes)
    gt = make_gt(per_image, num_classes=num_classes)
    dets = []
    for i, boxes in enumerate(per_image):
        for c, x, y, w, h in boxes:
            if rng.random() < 0.85:
                j = rng.normal(0, 0.08, 4) * [w, h, w, h]
                dets.append({"image_id": i, "category_id": c + 1,
                             "bbox": [x + j[0], y + j[1], w * (1 + j[2] / w), h * (1 + j[3] / h)],
                             "score": float(rng.uniform(0.2, 1.0))})
        for _ in range(int(rng.integers(0, 5))):
            w, h = (float(v) for v in rng.uniform(8, 200, 2))
            dets.append({"image_id": i, "category_id": int(rng.integers(num_classes)) + 1,
                         "bbox": [float(rng.uniform(0, 1000)), float(rng.uniform(0, 500)), w, h],
                         "score": float(rng.uniform(0.0, 0.9))})
    return gt, dets


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_equal_pycocotools(seed):
    gt, dets = random_case(seed)
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    metrics = coco_metrics(gt, dets)
    stats = reference_stats(gt, dets)
    assert 0.05 < stats[0] < 0.95  # a case that is neither trivial nor empty
    for key, i in STATS.items():
        assert abs(metrics[key] - stats[i]) <= 1e-9, key
    assert metrics["fitness"] == pytest.approx(0.1 * stats[1] + 0.9 * stats[0], abs=1e-12)
    assert gt == gt_before and dets == dets_before  # pycocotools wrote into copies, not into our dicts


def crowded_case(seed: int, num_classes: int = 2) -> tuple[dict, list[dict]]:
    """random_case plus what stresses COCOeval's matching: 150 false positives with tied scores on every other
    image (true positives pushed past the 100th place), near-duplicate detections, crowd boxes, overlapping boxes."""
    gt, dets = random_case(seed, num_classes)
    rng = np.random.default_rng(seed)
    for i in range(0, 30, 2):
        dets += [{"image_id": i, "category_id": 1, "bbox": [float(v) for v in rng.uniform(0, 600, 4)],
                  "score": round(float(rng.uniform(0.3, 1.0)), 1)} for _ in range(150)]
    for a in gt["annotations"][:25]:
        x, y, w, h = a["bbox"]
        for _ in range(3):
            j = rng.normal(0, 0.15, 4)
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                         "bbox": [x + j[0] * w, y + j[1] * h, w * (1 + j[2]), h * (1 + j[3])],
                         "score": round(float(rng.uniform(0, 1)), 2)})
    for a in gt["annotations"][::4]:
        a["iscrowd"] = 1
    for a in list(gt["annotations"][1:12]):  # a second box shifted by a fifth of the first: both match some dets
        x, y, w, h = a["bbox"]
        gt["annotations"].append({**a, "id": 1000 + a["id"], "bbox": [x + 0.2 * w, y, w, h], "iscrowd": 0})
    rng.shuffle(dets)
    return gt, dets


@pytest.mark.parametrize("seed", range(6))
def test_coco_eval_equals_pycocotools_exactly(seed):
    """coco_eval's vectorized matching and accumulation give plain pycocotools' precision, recall and stats bit for
    bit, from results dicts and from the equivalent [N, 7] rows, on crowded, tied, crowd and overlapping cases."""
    gt, dets = crowded_case(seed, num_classes=1 + seed % 3)
    ref = reference_eval(gt, dets)
    assert 0.005 < ref.stats[0] < 0.95  # neither trivial nor empty
    rows = coco_arrays.results_dicts_to_array(dets)
    for detections in (dets, rows):
        metrics, precision = evaluator.coco_eval(gt, detections)
        assert np.array_equal(precision, ref.eval["precision"])
        for key, i in STATS.items():
            assert metrics[key] == ref.stats[i], key
    matches = coco_arrays.match_results(gt, rows)
    cats = [c["id"] for c in gt["categories"]]
    precision, recall = coco_arrays.accumulate(matches, [im["id"] for im in gt["images"]], cats)
    assert np.array_equal(recall, ref.eval["recall"])
    assert np.array_equal(coco_arrays.summarize(precision, recall), ref.stats)
    assert len(matches.score) < len(dets)  # beyond 100 per image and category: dropped, as COCOeval ignores them
    # a subset of the images (per-sequence metrics) equals pycocotools with params.imgIds set to it
    ids = [im["id"] for im in gt["images"]][::3]
    with contextlib.redirect_stdout(io.StringIO()):
        sub = COCOeval(ref.cocoGt, ref.cocoDt, "bbox")
        sub.params.imgIds = ids
        sub.evaluate()
        sub.accumulate()
    assert np.array_equal(coco_arrays.accumulate(matches, ids, cats)[0], sub.eval["precision"])


def test_coco_eval_matching_can_fail():
    """The equality above is not vacuous: moving the detections by 10% of their width changes the precision."""
    gt, dets = crowded_case(0)
    ref = reference_eval(gt, dets)
    moved = [dict(d, bbox=[d["bbox"][0] + 0.1 * d["bbox"][2], *d["bbox"][1:]]) for d in dets]
    assert not np.array_equal(evaluator.coco_eval(gt, moved)[1], ref.eval["precision"])
    assert np.array_equal(evaluator.coco_eval(gt, moved)[1], reference_eval(gt, moved).eval["precision"])


def test_results_rows_and_dicts_round_trip():
    _, dets = random_case(4)
    rows = coco_arrays.results_dicts_to_array(dets)
    assert rows.shape == (len(dets), 7) and rows.dtype == np.float64
    assert coco_arrays.results_array_to_dicts(rows) == dets
    gt = make_gt([[(0, 10.0, 10.0, 40.0, 40.0)]])
    with pytest.raises(ValueError, match="image ids"):
        coco_arrays.match_results(gt, np.array([[5, 10.0, 10.0, 40.0, 40.0, 0.9, 1]]))


def test_perfect_detections_score_one():
    gt, _ = random_case(3)
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9}
            for a in gt["annotations"]]
    metrics = coco_metrics(gt, dets)
    for key in STATS:
        assert metrics[key] == pytest.approx(1.0, abs=1e-12), key
    assert metrics["fitness"] == pytest.approx(1.0)


def test_hand_computed_iou_072():
    """One GT 100x100, one detection 100x72 inside it: IoU = 7200 / 10000 = 0.72.

    It matches at IoU thresholds 0.50, 0.55, 0.60, 0.65, 0.70 (precision 1 at every recall point: AP 1)
    and misses at 0.75 ... 0.95 (AP 0): mAP50:95 = 5 / 10 = 0.5, mAP50 = 1, mAP75 = 0.
    """
    gt = make_gt([[(0, 200.0, 100.0, 100.0, 100.0)]])
    dets = [{"image_id": 0, "category_id": 1, "bbox": [200.0, 100.0, 100.0, 72.0], "score": 0.5}]
    m = coco_metrics(gt, dets)
    assert m["mAP50"] == pytest.approx(1.0, abs=1e-12)
    assert m["mAP50_95"] == pytest.approx(0.5, abs=1e-12)
    assert m["mAP75"] == pytest.approx(0.0, abs=1e-12)
    assert m["AR100"] == pytest.approx(0.5, abs=1e-12)  # recall 1 at 5 of 10 thresholds
    assert m["fitness"] == pytest.approx(0.1 * 1.0 + 0.9 * 0.5)


def test_hand_computed_precision_envelope():
    """3 GT, detections by score: TP, FP, TP, TP.

    recall 1/3, 1/3, 2/3, 1 and precision 1, 1/2, 2/3, 3/4; COCO's interpolated precision (max to the right) is
    1 for recall <= 1/3 (thresholds 0.00..0.33: 34 points) and 3/4 for the other 67 of 101 points:
    AP = (34 * 1 + 67 * 0.75) / 101. Every TP is exact, so the same holds at every IoU threshold.
    """
    gt = make_gt([[(0, 10.0, 10.0, 40.0, 40.0), (0, 300.0, 300.0, 60.0, 30.0)], [(0, 500.0, 200.0, 80.0, 80.0)]])
    dets = [{"image_id": 0, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 40.0], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [900.0, 600.0, 50.0, 50.0], "score": 0.8},
            {"image_id": 0, "category_id": 1, "bbox": [300.0, 300.0, 60.0, 30.0], "score": 0.7},
            {"image_id": 1, "category_id": 1, "bbox": [500.0, 200.0, 80.0, 80.0], "score": 0.6}]
    m = coco_metrics(gt, dets)
    expected = (34 * 1.0 + 67 * 0.75) / 101
    assert m["mAP50"] == pytest.approx(expected, abs=1e-12)
    assert m["mAP50_95"] == pytest.approx(expected, abs=1e-12)


def test_no_detections_and_images_without_gt():
    gt = make_gt([[(0, 10.0, 10.0, 40.0, 40.0)], [], []])
    m = coco_metrics(gt, [])
    assert m["mAP50"] == 0.0 and m["mAP50_95"] == 0.0 and m["AR100"] == 0.0 and m["fitness"] == 0.0
    assert m["AP_large"] == -1.0  # pycocotools' "undefined": no large GT box
    # a false positive on an image without GT costs precision
    hit = {"image_id": 0, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 40.0], "score": 0.5}
    fp = {"image_id": 2, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 40.0], "score": 0.9}
    assert coco_metrics(gt, [hit])["mAP50"] == pytest.approx(1.0)
    m = coco_metrics(gt, [hit, fp])
    assert m["mAP50"] == pytest.approx(reference_stats(gt, [hit, fp])[1], abs=1e-12)
    assert m["mAP50"] < 0.6
    assert fitness({"mAP50": -1.0, "mAP50_95": -1.0}) == 0.0


def test_coco_ground_truth(tmp_path):
    root = str(tmp_path)
    frames = [SimpleNamespace(image=os.path.join(root, "12", "Event", "Frames", "Video_12_33333.png"), sequence="12",
                              boxes=np.array([[0, 0.5, 0.25, 0.1, 0.2]], np.float32)),
              SimpleNamespace(image=os.path.join(root, "12", "Event", "Frames", "Video_12_66666.png"), sequence="12",
                              boxes=np.zeros((0, 5), np.float32)),
              SimpleNamespace(image=os.path.join(root, "3", "Event", "Frames", "Video_3_33333.png"), sequence="3",
                              boxes=np.array([[0, 0.5, 0.5, 0.5, 0.5]], np.float32))]
    gt = coco_ground_truth(frames, [(720, 1280), (720, 1280), None], ["drone"], data_root=root)
    assert [im["id"] for im in gt["images"]] == [0, 1]
    assert gt["images"][0] == {"id": 0, "file_name": "12/Event/Frames/Video_12_33333.png", "width": 1280, "height": 720}
    (ann,) = gt["annotations"]
    assert ann["image_id"] == 0 and ann["category_id"] == 1 and ann["iscrowd"] == 0 and ann["id"] == 1
    np.testing.assert_allclose(ann["bbox"], [576.0, 108.0, 128.0, 144.0], atol=1e-3)
    assert ann["area"] == pytest.approx(128.0 * 144.0, rel=1e-5)
    assert gt["categories"] == [{"id": 1, "name": "drone"}]
    assert coco_ground_truth(frames, [(720, 1280)] * 3, ["drone"])["images"][2]["file_name"] == frames[2].image


def test_per_sequence_metrics_worst_first():
    frames = [SimpleNamespace(sequence=s) for s in ["5", "5", "9", "9", "9", "7"]]
    gt = make_gt([[(0, 10.0, 10.0, 40.0, 40.0)], [(0, 100.0, 10.0, 40.0, 30.0)], [(0, 10.0, 10.0, 40.0, 40.0)],
                  [(0, 600.0, 300.0, 80.0, 90.0)], [], []])
    dets = [{"image_id": 0, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 40.0], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [100.0, 10.0, 40.0, 30.0], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 28.0], "score": 0.8},  # IoU 0.7
            {"image_id": 4, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 40.0], "score": 0.3}]
    rows = per_sequence_metrics(gt, dets, frames)
    assert [r[0] for r in rows] == ["9", "5", "7"]
    assert [r[3] for r in rows] == [3, 2, 1]
    assert rows[1][1:3] == (pytest.approx(1.0), pytest.approx(1.0))
    assert rows[2][1:3] == (-1.0, -1.0)  # no GT box in sequence 7: undefined, listed last
    # sequence 9 equals pycocotools on that sequence alone
    sub = {"images": [im for im in gt["images"] if im["id"] in (2, 3, 4)],
           "annotations": [a for a in gt["annotations"] if a["image_id"] in (2, 3, 4)], "categories": gt["categories"]}
    stats = reference_stats(sub, [d for d in dets if d["image_id"] in (2, 3, 4)])
    assert rows[0][1] == pytest.approx(stats[1], abs=1e-12) and rows[0][2] == pytest.approx(stats[0], abs=1e-12)
    assert 0 < rows[0][2] < rows[0][1] < 1


# ------------------------------------------------------------------ evaluate(): letterbox round trip


class TargetEcho(torch.nn.Module):
    """Model stub: 'detects' exactly the boxes it is handed (letterbox cx, cy, w, h input pixels), score 0.9."""

    def __init__(self, num_classes: int = 1, anchors: int = 8):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.num_classes, self.anchors = num_classes, anchors
        self.targets = torch.zeros(0, 6)  # batch_idx, cls, cx, cy, w, h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 4 + self.num_classes, self.anchors)
        out[:, 2:4] = 1.0  # unused anchors: tiny boxes with score 0
        slot = [0] * x.shape[0]
        for b, c, cx, cy, w, h in self.targets.tolist():
            b = int(b)
            out[b, :4, slot[b]] = torch.tensor([cx, cy, w, h])
            out[b, 4 + int(c), slot[b]] = 0.9
            slot[b] += 1
        return out


def letterbox_loader(frames, shapes, input_shape, batch_size, model):
    """A collate_fred-shaped loader built on utils.letterbox; hands each batch's targets to the stub model."""
    items = []
    for i, (frame, (h, w)) in enumerate(zip(frames, shapes)):
        img = np.zeros((h, w, 3), np.uint8)
        lb, ratio, pad = letterbox(img, input_shape)
        b = frame.boxes
        xyxy = np.stack([(b[:, 1] - b[:, 3] / 2) * w, (b[:, 2] - b[:, 4] / 2) * h,
                         (b[:, 1] + b[:, 3] / 2) * w, (b[:, 2] + b[:, 4] / 2) * h], 1)
        xyxy = boxes_xyxy_original_to_letterbox(xyxy, ratio, pad)
        cxcywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
        items.append((torch.from_numpy(lb).permute(2, 0, 1), np.concatenate([b[:, :1], cxcywh], 1), i, (h, w),
                      ratio, pad))
    for s in range(0, len(items), batch_size):
        chunk = items[s:s + batch_size]
        targets = [np.concatenate([np.full((len(t), 1), k), t], 1) for k, (_, t, *_rest) in enumerate(chunk)]
        model.targets = torch.from_numpy(np.concatenate(targets)).float()
        yield {"images": torch.stack([c[0] for c in chunk]),
               "targets": model.targets.clone(),
               "index": torch.tensor([c[2] for c in chunk]),
               "orig_shapes": torch.tensor([c[3] for c in chunk]),
               "ratios": torch.tensor([c[4] for c in chunk], dtype=torch.float32),
               "pads": torch.tensor([c[5] for c in chunk], dtype=torch.float32)}


@pytest.mark.parametrize("shape", [(96, 160), (160, 96), (75, 203)])
def test_evaluate_letterbox_round_trip(shape):
    rng = np.random.default_rng(shape[0])
    frames = []
    for i in range(7):
        n = 0 if i == 3 else int(rng.integers(1, 3))
        wh = rng.uniform(0.05, 0.4, (n, 2))
        c = rng.uniform(wh / 2, 1 - wh / 2)
        frames.append(SimpleNamespace(image=f"/data/{i}.png", sequence=str(i % 2),
                                      boxes=np.concatenate([np.zeros((n, 1)), c, wh], 1).astype(np.float32)))
    model = TargetEcho()
    loader = letterbox_loader(frames, [shape] * len(frames), (64, 64), 3, model)
    result = evaluate(model, loader, frames, "cpu", conf_thres=0.001, iou_thres=0.7, max_det=300)
    assert result.metrics["mAP50_95"] == pytest.approx(1.0, abs=1e-9)
    assert result.metrics["mAP50"] == pytest.approx(1.0, abs=1e-9)
    assert result.metrics["images"] == len(frames)
    assert result.metrics["ms_per_image"] > 0
    assert len(result.detections) == sum(len(f.boxes) for f in frames)
    by_image = {}
    for d in result.detections:
        by_image.setdefault(d["image_id"], []).append(d["bbox"])
    for a in result.ground_truth["annotations"]:  # original pixels, to the rounding of the results (3 decimals)
        assert min(np.abs(np.array(b) - a["bbox"]).max() for b in by_image[a["image_id"]]) < 2e-3
    first = result.ground_truth["images"][0]
    assert (first["height"], first["width"]) == shape
    assert result.precision.shape[:2] == (10, 101)
    assert model.training  # evaluate() restores the mode it found


def test_evaluate_wrong_mapping_is_caught():
    """The round trip test can fail: a loader lying about the pads moves every box and mAP drops."""
    frames = [SimpleNamespace(image=f"/d/{i}.png", sequence="0", boxes=np.array([[0, 0.5, 0.5, 0.1, 0.1]], np.float32))
              for i in range(2)]
    model = TargetEcho()

    def shifted():
        for batch in letterbox_loader(frames, [(96, 160)] * 2, (64, 64), 2, model):
            batch["pads"] = batch["pads"].flip(1)  # pad_w <-> pad_h
            yield batch

    assert evaluate(model, shifted(), frames, "cpu").metrics["mAP50"] < 0.5


def test_evaluate_duplicate_and_missing_frames():
    """A frame returned twice (a bad image replaced by another) counts once; a frame never returned is left out."""
    frames = [SimpleNamespace(image=f"/d/{i}.png", sequence="0", boxes=np.array([[0, 0.4, 0.5, 0.2, 0.3]], np.float32))
              for i in range(4)]
    model = TargetEcho()

    def loader():
        batches = list(letterbox_loader(frames, [(96, 160)] * 4, (64, 64), 2, model))
        for batch in batches + [batches[0]]:  # batch 0 comes again; frame 3 (last of batch 1) never comes
            keep = batch["index"] != 3
            model.targets = batch["targets"][keep[batch["targets"][:, 0].long()]]
            yield {k: v if k == "targets" else v[keep] for k, v in batch.items()}

    result = evaluate(model, loader(), frames, "cpu")
    assert result.metrics["images"] == 3
    assert [im["id"] for im in result.ground_truth["images"]] == [0, 1, 2]
    assert len(result.detections) == 3
    assert result.metrics["mAP50_95"] == pytest.approx(1.0)


def test_evaluate_with_fred_dataset(tmp_path):
    """FredDataset (validation samples) + collate_fred + evaluate: GT boxes in, GT boxes out (non-square frames)."""
    generate_fred(str(tmp_path / "fred"), sequences=4, frames=6, seed=1, size=(96, 160))
    index = build_fred_index(str(tmp_path / "fred"), "event", cache_dir=str(tmp_path / "cache"))
    frames = index.val
    assert sum(len(f.boxes) for f in frames) > 0
    dataset = FredDataset(frames, (64, 64))
    model = TargetEcho()

    def loader():
        for batch in torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate_fred):
            model.targets = batch["targets"]
            yield batch

    result = evaluate(model, loader(), frames, "cpu", data_root=str(tmp_path / "fred"))
    assert result.metrics["images"] == len(frames)
    assert result.metrics["mAP50_95"] == pytest.approx(1.0, abs=1e-6)
    assert result.ground_truth["images"][0]["width"] == 160 and result.ground_truth["images"][0]["height"] == 96
    assert not os.path.isabs(result.ground_truth["images"][0]["file_name"])
    assert cv2.imread(os.path.join(tmp_path / "fred", result.ground_truth["images"][0]["file_name"])) is not None


class ContentEcho(TargetEcho):
    """Model stub: for each image, the boxes registered for its content (uint8 pixel sum), so that it answers to the
    images it is actually given, whichever batch's labels were seen last."""

    def __init__(self):
        super().__init__(anchors=16)
        self.by_content: dict[int, list] = {}

    def register(self, batch: dict) -> None:
        """Remember each image's target rows (cls, cx, cy, w, h) under its pixel sum."""
        for b, image in enumerate(batch["images"]):
            rows = batch["targets"][batch["targets"][:, 0] == b, 1:].tolist()
            assert self.by_content.setdefault(int(image.sum()), rows) == rows, "two images with one pixel sum"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 4 + self.num_classes, self.anchors)
        out[:, 2:4] = 1.0
        for b, total in enumerate((x.double() * 255).round().sum((1, 2, 3)).long().tolist()):
            for k, (c, cx, cy, w, h) in enumerate(self.by_content[total]):
                out[b, :4, k] = torch.tensor([cx, cy, w, h])
                out[b, 4 + int(c), k] = 0.9
        return out.to(x.device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels_last", [False, True])
def test_evaluate_on_cuda_pairs_each_batch_with_its_own_images(tmp_path, channels_last):
    """On CUDA the images go to the device one batch ahead (utils.device_batches.prefetched): GT boxes in, GT boxes out still."""
    generate_fred(str(tmp_path / "fred"), sequences=4, frames=6, seed=1, size=(96, 160))
    frames = build_fred_index(str(tmp_path / "fred"), "event", cache_dir=str(tmp_path / "cache")).val
    model = ContentEcho()
    batches = list(torch.utils.data.DataLoader(FredDataset(frames, (64, 64)), batch_size=3,
                                               collate_fn=collate_fred))
    for batch in batches:
        model.register(batch)

    def loader():
        for batch in batches:
            yield {**batch, "images": batch["images"].pin_memory()}

    result = evaluate(model, loader(), frames, "cuda", channels_last=channels_last)
    assert result.metrics["images"] == len(frames) and len(batches) > 2
    assert result.metrics["mAP50_95"] == pytest.approx(1.0, abs=1e-6)


def test_evaluate_with_criterion_gives_the_val_loss_of_the_same_pass(tmp_path):
    """One pass for mAP and val loss: the loss equals val_loss.evaluate_loss's, the metrics those without it."""
    from nets.loss import DetectionLoss
    from evaluation.val_loss import evaluate_loss
    root = tmp_path / "fred"
    generate_fred(str(root), sequences=3, frames=6, seed=2, size=(96, 160))
    idx = build_fred_index(str(root), "event", split="random:0.5:0")
    frames = idx.train + idx.val
    loader = torch.utils.data.DataLoader(FredDataset(frames, (96, 160)), batch_size=4,
                                         collate_fn=collate_fred)
    torch.manual_seed(0)
    from nets import build_model
    model = build_model("n", 1)
    criterion = DetectionLoss(1, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)
    plain = evaluate(model, loader, frames, "cpu", amp=False)
    both = evaluate(model, loader, frames, "cpu", amp=False, criterion=criterion)
    ref = evaluate_loss(model, criterion, loader, torch.device("cpu"), None)
    assert plain.loss is None and both.loss.keys() == ref.keys()
    for k in ref:
        assert both.loss[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-7), k
    assert both.metrics["mAP50_95"] == plain.metrics["mAP50_95"] and both.detections == plain.detections
    assert all(m.training for m in model.modules())  # the training-mode model is left as it was
