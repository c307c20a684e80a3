"""Generated FRED (tools/synthetic.py): layout and names of released FRED, counts, determinism, exact boxes."""
import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from tools import synthetic
from tools.synthetic import (DRONE_MODELS, EVENT_PALETTE, MANIFEST_NAME, default_ids, generate_fred, main,
                             plan_sequence, render_sequence)

SIZE = (96, 160)     # (height, width)
FRAMES = 24
IDS = [3, 8, 12, 40]  # canonical: 8 and 12 are test (val) ids, 3 and 40 train
RGB_NAME = re.compile(r"^Video_(\d+)_(\d\d)_(\d\d)_(\d\d)\.(\d{6})\.jpg$")
EVENT_NAME = re.compile(r"^Video_(\d+)_(frame_)?(\d+)\.png$")
COORD_LINE = re.compile(r"^(\d+\.\d+): (\d+\.0), (\d+\.0), (\d+\.0), (\d+\.0), (\d+), (.+)$")


def natural_key(name: str) -> list:
    """Sort key with the numeric parts of a name as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def tree_digest(root: Path, pattern: str = "**/*") -> dict[str, str]:
    """sha1 of every file under root matching pattern, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.glob(pattern)) if p.is_file()}


def read_boxes(label: Path, size: tuple[int, int]) -> np.ndarray:
    """Pixel boxes x1, y1, x2, y2 [N, 4] of a YOLO label file."""
    h, w = size
    rows = [list(map(float, line.split())) for line in label.read_text().splitlines() if line.strip()]
    out = np.zeros((len(rows), 4))
    for i, (cls, cx, cy, bw, bh) in enumerate(rows):
        assert cls == 0
        out[i] = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("fred")
    manifest = generate_fred(str(root), len(IDS), FRAMES, seed=0, size=SIZE, ids=IDS)
    return root, manifest


def test_layout_and_names(tree):
    root, manifest = tree
    assert manifest["ids"] == IDS and sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(map(str, IDS))
    namings = set()
    for sid in IDS:
        seq = root / str(sid)
        for d in ("RGB", "PADDED_RGB", "RGB_YOLO", "Event/Frames", "Event_YOLO", "Removed_frames"):
            assert (seq / d).is_dir(), d
        rgb = sorted(p.name for p in (seq / "RGB").iterdir())
        assert rgb == sorted(p.name for p in (seq / "PADDED_RGB").iterdir())
        assert len(rgb) == FRAMES
        for name in rgb:
            m = RGB_NAME.match(name)
            assert m and int(m.group(1)) == sid, name
        removed = sorted(p.name for p in (seq / "Removed_frames").iterdir())
        assert removed and all(RGB_NAME.match(n) for n in removed) and not set(removed) & set(rgb)
        events = [p.name for p in (seq / "Event/Frames").iterdir()]
        for name in events:
            m = EVENT_NAME.match(name)
            assert m and int(m.group(1)) == sid, name
            namings.add(bool(m.group(2)))
        stems_rgb, stems_ev = {n[:-4] for n in rgb}, {n[:-4] for n in events}
        assert {p.stem for p in (seq / "RGB_YOLO").iterdir()} <= stems_rgb
        assert {p.stem for p in (seq / "Event_YOLO").iterdir()} <= stems_ev
        img = cv2.imread(str(seq / "PADDED_RGB" / rgb[0]), cv2.IMREAD_UNCHANGED)
        ev = cv2.imread(str(seq / "Event/Frames" / events[0]), cv2.IMREAD_UNCHANGED)
        raw = cv2.imread(str(seq / "RGB" / rgb[0]), cv2.IMREAD_UNCHANGED)
        assert img.shape == ev.shape == raw.shape == (*SIZE, 3) and ev.dtype == np.uint8
    assert namings == {True, False}, "both event namings (microseconds and frame_<n>) must occur"


