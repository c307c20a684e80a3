"""YOLOv8-P2 (arch "yolov8-p2"): equal to Ultralytics' yolov8-p2.yaml (the test-only oracle), conversion, freezing,
training and evaluation from its checkpoint."""
import json
import os
import shutil

import pytest
import torch
from torch import nn

import train_fred
from nets import build_model, freeze_backbone, infer_phi, load_weights
from nets.convert import from_ultralytics, ultralytics_arch
from nets.convert import main as convert_main
from nets.weights import checkpoint_info, infer_arch
from tests.test_eval_fred import LARGE_BOX_SETS, run_main, train_on_large_boxes
from tests.test_nets import max_rel, ultralytics_model

ARCH = "yolov8-p2"


def ultralytics_p2(phi: str, nc: int, seed: int = 0) -> nn.Module:
    """Ultralytics DetectionModel from yolov8{phi}-p2.yaml (no download), random init, perturbed BN."""
    return ultralytics_model(phi, nc, seed, variant="-p2")


@pytest.mark.parametrize("phi", ["n", "s"])
def test_p2_param_count_and_shapes_equal_ultralytics(phi):
    um = ultralytics_p2(phi, 80)
    ours = build_model(phi, 80, arch=ARCH)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in um.parameters())
    theirs = {k: v.shape for k, v in from_ultralytics(um.state_dict()).items()}
    assert theirs == {k: v.shape for k, v in ours.state_dict().items()}
    assert ultralytics_arch(um.state_dict()) == infer_arch(ours.state_dict()) == ARCH


def test_p2_param_count_all_sizes():
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    for phi in ("m", "l", "x"):
        with torch.device("meta"):
            ours = build_model(phi, 80, arch=ARCH)
        um = DetectionModel(f"yolov8{phi}-p2.yaml", nc=80, verbose=False)  # under a second each on CPU
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in um.parameters()), phi
        assert checkpoint_info(ours.state_dict()) == (phi, 80, 3)
        assert infer_phi(ours.state_dict()) == phi and infer_arch(ours.state_dict()) == ARCH


def test_p2_build_settings():
    model = build_model("n", 3, in_channels=4, arch=ARCH)
    assert model.stride.tolist() == [4.0, 8.0, 16.0, 32.0] and model.arch == ARCH
    out = model.train()(torch.zeros(2, 4, 64, 96))
    assert [tuple(o.shape) for o in out] == [(2, 67, 16, 24), (2, 67, 8, 12), (2, 67, 4, 6), (2, 67, 2, 3)]
    assert build_model("n", 3).arch == "yolov8" and infer_arch(build_model("n", 3).state_dict()) == "yolov8"
    with pytest.raises(ValueError, match="arch"):
        build_model("n", 1, arch="yolov8-p6")


