"""Modality fusion, data side: PADDED_RGB and event frames paired by time (gaps, the event tail, the tolerance),
labels from Event_YOLO, the index cache, and `--modality fusion --check_data`; on tiny generated trees."""
import json
import os
import shutil

import numpy as np
import pytest

import train_fred
from datasets.fred_index import (FredDataError, build_fred_index, event_time_us, pair_by_time, relative_rgb_times,
                                 rgb_time_us)
from tools.check_data import LABEL_AGREEMENT_MIN_IOU, SUMMARY_KEYS, check_data, format_summary, summary_keys
from tools.synthetic import generate_fred, plan_sequence

TOLERANCE = 1 / 60  # seconds: half a frame at 30 FPS (config_fred.FUSION_PAIR_TOLERANCE)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """3 sequences (2 train, 1 val; the third with `_frame_` event names) x 8 RGB frames at 72x128, and its
    manifest."""
    root = tmp_path_factory.mktemp("fred")
    manifest = generate_fred(str(root), sequences=3, frames=8, seed=2, size=(72, 128))
    return str(root), manifest


@pytest.fixture
def tree(generated, tmp_path):
    """A private copy of the generated tree (tests change files in it) and its manifest."""
    root, manifest = generated
    copy = str(tmp_path / "fred")
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".fred_index_cache"))
    return copy, manifest


def plans(manifest):
    """{sequence id: the generator's plan} (names, removed RGB slots, unlabeled event frames)."""
    return {str(sid): plan_sequence(sid, i, manifest["frames"], manifest["seed"], tuple(manifest["size"]))
            for i, sid in enumerate(manifest["ids"])}


def true_pairs(plan):
    """{RGB name: event name} of a sequence as generated: RGB slot j is time step j + 1, as is event frame j + 1."""
    return {plan.rgb_name(j): plan.event_name(j + 1) for j in range(plan.rgb_slots) if j not in plan.removed}


def names(frame):
    """(RGB image name, event image name) of a fused frame."""
    return os.path.basename(frame.image), os.path.basename(frame.event_image)


def stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def test_names_carry_times_and_pairing_is_nearest_within_tolerance():
    assert rgb_time_us("Video_230_17_16_02.213938") == ((17 * 60 + 16) * 60 + 2) * 1_000_000 + 213938
    assert rgb_time_us("Video_230_17_16_02.5") == ((17 * 60 + 16) * 60 + 2) * 1_000_000 + 500000
    assert event_time_us("Video_230_33333") == 33333 and event_time_us("Video_0_frame_100032333") == 100032333
    assert rgb_time_us("Video_230_33333") is None and event_time_us("Video_230_17_16_02.213938") is None
    day = 24 * 3600 * 1_000_000
    assert relative_rgb_times([day - 50_000, day - 16_667, 16_666]) == [0, 33_333, 66_666]  # across midnight
    # rgb 0 and event 0 coincide; rgb 1 has event 2 at 10 ms and event 1 at 20 ms; rgb 2 has nothing within 16.7 ms
    pairs = pair_by_time([0, 40_000, 120_000], [0, 20_000, 50_000, 140_000], 16_667)
    assert pairs == [(0, 0, 0), (1, 2, 10_000)]


def test_fused_frames_are_the_generators_pairs_across_removed_frames_and_the_event_tail(generated):
    root, manifest = generated
    index = build_fred_index(root, "fusion")
    assert index.modality == "fusion" and index.train and index.val
    event_boxes = {f.image: f.boxes for f in (lambda i: i.train + i.val)(build_fred_index(root, "event"))}
    unlabeled = 0
    for sid, plan in plans(manifest).items():
        pairs = true_pairs(plan)
        assert plan.removed and plan.event_frames > plan.rgb_slots  # gaps in RGB, an untrimmed event tail
        rgb_sorted = sorted(pairs, key=lambda n: rgb_time_us(stem(n)))
        event_all = [plan.event_name(k) for k in range(1, plan.event_frames + 1)]
        assert any(pairs[r] != e for r, e in zip(rgb_sorted, event_all))  # pairing by position would be wrong
        annotated = {r: e for r, e in pairs.items() if plan_event_k(plan, e) not in plan.unlabeled_event}
        unlabeled += len(pairs) - len(annotated)
        frames = [f for f in index.train + index.val if f.sequence == sid]
        assert dict(names(f) for f in frames) == annotated
        for f in frames:
            assert f.image.endswith(os.path.join(sid, "PADDED_RGB", names(f)[0]))
            assert f.event_image.endswith(os.path.join(sid, "Event", "Frames", names(f)[1]))
            assert f.label.endswith(os.path.join(sid, "Event_YOLO", stem(f.event_image) + ".txt"))
            np.testing.assert_array_equal(f.boxes, event_boxes[f.event_image])  # labels are Event_YOLO's
        seq = index.stats["pairing"][sid]
        assert seq["pairs"] == len(pairs) and seq["unpaired_rgb"] == 0
        assert seq["unpaired_event"] == plan.event_frames - len(pairs) > 0
        assert 0 <= seq["offset_median_ms"] <= seq["offset_max_ms"] < 0.01  # the generator's names agree to 1 us
    assert index.stats["unlabeled_frames"] == unlabeled > 0
    assert index.stats["unpaired_event"] == sum(s["unpaired_event"] for s in index.stats["pairing"].values())
    val_only = build_fred_index(root, "fusion", val_only=True, cache_dir=os.path.join(root, "val_cache"))
    assert [names(f) for f in val_only.val] == [names(f) for f in index.val] and val_only.train == []
    assert sorted(val_only.stats["pairing"]) == index.val_sequences


def plan_event_k(plan, event_name):
    """The event frame number k of an event name of plan."""
    return next(k for k in range(1, plan.event_frames + 1) if plan.event_name(k) == event_name)


def test_an_event_frame_shifted_past_the_tolerance_is_left_unpaired(tree):
    root, manifest = tree
    sid, plan = next((s, p) for s, p in plans(manifest).items() if p.frame_naming == "microseconds")
    pairs = true_pairs(plan)
    rgb_name, event_name = sorted(pairs.items(), key=lambda kv: plan_event_k(plan, kv[1]))[3]
    shifted = f"Video_{sid}_{event_time_us(stem(event_name)) + 17_000}"  # 17 ms late: beyond half a frame
    seq = os.path.join(root, sid)
    os.rename(os.path.join(seq, "Event", "Frames", event_name), os.path.join(seq, "Event", "Frames", shifted + ".png"))
    label = os.path.join(seq, "Event_YOLO", stem(event_name) + ".txt")
    if os.path.exists(label):
        os.rename(label, os.path.join(seq, "Event_YOLO", shifted + ".txt"))
    index = build_fred_index(root, "fusion")
    stats = index.stats["pairing"][sid]
    assert (stats["pairs"], stats["unpaired_rgb"]) == (len(pairs) - 1, 1)
    assert stats["unpaired_event"] == plan.event_frames - len(pairs) + 1
    assert rgb_name not in {names(f)[0] for f in index.train + index.val}
    assert index.stats["unpaired_rgb"] == 1
    wider = build_fred_index(root, "fusion", fusion_pair_tolerance=0.02)  # 20 ms: paired again, 17 ms apart
    assert wider.stats["pairing"][sid]["unpaired_rgb"] == 0
    assert wider.stats["pairing"][sid]["offset_max_ms"] == pytest.approx(17.0, abs=0.01)
    assert wider.stats["cache_file"] != index.stats["cache_file"]
    again = build_fred_index(root, "fusion")  # each tolerance keeps its own cache
    assert again.stats["parsed_sequences"] == 0 and again.stats["pairing"] == index.stats["pairing"]


def test_labels_come_from_the_event_partner_and_a_missing_one_leaves_the_rgb_frame_unannotated(tree):
    root, manifest = tree
    sid, plan = next(iter(plans(manifest).items()))
    seq = os.path.join(root, sid)
    labelled = [(r, e) for r, e in true_pairs(plan).items()
                if os.path.exists(os.path.join(seq, "Event_YOLO", stem(e) + ".txt"))
                and os.path.exists(os.path.join(seq, "RGB_YOLO", stem(r) + ".txt"))]
    (gone_rgb, gone_event), (neg_rgb, neg_event), (box_rgb, box_event) = labelled[1:4]
    os.remove(os.path.join(seq, "Event_YOLO", stem(gone_event) + ".txt"))
    open(os.path.join(seq, "Event_YOLO", stem(neg_event) + ".txt"), "w").close()
    with open(os.path.join(seq, "RGB_YOLO", stem(neg_rgb) + ".txt"), "w") as f:
        f.write("0 0.5 0.5 0.2 0.2\n")  # the RGB label of a pair does not count
    with open(os.path.join(seq, "Event_YOLO", stem(box_event) + ".txt"), "w") as f:
        f.write("0 0.25 0.75 0.125 0.25\n")
    before = build_fred_index(str(root), "event").stats["unlabeled_frames"]
    index = build_fred_index(root, "fusion")
    frames = {names(f)[0]: f for f in index.train + index.val}
    assert gone_rgb not in frames
    assert frames[neg_rgb].boxes.shape == (0, 5)
    np.testing.assert_allclose(frames[box_rgb].boxes, [[0, 0.25, 0.75, 0.125, 0.25]])
    assert frames[box_rgb].label == os.path.join(seq, "Event_YOLO", stem(box_event) + ".txt")
    plain = build_fred_index(str(root), "fusion", cache_dir=str(root) + "_cache")
    assert plain.stats["unlabeled_frames"] == index.stats["unlabeled_frames"]
    assert build_fred_index(str(root), "event").stats["unlabeled_frames"] == before  # the event index is its own
    other = str(manifest["ids"][2])  # like FRED 181-189: no Event_YOLO/ at all; its pairs are unannotated
    shutil.rmtree(os.path.join(root, other, "Event_YOLO"))
    without = build_fred_index(root, "fusion")
    assert not [f for f in without.train + without.val if f.sequence == other]
    assert without.stats["no_label_folder"] == [os.path.join(root, other)]
    assert without.stats["unlabeled_frames"] == index.stats["unlabeled_frames"] + sum(
        f.sequence == other for f in index.train + index.val)


def test_fusion_needs_padded_rgb_and_a_tolerance_in_seconds(generated):
    root, _ = generated
    with pytest.raises(FredDataError, match="PADDED_RGB"):
        build_fred_index(root, "fusion", rgb_image_dir="RGB")
    with pytest.raises(FredDataError, match="seconds"):
        build_fred_index(root, "fusion", fusion_pair_tolerance=16.7)


def offset_rgb_labels(seq):
    """Move every RGB_YOLO box of the sequence folder 0.4 of the width sideways (a label set that disagrees)."""
    folder = os.path.join(seq, "RGB_YOLO")
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        with open(path) as f:
            rows = [line.split() for line in f if line.strip()]
        with open(path, "w") as f:
            for c, x, y, w, h in rows:
                x = float(x) + (0.4 if float(x) < 0.5 else -0.4)
                f.write(f"{c} {x} {y} {w} {h}\n")


def test_check_data_reports_pairing_and_lists_sequences_whose_labels_disagree(tree):
    root, manifest = tree
    bad = str(manifest["ids"][1])
    offset_rgb_labels(os.path.join(root, bad))
    index = build_fred_index(root, "fusion")
    summary = check_data(index, workers=1, progress=False)
    keys = summary_keys("fusion")
    assert keys == SUMMARY_KEYS + ("unpaired_rgb", "unpaired_event", "label_agreement")
    assert summary_keys("event") == SUMMARY_KEYS
    assert summary["train_frames"] + summary["val_frames"] == len(index.train) + len(index.val)
    assert summary["unpaired_event"] == index.stats["unpaired_event"] > 0 and summary["unpaired_rgb"] == 0
    per_seq = summary["sequences"]
    assert sorted(per_seq, key=int) == [str(i) for i in manifest["ids"]]
    assert per_seq[bad]["label_iou"] < LABEL_AGREEMENT_MIN_IOU <= min(
        s["label_iou"] for sid, s in per_seq.items() if sid != bad)
    assert summary["disagreeing_sequences"] == [bad]
    assert 0 < summary["label_agreement"] < 1
    text = format_summary(summary)
    assert f"labels disagree (mean IoU below {LABEL_AGREEMENT_MIN_IOU:g}): 1\n    {bad}: mean IoU" in text
    for sid, s in per_seq.items():
        assert f"    {sid}: {s['pairs']} pairs, unpaired RGB {s['unpaired_rgb']}, event {s['unpaired_event']}" in text


def test_train_fred_checks_fusion_data(generated, tmp_path, capsys):
    root, manifest = generated
    argv = ["--modality", "fusion", "--data_root", root, "--device", "cpu", "--save_dir", str(tmp_path / "runs"),
            "--set", "NUM_WORKERS=1"]
    assert train_fred.main(argv + ["--check_data"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tuple(line) == summary_keys("fusion") and line["modality"] == "fusion"
    assert line["unpaired_event"] > 0 and line["label_agreement"] > 0
    assert not os.path.exists(tmp_path / "runs")
    assert train_fred.main(["--modality", "fusion", "--data_root", str(tmp_path / "nowhere"), "--check_data"]) == 2
    assert "python train_fred.py --modality fusion --demo" in capsys.readouterr().err
