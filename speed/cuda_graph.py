"""The training forward and backward of model + loss as CUDA graphs (torch.cuda.make_graphed_callables).

A YOLOv8 step at batch 16 launches over a thousand small kernels (network, assigner, loss, their gradients);
replaying them from a graph removes the CPU launch cost, which at small batches is what limits the step. A graph
needs static shapes: the images are one batch shape, and the targets are padded to a fixed row count (pad_targets;
DetectionLoss ignores padding rows). A graph is captured for one input shape, autocast dtype and set of trainable
parameters, so the trainer builds one per phase; other shapes, a batch with more targets than the graph holds and
eval mode run eagerly. The optimiser, GradScaler and EMA stay outside (their kernels are few, fused or foreach).
"""
import gc
from typing import Callable, Optional

import torch
from torch import nn

from nets.loss import LOSS_PARTS, pad_targets


class _TrainLoss(nn.Module):
    """Unit that is graphed: criterion(model(images) under autocast, targets) -> loss parts [3] (box, cls, dfl)."""

    def __init__(self, model: nn.Module, criterion: Callable, amp_dtype: Optional[torch.dtype]):
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.amp_dtype = amp_dtype

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """images: float [B, C, H, W]; targets: [M, 6] (batch_idx, cls, cx, cy, w, h) -> unweighted parts [3]."""
        with torch.autocast("cuda", dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None,
                            cache_enabled=False):  # no weight cache: graph capture needs it off
            preds = self.model(images)
        parts = self.criterion(list(preds), targets, tuple(images.shape[2:]))
        return torch.stack([parts[k] for k in LOSS_PARTS])


def snapshot_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of model's buffers (BatchNorm running statistics and counters), for restore_buffers."""
    return {k: v.detach().clone() for k, v in model.named_buffers()}


@torch.no_grad()
def restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Write snapshot_buffers' copies back. Parameters are left alone (a capture never changes them): rewriting them
    would bump their version counters and so unfold the frozen backbone's convolutions (Conv.fold_bn)."""
    for k, v in model.named_buffers():
        v.copy_(saved[k])


class GraphedTrainLoss:
    """Callable replacing criterion(model(images), targets, shape) in training: graph replay for the captured image
    shape when the batch has at most max_targets targets, the eager model and loss otherwise.

    Capture runs a few warm-up steps on a constant batch without targets; the BatchNorm statistics they moved are
    restored afterwards (parameter gradients are never written: capture uses torch.autograd.grad), so building it
    leaves the model as it was. The model's parameters must keep their storage and requires_grad flags while the
    graph is used (optimiser steps and EMA updates are in place), and a frozen backbone its folded convolutions (the
    graph holds those of capture time: no freeze_backbone call while it is used, see Conv.fold_bn). Building one
    gives the device back the memory of a graph dropped before it and of its own warm-up steps (see __init__).
    """

    def __init__(self, model: nn.Module, criterion: Callable, sample: torch.Tensor, max_targets: int,
                 amp_dtype: Optional[torch.dtype], warmup_iters: int = 3):
        """model: on CUDA, in training mode (frozen parts as they will train); criterion: a DetectionLoss; sample:
        float [B, C, H, W] on the same device with the memory format of the training batches (only its shape and
        layout are used); max_targets: target rows the graph holds (a batch's targets are padded to it)."""
        if sample.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model, self.criterion = model, criterion
        self.shape, self.max_targets = tuple(sample.shape), max_targets
        # A graph dropped before this one (the previous phase's) is kept alive by reference cycles inside torch's
        # graphed callables until the cyclic collector runs, and its memory pool goes back only through
        # empty_cache: free both before capturing, or the two phases' graphs hold memory side by side.
        gc.collect()
        torch.cuda.empty_cache()
        saved = snapshot_buffers(model)
        unit = _TrainLoss(model, criterion, amp_dtype).train(model.training)
        no_targets = pad_targets(sample.new_zeros(0, 6, dtype=torch.float32), max_targets, self.shape[0])
        self._graphed = torch.cuda.make_graphed_callables(unit, (torch.full_like(sample, 0.5), no_targets),
                                                          num_warmup_iters=warmup_iters)
        restore_buffers(model, saved)  # warm-up steps updated the BatchNorm running statistics: put them back
        torch.cuda.synchronize(sample.device)
        # The warm-up steps ran on a side stream of their own: the blocks they freed stay cached for that stream,
        # which nothing uses again (about one eager step of memory). Give them back.
        torch.cuda.empty_cache()

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted loss parts {"box", "cls", "dfl"} of images [B, C, H, W] and targets [M, 6]."""
        if (self.model.training and torch.is_grad_enabled() and tuple(images.shape) == self.shape
                and targets.shape[0] <= self.max_targets):
            parts = self._graphed(images, pad_targets(targets.float(), self.max_targets, self.shape[0]))
            return dict(zip(LOSS_PARTS, parts.unbind()))
        return self.criterion(self.model(images), targets, tuple(images.shape[2:]))


class GraphedFrameForward:
    """Inference: model(frames) for batches of uint8 frames [B, H, W, C] (RGB, letterboxed), replayed from one CUDA
    graph per batch shape. One replay holds the input's conversion (0..1 float, NCHW channels_last, fp16 when half:
    the same arithmetic as the eager TorchDetector) and the network, so a batch costs one host-to-device copy from a
    pinned buffer and one graph launch instead of hundreds of kernel launches. The output is the graph's own tensor,
    overwritten by the next call: consume it first. At most max_shapes graphs are kept (the oldest is dropped)."""

    def __init__(self, model: nn.Module, device: torch.device, half: bool, max_shapes: int = 4,
                 warmup_iters: int = 1):
        """model: in eval mode on the CUDA device (weights fp16 when half)."""
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model, self.device, self.half = model, device, half
        self.max_shapes, self.warmup_iters = max_shapes, warmup_iters
        self._graphs: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._copied = torch.cuda.Event()  # the last host-to-device copy: its pinned buffer is free once it is done

    def _forward(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, C] on the device -> the model's output."""
        x = frames.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)
        return self.model(x.half() if self.half else x)

    @torch.no_grad()
    def capture(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.cuda.CUDAGraph,
                                                       torch.Tensor]:
        """(pinned host input, device input, graph, graph output) for frames of shape [B, H, W, C], captured now
        unless it was before."""
        if shape in self._graphs:
            return self._graphs[shape]
        if len(self._graphs) >= self.max_shapes:
            self._graphs.pop(next(iter(self._graphs)))
        host = torch.zeros(shape, dtype=torch.uint8).pin_memory()
        static = torch.zeros(shape, dtype=torch.uint8, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up off the capture: cuDNN picks its kernels, the allocator its blocks
            for _ in range(self.warmup_iters):
                self._forward(static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._forward(static)
        self._graphs[shape] = (host, static, graph, out)
        return self._graphs[shape]

    @torch.no_grad()
    def __call__(self, frames: list, batch: int) -> torch.Tensor:
        """The model's output for len(frames) <= batch uint8 arrays [H, W, C] of one shape, as a batch of `batch`
        (rows past len(frames) hold stale frames: ignore their outputs)."""
        shape = (batch, *frames[0].shape)
        host, static, graph, out = self.capture(shape)
        self._copied.synchronize()
        rows = host.numpy()
        for i, frame in enumerate(frames):
            rows[i] = frame
        static.copy_(host, non_blocking=True)
        self._copied.record()
        graph.replay()
        return out
