"""ONNX export (inference/onnx_export.py, export_fred.py) and the onnxruntime detector (inference/onnx_model.py)
against the PyTorch model and evaluation/postprocess.py, on tiny YOLOv8n models at 64x64 (CPU)."""
import glob
import json
import os
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

pytest.importorskip("onnx", reason="export tests need onnx (requirements-dev.txt)")
pytest.importorskip("onnxruntime", reason="export tests need onnxruntime (requirements-dev.txt)")

import export_fred  # noqa: E402
from datasets.event_frames import event_planes  # noqa: E402
from evaluation.postprocess import non_max_suppression  # noqa: E402
from inference.checkpoint import CheckpointError  # noqa: E402
from inference.onnx_export import NmsModel, export_onnx  # noqa: E402
from inference.onnx_model import OnnxDetector  # noqa: E402
from onnxruntime import InferenceSession  # noqa: E402
from nets import build_model  # noqa: E402
from nets.fusion import build_fusion_model  # noqa: E402
from tests.bad_checkpoints import make_bad_checkpoint  # noqa: E402
from tests.test_postprocess import make_prediction  # noqa: E402
from tools.synthetic import generate_fred  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = (64, 64)
CONF, IOU, MAX_DET = 0.25, 0.6, 50
# kind -> (modality, fusion, arch, input channels)
KINDS = {"yolov8": ("event", None, "yolov8", 3), "yolov8-p2": ("rgb", None, "yolov8-p2", 3),
         "early": ("fusion", "early", "yolov8", 5), "mid": ("fusion", "mid", "yolov8", 5),
         "yolo11": ("event", None, "yolo11", 3)}


