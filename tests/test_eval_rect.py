"""Rectangular evaluation (EVAL_RECT): the val input shape found from the frames, and an ideal predictor that sees
only pixels scores mAP 1.0 on the square and on the rectangular letterbox alike, through build_fred's val dataset and
loader and evaluation.evaluator.evaluate (the path of train_fred.py's val and of eval_fred.py)."""
import glob
import logging
import os

import cv2
import numpy as np
import pytest
import torch

import build_fred
import config_fred
from datasets.fred_index import build_fred_index
from evaluation.evaluator import evaluate
from tools.synthetic import generate_fred
from utils.config import config_dict

SIZE = (144, 256)  # 16:9 frames (h, w); at INPUT_SHAPE [128, 128]: scale 1/2, rect input (96, 128)


def draw_boxes(root: str, seed: int) -> None:
    """Replace every event frame under root by a black image holding one white box (its label), or none (a negative
    with an empty label file). Box corners are multiples of 4 px, so the letterbox at scale 1/2 keeps them sharp."""
    rng = np.random.default_rng(seed)
    for image in sorted(glob.glob(os.path.join(root, "*", "Event", "Frames", "*.png"))):
        h, w = cv2.imread(image).shape[:2]
        img = np.zeros((h, w, 3), np.uint8)
        line = ""
        if rng.random() < 0.8:
            bw, bh = (rng.uniform(0.3, 0.8, 2) * (w, h) / 4).astype(int) * 4
            x1, y1 = rng.integers(0, (w - bw) // 4 + 1) * 4, rng.integers(0, (h - bh) // 4 + 1) * 4
            img[y1:y1 + bh, x1:x1 + bw] = 255
            line = f"0 {(x1 + bw / 2) / w:.8f} {(y1 + bh / 2) / h:.8f} {bw / w:.8f} {bh / h:.8f}\n"
        cv2.imwrite(image, img)
        label = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(image))), "Event_YOLO",
                             os.path.splitext(os.path.basename(image))[0] + ".txt")
        with open(label, "w") as f:
            f.write(line)


class WhiteBoxFinder(torch.nn.Module):
    """An ideal predictor that sees only the input pixels: for each image the box around its white pixels (above the
    letterbox's grey 114), score 1; an image without white pixels gets a score-0 box. Records the input shapes."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.shapes: set[tuple[int, int]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.add(tuple(x.shape[2:]))
        out = torch.zeros(x.shape[0], 5, 1)
        out[:, 2:4] = 1.0
        for b, white in enumerate(x[:, 0] > 0.75):
            ys, xs = torch.nonzero(white, as_tuple=True)
            if len(xs):
                x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                out[b, :, 0] = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.tensor(1)])
        return out


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """A FRED of 3 sequences x 5 frames of 256x144 drawn boxes, and its val frames."""
    root = str(tmp_path_factory.mktemp("rect") / "fred")
    generate_fred(root, sequences=3, frames=5, seed=4, size=SIZE)
    draw_boxes(root, seed=4)
    index = build_fred_index(root, "event", split="random:0.5:0")
    return {"root": root, "val": index.val}


def config(root: str, rect: bool, **keys) -> dict:
    """config_fred's keys for a CPU evaluation of root at 128."""
    return {**config_dict(config_fred), "DATA_ROOT": root, "INPUT_SHAPE": [128, 128], "EVAL_RECT": rect,
            "EVAL_WORKERS": 0, "EVAL_BATCH_SIZE": 4, "FRAME_CACHE": "off", **keys}


@pytest.mark.parametrize("cache", ["off", "disk"])
def test_ideal_predictor_scores_one_on_square_and_rect(drawn, cache, tmp_path):
    frames, results = drawn["val"], {}
    assert sum(len(f.boxes) for f in frames) >= 3 and any(len(f.boxes) == 0 for f in frames)
    for rect in (False, True):
        cfg = config(drawn["root"], rect, FRAME_CACHE=cache, FRAME_CACHE_DIR=str(tmp_path / "frames"))
        frame_cache = build_fred.build_frame_cache(cfg, frames, "val", progress=False)
        assert (frame_cache is None) == (cache == "off")
        shape = build_fred.val_input_shape(cfg, frames, frame_cache)
        assert shape == ((96, 128) if rect else (128, 128))
        dataset = build_fred.val_dataset(frames, shape, frame_cache)
        loader = build_fred.val_loader(cfg, dataset, torch.device("cpu"))
        model = WhiteBoxFinder()
        result = evaluate(model, loader, frames, "cpu", **build_fred.evaluation_settings(cfg, torch.device("cpu")))
        assert model.shapes == {shape}
        assert result.metrics["images"] == len(frames)
        assert result.metrics["mAP50"] == pytest.approx(1.0) and result.metrics["mAP50_95"] == pytest.approx(1.0)
        results[rect] = result.results
    np.testing.assert_allclose(results[True], results[False], atol=1e-3)  # the same boxes in original pixels


def test_rect_with_a_wrong_pad_is_caught(drawn):
    """The test above can fail: rect images scored with the square letterbox's pads lose their boxes."""
    frames = drawn["val"]
    cfg = config(drawn["root"], True)
    dataset = build_fred.val_dataset(frames, build_fred.val_input_shape(cfg, frames), None)

    def square_pads():
        for batch in build_fred.val_loader(cfg, dataset, torch.device("cpu")):
            batch["pads"][:, 1] += 16  # (128 - 96) / 2: where the square letterbox puts the frame
            yield batch

    assert evaluate(WhiteBoxFinder(), square_pads(), frames, "cpu", amp=False).metrics["mAP50_95"] < 0.5


def test_val_input_shape_from_frames_and_fallback(tmp_path, caplog):
    """Off: INPUT_SHAPE. On: the frames' shape at 640 and 1280 (read from one image per sequence, or from the frame
    cache); frames of both orientations: INPUT_SHAPE again, with a log line."""
    wide, tall = str(tmp_path / "wide"), str(tmp_path / "tall")
    generate_fred(wide, sequences=2, frames=4, seed=1, size=(72, 128))
    generate_fred(tall, sequences=2, frames=4, seed=1, size=(128, 72))
    frames = build_fred_index(wide, "event", split="random:0.5:0").train
    for side, expected in ((640, (384, 640)), (1280, (736, 1280))):
        cfg = config(wide, True, INPUT_SHAPE=[side, side])
        assert build_fred.val_input_shape(cfg, frames) == expected
        assert build_fred.val_input_shape({**cfg, "EVAL_RECT": False}, frames) == (side, side)
    cfg = config(wide, True, FRAME_CACHE="disk", FRAME_CACHE_DIR=str(tmp_path / "frames"))
    cache = build_fred.build_frame_cache(cfg, frames, "val", progress=False)
    assert build_fred.frame_sizes(frames, cache) == build_fred.frame_sizes(frames) == {(72, 128)}
    portrait = build_fred_index(tall, "event", split="random:0.5:0").train
    assert build_fred.val_input_shape(config(tall, True, INPUT_SHAPE=[640, 640]), portrait) == (640, 384)
    with caplog.at_level(logging.INFO, logger="build_fred"):
        assert build_fred.val_input_shape(config(wide, True), frames + portrait) == (128, 128)
    assert "EVAL_RECT: no rectangle smaller than 128x128" in caplog.text and "128x72, 72x128" in caplog.text
