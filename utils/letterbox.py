"""The one letterbox of the project: resize keeping the aspect ratio, pad centred with grey.

Used by the training samples (datasets/fred_dataset.py), the evaluator and eval_fred.py, so that a box maps
between original-image pixels and network-input pixels the same way everywhere.
Box coordinates are continuous pixel coordinates: pixel (i, j) covers [j, j+1) x [i, i+1).
Forward map: x_input = x_orig * ratio + pad_w, y_input = y_orig * ratio + pad_h; the inverse is its exact inverse.
"""
from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np
import torch

from utils.streams import Image, image_hw, per_stream, resized

BoxArray = torch.Tensor | np.ndarray


def letterbox_params(shape: tuple[int, int], new_shape: tuple[int, int]
                     ) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """For an image of shape (h, w): (ratio, resized (w, h), top-left offset (pad_w, pad_h)) that letterbox() uses."""
    h0, w0 = int(shape[0]), int(shape[1])
    h, w = int(new_shape[0]), int(new_shape[1])
    ratio = min(h / h0, w / w0)
    nw = min(w, max(1, round(w0 * ratio)))
    nh = min(h, max(1, round(h0 * ratio)))
    return ratio, (nw, nh), ((w - nw) // 2, (h - nh) // 2)


def letterbox(img: Image, new_shape: tuple[int, int], color: int = 114
              ) -> tuple[Image, float, tuple[float, float]]:
    """Resize keeping aspect ratio and pad to new_shape (h, w), centred. Returns (image, ratio, (pad_w, pad_h)).

    img: uint8 [h0, w0, C] (or [h0, w0]; or a tuple of streams: utils/streams.py); upscaling is allowed;
    cv2.INTER_LINEAR; padding value `color`.
    (pad_w, pad_h) is the exact top-left offset at which the resized image was placed (whole pixels, as floats).
    When img already has the new shape it is returned as is (not copied).
    """
    h, w = int(new_shape[0]), int(new_shape[1])
    ratio, (nw, nh), (left, top) = letterbox_params(image_hw(img), (h, w))
    if (nw, nh) != image_hw(img)[::-1]:
        img = resized(img, (nw, nh))
    if (nw, nh) != (w, h):
        value = (color,) * 4  # all four of OpenCV's Scalar: every channel, any count
        img = per_stream(lambda x: cv2.copyMakeBorder(x, top, h - nh - top, left, w - nw - left, cv2.BORDER_CONSTANT,
                                                      value=value).reshape((h, w) + x.shape[2:]), img)
    return img, ratio, (float(left), float(top))


def _float_copy(boxes: BoxArray) -> BoxArray:
    """A floating-point copy of boxes (float64 for numpy integers, float32 for torch integers)."""
    if isinstance(boxes, torch.Tensor):
        return boxes.clone() if boxes.is_floating_point() else boxes.float()
    boxes = np.asarray(boxes)
    return boxes.astype(boxes.dtype if np.issubdtype(boxes.dtype, np.floating) else np.float64, copy=True)


def boxes_xyxy_original_to_letterbox(boxes: BoxArray, ratio: float, pad: tuple[float, float]) -> BoxArray:
    """Map [..., 4] xyxy boxes from original-image pixels to letterboxed-input pixels (same type as the input)."""
    out = _float_copy(boxes)
    out *= ratio
    out[..., 0::2] += pad[0]
    out[..., 1::2] += pad[1]
    return out


def boxes_xyxy_letterbox_to_original(boxes: BoxArray, ratio: float | BoxArray, pad: tuple[float, float] | BoxArray,
                                     orig_shape: tuple[int, int] | BoxArray) -> BoxArray:
    """Map [..., 4] xyxy boxes from letterboxed-input pixels to original-image pixels, clipped to orig_shape (h, w).

    ratio, pad (pad_w, pad_h) and orig_shape are one image's; for [N, 4] boxes they may also be per box: ratio [N],
    pad [N, 2], orig_shape [N, 2] (boxes of several images at once; for torch boxes, tensors on their device).
    """
    out = _float_copy(boxes)
    if isinstance(out, torch.Tensor):  # one image's numbers or per-box tensors, on the boxes' device and dtype
        ratio, pad, shape = (torch.as_tensor(v, dtype=out.dtype, device=out.device) for v in (ratio, pad, orig_shape))
        out[..., 0::2] -= pad[..., 0:1]
        out[..., 1::2] -= pad[..., 1:2]
        out /= ratio[..., None]
        out[..., 0::2] = torch.minimum(out[..., 0::2].clamp_(min=0.0), shape[..., 1:2])
        out[..., 1::2] = torch.minimum(out[..., 1::2].clamp_(min=0.0), shape[..., 0:1])
        return out
    pad, shape = np.asarray(pad, dtype=np.float64), np.asarray(orig_shape, dtype=np.float64)
    out[..., 0::2] -= pad[..., 0:1]
    out[..., 1::2] -= pad[..., 1:2]
    out /= np.asarray(ratio, dtype=np.float64)[..., None]
    np.clip(out[..., 0::2], 0.0, shape[..., 1:2], out=out[..., 0::2])
    np.clip(out[..., 1::2], 0.0, shape[..., 0:1], out=out[..., 1::2])
    return out


def rect_shape(frame_shapes: Iterable[tuple[int, int]], long_side: int, stride: int = 32
               ) -> tuple[int, int] | None:
    """The one rectangular input (h, w) that letterboxes every frame of these (h, w) sizes at the scale of a square
    long_side x long_side input: the long side is long_side, the other side the frames' largest short/long ratio times
    long_side, rounded up to a multiple of stride (1280x720 frames: 640 -> (384, 640), 1280 -> (736, 1280)).

    None when there is no gain: no frames, frames of both orientations (landscape and portrait), or a rounded side
    that reaches long_side. long_side must be a positive multiple of stride.
    """
    if long_side <= 0 or stride <= 0 or long_side % stride:
        raise ValueError(f"rect_shape: long_side {long_side} must be a positive multiple of stride {stride}")
    shapes = {(int(h), int(w)) for h, w in frame_shapes}
    if not shapes or min(min(s) for s in shapes) <= 0:
        return None
    if all(w >= h for h, w in shapes):
        short = max(-(-long_side * h // (w * stride)) for h, w in shapes) * stride  # ceil(L*h/w / stride) * stride
        return (short, long_side) if short < long_side else None
    if all(h >= w for h, w in shapes):
        short = max(-(-long_side * w // (h * stride)) for h, w in shapes) * stride
        return (long_side, short) if short < long_side else None
    return None


def rect_input_shape(frame_hw: tuple[int, int], long_side: int, stride: int = 32) -> tuple[int, int]:
    """The input (h, w) for frames of one size (h, w): rect_shape() at long_side rounded up to a multiple of stride,
    or that square when no rectangle is smaller (1280x720 at 640: (384, 640))."""
    long_side = -(-int(long_side) // stride) * stride
    return rect_shape([frame_hw], long_side, stride) or (long_side, long_side)
