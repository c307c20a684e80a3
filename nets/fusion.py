"""RGB+Event fusion networks (--modality fusion) and their start from single-modality checkpoints.

Input [B, 5, H, W], values 0..1: the RGB image (channels 0-2), then the event frame as two binary planes, one per
polarity (channel 3: the polarity drawn in the first palette colour, channel 4: the other; see the datasets' decode).
Two kinds (FUSION_KINDS):
  early  one YoloV8 whose stem takes the 5 channels; nothing else changes.
  mid    two backbones, RGB on channels 0-2 and events on 3-4; per level their maps are concatenated and a 1x1
         convolution brings them back to one map's width ([B, 2c, h, w] -> [B, c, h, w]); one neck and head.
load_fusion_weights() maps an RGB checkpoint, an event checkpoint or both into either kind.
"""
from collections.abc import Mapping
from typing import Optional

import torch
from torch import nn

from nets.weights import checkpoint_info, infer_arch, read_state_dict
from nets.model import YoloV8, arch_parts, build_model

FUSION_KINDS = ("early", "mid")
RGB_CHANNELS = 3
EVENT_PLANES = 2
FUSION_CHANNELS = RGB_CHANNELS + EVENT_PLANES
_STEM = "backbone.stem"


class TwoStreamBackbone(nn.Module):
    """Two backbones of architecture arch: [B, 5, H, W] -> (RGB levels, event levels), each as the backbone's forward
    returns."""

    def __init__(self, phi: str, with_p2: bool, arch: str = "yolov8"):
        super().__init__()
        backbone = arch_parts(arch)[0]
        self.rgb = backbone(phi, RGB_CHANNELS, with_p2)
        self.event = backbone(phi, EVENT_PLANES, with_p2)
        self.out_channels = self.rgb.out_channels

    def forward(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """RGB channels through one backbone, the event planes through the other."""
        return self.rgb(x[:, :RGB_CHANNELS]), self.event(x[:, RGB_CHANNELS:])


class MidFusionYoloV8(YoloV8):
    """YOLOv8 / YOLO11 (any arch of nets.yolov8.ARCHS) with an RGB and an event backbone fused per level by a 1x1 convolution.

    The fusion convolutions start as the mean of the two streams; freezing the backbone freezes both streams, not
    the fusion."""

    def __init__(self, phi: str, num_classes: int, arch: str = "yolov8"):
        super().__init__(phi, num_classes, FUSION_CHANNELS, arch)
        self.fusion = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for c in self.backbone.out_channels)
        with torch.no_grad():
            for conv in self.fusion:
                conv.weight.copy_(pass_through_weight(conv, (0.5, 0.5)))
                conv.bias.zero_()

    def make_backbone(self, phi: str, in_channels: int, with_p2: bool) -> nn.Module:
        """Two backbones, RGB and event (in_channels is FUSION_CHANNELS)."""
        return TwoStreamBackbone(phi, with_p2, self.arch)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """x [B, 5, H, W] -> per-level maps (train) or [B, 4 + nc, A] (eval), as YoloV8."""
        rgb, event = self.backbone(x)
        feats = [conv(torch.cat((a, b), 1)) for conv, a, b in zip(self.fusion, rgb, event)]
        return self.head(self.neck(*feats))


def pass_through_weight(conv: nn.Conv2d, gains: tuple[float, float]) -> torch.Tensor:
    """Weight [c, 2c, 1, 1] of a fusion convolution that returns gains[0] * first stream + gains[1] * second."""
    c = conv.out_channels
    eye = torch.eye(c, dtype=conv.weight.dtype, device=conv.weight.device)
    return torch.cat((gains[0] * eye, gains[1] * eye), 1)[:, :, None, None]


def build_fusion_model(phi: str, num_classes: int, fusion: str, arch: str = "yolov8") -> YoloV8:
    """A fusion network of kind fusion (FUSION_KINDS) on the 5-channel input."""
    if fusion not in FUSION_KINDS:
        raise ValueError(f"unknown fusion kind {fusion!r}; choose one of {', '.join(FUSION_KINDS)}")
    if fusion == "mid":
        return MidFusionYoloV8(phi, num_classes, arch)
    return build_model(phi, num_classes, FUSION_CHANNELS, arch)


