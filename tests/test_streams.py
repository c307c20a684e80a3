"""Fused images as streams (utils/streams.py): every geometric step treats both streams alike, pixel for pixel."""
import numpy as np
import pytest

from datasets.augment import apply_affine, flip_horizontal, random_affine_matrix, resize_axis_aligned, warp_affine
from datasets.mosaic import mixup_images, mosaic4, mosaic_centre
from utils.letterbox import letterbox
from utils.streams import as_streams, concat_channels, image_hw, per_stream, resized


def _twin(seed: int, h: int = 45, w: int = 80) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """A random 3-channel image and a two-stream image of it (the second stream a copy)."""
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return img, (img, img.copy())


def _assert_streams_equal(out, single: np.ndarray) -> None:
    """Both streams of out equal the single-stream result."""
    assert isinstance(out, tuple) and len(out) == 2
    for stream in out:
        np.testing.assert_array_equal(stream, single)


def test_stream_helpers():
    img, twin = _twin(0)
    assert as_streams(img) == (img,) and as_streams(twin) is twin and image_hw(twin) == (45, 80)
    assert per_stream(lambda x: x, img) is img
    calls = []
    assert isinstance(per_stream(lambda x: calls.append(x.shape) or x, twin), tuple) and len(calls) == 2
    joined = concat_channels(twin)
    assert joined.flags.c_contiguous
    np.testing.assert_array_equal(joined, np.concatenate(twin, axis=2))
    rng = np.random.default_rng(0)
    for counts in ((4, 1), (1, 1, 1), (3, 2), (8,)):  # whole-integer and odd channel counts
        parts = [rng.integers(0, 256, (5, 7, c), dtype=np.uint8) for c in counts]
        np.testing.assert_array_equal(concat_channels(parts), np.concatenate(parts, axis=2))
    views = [p[1:-1, 2:-1] for p in parts] + [parts[0][1:-1, -2:1:-1]]  # rows of another stride; mirrored columns
    np.testing.assert_array_equal(concat_channels(views), np.concatenate(views, axis=2))
    single = img[..., :1].copy()
    assert resized(single, (20, 10)).shape == (10, 20, 1)  # the channel axis kept
    np.testing.assert_array_equal(resized((img, single), (20, 10))[1][..., 0], resized(img, (20, 10))[..., 0])


@pytest.mark.parametrize("shape", [(64, 64), (96, 160), (32, 48)])
def test_letterbox_of_two_streams_is_the_letterbox_of_each(shape):
    img, twin = _twin(1)
    _assert_streams_equal(letterbox(twin, shape)[0], letterbox(img, shape)[0])


def test_warps_mosaic_mixup_and_flip_of_two_streams_are_those_of_each():
    img, twin = _twin(2)
    m = random_affine_matrix(np.random.default_rng(5), (32.0, 32.0), (64, 64), 10.0, 0.1, 0.5)
    _assert_streams_equal(warp_affine(twin, m, (64, 64)), warp_affine(img, m, (64, 64)))
    axis = np.array([[0.7, 0.0, 3.2], [0.0, 0.7, -4.1], [0.0, 0.0, 1.0]])
    out, applied = resize_axis_aligned(twin, axis, (64, 64))
    ref, ref_applied = resize_axis_aligned(img, axis, (64, 64))
    _assert_streams_equal(out, ref)
    np.testing.assert_array_equal(applied, ref_applied)
    boxes = np.array([[0, 10.0, 10.0, 30.0, 25.0]])
    out, b1 = apply_affine(twin, m, (64, 64), boxes.copy(), boxes[:, 1:].copy(), 2.0)
    ref, b2 = apply_affine(img, m, (64, 64), boxes.copy(), boxes[:, 1:].copy(), 2.0)
    _assert_streams_equal(out, ref)
    np.testing.assert_array_equal(b1, b2)
    labels = [np.array([[0, 0.5, 0.5, 0.2, 0.2]])] * 4
    imgs = [_twin(s) for s in range(3, 7)]
    canvas, vb, wb = mosaic4([t for _, t in imgs], labels, (64, 64), (40, 70))
    ref, rvb, rwb = mosaic4([i for i, _ in imgs], labels, (64, 64), (40, 70))
    _assert_streams_equal(canvas, ref)
    np.testing.assert_array_equal(vb, rvb)
    mixed, _ = mixup_images(twin, boxes, _twin(8)[1], boxes, np.random.default_rng(9))
    ref, _ = mixup_images(img, boxes, _twin(8)[0], boxes, np.random.default_rng(9))
    _assert_streams_equal(mixed, ref)
    _assert_streams_equal(flip_horizontal(twin, boxes.copy())[0], flip_horizontal(img, boxes.copy())[0])


