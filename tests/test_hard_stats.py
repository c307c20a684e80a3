"""tools/hard_stats.py: a drone drawn without contrast or without events is measured invisible, a clear one visible."""
import json

import cv2
import numpy as np
import pytest

from datasets.event_frames import EVENT_BACKGROUND, EVENT_POSITIVE
from tools import hard_stats
from tools.hard_stats import (EVENT_VISIBLE, RGB_VISIBLE, content_mask, event_excess, event_pixels, main, measure,
                              rgb_contrast, summarise)
from tools.synthetic import generate_fred

BOX = np.array([[60, 40, 72, 52]])   # a 12 x 12 px drone box


def noisy_sky(seed: int = 0, sigma: float = 6.0) -> np.ndarray:
    """A 120 x 160 grey sky, BGR uint8, with Gaussian sensor noise."""
    rng = np.random.default_rng(seed)
    return np.clip(150 + rng.normal(0, sigma, (120, 160, 3)), 0, 255).astype(np.uint8)


def test_rgb_contrast_of_no_drone_and_of_a_drone():
    sky = noisy_sky()
    assert rgb_contrast(sky, BOX)[0] < 0.3 < RGB_VISIBLE          # nothing drawn: the box is like its ring
    drone = sky.copy()
    drone[42:50, 61:71] = np.clip(drone[42:50, 61:71].astype(int) - 30, 0, 255)   # 5 sigma darker, half the box
    assert rgb_contrast(drone, BOX)[0] > 1.5 * RGB_VISIBLE
    faint = sky.copy()
    faint[42:50, 61:71] = np.clip(faint[42:50, 61:71].astype(int) - 3, 0, 255)    # half a sigma darker
    assert rgb_contrast(faint, BOX)[0] < RGB_VISIBLE
    green = sky.copy()
    green[42:50, 62:70, 1] = 230                                      # visible in one channel only
    assert rgb_contrast(green, BOX)[0] > RGB_VISIBLE


def test_rgb_ring_leaves_out_the_padding():
    """PADDED_RGB: a drone at the edge of the camera's picture is not hidden by the black padding beside its ring."""
    frame = np.zeros((140, 200, 3), np.uint8)
    frame[10:130, 20:180] = noisy_sky()
    box = np.array([[22, 60, 32, 70]])
    frame[62:68, 23:31] -= 60
    mask = content_mask(frame)
    assert mask[10:130, 20:180].all() and mask.sum() == 120 * 160
    assert rgb_contrast(frame, box)[0] > 2 * RGB_VISIBLE
    assert rgb_contrast(frame, box, np.ones(frame.shape[:2], bool))[0] < RGB_VISIBLE   # the padding counted


def event_frame(density: float, seed: int = 0) -> np.ndarray:
    """A 120 x 160 event frame (BGR) with noise events at `density` of the pixels."""
    rng = np.random.default_rng(seed)
    frame = np.empty((120, 160, 3), np.uint8)
    frame[:] = EVENT_BACKGROUND[::-1]
    frame[rng.random((120, 160)) < density] = EVENT_POSITIVE[::-1]
    return frame


def test_event_box_without_events_is_invisible_and_with_events_visible():
    frame = event_frame(0.01)
    frame[40:52, 60:72] = EVENT_BACKGROUND[::-1]                      # a drone that fires nothing
    z, n, lam = event_excess(event_pixels(frame), BOX)
    assert n[0] == 0 and z[0] < EVENT_VISIBLE and 0.5 < lam[0] < 3   # 144 px at 1 %
    frame[44:48, 62:70] = EVENT_POSITIVE[::-1]                       # 32 event pixels: its edges and propellers
    z, n, _ = event_excess(event_pixels(frame), BOX)
    assert n[0] == 32 and z[0] > 3 * EVENT_VISIBLE
    rain = event_frame(0.25, seed=1)                                  # a box no denser than the rain around it
    assert event_excess(event_pixels(rain), BOX)[0][0] < EVENT_VISIBLE
    quiet = event_frame(0.0)
    quiet[44:46, 62:64] = EVENT_POSITIVE[::-1]                        # 4 events and no noise: barely visible
    assert event_excess(event_pixels(quiet), BOX)[0][0] == pytest.approx(4.0)


