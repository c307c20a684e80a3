"""Per-sample augmentations on uint8 HWC images with pixel boxes: random affine, box filtering, HSV jitter, flip;
and their settings (Augmentation). The HSV jitter may instead run per batch on the device: datasets/gpu_augment.py.

Boxes here are numpy [N, 5] float: cls, x1, y1, x2, y2 in pixels of the image they go with (continuous coordinates:
pixel (i, j) covers [j, j+1) x [i, i+1)). Affine matrices are 3x3 in those continuous coordinates; warp_affine()
converts to OpenCV's pixel-centre convention, so boxes and pixels move exactly together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from utils.streams import Image, image_hw, per_stream

PAD_VALUE = 114  # grey used for every area that no image covers
HSV_KEY = "hsv"  # a training item's (and batch's) HSV draw, left to the batch transform (Augmentation.hsv_in_batch)


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation of FredDataset (defaults: config_fred.py's). Mosaic with probability mosaic_prob,
    Mixup with probability mixup_prob (while special augmentation is on), a random affine (rotation +/- degrees,
    translation +/- translate of the input, scale gain 1 +/- scale), HSV jitter of +/- hsv (hue, saturation, value),
    horizontal flip with probability flip_lr; boxes left under min_box_size pixels are dropped. hsv_in_batch: the
    samples carry their HSV draw (key HSV_KEY) and the batch transform of datasets/gpu_augment.py applies it.
    stream_dropout: fused samples only, the probability that one of the two sensors is blanked
    (datasets.event_frames.blank_sensor)."""

    mosaic: bool = True
    mosaic_prob: float = 0.5
    mixup: bool = False
    mixup_prob: float = 0.0
    hsv: tuple[float, float, float] = (0.015, 0.7, 0.4)
    flip_lr: float = 0.5
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    min_box_size: float = 2.0
    hsv_in_batch: bool = False
    stream_dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "hsv", tuple(float(g) for g in self.hsv))


def random_affine_matrix(rng: np.random.Generator, src_center: tuple[float, float], out_shape: tuple[int, int],
                         degrees: float, translate: float, scale: float) -> np.ndarray:
    """3x3 affine taking src_center (x, y) to a random point near the output centre, with random rotation and scale.

    Rotation uniform in +/- degrees, scale gain uniform in 1 +/- scale, translation uniform in +/- translate of the
    output size (h, w). With all three at 0 the source centre lands exactly on the output centre.
    """
    h, w = out_shape
    angle = math.radians(rng.uniform(-degrees, degrees)) if degrees else 0.0
    gain = rng.uniform(1.0 - scale, 1.0 + scale) if scale else 1.0
    tx = rng.uniform(0.5 - translate, 0.5 + translate) * w if translate else 0.5 * w
    ty = rng.uniform(0.5 - translate, 0.5 + translate) * h if translate else 0.5 * h
    c, s = gain * math.cos(angle), gain * math.sin(angle)
    # x' = R (x - src_center) + (tx, ty); positive angle turns counter-clockwise on screen, like cv2.getRotationMatrix2D
    cx, cy = src_center
    return np.array([[c, s, tx - c * cx - s * cy],
                     [-s, c, ty + s * cx - c * cy],
                     [0.0, 0.0, 1.0]])


def scale_translate_matrix(scale_x: float, scale_y: float, pad: tuple[float, float]) -> np.ndarray:
    """3x3 matrix of x' = x * scale_x + pad_w, y' = y * scale_y + pad_h."""
    return np.array([[scale_x, 0.0, pad[0]], [0.0, scale_y, pad[1]], [0.0, 0.0, 1.0]])


def warp_affine(img: Image, matrix: np.ndarray, out_shape: tuple[int, int], border: int = PAD_VALUE) -> Image:
    """Warp a uint8 HWC image (or each stream of one: utils/streams.py) with a 3x3 affine (continuous coordinates)
    to out_shape (h, w);
    bilinear, grey border."""
    a = matrix[:2, :2]
    # continuous x maps to a x + t; a pixel centre is x + 0.5, so OpenCV's matrix has t + a (0.5, 0.5) - 0.5
    t = matrix[:2, 2] + 0.5 * a.sum(axis=1) - 0.5
    m = np.concatenate([a, t[:, None]], axis=1)
    h, w = out_shape
    return per_stream(lambda x: cv2.warpAffine(  # all four of OpenCV's Scalar: every channel, any count
        x, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(border,) * 4
    ).reshape((h, w) + x.shape[2:]), img)  # OpenCV drops a single channel axis


