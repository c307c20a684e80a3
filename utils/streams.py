"""Images of several streams: a fused sample is a tuple of images of one size, its RGB frame and its event planes
(datasets/event_frames.py), and every step of the augmentation and the letterbox runs on each with the same
parameters, so both streams see the same geometry pixel for pixel; a single image (an ndarray) takes the path it
always took. An `Image` is either.
"""
from typing import Callable, Sequence, Union

import cv2
import numpy as np

Image = Union[np.ndarray, tuple]  # one uint8 [H, W, C] image, or a tuple of them (streams of one size)


def as_streams(img: Image) -> tuple[np.ndarray, ...]:
    """The streams of img: img itself for a tuple, (img,) for one image."""
    return img if isinstance(img, tuple) else (img,)


def like(img: Image, parts: Sequence[np.ndarray]) -> Image:
    """parts as the same kind of Image as img: a tuple for streams, the one array otherwise."""
    return tuple(parts) if isinstance(img, tuple) else parts[0]


def per_stream(fn: Callable[[np.ndarray], np.ndarray], img: Image) -> Image:
    """fn on each stream of img, as the same kind of Image."""
    return like(img, [fn(x) for x in as_streams(img)])


def image_hw(img: Image) -> tuple[int, int]:
    """(H, W) of an Image (its streams share it)."""
    return tuple(as_streams(img)[0].shape[:2])


def pick_channels(parts: Sequence[np.ndarray], channels: Sequence[int]) -> np.ndarray:
    """A new contiguous [H, W, len(channels)] array of the given channels of parts (numbered across them, in order),
    by cv2.mixChannels (numpy's strided copies along the channel axis are several times slower)."""
    out = np.empty(parts[0].shape[:2] + (len(channels),), dtype=parts[0].dtype)
    cv2.mixChannels(list(parts), [out], [i for k, c in enumerate(channels) for i in (c, k)])
    return out
