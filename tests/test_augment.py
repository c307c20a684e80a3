"""Training samples with augmentation: boxes stay on the drones through Mosaic, Mixup, affine and flip; tiny boxes
are dropped; validation letterbox; bad images; collate; set_epoch across persistent DataLoader workers; randomness."""
import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import config_fred
import build_fred
from datasets.augment import (HSV_KEY, Augmentation, apply_affine, augment_hsv, box_candidates, clip_boxes_xyxy,
                              flip_horizontal, hsv_draw, random_affine_matrix, resize_axis_aligned, source_window,
                              transform_boxes_xyxy, transform_clip_boxes_xyxy, warp_affine)
from datasets.fred_dataset import FredDataset, collate_fred
from datasets.gpu_augment import BatchHSV, hsv_jitter_rgb, jittered_float
from datasets.mosaic import boxes_cxcywh_norm_to_xyxy, mixup_images, mosaic4, mosaic_centre
from speed import compiled
from speed.compiled import build_batch_transform
from utils import device_batches
from utils.config import config_dict
from utils.letterbox import boxes_xyxy_original_to_letterbox, letterbox

NO_HSV = (0.0, 0.0, 0.0)
STRONG = 30    # G - max(R, B) above this: a drone pixel (backgrounds and grey padding are <= 0, see _background)
WEAK = 4       # a box must hold a pixel above this: some drone in it (a blurred sliver may stay below STRONG)
TOL = 1.5      # pixels: bilinear bleed at scale <= 2 is below 1 px


@dataclass
class FakeFrame:
    """The two attributes of datasets.fred_index.Frame that the dataset reads."""
    image: str
    boxes: np.ndarray


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth dark BGR texture with G <= min(R, B) - 5: no blend of backgrounds or grey looks like a drone."""
    small = rng.uniform(30, 70, (4, 5, 2)).astype(np.float32)
    rb = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(30, 70)
    g = np.maximum(rb.min(axis=2) - 5, 0)
    return np.stack([rb[..., 1], g, rb[..., 0]], axis=2).astype(np.uint8)


def _draw_frame(rng: np.random.Generator, h: int, w: int, n_drones: int, ellipses: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
    """BGR image with n_drones pure green rectangles (or ellipses, 8-18 px) and their normalised labels."""
    img = _background(rng, h, w)
    labels = []
    for k in range(n_drones):
        mask = np.zeros((h, w), np.uint8)
        dw, dh = rng.integers(8, 19, 2)
        # drone k lives in its own horizontal band so drones of one image do not overlap; some touch the border
        x0 = int(rng.integers(-3, w - dw + 4))
        band = h // n_drones
        y0 = int(rng.integers(k * band - 2, max(k * band - 1, (k + 1) * band - dh + 2)))
        if not ellipses or rng.random() < 0.5:
            cv2.rectangle(mask, (x0, y0), (x0 + int(dw) - 1, y0 + int(dh) - 1), 1, -1)
        else:
            cv2.ellipse(mask, (x0 + int(dw) // 2, y0 + int(dh) // 2), (int(dw) // 2, int(dh) // 2), 0, 0, 360, 1, -1)
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        img[mask > 0] = (0, 255, 0)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        labels.append([0, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h])
    return img, np.array(labels, np.float32).reshape(-1, 5)


def _make_frames(tmp_path, n: int, seed: int = 0, ellipses: bool = True) -> list[FakeFrame]:
    """n tiny frames on disk, landscape 64x48 and portrait 48x64, with 0-2 drones each."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        h, w = (48, 64) if i % 2 == 0 else (64, 48)
        img, labels = _draw_frame(rng, h, w, n_drones=int(rng.integers(0, 3)) if i % 5 else 2, ellipses=ellipses)
        path = str(tmp_path / f"frame_{seed}_{i:03d}.png")
        cv2.imwrite(path, img)
        frames.append(FakeFrame(path, labels))
    return frames


def _strength(img: np.ndarray, rgb: bool) -> np.ndarray:
    """Per pixel G - max(R, B): how much it looks like a drone."""
    img = img.astype(np.int16)
    r, b = (img[..., 0], img[..., 2]) if rgb else (img[..., 2], img[..., 0])
    return img[..., 1] - np.maximum(r, b)


def _check_boxes_on_drones(img: np.ndarray, boxes_xyxy: np.ndarray, rgb: bool, tight: bool,
                           max_dropped_area: float) -> tuple[int, int]:
    """Assert drone pixels lie in boxes and boxes hold drone pixels; returns (drone pixels, uncovered pixels).

    A drone whose box was dropped (cropped to < 10% of its area or < 2 px) may leave a small uncovered remnant:
    such components must be thin or smaller than max_dropped_area. tight: each box is touched by drone pixels on
    all four sides (holds for axis-aligned transforms).
    """
    h, w = img.shape[:2]
    s = _strength(img, rgb)
    strong = s > STRONG
    covered = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in boxes_xyxy:
        assert -1e-3 <= x1 < x2 <= w + 1e-3 and -1e-3 <= y1 < y2 <= h + 1e-3, (x1, y1, x2, y2)  # float32 cxcywh
        covered[max(int(np.floor(y1 - TOL)), 0):int(np.ceil(y2 + TOL)),
                max(int(np.floor(x1 - TOL)), 0):int(np.ceil(x2 + TOL))] = True
        inner = s[int(y1):int(np.ceil(y2)), int(x1):int(np.ceil(x2))]
        assert inner.max() > WEAK, f"box {(x1, y1, x2, y2)} holds no drone pixels"
        if tight:
            ys, xs = np.nonzero(strong[max(int(np.floor(y1 - TOL)), 0):int(np.ceil(y2 + TOL)),
                                       max(int(np.floor(x1 - TOL)), 0):int(np.ceil(x2 + TOL))])
            ox, oy = max(int(np.floor(x1 - TOL)), 0), max(int(np.floor(y1 - TOL)), 0)
            if min(x2 - x1, y2 - y1) > 3:  # thinner boxes may hold only blended (weak) pixels
                assert len(xs) > 0
                xs, ys = xs + ox, ys + oy
                assert xs.min() <= x1 + TOL and xs.max() + 1 >= x2 - TOL, (x1, x2, xs.min(), xs.max() + 1)
                assert ys.min() <= y1 + TOL and ys.max() + 1 >= y2 - TOL, (y1, y2, ys.min(), ys.max() + 1)
    uncovered = (strong & ~covered).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(uncovered, connectivity=8)
    for k in range(1, n):
        cw, ch, area = stats[k, cv2.CC_STAT_WIDTH], stats[k, cv2.CC_STAT_HEIGHT], stats[k, cv2.CC_STAT_AREA]
        assert min(cw, ch) <= 3 or area <= max_dropped_area, f"uncovered drone blob {cw}x{ch}, {area} px"
    return int(strong.sum()), int(uncovered.sum())


