"""YOLO11 (arch "yolo11"): equal to Ultralytics' yolo11.yaml (the test-only oracle) in parameters, eval outputs,
train outputs and gradients; conversion, size and arch inference, freezing, fusing, training and evaluation from its
checkpoint."""
import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from nets import build_model, freeze_backbone, infer_phi
from nets.convert import from_ultralytics, ultralytics_arch
from nets.weights import checkpoint_info, infer_arch
from tests.test_nets import REPO, max_rel, perturb_bn
from tests.test_p2 import assert_resume_as_yolov8_refused, convert_with_cli, train_and_rebuild

ARCH = "yolo11"


def ultralytics_yolo11(phi: str, nc: int, seed: int = 0) -> nn.Module:
    """Ultralytics DetectionModel from yolo11{phi}.yaml (no download), random init, perturbed BN."""
    pytest.importorskip("ultralytics", reason="ultralytics is the test-only oracle: pip install ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    model = DetectionModel(f"yolo11{phi}.yaml", nc=nc, verbose=False)
    perturb_bn(model, seed + 1)
    return model


def converted(um: nn.Module, phi: str, nc: int) -> nn.Module:
    """Our YOLO11 holding the oracle's weights (strict load)."""
    ours = build_model(phi, nc, arch=ARCH)
    ours.load_state_dict(from_ultralytics(um.state_dict()), strict=True)
    return ours


def test_yolo11_param_count_all_sizes_and_size_inference():
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    for phi in ("n", "s", "m", "l", "x"):
        with torch.device("meta"):
            ours = build_model(phi, 80, arch=ARCH)
        um = DetectionModel(f"yolo11{phi}.yaml", nc=80, verbose=False)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in um.parameters()), phi
        theirs = {k: v.shape for k, v in from_ultralytics(um.state_dict()).items()}
        assert theirs == {k: v.shape for k, v in ours.state_dict().items()}, phi
        assert ultralytics_arch(um.state_dict()) == infer_arch(ours.state_dict()) == ARCH
        assert checkpoint_info(ours.state_dict()) == (phi, 80, 3) and infer_phi(ours.state_dict()) == phi


def test_yolo11_build_settings():
    model = build_model("n", 3, in_channels=4, arch=ARCH)
    assert model.stride.tolist() == [8.0, 16.0, 32.0] and model.arch == ARCH
    out = model.train()(torch.zeros(2, 4, 64, 96))
    assert [tuple(o.shape) for o in out] == [(2, 67, 8, 12), (2, 67, 4, 6), (2, 67, 2, 3)]
    assert infer_arch(build_model("n", 3).state_dict()) == "yolov8"  # v8 n has the same stem and P5 widths
    assert infer_phi(build_model("n", 3).state_dict()) == "n"


