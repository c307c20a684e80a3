"""FRED index: layouts, natural order, splits, strides, bad labels, cache; on tiny trees built here."""
import logging
import os
import shutil

import cv2
import numpy as np
import pytest

from datasets import fred_index
from datasets.fred_index import FredDataError, build_fred_index, natural_key
from datasets.splits import read_split_file, resolve_split

IMAGE = np.full((24, 32, 3), 90, dtype=np.uint8)
BOX = "0 0.5 0.5 0.1 0.2\n"
# Sequence ids chosen from the shipped split files: 0 is train in both; 8 is canonical test, challenging train;
# 9 is test in both; 10 is canonical train, challenging test.
IDS = ["0", "8", "9", "10"]


def make_sequence(root, sid, modality="event", frames=3, labels=None, prefix="", image_dir="PADDED_RGB"):
    """Write one sequence folder; labels maps frame index -> label text (None = no label file); default one box."""
    seq = os.path.join(root, prefix, str(sid))
    img_dir = os.path.join(seq, "Event", "Frames") if modality == "event" else os.path.join(seq, image_dir)
    lab_dir = os.path.join(seq, "Event_YOLO" if modality == "event" else "RGB_YOLO")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(lab_dir, exist_ok=True)
    names = []
    for i in range(frames):
        stem = f"Video_{sid}_{i * 33333}" if modality == "event" else f"Video_{sid}_10_00_{i:02d}.000000"
        ext = ".png" if modality == "event" else ".jpg"
        cv2.imwrite(os.path.join(img_dir, stem + ext), IMAGE)
        text = (labels or {}).get(i, BOX)
        if text is not None:
            with open(os.path.join(lab_dir, stem + ".txt"), "w") as f:
                f.write(text)
        names.append(stem)
    return seq, names


def make_tree(root, ids=IDS, **kw):
    """Sequences with the given ids directly under root."""
    for sid in ids:
        make_sequence(root, sid, **kw)
    return str(root)


def stems(frames):
    """File stems of the frames' images, in order."""
    return [os.path.splitext(os.path.basename(f.image))[0] for f in frames]


def test_natural_key_orders_numbers_as_numbers():
    names = ["Video_1_100000.png", "Video_1_33333.png", "Video_1_9.png", "Video_1_frame_10.png"]
    assert sorted(names, key=natural_key) == ["Video_1_9.png", "Video_1_33333.png", "Video_1_100000.png",
                                              "Video_1_frame_10.png"]
    clock = ["Video_2_17_16_10.000001", "Video_2_17_16_02.5", "Video_2_17_16_02.213938", "Video_2_17_16_9.9"]
    assert sorted(clock, key=natural_key) == ["Video_2_17_16_02.213938", "Video_2_17_16_02.5",
                                              "Video_2_17_16_9.9", "Video_2_17_16_10.000001"]


def test_frames_in_natural_order(tmp_path):
    root = make_tree(tmp_path, frames=12)
    index = build_fred_index(root, "event")
    seq0 = [f for f in index.train if f.sequence == "0"]
    assert stems(seq0) == [f"Video_0_{i * 33333}" for i in range(12)]  # 99999 before 133332, 333330 last
    assert [f.sequence for f in index.train] == ["0"] * 12 + ["10"] * 12


def test_layouts_plain_train_test_and_junk_ignored(tmp_path):
    make_sequence(tmp_path, 0, prefix="train")
    make_sequence(tmp_path, 10, prefix="")
    make_sequence(tmp_path, 8, prefix="test")
    make_sequence(tmp_path, 9, prefix="train")           # canonical test, although unzipped into train/
    os.makedirs(tmp_path / "notes" / "Event" / "Frames")  # not numeric
    os.makedirs(tmp_path / "11" / "RGB")                  # numeric, but no event images
    (tmp_path / "12").write_text("a file, not a folder")
    index = build_fred_index(str(tmp_path), "event")
    assert index.train_sequences == ["0", "10"]
    assert index.val_sequences == ["8", "9"]
    assert index.stats["incomplete_folders"] == [str(tmp_path / "11")]
    assert all(f.image.startswith(str(tmp_path / "train" / "0")) for f in index.train if f.sequence == "0")
    assert len(index.train) == 6 and len(index.val) == 6