def _xyxy(item_boxes: torch.Tensor) -> np.ndarray:
    """[N, 5] cls, cx, cy, w, h -> [N, 4] xyxy numpy."""
    b = item_boxes.numpy().astype(np.float64)
    return np.stack([b[:, 1] - b[:, 3] / 2, b[:, 2] - b[:, 4] / 2, b[:, 1] + b[:, 3] / 2, b[:, 2] + b[:, 4] / 2], 1)


def _hwc(item: dict) -> np.ndarray:
    """Item image as RGB HWC numpy."""
    return item["image"].permute(1, 2, 0).numpy()


# largest drone 18x18 px at letterbox ratio <= 4/3 and scale gain <= 1.5, rotated <= 15 deg: a dropped box keeps
# under 10% of that envelope (plus bleed along its outline)
MAX_DROPPED = 0.1 * (18 * 4 / 3 * 1.5 * 1.3) ** 2 + 40


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return _make_frames(tmp_path_factory.mktemp("frames"), 12)


@pytest.fixture(scope="module")
def rect_frames(tmp_path_factory):
    return _make_frames(tmp_path_factory.mktemp("rect_frames"), 12, seed=1, ellipses=False)


@pytest.mark.parametrize("name,kwargs", [
    ("mosaic", dict(mosaic=True, mosaic_prob=1.0)),
    ("mixup", dict(mosaic=True, mosaic_prob=0.5, mixup=True, mixup_prob=1.0)),
    ("affine_flip", dict(mosaic=False)),
    ("mosaic_rotate", dict(mosaic=True, mosaic_prob=0.5, degrees=15.0)),
])
@pytest.mark.parametrize("input_shape", [(64, 64), (64, 96)])
@pytest.mark.parametrize("shapes", ["rectangles", "rectangles_and_ellipses"])
def test_training_boxes_cover_drone_pixels(frames, rect_frames, name, kwargs, input_shape, shapes):
    tight = shapes == "rectangles" and not kwargs.get("degrees")
    frames = rect_frames if shapes == "rectangles" else frames
    total = missed = n_boxes = 0
    for seed in range(30):
        ds = FredDataset(frames, input_shape, Augmentation(hsv=NO_HSV, flip_lr=0.5, translate=0.2, scale=0.5,
                                                                   **kwargs), seed=seed)
        for i in (seed % len(frames), (seed * 7 + 3) % len(frames)):
            item = ds[i]
            assert item["image"].shape == (3, *input_shape) and item["image"].dtype == torch.uint8
            assert item["boxes"].dtype == torch.float32 and item["boxes"].shape[1] == 5
            boxes = _xyxy(item["boxes"])
            assert (item["boxes"][:, 3:] >= ds.augmentation.min_box_size).all()
            t, m = _check_boxes_on_drones(_hwc(item), boxes, rgb=True, tight=tight, max_dropped_area=MAX_DROPPED)
            total, missed, n_boxes = total + t, missed + m, n_boxes + len(boxes)
    assert n_boxes > 40 and total > 2000  # the check saw real drones
    assert missed <= 0.03 * total, (missed, total)


def test_each_stage_keeps_boxes_on_drones():
    """Mosaic alone, affine alone, Mixup alone and flip alone, called directly."""
    rng = np.random.default_rng(5)
    out_shape = (64, 80)
    checked = 0
    for _ in range(25):
        imgs, labels = zip(*[_draw_frame(rng, *((48, 64) if k % 2 else (64, 48)), 2, ellipses=False)
                             for k in range(4)])
        canvas, boxes, uncropped = mosaic4(list(imgs), list(labels), out_shape, mosaic_centre(rng, out_shape))
        assert canvas.shape == (128, 160, 3)
        np.testing.assert_array_equal(boxes[:, 0], np.concatenate(labels)[:, 0])
        keep = box_candidates(uncropped, boxes[:, 1:], 2.0)
        _check_boxes_on_drones(canvas, boxes[keep, 1:], rgb=False, tight=True, max_dropped_area=0.1 * 18 * 18 + 20)
        matrix = random_affine_matrix(rng, (80.0, 64.0), out_shape, degrees=0, translate=0.2, scale=0.5)
        warped, kept = apply_affine(canvas, matrix, out_shape, boxes, uncropped, 2.0)
        _check_boxes_on_drones(warped, kept[:, 1:], rgb=False, tight=True, max_dropped_area=MAX_DROPPED)
        img2, lab2 = _draw_frame(rng, 64, 80, 2, ellipses=False)
        b2 = boxes_cxcywh_norm_to_xyxy(lab2, 80, 64)
        mixed, mboxes = mixup_images(warped, kept, img2, b2.astype(np.float32), rng)
        assert len(mboxes) == len(kept) + len(b2)
        _check_boxes_on_drones(mixed, mboxes[:, 1:], rgb=False, tight=True, max_dropped_area=MAX_DROPPED)
        flipped, fboxes = flip_horizontal(mixed, mboxes)
        np.testing.assert_array_equal(flipped, mixed[:, ::-1])
        _check_boxes_on_drones(flipped, fboxes[:, 1:], rgb=False, tight=True, max_dropped_area=MAX_DROPPED)
        checked += len(fboxes)
    assert checked > 50