def make_model(kind: str, num_classes: int = 2, seed: int = 0) -> torch.nn.Module:
    """A YOLOv8n of this kind (KINDS), eval mode, whose BatchNorm statistics are measured on random images (so that its
    features depend on the input and fusing the BatchNorms changes the weights), with class biases near 0 (so that
    many boxes score above CONF and NMS has work)."""
    _, fusion, arch, channels = KINDS[kind]
    torch.manual_seed(seed)
    model = build_fusion_model("n", num_classes, fusion, arch) if fusion else build_model("n", num_classes, channels,
                                                                                          arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # running statistics: the mean over the batches below
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.train()
        model(torch.rand(4, channels, *SIZE))
        for cls in model.head.cls:  # logits of about unit spread: no score rounds to 1.0 (ties NMS breaks at random)
            cls[-1].weight.mul_(0.1)
            cls[-1].bias.uniform_(-1.0, 1.0)
    return model.eval()


def save_checkpoint(path: str, model: torch.nn.Module, kind: str) -> str:
    """model (of this kind, KINDS) saved the way train_fred.py saves one: weights, size, architecture, modality,
    fusion kind, config (64x64 input)."""
    modality, fusion, _, _ = KINDS[kind]
    torch.save({"model": model.state_dict(), "phi": model.phi, "arch": model.arch, "num_classes": model.num_classes,
                "in_channels": model.in_channels, "modality": modality, "fusion": fusion,
                "config": {"INPUT_SHAPE": list(SIZE), "CLASS_NAMES": ["drone"]}}, path)
    return path


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """A few generated FRED frames at 64x64: {"rgb": [4, 3, H, W], "event": [4, 3, H, W], "fusion": [4, 5, H, W]},
    float 0..1."""
    root = str(tmp_path_factory.mktemp("export_fred") / "fred")
    generate_fred(root, sequences=1, frames=4, seed=1, size=SIZE)
    rgb = [cv2.imread(p) for p in sorted(glob.glob(os.path.join(root, "*", "PADDED_RGB", "*.jpg")))][:4]
    event = [cv2.imread(p) for p in sorted(glob.glob(os.path.join(root, "*", "Event", "Frames", "*.png")))][:4]

    def tensor(images):
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0

    rgb_t = tensor([cv2.resize(im, SIZE[::-1])[..., ::-1] for im in rgb])
    event_t = tensor([cv2.resize(im, SIZE[::-1])[..., ::-1] for im in event])
    planes = tensor([cv2.resize(np.concatenate(event_planes(im), 2), SIZE[::-1], interpolation=cv2.INTER_NEAREST)
                     for im in event])
    # a little noise: a random network scores the plain sky's anchors alike, and which of two boxes of equal score
    # NMS keeps is up to float rounding (a trained network's overlapping boxes do not tie like that)
    gen = torch.Generator().manual_seed(0)
    return {name: (x + 0.05 * torch.rand(x.shape, generator=gen)).clamp(0, 1) for name, x in
            (("rgb", rgb_t), ("event", event_t), ("fusion", torch.cat((rgb_t, planes), 1)))}


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference between a and b, relative to b's largest magnitude, boxes and scores apart."""
    return max(float((a[:, :4] - b[:, :4]).abs().max() / b[:, :4].abs().max()),
               float((a[:, 4:] - b[:, 4:]).abs().max() / b[:, 4:].abs().max()))


def assert_same_detections(got: list, want: list) -> int:
    """Same detections per image: one to one, the same class, box and score up to float rounding (1e-4 relative to
    the largest coordinate, 1e-4 on scores; rows of equal scores may come in another order); got by decreasing
    score. Returns how many."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape, (g.shape, w.shape)
        assert (g[1:, 4] <= g[:-1, 4]).all()
        box_tol = 1e-4 * float(w[:, :4].abs().max()) if len(w) else 0.0  # as rel_diff: relative to the largest
        diff = (g[:, None, :5] - w[None, :, :5]).abs()
        close = (diff[..., :4] <= box_tol).all(-1) & (diff[..., 4] <= 1e-4) & (g[:, None, 5] == w[None, :, 5])
        rows, cols = linear_sum_assignment(~close.numpy())
        assert close[rows, cols].all(), f"{int((~close[rows, cols]).sum())} of {len(w)} detections differ"
    return sum(len(w) for w in want)


def export(model, path, **kw):
    """export_onnx with the test's defaults (64x64, static, fp32, no NMS)."""
    args = dict(imgsz=SIZE, in_channels=model.in_channels, dynamic=False, half=False, nms=False, conf=CONF, iou=IOU,
                max_det=MAX_DET, meta={"modality": "event", "fusion": None, "class_names": ["drone", "class1"]})
    args.update(kw)
    return export_onnx(model.fuse(), str(path), **args)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_against_pytorch(kind, frames, tmp_path):
    """Raw output within 1e-4 (relative) of the fused PyTorch model; the same detections after our NMS."""
    modality, fusion, arch, channels = KINDS[kind]
    model = make_model(kind)
    path = export(model, tmp_path / "model.onnx", meta={"modality": modality, "fusion": fusion,
                                                        "class_names": ["drone", "class1"]})
    images = frames[modality]
    assert images.shape[1] == channels
    with torch.no_grad():
        want = model(images)
    detector = OnnxDetector(path, "cpu", conf=CONF, iou=IOU, max_det=MAX_DET)
    got = detector.raw(images)
    assert got.shape == want.shape
    assert rel_diff(got, want) <= 1e-4
    n = assert_same_detections(detector.detect(images), non_max_suppression(want, CONF, IOU, MAX_DET))
    assert n > 0  # NMS had work

    meta = detector.meta
    assert {k: meta[k] for k in ("modality", "fusion", "num_classes", "class_names", "in_channels", "arch", "phi")} \
        == {"modality": modality, "fusion": fusion, "num_classes": 2, "class_names": ["drone", "class1"],
            "in_channels": channels, "arch": arch, "phi": "n"}
    assert meta["input_shape"] == list(SIZE)
    assert meta["stride"] == [int(s) for s in model.stride]
    assert (meta["nms"], meta["conf"], meta["iou"], meta["max_det"]) == (False, CONF, IOU, MAX_DET)


def test_dynamic_batch_one_file(frames, tmp_path):
    model = make_model("yolov8")
    path = export(model, tmp_path / "dynamic.onnx", dynamic=True)
    detector = OnnxDetector(path, "cpu", conf=CONF, iou=IOU, max_det=MAX_DET)
    assert detector.meta["dynamic"] is True
    for batch in (1, 3):
        images = frames["event"][:batch]
        with torch.no_grad():
            want = model(images)
        got = detector.raw(images)
        assert got.shape[0] == batch and rel_diff(got, want) <= 1e-4
        assert_same_detections(detector.detect(images), non_max_suppression(want, CONF, IOU, MAX_DET))


def test_static_batch_runs_any_number_of_images(frames, tmp_path):
    """A model exported for batch 1 runs a batch of 3 image by image."""
    model = make_model("yolov8")
    detector = OnnxDetector(export(model, tmp_path / "static.onnx"), "cpu", conf=CONF, iou=IOU, max_det=MAX_DET)
    with torch.no_grad():
        want = model(frames["event"][:3])
    assert rel_diff(detector.raw(frames["event"][:3]), want) <= 1e-4


def test_nms_graph_gives_our_detections(frames, tmp_path):
    """--nms: the graph's detections equal evaluation/postprocess.py's on the model's raw output, with dynamic
    batch; rows past the count are zeros; the raw output is there too."""
    model = make_model("yolov8-p2")
    path = export(model, tmp_path / "nms.onnx", nms=True, dynamic=True)
    detector = OnnxDetector(path, "cpu")
    assert detector.meta["nms"] is True and (detector.meta["conf"], detector.meta["iou"]) == (CONF, IOU)
    for batch in (1, 4):
        images = frames["rgb"][:batch]
        with torch.no_grad():
            want = non_max_suppression(model(images), CONF, IOU, MAX_DET)
        assert assert_same_detections(detector.detect(images), want) > 0
        detections, counts, raw = detector.session.run(None, {"images": images.numpy()})
        assert detections.shape == (batch, MAX_DET, 6) and counts.shape == (batch,)
        assert counts.tolist() == [len(w) for w in want]
        assert all((detections[b, n:] == 0).all() for b, n in enumerate(counts))
    # a higher score threshold than the graph's is applied on its output (exact); max_det too
    strict = OnnxDetector(path, "cpu", conf=0.5, max_det=3)
    with torch.no_grad():
        want = non_max_suppression(model(frames["rgb"]), 0.5, IOU, 3)
    assert_same_detections(strict.detect(frames["rgb"]), want)


@pytest.mark.parametrize("case", [dict(nc=1, conf=0.001, iou=0.7, max_det=300, max_nms=30000),
                                  dict(nc=3, conf=0.25, iou=0.5, max_det=300, max_nms=30000),
                                  dict(nc=3, conf=0.001, iou=0.7, max_det=5, max_nms=30000),
                                  dict(nc=1, conf=0.001, iou=0.6, max_det=300, max_nms=40)], ids=str)
def test_nms_graph_equals_our_nms_on_crowded_boxes(case, tmp_path):
    """The NMS part of the graph alone, on crowded predictions of several classes (test_postprocess's), against
    non_max_suppression: the same rows; max_det and max_nms as ours."""
    pred = make_prediction(3, case["nc"], 400, seed=case["nc"] + case["max_det"])
    graph = NmsModel(torch.nn.Identity(), case["conf"], case["iou"], case["max_det"], case["max_nms"])
    path = str(tmp_path / "nms_only.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's and the legacy exporter's (export_onnx silences them)
        torch.onnx.export(graph, (pred,), path, dynamo=False, opset_version=17, input_names=["pred"],
                          output_names=["detections", "num_detections", "output"])
    detections, counts, _ = InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"pred": pred.numpy()})
    want = non_max_suppression(pred, case["conf"], case["iou"], case["max_det"], case["max_nms"])
    got = [torch.from_numpy(d[:n]) for d, n in zip(detections, counts)]
    assert sum(len(w) for w in want) > 3
    assert_same_detections(got, want)
    # the PyTorch forward of the wrapper gives the same rows (it is what the exporter traces)
    torch_rows, torch_counts, _ = graph(pred)
    assert torch_counts.tolist() == counts.tolist()
    torch.testing.assert_close(torch_rows, torch.from_numpy(detections))