def test_rgb_modality_image_dirs_and_removed_frames(tmp_path):
    seq, names = make_sequence(tmp_path, 0, modality="rgb", frames=4)
    make_sequence(tmp_path, 8, modality="rgb", frames=2)
    os.makedirs(os.path.join(seq, "Removed_frames"))
    cv2.imwrite(os.path.join(seq, "Removed_frames", names[1] + ".jpg"), IMAGE)
    index = build_fred_index(str(tmp_path), "rgb")
    assert stems(index.train) == [names[0], names[2], names[3]]
    assert all("/PADDED_RGB/" in f.image and "/RGB_YOLO/" in f.label for f in index.train + index.val)
    assert index.stats["removed_frames"] == 1
    with pytest.raises(FredDataError, match="RGB_IMAGE_DIR = 'RGB'"):
        build_fred_index(str(tmp_path), "rgb", rgb_image_dir="RGB")
    make_sequence(tmp_path, 0, modality="rgb", frames=2, image_dir="RGB")
    make_sequence(tmp_path, 8, modality="rgb", frames=2, image_dir="RGB")
    index = build_fred_index(str(tmp_path), "rgb", rgb_image_dir="RGB")
    assert stems(index.train) == [names[0]] and all("/RGB/" in f.image for f in index.train)  # names[1] removed
    with pytest.raises(FredDataError, match="Event.Frames"):
        build_fred_index(str(tmp_path), "event")


def test_canonical_and_challenging_sides(tmp_path):
    root = make_tree(tmp_path)
    canonical = build_fred_index(root, "event")
    assert (canonical.train_sequences, canonical.val_sequences) == (["0", "10"], ["8", "9"])
    assert {f.sequence for f in canonical.train} == {"0", "10"} and {f.sequence for f in canonical.val} == {"8", "9"}
    challenging = build_fred_index(root, "event", split="challenging")
    assert (challenging.train_sequences, challenging.val_sequences) == (["0", "8"], ["9", "10"])
    train, val = resolve_split("canonical", [])
    assert (len(train), len(val)) == (184, 47) and not set(train) & set(val)
    train, val = resolve_split("challenging", [])
    assert (len(train), len(val)) == (172, 59) and "230" in train  # last line, no final newline


def test_val_only_scans_only_the_val_sequences_and_gives_the_same_val_frames(tmp_path, monkeypatch):
    root = make_tree(tmp_path)
    full = build_fred_index(root, "event", cache_dir=str(tmp_path / "c1"))
    scanned = []
    real_scan = fred_index._scan_sequence
    monkeypatch.setattr(fred_index, "_scan_sequence",
                        lambda seq_dir, *a: scanned.append(seq_dir) or real_scan(seq_dir, *a))
    val = build_fred_index(root, "event", cache_dir=str(tmp_path / "c2"), val_only=True)
    assert sorted(os.path.basename(d) for d in scanned) == ["8", "9"]
    assert val.train == [] and val.val_sequences == full.val_sequences == ["8", "9"]
    assert stems(val.val) == stems(full.val)
    np.testing.assert_array_equal(np.concatenate([f.boxes for f in val.val]),
                                  np.concatenate([f.boxes for f in full.val]))
    scanned.clear()
    again = build_fred_index(root, "event", cache_dir=str(tmp_path / "c2"))  # the val-only cache serves a full index
    assert again.stats["cached_sequences"] == 2 and again.stats["parsed_sequences"] == 2 and len(scanned) == 4
    train_only = make_tree(tmp_path / "train_only", ids=["0", "10"])
    with pytest.raises(FredDataError, match="no val sequences under"):  # the val side is still checked
        build_fred_index(train_only, "event", val_only=True)
    test_only = make_tree(tmp_path / "test_only", ids=["8", "9"])  # a copy with the canonical test sequences only
    with pytest.raises(FredDataError, match="no train sequences under"):
        build_fred_index(test_only, "event")
    assert stems(build_fred_index(test_only, "event", val_only=True).val) == stems(full.val)


def test_random_split_is_by_sequence_and_deterministic(tmp_path):
    ids = [str(i) for i in range(100, 110)]
    root = make_tree(tmp_path, ids=ids, frames=2)
    a = build_fred_index(root, "event", split="random:0.3:7")
    b = build_fred_index(root, "event", split="random:0.3:7")
    c = build_fred_index(root, "event", split="random:0.3:8")
    assert (a.train_sequences, a.val_sequences) == (b.train_sequences, b.val_sequences)
    assert len(a.val_sequences) == 3 and sorted(a.train_sequences + a.val_sequences, key=int) == ids
    assert a.val_sequences != c.val_sequences
    assert {f.sequence for f in a.val} == set(a.val_sequences)
    assert {f.sequence for f in a.train} == set(a.train_sequences)
    for bad in ("random:0.3", "random:x:1", "random:1.5:0"):
        with pytest.raises(FredDataError, match="random"):
            build_fred_index(root, "event", split=bad)


