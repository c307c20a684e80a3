"""Mosaic (four images around a random centre on a 2H x 2W canvas) and Mixup (blend of two samples).

Boxes are numpy [N, 5] float: cls, x1, y1, x2, y2 in pixels (continuous coordinates) unless said otherwise.
The mosaic canvas is then cropped back to the input size by a random affine (datasets/augment.py), as in
Ultralytics' Mosaic followed by RandomPerspective.
"""
from __future__ import annotations

import cv2
import numpy as np

from datasets.augment import PAD_VALUE
from utils.letterbox import letterbox_params
from utils.streams import Image, as_streams, image_hw, like, per_stream, resized


def boxes_cxcywh_norm_to_xyxy(labels: np.ndarray, width: float, height: float) -> np.ndarray:
    """[N, 5] cls, cx, cy, w, h normalised -> [N, 5] cls, x1, y1, x2, y2 in pixels of a width x height image."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    out = np.empty_like(labels)
    out[:, 0] = labels[:, 0]
    out[:, 1] = (labels[:, 1] - labels[:, 3] / 2) * width
    out[:, 2] = (labels[:, 2] - labels[:, 4] / 2) * height
    out[:, 3] = (labels[:, 1] + labels[:, 3] / 2) * width
    out[:, 4] = (labels[:, 2] + labels[:, 4] / 2) * height
    return out


def mosaic_centre(rng: np.random.Generator, out_shape: tuple[int, int]) -> tuple[int, int]:
    """A mosaic's random centre (y, x) on its 2H x 2W canvas for out_shape (H, W): uniform in [H/2, 3H/2] x
    [W/2, 3W/2]."""
    h, w = out_shape
    yc = int(rng.uniform(h / 2, 3 * h / 2))
    xc = int(rng.uniform(w / 2, 3 * w / 2))
    return yc, xc


def mosaic4(images: list[Image], labels: list[np.ndarray], out_shape: tuple[int, int], centre: tuple[int, int],
            window: tuple[int, int, int, int] | None = None) -> tuple[Image, np.ndarray, np.ndarray]:
    """Place 4 images (top-left, top-right, bottom-left, bottom-right) around centre (y, x) of a 2H x 2W canvas.

    images: 4 uint8 [h, w, C] (one channel count C), or 4 tuples of streams (utils/streams.py) placed alike;
    labels: 4 [N, 5] cls, cx, cy, w, h normalised to their image;
    out_shape (H, W); centre: mosaic_centre()'s. Each image is resized (cv2.INTER_LINEAR, aspect kept) to fit H x W.
    window (y0, y1, x0, x1): only the canvas' rows [y0, y1) and columns [x0, x1) are painted, the rest is left
    unset (the part the crop reads: datasets.augment.source_window; a third of the canvas on average at scale 0.5);
    None: all of it. Returns (canvas uint8 [2H, 2W, C], boxes [N, 5] cls, xyxy of the part each object shows on the
    canvas, boxes_uncropped [N, 4] xyxy of the whole object in canvas pixels).
    """
    h, w = out_shape
    yc, xc = centre
    if window is None:
        canvas = per_stream(lambda x: np.full((2 * h, 2 * w) + x.shape[2:], PAD_VALUE, dtype=np.uint8), images[0])
        wy0, wy1, wx0, wx1 = 0, 2 * h, 0, 2 * w
    else:
        canvas = per_stream(lambda x: np.empty((2 * h, 2 * w) + x.shape[2:], dtype=np.uint8), images[0])
        wy0, wy1, wx0, wx1 = window
        for c in as_streams(canvas):
            c[wy0:wy1, wx0:wx1] = PAD_VALUE
    visible, whole = [], []
    for k, (img, lab) in enumerate(zip(images, labels)):
        _, (nw, nh), _ = letterbox_params(image_hw(img), out_shape)
        if (nw, nh) != image_hw(img)[::-1]:
            img = resized(img, (nw, nh))
        ox = xc - nw if k in (0, 2) else xc  # canvas position of the image's top-left corner
        oy = yc - nh if k in (0, 1) else yc
        x1, y1 = max(ox, 0), max(oy, 0)  # canvas area the image covers
        x2, y2 = min(ox + nw, 2 * w), min(oy + nh, 2 * h)
        px1, py1, px2, py2 = max(x1, wx0), max(y1, wy0), min(x2, wx1), min(y2, wy1)  # what of it is painted
        if px2 > px1 and py2 > py1:
            for c, x in zip(as_streams(canvas), as_streams(img)):
                c[py1:py2, px1:px2] = x[py1 - oy:py2 - oy, px1 - ox:px2 - ox]
        boxes = boxes_cxcywh_norm_to_xyxy(lab, nw, nh)
        boxes[:, 1::2] += ox
        boxes[:, 2::2] += oy
        whole.append(boxes[:, 1:].copy())
        np.clip(boxes[:, 1::2], x1, x2, out=boxes[:, 1::2])
        np.clip(boxes[:, 2::2], y1, y2, out=boxes[:, 2::2])
        visible.append(boxes)
    return canvas, np.concatenate(visible), np.concatenate(whole)


def mixup_images(img1: Image, boxes1: np.ndarray, img2: Image, boxes2: np.ndarray, rng: np.random.Generator,
                 alpha: float = 32.0) -> tuple[Image, np.ndarray]:
    """Blend two same-size uint8 images with a Beta(alpha, alpha) weight and keep the boxes of both ([N, 5] each)."""
    lam = float(rng.beta(alpha, alpha))
    img = like(img1, [cv2.addWeighted(a, lam, b, 1.0 - lam, 0.0).reshape(a.shape)  # a single channel's axis kept
                      for a, b in zip(as_streams(img1), as_streams(img2))])
    return img, np.concatenate([boxes1, boxes2]).astype(np.float32, copy=False)
