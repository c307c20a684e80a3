"""Collated batches onto the device: uint8 images -> float network input, one batch ahead on a side stream (CUDA)."""
from typing import Callable, Iterable, Iterator, Optional

import torch

# What turns a host batch into the network's input, on the device: (collate_fred batch, device, channels_last) ->
# float images [B, C, H, W] in 0..1. The training loop takes one (the batch half of the augmentation, built with the
# data); without one, the batch's uint8 images are copied and converted (images_to_device()).
BatchTransform = Callable[[dict, torch.device, bool], torch.Tensor]


def uint8_to_float(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float 0..1 on the same device, NHWC (channels_last) or NCHW in memory."""
    images = images.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return images.float().div_(255.0)


def images_to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 [B, C, H, W] (any memory layout) -> uint8_to_float() on device; the copy keeps the host layout
    (collate_fred's NHWC: no transposing copy when channels_last) and the rest runs there."""
    return uint8_to_float(images.to(device, non_blocking=True), channels_last)


def to_device(batch: dict, device: torch.device, channels_last: bool, transform: Optional[BatchTransform] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """A collate_fred batch on device: its float images (transform(), or without one images_to_device()) and its
    targets [M, 6]."""
    if transform is None:
        images = images_to_device(batch["images"], device, channels_last)
    else:
        images = transform(batch, device, channels_last)
    return images, batch["targets"].to(device, non_blocking=True)


def device_batches(loader: Iterable[dict], device: torch.device, channels_last: bool,
                   transform: Optional[BatchTransform] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """to_device() of each batch of loader; on CUDA one batch ahead, on a side stream (prefetched())."""
    for _, tensors in prefetched(loader, device, lambda batch: to_device(batch, device, channels_last, transform)):
        yield tensors


def prefetched(loader: Iterable[dict], device: torch.device, fn: Callable[[dict], tuple[torch.Tensor, ...]]
               ) -> Iterator[tuple[dict, tuple[torch.Tensor, ...]]]:
    """(batch, fn(batch)) for each batch of loader, fn making the batch's device tensors; on CUDA one batch ahead.

    On CUDA fn(batch i+1) (copy and normalisation) is queued on its own stream before batch i is handed out, so it
    overlaps batch i's work on the GPU: the consuming stream waits for a batch's copy (an event) only when that
    batch is handed out, never for the copy of the next one.
    """
    if device.type != "cuda":
        for batch in loader:
            yield batch, fn(batch)
        return
    side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    pending = None
    for batch in loader:
        with torch.cuda.stream(side):
            ready = fn(batch)
        copied = side.record_event()
        if pending is not None:
            yield pending[0], _hand_out(*pending[1:], main)
        pending = (batch, ready, copied)
    if pending is not None:
        yield pending[0], _hand_out(*pending[1:], main)


def _hand_out(ready: tuple[torch.Tensor, ...], copied: torch.cuda.Event, main: torch.cuda.Stream
              ) -> tuple[torch.Tensor, ...]:
    """Tensors made on the side stream, for use on main: main waits for their copy (event), and the allocator may
    not hand their memory back to the side stream before main is done with them."""
    main.wait_event(copied)
    for t in ready:
        t.record_stream(main)
    return ready