def test_split_folder(tmp_path):
    root = make_tree(tmp_path / "data")
    folder = tmp_path / "mysplit"
    folder.mkdir()
    (folder / "my_train_list.txt").write_text("8/\n9/\n")
    (folder / "my_test_list.txt").write_text("0/\n10/")  # no final newline, as FRED's challenging files
    index = build_fred_index(root, "event", split=str(folder))
    assert (index.train_sequences, index.val_sequences) == (["8", "9"], ["0", "10"])
    (folder / "my_test_list.txt").unlink()
    with pytest.raises(FredDataError, match=r"\*test\*\.txt"):
        build_fred_index(root, "event", split=str(folder))
    (folder / "other_test.txt").write_text("9/\n")
    with pytest.raises(FredDataError, match="both"):
        build_fred_index(root, "event", split=str(folder))
    (folder / "other_test.txt").write_text("x/\n")
    with pytest.raises(FredDataError, match="other_test.txt:1"):
        build_fred_index(root, "event", split=str(folder))
    with pytest.raises(FredDataError, match="unknown split"):
        build_fred_index(root, "event", split=str(tmp_path / "nowhere"))
    assert read_split_file(str(folder / "my_train_list.txt")) == ["8", "9"]


def test_frame_stride_per_sequence(tmp_path):
    # frame 4 unannotated: stride counts annotated frames; frame 1 (skipped by the strides) has a box to drop
    root = make_tree(tmp_path, frames=10, labels={4: None, 1: "0 1.5 0.5 0.1 0.1\n"})
    index = build_fred_index(root, "event", frame_stride=3, val_frame_stride=4)
    annotated = [f"Video_0_{i * 33333}" for i in range(10) if i != 4]
    assert stems([f for f in index.train if f.sequence == "0"]) == annotated[::3]
    assert stems([f for f in index.val if f.sequence == "9"]) == [s.replace("_0_", "_9_") for s in annotated[::4]]
    assert len(index.train) == 2 * 3 and len(index.val) == 2 * 3
    assert index.stats["dropped_boxes"] == 0  # counted over the selected frames only
    assert build_fred_index(root, "event").stats["dropped_boxes"] == 4
    with pytest.raises(FredDataError, match="FRAME_STRIDE"):
        build_fred_index(root, "event", frame_stride=0)


def test_empty_label_is_negative_and_missing_label_is_unannotated(tmp_path):
    seq, names = make_sequence(tmp_path, 0, frames=4, labels={1: "", 2: None, 3: "\n\n"})
    make_tree(tmp_path, ids=["8"])
    index = build_fred_index(str(tmp_path), "event")
    assert stems(index.train) == [names[0], names[1], names[3]]
    assert [len(f.boxes) for f in index.train] == [1, 0, 0]
    assert index.train[1].boxes.shape == (0, 5) and index.train[1].boxes.dtype == np.float32
    assert index.stats["unlabeled_frames"] == 1
    assert index.stats["bad_files"] == []
    np.testing.assert_allclose(index.train[0].boxes, [[0, 0.5, 0.5, 0.1, 0.2]], atol=1e-6)
    assert index.train[0].label == os.path.join(seq, "Event_YOLO", names[0] + ".txt")


@pytest.mark.parametrize("text, line, reason", [
    ("0 0.5 0.5 0.1\n", 1, "expected 5 fields"),
    (BOX + "0 0.5 0.5 0.1 0.2 0.9\n", 2, "expected 5 fields"),
    (BOX + BOX + "0 0.5 abc 0.1 0.2\n", 3, "not a number"),
    ("0 0.5 nan 0.1 0.2\n", 1, "NaN"),
    ("0 0.5 0.5 inf 0.2\n", 1, "NaN or infinite"),
])
def test_unparsable_label_file_is_reported_and_left_out(tmp_path, text, line, reason):
    seq, names = make_sequence(tmp_path, 0, frames=3, labels={1: text})
    make_tree(tmp_path, ids=["8"])
    index = build_fred_index(str(tmp_path), "event")
    path = os.path.join(seq, "Event_YOLO", names[1] + ".txt")
    assert stems(index.train) == [names[0], names[2]]
    assert len(index.stats["bad_files"]) == 1
    assert index.stats["bad_files"][0].startswith(f"{path}:{line}: {reason}")
    with pytest.raises(FredDataError, match=f"{names[1]}.txt:{line}: {reason}.*STRICT_LABELS"):
        build_fred_index(str(tmp_path), "event", strict_labels=True)


