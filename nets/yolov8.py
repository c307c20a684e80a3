"""YOLOv8 detector (n/s/m/l/x): CSP-Darknet backbone with C2f and SPPF, PAN neck, anchor-free DFL head.

The architecture, channel/depth scaling, BatchNorm settings and head bias initialisation follow
Ultralytics' YOLOv8 so that its weights load one to one (see nets/convert.py) and outputs agree.
Tensor shapes use B = batch, C = channels, H/W = input height/width, A = anchors over all levels.
Architectures (`arch`): "yolov8" (levels P3-P5, strides 8, 16, 32), "yolov8-p2" (Ultralytics' yolov8-p2.yaml: the
same backbone, a neck that also goes down to the stride-4 feature, levels P2-P5) and "yolo11" (Ultralytics'
yolo11.yaml, built from this module's blocks in nets/yolo11.py); nets/model.py assembles each into the detector.
"""
import functools
import math

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from utils.boxes import dist2bbox, make_anchors

# phi -> (depth multiple, width multiple, max channels), as published for YOLOv8.
SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}
STRIDES = (8, 16, 32)
# arch -> strides of its detection levels, finest first.
ARCHS: dict[str, tuple[int, ...]] = {"yolov8": STRIDES, "yolov8-p2": (4, 8, 16, 32), "yolo11": STRIDES}
REG_MAX = 16
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def model_name(phi: str, arch: str = "yolov8") -> str:
    """Display name of a model, as Ultralytics names its yaml files: 'YOLOv8n', 'YOLOv8n-P2', 'YOLO11n'."""
    if arch == "yolo11":
        return f"YOLO11{phi}"
    return f"YOLOv8{phi}" + ("-P2" if arch == "yolov8-p2" else "")


def scaled_width(channels: int, phi: str, scales: dict[str, tuple[float, float, int]] = SCALES) -> int:
    """Channels of a layer nominally `channels` wide, for model size `phi` of `scales` (capped, then rounded up to 8)."""
    _, width, max_channels = scales[phi]
    return int(math.ceil(min(channels, max_channels) * width / 8) * 8)


def scaled_depth(repeats: int, phi: str, scales: dict[str, tuple[float, float, int]] = SCALES) -> int:
    """Number of blocks in a C2f (or C3k2) nominally repeated `repeats` times, for model size `phi` of `scales`."""
    return max(round(repeats * scales[phi][0]), 1)


