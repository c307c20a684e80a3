"""bench/bench_predict.py's same-weights set-up: Ultralytics' saved model converted to ours, checked on a frame."""
import pytest
import torch

from bench.bench_predict import make_weights, parse_args, raw_outputs_agree, write_video


def test_converted_weights_give_ultralytics_outputs(tmp_path):
    """YOLO('yolov8n.yaml').save -> nets.convert.convert_file -> our fused network: the same raw outputs on a frame
    of the written video; a changed weight is caught; the video is reused when it matches."""
    pytest.importorskip("ultralytics", reason="ultralytics is the bench's reference predictor")
    video = tmp_path / "v.mp4"
    assert write_video(video, 3, (36, 64), seed=0) > 0
    assert write_video(video, 3, (36, 64), seed=0) == 0.0  # reused
    pt, ours = tmp_path / "u.pt", tmp_path / "o.pth"
    meta = make_weights("n", 0, pt, ours)
    assert (meta["phi"], meta["num_classes"], meta["arch"]) == ("n", 80, "yolov8")
    check = raw_outputs_agree(pt, ours, video, 64)
    assert check["equal"] and check["input_hw"] == [64, 64] and check["shape"] == [1, 84, 84]

    ckpt = torch.load(ours, weights_only=True)
    ckpt["model"]["head.cls.0.2.bias"] += 0.5  # one score branch off: the check must see it
    torch.save(ckpt, ours)
    assert not raw_outputs_agree(pt, ours, video, 64)["equal"]


def test_quick_sizes_and_outputs():
    """--quick takes the smoke-test sizes except those given; --outputs accepts only video and none."""
    a = parse_args(["--quick", "--frames", "10"])
    assert (a.phi_list, a.batch_list, a.imgsz, a.frames, a.width, a.height, a.device) == (
        ["n"], [1, 4], 320, 10, 320, 180, "cpu")
    with pytest.raises(SystemExit):
        parse_args(["--outputs", "video,frames"])


def test_warm_fps_leaves_the_first_batch_and_start_up_out():
    """Ours' e2e after start-up: frames after the first batch over the time after its detections; nothing for a run
    that failed or predates first_batch_s; the warm ratio divides it by Ultralytics' e2e fps."""
    from bench.bench_predict import add_warm_fps, ratio

    run = {"ok": True, "frames": 300, "fps": 100.0, "first_batch_s": 0.5}
    add_warm_fps(run, 32)
    assert run["warm_fps"] == round(268 / 2.5, 2)
    assert ratio(run, {"ok": True, "fps": 53.6}, "warm_fps") == round(268 / 2.5 / 53.6, 2)
    for bad in ({"ok": False, "frames": 300, "fps": 100.0, "first_batch_s": 0.5}, {"ok": True, "frames": 300,
                                                                                   "fps": 100.0}):
        add_warm_fps(bad, 32)
        assert "warm_fps" not in bad and ratio(bad, {"ok": True, "fps": 50.0}, "warm_fps") is None