def test_unreadable_label_bytes_are_a_bad_file(tmp_path):
    seq, names = make_sequence(tmp_path, 0, frames=2, labels={0: None})
    with open(os.path.join(seq, "Event_YOLO", names[0] + ".txt"), "wb") as f:
        f.write(b"\xff\xfe\x00garbage")
    make_tree(tmp_path, ids=["8"])
    index = build_fred_index(str(tmp_path), "event")
    assert stems(index.train) == [names[1]]
    assert index.stats["bad_files"][0].endswith(f"{names[0]}.txt: not a text file (bytes that are not UTF-8)")


@pytest.mark.parametrize("cls", ["1", "-1", "0.5", "7"])
def test_class_out_of_range_is_an_error(tmp_path, cls):
    seq, names = make_sequence(tmp_path, 0, frames=2, labels={1: BOX + f"{cls} 0.5 0.5 0.1 0.1\n"})
    make_tree(tmp_path, ids=["8"])
    with pytest.raises(FredDataError, match=rf"{names[1]}\.txt:2: class id .* NUM_CLASSES"):
        build_fred_index(str(tmp_path), "event")
    if cls == "1":  # valid with two classes; the cached parse must not hide the error when NUM_CLASSES drops
        assert len(build_fred_index(str(tmp_path), "event", num_classes=2).train) == 2
        with pytest.raises(FredDataError, match="NUM_CLASSES"):
            build_fred_index(str(tmp_path), "event", num_classes=1)


def test_boxes_clipped_and_empty_boxes_dropped(tmp_path):
    text = ("0 0.95 0.5 0.2 0.2\n"      # right edge at 1.05: clipped to x 0.85..1.0
            "0 0.02 0.01 0.1 0.04\n"    # top-left corner outside: clipped to 0..0.07, 0..0.03
            "0 1.2 0.5 0.1 0.1\n"       # entirely right of the image: dropped
            "0 0.5 0.5 0.0 0.1\n")      # no width: dropped
    make_sequence(tmp_path, 0, frames=1, labels={0: text})
    make_tree(tmp_path, ids=["8"])
    index = build_fred_index(str(tmp_path), "event")
    np.testing.assert_allclose(index.train[0].boxes, [[0, 0.925, 0.5, 0.15, 0.2], [0, 0.035, 0.015, 0.07, 0.03]],
                               atol=1e-6)
    assert index.stats["dropped_boxes"] == 2


def test_boxes_far_outside_the_image_are_dropped_and_named(tmp_path):
    text = (BOX +
            "0 0.5 0.5 1e30 1e30\n"     # absurd size: dropped, not clipped to the whole frame
            "0 -3 0.5 0.1 0.1\n"        # centre far left of the image: dropped
            "0 1.005 0.5 0.1 0.1\n"     # centre just outside (rounding): clipped to x 0.955..1.0
            "0 0.5 0.5 0.0 0.1\n")      # no width: dropped, not implausible
    seq, names = make_sequence(tmp_path, 0, frames=2, labels={1: text})
    make_tree(tmp_path, ids=["8"])
    index = build_fred_index(str(tmp_path), "event")
    np.testing.assert_allclose(index.train[1].boxes, [[0, 0.5, 0.5, 0.1, 0.2], [0, 0.9775, 0.5, 0.045, 0.1]],
                               atol=1e-6)
    assert index.stats["dropped_boxes"] == 3
    label = os.path.join(seq, "Event_YOLO", names[1] + ".txt")
    assert index.stats["implausible_boxes"] == [
        f"{label}:2: box '0 0.5 0.5 1e+30 1e+30' lies far outside the image (centre or size beyond [0, 1]): dropped",
        f"{label}:3: box '0 -3 0.5 0.1 0.1' lies far outside the image (centre or size beyond [0, 1]): dropped"]


