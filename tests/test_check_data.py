"""Data check: every selected image read (path-safe, truncation found), bad files counted, summary keys and readable
text; the dataset replaces the same bad images during training."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from datasets.fred_dataset import FredDataset
from datasets.fred_index import build_fred_index
from datasets.image_io import read_image
from tests.test_fred_index import BOX, make_sequence, make_tree
from tools.check_data import SUMMARY_KEYS, check_data, format_summary, usable
from tools.synthetic import generate_fred

TWO_BOXES = BOX + "0 0.2 0.2 0.05 0.05\n"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def truncate(path: str, keep: float = 1 / 3) -> None:
    """Cut the file at path to the given share of its bytes."""
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


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
    assert sorted(summary["bad_file_list"][1:]) == sorted([
        f"{broken}: truncated PNG: the file ends before its IEND chunk", f"{empty}: empty file (0 bytes)"])
    assert usable(summary)
    json.loads(json.dumps({k: summary[k] for k in SUMMARY_KEYS}))
    text = format_summary(summary)
    assert "train: 1 sequences, 2 frames" in text and f"{broken}: truncated PNG" in text
    far = f"{os.path.join(seq0, 'Event_YOLO', names0[4])}.txt:3: box '0 1.5 0.5 0.1 0.1' lies far outside the image"
    assert len(summary["implausible_boxes"]) == 1 and summary["implausible_boxes"][0].startswith(far)
    assert f"boxes far outside the image (dropped): 1\n    {far}" in text
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


def test_read_image_reads_what_imread_reads_and_names_the_damage(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    files = {}
    for ext in (".png", ".jpg"):
        files[ext] = str(tmp_path / f"good{ext}")
        cv2.imwrite(files[ext], image)
        decoded, reason = read_image(files[ext])
        assert reason == "" and np.array_equal(decoded, cv2.imread(files[ext]))
    data = {ext: open(path, "rb").read() for ext, path in files.items()}
    damaged = {
        "padded.jpg": (data[".jpg"] + bytes(100), ""),  # zero padding after the end marker is fine
        "missing.png": (None, "cannot read the file (No such file or directory)"),
        "empty.png": (b"", "empty file (0 bytes)"),
        "cut.jpg": (data[".jpg"][:len(data[".jpg"]) // 2], "truncated JPEG"),
        "cut_padded.jpg": (data[".jpg"][:len(data[".jpg"]) // 2] + bytes(1000), "truncated JPEG"),
        "cut.png": (data[".png"][:-12], "truncated PNG: the file ends before its IEND chunk"),
        "cut_mid.png": (data[".png"][:len(data[".png"]) // 2], "truncated or corrupt PNG: chunk IDAT"),
        "flipped.png": (data[".png"][:200] + bytes([data[".png"][200] ^ 1]) + data[".png"][201:],
                        "corrupt PNG: CRC mismatch in chunk IDAT"),
        "text.png": (b"not an image", "does not decode"),
    }
    for name, (content, reason) in damaged.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        decoded, why = read_image(str(tmp_path / name))
        assert why.startswith(reason), (name, why)
        assert (decoded is None) == bool(reason), name


def test_summary_of_a_generated_tree_equals_its_truth(tmp_path):
    from tools.synthetic import generate_fred
    truth = generate_fred(str(tmp_path), sequences=3, frames=5, seed=1, size=(36, 64))["totals"]["event"]
    summary = check_data(build_fred_index(str(tmp_path), "event"), progress=False)
    assert summary["train_frames"] + summary["val_frames"] == truth["annotated"]
    assert (summary["boxes"], summary["empty_frames"], summary["unlabeled_frames"]) == \
        (truth["boxes"], truth["empty"], truth["unlabeled"])
    assert summary["bad_files"] == 0 and usable(summary)


@pytest.fixture
def rgb_tree(tmp_path):
    """A generated tree large enough (72x128) that a JPEG cut to a third still decodes with OpenCV."""
    root = str(tmp_path / "fred")
    generate_fred(root, sequences=2, frames=4, seed=1, size=(72, 128))
    return root


def test_truncated_and_corrupt_images_are_named_bad_files_without_decoder_messages(rgb_tree, capfd):
    index = build_fred_index(rgb_tree, "rgb")
    jpeg = index.train[1].image
    truncate(jpeg)
    capfd.readouterr()
    summary = check_data(index, workers=1, progress=False)
    assert summary["bad_file_list"] == [f"{jpeg}: truncated JPEG: the data does not end with the end-of-image "
                                        f"marker FF D9"]
    assert (summary["bad_files"], summary["train_frames"]) == (1, len(index.train) - 1)

    index = build_fred_index(rgb_tree, "event")
    cut, flipped = index.train[0].image, index.val[-1].image
    truncate(cut)
    with open(flipped, "r+b") as f:
        f.seek(os.path.getsize(flipped) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    summary = check_data(index, workers=2, progress=False)
    expected = sorted([f"{cut}: truncated or corrupt PNG: chunk IDAT",
                       f"{flipped}: corrupt PNG: CRC mismatch in chunk"])
    bad = sorted(summary["bad_file_list"])
    assert len(bad) == 2 and all(line.startswith(start) for line, start in zip(bad, expected)), bad
    assert summary["bad_files"] == 2 and summary["val_frames"] == len(index.val) - 1
    err = capfd.readouterr().err
    assert "JPEG" not in err and "libpng" not in err, err  # libjpeg and libpng said nothing on their own


def test_truncated_image_is_replaced_and_logged_during_training(rgb_tree, tmp_path):
    frames = build_fred_index(rgb_tree, "rgb").train
    truncate(frames[0].image)
    log = tmp_path / "bad_images.txt"
    dataset = FredDataset(frames, (64, 64), bad_image_log=str(log))
    assert dataset[0]["index"] == 1
    assert log.read_text() == f"{frames[0].image}\ttruncated JPEG: the data does not end with the end-of-image " \
                              f"marker FF D9\n"


def test_empty_sequence_folder_is_reported(tmp_path):
    root = make_tree(tmp_path, ids=["0", "8"])
    empty = tmp_path / "9"
    (empty / "Event" / "Frames").mkdir(parents=True)
    (empty / "Event_YOLO").mkdir()
    index = build_fred_index(root, "event")
    assert index.stats["empty_sequences"] == [str(empty)]
    summary = check_data(index, workers=1, progress=False)
    assert summary["empty_sequences"] == [str(empty)] and summary["val_sequences"] == 2
    assert f"sequences without images (nothing used from them): 1\n    {empty}" in format_summary(summary)


NON_UTF8_SCRIPT = """
import json, sys
from datasets.fred_dataset import FredDataset
from datasets.fred_index import build_fred_index
from tools.check_data import SUMMARY_KEYS, check_data, format_summary
root, log = sys.argv[1:]
build_fred_index(root, "event")
index = build_fred_index(root, "event")  # from the index cache
summary = check_data(index, workers=1, progress=False)
print(format_summary(summary))
print(json.dumps({k: summary[k] for k in SUMMARY_KEYS}))
for frames in (index.train, index.val):
    dataset = FredDataset(frames, (64, 64), bad_image_log=log)
    print("items", [dataset[i]["index"] for i in range(len(frames))], index.stats["cached_sequences"])
