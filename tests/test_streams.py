"""Fused images as streams (utils/streams.py): every geometric step treats both streams alike, pixel for pixel."""
import numpy as np
import pytest

from datasets.augment import apply_affine, flip_horizontal, random_affine_matrix, resize_axis_aligned, warp_affine
from datasets.mosaic import mixup_images, mosaic4
from utils.letterbox import letterbox
from utils.streams import as_streams, image_hw, per_stream, pick_channels


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
    picked = pick_channels(twin, (2, 1, 0, 3, 4))
    np.testing.assert_array_equal(picked, np.concatenate([img[..., ::-1], img[..., :2]], axis=2))


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
    canvas, vb, wb = mosaic4([t for _, t in imgs], labels, (64, 64), np.random.default_rng(7))
    ref, rvb, rwb = mosaic4([i for i, _ in imgs], labels, (64, 64), np.random.default_rng(7))
    _assert_streams_equal(canvas, ref)
    np.testing.assert_array_equal(vb, rvb)
    mixed, _ = mixup_images(twin, boxes, _twin(8)[1], boxes, np.random.default_rng(9))
    ref, _ = mixup_images(img, boxes, _twin(8)[0], boxes, np.random.default_rng(9))
    _assert_streams_equal(mixed, ref)
    _assert_streams_equal(flip_horizontal(twin, boxes.copy())[0], flip_horizontal(img, boxes.copy())[0])