class Conv(nn.Module):
    """Conv2d (no bias, 'same' padding, `groups` groups) -> BatchNorm2d -> SiLU (Identity when not act);
    [B, c_in, H, W] -> [B, c_out, H/s, W/s]."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU() if act else nn.Identity()
        # (key, {dtype: (weight, bias)}): the BatchNorm folded into the conv while the backbone is frozen (fold_bn);
        # plain attributes, outside state_dict, buffers and .to(); key: see _fold_key.
        self._folded: tuple[tuple, dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, BatchNorm (Identity once fused) and activation; one conv with the folded bias instead while
        fold_bn's tensors are valid (BatchNorm in eval mode, conv and BatchNorm parameters not rewritten since)."""
        folded = self._folded
        if (folded is not None and not self.bn.training and not torch.compiler.is_compiling()
                and folded[0] == self._fold_key()):  # torch.compile fuses conv + BatchNorm itself (COMPILE_MODEL)
            weight, bias = self._folded_as(x)
            return self.act(nn.functional.conv2d(x, weight, bias, self.conv.stride, self.conv.padding,
                                                 self.conv.dilation, self.conv.groups))
        return self.act(self.bn(self.conv(x)))

    def _fold_key(self) -> tuple:
        """Storage address and version counter of the conv and BatchNorm parameters: a move (.to, .half, channels_last,
        a deep copy) changes an address, an in-place write (load_state_dict, an optimiser step, an EMA update) a
        version. Writes through .data change neither, and the running statistics are left out (DDP rewrites them
        before every forward): whoever writes them so calls fold_bn again."""
        return tuple((t.data_ptr(), t._version) for t in (self.conv.weight, self.bn.weight, self.bn.bias)
                     if t is not None)

    def _folded_as(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded (weight, bias) in the dtype the conv runs in for x: autocast's (cast once and kept, the cast
        autocast would make on every call) or the module's."""
        tensors = self._folded[1]
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        if dtype is None or dtype in tensors:
            return tensors[dtype or self.conv.weight.dtype]
        weight, bias = tensors[self.conv.weight.dtype]
        tensors[dtype] = (weight.to(dtype), bias.to(dtype))
        return tensors[dtype]

    @torch.no_grad()
    def fold_bn(self, enabled: bool) -> None:
        """enabled: fold the BatchNorm's current parameters and running statistics into a conv weight and bias
        (same device, dtype and memory format as the conv's), used by forward while the BatchNorm is in eval mode
        and those parameters are not moved or rewritten (nets.freeze.freeze_backbone). Not enabled: drop them."""
        self._folded = None
        bn = self.bn
        if not enabled or not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
            return
        weight, bias = fuse_conv_bn_weights(self.conv.weight, self.conv.bias, bn.running_mean, bn.running_var,
                                            bn.eps, bn.weight, bn.bias)
        weight = torch.empty_like(self.conv.weight).copy_(weight)  # the conv weight's strides (channels_last)
        self._folded = (self._fold_key(), {weight.dtype: (weight, bias.detach().to(weight.dtype))})

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BatchNorm (its running statistics) into the convolution; the BN becomes Identity."""
        self._folded = None
        if isinstance(self.bn, nn.Identity):
            return
        bn = self.bn
        fused = nn.utils.skip_init(nn.Conv2d, self.conv.in_channels, self.conv.out_channels, self.conv.kernel_size,
                                   self.conv.stride, self.conv.padding, groups=self.conv.groups, bias=True, device=self.conv.weight.device,
                                   dtype=self.conv.weight.dtype)  # no initialisation: both tensors are set below
        weight, bias = fuse_conv_bn_weights(self.conv.weight, None, bn.running_mean, bn.running_var,
                                            bn.eps, bn.weight, bn.bias)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.conv = fused.requires_grad_(False)
        self.bn = nn.Identity()


class Bottleneck(nn.Module):
    """Two 3x3 Convs (the first to int(c * e) channels) with an optional residual; [B, c, H, W] -> [B, c, H, W]."""

    def __init__(self, c: int, shortcut: bool, e: float = 1.0):
        super().__init__()
        self.cv1 = Conv(c, int(c * e), 3)
        self.cv2 = Conv(int(c * e), c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual (if enabled) around two 3x3 Convs."""
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with n bottlenecks (on int(c_out * e) channels) whose outputs are all concatenated;
    [B, c_in, H, W] -> [B, c_out, H, W]."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool, e: float = 0.5):
        super().__init__()
        self.c = int(c_out * e)
        self.cv1 = Conv(c_in, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c_out, 1)
        self.m = self.make_blocks(n, shortcut)

    def make_blocks(self, n: int, shortcut: bool) -> nn.ModuleList:
        """The n blocks chained on the second half of cv1's output (a subclass may use others)."""
        return nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Split cv1's output in two halves, chain the bottlenecks on the second, concatenate everything."""
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained k x k max-pools; [B, c_in, H, W] -> [B, c_out, H, W]."""

    def __init__(self, c_in: int, c_out: int, k: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden, 1)
        self.cv2 = Conv(hidden * 4, c_out, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the input and its 1, 2 and 3 times pooled versions."""
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: [B, 4 * reg_max, A] logits -> [B, 4, A] expected distances (bins)."""

    def __init__(self, reg_max: int = REG_MAX):
        super().__init__()
        self.reg_max = reg_max
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over the bins of each box side, then the expectation (a fixed 1x1 conv with weights 0..reg_max-1)."""
        b, _, a = x.shape
        prob = x.view(b, 4, self.reg_max, a).transpose(1, 2).softmax(1)  # [B, reg_max, 4, A]
        return nn.functional.conv2d(prob, self.conv.weight.to(prob.dtype)).view(b, 4, a)


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x upsampling in the input's dtype; [B, C, H, W] -> [B, C, 2H, 2W].

    CUDA autocast lists upsample_nearest2d as a float32 op: nn.Upsample turns a half activation into float32, and the
    concatenation after it too (torch.cat promotes), until the next conv casts back. Nearest upsampling only copies
    values (its backward sums in float32 either way), so running it with autocast off gives the same numbers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat every pixel 2 x 2, with autocast off."""
        with torch.autocast(x.device.type, enabled=False):
            return nn.functional.interpolate(x, scale_factor=2, mode="nearest")


class Backbone(nn.Module):
    """CSP-Darknet with C2f and SPPF; [B, C, H, W] -> P3 [B, c3, H/8, W/8], P4 [.., H/16, ..], P5 [.., H/32, ..],
    preceded by P2 [B, c2, H/4, W/4] when with_p2 (the same layers either way)."""

    def __init__(self, phi: str, in_channels: int = 3, with_p2: bool = False):
        super().__init__()
        self.with_p2 = with_p2
        w = functools.partial(scaled_width, phi=phi)
        d = functools.partial(scaled_depth, phi=phi)
        self.stem = Conv(in_channels, w(64), 3, 2)
        self.dark2 = nn.Sequential(Conv(w(64), w(128), 3, 2), C2f(w(128), w(128), d(3), shortcut=True))
        self.dark3 = nn.Sequential(Conv(w(128), w(256), 3, 2), C2f(w(256), w(256), d(6), shortcut=True))
        self.dark4 = nn.Sequential(Conv(w(256), w(512), 3, 2), C2f(w(512), w(512), d(6), shortcut=True))
        self.dark5 = nn.Sequential(Conv(w(512), w(1024), 3, 2), C2f(w(1024), w(1024), d(3), shortcut=True),
                                   SPPF(w(1024), w(1024), 5))
        self.out_channels = (w(128),) * with_p2 + (w(256), w(512), w(1024))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the stride 8, 16 and 32 feature maps, preceded by the stride 4 one when with_p2."""
        p2 = self.dark2(self.stem(x))
        p3 = self.dark3(p2)
        p4 = self.dark4(p3)
        p5 = self.dark5(p4)
        return (p2, p3, p4, p5) if self.with_p2 else (p3, p4, p5)