def test_rotation_moves_box_corners_with_pixels():
    """A rotated square's pixel extent equals the envelope of its rotated corners."""
    img = np.zeros((40, 40, 3), np.uint8)
    img[10:30, 12:28] = (0, 255, 0)
    boxes = np.array([[0, 12, 10, 28, 30]], np.float64)
    matrix = random_affine_matrix(np.random.default_rng(0), (20.0, 20.0), (60, 60), degrees=30, translate=0, scale=0)
    out, kept = apply_affine(img, matrix, (60, 60), boxes, boxes[:, 1:], 2.0)
    ys, xs = np.nonzero(_strength(out, rgb=False) > 127)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], kept[0, 1:], atol=1.0)
    assert kept[0, 3] - kept[0, 1] > 16 + 1  # it really rotated


def test_tiny_boxes_are_dropped():
    before = np.array([[0, 0, 10, 10]] * 5, np.float64)
    after = np.array([[0, 0, 10, 10],      # untouched: kept
                      [0, 0, 1.5, 10],     # 1.5 px wide: dropped
                      [0, 0, 10, 0.9],     # under 1 px high: dropped
                      [0, 0, 3, 3],        # 9% of its area left: dropped
                      [0, 0, 4, 4]], np.float64)  # 16% left: kept
    np.testing.assert_array_equal(box_candidates(before, after, 2.0), [True, False, False, False, True])
    long = np.array([[0, 0, 100, 4.5]])
    assert not box_candidates(long, long, 2.0)[0]  # aspect 22 > 20
    assert box_candidates(long / [1, 1, 1.2, 1], long / [1, 1, 1.2, 1], 2.0)[0]  # aspect 18.5

    # a translation that pushes a drone almost out of the frame drops its box; one half out keeps the visible half
    img = np.full((50, 50, 3), 40, np.uint8)
    boxes = np.array([[0, 20, 20, 30, 30], [0, 5, 5, 15, 15]], np.float64)
    shift = np.array([[1.0, 0, -29.5], [0, 1, 0], [0, 0, 1]])  # first box keeps 0.5 px, second goes out
    _, kept = apply_affine(img, shift, (50, 50), boxes, boxes[:, 1:], 2.0)
    assert len(kept) == 0
    shift[0, 2] = -25.0
    _, kept = apply_affine(img, shift, (50, 50), boxes, boxes[:, 1:], 2.0)
    np.testing.assert_allclose(kept, [[0, 0, 20, 5, 30]])

    # rotated, a box with no width (a drone cropped away by the mosaic) or a 1 px sliver has an envelope wider than
    # 2 px but nothing in it: dropped; the full-width box is kept
    rotate = random_affine_matrix(np.random.default_rng(0), (25.0, 25.0), (50, 50), degrees=30, translate=0, scale=0)
    assert abs(rotate[0, 1]) > 0.1
    slivers = np.array([[0, 20, 10, 20, 40], [0, 20, 10, 21, 40], [0, 20, 10, 30, 40]], np.float64)
    envelopes = transform_boxes_xyxy(slivers[:, 1:], rotate)
    assert (envelopes[:2, 2] - envelopes[:2, 0] > 4).all()
    _, kept = apply_affine(img, rotate, (50, 50), slivers, slivers[:, 1:], 2.0)
    np.testing.assert_allclose(kept[:, 1:], envelopes[2:], atol=1e-4)


def test_mosaic_crop_drops_slivers(tmp_path):
    """Through the dataset: no box under min_box_size or far out of its drone, over many mosaic crops."""
    frames = _make_frames(tmp_path, 6, seed=3)
    widths = []
    for seed in range(40):
        ds = FredDataset(frames, (64, 64), Augmentation(mosaic_prob=1.0, hsv=NO_HSV, translate=0.3, scale=0.5,
                                                      min_box_size=4.0), seed=seed)
        boxes = ds[seed % 6]["boxes"]
        widths.append(boxes[:, 3:].min().item() if len(boxes) else np.inf)
    assert min(widths) >= 4.0


def test_validation_sample_is_exact_letterbox(frames):
    ds = FredDataset(frames, (64, 96))
    for i in range(len(frames)):
        item = ds[i]
        img = cv2.imread(frames[i].image)
        expected, ratio, pad = letterbox(img, (64, 96))
        np.testing.assert_array_equal(_hwc(item), expected[:, :, ::-1])  # RGB
        assert item["index"] == i and item["orig_shape"] == img.shape[:2]
        assert item["ratio"] == ratio and item["pad"] == pad
        h0, w0 = img.shape[:2]
        gt = boxes_cxcywh_norm_to_xyxy(frames[i].boxes, w0, h0)[:, 1:]
        np.testing.assert_allclose(_xyxy(item["boxes"]), boxes_xyxy_original_to_letterbox(gt, ratio, pad), atol=1e-4)
        _check_boxes_on_drones(_hwc(item), _xyxy(item["boxes"]), rgb=True, tight=True, max_dropped_area=0)
        np.testing.assert_array_equal(item["boxes"][:, 0].numpy(), frames[i].boxes[:, 0])


