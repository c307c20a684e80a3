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


def resized(img: Image, size: tuple[int, int]) -> Image:
    """Each stream of img resized to size (w, h) by cv2.INTER_LINEAR, a single channel's axis kept (cv2.resize drops
    it)."""
    return per_stream(lambda x: cv2.resize(x, size, interpolation=cv2.INTER_LINEAR).reshape(
        (size[1], size[0]) + x.shape[2:]), img)


def concat_channels(parts: Sequence[np.ndarray]) -> np.ndarray:
    """A new contiguous uint8 [H, W, C0 + C1 + ...] array of the channels of parts (uint8 [H, W, Ck] each, any row
    stride), in order.

    Each part's pixels are copied as one element of Ck bytes (an unsigned integer of 1, 2, 4 or 8 bytes) into a
    record of all of them: numpy's strided copy of one element per pixel and part, about twice as fast for 4 + 1
    channels as cv2.mixChannels, which moves every channel alone (and 10x numpy's copies along the channel axis).
    """
    h, w = parts[0].shape[:2]
    sizes = [int(p.shape[2]) for p in parts]
    kinds = [np.dtype(f"u{n}") if n in (1, 2, 4, 8) else np.dtype((np.void, n)) for n in sizes]
    record = np.dtype({"names": [f"p{k}" for k in range(len(parts))], "formats": kinds,
                       "offsets": [sum(sizes[:k]) for k in range(len(parts))], "itemsize": sum(sizes)})
    out = np.empty((h, w), dtype=record)
    for k, (part, kind) in enumerate(zip(parts, kinds)):
        pixels = part if part.strides[2] == 1 else np.ascontiguousarray(part)  # views of whole rows of pixels too
        out[f"p{k}"] = pixels.view(kind)[..., 0]
    return out.view(np.uint8).reshape(h, w, sum(sizes))
