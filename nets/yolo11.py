"""YOLO11 (arch "yolo11", Ultralytics' yolo11.yaml): C3k2 blocks, SPPF and C2PSA attention in the backbone, a PAN
neck of C3k2 blocks, and the v8 head with a depthwise-separable class branch.

Built from nets/yolov8.py's blocks (Conv, Bottleneck, C2f, SPPF, Detect); YoloV8 assembles it (nets.model.arch_parts),
so loss, assigner, freezing, fusing and checkpoints are the v8 ones. The frozen backbone is layers 0-10, C2PSA included
(the yaml's backbone section; Ultralytics' freeze=11). Module names follow yolov8.py's (backbone.stem,
backbone.dark2..dark5, neck.top_down_p4, ..., head.box / head.cls) so nets/convert.py maps Ultralytics' layer indices
one to one. Tensor shapes: B = batch, C = channels, H/W = height/width.
"""
import functools

import torch
from torch import nn

from nets.yolov8 import PAN, C2f, SPPF, Bottleneck, Conv, Detect, Upsample2x, scaled_depth, scaled_width

# phi -> (depth multiple, width multiple, max channels), as in yolo11.yaml (not v8's).
SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.50, 0.25, 1024),
    "s": (0.50, 0.50, 1024),
    "m": (0.50, 1.00, 512),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.50, 512),
}
C3K_SIZES = ("m", "l", "x")  # sizes whose every C3k2 holds C3k blocks (Ultralytics sets c3k=True for them)


def width(channels: int, phi: str) -> int:
    """Channels of a YOLO11 layer nominally `channels` wide, for size phi."""
    return scaled_width(channels, phi, SCALES)


def depth(repeats: int, phi: str) -> int:
    """Blocks of a YOLO11 C3k2 / C2PSA nominally repeated `repeats` times, for size phi."""
    return scaled_depth(repeats, phi, SCALES)