def test_static_model_refuses_another_size(frames, tmp_path):
    detector = OnnxDetector(export(make_model("yolov8"), tmp_path / "m.onnx"), "cpu")
    with pytest.raises(ValueError) as info:
        detector.detect(torch.rand(1, 3, 64, 96))
    message = str(info.value)
    assert "64x96" in message and "64x64" in message and "--imgsz" in message and "m.onnx" in message
    with pytest.raises(ValueError, match="3 channels"):
        detector.detect(torch.rand(1, 5, 64, 64))


def test_half_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="CUDA"):
        export(make_model("yolov8"), tmp_path / "half.onnx", half=True)


def test_bad_size_refused(tmp_path):
    with pytest.raises(ValueError, match="multiples of 32"):
        export(make_model("yolov8"), tmp_path / "odd.onnx", imgsz=(64, 80))


def test_detector_without_onnxruntime_says_what_to_install(tmp_path, monkeypatch):
    path = export(make_model("yolov8"), tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(CheckpointError, match="pip install onnxruntime"):
        OnnxDetector(path, "cpu")


def test_detector_refuses_foreign_onnx(tmp_path):
    path = str(tmp_path / "foreign.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.rand(1, 3, 8, 8),), path, dynamo=False)
    with pytest.raises(CheckpointError, match="export_fred.py") as info:
        OnnxDetector(path, "cpu")
    assert path in str(info.value)
    missing = str(tmp_path / "missing.onnx")
    with pytest.raises(CheckpointError, match="does not exist"):
        OnnxDetector(missing, "cpu")


def test_export_fred_end_to_end(frames, tmp_path, capsys):
    """Default output path, the checkpoint's size and classes, verification printed, TensorRT hint, JSON last."""
    model = make_model("mid", num_classes=1)
    weights = save_checkpoint(str(tmp_path / "best.pth"), model, "mid")
    assert export_fred.main(["--weights", weights, "--format", "onnx", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["file"] == str(tmp_path / "best.onnx") and os.path.isfile(result["file"])
    assert result["size_mb"] == pytest.approx(os.path.getsize(result["file"]) / 1e6, abs=0.01)
    assert 0 <= result["max_rel_diff"] <= 1e-4 and result["seconds"] > 0
    assert any("trtexec --onnx=" in line and "--fp16" in line for line in out)
    assert any("onnxruntime" in line and "PyTorch" in line for line in out)
    detector = OnnxDetector(result["file"], "cpu", conf=CONF, iou=IOU, max_det=MAX_DET)
    assert {k: detector.meta[k] for k in ("modality", "fusion", "in_channels", "class_names", "input_shape")} == \
        {"modality": "fusion", "fusion": "mid", "in_channels": 5, "class_names": ["drone"], "input_shape": [64, 64]}
    with torch.no_grad():
        want = non_max_suppression(model.fuse()(frames["fusion"]), CONF, IOU, MAX_DET)
    assert_same_detections(detector.detect(frames["fusion"]), want)

    # --out, --imgsz H W, --dynamic, --nms
    out_file = str(tmp_path / "sub" / "p2_nms.onnx")
    p2 = save_checkpoint(str(tmp_path / "p2.pth"), make_model("yolov8-p2", num_classes=1), "yolov8-p2")
    assert export_fred.main(["--weights", p2, "--out", out_file, "--imgsz", "64", "96", "--dynamic", "--nms",
                             "--conf", "0.3", "--iou", "0.5", "--max_det", "7"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["file"] == out_file and result["max_rel_diff"] <= 1e-4
    meta = OnnxDetector(out_file, "cpu").meta
    assert (meta["input_shape"], meta["nms"], meta["dynamic"], meta["conf"], meta["iou"], meta["max_det"],
            meta["arch"], meta["modality"]) == ([64, 96], True, True, 0.3, 0.5, 7, "yolov8-p2", "rgb")


@pytest.mark.parametrize("extra, message", [
    (["--imgsz", "64", "80"], "multiples of 32"),
    (["--half", "--device", "cpu"], "CUDA"),
])
def test_export_fred_bad_arguments_exit_2(extra, message, tmp_path, capsys):
    weights = save_checkpoint(str(tmp_path / "best.pth"), make_model("yolov8", num_classes=1), "yolov8")
    assert export_fred.main(["--weights", weights, *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "export_fred.py: error:" in captured.err and captured.out == ""
    assert not os.path.exists(str(tmp_path / "best.onnx"))


def test_export_fred_bad_checkpoint_exit_2(tmp_path, capsys):
    bad = make_bad_checkpoint("text", str(tmp_path))
    assert export_fred.main(["--weights", bad]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    bare = str(tmp_path / "bare.pth")
    torch.save(make_model("yolov8", num_classes=1).state_dict(), bare)  # no INPUT_SHAPE recorded
    assert export_fred.main(["--weights", bare]) == 2
    assert "--imgsz" in capsys.readouterr().err


def test_export_fred_missing_weights_no_traceback(tmp_path):
    missing = str(tmp_path / "nope.pth")
    proc = subprocess.run([sys.executable, "export_fred.py", "--weights", missing], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert missing in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    proc = subprocess.run([sys.executable, "export_fred.py", "--weights", missing, "--imgsz", "1", "2", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--imgsz" in proc.stderr and "Traceback" not in proc.stderr


def test_scores_are_compared_on_their_own_scale_not_the_largest_score():
    """An untrained model's scores are all ~1e-4: a 3e-8 difference is no 2e-4 'relative' mismatch (scores lie in
    0..1), while a real one (1e-3) still is."""
    from export_fred import relative_difference

    want = torch.cat([torch.full((1, 4, 50), 300.0), torch.full((1, 1, 50), 1.6e-4)], 1)
    got = want.clone()
    got[:, 4] += 2.6e-8
    assert relative_difference(got, want) < 1e-4
    got[:, 4] += 1e-3
    assert relative_difference(got, want) > 1e-4
    got = want.clone()
    got[:, 0] += 0.1  # boxes: relative to the largest coordinate (300 px)
    assert relative_difference(got, want) == pytest.approx(0.1 / 300, rel=1e-3)
