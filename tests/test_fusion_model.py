"""Fusion networks (nets/fusion.py): shapes, freezing, and starts from single-modality checkpoints."""
import pytest
import torch

from nets import build_model, freeze_backbone
from nets.fusion import (FUSION_CHANNELS, MidFusionYoloV8, build_fusion_model, event_plane_filters, fusion_kind,
                         load_fusion_weights)

PALETTE = ((30, 37, 52), (255, 255, 255), (64, 126, 200))


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """model with random BatchNorm statistics and affine terms (a 'trained' look), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _event_frame(seed: int, h: int = 64, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A random three-colour event frame: (RGB image [1, 3, h, w] in 0..1, its planes [1, 2, h, w])."""
    g = torch.Generator().manual_seed(seed)
    code = torch.randint(0, 3, (h, w), generator=g)
    colours = torch.tensor(PALETTE, dtype=torch.float32) / 255.0
    image = colours[code].permute(2, 0, 1)[None]
    planes = torch.stack([code == 1, code == 2]).float()[None]
    return image, planes


@pytest.mark.parametrize("fusion", ["early", "mid"])
@pytest.mark.parametrize("arch", ["yolov8", "yolov8-p2", "yolo11"])
def test_fusion_models_take_five_channels_and_give_the_detector_outputs(fusion, arch):
    model = build_fusion_model("n", 1, fusion, arch)
    x = torch.rand(2, FUSION_CHANNELS, 64, 96)
    maps = model.train()(x)
    strides = model.stride.tolist()
    assert [tuple(m.shape[-2:]) for m in maps] == [(64 // s, 96 // s) for s in strides]
    out = model.eval()(x)
    assert out.shape == (2, 5, sum((64 // s) * (96 // s) for s in strides))
    assert fusion_kind(model.state_dict()) == fusion
    assert fusion_kind(build_model("n", 1).state_dict()) is None


def test_unknown_fusion_kind_is_refused():
    with pytest.raises(ValueError, match="early, mid"):
        build_fusion_model("n", 1, "late")


def test_freezing_a_mid_fusion_freezes_both_backbones_not_the_fusion():
    model = build_fusion_model("n", 1, "mid")
    freeze_backbone(model, True)
    assert not any(p.requires_grad for p in model.backbone.rgb.parameters())
    assert not any(p.requires_grad for p in model.backbone.event.parameters())
    assert all(p.requires_grad for p in model.fusion.parameters())
    assert all(p.requires_grad for p in model.neck.parameters())


def test_event_plane_filters_give_the_colour_stem_on_the_planes():
    torch.manual_seed(0)
    weight = torch.randn(8, 3, 3, 3)
    image, planes = _event_frame(1)
    on_planes, constant = event_plane_filters(weight, PALETTE)
    colour = torch.nn.functional.conv2d(image, weight, padding=1)
    binary = torch.nn.functional.conv2d(planes, on_planes, padding=1) + constant[None, :, None, None]
    torch.testing.assert_close(binary[..., 1:-1, 1:-1], colour[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_a_fusion_network_from_an_event_checkpoint_is_that_detector_on_the_planes(fusion):
    torch.manual_seed(0)
    event_model = _perturbed(build_model("n", 1), 1)
    model = build_fusion_model("n", 1, fusion).eval()
    report = load_fusion_weights(model, PALETTE, event=event_model.state_dict())
    assert report["sources"] == ["event"]
    image, planes = _event_frame(2)
    x = torch.cat([torch.rand(1, 3, 64, 64), planes], 1)  # RGB content must not matter: no RGB checkpoint
    stem = model.backbone.event.stem if fusion == "mid" else model.backbone.stem
    want = event_model.backbone.stem(image)
    got = stem(x[:, 3:] if fusion == "mid" else x)
    if fusion == "early":  # zero RGB filters: the RGB channels do not reach the stem
        torch.testing.assert_close(stem(torch.cat([torch.zeros_like(x[:, :3]), planes], 1)), got)
    torch.testing.assert_close(got[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)
    body = {k: v for k, v in event_model.state_dict().items() if not k.startswith("backbone.stem")}
    own = model.state_dict()
    for k, v in body.items():
        torch.testing.assert_close(own[k.replace("backbone.", "backbone.event.", 1) if fusion == "mid" and
                                       k.startswith("backbone.") else k], v)


@pytest.mark.parametrize("fusion", ["early", "mid"])
@pytest.mark.parametrize("arch", ["yolov8", "yolo11"])
def test_a_fusion_network_from_an_rgb_checkpoint_starts_as_the_rgb_detector(fusion, arch):
    torch.manual_seed(0)
    rgb_model = _perturbed(build_model("n", 1, arch=arch), 3)
    model = build_fusion_model("n", 1, fusion, arch).eval()
    load_fusion_weights(model, PALETTE, rgb=rgb_model.state_dict())
    rgb = torch.rand(2, 3, 64, 64)
    _, planes = _event_frame(4)
    x = torch.cat([rgb, planes.expand(2, -1, -1, -1)], 1)
    torch.testing.assert_close(model(x), rgb_model(rgb), atol=1e-4, rtol=1e-4)


def test_mid_fusion_from_both_takes_each_backbone_and_passes_the_event_stream():
    rgb_model, event_model = _perturbed(build_model("n", 1), 5), _perturbed(build_model("n", 1), 6)
    model = build_fusion_model("n", 1, "mid").eval()
    assert isinstance(model, MidFusionYoloV8)
    load_fusion_weights(model, PALETTE, rgb=rgb_model.state_dict(), event=event_model.state_dict())
    own = model.state_dict()
    torch.testing.assert_close(own["backbone.rgb.dark3.1.cv1.conv.weight"],
                               rgb_model.state_dict()["backbone.dark3.1.cv1.conv.weight"])
    torch.testing.assert_close(own["backbone.event.dark3.1.cv1.conv.weight"],
                               event_model.state_dict()["backbone.dark3.1.cv1.conv.weight"])
    torch.testing.assert_close(own["head.cls.0.2.weight"], event_model.state_dict()["head.cls.0.2.weight"])
    rgb, event = model.backbone(torch.rand(1, 5, 64, 64))
    fused = model.fusion[0](torch.cat((rgb[0], event[0]), 1))
    torch.testing.assert_close(fused, event[0])


def test_wrong_checkpoints_are_refused_with_a_reason():
    model = build_fusion_model("n", 1, "early")
    with pytest.raises(ValueError, match="fusion checkpoint"):
        load_fusion_weights(model, PALETTE, rgb=build_fusion_model("n", 1, "mid").state_dict())
    with pytest.raises(ValueError, match="same PHI"):
        load_fusion_weights(model, PALETTE, event=build_model("s", 1).state_dict())
    with pytest.raises(ValueError, match="give an RGB checkpoint"):
        load_fusion_weights(model, PALETTE)