@pytest.mark.parametrize("phi,nc", [("n", 80), ("n", 1), ("s", 1)])
def test_yolo11_eval_output_equals_ultralytics(phi, nc):
    um = ultralytics_yolo11(phi, nc).eval()
    ours = converted(um, phi, nc).eval()
    h, w = 64, 96
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        a, b = ours(x), um(x)[0]
    assert a.shape == b.shape == (2, 4 + nc, sum((h // s) * (w // s) for s in (8, 16, 32)))
    assert b[:, 4:].std() > 1e-3 and b[:, :4].std() > 1.0  # not a degenerate comparison
    assert max_rel(a[:, :4], b[:, :4]) <= 1e-4
    assert max_rel(a[:, 4:], b[:, 4:]) <= 1e-4
    with torch.no_grad():  # the fused model (BN folded, depthwise convs included) agrees too
        fused = ours.fuse()
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        assert max_rel(fused(x), b) <= 1e-4


def test_yolo11_train_outputs_gradients_and_bn_statistics_equal_ultralytics():
    um = ultralytics_yolo11("n", 1, seed=3).train()
    ours = converted(um, "n", 1).train()
    x = torch.randn(2, 3, 64, 96)
    maps = ours(x)
    preds = um(x)
    flat = torch.cat([m.flatten(2) for m in maps], 2)
    assert max_rel(flat[:, :64], preds["boxes"]) <= 1e-4
    assert max_rel(flat[:, 64:], preds["scores"]) <= 1e-4
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(flat.shape, generator=g)
    (flat * weight).sum().backward()
    (torch.cat((preds["boxes"], preds["scores"]), 1) * weight).sum().backward()
    their_grads = from_ultralytics({k: p.grad for k, p in um.named_parameters() if p.grad is not None})
    our_grads = {k: p.grad for k, p in ours.named_parameters() if p.grad is not None}
    assert our_grads.keys() == their_grads.keys() and len(our_grads) > 200
    # BN biases followed by a train-mode BN have an analytic gradient of 0 (rounding noise in both): compared on the
    # scale of the largest gradient instead of their own
    floor = 1e-3 * max(g.abs().max() for g in their_grads.values())
    for k, grad in our_grads.items():
        ref = their_grads[k]
        assert (grad - ref).abs().max() <= 1e-4 * max(ref.abs().max(), floor), k
    theirs = from_ultralytics(um.state_dict())  # BatchNorm running statistics updated alike
    for k, v in ours.state_dict().items():
        if "running_" in k:
            assert max_rel(v, theirs[k]) <= 1e-4, k


def test_yolo11_freeze_backbone_includes_c2psa():
    model = build_model("n", 1, arch=ARCH).train()
    freeze_backbone(model, True)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.neck.parameters())
    psa_bn = model.backbone.dark5[3].m[0].attn.qkv.bn
    before = psa_bn.running_mean.clone()
    sum(m.sum() for m in model(torch.randn(2, 3, 64, 64))).backward()
    assert torch.equal(psa_bn.running_mean, before)  # the attention block's BN stays fixed
    assert model.neck.top_down_p4.cv1.conv.weight.grad is not None
    freeze_backbone(model, False)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_yolo11_convert_cli_records_the_arch(tmp_path, capsys):
    _, printed = convert_with_cli(ultralytics_yolo11("n", 1, seed=11).eval(), tmp_path, capsys, ARCH)
    assert "YOLO11n, num_classes=1, in_channels=3" in printed


def test_yolo11_trains_and_eval_fred_rebuilds_it_from_the_checkpoint(tmp_path, capsys):
    """train_fred.py with ARCH='yolo11' records the arch; eval_fred.py on best.pth, without --set, rebuilds YOLO11
    and reproduces the training mAP; resuming it as a yolov8 is refused, naming the key."""
    _, trained, _ = train_and_rebuild(tmp_path, capsys, ARCH)
    assert_resume_as_yolov8_refused(tmp_path, capsys, trained["run_dir"], ARCH)


def test_yolo11_export_fred_names_it_and_round_trips(tmp_path, capsys):
    """export_fred.py on a YOLO11 checkpoint: ONNX within 1e-4 of PyTorch, printed as YOLO11n, arch in the metadata."""
    pytest.importorskip("onnxruntime")
    import export_fred
    from tests.test_export import make_model, save_checkpoint

    weights = save_checkpoint(str(tmp_path / "best.pth"), make_model(ARCH, num_classes=1), ARCH)
    assert export_fred.main(["--weights", weights, "--format", "onnx", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("exported YOLO11n (event, 1 class") for line in out), out
    result = json.loads(out[-1])
    assert result["max_rel_diff"] <= 1e-4


def test_yolo11_convert_cli_full_model_checkpoint(tmp_path):
    """`python -m nets.convert` on a pickled Ultralytics YOLO11 model (fp16, as their releases): every tensor, float32."""
    um = ultralytics_yolo11("n", 80, seed=13).eval()
    src, dst = tmp_path / "yolo11n.pt", tmp_path / "ours.pth"
    torch.save({"model": copy.deepcopy(um).half(), "ema": None, "epoch": -1}, src)
    run = subprocess.run([sys.executable, "-m", "nets.convert", str(src), str(dst)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "YOLO11n, num_classes=80" in run.stdout
    ckpt = torch.load(dst, weights_only=True)
    assert (ckpt["phi"], ckpt["arch"], ckpt["num_classes"]) == ("n", ARCH, 80)
    expected = from_ultralytics(copy.deepcopy(um).half().float().state_dict())
    assert ckpt["model"].keys() == expected.keys()
    assert all(torch.equal(ckpt["model"][k], v) for k, v in expected.items())


def test_yolo11_channels_last_equals_contiguous():
    """The attention's reshapes accept channels_last maps (the trainer's CUDA layout): same outputs, and it trains."""
    model = build_model("n", 1, arch=ARCH).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        want = model(x)
        model = model.to(memory_format=torch.channels_last)
        assert max_rel(model(x.to(memory_format=torch.channels_last)), want) <= 1e-5
    maps = model.train()(x.to(memory_format=torch.channels_last))
    sum(m.sum() for m in maps).backward()
    assert model.backbone.dark5[3].m[0].attn.qkv.conv.weight.grad is not None
