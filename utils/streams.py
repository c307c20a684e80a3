"""Images of several streams in one array: a fused sample holds its RGB image and its event planes side by side,
3 channels per stream ([H, W, 3k] uint8; the event stream is ON, OFF and a zero channel).

OpenCV resizes and warps 3-channel images channel by channel alike, but its paths for other channel counts round
differently (2 channels: +/-1, 5 channels: up to +/-5 grey levels against the same call on one channel), so every
OpenCV call of the augmentation and the letterbox runs once per 3-channel stream: both streams of a fused sample see
the same geometry, pixel for pixel, and a single-stream image takes exactly the path it always took.
"""
from typing import Callable

import numpy as np

STREAM_CHANNELS = 3


def per_stream(fn: Callable[[np.ndarray], np.ndarray], img: np.ndarray) -> np.ndarray:
    """fn on each 3-channel stream of img [H, W, 3k] (fn(img) itself for one stream or fewer channels), the results
    concatenated on the channel axis."""
    if img.ndim < 3 or img.shape[2] <= STREAM_CHANNELS:
        return fn(img)
    return np.concatenate([fn(np.ascontiguousarray(img[..., k:k + STREAM_CHANNELS]))
                           for k in range(0, img.shape[2], STREAM_CHANNELS)], axis=2)
