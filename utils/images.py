"""Network input from collated images: uint8 [B, C, H, W] (0..255) -> float [B, C, H, W] (0..1)."""
import torch


def uint8_to_float(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float 0..1 on the same device, NHWC (channels_last) or NCHW in memory."""
    images = images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return images.float().div_(255.0)