def fusion_kind(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """"mid", "early" or None (a single-modality network) for a state dict in our layout."""
    if any(k.startswith("backbone.rgb.") for k in state_dict):
        return "mid"
    stem = state_dict.get(f"{_STEM}.conv.weight")
    return "early" if stem is not None and stem.shape[1] == FUSION_CHANNELS else None


def event_plane_filters(weight: torch.Tensor, palette: tuple[tuple[int, int, int], ...]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """A stem trained on event frames drawn in colours -> the same stem on binary polarity planes.

    weight [c, 3, k, k] acts on RGB 0..1 images whose pixels are palette[0] (no event), palette[1] or palette[2]
    (one polarity each). Such an image is background + ON * (palette[1] - background) + OFF * (palette[2] -
    background), so the stem on it is the stem on the planes (weight [c, 2, k, k], returned) plus a constant
    per output channel (returned, [c]; exact away from the zero-padded border)."""
    bg, on, off = (torch.tensor(c, dtype=weight.dtype, device=weight.device) / 255.0 for c in palette)
    planes = torch.stack([torch.einsum("oikl,i->okl", weight, on - bg),
                          torch.einsum("oikl,i->okl", weight, off - bg)], 1)
    return planes, torch.einsum("oikl,i->o", weight, bg)


def _single(src: object, name: str) -> dict[str, torch.Tensor]:
    """The state dict of a single-modality (3-channel YoloV8) checkpoint, or ValueError naming it."""
    state = read_state_dict(src)
    what = src if isinstance(src, str) else name
    if fusion_kind(state) is not None:
        raise ValueError(f"{what}: a fusion checkpoint where an {name} one is expected; pass it as the model's "
                         "weights (MODEL_PATH) instead")
    channels = checkpoint_info(state)[2]
    if channels != RGB_CHANNELS:
        raise ValueError(f"{what}: its stem takes {channels} channels; an {name} checkpoint of "
                         f"train_fred.py takes {RGB_CHANNELS}")
    return state


def load_fusion_weights(model: YoloV8, palette: tuple[tuple[int, int, int], ...], rgb: object = None,
                        event: object = None) -> dict:
    """Start a fusion network from an RGB checkpoint, an event checkpoint or both (paths or state dicts).

    early: the body (all but the stem) from the RGB checkpoint, else the event one; the stem's RGB filters from the
    RGB checkpoint (zero without it), its event-plane filters from the event checkpoint's stem (event_plane_filters,
    zero without it). With only an event checkpoint the network starts as that detector on the planes.
    mid: each backbone from its checkpoint (the event stem through event_plane_filters), neck and head from the
    event checkpoint (the stronger modality on FRED) when given, else the RGB one, and the fusion convolutions pass
    that stream through: the network starts as that single-modality detector.
    Returns {"loaded", "skipped", "skipped_keys", "missing", "total", "missing_keys", "sources"} (as load_weights);
    ValueError when a checkpoint is not a
    3-channel detector of the model's size and architecture."""
    if rgb is None and event is None:
        raise ValueError("load_fusion_weights: give an RGB checkpoint, an event checkpoint or both")
    states = {name: _single(src, name) for name, src in (("RGB", rgb), ("event", event)) if src is not None}
    for name, state in states.items():
        phi, nc, _ = checkpoint_info(state)
        if (phi, infer_arch(state), nc) != (model.phi, model.arch, model.num_classes):
            raise ValueError(f"the {name} checkpoint is a {phi} {infer_arch(state)} with {nc} classes; the fusion "
                             f"model is a {model.phi} {model.arch} with {model.num_classes}: train it with the same "
                             "PHI, ARCH and NUM_CLASSES")
    body = states.get("RGB", states.get("event"))
    head = states.get("event", states.get("RGB"))
    target: dict[str, torch.Tensor] = {}
    if isinstance(model, MidFusionYoloV8):
        for name, stream in (("RGB", "rgb"), ("event", "event")):
            for k, v in states.get(name, {}).items():
                if k.startswith("backbone."):
                    target[k.replace("backbone.", f"backbone.{stream}.", 1)] = v
        target.update({k: v for k, v in head.items() if not k.startswith("backbone.")})
        gains = (0.0, 1.0) if "event" in states else (1.0, 0.0)
        for i, conv in enumerate(model.fusion):
            target[f"fusion.{i}.weight"] = pass_through_weight(conv, gains)
            target[f"fusion.{i}.bias"] = torch.zeros_like(conv.bias)
        event_stem = "backbone.event.stem"
    else:
        target.update({k: v for k, v in body.items() if not k.startswith(f"{_STEM}.")})
        target.update({k: v for k, v in body.items() if k.startswith(f"{_STEM}.bn.")})
        own = model.state_dict()[f"{_STEM}.conv.weight"]
        stem = torch.zeros_like(own)
        if "RGB" in states:
            stem[:, :RGB_CHANNELS] = states["RGB"][f"{_STEM}.conv.weight"]
        target[f"{_STEM}.conv.weight"] = stem
        event_stem = _STEM
    if "event" in states:
        ev = states["event"]
        planes, constant = event_plane_filters(ev[f"{_STEM}.conv.weight"].float(), palette)
        if event_stem == _STEM:
            target[f"{_STEM}.conv.weight"][:, RGB_CHANNELS:] = planes.to(target[f"{_STEM}.conv.weight"].dtype)
        else:
            target[f"{event_stem}.conv.weight"] = planes
        if event_stem != _STEM or "RGB" not in states:  # the constant the planes lack, folded into the BN mean
            target[f"{event_stem}.bn.running_mean"] = ev[f"{_STEM}.bn.running_mean"] - constant
    own = model.state_dict()
    bad = [k for k, v in target.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"fusion weights do not fit the model: {bad[:4]} ...")
    model.load_state_dict(target, strict=False)
    missing = [k for k in own if k not in target]
    return {"loaded": len(target), "skipped": 0, "skipped_keys": [], "missing": len(missing), "total": len(own),
            "missing_keys": missing, "sources": sorted(states)}
