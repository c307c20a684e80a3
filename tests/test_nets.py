"""YOLOv8 network and weights: equal to Ultralytics' (the test-only oracle), conversion, loading, fuse, freeze."""
import copy
import logging
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from nets import build_model, freeze_backbone, infer_phi, load_weights
from nets.convert import from_ultralytics
from nets.convert import main as convert_main
from nets.weights import tensors_to_device

# Published YOLOv8 parameter counts (ultralytics/cfg/models/v8/yolov8.yaml, nc=80).
PUBLISHED_PARAMS = {"n": 3_157_200, "s": 11_166_560, "m": 25_902_640, "l": 43_691_520, "x": 68_229_648}
SHAPES = [(64, 96), (96, 64)]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of the reference b."""
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def perturb_bn(model: nn.Module, seed: int) -> None:
    """Realistic but random BN statistics and affine parameters, and random head output biases.

    Running statistics are first measured on random input (so activations stay well scaled and fp32 comparisons
    are well conditioned), then perturbed; a fifth of the channels get a variance of 1e-4..3e-3, comparable to
    BN eps = 1e-3, with gamma scaled to match, so a wrong eps changes the output. Output conv biases become N(0, 1)
    so that class scores spread over (0, 1).
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momentum = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
    was_training = model.training
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 64, 64, generator=g))
        model.train(was_training)
        for m, mom in zip(bns, momentum):
            n = m.num_features
            m.momentum = mom
            var = m.running_var * (0.5 + 1.5 * torch.rand(n, generator=g))
            m.running_mean.add_(0.1 * var.sqrt() * torch.randn(n, generator=g))
            gamma = 1 + 0.2 * torch.randn(n, generator=g)
            small = torch.rand(n, generator=g) < 0.2
            var = torch.where(small, 1e-4 + 3e-3 * torch.rand(n, generator=g), var)
            m.running_var.copy_(var)
            m.weight.copy_(torch.where(small, gamma * (var + m.eps).sqrt(), gamma))
            m.bias.copy_(0.1 * torch.randn(n, generator=g))
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))


