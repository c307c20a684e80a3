"""predict_fred.py and inference/: every source kind, the outputs' formats, bad input, Ctrl-C, constant memory (CPU,
tiny random or one-epoch YOLOv8n checkpoints at 64x64 on generated FRED)."""
import gc
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc

import cv2
import numpy as np
import pytest
import torch

import eval_fred
import predict_fred
from datasets.fred_dataset import FredDataset
from datasets.fred_index import EVENT_IMAGE_DIR, build_fred_index
from inference.checkpoint import CheckpointError
from inference.detector import TorchDetector, frames_to_input, load_detector
from inference.pipeline import prepare, run_predictions
from inference.sources import SourceFrame, open_source, stream_source
from inference.writers import VIDEO_NAME, Outputs
from nets import build_model
from nets.fusion import build_fusion_model
from tests.test_eval_fred import LARGE_BOX_SETS, train_on_large_boxes
from tools.synthetic import generate_fred
from utils.letterbox import boxes_xyxy_letterbox_to_original, boxes_xyxy_original_to_letterbox, letterbox, rect_input_shape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = ["--device", "cpu", "--conf", "0.0001"]


def save_checkpoint(path: str, model: torch.nn.Module, modality: str, fusion: str | None = None) -> str:
    """A checkpoint with the keys train_fred.py writes (weights, size, classes, channels, modality, config)."""
    torch.save({"model": model.state_dict(), "phi": "n", "arch": model.arch, "num_classes": 1,
                "in_channels": model.in_channels, "modality": modality, "fusion": fusion,
                "config": {"INPUT_SHAPE": [64, 64], "CLASS_NAMES": ["drone"], "RGB_IMAGE_DIR": "PADDED_RGB",
                           "FUSION_PAIR_TOLERANCE": 1 / 60}}, path)
    return path


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A 4 sequences x 6 frames FRED at 96x160 and random rgb, event and (early) fusion YOLOv8n checkpoints."""
    base = tmp_path_factory.mktemp("predict")
    root = str(base / "fred")
    generate_fred(root, sequences=4, frames=6, seed=3, size=(96, 160))
    torch.manual_seed(0)
    ckpts = {m: save_checkpoint(str(base / f"{m}.pth"), build_model("n", 1), m) for m in ("rgb", "event")}
    ckpts["fusion"] = save_checkpoint(str(base / "fusion.pth"), build_fusion_model("n", 1, "early"), "fusion",
                                      "early")
    sequences = sorted(d for d in glob.glob(os.path.join(root, "*")) if os.path.isdir(d))
    images = sorted(glob.glob(os.path.join(sequences[0], "PADDED_RGB", "*.jpg")))
    return {"base": base, "root": root, "ckpt": ckpts, "sequences": sequences, "images": images}


def run_main(argv, capsys):
    """predict_fred.main in this process: (exit status, final JSON line or None, stderr)."""
    status = predict_fred.main(argv)
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return status, (json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None), err


def video_info(path: str) -> tuple[int, float, tuple[int, int]]:
    """(frames read, fps, (h, w)) of a video file."""
    cap = cv2.VideoCapture(path)
    assert cap.isOpened(), path
    fps, n, shape = cap.get(cv2.CAP_PROP_FPS), 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, shape = n + 1, frame.shape[:2]
    cap.release()
    return n, fps, shape


def read_txt(path: str) -> np.ndarray:
    """A YOLO .txt with scores as float [N, 6]."""
    rows = [list(map(float, line.split())) for line in open(path) if line.strip()]
    assert all(len(r) == 6 for r in rows), path
    return np.asarray(rows).reshape(-1, 6)


def test_help_is_fast_and_loads_no_torch():
    code = ("import runpy, sys; sys.argv = ['predict_fred.py', '--help']\n"
            "try:\n    runpy.run_path('predict_fred.py', run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nprint('torch' in sys.modules)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--weights" in done.stdout and "--save_video" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "False"  # argparse answered before torch loaded
    assert time.perf_counter() - start < 10


def test_rect_input_shape_and_a_box_maps_back_exactly():
    assert rect_input_shape((720, 1280), 640) == (384, 640)
    assert rect_input_shape((1280, 720), 640) == (640, 384)
    assert rect_input_shape((96, 160), 64) == (64, 64)
    assert rect_input_shape((500, 500), 100) == (128, 128)  # the long side too is a multiple of the stride
    frame = np.zeros((720, 1280, 3), np.uint8)
    img, ratio, pad = letterbox(frame, rect_input_shape(frame.shape[:2], 640))
    assert img.shape == (384, 640, 3)
    box = np.array([[100.5, 200.25, 300.0, 400.75]])
    forward = boxes_xyxy_original_to_letterbox(box, ratio, pad)
    np.testing.assert_allclose(boxes_xyxy_letterbox_to_original(forward, ratio, pad, (720, 1280)), box, atol=1e-9)


def test_image_source_outputs(kit, capsys, tmp_path):
    out = str(tmp_path / "out")
    status, result, err = run_main(["--weights", kit["ckpt"]["rgb"], "--source", kit["images"][0], "--out", out,
                                    "--save_json", "--save_txt", "--save_frames", *CPU], capsys)
    assert status == 0, err
    assert result["frames"] == 1 and result["skipped"] == 0 and result["out"] == out
    assert result["fps"] > 0 and result["model_fps"] > 0
    dets = json.load(open(os.path.join(out, "detections.json")))
    assert dets["images"] == [{"id": 0, "file_name": os.path.basename(kit["images"][0]), "width": 160, "height": 96}]
    assert len(dets["annotations"]) == result["detections"] > 0
    for a in dets["annotations"]:
        x, y, w, h = a["bbox"]
        assert a["image_id"] == 0 and a["category_id"] == 1 and a["score"] >= 0.0001
        assert 0 <= x <= x + w <= 160 + 1e-6 and 0 <= y <= y + h <= 96 + 1e-6  # source pixels, not 64x64 input pixels
    stem = os.path.splitext(os.path.basename(kit["images"][0]))[0]
    rows = read_txt(os.path.join(out, "labels", stem + ".txt"))
    assert len(rows) == result["detections"] and (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1).all()
    first = max(dets["annotations"], key=lambda a: a["score"])  # the txt row of the best box is the JSON's, normalised
    x, y, w, h = first["bbox"]
    best = rows[np.argmax(rows[:, 5])]
    np.testing.assert_allclose(best[1:5], [(x + w / 2) / 160, (y + h / 2) / 96, w / 160, h / 96], atol=1e-4)
    assert cv2.imread(os.path.join(out, "frames", stem + ".jpg")).shape == (96, 160, 3)


def test_folder_in_natural_order_with_a_bad_frame_skipped(kit, capsys, caplog, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, src in zip(("f2.jpg", "f10.jpg", "f1.jpg"), kit["images"]):
        shutil.copy(src, folder / name)
    (folder / "f3.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image: ignored")
    out = str(tmp_path / "out")
    status, result, err = run_main(["--weights", kit["ckpt"]["event"], "--source", str(folder), "--out", out,
                                    "--save_video", "--save_json", "--save_txt", "--batch", "2", *CPU], capsys)
    assert status == 0, err
    assert result["frames"] == 4 and result["skipped"] == 1
    assert "f3.jpg" in open(os.path.join(out, "skipped.txt")).read() and "f3.jpg" in caplog.text
    names = [im["file_name"] for im in json.load(open(os.path.join(out, "detections.json")))["images"]]
    assert names == ["f1.jpg", "f2.jpg", "f10.jpg"]  # natural order, the unreadable one left out
    assert sorted(os.listdir(os.path.join(out, "labels"))) == ["f1.txt", "f10.txt", "f2.txt"]
    n, fps, shape = video_info(os.path.join(out, VIDEO_NAME))
    assert (n, shape) == (4, (96, 160)) and fps == pytest.approx(30)  # one frame out per frame in, 30 FPS


def test_glob_source(kit, capsys, tmp_path):
    pattern = os.path.join(kit["sequences"][1], "PADDED_RGB", "*.jpg")
    status, result, err = run_main(["--weights", kit["ckpt"]["rgb"], "--source", pattern, "--out",
                                    str(tmp_path / "out"), "--save_json", *CPU], capsys)
    assert status == 0, err
    assert result["frames"] == len(glob.glob(pattern)) > 0 and result["skipped"] == 0


def test_video_source_keeps_frame_count_and_fps(kit, capsys, tmp_path):
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (160, 96))
    for path in kit["images"] * 2:
        writer.write(cv2.imread(path))
    writer.release()
    frames_in = video_info(video)[0]
    assert frames_in == 2 * len(kit["images"])
    out = str(tmp_path / "out")
    status, result, err = run_main(["--weights", kit["ckpt"]["rgb"], "--source", video, "--out", out, "--save_video",
                                    "--save_txt", "--batch", "4", *CPU], capsys)
    assert status == 0, err
    assert result["frames"] == frames_in
    n, fps, shape = video_info(os.path.join(out, VIDEO_NAME))
    assert n == frames_in and fps == pytest.approx(12.0) and shape == (96, 160)
    assert len(os.listdir(os.path.join(out, "labels"))) == frames_in


@pytest.mark.parametrize("modality", ["rgb", "event", "fusion"])
def test_fred_sequence_folder(kit, modality, capsys, tmp_path):
    seq = kit["sequences"][0]
    out = str(tmp_path / "out")
    status, result, err = run_main(["--weights", kit["ckpt"][modality], "--source", seq, "--out", out, "--save_json",
                                    *CPU], capsys)
    assert status == 0, err
    names = [im["file_name"] for im in json.load(open(os.path.join(out, "detections.json")))["images"]]
    sid = os.path.basename(seq)
    if modality == "fusion":  # the pairs training makes: the sequence's fused frames, named by their RGB frame
        index = build_fred_index(kit["root"], "fusion", split="random:0.5:0")
        trained = sorted(os.path.relpath(f.image, kit["root"]) for f in index.train + index.val if f.sequence == sid)
        assert trained and set(trained) <= set(names)
    else:
        folder = "PADDED_RGB" if modality == "rgb" else EVENT_IMAGE_DIR
        expected = [os.path.relpath(p, kit["root"]) for p in glob.glob(os.path.join(seq, folder, "*"))]
        assert sorted(names) == sorted(expected)
    assert result["frames"] == len(names)


def test_fused_frames_are_the_networks_training_input(kit):
    """A fused frame of a sequence source, prepared for the network, equals FredDataset's validation item."""
    index = build_fred_index(kit["root"], "fusion", split="random:0.5:0")
    frame = index.val[0]
    source = open_source(os.path.dirname(os.path.dirname(frame.image)), "fusion")
    fused = next(f for f in source if os.path.join(kit["root"], f.name) == frame.image)
    assert fused.event_name == os.path.relpath(frame.event_image, kit["root"])
    prepared, ratio, pad = prepare(fused.image, (64, 64))
    item = FredDataset([frame], (64, 64))[0]
    assert prepared.shape == (64, 64, 5)
    np.testing.assert_array_equal(prepared, item["image"].permute(1, 2, 0).numpy())
    assert (ratio, pad) == (item["ratio"], item["pad"])


