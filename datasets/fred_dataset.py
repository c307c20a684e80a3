"""FredDataset: letterboxed uint8 samples with boxes in input pixels, augmented for training; and collate_fred.

Training sample (an Augmentation given, datasets/augment.py): with probability mosaic_prob (mosaic on and special
augmentation on) a 4-image mosaic cropped back to input_shape by a random affine (scale 1 +/- scale, translate +/-
translate, rotate +/- degrees), otherwise one image letterboxed and warped by the same kind of affine in a single
warp; then Mixup with another sample (probability mixup_prob, special augmentation on), HSV jitter (or its draw,
left to the batch transform), horizontal flip. Boxes move with the pixels; boxes cropped below min_box_size pixels,
below 10% of their area or beyond aspect 20 are dropped.
Validation sample (no augmentation): letterbox only.
Images are read with datasets.image_io.read_image (path-safe; a truncated or corrupt file is refused): one that cannot
be used is replaced by the next readable frame and logged. With a frame_cache (speed/frame_cache.py) images come
pre-resized from the cache instead; ratio, pad and orig_shape still refer to the original image, so boxes and the
evaluator's mapping are unchanged. Images stay BGR (as OpenCV decodes them) through all steps and become RGB once,
in the final CHW copy; a fused sample carries R, G, B, ON + OFF from its read on (datasets/event_frames.py).
"""
from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from datasets.augment import (HSV_KEY, Augmentation, apply_affine, augment_hsv, flip_horizontal, hsv_draw,
                              random_affine_matrix, scale_translate_matrix, source_window)
from datasets.event_frames import INPUT_CHANNELS, blank_sensor, event_planes, fuse_streams, fused_item_image
from datasets.image_io import CHANNELS, printable, read_image
from datasets.mosaic import boxes_cxcywh_norm_to_xyxy, mixup_images, mosaic4, mosaic_centre
from utils.heap import keep_freed_memory
from utils.letterbox import boxes_xyxy_original_to_letterbox, letterbox, letterbox_params
from utils.streams import Image, image_hw, resized

if TYPE_CHECKING:
    from datasets.fred_index import Frame

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_BAD_IMAGES = 100  # this many unreadable images in a row is a data problem, not a bad frame