def _resize_span(scale: float, shift: float, src_size: int, out_size: int) -> tuple[int, int, int, int]:
    """One axis of an axis-aligned affine x' = scale * x + shift: (src0, src1, dst0, dst1) integer spans, the source
    pixels [src0, src1) that reach the output, widened to whole pixels and by one more pixel each side (so that the
    output's edge pixels interpolate with their real neighbours), and where they land, [dst0, dst1) (rounded; it
    may reach past the output by scale + 1 pixels); src1 == src0 when nothing reaches it."""
    lo = max(0.0, -shift / scale)
    hi = min(float(src_size), (out_size - shift) / scale)
    if hi <= lo:
        return 0, 0, 0, 0
    src0, src1 = max(0, math.floor(lo) - 1), min(src_size, math.ceil(hi) + 1)
    dst0, dst1 = round(scale * src0 + shift), round(scale * src1 + shift)
    return (src0, src1, dst0, dst1) if dst1 > dst0 else (0, 0, 0, 0)


def axis_aligned(matrix: np.ndarray) -> bool:
    """Whether a 3x3 affine has no rotation or shear and positive scales (apply_affine() resizes instead of warping)."""
    return bool(matrix[0, 1] == 0 and matrix[1, 0] == 0 and matrix[0, 0] > 0 and matrix[1, 1] > 0)


def source_window(matrix: np.ndarray, src_hw: tuple[int, int], out_shape: tuple[int, int]
                  ) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the rows [y0, y1) and columns [x0, x1) of a source image of src_hw (h, w) that apply_affine()
    reads to make out_shape (h, w) with matrix: for an axis-aligned one the pixels resize_axis_aligned() resizes (an
    empty span when nothing reaches the output), else the whole image."""
    if not axis_aligned(matrix):
        return 0, int(src_hw[0]), 0, int(src_hw[1])
    x0, x1, _, _ = _resize_span(matrix[0, 0], matrix[0, 2], int(src_hw[1]), out_shape[1])
    y0, y1, _, _ = _resize_span(matrix[1, 1], matrix[1, 2], int(src_hw[0]), out_shape[0])
    return y0, y1, x0, x1


def resize_axis_aligned(img: Image, matrix: np.ndarray, out_shape: tuple[int, int], border: int = PAD_VALUE
                        ) -> tuple[Image, np.ndarray]:
    """warp_affine() for a matrix without rotation or shear (positive scales), by cv2.resize of the source pixels
    that reach the output: several times faster than cv2.warpAffine.

    The span of source pixels and where it lands are rounded to whole pixels, so the transform applied differs from
    matrix by under a pixel; it is returned (3x3), for the boxes to follow the pixels exactly. Returns (image of
    out_shape (h, w), matrix applied); where the resized pixels cover the whole output the image is a view of them
    (no padded copy).
    """
    h, w = out_shape
    src_h, src_w = image_hw(img)
    x0, x1, u0, u1 = _resize_span(matrix[0, 0], matrix[0, 2], src_w, w)
    y0, y1, v0, v1 = _resize_span(matrix[1, 1], matrix[1, 2], src_h, h)
    a, b = max(u0, 0), max(v0, 0)  # the resized part's pixels inside the output

    def one(x: np.ndarray) -> np.ndarray:
        src, size = x[y0:y1, x0:x1], (u1 - u0, v1 - v0)
        if x1 > x0 and y1 > y0 and u0 <= 0 and v0 <= 0 and u1 >= w and v1 >= h:  # it covers the output: a view
            part = cv2.resize(src, size, interpolation=cv2.INTER_LINEAR).reshape((v1 - v0, u1 - u0) + x.shape[2:])
            return part[-v0:h - v0, -u0:w - u0]
        out = np.full((h, w) + x.shape[2:], border, dtype=x.dtype)
        if x1 > x0 and y1 > y0 and u0 >= 0 and v0 >= 0 and u1 <= w and v1 <= h:  # it lies inside: resized in place
            cv2.resize(src, size, dst=out[v0:v1, u0:u1], interpolation=cv2.INTER_LINEAR)
        elif x1 > x0 and y1 > y0:  # some of it lands on the output
            part = cv2.resize(src, size, interpolation=cv2.INTER_LINEAR)
            part = part.reshape(part.shape[:2] + x.shape[2:])  # cv2.resize drops a single channel axis
            out[b:min(v1, h), a:min(u1, w)] = part[b - v0:min(v1, h) - v0, a - u0:min(u1, w) - u0]
        return out

    if x1 == x0 or y1 == y0:
        return per_stream(one, img), matrix
    sx, sy = (u1 - u0) / (x1 - x0), (v1 - v0) / (y1 - y0)
    return per_stream(one, img), np.array([[sx, 0.0, u0 - sx * x0], [0.0, sy, v0 - sy * y0], [0.0, 0.0, 1.0]])


def _corners(boxes: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y [N, 4] of the corners of [N, 4] xyxy boxes through a 3x3 affine, in order around the box."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    xs = np.stack([x1, x2, x2, x1], axis=1)
    ys = np.stack([y1, y1, y2, y2], axis=1)
    return (matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2],
            matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2])


def transform_boxes_xyxy(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map [N, 4] xyxy boxes through a 3x3 affine: the axis-aligned envelope of the four transformed corners."""
    if len(boxes) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    tx, ty = _corners(boxes, matrix)
    return np.stack([tx.min(1), ty.min(1), tx.max(1), ty.max(1)], axis=1)