@pytest.mark.parametrize("nc", [80, 1])
def test_p2_eval_output_equals_ultralytics(nc):
    um = ultralytics_p2("n", nc).eval()
    ours = build_model("n", nc, arch=ARCH)
    ours.load_state_dict(from_ultralytics(um.state_dict()), strict=True)
    ours.eval()
    h, w = 96, 128
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        a, b = ours(x), um(x)[0]
    anchors = sum((h // s) * (w // s) for s in (4, 8, 16, 32))
    assert a.shape == b.shape == (1, 4 + nc, anchors)
    assert b[:, 4:].std() > 1e-3 and b[:, :4].std() > 1.0  # not a degenerate comparison
    assert max_rel(a[:, :4], b[:, :4]) <= 1e-4
    assert max_rel(a[:, 4:], b[:, 4:]) <= 1e-4
    with torch.no_grad():  # the fused model agrees too
        assert max_rel(ours.fuse()(x), b) <= 1e-4


def test_p2_train_output_equals_ultralytics():
    um = ultralytics_p2("n", 1, seed=3).train()
    ours = build_model("n", 1, arch=ARCH)
    ours.load_state_dict(from_ultralytics(um.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 96)
    maps = ours.train()(x)
    preds = um(x)
    assert [m.shape[-2:] for m in maps] == [f.shape[-2:] for f in preds["feats"]]
    flat = torch.cat([m.flatten(2) for m in maps], 2)
    assert max_rel(flat[:, :64], preds["boxes"]) <= 1e-4
    assert max_rel(flat[:, 64:], preds["scores"]) <= 1e-4


def test_p2_freeze_backbone_keeps_neck_and_head_trainable():
    model = build_model("n", 1, arch=ARCH).train()
    freeze_backbone(model, True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.neck.parameters())
    before = model.backbone.dark2[1].cv1.bn.running_mean.clone()
    sum(m.sum() for m in model(torch.randn(2, 3, 64, 64))).backward()
    assert torch.equal(model.backbone.dark2[1].cv1.bn.running_mean, before)  # the P2 feature's BN stays fixed
    assert model.neck.top_down_p2.cv1.conv.weight.grad is not None
    freeze_backbone(model, False)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_p2_trains_and_eval_fred_rebuilds_it_from_the_checkpoint(tmp_path, capsys):
    """train_fred.py with ARCH='yolov8-p2' records the arch; eval_fred.py on best.pth, without --set, rebuilds the P2
    model and reproduces the training mAP; a bare state dict of it is recognised too. Large boxes (as in
    tests/test_eval_fred.py) make the mAP non-zero."""
    root, trained, ckpt = train_and_rebuild(tmp_path, capsys, ARCH)
    sets = LARGE_BOX_SETS

    bare = str(tmp_path / "bare.pth")  # no metadata: phi and arch are told by the tensors
    torch.save(ckpt["model"], bare)
    status, out, err = run_main(["--modality", "event", "--data_root", root, "--split", "random:0.5:0", "--device",
                                 "cpu", "--weights", bare, "--set", *sets], capsys)
    assert status == 0, err
    assert json.loads(out.strip().splitlines()[-1])["mAP50"] == pytest.approx(trained["best_mAP50"], rel=1e-6,
                                                                             abs=1e-9)

    assert_resume_as_yolov8_refused(tmp_path, capsys, trained["run_dir"], ARCH)


def train_and_rebuild(tmp_path, capsys, arch: str) -> tuple[str, dict, dict]:
    """train_on_large_boxes with ARCH=arch; its best.pth records the arch (and its tensors tell it), and eval_fred.py
    on it, without --set, rebuilds that model and reproduces the training mAP: (data root, the run's final JSON line,
    the checkpoint)."""
    root, trained, _ = train_on_large_boxes(tmp_path, capsys, f"ARCH={arch!r}")
    best = os.path.join(trained["run_dir"], "best.pth")
    ckpt = torch.load(best, weights_only=True)
    assert ckpt["arch"] == arch and infer_arch(ckpt["model"]) == arch

    status, out, err = run_main(["--device", "cpu", "--weights", best], capsys)
    assert status == 0, err
    evaluated = json.loads(out.strip().splitlines()[-1])
    assert evaluated["mAP50"] == pytest.approx(trained["best_mAP50"], rel=1e-6, abs=1e-9)
    assert evaluated["mAP50_95"] == pytest.approx(trained["best_mAP50_95"], rel=1e-6, abs=1e-9)
    return root, trained, ckpt


def assert_resume_as_yolov8_refused(tmp_path, capsys, run_dir: str, arch: str) -> None:
    """Resuming a copy of run_dir (trained with ARCH=arch) with ARCH='yolov8' exits 2, naming the recorded key."""
    resumed = str(tmp_path / "resume")
    shutil.copytree(run_dir, resumed)
    status = train_fred.main(["--resume", os.path.join(resumed, "last.pth"), "--device", "cpu",
                              "--set", "UNFREEZE_EPOCH=2", "ARCH='yolov8'"])
    assert status == 2 and f"ARCH={arch!r}" in capsys.readouterr().err


def convert_with_cli(ultralytics_net: nn.Module, tmp_path, capsys, arch: str) -> tuple[str, str]:
    """Save an Ultralytics network's state dict, convert it with `python -m nets.convert`'s main, check that the
    checkpoint records phi n, arch and 1 class and that all of it loads into our model of that arch:
    (checkpoint path, what the CLI printed)."""
    src, dst = tmp_path / "ultra_sd.pt", tmp_path / "ours.pth"
    torch.save(ultralytics_net.state_dict(), src)
    convert_main([str(src), str(dst)])
    printed = capsys.readouterr().out
    ckpt = torch.load(dst, weights_only=True)
    assert (ckpt["phi"], ckpt["arch"], ckpt["num_classes"]) == ("n", arch, 1)
    ours = build_model("n", 1, arch=arch)
    assert load_weights(ours, str(dst))["loaded"] == len(ours.state_dict())
    return str(dst), printed


def test_p2_convert_cli_records_the_arch(tmp_path, capsys):
    dst, printed = convert_with_cli(ultralytics_p2("n", 1, seed=11).eval(), tmp_path, capsys, ARCH)
    assert "YOLOv8n-P2, num_classes=1, in_channels=3" in printed
    plain = load_weights(build_model("n", 1), dst)  # into a plain YOLOv8: the shared layers (transfer)
    assert 0 < plain["missing"] < plain["total"] and plain["skipped"] > 0
