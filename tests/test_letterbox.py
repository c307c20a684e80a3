"""The shared letterbox: placement, padding, and exact forward/inverse box maps (numpy and torch)."""
import cv2
import numpy as np
import pytest
import torch

from utils.letterbox import (boxes_xyxy_letterbox_to_original, boxes_xyxy_original_to_letterbox, letterbox,
                             letterbox_params, rect_shape)

# (original h, w) -> (input h, w): landscape and portrait, down- and up-scaling, odd paddings
CASES = [((48, 64), (64, 64)), ((64, 48), (64, 64)), ((720, 1280), (640, 640)), ((1280, 720), (640, 640)),
         ((30, 100), (64, 96)), ((100, 30), (96, 64)), ((24, 32), (64, 96)), ((37, 53), (64, 64))]


def _random_boxes(rng: np.random.Generator, shape: tuple[int, int], n: int = 50) -> np.ndarray:
    """[n, 4] xyxy boxes inside an image of shape (h, w)."""
    h, w = shape
    xy = rng.uniform(0, 1, (n, 2, 2)) * np.array([w, h])
    return np.concatenate([xy.min(1), xy.max(1)], axis=1)


@pytest.mark.parametrize("orig,new", CASES)
def test_letterbox_places_image_at_pad_with_grey_around(orig, new):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*orig, 3), dtype=np.uint8)
    out, ratio, (pw, ph) = letterbox(img, new)
    assert out.shape == (*new, 3) and out.dtype == np.uint8
    assert ratio == pytest.approx(min(new[0] / orig[0], new[1] / orig[1]))
    nh, nw = round(orig[0] * ratio), round(orig[1] * ratio)
    assert (nh == new[0] or nw == new[1])  # the long side fills the input
    top, left = int(ph), int(pw)
    assert (top, left) == (ph, pw) and abs(2 * top + nh - new[0]) <= 1 and abs(2 * left + nw - new[1]) <= 1
    resized = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != orig else img
    np.testing.assert_array_equal(out[top:top + nh, left:left + nw], resized)
    mask = np.ones(new, bool)
    mask[top:top + nh, left:left + nw] = False
    assert (out[mask] == 114).all()


@pytest.mark.parametrize("orig,new", CASES)
def test_drone_pixels_land_on_forward_mapped_box(orig, new):
    h, w = orig
    img = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = int(0.3 * w), int(0.2 * h), int(0.7 * w), int(0.9 * h)
    img[y1:y2, x1:x2] = 255  # pixels x1..x2-1 -> continuous box [x1, x2)
    out, ratio, pad = letterbox(img, new)
    ys, xs = np.nonzero(out[..., 0] > 127)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
    mapped = boxes_xyxy_original_to_letterbox(np.array([[x1, y1, x2, y2]], np.float64), ratio, pad)[0]
    np.testing.assert_allclose(found, mapped, atol=1.0)


@pytest.mark.parametrize("orig,new", CASES)
def test_forward_then_inverse_is_exact_numpy_and_torch(orig, new):
    rng = np.random.default_rng(1)
    ratio, _, pad = letterbox_params(orig, new)
    boxes = _random_boxes(rng, orig)
    fwd = boxes_xyxy_original_to_letterbox(boxes, ratio, pad)
    assert isinstance(fwd, np.ndarray)
    np.testing.assert_allclose(fwd[:, 0::2], boxes[:, 0::2] * ratio + pad[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(fwd[:, 1::2], boxes[:, 1::2] * ratio + pad[1], rtol=0, atol=1e-9)
    back = boxes_xyxy_letterbox_to_original(fwd, ratio, pad, orig)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-9)
    # the full letterboxed image area maps back onto the full original image
    content = np.array([[pad[0], pad[1], pad[0] + orig[1] * ratio, pad[1] + orig[0] * ratio]])
    np.testing.assert_allclose(boxes_xyxy_letterbox_to_original(content, ratio, pad, orig),
                               [[0, 0, orig[1], orig[0]]], atol=1e-9)

    t64 = torch.from_numpy(boxes)
    back64 = boxes_xyxy_letterbox_to_original(boxes_xyxy_original_to_letterbox(t64, ratio, pad), ratio, pad, orig)
    assert isinstance(back64, torch.Tensor) and back64.dtype == torch.float64
    torch.testing.assert_close(back64, t64, rtol=0, atol=1e-9)
    t32 = t64.float()
    fwd32 = boxes_xyxy_original_to_letterbox(t32, ratio, pad)
    assert fwd32.dtype == torch.float32
    torch.testing.assert_close(fwd32.double(), torch.from_numpy(fwd), rtol=0, atol=1e-3)
    torch.testing.assert_close(boxes_xyxy_letterbox_to_original(fwd32, ratio, pad, orig), t32, rtol=1e-6, atol=1e-3)
    assert torch.equal(t32, t64.float())  # inputs are not modified


def test_inverse_clips_to_original_image_and_keeps_batch_dims():
    orig, new = (48, 64), (64, 96)
    ratio, _, pad = letterbox_params(orig, new)
    lb = torch.tensor([[[-5.0, -5.0, 200.0, 200.0], [pad[0] + 1, pad[1] + 1, pad[0] + 3, pad[1] + 5]]])
    back = boxes_xyxy_letterbox_to_original(lb, ratio, pad, orig)
    assert back.shape == (1, 2, 4)
    torch.testing.assert_close(back[0, 0], torch.tensor([0.0, 0.0, 64.0, 48.0]))
    torch.testing.assert_close(back[0, 1], torch.tensor([1 / ratio, 1 / ratio, 3 / ratio, 5 / ratio]))
    ints = np.array([[0, 0, 10, 10]])
    assert boxes_xyxy_original_to_letterbox(ints, ratio, pad).dtype == np.float64
    np.testing.assert_array_equal(ints, [[0, 0, 10, 10]])


@pytest.mark.parametrize("orig,new", CASES)
def test_letterbox_matches_ultralytics(orig, new):
    """Oracle: Ultralytics' centred LetterBox gives the same pixels and padding."""
    letterbox_mod = pytest.importorskip("ultralytics.data.augment")
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (*orig, 3), dtype=np.uint8)
    ref = letterbox_mod.LetterBox(new_shape=new, auto=False, scaleup=True, center=True)(image=img)
    ours, _, _ = letterbox(img, new)
    np.testing.assert_array_equal(ours, ref)


