"""Images of several streams in one array: a fused sample holds its RGB image and its event planes side by side,
3 channels per stream ([H, W, 3k] uint8; the event stream is ON, OFF and a zero channel).

OpenCV resizes and warps 3-channel images channel by channel alike, but its paths for other channel counts round
differently (2 channels: +/-1, 5 channels: up to +/-5 grey levels against the same call on one channel), so every
OpenCV call of the augmentation and the letterbox runs once per 3-channel stream: both streams of a fused sample see
the same geometry, pixel for pixel, and a single-stream image takes exactly the path it always took.
Channels are moved with cv2.mixChannels: numpy's strided copies along the channel axis are 5-10x slower.
"""
from typing import Callable, Sequence

import cv2
import numpy as np

STREAM_CHANNELS = 3


def pick_channels(img: np.ndarray, channels: Sequence[int]) -> np.ndarray:
    """A new contiguous uint8 [H, W, len(channels)] array of img's channels, in that order."""
    out = np.empty(img.shape[:2] + (len(channels),), dtype=img.dtype)
    cv2.mixChannels([img], [out], [i for k, c in enumerate(channels) for i in (c, k)])
    return out


def join_streams(parts: Sequence[np.ndarray]) -> np.ndarray:
    """[H, W, c_i] arrays of one size -> one [H, W, sum c_i] array, channels in order."""
    total = sum(p.shape[2] for p in parts)
    out = np.empty(parts[0].shape[:2] + (total,), dtype=parts[0].dtype)
    cv2.mixChannels(list(parts), [out], [i for c in range(total) for i in (c, c)])
    return out


def per_stream(fn: Callable[[np.ndarray], np.ndarray], img: np.ndarray) -> np.ndarray:
    """fn on each 3-channel stream of img [H, W, 3k] (fn(img) itself for one stream or fewer channels), the results
    joined on the channel axis."""
    if img.ndim < 3 or img.shape[2] <= STREAM_CHANNELS:
        return fn(img)
    return join_streams([fn(pick_channels(img, range(k, k + STREAM_CHANNELS)))
                         for k in range(0, img.shape[2], STREAM_CHANNELS)])