def _split_4_1(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two 3-channel images as the 4 + 1 layout of a fused sample: a's 3 channels and b's first, then b's second."""
    return np.concatenate([a, b[..., :1]], axis=2), np.ascontiguousarray(b[..., 1:2])


def _assert_same_channels(out: tuple, ref: tuple) -> None:
    """out (4 + 1 channels) holds exactly the channels 0-2 of ref[0] and 0-1 of ref[1] (3 + 3 channels)."""
    assert out[0].shape[2] == 4 and out[1].shape[2] == 1
    np.testing.assert_array_equal(out[0][..., :3], ref[0])
    np.testing.assert_array_equal(out[0][..., 3], ref[1][..., 0])
    np.testing.assert_array_equal(out[1][..., 0], ref[1][..., 1])


@pytest.mark.parametrize("seed", range(6))
def test_every_step_gives_each_channel_the_same_values_in_4_plus_1_channels_as_in_3_plus_3(seed):
    # a fused sample is carried as (R, G, B, ON) + OFF instead of BGR + (ON, OFF, 0): OpenCV's resizes, warps,
    # blends and flips of 4- and 1-channel images must give every channel what the 3-channel ones gave it
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(30, 200, 2))
    out_shape = tuple(int(v) for v in rng.integers(32, 160, 2))
    a, b = (rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(2))
    b[..., 1] = np.where(rng.random((h, w)) < 0.1, 255, 0)  # binary, as event planes
    b[..., 2] = 0
    old, new = (a, b), _split_4_1(a, b)
    m = random_affine_matrix(rng, (w / 2, h / 2), out_shape, 10.0, 0.2, 0.5)
    _assert_same_channels(warp_affine(new, m, out_shape), warp_affine(old, m, out_shape))
    axis = np.array([[rng.uniform(0.3, 2.5), 0.0, rng.uniform(-20, 20)],
                     [0.0, rng.uniform(0.3, 2.5), rng.uniform(-20, 20)], [0.0, 0.0, 1.0]])
    _assert_same_channels(resize_axis_aligned(new, axis, out_shape)[0], resize_axis_aligned(old, axis, out_shape)[0])
    _assert_same_channels(letterbox(new, out_shape)[0], letterbox(old, out_shape)[0])
    _assert_same_channels(resized(new, (w // 2, h // 2)), resized(old, (w // 2, h // 2)))  # INTER_AREA's fast 2x
    labels = [np.array([[0, 0.5, 0.5, 0.2, 0.2]])] * 4
    pairs = [(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
             for _ in range(4)]
    centre = mosaic_centre(rng, out_shape)
    _assert_same_channels(mosaic4([_split_4_1(*p) for p in pairs], labels, out_shape, centre)[0],
                          mosaic4(pairs, labels, out_shape, centre)[0])
    other = tuple(rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(2))
    boxes = np.zeros((0, 5))
    _assert_same_channels(mixup_images(new, boxes, _split_4_1(*other), boxes, np.random.default_rng(seed))[0],
                          mixup_images(old, boxes, other, boxes, np.random.default_rng(seed))[0])
    _assert_same_channels(flip_horizontal(new, boxes)[0], flip_horizontal(old, boxes)[0])