def ultralytics_model(phi: str, nc: int, seed: int = 0, variant: str = "") -> nn.Module:
    """Ultralytics DetectionModel from yolov8{phi}{variant}.yaml (no download; variant "" or "-p2"), random init,
    perturbed BN (see perturb_bn)."""
    pytest.importorskip("ultralytics", reason="ultralytics is the test-only oracle: pip install ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    model = DetectionModel(f"yolov8{phi}{variant}.yaml", nc=nc, verbose=False)
    perturb_bn(model, seed + 1)
    return model


def converted(um: nn.Module, phi: str, nc: int) -> nn.Module:
    """Our model holding the oracle's weights (strict load)."""
    ours = build_model(phi, nc)
    ours.load_state_dict(from_ultralytics(um.state_dict()), strict=True)
    return ours


@pytest.mark.parametrize("phi", ["n", "s"])
def test_param_count_equals_ultralytics(phi):
    um = ultralytics_model(phi, 80)
    ours = build_model(phi, 80)
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == PUBLISHED_PARAMS[phi] == sum(p.numel() for p in um.parameters())
    theirs = {k: v.shape for k, v in from_ultralytics(um.state_dict()).items()}
    assert theirs == {k: v.shape for k, v in ours.state_dict().items()}


def test_param_count_all_sizes():
    for phi, count in PUBLISHED_PARAMS.items():
        with torch.device("meta"):
            model = build_model(phi, 80)
        assert sum(p.numel() for p in model.parameters()) == count, phi
        assert infer_phi(model.state_dict()) == phi


def test_build_settings():
    model = build_model("n", 3, in_channels=4)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert (model.reg_max, model.num_classes, model.phi, model.in_channels) == (16, 3, "n", 4)
    dfl = model.head.dfl.conv.weight
    assert not dfl.requires_grad and dfl.flatten().tolist() == list(range(16))
    out = model.train()(torch.zeros(2, 4, 64, 96))
    assert [tuple(o.shape) for o in out] == [(2, 67, 8, 12), (2, 67, 4, 6), (2, 67, 2, 3)]
    with pytest.raises(ValueError, match="phi"):
        build_model("q", 1)


def test_head_bias_init_equals_ultralytics():
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    for nc in (80, 1):
        um = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
        ours = build_model("n", nc)
        for i in range(3):
            theirs = um.model[22].cv3[i][-1].bias
            torch.testing.assert_close(ours.head.cls[i][-1].bias, theirs, rtol=1e-6, atol=0)
            # The constant box bias is output-invariant (softmax over DFL bins); YOLOv8 used 1.0.
            assert (ours.head.box[i][-1].bias == 1.0).all()


@pytest.mark.parametrize("phi,nc", [("n", 80), ("n", 1), ("s", 80), ("s", 1)])
def test_eval_output_equals_ultralytics(phi, nc):
    um = ultralytics_model(phi, nc).eval()
    ours = converted(um, phi, nc).eval()
    for h, w in SHAPES:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            a, b = ours(x), um(x)[0]
        anchors = sum((h // s) * (w // s) for s in (8, 16, 32))
        assert a.shape == b.shape == (2, 4 + nc, anchors)
        assert b[:, 4:].std() > 1e-3 and b[:, :4].std() > 1.0  # not a degenerate comparison
        assert max_rel(a[:, :4], b[:, :4]) <= 1e-4
        assert max_rel(a[:, 4:], b[:, 4:]) <= 1e-4
    if (phi, nc) == ("n", 80):  # the perturbed statistics make BN eps visible: a wrong eps fails the check
        for m in ours.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = 1e-5
        with torch.no_grad():
            assert max_rel(ours(x), b) > 1e-3


@pytest.mark.parametrize("phi,nc", [("n", 80), ("s", 1)])
def test_train_output_and_bn_statistics_equal_ultralytics(phi, nc):
    um = ultralytics_model(phi, nc, seed=3).train()
    ours = converted(um, phi, nc).train()
    before = {k: v.clone() for k, v in ours.state_dict().items() if "running_mean" in k}
    x = torch.randn(2, 3, 96, 64)
    maps = ours(x)
    preds = um(x)
    assert [m.shape[-2:] for m in maps] == [f.shape[-2:] for f in preds["feats"]]
    flat = torch.cat([m.flatten(2) for m in maps], 2)
    assert max_rel(flat[:, :64], preds["boxes"]) <= 1e-4
    assert max_rel(flat[:, 64:], preds["scores"]) <= 1e-4
    theirs = from_ultralytics(um.state_dict())
    moved = 0.0
    for k, v in ours.state_dict().items():
        if "running_" in k:
            torch.testing.assert_close(v, theirs[k], rtol=1e-5, atol=1e-6, msg=k)
        if k in before:
            moved = max(moved, (v - before[k]).abs().max().item())
    assert moved > 1e-2  # the statistics did move, so the momentum is what made them agree


def test_fuse_equals_unfused():
    model = build_model("s", 1)
    perturb_bn(model, 5)
    model64 = copy.deepcopy(model).double().eval()
    model.eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        ref, ref64 = model(x), model64(x.double())
        fused, fused64 = model.fuse()(x), model64.fuse()(x.double())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert max_rel(fused[:, :4], ref[:, :4]) <= 1e-4 and max_rel(fused[:, 4:], ref[:, 4:]) <= 1e-4
    # float64 takes rounding out: the folding itself is exact (a wrong eps or formula is far above this)
    assert max_rel(fused64, ref64) <= 1e-9


@pytest.mark.parametrize("phi", ["n", "s"])
def test_load_80_class_checkpoint_into_1_class_model(phi, caplog):
    src = build_model(phi, 80)
    perturb_bn(src, 7)
    dst = build_model(phi, 1)
    cls_before = {k: v.clone() for k, v in dst.state_dict().items() if k.startswith("head.cls.")}
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    mismatched = [k for k in src_sd if src_sd[k].shape != dst_sd[k].shape]
    assert mismatched and all(k.startswith("head.cls.") for k in mismatched)
    with caplog.at_level(logging.INFO, logger="nets.weights"):
        report = load_weights(dst, {"model": src_sd, "phi": phi, "num_classes": 80, "in_channels": 3})
    total = len(dst_sd)
    assert report["total"] == total
    assert report["skipped"] == report["missing"] == len(mismatched)
    assert report["loaded"] == total - len(mismatched)
    if phi == "s":  # s has 128 >= 80 class-branch channels: only the three output convs differ
        assert len(mismatched) == 6
    assert f"loaded {total - len(mismatched)}/{total} tensors; skipped {len(mismatched)}" in caplog.text
    for k, v in dst.state_dict().items():
        if k in mismatched:
            assert torch.equal(v, cls_before[k])
        else:
            assert torch.equal(v, src_sd[k]), k


def test_wrong_phi_raises_naming_the_checkpoint_size(tmp_path):
    n_sd = build_model("n", 1).state_dict()
    with pytest.raises(ValueError, match=r"looks like YOLOv8n \(num_classes=1"):
        load_weights(build_model("s", 1), n_sd)
    path = tmp_path / "s.pth"
    torch.save(build_model("s", 2).state_dict(), path)
    with pytest.raises(ValueError, match="looks like YOLOv8s"):
        load_weights(build_model("n", 2), path)
    with pytest.raises(ValueError, match="nets.convert"):
        load_weights(build_model("n", 2), {"model.0.conv.weight": torch.zeros(16, 3, 3, 3)})
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": build_model("n", 2)}, pickled)  # a whole module, like an Ultralytics .pt
    with pytest.raises(ValueError, match=f"{pickled}.*python -m nets.convert"):
        load_weights(build_model("n", 2), pickled)


def test_load_weights_accepts_checkpoint_forms(tmp_path):
    src = build_model("n", 1)
    perturb_bn(src, 9)
    sd = src.state_dict()
    stale = {k: torch.zeros_like(v) for k, v in sd.items()}
    forms = {
        "plain": sd,
        "ours": {"model": sd, "phi": "n", "num_classes": 1, "in_channels": 3},
        "model_over_ema": {"model": sd, "ema": stale},
        "ema_only": {"ema": sd, "model": None},
        "ddp": {"module." + k: v for k, v in sd.items()},
    }
    for name, obj in forms.items():
        for src_arg in (obj, tmp_path / f"{name}.pth"):
            torch.save(obj, tmp_path / f"{name}.pth")
            dst = build_model("n", 1)
            report = load_weights(dst, src_arg if isinstance(src_arg, dict) else str(src_arg))
            assert report["loaded"] == report["total"] and report["skipped"] == 0, name
            assert all(torch.equal(v, sd[k]) for k, v in dst.state_dict().items()), name


def test_tensors_to_device_keeps_every_dtype_shape_and_value():
    tensors = {"w": torch.randn(3, 4), "n": torch.tensor(5), "h": torch.randn(7).half(), "t": torch.randn(2, 3).t(),
               "empty": torch.zeros(0), "flags": torch.tensor([True, False]), "odd": torch.arange(3, dtype=torch.int8)}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    moved = tensors_to_device(tensors, device)
    assert list(moved) == list(tensors)
    for k, v in tensors.items():
        assert moved[k].device.type == device.type and moved[k].dtype == v.dtype, k
        assert torch.equal(moved[k].cpu(), v), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_weights_into_a_cuda_model():
    src = build_model("n", 1)
    perturb_bn(src, 4)
    with torch.device("cuda"):
        dst = build_model("n", 1)
    report = load_weights(dst, src.state_dict())
    assert report["loaded"] == report["total"]
    assert all(torch.equal(v.cpu(), src.state_dict()[k]) for k, v in dst.state_dict().items())
    dst.fuse()
    x = torch.rand(2, 3, 64, 64)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), torch.no_grad():  # fp32 convolutions
        torch.testing.assert_close(dst(x.cuda()).cpu(), src.eval()(x), rtol=1e-3, atol=1e-3)


def test_freeze_backbone_keeps_grads_and_bn_statistics_fixed():
    model = build_model("n", 1)
    freeze_backbone(model, True)
    model.train()
    backbone_bn = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert backbone_bn and not any(m.training for m in backbone_bn)
    assert model.neck.training and model.head.training
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    out = model(torch.randn(2, 3, 64, 96))
    sum(o.float().square().mean() for o in out).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.neck.parameters())
    after = model.state_dict()
    for k, v in stats.items():
        assert torch.equal(after[k], v) == k.startswith("backbone."), k

    freeze_backbone(model, False)
    model.train()
    assert all(m.training for m in backbone_bn)
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert not model.head.dfl.conv.weight.requires_grad
    model.zero_grad(set_to_none=True)
    sum(o.float().square().mean() for o in model(torch.randn(2, 3, 64, 96))).backward()
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_convert_cli_state_dict_round_trip(tmp_path, capsys):
    um = ultralytics_model("n", 1, seed=11).eval()
    src, dst = tmp_path / "ultra_sd.pt", tmp_path / "ours.pth"
    torch.save(um.state_dict(), src)
    convert_main([str(src), str(dst)])
    assert "YOLOv8n, num_classes=1, in_channels=3" in capsys.readouterr().out
    ckpt = torch.load(dst, weights_only=True)
    assert (ckpt["phi"], ckpt["num_classes"], ckpt["in_channels"]) == ("n", 1, 3)
    ours = build_model("n", 1)
    report = load_weights(ours, str(dst))
    assert report["loaded"] == report["total"]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert max_rel(ours.eval()(x), um(x)[0]) <= 1e-4


def test_convert_cli_full_model_checkpoint(tmp_path):
    um = ultralytics_model("s", 80, seed=13).eval()
    src, dst = tmp_path / "yolov8s.pt", tmp_path / "ours.pth"
    torch.save({"model": copy.deepcopy(um).half(), "ema": None, "epoch": -1}, src)  # like Ultralytics' releases
    run = subprocess.run([sys.executable, "-m", "nets.convert", str(src), str(dst)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    ckpt = torch.load(dst, weights_only=True)
    assert (ckpt["phi"], ckpt["num_classes"]) == ("s", 80)
    expected = from_ultralytics(copy.deepcopy(um).half().float().state_dict())
    assert ckpt["model"].keys() == expected.keys()
    assert all(torch.equal(ckpt["model"][k], v) for k, v in expected.items())
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())


def test_eval_under_autocast_and_low_precision_weights():
    model = build_model("n", 2)
    perturb_bn(model, 15)
    model.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model(x)
        low = copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16))
    assert amp.dtype == low.dtype == torch.float32  # decoded in float32
    for out in (amp, low):  # a random network is ill-conditioned in bf16: compare typical, not worst, anchors
        assert out.shape == ref.shape and torch.isfinite(out).all()
        assert (out[:, :4] - ref[:, :4]).abs().median() <= 1.0
        assert (out[:, 4:] - ref[:, 4:]).abs().median() <= 0.01


