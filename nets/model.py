"""The detector of every architecture (nets.yolov8.ARCHS): YoloV8 assembles an architecture's backbone, neck and head
(nets/yolov8.py's blocks for "yolov8" and "yolov8-p2", nets/yolo11.py's for "yolo11"); build_model makes one."""
import torch
from torch import nn

from nets.yolo11 import Backbone11, Detect11, PAN11
from nets.yolov8 import ARCHS, PAN, PANP2, REG_MAX, SCALES, Backbone, Conv, Detect


def arch_parts(arch: str) -> tuple[type[nn.Module], type[nn.Module], type[Detect]]:
    """(backbone, neck, head) classes of architecture arch (see ARCHS)."""
    if arch == "yolo11":
        return Backbone11, PAN11, Detect11
    return Backbone, (PANP2 if arch == "yolov8-p2" else PAN), Detect


class YoloV8(nn.Module):
    """YOLO detector (arch "yolov8", "yolov8-p2" or "yolo11", see ARCHS); see Detect for the training and inference
    outputs."""

    def __init__(self, phi: str, num_classes: int, in_channels: int = 3, arch: str = "yolov8"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture arch={arch!r}; choose one of {', '.join(ARCHS)}")
        if phi not in SCALES:  # the same five names for every arch
            raise ValueError(f"unknown YOLOv8 size phi={phi!r}; choose one of {', '.join(SCALES)}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes ({num_classes}) and in_channels ({in_channels}) must be >= 1")
        self.phi = phi
        self.arch = arch
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.reg_max = REG_MAX
        self.backbone_frozen = False  # set by nets.freeze.freeze_backbone
        with_p2 = arch == "yolov8-p2"
        _, neck, head = arch_parts(arch)
        self.backbone = self.make_backbone(phi, in_channels, with_p2)
        self.neck = neck(phi)
        self.head = head(num_classes, self.neck.out_channels, ARCHS[arch], REG_MAX)

    def make_backbone(self, phi: str, in_channels: int, with_p2: bool) -> nn.Module:
        """The backbone of self.arch (a subclass may fuse several); its out_channels are the neck's inputs."""
        return arch_parts(self.arch)[0](phi, in_channels, with_p2)

    @property
    def stride(self) -> torch.Tensor:
        """Strides of the output levels, tensor([8., 16., 32.]) (yolov8) or tensor([4., 8., 16., 32.]) (yolov8-p2)."""
        return self.head.stride

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        """x [B, in_channels, H, W] (H, W multiples of 32) -> per-level maps (train) or [B, 4 + nc, A] (eval)."""
        return self.head(self.neck(*self.backbone(x)))

    def train(self, mode: bool = True) -> "YoloV8":
        """Set train/eval mode; BatchNorm layers of a frozen backbone stay in eval mode (fixed statistics)."""
        super().train(mode)
        if mode and self.backbone_frozen:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def fuse(self) -> "YoloV8":
        """Fold every BatchNorm into its convolution for inference; puts the model in eval mode."""
        self.eval()
        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self


def build_model(phi: str, num_classes: int, in_channels: int = 3, arch: str = "yolov8") -> YoloV8:
    """YOLO of size phi (n/s/m/l/x) and architecture arch (see ARCHS) for num_classes classes and in_channels input
    channels, Ultralytics init."""
    return YoloV8(phi, num_classes, in_channels, arch)