def test_label_file_with_too_many_boxes_is_suspicious(tmp_path):
    seq, names = make_sequence(tmp_path, 0, frames=3, labels={2: BOX * 150})
    make_tree(tmp_path, ids=["8"])
    index = build_fred_index(str(tmp_path), "event")
    assert [len(f.boxes) for f in index.train] == [1, 1, 150]  # kept, but reported
    label = os.path.join(seq, "Event_YOLO", names[2] + ".txt")
    assert index.stats["suspicious_label_files"] == [
        f"{label}: 150 boxes in one frame (more than {fred_index.MAX_PLAUSIBLE_BOXES}): check the file"]
    assert build_fred_index(str(tmp_path), "event", frame_stride=2).stats["suspicious_label_files"] == [
        f"{label}: 150 boxes in one frame (more than {fred_index.MAX_PLAUSIBLE_BOXES}): check the file"]
    assert build_fred_index(str(tmp_path), "event", frame_stride=3).stats["suspicious_label_files"] == []


def test_symlink_loops_and_dangling_links_are_reported_and_skipped(tmp_path):
    seq0, names0 = make_sequence(tmp_path, 0, frames=4)
    make_tree(tmp_path, ids=["8", "9", "10"])
    os.symlink("5", tmp_path / "5")                   # a sequence folder that is a symlink loop
    os.symlink("nowhere", tmp_path / "6")             # a sequence folder whose target is gone
    labels = os.path.join(seq0, "Event_YOLO")
    os.remove(os.path.join(labels, names0[1] + ".txt"))
    os.symlink("gone.txt", os.path.join(labels, names0[1] + ".txt"))   # dangling label file
    os.remove(os.path.join(labels, names0[2] + ".txt"))
    os.symlink(names0[2] + ".txt", os.path.join(labels, names0[2] + ".txt"))  # looping label file
    seq10_labels = tmp_path / "10" / "Event_YOLO"
    shutil.rmtree(seq10_labels)
    os.symlink("Event_YOLO", seq10_labels)              # a label folder that is a symlink loop

    for _ in range(2):  # the second time from the index cache
        index = build_fred_index(str(tmp_path), "event")
        assert index.train_sequences == ["0"] and index.val_sequences == ["8", "9"]
        assert stems(index.train) == [names0[0], names0[3]]
        assert sorted(index.stats["unreadable_folders"]) == [
            f"{tmp_path / '10'}: {seq10_labels}: Too many levels of symbolic links",
            f"{tmp_path / '5'}: Too many levels of symbolic links",
            f"{tmp_path / '6'}: symbolic link to a missing target"]
        assert sorted(index.stats["bad_files"]) == [
            f"{os.path.join(labels, names0[1])}.txt: cannot read the label file (No such file or directory)",
            f"{os.path.join(labels, names0[2])}.txt: cannot read the label file (Too many levels of symbolic links)"]
    assert index.stats["cached_sequences"] == 3


def test_missing_split_sequences_warn_with_ids(tmp_path, caplog):
    root = make_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="datasets.fred_index"):
        index = build_fred_index(root, "event")
    assert len(index.stats["missing_sequences"]) == 231 - 4
    message = [r.getMessage() for r in caplog.records if "not under" in r.getMessage()]
    assert len(message) == 1 and message[0].startswith("227 sequences of split 'canonical'")
    missing = sorted(set(range(231)) - {int(i) for i in IDS})
    assert message[0].endswith("-230") and f" {missing[0]}-" in message[0]
    listed = set()
    for part in message[0].split("ids: ")[1].split():
        a, _, b = part.partition("-")
        listed.update(range(int(a), int(b or a) + 1))
    assert listed == set(missing)


def test_empty_train_or_val_is_an_error(tmp_path):
    make_tree(tmp_path, ids=["0", "10"])  # canonical train only
    with pytest.raises(FredDataError, match="no val sequences under"):
        build_fred_index(str(tmp_path), "event")
    make_sequence(tmp_path, 8, labels={0: None, 1: None, 2: None})  # a val sequence, but nothing annotated
    with pytest.raises(FredDataError, match="no usable val frames.*3 images have no label file"):
        build_fred_index(str(tmp_path), "event")


def test_no_sequences_message_says_where_it_looked(tmp_path):
    with pytest.raises(FredDataError, match=rf"no FRED sequences found under {tmp_path}.*tools.synthetic"):
        build_fred_index(str(tmp_path), "event")
    with pytest.raises(FredDataError, match="is not a folder"):
        build_fred_index(str(tmp_path / "absent"), "event")
    seq, _ = make_sequence(tmp_path, 0)
    with pytest.raises(FredDataError, match="looks like one sequence folder"):
        build_fred_index(seq, "event")


