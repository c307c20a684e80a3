"""The model's training forward and backward as CUDA graphs (torch.cuda.make_graphed_callables), for one batch shape.

A YOLOv8 step at batch 16 launches about a thousand small kernels; replaying them from a graph removes the CPU
launch cost, which at small batches is what limits the step. The loss, optimiser and EMA stay eager (the number
of targets changes every batch). A graph is captured for one input shape, autocast dtype and set of trainable
parameters, so the trainer builds one per phase; any other shape (a last, smaller batch where training loaders
keep one) and eval mode run the model eagerly.
"""
from typing import Optional

import torch
from torch import nn


class _AutocastForward(nn.Module):
    """model(images) under autocast (no weight cache, as graph capture needs): the unit that is graphed."""

    def __init__(self, model: nn.Module, amp_dtype: Optional[torch.dtype]):
        super().__init__()
        self.model = model
        self.amp_dtype = amp_dtype

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """images: float [B, 3, H, W] -> the head's raw maps, one [B, 4*reg_max+nc, H/s, W/s] per stride s."""
        with torch.autocast("cuda", dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None,
                            cache_enabled=False):
            return tuple(self.model(images))


class GraphedTrainForward:
    """Callable replacing model(images) in training: graph replay for the captured shape, eager model otherwise.

    Capture runs a few warm-up steps on a constant batch of sample's shape; the BatchNorm statistics they moved are
    restored afterwards (parameter gradients are never written: capture uses torch.autograd.grad), so building it
    leaves the model as it was. The model's parameters must keep their
    storage and requires_grad flags while the graph is used (optimiser steps and EMA updates are in place).
    """

    def __init__(self, model: nn.Module, sample: torch.Tensor, amp_dtype: Optional[torch.dtype],
                 warmup_iters: int = 3):
        """model: on CUDA, in training mode (frozen parts as they will train); sample: float [B, 3, H, W] on the
        same device with the memory format of the training batches (only its shape and layout are used)."""
        if sample.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model = model
        self.shape = tuple(sample.shape)
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        unit = _AutocastForward(model, amp_dtype).train(model.training)
        static = torch.full_like(sample, 0.5)
        self._graphed = torch.cuda.make_graphed_callables(unit, (static,), num_warmup_iters=warmup_iters)
        with torch.no_grad():  # warm-up steps updated the BatchNorm running statistics: put them back
            for k, v in model.state_dict().items():
                v.copy_(saved[k])
        torch.cuda.synchronize(sample.device)

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Raw head maps of images (list of 3 tensors, as model(images) in training mode)."""
        if self.model.training and tuple(images.shape) == self.shape and torch.is_grad_enabled():
            return list(self._graphed(images))
        return self.model(images)
