"""FRED's event frames and the fused sample: the three colours, the two polarity planes, RGB + planes in one array.

An event frame (Event/Frames/*.png) shows 33 ms of events in three colours (RGB order): background (30, 37, 52), one
polarity white (255, 255, 255), the other (64, 126, 200) (the Metavision SDK's display colours; the last event of a
pixel wins, no counts). event_planes() turns it, losslessly, into two binary planes: plane 0 where the white
polarity fired, plane 1 where the blue one did. A fused sample (--modality fusion) is the PADDED_RGB frame and the
planes of its event partner as two streams of one size (utils/streams.py): (BGR uint8 [H, W, 3], ON, OFF and a
zero channel uint8 [H, W, 3]); fused_item_image() makes the network's 5 channels of them.
"""
import cv2
import numpy as np

from utils.streams import pick_channels

EVENT_BACKGROUND = (30, 37, 52)
EVENT_POSITIVE = (255, 255, 255)
EVENT_NEGATIVE = (64, 126, 200)
EVENT_PALETTE = (EVENT_BACKGROUND, EVENT_POSITIVE, EVENT_NEGATIVE)  # RGB order
INPUT_CHANNELS = 5  # what the network gets: RGB, ON, OFF


def event_planes(event_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 [h, w, 3] event frame -> uint8 [h, w, 3]: 255 where the white polarity fired (channel 0), 255 where
    the blue one did (channel 1), 0 in channel 2. A pixel of neither colour (background, or anything else) is 0."""
    out = np.zeros(event_bgr.shape[:2] + (3,), dtype=np.uint8)
    for plane, colour in ((0, EVENT_POSITIVE), (1, EVENT_NEGATIVE)):
        b, g, r = colour[2], colour[1], colour[0]
        hit = (event_bgr[..., 0] == b) & (event_bgr[..., 1] == g) & (event_bgr[..., 2] == r)
        out[..., plane][hit] = 255
    return out


def fuse_streams(rgb_bgr: np.ndarray, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fused sample (RGB frame [h, w, 3], event planes [h, w, 3]) of an RGB frame and event planes [h', w', 3]
    (event_planes()); planes of another size (a frame cache holding the RGB frame resized) are resized to the RGB
    frame's (bilinear)."""
    if planes.shape[:2] != rgb_bgr.shape[:2]:
        planes = cv2.resize(planes, (rgb_bgr.shape[1], rgb_bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    return rgb_bgr, planes


def fused_item_image(fused: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Fused sample (BGR [H, W, 3], ON, OFF, 0 [H, W, 3]) -> the network's channels [H, W, 5]: R, G, B, ON, OFF."""
    return pick_channels(fused, (2, 1, 0, 3, 4))