def test_cache_hit_does_not_parse_and_changes_are_picked_up(tmp_path, monkeypatch):
    seq, names = make_sequence(tmp_path, 0, frames=5)
    make_tree(tmp_path, ids=["8"])
    calls = []
    real_parse = fred_index.parse_label_file
    monkeypatch.setattr(fred_index, "parse_label_file", lambda path: calls.append(path) or real_parse(path))
    root = str(tmp_path)
    first = build_fred_index(root, "event")
    assert len(calls) == 8 and first.stats["parsed_sequences"] == 2
    assert os.path.isfile(first.stats["cache_file"]) and "/.fred_index_cache/" in first.stats["cache_file"]

    calls.clear()
    second = build_fred_index(root, "event")
    assert calls == [] and second.stats["cached_sequences"] == 2
    assert stems(second.train) == stems(first.train)
    np.testing.assert_array_equal(np.concatenate([f.boxes for f in second.train]),
                                  np.concatenate([f.boxes for f in first.train]))

    label = os.path.join(seq, "Event_YOLO", names[2] + ".txt")
    stat = os.stat(label)
    with open(label, "w") as f:
        f.write("0 0.2 0.3 0.1 0.2\n")  # same size as BOX: only the mtime tells
    os.utime(label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    third = build_fred_index(root, "event")
    assert len(calls) == 5  # only sequence 0 parsed again
    np.testing.assert_allclose(third.train[2].boxes, [[0, 0.2, 0.3, 0.1, 0.2]], atol=1e-6)

    cv2.imwrite(os.path.join(seq, "Event", "Frames", "Video_0_999999.png"), IMAGE)
    with open(os.path.join(seq, "Event_YOLO", "Video_0_999999.txt"), "w") as f:
        f.write("")
    fourth = build_fred_index(root, "event")
    assert stems(fourth.train)[-1] == "Video_0_999999" and len(fourth.train) == 6

    os.remove(os.path.join(seq, "Event", "Frames", names[0] + ".png"))
    fifth = build_fred_index(root, "event")
    assert names[0] not in stems(fifth.train) and len(fifth.train) == 5 and fifth.stats["parsed_sequences"] == 1


def test_damaged_cache_is_rebuilt(tmp_path, caplog):
    root = make_tree(tmp_path)
    cache_dir = str(tmp_path / "elsewhere")
    first = build_fred_index(root, "event", cache_dir=cache_dir)
    assert first.stats["cache_file"].startswith(cache_dir)
    with open(first.stats["cache_file"], "wb") as f:
        f.write(b"\x80\x05not a pickle")
    with caplog.at_level(logging.WARNING, logger="datasets.fred_index"):
        second = build_fred_index(root, "event", cache_dir=cache_dir)
    assert second.stats["parsed_sequences"] == 4 and len(second.train) == len(first.train)
    assert any("unreadable index cache" in r.getMessage() for r in caplog.records)
    assert build_fred_index(root, "event", cache_dir=cache_dir).stats["parsed_sequences"] == 0


@pytest.mark.parametrize("modality", ["rgb", "event"])
def test_counts_equal_the_generators_truth(tmp_path, modality):
    from tools.synthetic import generate_fred
    manifest = generate_fred(str(tmp_path), sequences=4, frames=6, seed=3, size=(36, 64))
    index = build_fred_index(str(tmp_path), modality)
    assert sorted(index.train_sequences + index.val_sequences, key=int) == [str(i) for i in manifest["ids"]]
    assert index.val_sequences and index.train_sequences
    for sid, entry in manifest["sequences"].items():
        truth = entry[modality]
        frames = [f for f in index.train + index.val if f.sequence == sid]
        assert len(frames) == truth["annotated"]
        assert sum(len(f.boxes) for f in frames) == truth["boxes"]
        assert sum(len(f.boxes) == 0 for f in frames) == truth["empty"]
        assert stems(frames) == sorted(stems(frames), key=natural_key)
    assert index.stats["unlabeled_frames"] == manifest["totals"][modality]["unlabeled"]
    assert index.stats["dropped_boxes"] == 0 and index.stats["bad_files"] == []


def test_missing_ids_are_listed_as_ranges():
    from datasets.fred_index import id_ranges
    assert id_ranges(["1", "2", "3", "7", "9", "10"]) == "1-3 7 9-10"
    assert id_ranges(["5"]) == "5"
    assert id_ranges([]) == ""