def test_bad_image_is_replaced_and_logged(tmp_path, frames, caplog):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png at all")
    bad = [FakeFrame(str(tmp_path / "missing.png"), np.zeros((0, 5), np.float32)),
           FakeFrame(str(corrupt), np.array([[0, 0.5, 0.5, 0.2, 0.2]], np.float32))]
    mixed = [frames[0]] + bad + list(frames[1:4])
    log = tmp_path / "bad_images.txt"
    val = FredDataset(mixed, (64, 64), bad_image_log=str(log))
    item = val[1]
    assert item["index"] == 3  # both bad frames skipped, the next readable one returned
    reference = val[3]
    assert torch.equal(item["image"], reference["image"]) and torch.equal(item["boxes"], reference["boxes"])
    lines = log.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [bad[0].image, bad[1].image]
    assert all(len(line.split("\t")[1]) > 0 for line in lines)
    assert "missing.png" in caplog.text

    train = FredDataset(mixed, (64, 64), Augmentation(mosaic_prob=1.0, mixup=True, mixup_prob=1.0), bad_image_log=None)
    for seed in range(20):  # mosaic and mixup partners hit the bad frames too
        train.seed = seed
        assert train[seed % len(mixed)]["image"].shape == (3, 64, 64)


def test_only_bad_images_raise_naming_the_path(tmp_path):
    bad = [FakeFrame(str(tmp_path / f"gone_{i}.png"), np.zeros((0, 5), np.float32)) for i in range(3)]
    ds = FredDataset(bad, (64, 64), Augmentation(), bad_image_log=str(tmp_path / "log.txt"))
    with pytest.raises(RuntimeError, match="gone_1.png"):
        ds[2]
    assert len((tmp_path / "log.txt").read_text().splitlines()) == 3


def test_collate_shapes_and_dtypes(frames):
    ds = FredDataset(frames, (64, 96))
    items = [ds[i] for i in range(5)]
    batch = collate_fred(items)
    assert batch["images"].shape == (5, 3, 64, 96) and batch["images"].dtype == torch.uint8
    assert ds.image_shape == (64, 96, 3) == tuple(items[0]["image"].permute(1, 2, 0).shape)  # what a batch ring holds
    assert batch["images"].is_contiguous(memory_format=torch.channels_last)  # NHWC: no transposing copy
    assert torch.equal(batch["images"], torch.stack([it["image"] for it in items]))
    lb = cv2.cvtColor(letterbox(cv2.imread(str(frames[2].image)), (64, 96))[0], cv2.COLOR_BGR2RGB)
    assert np.array_equal(items[2]["image"].permute(1, 2, 0).numpy(), lb)  # RGB, letterboxed
    for channels_last in (True, False):
        x = device_batches.images_to_device(batch["images"], torch.device("cpu"), channels_last)
        assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert torch.equal(x, batch["images"].float() / 255)
    counts = [len(it["boxes"]) for it in items]
    assert 0 in counts and sum(counts) > 0  # the batch mixes negatives and drones
    t = batch["targets"]
    assert t.dtype == torch.float32 and t.shape == (sum(counts), 6)
    np.testing.assert_array_equal(t[:, 0].numpy(), np.repeat(np.arange(5), counts))
    torch.testing.assert_close(t[:, 1:], torch.cat([it["boxes"] for it in items]))
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == [0, 1, 2, 3, 4]
    assert batch["orig_shapes"].dtype == torch.long and batch["orig_shapes"].shape == (5, 2)
    assert batch["orig_shapes"][1].tolist() == [64, 48]
    assert batch["ratios"].dtype == torch.float32 and batch["ratios"].shape == (5,)
    assert batch["pads"].dtype == torch.float32 and batch["pads"].shape == (5, 2)
    assert batch["pads"][0].tolist() == [list(it["pad"]) for it in items][0]


def _solid_frames(tmp_path, n: int) -> tuple[list[FakeFrame], np.ndarray]:
    """n frames of one flat colour each (48x64); returns frames and their RGB colours [n, 3]."""
    colours = np.array([[10 + 20 * k, 200 - 15 * k, 60 + 9 * k] for k in range(n)], np.uint8)  # RGB
    frames = []
    for k, c in enumerate(colours):
        path = str(tmp_path / f"solid_{k}.png")
        cv2.imwrite(path, np.full((48, 64, 3), c[::-1], np.uint8))
        frames.append(FakeFrame(path, np.zeros((0, 5), np.float32)))
    return frames, colours


def _frames_seen(images: torch.Tensor, colours: np.ndarray) -> list[int]:
    """For each image [B, 3, H, W], how many of the frame colours appear in it."""
    img = images.permute(0, 2, 3, 1).numpy()
    return [int(sum((im == c).all(-1).any() for c in colours)) for im in img]


def test_set_epoch_reaches_persistent_workers(tmp_path):
    frames, colours = _solid_frames(tmp_path, 8)
    ds = FredDataset(frames, (64, 64), Augmentation(mosaic_prob=1.0, hsv=NO_HSV, flip_lr=0.0, translate=0.0,
                                                  scale=0.0))
    loader = DataLoader(ds, batch_size=8, num_workers=2, persistent_workers=True, collate_fn=collate_fred)
    seen = {}
    for epoch, special in [(0, True), (1, False), (2, True)]:
        ds.set_epoch(epoch, special)
        seen[epoch] = [n for batch in loader for n in _frames_seen(batch["images"], colours)]
    assert sum(n >= 2 for n in seen[0]) >= 6 and sum(n >= 2 for n in seen[2]) >= 6  # mosaics
    assert seen[1] == [1] * 8  # single letterboxed frames only