def test_detections_equal_eval_fred(tmp_path, capsys):
    """predict_fred.py on the val sequences gives eval_fred.py's detections (boxes in source pixels, scores) for the
    same one-epoch checkpoint and thresholds."""
    root, trained, _ = train_on_large_boxes(tmp_path, capsys)
    weights = os.path.join(trained["run_dir"], "best.pth")
    ev_dir = str(tmp_path / "eval")
    assert eval_fred.main(["--data_root", root, "--split", "random:0.5:0", "--device", "cpu", "--weights", weights,
                           "--save_json", ev_dir, "--set", *LARGE_BOX_SETS]) == 0
    capsys.readouterr()
    gt = json.load(open(os.path.join(ev_dir, "ground_truth.json")))
    ev = json.load(open(os.path.join(ev_dir, "detections.json")))
    by_name = {im["file_name"]: [] for im in gt["images"]}
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    for d in ev:
        by_name[names[d["image_id"]]].append(d["bbox"] + [d["score"]])
    predicted, compared = {}, 0
    for sid in sorted({name.split("/")[0] for name in by_name}):
        out = str(tmp_path / f"predict_{sid}")
        status, result, err = run_main(["--weights", weights, "--source", os.path.join(root, sid), "--out", out,
                                        "--save_json", "--device", "cpu", "--conf", "0.0001", "--iou", "0.6",
                                        "--max_det", "50", "--batch", "8"], capsys)
        assert status == 0, err
        dets = json.load(open(os.path.join(out, "detections.json")))
        ids = {im["id"]: im["file_name"] for im in dets["images"]}
        for im in dets["images"]:
            predicted[im["file_name"]] = []
        for a in dets["annotations"]:
            predicted[ids[a["image_id"]]].append(a["bbox"] + [a["score"]])
    for name, rows in by_name.items():
        mine = np.asarray(sorted(predicted[name], key=lambda r: -r[4])).reshape(-1, 5)
        theirs = np.asarray(sorted(rows, key=lambda r: -r[4])).reshape(-1, 5)
        assert mine.shape == theirs.shape, name
        np.testing.assert_allclose(mine, theirs, atol=2e-3)
        compared += len(rows)
    assert compared > 0


