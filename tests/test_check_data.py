"""Data check: every selected image decoded, bad files counted, summary keys and readable text."""
import json
import os

from datasets.check_data import SUMMARY_KEYS, check_data, format_summary, image_decodes, usable
from datasets.fred_index import build_fred_index
from tests.test_fred_index import BOX, make_sequence

TWO_BOXES = BOX + "0 0.2 0.2 0.05 0.05\n"


def test_summary_counts_bad_images_and_labels(tmp_path):
    seq0, names0 = make_sequence(tmp_path, 0, frames=5, labels={1: "", 2: None, 3: "0 0.5 oops 0.1 0.1\n",
                                                                 4: TWO_BOXES + "0 1.5 0.5 0.1 0.1\n"})
    seq8, names8 = make_sequence(tmp_path, 8, frames=3)
    broken = os.path.join(seq0, "Event", "Frames", names0[0] + ".png")
    with open(broken, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")  # a PNG header and nothing decodable
    empty = os.path.join(seq8, "Event", "Frames", names8[2] + ".png")
    open(empty, "wb").close()
    summary = check_data(build_fred_index(str(tmp_path), "event"), workers=2, progress=False)

    assert {k: summary[k] for k in SUMMARY_KEYS} == {
        "modality": "event", "train_sequences": 1, "val_sequences": 1,
        "train_frames": 2,      # frame 0 does not decode, 2 has no label, 3 does not parse: 1 and 4 left
        "val_frames": 2,        # frame 2 is an empty file
        "boxes": 2 + 2,         # frame 4 keeps two boxes, val frames one each
        "empty_frames": 1, "unlabeled_frames": 1,
        "bad_files": 3,         # one label file, two images
        "dropped_boxes": 1,
    }
    assert summary["bad_file_list"][0].startswith(os.path.join(seq0, "Event_YOLO", names0[3] + ".txt") + ":1: ")
    assert sorted(summary["bad_file_list"][1:]) == sorted([f"{broken}: image does not decode",
                                                           f"{empty}: image does not decode"])
    assert usable(summary)
    json.loads(json.dumps({k: summary[k] for k in SUMMARY_KEYS}))
    text = format_summary(summary)
    assert "train: 1 sequences, 2 frames" in text and f"{broken}: image does not decode" in text
    assert "NOT USABLE" not in text


def test_unusable_when_a_side_loses_every_image(tmp_path):
    make_sequence(tmp_path, 0, frames=2)
    seq8, names8 = make_sequence(tmp_path, 8, frames=2)
    for name in names8:
        with open(os.path.join(seq8, "Event", "Frames", name + ".png"), "wb") as f:
            f.write(b"not an image")
    summary = check_data(build_fred_index(str(tmp_path), "event"), workers=1, progress=False)
    assert (summary["train_frames"], summary["val_frames"], summary["bad_files"]) == (2, 0, 2)
    assert not usable(summary)
    assert f"NOT USABLE: no val frames left under {tmp_path}" in format_summary(summary)


def test_image_decodes(tmp_path):
    good, _ = make_sequence(tmp_path, 0, frames=1)
    path = os.path.join(good, "Event", "Frames", "Video_0_0.png")
    assert image_decodes(path)
    assert not image_decodes(str(tmp_path / "missing.png"))


def test_summary_of_a_generated_tree_equals_its_truth(tmp_path):
    from datasets.synthetic import generate_fred
    truth = generate_fred(str(tmp_path), sequences=3, frames=5, seed=1, size=(36, 64))["totals"]["event"]
    summary = check_data(build_fred_index(str(tmp_path), "event"), progress=False)
    assert summary["train_frames"] + summary["val_frames"] == truth["annotated"]
    assert (summary["boxes"], summary["empty_frames"], summary["unlabeled_frames"]) == \
        (truth["boxes"], truth["empty"], truth["unlabeled"])
    assert summary["bad_files"] == 0 and usable(summary)