class FrameSource(Protocol):
    """Frames decoded ahead of time, by position in the dataset's frame list (speed/frame_cache.FrameCache)."""

    bin_path: str
    fused: bool  # holds fused samples of frames and their event partners (datasets/event_frames.py)

    def matches(self, paths: list[str], partners: list[str] | None = None) -> bool:
        """Whether it holds exactly these images, in this order, with these event partners (None: no partners)."""

    def get(self, i: int) -> np.ndarray | tuple[np.ndarray, np.ndarray] | None:
        """Frame i's BGR uint8 image (fused: its fused sample), pre-resized; None when it could not be decoded."""

    def orig_shape(self, i: int) -> tuple[int, int]:
        """Frame i's original (h, w)."""

    def bad_reason(self, i: int) -> str | None:
        """Why frame i could not be decoded (None when it was)."""

    def planes(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Frame i's event polarity planes when it holds them directly (event_planes() layout), else None."""


class FredDataset(Dataset):
    """FRED frames as network inputs: see the module docstring; items are described in __getitem__."""

    def __init__(self, frames: list[Frame], input_shape: tuple[int, int], augmentation: Augmentation | None = None,
                 *, frame_cache: FrameSource | None = None, event_cache: FrameSource | None = None,
                 bad_image_log: str | None = None, seed: int = 0):
        """frames: objects with .image (path), .boxes (float32 [N, 5] cls, cx, cy, w, h normalised) and, for fused
        samples (RGB + event planes, datasets/event_frames.py), .event_image (the event frame's path, else "");
        augmentation: training samples augmented so, or None for validation samples (letterbox only);
        frame_cache: built for exactly these frames' images (build_frame_cache; for fused frames also a cache of
        their fused samples, built with their event images as partners), or None to decode the files;
        event_cache: the same for the fused frames' event images (beside a frame cache of their RGB frames), or None;
        bad_image_log: file that unreadable images are appended to; seed: of every sample's random draws."""
        if len(frames) == 0:
            raise ValueError("FredDataset got no frames: check the data root, modality and split")
        self.fused = bool(getattr(frames[0], "event_image", ""))
        if frame_cache is not None:
            partners = [str(getattr(f, "event_image", "")) for f in frames] if frame_cache.fused else None
            if not frame_cache.matches([str(f.image) for f in frames], partners):
                raise ValueError(f"the frame cache {frame_cache.bin_path} was built for other frames than these "
                                 f"{len(frames)}: build it from this frame list")
        if event_cache is not None and not (self.fused and event_cache.matches([str(f.event_image) for f in frames])):
            raise ValueError(f"the event frame cache {event_cache.bin_path} was not built for these frames' event "
                             "images: build it from their event_image paths")
        self.event_cache = event_cache
        self.frame_cache = frame_cache
        self.frames = frames
        self.input_shape = (int(input_shape[0]), int(input_shape[1]))
        self.augmentation = augmentation
        self.train = augmentation is not None
        self.bad_image_log = bad_image_log
        self.seed = seed
        # [epoch, special_aug] in shared memory: DataLoader workers (persistent ones too) hold copies of this
        # object, and set_epoch() in the main process must reach them.
        self._state = torch.tensor([0, 1], dtype=torch.int64).share_memory_()
        self._reported_bad: set[str] = set()

    def __len__(self) -> int:
        """Number of frames."""
        return len(self.frames)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every item's image in HWC memory order (what a batch ring's slots hold): the input shape and
        the channels of the decoded frames (the frame cache holds them as decoded), or INPUT_CHANNELS of fused
        samples."""
        return (*self.input_shape, INPUT_CHANNELS if self.fused else CHANNELS)

    def set_epoch(self, epoch: int, special_aug: bool) -> None:
        """special_aug False turns mosaic/mixup off. Call before iterating the DataLoader for that epoch."""
        self._state[0] = int(epoch)
        self._state[1] = int(bool(special_aug))

    @property
    def special_aug(self) -> bool:
        """Whether mosaic and mixup are currently allowed (shared with DataLoader workers)."""
        return bool(self._state[1])

    def max_boxes_per_sample(self) -> int:
        """Most boxes one item can hold: the most of any frame, times the 4 frames of a Mosaic and the 2 samples of a
        Mixup when the augmentation can draw them."""
        most = max((len(self._labels(j)) for j in range(len(self.frames))), default=0)
        aug = self.augmentation
        if aug is not None and aug.mosaic and aug.mosaic_prob > 0:
            most *= 4
        if aug is not None and aug.mixup and aug.mixup_prob > 0:
            most *= 2
        return most

    def _generator(self, i: int) -> np.random.Generator:
        """Sample i's own random generator in this epoch, seeded from (seed, epoch, i).

        Every draw of a sample (its mosaic partners and Mixup partner included) comes from it, so a sample's
        augmentation does not depend on which DataLoader worker makes it, nor on what that worker made before:
        any NUM_WORKERS, and a run resumed in the middle of an epoch, see the same samples.
        """
        return np.random.default_rng([abs(int(self.seed)), int(self._state[0]), int(i) % len(self.frames)])

    def _report_bad(self, path: str, reason: str) -> None:
        """Warn about an unreadable image once per process and append 'path<TAB>reason' to bad_image_log."""
        if path in self._reported_bad:
            return
        self._reported_bad.add(path)
        shown = printable(path)
        logger.warning("unreadable image %s (%s): replaced by another sample", shown, reason)
        if self.bad_image_log:
            try:
                with open(self.bad_image_log, "a", encoding="utf-8") as f:
                    f.write(f"{shown}\t{reason}\n")
            except OSError as e:
                logger.warning("cannot write bad image log %s: %s", self.bad_image_log, e)

    def _read_one(self, path: str, j: int, cache: FrameSource | None
                  ) -> tuple[Image | None, tuple[int, int], str]:
        """(BGR image of frame j's file path or None, original (h, w), why it is unusable), from cache or file (from
        a cache of fused frames, frame j's fused sample)."""
        if cache is not None:
            img = cache.get(j)
            if img is None:
                return None, (0, 0), f"{cache.bad_reason(j)} (when the frame cache was built)"
            return img, cache.orig_shape(j), ""
        img, reason = read_image(path)
        return img, ((0, 0) if img is None else (int(img.shape[0]), int(img.shape[1]))), reason

    def _read(self, i: int) -> tuple[Image, int, tuple[int, int]]:
        """BGR uint8 image of frame i (fused: its two streams, datasets/event_frames.py), or of the next readable frame
        after it; returns (image, index used, original (h, w)). From the frame cache the image is pre-resized (a
        read-only view; fused: two views of a cache of fused frames, or made of the RGB and event caches' frames),
        else the original."""
        n = len(self.frames)
        limit = min(MAX_CONSECUTIVE_BAD_IMAGES, n)
        path = ""
        for k in range(limit):
            j = (int(i) + k) % n
            path = str(self.frames[j].image)
            img, orig, reason = self._read_one(path, j, self.frame_cache)
            if img is not None and self.fused and not isinstance(img, tuple):  # not read fused from the cache
                path = str(self.frames[j].event_image)
                planes = self.event_cache.planes(j) if self.event_cache is not None else None
                if planes is not None:
                    event_orig, reason = self.event_cache.orig_shape(j), ""
                else:
                    event, event_orig, reason = self._read_one(path, j, self.event_cache)
                    planes = event_planes(event) if event is not None else None
                if planes is not None and event_orig != orig:
                    reason = (f"its size {event_orig[1]}x{event_orig[0]} differs from its RGB partner's "
                              f"{orig[1]}x{orig[0]} ({printable(str(self.frames[j].image))})")
                img = fuse_streams(img, planes) if planes is not None and not reason else None
            if img is not None:
                return img, j, orig
            self._report_bad(path, reason)
        raise RuntimeError(f"{limit} images in a row could not be read, the last one {path}; "
                           f"check the data (python train_fred.py --check_data) and the bad image log")

    def _labels(self, j: int) -> np.ndarray:
        """Frame j's boxes as float [N, 5] cls, cx, cy, w, h normalised."""
        return np.asarray(self.frames[j].boxes, dtype=np.float64).reshape(-1, 5)

    def _train_sample(self, i: int, rng: np.random.Generator, special: bool
                      ) -> tuple[np.ndarray, np.ndarray, tuple[int, tuple[int, int], float, tuple[float, float]]]:
        """One augmented BGR image of input_shape with [N, 5] cls, xyxy boxes (before mixup, HSV and flip).

        Also returns (index, orig_shape, ratio, pad) of the first image used, letterbox values for that image.
        """
        h, w = self.input_shape
        aug = self.augmentation
        img, j, orig_shape = self._read(i)
        ratio, (nw, nh), pad = letterbox_params(orig_shape, self.input_shape)
        meta = (j, orig_shape, float(ratio), (float(pad[0]), float(pad[1])))
        if special and aug.mosaic and rng.random() < aug.mosaic_prob:
            images, labels = [img], [self._labels(j)]
            for k in rng.integers(0, len(self.frames), 3):
                im, kk, _ = self._read(int(k))
                images.append(im)
                labels.append(self._labels(kk))
            centre = mosaic_centre(rng, self.input_shape)
            matrix = random_affine_matrix(rng, (float(w), float(h)), self.input_shape,
                                          aug.degrees, aug.translate, aug.scale)
            # only the part of the canvas that the crop reads is painted
            src, boxes, uncropped = mosaic4(images, labels, self.input_shape, centre,
                                            source_window(matrix, (2 * h, 2 * w), self.input_shape))
        else:
            src = img
            src_h, src_w = image_hw(img)
            boxes = boxes_cxcywh_norm_to_xyxy(self._labels(j), src_w, src_h)
            uncropped = boxes[:, 1:]
            # the letterbox of utils/letterbox.py, with cv2.resize's per-axis scale, so that pixels match validation's
            # (nw, nh, pad are the original image's: a cached, pre-resized image lands on the same place)
            letterbox_map = scale_translate_matrix(nw / src_w, nh / src_h, pad)
            matrix = random_affine_matrix(rng, (w / 2, h / 2), self.input_shape,
                                          aug.degrees, aug.translate, aug.scale) @ letterbox_map
        out, boxes = apply_affine(src, matrix, self.input_shape, boxes, uncropped, aug.min_box_size)
        return out, boxes, meta

    def __getitem__(self, i: int) -> dict:
        """Sample i (or the next readable frame when its image cannot be read).

        Returns {"image": uint8 [3, H, W] RGB (fused: [5, H, W] RGB, ON, OFF), "boxes": float32 [N, 5] cls, cx, cy,
        w, h in input pixels,
        "index": frame index used, "orig_shape": (h, w), "ratio": float, "pad": (pad_w, pad_h)}; orig_shape, ratio
        and pad are the letterbox of that frame (exact for validation samples, nominal for augmented ones).
        With augmentation.hsv_in_batch, training items also hold HSV_KEY: float32 [3], the HSV jitter still to apply.
        """
        if not self.train:
            img, j, orig_shape = self._read(i)
            ratio, (nw, nh), (left, top) = letterbox_params(orig_shape, self.input_shape)
            pad = (float(left), float(top))
            if image_hw(img) != orig_shape and image_hw(img) != (nh, nw):  # cached at another size than needed
                img = resized(img, (nw, nh))
            img_lb, _, _ = letterbox(img, self.input_shape)  # resizes the original; a cached image is only padded
            boxes = boxes_cxcywh_norm_to_xyxy(self._labels(j), orig_shape[1], orig_shape[0])
            boxes[:, 1:] = boxes_xyxy_original_to_letterbox(boxes[:, 1:], ratio, pad)
            return _item(img_lb, boxes, j, orig_shape, ratio, pad)
        aug, rng, special = self.augmentation, self._generator(i), self.special_aug
        img, boxes, (j, orig_shape, ratio, pad) = self._train_sample(i, rng, special)
        if special and aug.mixup and rng.random() < aug.mixup_prob:
            img2, boxes2, _ = self._train_sample(int(rng.integers(0, len(self.frames))), rng, special)
            img, boxes = mixup_images(img, boxes, img2, boxes2, rng)
        if aug.hsv_in_batch:  # the same random draw as augment_hsv's, applied later to the batch
            jitter = hsv_draw(aug.hsv, rng)
        elif isinstance(img, tuple):  # fused: the RGB channels only (R, G, B of the R, G, B, ON stream)
            img = (augment_hsv(img[0], aug.hsv, rng, rgb=True), *img[1:])
        else:
            img = augment_hsv(img, aug.hsv, rng)
        if aug.flip_lr and rng.random() < aug.flip_lr:
            img, boxes = flip_horizontal(img, boxes)
        if isinstance(img, tuple) and aug.stream_dropout and rng.random() < aug.stream_dropout:
            img = blank_sensor(img, int(rng.integers(2)))  # the camera or the events, evenly
        item = _item(img, boxes, j, orig_shape, ratio, pad)
        if aug.hsv_in_batch:
            item[HSV_KEY] = torch.from_numpy(jitter.astype(np.float32))
        return item


def _item(img_bgr: Image, boxes_xyxy: np.ndarray, index: int, orig_shape: tuple[int, int], ratio: float,
          pad: tuple[float, float]) -> dict:
    """Build the item dict: BGR HWC -> RGB uint8 [3, H, W] (fused streams -> [5, H, W] RGB, ON, OFF; a view of an
    HWC copy: collate_fred stacks batches in NHWC memory, the channels_last layout, with no transposing copy), boxes
    cls, xyxy -> cls, cx, cy, w, h."""
    hwc = fused_item_image(img_bgr) if isinstance(img_bgr, tuple) else cv2.cvtColor(img_bgr, cv2.COLOR_BGR2RGB)
    image = torch.from_numpy(hwc).permute(2, 0, 1)
    b = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 5)
    out = np.empty_like(b)
    out[:, 0] = b[:, 0]
    out[:, 1] = (b[:, 1] + b[:, 3]) / 2
    out[:, 2] = (b[:, 2] + b[:, 4]) / 2
    out[:, 3] = b[:, 3] - b[:, 1]
    out[:, 4] = b[:, 4] - b[:, 2]
    return {"image": image, "boxes": torch.from_numpy(out), "index": int(index),
            "orig_shape": (int(orig_shape[0]), int(orig_shape[1])), "ratio": float(ratio),
            "pad": (float(pad[0]), float(pad[1]))}