def test_randomness_is_seeded_per_epoch_without_global_state(frames):
    def sample(seed: int, epoch: int) -> torch.Tensor:
        ds = FredDataset(frames, (64, 64), Augmentation(mixup=True, mixup_prob=0.5, degrees=5.0), seed=seed)
        ds.set_epoch(epoch, True)
        return torch.stack([ds[i]["image"] for i in range(4)])

    state = np.random.get_state()
    a = sample(0, 0)
    assert np.random.get_state()[1].tolist() == state[1].tolist()  # global numpy state untouched
    assert torch.equal(a, sample(0, 0))
    assert not torch.equal(a, sample(0, 1))
    assert not torch.equal(a, sample(1, 0))


def test_a_samples_randomness_depends_on_seed_epoch_and_index_only(frames):
    """Sample i (its mosaic and Mixup partners included) is the same whatever came before it, in any order and from
    any number of DataLoader workers: a run resumed in mid-epoch hands the rest of the epoch to other workers."""
    ds = FredDataset(frames, (64, 64), Augmentation(mosaic_prob=0.5, mixup=True, mixup_prob=0.5, degrees=5.0), seed=3)
    ds.set_epoch(2, True)
    order = [5, 0, 7, 3, 11, 1, 8, 2]
    reference = collate_fred([ds[i] for i in order])
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=2, sampler=order, num_workers=workers, collate_fn=collate_fred)
        batches = list(loader)
        assert torch.equal(torch.cat([b["images"] for b in batches]), reference["images"]), workers
        assert torch.equal(torch.cat([b["index"] for b in batches]), reference["index"])
    assert torch.equal(collate_fred([ds[i] for i in reversed(order)])["images"], reference["images"].flip(0))


def test_hsv_jitter():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    img[:4] = 114  # grey rows stay grey
    np.testing.assert_array_equal(augment_hsv(img, (0.0, 0.0, 0.0), rng), img)
    out = augment_hsv(img, (0.5, 0.7, 0.4), np.random.default_rng(1))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() > 5
    grey = out[:4].reshape(-1, 3)
    assert (grey.max(1) - grey.min(1) <= 1).all()
    np.testing.assert_array_equal(out, augment_hsv(img, (0.5, 0.7, 0.4), np.random.default_rng(1)))
    # value gain alone scales brightness and keeps hue order of channels
    bright = augment_hsv(img, (0.0, 0.0, 0.4), np.random.default_rng(2))
    ratio = bright[4:].astype(float).sum() / img[4:].astype(float).sum()
    assert 0.55 < ratio < 1.45 and abs(ratio - 1) > 0.01


