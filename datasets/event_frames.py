"""FRED's event frames and the fused sample: the three colours, the two polarity planes, RGB + planes in one array.

An event frame (Event/Frames/*.png) shows 33 ms of events in three colours (RGB order): background (30, 37, 52), one
polarity white (255, 255, 255), the other (64, 126, 200) (the Metavision SDK's display colours; the last event of a
pixel wins, no counts). event_planes() turns it, losslessly, into two binary planes: ON where the white polarity
fired, OFF where the blue one did. A fused sample (--modality fusion) is the PADDED_RGB frame and the planes of its
event partner as two streams of one size (utils/streams.py), the network's five channels split 4 + 1: (R, G, B, ON
uint8 [H, W, 4], OFF uint8 [H, W, 1]). OpenCV resizes and warps a 4-channel image in about the time of a 3-channel
one and a 1-channel image in about half (2, 5 or 6 channels are no faster or several times slower), so the
augmentation does 5 channels of work, not the 6 of a BGR frame beside a 3-channel planes image; each channel gets the
same values in either layout (OpenCV's steps treat channels alike: tests/test_streams.py, test_fusion_dataset.py).
fused_item_image() makes the network's [H, W, 5] of a fused sample with one copy.
"""
import cv2
import numpy as np

from utils.streams import concat_channels, resized

EVENT_BACKGROUND = (30, 37, 52)
EVENT_POSITIVE = (255, 255, 255)
EVENT_NEGATIVE = (64, 126, 200)
EVENT_PALETTE = (EVENT_BACKGROUND, EVENT_POSITIVE, EVENT_NEGATIVE)  # RGB order
INPUT_CHANNELS = 5  # what the network gets: RGB, ON, OFF
CAMERA, EVENTS = 0, 1  # the sensors of a fused sample (blank_sensor)


def event_planes(event_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 [h, w, 3] event frame -> its polarity planes (ON, OFF), uint8 [h, w, 1] each: 255 where the white
    polarity fired (ON), where the blue one did (OFF), else 0. A pixel of neither colour (background, or anything
    else) is 0 in both."""
    planes = []
    for colour in (EVENT_POSITIVE, EVENT_NEGATIVE):
        b, g, r = colour[2], colour[1], colour[0]
        hit = (event_bgr[..., 0] == b) & (event_bgr[..., 1] == g) & (event_bgr[..., 2] == r)
        planes.append(np.where(hit, np.uint8(255), np.uint8(0))[..., None])
    return planes[0], planes[1]


def fuse_streams(rgb_bgr: np.ndarray, planes: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The fused sample (R, G, B, ON [h, w, 4], OFF [h, w, 1]) of a BGR frame [h, w, 3] and its event planes (ON,
    OFF [h', w', 1]: event_planes()); planes of another size (a frame cache holding the RGB frame resized) are resized
    to the RGB frame's first (bilinear)."""
    h, w = rgb_bgr.shape[:2]
    on, off = (p if p.shape[:2] == (h, w) else resized(p, (w, h)) for p in planes)
    rgbo = cv2.cvtColor(rgb_bgr, cv2.COLOR_BGR2RGBA)
    cv2.mixChannels([on], [rgbo], [0, 3])
    return rgbo, off


def fused_item_image(fused: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Fused sample (R, G, B, ON [H, W, 4], OFF [H, W, 1]) -> the network's channels, a new [H, W, 5]: R, G, B, ON,
    OFF."""
    return concat_channels(fused)


def fused_bgr(fused: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The RGB frame of a fused sample as a new BGR uint8 [H, W, 3] image (OpenCV's drawing and writing order)."""
    return cv2.cvtColor(fused[0], cv2.COLOR_RGBA2BGR)


def blank_sensor(fused: tuple[np.ndarray, np.ndarray], sensor: int) -> tuple[np.ndarray, np.ndarray]:
    """The fused sample with one sensor's channels all zeros, the other's as they were: CAMERA (R, G, B; a black
    frame) or EVENTS (ON and OFF; no event)."""
    rgbo, off = fused
    if sensor == CAMERA:
        return cv2.bitwise_and(rgbo, (0, 0, 0, 255)), off
    return cv2.bitwise_and(rgbo, (255, 255, 255, 0)), np.zeros_like(off)