@pytest.mark.parametrize("case", ["missing_source", "unreadable_video", "not_a_checkpoint", "missing_weights",
                                  "empty_folder", "fusion_on_an_image"])
def test_bad_input_exit_2_naming_the_file(kit, case, capsys, tmp_path):
    weights, source = kit["ckpt"]["rgb"], kit["images"][0]
    if case == "missing_source":
        source = named = str(tmp_path / "nowhere.mp4")
    elif case == "unreadable_video":
        source = named = str(tmp_path / "broken.mp4")
        open(source, "wb").write(b"\x00\x00\x00\x18ftypmp42 but nothing after that")
    elif case == "not_a_checkpoint":
        weights = named = str(tmp_path / "notes.pth")
        open(weights, "w").write("hello")
    elif case == "missing_weights":
        weights = named = str(tmp_path / "none.pth")
    elif case == "empty_folder":
        source = named = str(tmp_path / "empty")
        os.mkdir(source)
    else:  # a fusion network needs both streams: a FRED sequence folder
        weights, named = kit["ckpt"]["fusion"], kit["images"][0]
    status, result, err = run_main(["--weights", weights, "--source", source, "--out", str(tmp_path / "out"), *CPU],
                                   capsys)
    assert status == 2 and named in err and "Traceback" not in err and result is None