# ours -> the bubbliiiing yolov8-pytorch names (its nets/yolo.py YoloBody and nets/backbone.py Backbone)
_TO_BUBBLIIIING = {"neck.top_down_p4.": "conv3_for_upsample1.", "neck.top_down_p3.": "conv3_for_upsample2.",
                   "neck.down_p3.": "down_sample1.", "neck.bottom_up_p4.": "conv3_for_downsample1.",
                   "neck.down_p4.": "down_sample2.", "neck.bottom_up_p5.": "conv3_for_downsample2.",
                   "head.box.": "cv2.", "head.cls.": "cv3.", "head.dfl.": "dfl.", "backbone.": "backbone."}


def _bubbliiiing_name(key: str) -> str:
    prefix = next(p for p in _TO_BUBBLIIIING if key.startswith(p))
    return _TO_BUBBLIIIING[prefix] + key[len(prefix):]


def test_load_bubbliiiing_yolobody_and_backbone_weights(tmp_path):
    torch.manual_seed(0)
    src = build_model("s", 1).eval()
    theirs = {_bubbliiiing_name(k): v for k, v in src.state_dict().items()}
    # shapes as their YoloBody(phi='s', num_classes=1) declares these layers
    assert theirs["conv3_for_upsample1.cv1.conv.weight"].shape == (256, 768, 1, 1)
    assert theirs["down_sample1.conv.weight"].shape == (128, 128, 3, 3)
    assert theirs["cv2.0.2.weight"].shape == (64, 64, 1, 1)
    assert theirs["cv3.0.2.weight"].shape == (1, 128, 1, 1)
    assert theirs["dfl.conv.weight"].shape == (1, 16, 1, 1)
    torch.save(theirs, tmp_path / "yolov8_s_fred.pth")
    dst = build_model("s", 1).eval()
    report = load_weights(dst, str(tmp_path / "yolov8_s_fred.pth"))
    assert report["loaded"] == report["total"] and report["skipped"] == 0
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    # their backbone-only files (Backbone.load_state_dict: no "backbone." prefix)
    backbone = {k.removeprefix("backbone."): v for k, v in src.state_dict().items() if k.startswith("backbone.")}
    fresh = build_model("s", 1)
    report = load_weights(fresh, backbone)
    assert report["loaded"] == len(backbone) and report["skipped"] == 0
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in src.state_dict().items() if k.startswith("backbone."))
    with pytest.raises(ValueError, match="looks like YOLOv8s"):  # a size mismatch is still named
        load_weights(build_model("m", 1), theirs)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="CUDA autocast's float32 list is what Upsample2x avoids"))])
def test_neck_upsample_keeps_the_autocast_dtype_and_nn_upsamples_values(device):
    from nets.yolov8 import Upsample2x
    x = torch.randn(2, 8, 5, 7, device=device).to(memory_format=torch.channels_last).requires_grad_()
    amp = torch.float16 if device == "cuda" else torch.bfloat16
    grad = torch.randn(2, 8, 10, 14, device=device).to(amp).float()  # as a half conv's input gradient would be
    outs = []
    for up in (Upsample2x(), nn.Upsample(scale_factor=2, mode="nearest")):
        with torch.autocast(device, dtype=amp):
            y = up(x.to(amp))
        (g,) = torch.autograd.grad(y, x, grad.to(y.dtype))
        outs.append((y, g))
    (y, g), (y_ref, g_ref) = outs
    assert y.dtype == amp  # nn.Upsample gives float32 under CUDA autocast
    assert torch.equal(y.float(), y_ref.float()) and torch.equal(g, g_ref)