def _rgb_batch(img_bgr: np.ndarray) -> torch.Tensor:
    """uint8 BGR HWC -> float RGB [1, 3, H, W] in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(img_bgr[:, :, ::-1])).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("gains", [(0.015, 0.7, 0.4), (0.5, 0.7, 0.4), (0.0, 0.0, 0.4)])
def test_hsv_jitter_on_batches_matches_opencv(gains):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    img[:6], img[6:12], img[12:18] = 114, 0, 255  # grey, black, white rows
    for seed in range(4):
        ref = augment_hsv(img, gains, np.random.default_rng(seed))[:, :, ::-1]  # RGB
        jitter = torch.tensor(hsv_draw(gains, np.random.default_rng(seed)), dtype=torch.float32)[None]
        out = hsv_jitter_rgb(_rgb_batch(img), jitter)[0].permute(1, 2, 0).numpy()
        diff = np.abs(np.round(out * 255) - ref)
        assert diff.mean() < 1.0 and diff.max() <= 8, (seed, diff.mean(), diff.max())  # OpenCV: 8-bit, 180 hues
    x = _rgb_batch(img).contiguous(memory_format=torch.channels_last)
    same = hsv_jitter_rgb(x, torch.zeros(1, 3))
    torch.testing.assert_close(same, x, rtol=0, atol=1e-6)
    assert same.is_contiguous(memory_format=torch.channels_last)


def test_hsv_in_batch_keeps_the_geometry_and_matches_the_worker_jitter(frames):
    kwargs = dict(mosaic=True, mosaic_prob=0.5, hsv=(0.015, 0.7, 0.4), flip_lr=0.5, translate=0.2, scale=0.5)
    cpu = FredDataset(frames, (64, 64), Augmentation(**kwargs), seed=5)
    gpu = FredDataset(frames, (64, 64), Augmentation(hsv_in_batch=True, **kwargs), seed=5)
    items_cpu, items_gpu = [cpu[i] for i in range(6)], [gpu[i] for i in range(6)]
    assert all(HSV_KEY not in it for it in items_cpu)
    batch = collate_fred(items_gpu)
    assert batch[HSV_KEY].shape == (6, 3) and batch[HSV_KEY].abs().sum() > 0
    transform = build_batch_transform(gpu.augmentation, compiled=False)
    assert isinstance(transform, BatchHSV) and build_batch_transform(cpu.augmentation, compiled=True) is None
    images, targets = device_batches.to_device(batch, torch.device("cpu"), False, transform)
    ref_images, ref_targets = device_batches.to_device(collate_fred(items_cpu), torch.device("cpu"), channels_last=False)
    assert torch.equal(targets, ref_targets)  # the same random draws: the same crops, flips and boxes
    diff = (images - ref_images).abs() * 255
    assert diff.mean() < 1.0 and diff.max() <= 8.5
    assert (images - batch["images"].float() / 255).abs().mean() * 255 > 2  # the jitter was applied


def test_the_engine_and_evaluator_leave_augmentation_to_the_batch_transform():
    """Nothing of the augmentation (nor of speed/) is imported by the training loop or the evaluator, and no HSV key
    is looked for there: the batch half of the augmentation comes in as a callable."""
    import ast
    import inspect

    from evaluation import evaluator, val_loss
    from training import engine
    for module in (engine, evaluator, val_loss, device_batches):
        source = inspect.getsource(module)
        imported = [n.module or "" for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith(("datasets", "speed"))], (module.__name__, imported)
        assert "hsv" not in source.lower(), module.__name__


def _uint8_batch_and_jitter(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [4, 3, 48, 64] NHWC in memory (collate_fred's layout) and HSV jitter [4, 3], on device."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 48, 64, 3), dtype=torch.uint8, generator=gen).permute(0, 3, 1, 2)
    jitter = (torch.rand(4, 3, generator=gen) - 0.5) * torch.tensor([0.03, 1.4, 0.8])
    return images.to(device), jitter.to(device)


def _compiled_hsv() -> BatchHSV:
    """The batch transform of HSV_ON_GPU with HSV_COMPILE."""
    return build_batch_transform(Augmentation(hsv_in_batch=True), compiled=True)


def test_compiled_batch_hsv_falls_back_to_eager_when_compiling_fails(monkeypatch, caplog):
    calls = []

    def broken_compile(fn, **kwargs):
        def compiled_fn(*args):
            calls.append(kwargs)
            raise RuntimeError("Cannot find a working triton installation")
        return compiled_fn

    monkeypatch.setattr(compiled.torch, "compile", broken_compile)
    batch_hsv = _compiled_hsv()
    images, jitter = _uint8_batch_and_jitter("cpu")
    expected = jittered_float(images, jitter, True)
    for _ in range(2):
        out = batch_hsv({"images": images, HSV_KEY: jitter}, torch.device("cpu"), True)
        assert torch.equal(out, expected) and out.is_contiguous(memory_format=torch.channels_last)
    assert calls == [{"dynamic": False}]  # tried once, then eager for good
    assert "torch.compile of jittered_float failed, running it eagerly: RuntimeError: Cannot find" in caplog.text
    assert build_batch_transform(Augmentation(hsv_in_batch=True), compiled=False).fn is jittered_float


def test_compiled_batch_hsv_falls_back_when_torch_compile_itself_refuses(monkeypatch, caplog):
    def refuse(fn, **kwargs):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(compiled.torch, "compile", refuse)
    batch_hsv = _compiled_hsv()  # building never raises: compiling waits for the first call
    images, jitter = _uint8_batch_and_jitter("cpu")
    assert torch.equal(batch_hsv.fn(images, jitter, False), jittered_float(images, jitter, False))
    assert "running it eagerly: RuntimeError: torch.compile is not supported" in caplog.text


@pytest.mark.parametrize("wrapped", [False, True])
def test_compiled_batch_hsv_passes_out_of_memory_on(monkeypatch, wrapped):
    """An OOM, raised directly or wrapped by the compiler (as its cause), propagates; compiling is not given up."""
    def compile_oom(fn, **kwargs):
        def compiled_fn(*args):
            oom = torch.cuda.OutOfMemoryError("CUDA out of memory")
            if wrapped:
                raise RuntimeError("backend compiler failed") from oom
            raise oom
        return compiled_fn

    monkeypatch.setattr(compiled.torch, "compile", compile_oom)
    batch_hsv = _compiled_hsv()
    for _ in range(2):
        with pytest.raises((torch.cuda.OutOfMemoryError, RuntimeError)) as info:
            batch_hsv.fn(*_uint8_batch_and_jitter("cpu"), True)
        assert isinstance(info.value if not wrapped else info.value.__cause__, torch.cuda.OutOfMemoryError)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile's Triton kernels need CUDA")
@pytest.mark.parametrize("channels_last", [True, False])
def test_compiled_batch_hsv_equals_eager_on_cuda(channels_last, caplog):
    images, jitter = _uint8_batch_and_jitter("cuda")
    out = _compiled_hsv()({"images": images, HSV_KEY: jitter}, torch.device("cuda"), channels_last)
    expected = jittered_float(images, jitter, channels_last)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert out.stride() == expected.stride()
    assert "failed" not in caplog.text  # really compiled, no fallback


def test_transform_boxes_matches_pixels_for_pure_scale_translate():
    m = np.array([[1.5, 0, 3.0], [0, 1.5, -2.0], [0, 0, 1]])
    np.testing.assert_allclose(transform_boxes_xyxy(np.array([[2.0, 4.0, 6.0, 8.0]]), m), [[6.0, 4.0, 12.0, 10.0]])
    img = np.zeros((20, 20, 3), np.uint8)
    img[4:8, 2:6] = 255
    out, kept = apply_affine(img, m, (30, 30), np.array([[0, 2.0, 4.0, 6.0, 8.0]]), np.array([[2.0, 4.0, 6.0, 8.0]]), 2)
    ys, xs = np.nonzero(out[..., 0] > 127)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], kept[0, 1:], atol=0.75)


@pytest.mark.parametrize("gain", [2.0, 0.5, 4 / 3])
def test_warp_affine_uses_pixel_centre_convention_like_resize(gain):
    """A pure scale through warp_affine gives cv2.resize's pixels (same half-pixel convention as the boxes)."""
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (48, 36), interpolation=cv2.INTER_CUBIC)
    out_shape = (round(36 * gain), round(48 * gain))
    out = warp_affine(img, np.diag([gain, gain, 1.0]), out_shape)
    ref = cv2.resize(img, out_shape[::-1], interpolation=cv2.INTER_LINEAR)
    inner = (slice(2, -2), slice(2, -2))  # borders differ: grey fill vs edge replication
    assert np.abs(out[inner].astype(int) - ref[inner]).max() <= 2


