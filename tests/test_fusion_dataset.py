"""Fused samples (FredDataset on a fusion index): 5 channels, lossless planes, one geometry for both streams."""
import dataclasses

import cv2
import numpy as np
import pytest
import torch

import datasets.fred_dataset as fred_dataset
from datasets.augment import Augmentation
from datasets.event_frames import (CAMERA, EVENT_PALETTE, EVENTS, blank_sensor, event_planes, fuse_streams, fused_bgr,
                                   fused_item_image)
from datasets.fred_dataset import FredDataset, collate_fred
from datasets.fred_index import build_fred_index
from datasets.gpu_augment import jittered_float
from datasets.image_io import read_image
from tools.synthetic import generate_fred
from utils.letterbox import letterbox_params


@pytest.fixture(scope="module")
def fusion_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion_ds") / "FRED"
    generate_fred(str(root), sequences=3, frames=8, seed=3, size=(72, 128))
    return build_fred_index(str(root), "fusion", cache_dir=str(root.parent / "idx"))


def test_event_planes_decode_the_three_colours_losslessly():
    rng = np.random.default_rng(0)
    code = rng.integers(0, 3, (9, 11))
    bgr = np.array([c[::-1] for c in EVENT_PALETTE], dtype=np.uint8)[code]
    on, off = event_planes(bgr)
    assert on.shape == off.shape == (9, 11, 1) and on.dtype == off.dtype == np.uint8
    np.testing.assert_array_equal(on[..., 0] == 255, code == 1)
    np.testing.assert_array_equal(off[..., 0] == 255, code == 2)
    assert set(np.unique(on)) | set(np.unique(off)) <= {0, 255}
    rebuilt = np.array([c[::-1] for c in EVENT_PALETTE], dtype=np.uint8)[(on[..., 0] == 255) + (off[..., 0] == 255) * 2]
    np.testing.assert_array_equal(rebuilt, bgr)


def test_a_validation_item_holds_rgb_then_the_event_planes_of_its_partner(fusion_index):
    frames = fusion_index.val
    ds = FredDataset(frames, (72, 128))  # native size: letterbox only pads, planes stay binary
    item = ds[0]
    assert item["image"].shape == (5, 72, 128) and ds.image_shape == (72, 128, 5)
    rgb, _ = read_image(frames[item["index"]].image)
    event, _ = read_image(frames[item["index"]].event_image)
    np.testing.assert_array_equal(item["image"][:3].permute(1, 2, 0).numpy(), rgb[..., ::-1])
    np.testing.assert_array_equal(item["image"][3:].permute(1, 2, 0).numpy(), np.concatenate(event_planes(event), 2))
    torch.testing.assert_close(item["boxes"][:, 1:], torch.as_tensor(frames[item["index"]].boxes[:, 1:] *
                                                                     np.array([128, 72, 128, 72]), dtype=torch.float32))


def test_every_augmentation_moves_both_streams_alike(fusion_index, monkeypatch):
    # the event stream made a copy of the RGB frame: after mosaic, affine, mixup and flip both must still agree
    monkeypatch.setattr(fred_dataset, "event_planes", lambda event: (event[..., :1], event[..., 1:2]))
    monkeypatch.setattr(fred_dataset.FredDataset, "_read_one", _rgb_for_both)
    aug = Augmentation(mosaic=True, mosaic_prob=1.0, mixup=True, mixup_prob=1.0, hsv=(0.0, 0.0, 0.0), flip_lr=0.5,
                       degrees=5.0, translate=0.2, scale=0.5)
    ds = FredDataset(fusion_index.train, (64, 64), aug, seed=1)
    for i in range(6):
        img = ds[i]["image"]  # R, G, B, then the copy's B, G (channels 0 and 1 of the BGR copy)
        assert img.shape == (5, 64, 64)
        torch.testing.assert_close(img[3], img[2])
        torch.testing.assert_close(img[4], img[1])


def _rgb_for_both(self, path, j, cache):
    """FredDataset._read_one, reading the RGB frame for the event one as well."""
    img, reason = read_image(str(self.frames[j].image))
    return img, (img.shape[0], img.shape[1]), reason


def test_hsv_touches_the_rgb_channels_only(fusion_index):
    aug = Augmentation(mosaic=False, hsv=(0.5, 0.9, 0.9), flip_lr=0.0, translate=0.0, scale=0.0)
    plain = Augmentation(mosaic=False, hsv=(0.0, 0.0, 0.0), flip_lr=0.0, translate=0.0, scale=0.0)
    a, b = FredDataset(fusion_index.train, (64, 64), aug, seed=2)[0], FredDataset(fusion_index.train, (64, 64),
                                                                               plain, seed=2)[0]
    torch.testing.assert_close(a["image"][3:], b["image"][3:])
    assert not torch.equal(a["image"][:3], b["image"][:3])
    batch = collate_fred([a, a])
    out = jittered_float(batch["images"], torch.tensor([[0.3, 0.5, 0.5]] * 2), True)
    torch.testing.assert_close(out[:, 3:], batch["images"][:, 3:].float() / 255)
    assert out.shape == (2, 5, 64, 64) and out.is_contiguous(memory_format=torch.channels_last)