def test_onnx_weights_go_to_the_onnx_runner(tmp_path):
    if importlib.util.find_spec("inference.onnx_model") is not None:
        pytest.skip("inference/onnx_model.py exists (export_fred.py's branch): its own tests cover .onnx weights")
    with pytest.raises(CheckpointError, match="ONNX support: export_fred.py / inference/onnx_model.py missing"):
        load_detector(str(tmp_path / "model.onnx"), "cpu", 0.25, 0.7, 300)


def test_torch_detector_meta(kit):
    det = TorchDetector(kit["ckpt"]["fusion"], "cpu", conf=0.25, iou=0.7, max_det=300)
    assert det.meta == {"modality": "fusion", "fusion": "early", "input_shape": [64, 64], "num_classes": 1,
                        "class_names": ["drone"], "in_channels": 5, "arch": "yolov8", "phi": "n"}
    out = det.detect(torch.rand(2, 5, 64, 96))
    assert len(out) == 2 and all(d.shape[1] == 6 for d in out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("modality", ["rgb", "fusion"])
def test_cuda_graph_gives_the_eager_detections(kit, modality):
    """detect_frames replays the network from a CUDA graph: the same detections as the eager detect() for a full
    batch, and the same raw outputs (fp16 rounding) for a short batch padded to the graph's size."""
    det = TorchDetector(kit["ckpt"][modality], "cuda", conf=0.01, iou=0.7, max_det=300)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (64, 96, det.meta["in_channels"]), dtype=np.uint8) for _ in range(5)]
    eager = det.detect(frames_to_input(frames, "cuda"))
    det.warm_up(frames[0].shape, 5)
    graphed = det.detect_frames(frames, 5)
    assert det._graphed is not None and len(det._graphed._graphs) == 1 and sum(len(d) for d in eager) > 0
    for g, e in zip(graphed, eager):
        torch.testing.assert_close(g, e)
    padded = det._graphed(frames, 8)[:5].float()
    with torch.no_grad():
        x = frames_to_input(frames, "cuda").contiguous(memory_format=torch.channels_last).half()
        torch.testing.assert_close(padded, det.model(x).float(), rtol=1e-2, atol=1e-2)