@pytest.mark.parametrize("degrees", [0.0, 10.0])
def test_a_mosaic_painted_only_where_the_crop_reads_crops_to_the_same_image(degrees):
    # mosaic4 paints only source_window()'s part of the canvas (the rest is left unset, here filled with noise first):
    # the crop that apply_affine makes of it is, bit for bit, the crop of the whole canvas; scales 0.3-2, crops partly
    # off the canvas too
    rng = np.random.default_rng(2)
    out_shape = (48, 64)
    labels = [np.array([[0, 0.5, 0.5, 0.3, 0.3]])] * 4
    areas = []
    for _ in range(40):
        images = [rng.integers(0, 256, (int(rng.integers(20, 90)), int(rng.integers(20, 90)), 3), dtype=np.uint8)
                  for _ in range(4)]
        centre = mosaic_centre(rng, out_shape)
        m = random_affine_matrix(rng, (64.0, 48.0), out_shape, degrees, 0.6, 0.0)
        m[:2, :2] *= rng.uniform(0.3, 2.0)
        window = source_window(m, (96, 128), out_shape)
        full, boxes, whole = mosaic4(images, labels, out_shape, centre)
        part, part_boxes, part_whole = mosaic4(images, labels, out_shape, centre, window)
        y0, y1, x0, x1 = window
        np.testing.assert_array_equal(part[y0:y1, x0:x1], full[y0:y1, x0:x1])
        np.testing.assert_array_equal(part_boxes, boxes)
        np.testing.assert_array_equal(part_whole, whole)
        part[:y0], part[y1:], part[:, :x0], part[:, x1:] = (rng.integers(0, 256, part[:y0].shape),
                                                            rng.integers(0, 256, part[y1:].shape),
                                                            rng.integers(0, 256, part[:, :x0].shape),
                                                            rng.integers(0, 256, part[:, x1:].shape))
        a = apply_affine(part, m, out_shape, boxes, whole, 2.0)
        b = apply_affine(full, m, out_shape, boxes, whole, 2.0)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        areas.append((y1 - y0) * (x1 - x0) / (96 * 128))
    assert (min(areas) < 0.3) if degrees == 0 else (min(areas) == 1.0)  # rotated: the whole canvas