def worker_init(_: int) -> None:
    """DataLoader worker init: Ctrl-C is left to the main process, which saves and then stops the workers; freed
    sample arrays stay in the worker's heap for the next sample (utils/heap.py: no page faults to fill them again).

    OpenCV's thread count is not touched here: reconfiguring its thread pool in a forked worker whose parent had
    pool threads can hang the worker. The scripts call cv2.setNumThreads(0) once, before any worker starts.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()


def collate_fred(batch: list[dict]) -> dict:
    """Stack items: images uint8 [B, C, H, W] (NHWC in memory; C: the items' channels) and collate_labels()'
    entries."""
    # default_collate stacks straight into shared memory inside a DataLoader worker (no extra copy to send it);
    # the HWC images stack into [B, H, W, C], seen as [B, C, H, W]
    images = default_collate([item["image"].permute(1, 2, 0) for item in batch]).permute(0, 3, 1, 2)
    return {"images": images, **collate_labels(batch)}


def collate_labels(batch: list[dict]) -> dict:
    """Everything of a batch but the images: targets float32 [M, 6] batch_idx, cls, cx, cy, w, h (input pixels);
    index long [B]; orig_shapes long [B, 2]; ratios float32 [B]; pads float32 [B, 2]; hsv float32 [B, 3] when the
    items carry their HSV jitter."""
    targets = [torch.cat([torch.full((len(item["boxes"]), 1), float(b)), item["boxes"]], dim=1)
               for b, item in enumerate(batch)]
    out = {"targets": torch.cat(targets) if targets else torch.zeros((0, 6)),
           "index": torch.tensor([item["index"] for item in batch], dtype=torch.long),
           "orig_shapes": torch.tensor([item["orig_shape"] for item in batch], dtype=torch.long),
           "ratios": torch.tensor([item["ratio"] for item in batch], dtype=torch.float32),
           "pads": torch.tensor([item["pad"] for item in batch], dtype=torch.float32)}
    if HSV_KEY in batch[0]:
        out[HSV_KEY] = torch.stack([item[HSV_KEY] for item in batch])
    return out
