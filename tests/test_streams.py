"""Several streams in one image (utils/streams.py): every geometric step treats them alike, pixel for pixel."""
import numpy as np
import pytest

from datasets.augment import apply_affine, flip_horizontal, random_affine_matrix, resize_axis_aligned, warp_affine
from datasets.mosaic import mixup_images, mosaic4
from utils.letterbox import letterbox
from utils.streams import per_stream


def _twin(seed: int, h: int = 45, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A random 3-channel image and the 6-channel image of it twice (two streams, identical content)."""
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return img, np.concatenate([img, img], axis=2)


def _assert_streams_equal(out: np.ndarray, single: np.ndarray) -> None:
    """Both streams of out equal the single-stream result."""
    assert out.shape[2] == 6
    np.testing.assert_array_equal(out[..., :3], single)
    np.testing.assert_array_equal(out[..., 3:], single)


def test_per_stream_calls_once_per_three_channels_and_leaves_one_stream_alone():
    img, twin = _twin(0)
    calls = []
    per_stream(lambda x: calls.append(x.shape) or x, twin)
    assert calls == [(45, 80, 3), (45, 80, 3)]
    assert per_stream(lambda x: x, img) is img


@pytest.mark.parametrize("shape", [(64, 64), (96, 160), (32, 48)])
def test_letterbox_of_two_streams_is_the_letterbox_of_each(shape):
    img, twin = _twin(1)
    _assert_streams_equal(letterbox(twin, shape)[0], letterbox(img, shape)[0])


def test_warps_mosaic_mixup_and_flip_of_two_streams_are_those_of_each():
    rng_draws = np.random.default_rng(5)
    img, twin = _twin(2)
    m = random_affine_matrix(rng_draws, (32.0, 32.0), (64, 64), 10.0, 0.1, 0.5)
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