def test_resize_axis_aligned_equals_warp_of_the_matrix_it_returns():
    """The resize path gives warp_affine's pixels for the matrix it reports, which is within a pixel of the one asked
    for; scales from 0.3 to 2, sources partly or wholly off the output."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)  # noise: any misplaced or edge-replicated pixel shows
    out_shape = (64, 80)
    empty = 0
    for _ in range(60):
        sx, sy = rng.uniform(0.3, 2.0, 2)
        m = np.array([[sx, 0, rng.uniform(-150, 70)], [0, sy, rng.uniform(-120, 60)], [0, 0, 1]])
        out, used = resize_axis_aligned(img, m, out_shape)
        assert out.shape == (64, 80, 3) and used[0, 1] == used[1, 0] == 0
        corners = np.array([[0.0, 0.0, 120.0, 90.0]])
        inner = clip_boxes_xyxy(transform_boxes_xyxy(corners, used), out_shape)[0]  # the image's part of the output
        seen = transform_boxes_xyxy(inner[None], np.linalg.inv(used))  # source points landing there
        assert np.abs(transform_boxes_xyxy(seen, m) - inner).max() <= 1.0  # land within a pixel of where m puts them
        ref = warp_affine(img, used, out_shape)
        whole = transform_boxes_xyxy(corners, used)[0]  # the image's edges, where they fall inside the output
        x1, y1 = (int(np.ceil(v)) + 1 if v > 0 else 0 for v in whole[:2])
        x2, y2 = (int(v) - 1 if v < size else size for v, size in zip(whole[2:], (80, 64)))
        if x2 <= x1 or y2 <= y1:
            empty += 1
            continue
        inside = (slice(y1, y2), slice(x1, x2))  # the image's own edges differ: edge replication vs grey blend
        assert np.abs(out[inside].astype(int) - ref[inside]).max() <= 2  # also where the output cuts the image
        outside = np.ones(out_shape, bool)
        outside[int(np.floor(inner[1])):int(np.ceil(inner[3])), int(np.floor(inner[0])):int(np.ceil(inner[2]))] = False
        assert (out[outside] == 114).all()
    assert empty < 30
    gray = resize_axis_aligned(img[..., :1], np.diag([1.3, 0.7, 1.0]), out_shape)[0]  # [H, W, 1] stays so
    np.testing.assert_array_equal(gray, resize_axis_aligned(img, np.diag([1.3, 0.7, 1.0]), out_shape)[0][..., :1])


def test_augmentation_defaults_are_the_configs_and_every_setting_comes_from_its_key():
    """Augmentation() holds config_fred.py's defaults; build_fred.augmentation() reads each field from the config."""
    cfg = config_dict(config_fred)
    assert build_fred.augmentation(cfg) == Augmentation()
    other = {**cfg, "MOSAIC": False, "MOSAIC_PROB": 0.25, "MIXUP": True, "MIXUP_PROB": 0.75, "HSV_H": 0.1,
             "HSV_S": 0.2, "HSV_V": 0.3, "FLIP_LR": 0.0, "DEGREES": 7.0, "TRANSLATE": 0.05, "SCALE": 0.25,
             "MIN_BOX_SIZE": 3.0, "FUSION_STREAM_DROPOUT": 0.5}
    aug = build_fred.augmentation(other, hsv_in_batch=True)
    unchanged = [f.name for f in dataclasses.fields(Augmentation) if getattr(aug, f.name) == f.default]
    assert not unchanged, unchanged
    assert aug.hsv == (0.1, 0.2, 0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        aug.mosaic = True


def test_a_dataset_with_augmentation_makes_training_samples_and_without_it_validation_samples(frames):
    val, train = FredDataset(frames, (64, 64)), FredDataset(frames, (64, 64), Augmentation(), seed=1)
    assert not val.train and train.train
    assert val[0]["index"] == 0 and not torch.equal(val[0]["image"], train[0]["image"])
    with pytest.raises(TypeError):
        FredDataset(frames, (64, 64), Augmentation(), None)  # frame_cache, bad_image_log, seed: by keyword only


def test_unaugmented_training_sample_equals_validation_letterbox(frames):
    """With every random transform off, the training path (one warp) gives the validation letterbox.

    Boxes agree within 0.5 px: training scales each axis like cv2.resize did (n_w / w0, n_h / h0), validation
    maps boxes with the one ratio of the contract, off by at most half a pixel of rounding at the far edge."""
    off = dict(mosaic=False, hsv=NO_HSV, flip_lr=0.0, degrees=0.0, translate=0.0, scale=0.0)
    train = FredDataset(frames, (64, 96), Augmentation(**off))
    val = FredDataset(frames, (64, 96))
    for i in range(len(frames)):
        t, v = train[i], val[i]
        diff = (t["image"].int() - v["image"].int()).abs().float()
        # same geometry: only interpolation rounding (1/32 px in cv2.warpAffine) at sharp drone edges, and the
        # outermost content pixels, which the warp blends with the grey border where cv2.resize replicates the edge
        assert diff.mean() < 1.0 and (diff > 2).float().mean() < 0.1
        torch.testing.assert_close(t["boxes"], v["boxes"], rtol=0, atol=0.5)
        for key in ("index", "orig_shape", "ratio", "pad"):
            assert t[key] == v[key]


@pytest.mark.parametrize("channels", [1, 5])
def test_the_geometric_steps_keep_any_channel_count_and_pad_every_channel(channels):
    """Warp (rotated and axis-aligned), mosaic and letterbox take images of any channel count [H, W, C]: the channels
    come through as they are, and what no image covers is PAD_VALUE in each of them."""
    rng = np.random.default_rng(channels)
    img = rng.integers(0, 256, (40, 60, channels), dtype=np.uint8)
    img[0] = 7  # a row of 7 in every channel: its pixels stay equal across channels through any interpolation
    box = np.array([[0, 10.0, 10.0, 30.0, 20.0]])
    for matrix in (random_affine_matrix(rng, (30.0, 20.0), (64, 64), 30.0, 0.2, 0.2),
                   np.array([[0.8, 0.0, 20.0], [0.0, 0.8, 20.0], [0.0, 0.0, 1.0]])):
        out, _ = apply_affine(img, matrix, (64, 64), box, box[:, 1:], 2.0)
        assert out.shape == (64, 64, channels) and out.dtype == np.uint8
        assert (out[0, 0] == 114).all() and (out[-1, -1] == 114).all()  # corners: border, in every channel
    canvas, _, _ = mosaic4([img] * 4, [np.zeros((0, 5))] * 4, (64, 64), mosaic_centre(rng, (64, 64)))
    assert canvas.shape == (128, 128, channels)
    padded, _, (left, top) = letterbox(img, (64, 64))
    assert padded.shape == (64, 64, channels) and (padded[:int(top)] == 114).all()
    np.testing.assert_array_equal(padded[int(top), :, 0], padded[int(top), :, -1])  # the row of 7, in all channels


def test_rotated_boxes_are_clipped_as_parallelograms():
    """transform_clip_boxes_xyxy equals the envelope of the exact intersection (cv2.intersectConvexConvex)."""
    rng = np.random.default_rng(0)
    shape = (40, 60)
    image = np.array([[0, 0], [60, 0], [60, 40], [0, 40]], np.float32)
    for _ in range(200):
        matrix = random_affine_matrix(rng, (30.0, 20.0), shape, degrees=60, translate=0.5, scale=0.5)
        xy = rng.uniform(-10, 70, (2, 2))
        box = np.concatenate([xy.min(0), xy.max(0)])[None]
        got = transform_clip_boxes_xyxy(box, matrix, shape)[0]
        tx, ty = (matrix[:2, :2] @ np.array([[box[0, 0], box[0, 2], box[0, 2], box[0, 0]],
                                             [box[0, 1], box[0, 1], box[0, 3], box[0, 3]]])) + matrix[:2, 2:]
        area, poly = cv2.intersectConvexConvex(np.stack([tx, ty], 1).astype(np.float32), image)
        if area <= 1e-6:
            assert (got[2] - got[0]) * (got[3] - got[1]) < 1e-3
            continue
        poly = poly.reshape(-1, 2)
        np.testing.assert_allclose(got, [*poly.min(0), *poly.max(0)], atol=1e-3)
        envelope = np.clip(transform_boxes_xyxy(box, matrix)[0], 0, [60, 40, 60, 40])
        assert (got[:2] >= envelope[:2] - 1e-9).all() and (got[2:] <= envelope[2:] + 1e-9).all()
    assert (transform_clip_boxes_xyxy(np.array([[5.0, 5, 5, 20]]), matrix, shape)[:, 2:] <= 60).all()


@pytest.mark.parametrize("aug, most", [(None, 2), (Augmentation(mosaic=False), 2), (Augmentation(), 8),
                                       (Augmentation(mosaic_prob=0.0), 2),
                                       (Augmentation(mixup=True, mixup_prob=0.5), 16),
                                       (Augmentation(mosaic=False, mixup=True, mixup_prob=0.5), 4)])
def test_max_boxes_per_sample_bounds_what_the_samples_hold(frames, aug, most):
    """The bound the CUDA graph's target rows are sized by: the most boxes of a frame (2 here), times 4 tiles with
    Mosaic, times 2 with Mixup; drawn samples never hold more."""
    ds = FredDataset(frames, (64, 64), aug)
    assert ds.max_boxes_per_sample() == most
    assert max(len(ds[i]["boxes"]) for i in range(len(ds))) <= most


def test_frames_without_boxes_bound_samples_at_zero_boxes(tmp_path):
    img = np.zeros((48, 64, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    ds = FredDataset([FakeFrame(str(tmp_path / "a.png"), np.zeros((0, 5), np.float32))], (64, 64), Augmentation())
    assert ds.max_boxes_per_sample() == 0