class PAN(nn.Module):
    """Path aggregation neck: top-down (nearest upsample + concat) then bottom-up (stride-2 Conv + concat).

    Inputs and outputs: P3 [B, c3, H/8, W/8], P4 [B, c4, H/16, W/16], P5 [B, c5, H/32, W/32] (same channels).
    """

    def __init__(self, phi: str):
        super().__init__()
        w = functools.partial(scaled_width, phi=phi)
        n = scaled_depth(3, phi)
        c3, c4, c5 = w(256), w(512), w(1024)
        self.upsample = Upsample2x()
        self.top_down_p4 = C2f(c5 + c4, c4, n, shortcut=False)
        self.top_down_p3 = C2f(c4 + c3, c3, n, shortcut=False)
        self.down_p3 = Conv(c3, c3, 3, 2)
        self.bottom_up_p4 = C2f(c3 + c4, c4, n, shortcut=False)
        self.down_p4 = Conv(c4, c4, 3, 2)
        self.bottom_up_p5 = C2f(c4 + c5, c5, n, shortcut=False)
        self.out_channels = (c3, c4, c5)

    def forward(self, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor) -> list[torch.Tensor]:
        """Fuse the three backbone levels; returns [P3, P4, P5] for the head."""
        t4 = self.top_down_p4(torch.cat([self.upsample(p5), p4], 1))
        o3 = self.top_down_p3(torch.cat([self.upsample(t4), p3], 1))
        o4 = self.bottom_up_p4(torch.cat([self.down_p3(o3), t4], 1))
        o5 = self.bottom_up_p5(torch.cat([self.down_p4(o4), p5], 1))
        return [o3, o4, o5]


class PANP2(nn.Module):
    """PAN neck of yolov8-p2.yaml: top-down to P2 (stride 4), then bottom-up back to P5.

    Inputs and outputs: P2 [B, c2, H/4, W/4], P3 [.., H/8, ..], P4 [.., H/16, ..], P5 [.., H/32, ..] (same channels).
    """

    def __init__(self, phi: str):
        super().__init__()
        w = functools.partial(scaled_width, phi=phi)
        n = scaled_depth(3, phi)
        c2, c3, c4, c5 = w(128), w(256), w(512), w(1024)
        self.upsample = Upsample2x()
        self.top_down_p4 = C2f(c5 + c4, c4, n, shortcut=False)
        self.top_down_p3 = C2f(c4 + c3, c3, n, shortcut=False)
        self.top_down_p2 = C2f(c3 + c2, c2, n, shortcut=False)
        self.down_p2 = Conv(c2, c2, 3, 2)
        self.bottom_up_p3 = C2f(c2 + c3, c3, n, shortcut=False)
        self.down_p3 = Conv(c3, c3, 3, 2)
        self.bottom_up_p4 = C2f(c3 + c4, c4, n, shortcut=False)
        self.down_p4 = Conv(c4, c4, 3, 2)
        self.bottom_up_p5 = C2f(c4 + c5, c5, n, shortcut=False)
        self.out_channels = (c2, c3, c4, c5)

    def forward(self, p2: torch.Tensor, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor) -> list[torch.Tensor]:
        """Fuse the four backbone levels; returns [P2, P3, P4, P5] for the head."""
        t4 = self.top_down_p4(torch.cat([self.upsample(p5), p4], 1))
        t3 = self.top_down_p3(torch.cat([self.upsample(t4), p3], 1))
        o2 = self.top_down_p2(torch.cat([self.upsample(t3), p2], 1))
        o3 = self.bottom_up_p3(torch.cat([self.down_p2(o2), t3], 1))
        o4 = self.bottom_up_p4(torch.cat([self.down_p3(o3), t4], 1))
        o5 = self.bottom_up_p5(torch.cat([self.down_p4(o4), p5], 1))
        return [o2, o3, o4, o5]