def test_event_frames_outnumber_rgb_and_natural_order(tree):
    root, manifest = tree
    for sid in IDS:
        seq = root / str(sid)
        events = [p.name for p in (seq / "Event/Frames").iterdir()]
        n_rgb = len(list((seq / "PADDED_RGB").iterdir()))
        assert len(events) > n_rgb + len(list((seq / "Removed_frames").iterdir()))
        natural = sorted(events, key=natural_key)
        if manifest["sequences"][str(sid)]["event_naming"] == "microseconds":
            assert natural != sorted(events), "names must need natural sorting"
        stamps = [int(EVENT_NAME.match(n).group(3)) % 100_000_000 for n in natural]
        assert stamps == [k * 1_000_000 // 30 for k in range(1, len(events) + 1)]
        rgb_us = []
        for n in [p.name for d in ("RGB", "Removed_frames") for p in (seq / d).iterdir()]:
            _, hh, mm, ss, us = RGB_NAME.match(n).groups()
            rgb_us.append(((int(hh) * 60 + int(mm)) * 60 + int(ss)) * 1_000_000 + int(us))
        steps = np.diff(sorted(rgb_us))
        assert steps.min() >= 33_333 and steps.max() <= 33_334


def test_coordinates_file(tree):
    root, manifest = tree
    names = {m.name for m in DRONE_MODELS}
    two_at_once = False
    for sid in IDS:
        lines = (root / str(sid) / "coordinates.txt").read_text().splitlines()
        assert lines
        times = []
        for line in lines:
            m = COORD_LINE.match(line)
            assert m, line
            x1, y1, x2, y2 = map(float, m.group(2, 3, 4, 5))
            assert 0 <= x1 < x2 <= SIZE[1] and 0 <= y1 < y2 <= SIZE[0]
            assert m.group(7) in names and int(m.group(6)) >= 1
            times.append(m.group(1))
        two_at_once |= len(times) > len(set(times))
        assert set(manifest["sequences"][str(sid)]["drones"]) <= names
    assert two_at_once, "one sequence must have two drones at one time"


def test_manifest_counts_match_disk(tree):
    root, manifest = tree
    totals = {m: dict.fromkeys(("images", "annotated", "empty", "boxes", "unlabeled"), 0) for m in ("rgb", "event")}
    for sid in IDS:
        seq = root / str(sid)
        for modality, images, labels in (("rgb", "PADDED_RGB", "RGB_YOLO"), ("event", "Event/Frames", "Event_YOLO")):
            stems = {p.stem for p in (seq / images).iterdir()}
            files = list((seq / labels).iterdir())
            counts = {"images": len(stems), "annotated": len(files),
                      "empty": sum(1 for f in files if not f.read_text().strip()),
                      "boxes": sum(len(f.read_text().splitlines()) for f in files),
                      "unlabeled": len(stems - {f.stem for f in files})}
            assert manifest["sequences"][str(sid)][modality] == counts, (sid, modality)
            assert counts["unlabeled"] >= 1, "every sequence has frames without a label file"
            for key in counts:
                totals[modality][key] += counts[key]
        assert len(list((seq / "Removed_frames").iterdir())) == manifest["sequences"][str(sid)]["removed"]
    assert manifest["totals"] == totals
    assert totals["rgb"]["empty"] > 0 and totals["event"]["empty"] > 0
    assert totals["rgb"]["boxes"] > totals["rgb"]["annotated"] / 2 and totals["event"]["boxes"] > 0
    on_disk = synthetic.json.loads((root / MANIFEST_NAME).read_text())
    assert on_disk == manifest


def test_deterministic_for_a_seed(tree, tmp_path):
    root, _ = tree
    again = tmp_path / "again"
    other = tmp_path / "other"
    generate_fred(str(again), len(IDS), FRAMES, seed=0, size=SIZE, ids=IDS)
    generate_fred(str(other), len(IDS), FRAMES, seed=1, size=SIZE, ids=IDS)
    first = tree_digest(root)
    assert first == tree_digest(again)
    labels = "*/*_YOLO/*.txt"
    assert tree_digest(root, labels) != tree_digest(other, labels)
    assert tree_digest(root, "*/PADDED_RGB/*") != tree_digest(other, "*/PADDED_RGB/*")


def _rendered(manifest: dict, sid: int):
    plan = plan_sequence(sid, manifest["ids"].index(sid), manifest["frames"], manifest["seed"], tuple(manifest["size"]))
    return plan, list(render_sequence(plan))


def test_rgb_boxes_tightly_cover_drone_pixels(tree):
    root, manifest = tree
    checked = 0
    for sid in IDS:
        plan, steps = _rendered(manifest, sid)
        seq = root / str(sid)
        for r in steps:
            if r.rgb is None or (r.step - 1) in plan.removed:
                continue
            name = plan.rgb_name(r.step - 1)
            disk = cv2.imread(str(seq / "PADDED_RGB" / name))
            assert cv2.PSNR(disk, r.rgb) > 25, "the rendered frame is the written frame (up to JPEG)"
            x0, y0, cw, ch = plan.content
            outside = np.ones(SIZE, bool)
            outside[y0:y0 + ch, x0:x0 + cw] = False
            assert disk[outside].mean() < 4, "padding around the RGB field of view is black"
            label = seq / "RGB_YOLO" / (name[:-4] + ".txt")
            if not label.exists():
                continue
            boxes = read_boxes(label, SIZE)
            masks = [m for m in r.rgb_masks if m.mask.any()]
            assert len(boxes) == len(masks)
            for m in masks:
                ys, xs = np.nonzero(m.full(SIZE))
                tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                assert np.abs(boxes - tight).max(1).min() < 1e-6, (name, boxes, tight)
                assert x0 <= tight[0] and tight[2] <= x0 + cw and y0 <= tight[1] and tight[3] <= y0 + ch
                checked += 1
    assert checked > 20


EVENT_BACKGROUND_BGR = EVENT_PALETTE[0][::-1]


def test_event_boxes_hold_the_drone_events(tree):
    root, manifest = tree
    n_boxes = with_events = 0
    inside = outside = inside_px = outside_px = 0
    seen = set()
    for sid in IDS:
        plan, steps = _rendered(manifest, sid)
        seq = root / str(sid)
        for before, r in zip(steps, steps[1:]):
            name = plan.event_name(r.step)
            ev = cv2.imread(str(seq / "Event/Frames" / name))
            assert np.array_equal(ev, r.event), "the rendered frame is the written frame"
            seen |= {tuple(int(v) for v in c[::-1]) for c in np.unique(ev.reshape(-1, 3), axis=0)}
            label = seq / "Event_YOLO" / (name[:-4] + ".txt")
            if not label.exists():
                continue
            boxes = read_boxes(label, SIZE)
            assert np.abs(boxes - boxes.round()).max(initial=0) < 1e-6
            active = np.any(ev != EVENT_BACKGROUND_BGR, axis=2)
            in_box = np.zeros(SIZE, bool)
            for x1, y1, x2, y2 in boxes.round().astype(int):
                in_box[y1:y2, x1:x2] = True
                n_boxes += 1
                with_events += bool(active[y1:y2, x1:x2].any())
            drones = [m for m in before.drone_masks + r.drone_masks if m.mask.any()]
            for m in drones:   # every drone pixel at either end of the 33 ms window lies in a box
                assert in_box[m.full(SIZE)].all(), name
            assert len(boxes) == len({i for i, (a, b) in enumerate(zip(before.drone_masks, r.drone_masks))
                                      if a.mask.any() or b.mask.any()})
            inside += active[in_box].sum()
            inside_px += in_box.sum()
            outside += active[~in_box].sum()
            outside_px += (~in_box).sum()
    assert seen == set(EVENT_PALETTE), "event frames use exactly FRED's three colours"
    assert n_boxes > 20 and with_events == n_boxes, f"{n_boxes - with_events} of {n_boxes} event boxes hold no event"
    assert inside / inside_px > 10 * outside / outside_px, "events concentrate on the drones"


def test_full_size_drones_are_small_and_rgb_is_harder():
    plan = plan_sequence(3, 0, 8, 0, (720, 1280))
    widths, rgb_contrast, event_density = [], [], []
    for r in render_sequence(plan):
        widths += [b[2] - b[0] for _, b in r.coord_boxes]
        if r.step and r.event_boxes:
            x1, y1, x2, y2 = r.event_boxes[0]
            active = np.any(r.event[y1:y2, x1:x2] != EVENT_BACKGROUND_BGR, axis=2)
            event_density.append(active.mean())
        if r.rgb is not None and r.rgb_boxes:
            x1, y1, x2, y2 = r.rgb_boxes[0]
            patch = cv2.cvtColor(r.rgb[max(0, y1 - 6):y2 + 6, max(0, x1 - 6):x2 + 6], cv2.COLOR_BGR2GRAY) / 255.0
            rgb_contrast.append(float(patch.max() - patch.min()))
    assert widths and 8 <= min(widths) and max(widths) <= 64
    assert np.mean(event_density) > 0.1
    assert np.mean(rgb_contrast) < 0.8


def test_default_ids_give_train_and_val():
    train = {int(t.strip("/")) for t in (synthetic.SPLIT_DIR / "train_split.txt").read_text().split()}
    test = {int(t.strip("/")) for t in (synthetic.SPLIT_DIR / "test_split.txt").read_text().split()}
    for n in (2, 4, 6, 10, 23, 40):
        ids = default_ids(n)
        assert len(set(ids)) == n and set(ids) <= train | test
        val = len(set(ids) & test)
        assert val >= 1 and n - val >= 1
        if n >= 4:
            assert 0.15 <= val / n <= 0.34
    with pytest.raises(ValueError):
        default_ids(232)


def test_cli_and_rewrite(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--sequences", "2", "--frames", "6", "--width", "128", "--height", "64",
                 "--workers", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert "wrote 2 sequences" in line and "\n" not in line
    manifest = synthetic.json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["size"] == [64, 128] and len(manifest["ids"]) == 2
    # a second run over our own tree replaces it: no stale frames or sequences left behind
    main(["--out", str(out), "--ids", "5,8", "--frames", "4", "--width", "128", "--height", "64", "--workers", "2"])
    manifest = synthetic.json.loads((out / MANIFEST_NAME).read_text())
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["5", "8"]
    assert len(list((out / "5" / "PADDED_RGB").iterdir())) == manifest["sequences"]["5"]["rgb"]["images"] == 4
    foreign = tmp_path / "foreign"
    (foreign / "7").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        generate_fred(str(foreign), 1, 4, size=(64, 128), ids=[7])
    with pytest.raises(ValueError):
        generate_fred(str(tmp_path / "bad"), 2, 4, size=(64, 128), ids=[7])


# sha1 over the relative paths of generate_fred(d, 4, 6, seed=0, size=(72, 128), ids=[3, 8, 12, 40])'s files, the
# label files' text and the PNG frames' decoded pixels (lossless: no encoder build enters; JPEG bytes and pixels are
# left out for that reason), computed with the generator before the hard profile existed (commit 49f4a96)
DEFAULT_TREE_SHA1 = "0ffd0be403ba0c20354701b019a9c5b1cac1c314"


def test_default_profile_output_unchanged(tmp_path):
    """The default profile (tests, the demo, the benches) draws and draws out exactly what it did before."""
    generate_fred(str(tmp_path), 4, 6, seed=0, size=(72, 128), ids=[3, 8, 12, 40])
    digest = hashlib.sha1()
    for path in sorted(tmp_path.glob("**/*")):
        if not path.is_file() or path.suffix == ".json":
            continue
        digest.update(str(path.relative_to(tmp_path)).encode())
        if path.suffix == ".txt":
            digest.update(path.read_bytes())
        elif path.suffix == ".png":
            digest.update(cv2.imread(str(path), cv2.IMREAD_UNCHANGED).tobytes())
    assert digest.hexdigest() == DEFAULT_TREE_SHA1


HARD_IDS = [2, 3, 8, 9, 12, 50]   # canonical: 8, 9 and 12 are test (val) ids; at seed 0 2 is night, 3 rain


@pytest.fixture(scope="module")
def hard_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("fred_hard")
    assert main(["--out", str(root), "--ids", ",".join(map(str, HARD_IDS)), "--frames", "8", "--width", "320",
                 "--height", "180", "--workers", "1", "--profile", "hard"]) == 0
    return root, synthetic.json.loads((root / MANIFEST_NAME).read_text())


def test_hard_profile_flag_and_domain_shift(hard_tree):
    _, manifest = hard_tree
    assert manifest["profile"] == "hard"
    test = set(synthetic._read_split("test_split.txt"))
    for sid, entry in manifest["sequences"].items():
        val = int(sid) in test
        assert entry["split"] == ("val" if val else "train")
        conditions = synthetic.HARD_VAL_CONDITIONS if val else synthetic.HARD_TRAIN_CONDITIONS
        backgrounds = synthetic.HARD_VAL_BACKGROUNDS if val else synthetic.HARD_TRAIN_BACKGROUNDS
        assert entry["condition"] in conditions and entry["background"] in backgrounds


def test_hard_train_and_val_conditions_as_designed():
    """As FRED's canonical split: night, rain and insects on both sides; sunset and buildings in val only; each
    side's conditions in turn; the bench's 24 sequences hold night and rain in val."""
    test = set(synthetic._read_split("test_split.txt"))
    ids = synthetic._read_split("train_split.txt") + sorted(test)
    plans = [plan_sequence(sid, i, 4, 0, (72, 128), "hard") for i, sid in enumerate(ids)]
    side = {"train": [p for p in plans if not p.hard.val], "val": [p for p in plans if p.hard.val]}
    assert [p.seq_id in test for p in side["val"]] == [True] * len(test)
    conditions = {k: {p.condition for p in v} for k, v in side.items()}
    backgrounds = {k: {p.background for p in v} for k, v in side.items()}
    assert conditions == {"train": {"clear", "overcast", "night", "rain"},
                          "val": {"clear", "overcast", "night", "rain", "sunset"}}
    assert backgrounds == {"train": {"treeline", "field", "sky"}, "val": {"treeline", "field", "sky", "buildings"}}
    for v in side.values():   # balanced: no condition holds more than its turn (plus one) of a side
        counts = [sum(p.condition == c for p in v) for c in {p.condition for p in v}]
        assert max(counts) - min(counts) <= 1
        assert 0.2 < np.mean([p.hard.insects > 0 for p in v]) < 0.6
    bench = [plan_sequence(sid, i, 4, 0, (72, 128), "hard") for i, sid in enumerate(default_ids(24))]
    assert {"night", "rain"} <= {p.condition for p in bench if p.hard.val}


def test_hard_deterministic_for_a_seed(hard_tree, tmp_path):
    root, _ = hard_tree
    args = ["--ids", ",".join(map(str, HARD_IDS)), "--frames", "8", "--width", "320", "--height", "180",
            "--workers", "1", "--profile", "hard"]
    assert main(["--out", str(tmp_path / "again")] + args) == 0
    assert main(["--out", str(tmp_path / "other"), "--seed", "1"] + args) == 0
    frames = "*/Event/Frames/*"
    assert tree_digest(root, "*/*_YOLO/*") == tree_digest(tmp_path / "again", "*/*_YOLO/*")
    assert tree_digest(root, frames) == tree_digest(tmp_path / "again", frames)
    assert tree_digest(root, frames) != tree_digest(tmp_path / "other", frames)


def test_hard_hovering_drone_keeps_propeller_events():
    """A hovering drone still fires events from its propellers (HOVER_PROPELLER), fewer than in flight."""
    from tools.hard_stats import event_excess, event_pixels

    plan = plan_sequence(25, 0, 60, 0, (360, 640), "hard")   # hovers a third of the time (still props: 39% fire)
    assert plan.hard.hover > 0 and synthetic.HOVER_PROPELLER > 0
    counts = {True: [], False: []}   # event pixels in the drone's box, hovering or not
    for r in render_sequence(plan):
        if r.event is not None and len(r.event_boxes) == 1 and r.conditions["size"] != "none":
            counts[r.conditions["hovering"]].append(event_excess(event_pixels(r.event), np.array(r.event_boxes))[1][0])
    hover, flight = np.array(counts[True]), np.array(counts[False])
    assert hover.size >= 5 and flight.size >= 5
    assert np.mean(hover > 0) > 0.8 and np.median(hover) < np.median(flight) / 2


def test_hard_manifest_records_conditions_per_frame(hard_tree):
    root, manifest = hard_tree
    seen = set()
    for sid, entry in manifest["sequences"].items():
        for modality, folder, ext in (("rgb", "PADDED_RGB", ".jpg"), ("event", "Event/Frames", ".png")):
            stems = {p.stem for p in (root / sid / folder).iterdir()}
            assert set(entry["frames"][modality]) == stems
            for stem, rec in entry["frames"][modality].items():
                assert set(rec) == {"night", "rain", "hovering", "size", "occluded"}
                assert rec["night"] == (entry["condition"] == "night") and rec["rain"] == entry["hard"]["rain"]
                label = root / sid / f"{'RGB' if modality == 'rgb' else 'Event'}_YOLO" / f"{stem}.txt"
                if label.exists() and modality == "event" and rec["size"] != "none":   # a drone in view is labelled
                    assert label.read_text().strip()
                seen |= {k for k, v in rec.items() if v is True} | {rec["size"]}
    assert {"night", "rain", "hovering"} <= seen and seen & {"tiny", "small"}


def test_hard_labels_inside_the_image(hard_tree):
    root, manifest = hard_tree
    h, w = manifest["size"]
    n = 0
    for label in root.glob("*/*_YOLO/*.txt"):
        boxes = read_boxes(label, (h, w))
        assert (boxes[:, :2] >= -1e-6).all() and (boxes[:, 2] <= w + 1e-6).all() and (boxes[:, 3] <= h + 1e-6).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        n += len(boxes)
    assert n > 50


def test_hard_drones_are_tiny_at_1280():
    widths = []
    for i, sid in enumerate(HARD_IDS):   # the drones' widths as planned (px at 1280), all steps
        plan = plan_sequence(sid, i, 60, 0, (720, 1280), "hard")
        widths += [t["width"] for t in synthetic._drone_tracks(np.random.default_rng(0), plan, 0.8)]
    widths = np.concatenate(widths)
    assert 6 <= np.median(widths) <= 30 and widths.min() >= 3.5 and widths.max() <= 60
    plan = plan_sequence(3, 0, 4, 0, (360, 640), "hard")
    drawn = [(b[2] - b[0]) * 2 for r in render_sequence(plan) for _, b in r.coord_boxes]   # boxes as drawn
    assert drawn and 4 <= np.median(drawn) <= 34
    with pytest.raises(ValueError):
        plan_sequence(3, 0, 4, 0, (64, 128), "extreme")


def test_hard_occluded_drone_keeps_its_label():
    plan = plan_sequence(50, 5, 30, 0, (180, 320), "hard")   # a sequence whose drone passes behind the pole
    assert plan.hard.occluder
    a, fx0, fy0 = synthetic._foreground(plan, None)
    occluded = 0
    for r in render_sequence(plan):
        shares = [synthetic._hidden_share(m, a, fx0, fy0) for m in r.drone_masks]
        if r.conditions["occluded"]:
            occluded += 1
            assert max(shares) >= synthetic.OCCLUDED_FRACTION
            assert len(r.coord_boxes) == sum(m.mask.any() for m in r.drone_masks), "an occluded drone is labelled"
    assert occluded > 0