def test_fused_item_image_is_rgb_then_two_planes():
    bgr, planes = np.arange(18, dtype=np.uint8).reshape(2, 3, 3), np.arange(18, 30, dtype=np.uint8).reshape(2, 3, 2)
    fused = fuse_streams(bgr, (planes[..., :1], planes[..., 1:]))
    assert [x.shape for x in fused] == [(2, 3, 4), (2, 3, 1)]  # R, G, B, ON and OFF
    out = fused_item_image(fused)
    assert out.shape == (2, 3, 5) and out.flags.c_contiguous
    np.testing.assert_array_equal(out[..., :3], bgr[..., ::-1])
    np.testing.assert_array_equal(out[..., 3:], planes)
    np.testing.assert_array_equal(fused_bgr(fused), bgr)
    for sensor, kept, gone in ((CAMERA, slice(3, 5), slice(0, 3)), (EVENTS, slice(0, 3), slice(3, 5))):
        blanked = fused_item_image(blank_sensor(fused, sensor))
        np.testing.assert_array_equal(blanked[..., kept], out[..., kept])
        assert not blanked[..., gone].any()


@pytest.mark.parametrize("side", [128, 64])
def test_fused_items_from_the_frame_caches_equal_those_from_the_files(fusion_index, tmp_path, side):
    import build_fred
    import config_fred
    from utils.config import config_dict

    cfg = {**config_dict(config_fred), "FRAME_CACHE": "disk", "FRAME_CACHE_DIR": str(tmp_path / "cache"),
           "INPUT_SHAPE": [side, side], "DATA_ROOT": str(tmp_path)}
    frames = fusion_index.val
    caches = build_fred.build_frame_caches(cfg, frames, "val", progress=False)
    event_cache = caches["event_cache"]
    event, _ = read_image(frames[0].event_image)
    if side == 128:  # the event frames' own size: their colours packed, read straight into planes
        assert event_cache.nbytes == len(frames) * 2 * 128 * 72 // 8 and not caches["frame_cache"].fused
        for cached_plane, plane in zip(event_cache.planes(0), event_planes(event)):
            np.testing.assert_array_equal(cached_plane, plane)
    else:  # smaller: one cache of the fused samples, the planes made at the frames' size, then resized
        assert event_cache is None and caches["frame_cache"].nbytes == len(frames) * 36 * 64 * 5
        assert [x.shape for x in caches["frame_cache"].get(0)] == [(36, 64, 4), (36, 64, 1)]
    cached, plain = FredDataset(frames, (side, side), **caches), FredDataset(frames, (side, side))
    for i in range(len(frames)):
        torch.testing.assert_close(cached[i]["image"], plain[i]["image"])


def _planes_as_image(self, path, j, cache):
    """FredDataset._read_one for a single-stream dataset of the event partners: their polarity planes as the image
    (resized to self.planes_side like a frame cache's frames when it is set)."""
    event, reason = read_image(str(self.partners[j]))
    planes, orig = np.concatenate([*event_planes(event), np.zeros_like(event[..., :1])], 2), event.shape[:2]
    if self.planes_side:
        planes = cv2.resize(planes, letterbox_params(orig, (self.planes_side,) * 2)[1], interpolation=cv2.INTER_LINEAR)
    return planes, orig, reason


AUGMENTATIONS = {
    "default": Augmentation(mosaic=True, mosaic_prob=0.5),
    "none": Augmentation(mosaic=False, hsv=(0.0, 0.0, 0.0), flip_lr=0.0, translate=0.0, scale=0.0),
    "flip": Augmentation(mosaic=False, flip_lr=1.0),
    "mosaic_flip": Augmentation(mosaic=True, mosaic_prob=1.0, flip_lr=1.0, hsv_in_batch=True),
    "mosaic_mixup_rotate": Augmentation(mosaic=True, mosaic_prob=1.0, mixup=True, mixup_prob=0.5, degrees=8.0),
    "single_rotate": Augmentation(mosaic=False, flip_lr=0.5, degrees=8.0),
    "dropout": Augmentation(mosaic=True, mosaic_prob=0.5, stream_dropout=0.5)}


