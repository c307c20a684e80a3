"""mAP broken down by condition and sequence (evaluation/breakdown.py): equal to pycocotools on the same subsets."""
import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from datasets.fred_index import build_fred_index
from evaluation import coco_arrays
from evaluation.breakdown import (breakdown, condition_subsets, format_breakdown, load_conditions,
                                  sequence_conditions, sequence_subsets, subset_metrics)
from tests.test_evaluator import crowded_case, reference_eval
from tools.synthetic import MANIFEST_NAME, generate_fred

HARD_IDS = [0, 8, 9, 12, 76]  # 0, 76: canonical train; 8, 9, 12: canonical test (val: night, rain, clear at seed 3)


def pycocotools_subset_stats(ref: COCOeval, ids: list[int]) -> np.ndarray:
    """COCOeval.stats with params.imgIds = ids, from pycocotools itself."""
    with contextlib.redirect_stdout(io.StringIO()):
        sub = COCOeval(ref.cocoGt, ref.cocoDt, "bbox")
        sub.params.imgIds = ids
        sub.evaluate()
        sub.accumulate()
        sub.summarize()
    return sub.stats


@pytest.mark.parametrize("seed", range(3))
def test_subset_metrics_equal_pycocotools_on_the_same_image_ids(seed):
    gt, dets = crowded_case(seed, num_classes=1 + seed % 2)
    ref = reference_eval(gt, dets)
    ids = [im["id"] for im in gt["images"]]
    rng = np.random.default_rng(seed)
    subsets = {"every_third": ids[::3], "first_half": ids[:len(ids) // 2],
               "random": sorted(int(i) for i in rng.choice(ids, 11, replace=False)), "one": [ids[1]]}
    got = subset_metrics(gt, coco_arrays.results_dicts_to_array(dets), subsets)
    assert list(got) == list(subsets)
    for name, subset in subsets.items():
        stats = pycocotools_subset_stats(ref, subset)
        assert got[name]["mAP50"] == stats[1] and got[name]["mAP50_95"] == stats[0], name
        assert got[name]["AP_small"] == stats[3], name
        assert got[name]["images"] == len(subset)
        assert got[name]["boxes"] == sum(a["image_id"] in subset for a in gt["annotations"])
    assert got["every_third"]["mAP50_95"] != got["first_half"]["mAP50_95"]  # subsets really differ
    assert 0 < got["random"]["mAP50_95"] < 1


def test_subset_without_ground_truth_is_undefined():
    gt, dets = crowded_case(0)
    empty = [im["id"] for im in gt["images"] if not any(a["image_id"] == im["id"] for a in gt["annotations"])]
    got = subset_metrics(gt, coco_arrays.results_dicts_to_array(dets), {"negatives": empty})
    assert empty and got["negatives"]["mAP50"] == -1.0 and got["negatives"]["boxes"] == 0


def test_condition_and_sequence_subsets():
    gt = {"images": [{"id": i} for i in (0, 1, 2, 4)]}  # frame 3 was not scored
    conditions = [{"night": True, "rain": False, "size": "tiny"}, {"night": False, "rain": False, "size": "large"},
                  None, {"night": True, "rain": False, "size": "small"}, {"night": False, "size": "tiny"}]
    subsets = condition_subsets(gt, conditions)  # no subset for rain (never true) or size=small (frame 3 unscored)
    assert subsets == {"night": [0], "size=tiny": [0, 4], "size=large": [1]}
    assert list(subsets) == ["night", "size=tiny", "size=large"]  # sizes in the generator's bucket order
    later_night = condition_subsets({"images": [{"id": 0}, {"id": 1}]},
                                    [{"night": False, "size": "tiny"}, {"night": True, "size": "tiny"}])
    assert list(later_night) == ["night", "size=tiny"]  # conditions in the order of their keys, not of a first true
    frames = [SimpleNamespace(sequence=s) for s in ("5", "5", "9", "9", "7")]
    assert sequence_subsets(gt, frames) == {"5": [0, 1], "9": [2], "7": [4]}


def test_breakdown_groups_equal_their_subsets():
    gt, dets = crowded_case(1)
    rows = coco_arrays.results_dicts_to_array(dets)
    frames = [SimpleNamespace(sequence=str(i % 4)) for i in range(len(gt["images"]))]
    conditions = [{"night": i % 3 == 0, "size": "tiny" if i % 2 else "large"} for i in range(len(frames))]
    got = breakdown(gt, rows, frames, conditions)
    assert list(got) == ["per_sequence", "per_condition"]
    assert got["per_sequence"] == subset_metrics(gt, rows, sequence_subsets(gt, frames))
    assert got["per_condition"] == subset_metrics(gt, rows, condition_subsets(gt, conditions))
    assert list(got["per_condition"]) == ["night", "size=tiny", "size=large"]
    assert list(breakdown(gt, rows, frames)) == ["per_sequence"]
    assert list(breakdown(gt, rows, None, conditions)) == ["per_condition"]
    assert breakdown(gt, rows, None) == {}


def test_load_conditions_from_the_hard_manifest(tmp_path):
    root = str(tmp_path / "hard")
    manifest = generate_fred(root, sequences=len(HARD_IDS), frames=6, seed=3, size=(96, 160), ids=HARD_IDS,
                             profile="hard")
    for modality in ("event", "rgb"):
        frames = build_fred_index(root, modality, split="canonical").val
        conditions = load_conditions(frames, root, modality)
        assert len(conditions) == len(frames) > 0
        for frame, cond in zip(frames, conditions):
            sequence = manifest["sequences"][frame.sequence]
            assert cond == {**sequence["frames"][modality][Path(frame.image).stem],
                            "clutter": sequence["background"] != "sky", "background": sequence["background"]}
    assert {c["night"] for c in conditions} == {True, False} and any(c["rain"] for c in conditions)
    fused = build_fred_index(root, "fusion", split="canonical").val  # a fused frame: its event frame's conditions
    for frame, cond in zip(fused, load_conditions(fused, root, "fusion")):
        sequence = manifest["sequences"][frame.sequence]
        assert cond == {**sequence["frames"]["event"][Path(frame.event_image).stem],
                        **sequence_conditions(sequence)}


def test_sequence_conditions():
    """A sequence's background puts all its frames in "clutter" unless it is open sky; no background, no keys."""
    assert sequence_conditions({"background": "buildings"}) == {"clutter": True, "background": "buildings"}
    assert sequence_conditions({"background": "sky"}) == {"clutter": False, "background": "sky"}
    assert sequence_conditions({"condition": "night"}) == {}
    gt = {"images": [{"id": 0}, {"id": 1}]}
    subsets = condition_subsets(gt, [{"night": True, **sequence_conditions({"background": "treeline"})},
                                     {"night": False, **sequence_conditions({"background": "sky"})}])
    assert subsets == {"night": [0], "clutter": [0], "background=treeline": [0], "background=sky": [1]}


def test_load_conditions_without_a_manifest_and_from_a_file(tmp_path):
    root = str(tmp_path / "plain")
    generate_fred(root, sequences=4, frames=6, seed=1, size=(96, 160))  # default profile: no per-frame conditions
    frames = build_fred_index(root, "event", split="random:0.5:0").val
    assert load_conditions(frames, root, "event") is None
    stem = Path(frames[0].image).stem
    path = tmp_path / "conditions.json"
    path.write_text(json.dumps({stem: {"night": True}, "not_a_frame": {"rain": True}}))
    conditions = load_conditions(frames, root, "event", str(path))
    assert conditions[0] == {"night": True} and conditions[1:] == [None] * (len(frames) - 1)
    path.write_text(json.dumps({"not_a_frame": {"rain": True}}))
    with pytest.raises(ValueError, match="conditions.json.*no frame"):
        load_conditions(frames, root, "event", str(path))
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="conditions.json.*frame stem"):
        load_conditions(frames, root, "event", str(path))
    with pytest.raises(ValueError, match="missing.json"):
        load_conditions(frames, root, "event", str(tmp_path / "missing.json"))
    (Path(root) / MANIFEST_NAME).write_text("{broken")
    with pytest.raises(ValueError, match=MANIFEST_NAME):
        load_conditions(frames, root, "event")


def test_format_breakdown():
    text = format_breakdown("condition", {"night": {"mAP50": 0.5, "mAP50_95": 0.25, "AP_small": -1.0, "images": 3,
                                                    "boxes": 2}})
    header, row = text.splitlines()
    assert header.split() == ["condition", "mAP50", "mAP50:95", "AP_small", "images", "boxes"]
    assert row.split() == ["night", "0.5000", "0.2500", "-1.0000", "3", "2"]