class C3k(nn.Module):
    """CSP block with 3 Convs around n residual 3x3 bottlenecks on c/2 channels; [B, c, H, W] -> [B, c, H, W]."""

    def __init__(self, c: int, n: int = 2):
        super().__init__()
        hidden = c // 2
        self.cv1 = Conv(c, hidden, 1)
        self.cv2 = Conv(c, hidden, 1)
        self.cv3 = Conv(2 * hidden, c, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, shortcut=True) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bottlenecks on one 1x1 projection, concatenated with the other, then fused."""
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k2(C2f):
    """C2f whose n blocks are C3k (c3k) or residual bottlenecks with a half-width hidden layer;
    [B, c_in, H, W] -> [B, c_out, H, W]."""

    def __init__(self, c_in: int, c_out: int, n: int, c3k: bool, e: float = 0.5):
        self.c3k = c3k  # read by make_blocks, which C2f.__init__ calls
        super().__init__(c_in, c_out, n, shortcut=True, e=e)

    def make_blocks(self, n: int, shortcut: bool) -> nn.ModuleList:
        """n C3k blocks or n residual bottlenecks (hidden width c/2)."""
        return nn.ModuleList(C3k(self.c, 2) if self.c3k else Bottleneck(self.c, shortcut, e=0.5) for _ in range(n))


class Attention(nn.Module):
    """Multi-head self-attention over all H*W positions, plus a depthwise 3x3 positional term on the values;
    [B, c, H, W] -> [B, c, H, W]. Keys and queries have half a head's width."""

    def __init__(self, c: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = c // num_heads
        self.key_dim = self.head_dim // 2
        self.qkv = Conv(c, c + 2 * self.key_dim * num_heads, 1, act=False)
        self.proj = Conv(c, c, 1, act=False)
        self.pe = Conv(c, c, 3, groups=c, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled dot-product attention per head (softmax over keys), values + positional term, projection."""
        b, c, h, w = x.shape
        qkv = self.qkv(x).view(b, self.num_heads, 2 * self.key_dim + self.head_dim, h * w)
        q, k, v = qkv.split((self.key_dim, self.key_dim, self.head_dim), 2)  # each [B, heads, dim, N]
        out = nn.functional.scaled_dot_product_attention(q.transpose(-2, -1), k.transpose(-2, -1),
                                                         v.transpose(-2, -1))  # [B, heads, N, head_dim]
        out = out.transpose(-2, -1).reshape(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(out)


class PSABlock(nn.Module):
    """Residual attention then residual feed-forward (1x1 Convs, 2x wide); [B, c, H, W] -> [B, c, H, W]."""

    def __init__(self, c: int):
        super().__init__()
        self.attn = Attention(c, num_heads=max(c // 64, 1))
        self.ffn = nn.Sequential(Conv(c, 2 * c, 1), Conv(2 * c, c, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + attention, then + feed-forward."""
        x = x + self.attn(x)
        return x + self.ffn(x)


class C2PSA(nn.Module):
    """CSP block with n PSABlocks on half the channels; [B, c, H, W] -> [B, c, H, W]."""

    def __init__(self, c: int, n: int):
        super().__init__()
        self.c = c // 2
        self.cv1 = Conv(c, 2 * self.c, 1)
        self.cv2 = Conv(2 * self.c, c, 1)
        self.m = nn.Sequential(*(PSABlock(self.c) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention blocks on the second half of cv1's output, concatenated with the first half, fused."""
        a, b = self.cv1(x).split((self.c, self.c), 1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class Backbone11(nn.Module):
    """yolo11.yaml layers 0-10; [B, C, H, W] -> P3 [B, c3, H/8, W/8], P4 [.., H/16, ..], P5 [.., H/32, ..]."""

    def __init__(self, phi: str, in_channels: int = 3, with_p2: bool = False):
        super().__init__()
        if with_p2:
            raise ValueError("YOLO11 has no P2 variant here: use ARCH='yolov8-p2' for a stride-4 level")
        w = functools.partial(width, phi=phi)
        n, c3k = depth(2, phi), phi in C3K_SIZES
        self.stem = Conv(in_channels, w(64), 3, 2)
        self.dark2 = nn.Sequential(Conv(w(64), w(128), 3, 2), C3k2(w(128), w(256), n, c3k, e=0.25))
        self.dark3 = nn.Sequential(Conv(w(256), w(256), 3, 2), C3k2(w(256), w(512), n, c3k, e=0.25))
        self.dark4 = nn.Sequential(Conv(w(512), w(512), 3, 2), C3k2(w(512), w(512), n, c3k=True))
        self.dark5 = nn.Sequential(Conv(w(512), w(1024), 3, 2), C3k2(w(1024), w(1024), n, c3k=True),
                                   SPPF(w(1024), w(1024), 5), C2PSA(w(1024), n))
        self.out_channels = (w(512), w(512), w(1024))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the stride 8, 16 and 32 feature maps."""
        p3 = self.dark3(self.dark2(self.stem(x)))
        p4 = self.dark4(p3)
        return p3, p4, self.dark5(p4)


class PAN11(PAN):
    """yolo11.yaml's neck (layers 11-22): PAN's wiring (its forward), top-down then bottom-up, with C3k2 blocks.

    Inputs: Backbone11's P3, P4, P5. Outputs: P3 [B, c3, H/8, W/8], P4 [.., H/16, ..], P5 [.., H/32, ..] with
    out_channels (c3, c4, c5).
    """

    def __init__(self, phi: str):
        nn.Module.__init__(self)  # PAN's layers are C2f blocks of v8's widths: only its forward is shared
        w = functools.partial(width, phi=phi)
        n, c3k = depth(2, phi), phi in C3K_SIZES
        b3, b4, b5 = w(512), w(512), w(1024)  # Backbone11.out_channels
        c3, c4, c5 = w(256), w(512), w(1024)
        self.upsample = Upsample2x()
        self.top_down_p4 = C3k2(b5 + b4, c4, n, c3k)
        self.top_down_p3 = C3k2(c4 + b3, c3, n, c3k)
        self.down_p3 = Conv(c3, c3, 3, 2)
        self.bottom_up_p4 = C3k2(c3 + c4, c4, n, c3k)
        self.down_p4 = Conv(c4, c4, 3, 2)
        self.bottom_up_p5 = C3k2(c4 + b5, c5, n, c3k=True)
        self.out_channels = (c3, c4, c5)


class Detect11(Detect):
    """The v8 Detect head with YOLO11's class branch: two depthwise 3x3 + pointwise Conv pairs, then the logits."""

    def cls_branch(self, c_in: int, c_cls: int) -> nn.Sequential:
        """[depthwise 3x3, 1x1 to c_cls], [depthwise 3x3, 1x1], 1x1 conv to the class logits."""
        return nn.Sequential(nn.Sequential(Conv(c_in, c_in, 3, groups=c_in), Conv(c_in, c_cls, 1)),
                             nn.Sequential(Conv(c_cls, c_cls, 3, groups=c_cls), Conv(c_cls, c_cls, 1)),
                             nn.Conv2d(c_cls, self.num_classes, 1))