@pytest.fixture(scope="module")
def hard_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard_stats")
    manifest = generate_fred(str(root), 4, 6, seed=0, size=(180, 320), ids=[0, 8, 13, 39], profile="hard")
    return root, manifest


def test_measure_a_generated_tree_and_tampered_frames(hard_tree, tmp_path):
    """Every labelled box is measured once; blanking an event frame makes its drones invisible; an RGB drone painted
    over with its ring's colour is invisible, painted black on a day sky it is visible."""
    root, manifest = hard_tree
    records = {m: measure(str(root), m) for m in ("rgb", "event")}
    for modality, folder in (("rgb", "RGB_YOLO"), ("event", "Event_YOLO")):
        labelled = sum(len(p.read_text().split("\n")) - 1 for p in root.glob(f"*/{folder}/*.txt"))
        assert len(records[modality]) == labelled > 0
        assert {r["split"] for r in records[modality]} == {"train", "val"}
    seen = [r for r in records["event"] if r["visible"] and "night" not in r["tags"]]
    target = seen[0]
    path = root / target["sequence"] / "Event" / "Frames" / f"{target['stem']}.png"
    blank = cv2.imread(str(path))
    blank[:] = EVENT_BACKGROUND[::-1]
    cv2.imwrite(str(path), blank)
    after = [r for r in measure(str(root), "event") if r["stem"] == target["stem"]]
    assert after and not any(r["visible"] for r in after)

    day = [r for r in records["rgb"] if manifest["sequences"][r["sequence"]]["condition"] in ("clear", "overcast")]
    target = day[0]
    path = root / target["sequence"] / "PADDED_RGB" / f"{target['stem']}.jpg"
    label = root / target["sequence"] / "RGB_YOLO" / f"{target['stem']}.txt"
    image = cv2.imread(str(path))
    boxes = hard_stats._pixel_boxes(np.array([list(map(float, ln.split())) for ln in label.read_text().splitlines()]),
                                    image.shape[:2])
    for value, check in ((None, lambda r: not r["visible"]), (0, lambda r: r["visible"])):
        painted = image.copy()
        for x1, y1, x2, y2 in boxes:
            ring = painted[max(0, y1 - 4):y2 + 4, max(0, x1 - 4):x2 + 4].reshape(-1, 3)
            painted[y1:y2, x1:x2] = np.median(ring, 0) if value is None else value
        cv2.imwrite(str(path), painted, [cv2.IMWRITE_JPEG_QUALITY, 100])
        now = [r for r in measure(str(root), "rgb") if r["stem"] == target["stem"]]
        assert now and all(check(r) for r in now)


def test_summary_and_cli(hard_tree, tmp_path, capsys):
    root, manifest = hard_tree
    records = [{"split": "train", "value": 0.5, "visible": False, "tags": {"all", "night", "size=small"}},
               {"split": "train", "value": 2.0, "visible": True, "tags": {"all", "size=small"}},
               {"split": "val", "value": 4.0, "visible": True, "tags": {"all", "size=medium"}}]
    s = summarise(records)
    assert s["train"]["all"] == {"boxes": 2, "invisible": 0.5, "median": 1.25}
    assert s["train"]["night"]["invisible"] == 1.0 and "night" not in s["val"]
    assert s["all"]["all"]["boxes"] == 3 and s["val"]["size=medium"]["median"] == 4.0
    out = tmp_path / "stats.json"
    assert main([str(root), "--json", str(out), "--stride", "2"]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"rgb", "event"} and set(result["rgb"]) == {"train", "val", "all"}
    printed = capsys.readouterr().out
    assert "invisible = contrast < 1" in printed and "invisible = z < 3" in printed
    with pytest.raises(SystemExit):
        main([str(root), "--modality", "depth"])


def test_default_profile_tree_takes_night_and_rain_from_its_sequences(tmp_path):
    manifest = generate_fred(str(tmp_path), 5, 4, seed=0, size=(96, 160), ids=[0, 8, 13, 25, 39])
    records = measure(str(tmp_path), "event")
    assert records
    for r in records:
        condition = manifest["sequences"][r["sequence"]]["condition"]
        assert ("night" in r["tags"]) == (condition == "night") and ("rain" in r["tags"]) == (condition == "rain")
    assert any("night" in r["tags"] for r in records) and any("rain" in r["tags"] for r in records)