def test_ctrl_c_closes_a_playable_video_and_exits_130(kit, capsys, tmp_path, monkeypatch):
    calls = []
    original = TorchDetector.detect

    def interrupted(self, images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, images)

    monkeypatch.setattr(TorchDetector, "detect", interrupted)
    out = str(tmp_path / "out")
    pattern = os.path.join(kit["root"], "*", "PADDED_RGB", "*.jpg")
    status, result, err = run_main(["--weights", kit["ckpt"]["rgb"], "--source", pattern, "--out", out,
                                    "--save_video", "--batch", "2", *CPU], capsys)
    assert status == 130 and result["interrupted"] is True and result["frames"] == 4
    assert video_info(os.path.join(out, VIDEO_NAME))[0] == 4


class StubDetector:
    """A Detector without a network: one box per image (to measure the pipeline alone)."""
    meta = {"modality": "rgb", "fusion": None, "input_shape": [64, 64], "num_classes": 1, "class_names": ["drone"],
            "in_channels": 3, "arch": "yolov8", "phi": "n"}

    box = torch.tensor([[4.0, 5.0, 30.0, 40.0, 0.9, 0.0]])

    def detect(self, images):
        return [self.box for _ in images]


class WarmingStub(StubDetector):
    """StubDetector with TorchDetector's warm_up and detect_frames, recording the calls."""

    def __init__(self):
        self.calls = []

    def warm_up(self, shape, batch):
        self.calls.append(("warm_up", shape, batch))

    def detect_frames(self, frames, batch):
        self.calls.append(("detect", len(frames), frames[0].shape))
        return [self.box for _ in frames]


def test_the_detector_is_warmed_up_once_per_frame_shape_before_its_first_batch(tmp_path):
    """warm_up (TorchDetector: the CUDA graph's capture) runs at the first frame of each input shape, before that
    shape's first batch is complete, and not again; a short last batch goes to detect_frames with the run's batch."""
    frames = [np.zeros((32, 64, 3), np.uint8)] * 5 + [np.zeros((64, 32, 3), np.uint8)] * 2
    det = WarmingStub()
    outputs = Outputs(str(tmp_path), ["drone"], 30.0, json=True)
    try:
        stats = run_predictions(det, stream_source(iter(frames), 30.0), 64, 4, outputs)
    finally:
        outputs.close()
    assert stats["frames"] == 7 and stats["detections"] == 7
    assert det.calls == [("warm_up", (32, 64, 3), 4), ("detect", 4, (32, 64, 3)), ("detect", 1, (32, 64, 3)),
                         ("warm_up", (64, 32, 3), 4), ("detect", 2, (64, 32, 3))]


def heap_use(n: int, folder: str) -> tuple[int, int]:
    """(peak, retained) Python heap (numpy arrays included) of n generated 48x64 frames going through the decode and
    letterbox threads, batches of 16, box mapping and every writer (in its thread), with StubDetector: the peak while
    it runs, and what it still holds once run_predictions has returned and the outputs are closed."""
    def frames():
        rng = np.random.default_rng(0)
        for _ in range(n):
            yield rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)

    outputs = Outputs(folder, ["drone"], 30.0, video=True, frames=False, txt=True, json=True)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        stats = run_predictions(StubDetector(), stream_source(frames(), 30.0), 64, 16, outputs)
        outputs.close()
        gc.collect()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        outputs.close()
        tracemalloc.stop()
    assert stats["frames"] == n and stats["detections"] == n
    assert len(json.load(open(os.path.join(folder, "detections.json")))["annotations"]) == n
    assert video_info(os.path.join(folder, VIDEO_NAME))[0] == n
    return peak - before, retained - before


def test_constant_memory_over_a_long_stream(tmp_path):
    """Nothing is kept per frame: 5,600 frames more leave less than 18 bytes each behind (a leak of one float per
    frame, 32 bytes, fails; what equal runs keep differs by up to ~45 kB: caches of Python, NumPy and the io module),
    and no stage piles frames up: the peak grows by less than 20 frames' worth."""
    short_peak, short_kept = heap_use(400, str(tmp_path / "short"))
    long_peak, long_kept = heap_use(6000, str(tmp_path / "long"))
    assert long_kept - short_kept < 100_000, f"{long_kept - short_kept} bytes more kept after 5,600 more frames"
    frame_bytes = 48 * 64 * 3 + 64 * 64 * 3  # a source frame and its network input
    assert long_peak - short_peak < 20 * frame_bytes, f"{long_peak - short_peak} bytes more at the peak"