def test_letterbox_to_original_per_box_parameters_equal_per_image_calls():
    rng = np.random.default_rng(0)
    shapes = [(720, 1280), (1280, 720), (480, 640)]
    boxes, ratios, pads, origs, expected = [], [], [], [], []
    for k, orig in enumerate(shapes):
        ratio, _, pad = letterbox_params(orig, (640, 640))
        b = np.sort(rng.uniform(-20, 660, (4, 4)).reshape(4, 2, 2), axis=1).reshape(4, 4)[:, [0, 2, 1, 3]]
        expected.append(boxes_xyxy_letterbox_to_original(b, ratio, pad, orig))
        boxes.append(b)
        ratios += [ratio] * 4
        pads += [pad] * 4
        origs += [orig] * 4
    out = boxes_xyxy_letterbox_to_original(np.concatenate(boxes), np.array(ratios), np.array(pads), np.array(origs))
    np.testing.assert_array_equal(out, np.concatenate(expected))


def test_letterbox_to_original_per_box_tensors_equal_numpy():
    """Per-box parameters as float64 tensors (the evaluator maps on the GPU) give numpy's numbers bit for bit."""
    rng = np.random.default_rng(1)
    boxes = rng.uniform(-30, 670, (50, 4)).astype(np.float32).astype(np.float64)
    ratios = rng.choice([0.5, 1 / 3, 0.8888889], 50).astype(np.float32)
    pads = rng.choice([0.0, 140.0, 7.0], (50, 2)).astype(np.float32)
    origs = rng.choice([720, 1280, 75], (50, 2))
    expected = boxes_xyxy_letterbox_to_original(boxes, ratios, pads, origs)
    out = boxes_xyxy_letterbox_to_original(torch.from_numpy(boxes), torch.from_numpy(ratios).double(),
                                           torch.from_numpy(pads).double(), torch.from_numpy(origs).double())
    assert out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), expected)
    assert (expected == 0).any() and (expected == origs[:, [1, 0, 1, 0]]).any()  # clipping happened on both sides


# ------------------------------------------------------------------ rectangular evaluation (EVAL_RECT)
@pytest.mark.parametrize("long_side, expected", [(64, None), (640, (384, 640)), (1280, (736, 1280))])
def test_rect_shape_of_fred_frames(long_side, expected):
    """1280x720 frames: 720/1280 * L rounded up to a multiple of 32; at 64 that is 64 again (no gain: None)."""
    assert rect_shape([(720, 1280)] * 3, long_side) == expected
    if expected is not None:  # the frame is resized exactly as into the square L x L input: only the padding shrinks
        assert letterbox_params((720, 1280), expected)[:2] == letterbox_params((720, 1280), (long_side,) * 2)[:2]


def test_rect_shape_of_mixed_sizes_fits_the_tallest_and_refuses_mixed_orientations():
    assert rect_shape([(720, 1280), (480, 640)], 640) == (480, 640)  # 4:3 needs more height than 16:9
    assert rect_shape([(1280, 720), (1920, 1080)], 640) == (640, 384)  # portrait: the width shrinks
    assert rect_shape([(720, 1280), (1280, 720)], 640) is None  # both orientations: only a square fits both
    assert rect_shape([(100, 100)], 640) is None and rect_shape([], 640) is None
    with pytest.raises(ValueError, match="multiple of stride"):
        rect_shape([(720, 1280)], 650)


@pytest.mark.parametrize("long_side", [640, 1280])
def test_box_drawn_into_a_fred_frame_comes_back_through_the_rect_letterbox(long_side):
    """A GT box drawn into a 1280x720 frame, letterboxed at the rect shape, found in the input pixels and mapped back
    equals itself within one input pixel (one original pixel at 1280, two at 640)."""
    new = rect_shape([(720, 1280)], long_side)
    img = np.zeros((720, 1280, 3), np.uint8)
    x1, y1, x2, y2 = 301, 117, 377, 163  # a drone-sized box at odd coordinates
    img[y1:y2, x1:x2] = 255
    out, ratio, pad = letterbox(img, new)
    assert out.shape[:2] == new
    ys, xs = np.nonzero(out[..., 0] > 127)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64)
    back = boxes_xyxy_letterbox_to_original(found, ratio, pad, (720, 1280))
    np.testing.assert_allclose(back[0], [x1, y1, x2, y2], atol=1.0 / ratio)