def transform_clip_boxes_xyxy(boxes: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Map [N, 4] xyxy boxes through a 3x3 affine and crop to an image of shape (h, w): the envelope of the part of
    each transformed box (a parallelogram) inside the image. Tighter than clipping the envelope when rotated."""
    if len(boxes) == 0 or (matrix[0, 1] == 0 and matrix[1, 0] == 0):  # axis-aligned: clip the envelope, exact
        return clip_boxes_xyxy(transform_boxes_xyxy(boxes, matrix), shape)
    h, w = float(shape[0]), float(shape[1])
    eps = 1e-9
    px, py = _corners(boxes, matrix)
    dx, dy = np.roll(px, -1, axis=1) - px, np.roll(py, -1, axis=1) - py  # edge vectors
    xs, ys, ok = [px], [py], [(px >= -eps) & (px <= w + eps) & (py >= -eps) & (py <= h + eps)]  # corners inside
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in (0.0, w):  # edges crossing the image's left and right sides
            t = (c - px) / dx
            y = py + t * dy
            xs.append(np.full_like(px, c))
            ys.append(y)
            ok.append((t >= 0) & (t <= 1) & (y >= -eps) & (y <= h + eps))
        for c in (0.0, h):  # top and bottom sides
            t = (c - py) / dy
            x = px + t * dx
            xs.append(x)
            ys.append(np.full_like(py, c))
            ok.append((t >= 0) & (t <= 1) & (x >= -eps) & (x <= w + eps))
    solid = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))[:, None]
    for cx, cy in ((0.0, 0.0), (w, 0.0), (w, h), (0.0, h)):  # image corners inside the parallelogram
        cross = dx * (cy - py) - dy * (cx - px)
        inside = (cross >= -eps).all(1, keepdims=True) | (cross <= eps).all(1, keepdims=True)
        xs.append(np.full_like(px[:, :1], cx))
        ys.append(np.full_like(py[:, :1], cy))
        ok.append(inside & solid)
    xs, ys, ok = np.concatenate(xs, 1), np.concatenate(ys, 1), np.concatenate(ok, 1)
    out = np.stack([np.where(ok, xs, np.inf).min(1), np.where(ok, ys, np.inf).min(1),
                    np.where(ok, xs, -np.inf).max(1), np.where(ok, ys, -np.inf).max(1)], axis=1)
    out[~(ok.any(1) & solid[:, 0])] = 0.0  # entirely outside, or no area to begin with: empty
    return clip_boxes_xyxy(out, shape)


def clip_boxes_xyxy(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Clip [N, 4] xyxy boxes to an image of shape (h, w), in place; returns boxes."""
    np.clip(boxes[:, 0::2], 0.0, shape[1], out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0.0, shape[0], out=boxes[:, 1::2])
    return boxes


def box_candidates(boxes_before: np.ndarray, boxes_after: np.ndarray, min_size: float, area_thr: float = 0.1,
                   ar_thr: float = 20.0) -> np.ndarray:
    """Bool [N]: keep a box if w, h >= min_size (and > 0), area >= area_thr * its area before cropping, aspect < ar_thr.

    boxes_before: [N, 4] xyxy transformed but not cropped; boxes_after: [N, 4] xyxy after cropping.
    """
    w = boxes_after[:, 2] - boxes_after[:, 0]
    h = boxes_after[:, 3] - boxes_after[:, 1]
    area_before = (boxes_before[:, 2] - boxes_before[:, 0]) * (boxes_before[:, 3] - boxes_before[:, 1])
    eps = 1e-9
    aspect = np.maximum(w / (h + eps), h / (w + eps))
    return ((w >= min_size) & (h >= min_size) & (w > eps) & (h > eps)
            & (w * h >= area_thr * area_before) & (aspect < ar_thr))


def apply_affine(img: Image, matrix: np.ndarray, out_shape: tuple[int, int], boxes: np.ndarray,
                 boxes_uncropped: np.ndarray, min_box_size: float) -> tuple[Image, np.ndarray]:
    """Warp image and boxes to out_shape (h, w); boxes left too small by the crop are dropped.

    boxes: [N, 5] cls, xyxy of the visible part of each object in img; boxes_uncropped: [N, 4] xyxy of the whole
    object (may extend past what img shows), the reference for the kept-area ratio. A box is kept when its sides,
    transformed, and its final envelope are at least min_box_size (see box_candidates). Without rotation or shear
    the pixels come from resize_axis_aligned() (boxes follow the matrix it applied), else from warp_affine().
    Returns (image, [K, 5]).
    """
    if axis_aligned(matrix):
        out, matrix = resize_axis_aligned(img, matrix, out_shape)
    else:
        out = warp_affine(img, matrix, out_shape)
    if len(boxes) == 0:
        return out, np.zeros((0, 5), dtype=np.float32)
    after = transform_clip_boxes_xyxy(boxes[:, 1:5], matrix, out_shape)
    before = transform_boxes_xyxy(boxes_uncropped, matrix)
    # the visible box's own sides after the transform: a thin sliver stays thin when rotated, its envelope may not
    col_x, col_y = np.hypot(matrix[0, 0], matrix[1, 0]), np.hypot(matrix[0, 1], matrix[1, 1])
    sides_ok = (((boxes[:, 3] - boxes[:, 1]) * col_x >= min_box_size)
                & ((boxes[:, 4] - boxes[:, 2]) * col_y >= min_box_size))
    keep = box_candidates(before, after, min_box_size) & sides_ok
    return out, np.concatenate([boxes[keep, :1], after[keep]], axis=1).astype(np.float32)


def hsv_draw(gains: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """One sample's HSV jitter: float [3] hue shift (fraction of the circle), saturation and value gain offsets,
    each uniform in +/- gains; all zero (and nothing drawn) when gains are all 0."""
    if not any(gains):
        return np.zeros(3)
    return rng.uniform(-1.0, 1.0, 3) * np.asarray(gains, dtype=np.float64)


def augment_hsv(img: np.ndarray, gains: tuple[float, float, float], rng: np.random.Generator,
                rgb: bool = False) -> np.ndarray:
    """Random hue shift (+/- gains[0] of the hue circle), saturation and value gains (1 +/- gains[1:]); a new image.

    img: uint8 [H, W, 3] BGR (rgb: RGB), or [H, W, 4] whose 4th channel (a fused sample's ON plane) is kept as it
    is; one lookup table per channel, applied by cv2.LUT in HSV space. All gains 0: img itself is returned (an HSV
    round trip is not lossless). datasets/gpu_augment.py's hsv_jitter_rgb() is the same on float batches.
    """
    if not any(gains):
        return img
    dh, gs, gv = hsv_draw(gains, rng)
    x = np.arange(256, dtype=np.float64)
    lut = np.stack([np.mod(x + dh * 180.0, 180.0),          # OpenCV's 8-bit hue is 0..179
                    np.clip(x * (1.0 + gs), 0, 255),
                    np.clip(x * (1.0 + gv), 0, 255)], axis=-1)
    lut = np.round(lut).astype(np.uint8)
    lut[:, 0] %= 180
    to_hsv, from_hsv = (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if rgb else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
    hsv = cv2.cvtColor(img, to_hsv)  # a 4th channel is not read
    cv2.LUT(hsv, lut.reshape(256, 1, 3), dst=hsv)
    out = cv2.cvtColor(hsv, from_hsv, dstCn=img.shape[2])
    if img.shape[2] == 4:
        cv2.mixChannels([img], [out], [3, 3])
    return out


def flip_horizontal(img: Image, boxes: np.ndarray) -> tuple[Image, np.ndarray]:
    """Mirror image (each stream) and [N, 5] cls, xyxy boxes left-right."""
    w = image_hw(img)[1]
    flipped = boxes.copy()
    flipped[:, 1] = w - boxes[:, 3]
    flipped[:, 3] = w - boxes[:, 1]
    return per_stream(lambda x: cv2.flip(x, 1).reshape(x.shape), img), flipped  # a single channel's axis kept
