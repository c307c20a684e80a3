"""The batch half of the augmentation: the HSV jitter of datasets/augment.py applied to a whole batch on its device.

With Augmentation.hsv_in_batch, FredDataset draws each sample's HSV jitter as augment_hsv() would (hsv_draw()) but
leaves it undone: the item carries the draw under HSV_KEY, collate_fred stacks the draws, and BatchHSV, given to the
training loop as its batch transform, turns the batch into float images with the jitter applied, on the device.
The two halves draw the same numbers, so a run with the jitter here or in the workers sees the same geometry.
"""
from typing import Callable

import torch

from datasets.augment import HSV_KEY
from utils.device_batches import uint8_to_float


def hsv_jitter_rgb(images: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """augment_hsv() for a batch on its device: images float [B, 3, H, W] RGB in 0..1, jitter float [B, 3] as from
    hsv_draw() (hue shift, saturation and value gain offsets); returns a new batch in images' memory format.

    HSV in float (OpenCV's 8-bit HSV quantises hue to 180 steps): results differ from augment_hsv() by rounding.
    """
    dh, gs, gv = (j.to(images.dtype)[:, None, None] for j in jitter.unbind(1))
    r, g, b = images.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    d = delta.clamp_min(1e-12)
    h = torch.where(v == r, (g - b) / d, torch.where(v == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    h = torch.remainder(h + dh, 1.0) * 6.0
    s = (s * (1.0 + gs)).clamp(0.0, 1.0)
    v = (v * (1.0 + gv)).clamp(0.0, 1.0)
    k = torch.stack([torch.remainder(5.0 + h, 6.0), torch.remainder(3.0 + h, 6.0), torch.remainder(1.0 + h, 6.0)], 1)
    rgb = v[:, None] - (v * s)[:, None] * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        return rgb.contiguous(memory_format=torch.channels_last)
    return rgb


def jittered_float(images: torch.Tensor, jitter: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8_to_float() of images [B, C, H, W] then hsv_jitter_rgb() of the RGB channels (the first 3; a fused
    batch's event planes stay as they are) with jitter float [B, 3], on their device."""
    x = uint8_to_float(images, channels_last)
    if x.shape[1] == 3:
        return hsv_jitter_rgb(x, jitter)
    out = torch.cat([hsv_jitter_rgb(x[:, :3], jitter), x[:, 3:]], 1)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


class BatchHSV:
    """A batch transform of the training loop (utils.device_batches.BatchTransform): a collate_fred batch whose items
    carry their HSV draw -> float images on the device, jittered. fn: jittered_float, or the same computation
    compiled (speed/compiled.py)."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor] = jittered_float):
        self.fn = fn

    def __call__(self, batch: dict, device: torch.device, channels_last: bool) -> torch.Tensor:
        """fn() of the batch's images and HSV draws, copied to device."""
        return self.fn(batch["images"].to(device, non_blocking=True), batch[HSV_KEY].to(device, non_blocking=True),
                       channels_last)