"""


def test_non_utf8_file_names_are_read_or_reported_never_a_crash(tmp_path):
    root = tmp_path / "fred"
    seq0, names0 = make_sequence(root, 0, frames=3)
    seq8, names8 = make_sequence(root, 8, frames=3)
    renamed = []
    for seq, name, new in ((seq0, names0[1], b"Video_0_\xff\xfe"), (seq8, names8[2], b"Video_8_\xfe")):
        for folder, ext in ((os.path.join(seq, "Event", "Frames"), ".png"), (os.path.join(seq, "Event_YOLO"), ".txt")):
            old = os.path.join(folder, name + ext)
            renamed.append(os.path.join(os.fsencode(folder), new + ext.encode()))
            os.rename(old, renamed[-1])
    truncate(renamed[2])  # sequence 8's renamed image: a bad file to name
    log = tmp_path / "bad_images.txt"
    proc = subprocess.run([sys.executable, "-c", NON_UTF8_SCRIPT, str(root), str(log)], cwd=REPO,
                          capture_output=True, timeout=120)
    out = proc.stdout.decode("utf-8")
    assert proc.returncode == 0, (proc.returncode, out, proc.stderr.decode("utf-8", "replace"))
    counts = json.loads(out.splitlines()[-3])
    assert (counts["train_frames"], counts["val_frames"], counts["bad_files"]) == (3, 2, 1)
    bad = os.path.join(seq8, "Event", "Frames", "Video_8_\\xfe.png")
    assert f"{bad}: truncated" in out
    assert out.splitlines()[-2:] == ["items [0, 1, 2] 2", "items [0, 1, 0] 2"]  # the bad val frame 2 replaced by 0
    assert log.read_text(encoding="utf-8").startswith(f"{bad}\ttruncated")