@pytest.mark.parametrize("cached", [False, True], ids=["files", "caches"])
@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_fused_training_items_equal_each_stream_augmented_alone(fusion_index, monkeypatch, tmp_path, name, cached):
    # the fused sample is, bit for bit, the RGB frame's sample and the planes' sample of the same seed side by side
    # (HSV on the RGB channels only): the fused item of the 3 + 3-channel layout, whatever layout the augmentation
    # works in (R, G, B, ON + OFF) and whichever cache the frames come from (caches: the fused frame cache against
    # the RGB frame cache and the planes made at the frames' size, then resized, as the event cache held them);
    # with stream dropout one sensor's channels may instead be all zeros
    import build_fred
    import config_fred
    from utils.config import config_dict

    aug, frames = AUGMENTATIONS[name], fusion_index.train
    alone = [dataclasses.replace(f, event_image="") for f in frames]
    caches, rgb_cache, side = {}, None, 0
    if cached:
        side = 64
        cfg = {**config_dict(config_fred), "FRAME_CACHE": "disk", "FRAME_CACHE_DIR": str(tmp_path / "cache"),
               "INPUT_SHAPE": [side, side], "DATA_ROOT": str(tmp_path)}
        caches = build_fred.build_frame_caches(cfg, frames, "train", progress=False)
        assert caches["frame_cache"].fused
        rgb_cache = build_fred.build_frame_caches(cfg, alone, "train", progress=False)["frame_cache"]
    fused = FredDataset(frames, (64, 64), aug, seed=4, **caches)
    rgb = FredDataset(alone, (64, 64), aug, seed=4, frame_cache=rgb_cache)
    planes = FredDataset(alone, (64, 64), dataclasses.replace(aug, hsv_in_batch=True), seed=4)  # same draws, no HSV
    planes.partners, planes.planes_side = [f.event_image for f in frames], side
    monkeypatch.setattr(FredDataset, "_read_one", _planes_as_image)
    planes_items = [planes[i] for i in range(12)]
    monkeypatch.undo()
    dropped = []
    for i in range(12):
        f, r, p = fused[i], rgb[i], planes_items[i]
        expected = torch.cat([r["image"], p["image"][2:3], p["image"][1:2]])  # ON, OFF: the planes' "B", "G" channels
        lost = [k for k, c in enumerate((slice(0, 3), slice(3, 5))) if not torch.equal(f["image"][c], expected[c])]
        if lost:  # dropout: that sensor's channels all zeros, the other's as they were
            assert aug.stream_dropout and len(lost) == 1 and not f["image"][(slice(0, 3), slice(3, 5))[lost[0]]].any()
            dropped.append(lost[0])
        else:
            torch.testing.assert_close(f["image"], expected, rtol=0, atol=0)
        torch.testing.assert_close(f["boxes"], r["boxes"], rtol=0, atol=0)
    assert bool(dropped) == bool(aug.stream_dropout)


def test_stream_dropout_blanks_one_whole_stream_and_leaves_the_other_as_it_was(fusion_index):
    # FUSION_STREAM_DROPOUT: a fused training sample loses its RGB frame (black) or its events (no plane set), each
    # about half the time; the other stream and the boxes are those of the same sample without dropout
    aug = Augmentation(mosaic=True, mosaic_prob=0.5, flip_lr=0.5)
    kept = FredDataset(fusion_index.train, (64, 64), aug, seed=6)
    dropped = FredDataset(fusion_index.train, (64, 64), dataclasses.replace(aug, stream_dropout=1.0), seed=6)
    blanked = []
    for i in range(16):
        k, d = kept[i], dropped[i]
        rgb_gone, events_gone = not d["image"][:3].any(), not d["image"][3:].any()
        assert rgb_gone != events_gone  # exactly one stream (the kept samples have both)
        assert k["image"][:3].any() and k["image"][3:].any()
        same = slice(3, 5) if rgb_gone else slice(0, 3)
        torch.testing.assert_close(d["image"][same], k["image"][same], rtol=0, atol=0)
        torch.testing.assert_close(d["boxes"], k["boxes"], rtol=0, atol=0)
        blanked.append(rgb_gone)
    assert 0 < sum(blanked) < len(blanked)  # both kinds occur
    black = collate_fred([dropped[blanked.index(True)]])["images"]  # the GPU's HSV jitter keeps a black frame black
    assert not jittered_float(black, torch.tensor([[0.4, 0.7, 0.4]]), True)[:, :3].any()


def test_stream_dropout_off_draws_nothing(fusion_index):
    # 0 (the default) leaves every sample bit for bit as before: no random draw is spent on it
    aug = Augmentation(mosaic=True, mosaic_prob=0.5)
    a = FredDataset(fusion_index.train, (64, 64), aug, seed=7)
    b = FredDataset(fusion_index.train, (64, 64), dataclasses.replace(aug, stream_dropout=0.0), seed=7)
    for i in range(6):
        torch.testing.assert_close(a[i]["image"], b[i]["image"], rtol=0, atol=0)