def test_stream_source_frames_are_numbered(tmp_path):
    frames = list(stream_source(iter([np.zeros((8, 8, 3), np.uint8)] * 3), 30.0))
    assert [f.index for f in frames] == [0, 1, 2] and all(isinstance(f, SourceFrame) for f in frames)


def record_input_shapes(monkeypatch) -> list:
    """TorchDetector.detect made to record the shape of every batch it gets."""
    shapes, original = [], TorchDetector.detect

    def recording(self, images):
        shapes.append(tuple(images.shape))
        return original(self, images)

    monkeypatch.setattr(TorchDetector, "detect", recording)
    return shapes


def test_input_size_from_the_checkpoint_or_imgsz_rectangular(kit, capsys, tmp_path, monkeypatch):
    shapes = record_input_shapes(monkeypatch)
    assert run_main(["--weights", kit["ckpt"]["rgb"], "--source", kit["images"][0], "--out", str(tmp_path / "a"),
                     *CPU], capsys)[0] == 0
    assert shapes == [(1, 3, 64, 64)]  # the checkpoint's INPUT_SHAPE [64, 64]
    shapes.clear()
    assert run_main(["--weights", kit["ckpt"]["rgb"], "--source", kit["images"][0], "--out", str(tmp_path / "b"),
                     "--imgsz", "100", *CPU], capsys)[0] == 0
    assert shapes == [(1, 3, 96, 128)]  # long side 100 -> 128, 96x160 footage -> short side 76.8 -> 96


def test_frames_of_several_sizes_in_one_folder(kit, capsys, tmp_path, monkeypatch):
    folder = tmp_path / "mixed"
    folder.mkdir()
    img = cv2.imread(kit["images"][0])
    for i, size in enumerate([(160, 96), (160, 96), (96, 160), (160, 96)]):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(img, size))
    shapes = record_input_shapes(monkeypatch)
    out = str(tmp_path / "out")
    status, result, err = run_main(["--weights", kit["ckpt"]["rgb"], "--source", str(folder), "--out", out,
                                    "--save_json", "--save_video", "--imgsz", "128", *CPU], capsys)
    assert status == 0, err
    assert shapes == [(2, 3, 96, 128), (1, 3, 128, 96), (1, 3, 96, 128)]  # a new size starts a new batch
    images = json.load(open(os.path.join(out, "detections.json")))["images"]
    assert [(im["width"], im["height"]) for im in images] == [(160, 96), (160, 96), (96, 160), (160, 96)]
    assert video_info(os.path.join(out, VIDEO_NAME))[0] == 4


class FailingOutputs:
    """Outputs whose third write fails (a full disk), recording the frames written."""

    def __init__(self):
        self.written = []

    def write(self, frame, dets):
        if len(self.written) == 2:
            raise OSError(28, "No space left on device")
        self.written.append(frame.index)


def test_outputs_are_written_in_order_and_a_failed_write_is_raised(tmp_path):
    """Writes run in their own thread (overlapping the next batch) yet keep frame order, and a write that fails stops
    the run with its own error instead of being lost in that thread."""
    frames = [np.full((48, 64, 3), i, np.uint8) for i in range(9)]
    outputs = Outputs(str(tmp_path / "ok"), ["drone"], 30.0, video=False, frames=False, txt=True, json=True)
    try:
        run_predictions(StubDetector(), stream_source(iter(frames), 30.0), 64, 4, outputs)
    finally:
        outputs.close()
    names = [im["file_name"] for im in json.load(open(tmp_path / "ok" / "detections.json"))["images"]]
    assert len(names) == 9 and names == sorted(names, key=lambda n: int("".join(filter(str.isdigit, n)) or 0))
    failing = FailingOutputs()
    with pytest.raises(OSError, match="No space left"):
        run_predictions(StubDetector(), stream_source(iter(frames), 30.0), 64, 4, failing)
    assert failing.written == [0, 1]