class Detect(nn.Module):
    """Decoupled anchor-free head: per level a box branch (4 * reg_max DFL logits) and a class branch (nc logits).

    One level per entry of in_channels and strides, finest first (any number: YOLOv8 has strides 8, 16, 32; a P2
    model adds 4); the branch widths follow the finest level's channels, as in Ultralytics.
    Training: list of [B, 4 * reg_max + nc, H/s, W/s] per stride s.
    Inference: [B, 4 + nc, A], boxes (cx, cy, w, h) in input pixels and sigmoid class scores, float32.
    """

    def __init__(self, num_classes: int, in_channels: tuple[int, ...], strides: tuple[int, ...] = STRIDES,
                 reg_max: int = REG_MAX):
        super().__init__()
        if len(strides) != len(in_channels):
            raise ValueError(f"Detect: {len(in_channels)} input levels (channels {tuple(in_channels)}) but "
                             f"{len(strides)} strides {tuple(strides)}: pass one stride per level")
        if not strides or strides[0] <= 0 or any(b <= a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"Detect: strides {tuple(strides)} must be positive and increase from the finest level "
                             "(the order of the feature maps)")
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float32), persistent=False)
        c_box = max(16, in_channels[0] // 4, 4 * reg_max)
        c_cls = max(in_channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, c_box, 3), Conv(c_box, c_box, 3), nn.Conv2d(c_box, 4 * reg_max, 1))
            for c in in_channels)
        self.cls = nn.ModuleList(self.cls_branch(c, c_cls) for c in in_channels)
        self.dfl = DFL(reg_max)
        self._anchor_cache: tuple | None = None
        self._bias_init(strides)

    def cls_branch(self, c_in: int, c_cls: int) -> nn.Sequential:
        """Class branch of one level: two 3x3 Convs to c_cls channels, then a 1x1 conv to the class logits."""
        return nn.Sequential(Conv(c_in, c_cls, 3), Conv(c_cls, c_cls, 3), nn.Conv2d(c_cls, self.num_classes, 1))

    @torch.no_grad()
    def _bias_init(self, strides: tuple[int, ...]) -> None:
        """Box logits bias 1.0; class bias log(5 / nc / (640 / s)^2), i.e. ~5 objects per 640x640 image a priori."""
        for box, cls, s in zip(self.box, self.cls, strides):
            box[-1].bias.fill_(1.0)
            cls[-1].bias.fill_(math.log(5 / self.num_classes / (640 / s) ** 2))

    def anchors(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor points [A, 2] and strides [A, 1] for these feature map sizes, cached by shape and device."""
        key = (tuple(tuple(f.shape[-2:]) for f in feats), feats[0].device)
        if self._anchor_cache is None or self._anchor_cache[0] != key:
            probes = [f[:1, :1].detach().float() for f in feats]  # float32 anchors, whatever the autocast dtype
            self._anchor_cache = (key, *make_anchors(probes, self.stride, 0.5))
        return self._anchor_cache[1], self._anchor_cache[2]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        """Raw per-level maps in training mode, decoded predictions in eval mode (see class docstring)."""
        maps = [torch.cat((box(f), cls(f)), 1) for f, box, cls in zip(feats, self.box, self.cls)]
        return maps if self.training else self.decode(maps)

    def decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Per-level maps [B, 4 * reg_max + nc, h, w] -> [B, 4 + nc, A]: (cx, cy, w, h) pixels, sigmoid scores."""
        b = maps[0].shape[0]
        with torch.autocast(maps[0].device.type, enabled=False):  # decode in float32 (pixel precision under AMP)
            flat = torch.cat([m.reshape(b, 4 * self.reg_max + self.num_classes, -1) for m in maps], 2).float()
            box, cls = flat.split((4 * self.reg_max, self.num_classes), 1)
            points, strides = self.anchors(maps)
            boxes = dist2bbox(self.dfl(box), points.t().unsqueeze(0), xywh=True, dim=1) * strides.t()
            return torch.cat((boxes, cls.sigmoid()), 1)
