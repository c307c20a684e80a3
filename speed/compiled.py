"""torch.compile with an eager fallback, the training loop's batch transform it compiles (HSV_COMPILE), and the
compiled training network (COMPILE_MODEL)."""
import logging
from typing import Callable, Optional

import torch
from torch import nn

from datasets.augment import Augmentation
from datasets.gpu_augment import BatchHSV, jittered_float

LOGGER = logging.getLogger(__name__)


class CompiledOrEager:
    """fn compiled by torch.compile (one shape each, no dynamic shapes); if compiling or running the compiled code
    fails (no Triton, no C compiler), a warning says why and fn runs eagerly from then on."""

    def __init__(self, fn: Callable):
        self.fn, self._compiled, self._failed = fn, None, False

    def __call__(self, *args):
        """fn(*args), compiled while that works."""
        if not self._failed:
            try:
                if self._compiled is None:  # some builds refuse torch.compile itself (e.g. newer Pythons)
                    self._compiled = torch.compile(self.fn, dynamic=False)
                return self._compiled(*args)
            except Exception as e:  # torch.compile's backends raise many types (missing Triton, compiler errors)
                if isinstance(e, torch.cuda.OutOfMemoryError) or isinstance(e.__cause__, torch.cuda.OutOfMemoryError):
                    raise
                LOGGER.warning("torch.compile of %s failed, running it eagerly: %s: %s", self.fn.__name__,
                               type(e).__name__, str(e).splitlines()[0] if str(e) else "")
                self._failed = True
        return self.fn(*args)


def build_batch_transform(augmentation: Augmentation, compiled: bool) -> Optional[BatchHSV]:
    """The batch half of augmentation for the training loop: None when the samples come fully augmented (the plain
    uint8 -> float), else BatchHSV over jittered_float, fused by torch.compile into one kernel when compiled (about
    40 eager kernels otherwise: 1.30 -> 0.13 ms for a batch of 16 at 640 on an H200, measured)."""
    if not augmentation.hsv_in_batch:
        return None
    return BatchHSV(CompiledOrEager(jittered_float) if compiled else jittered_float)


def compile_backends() -> list[str]:
    """The torch.compile backends this PyTorch has (COMPILE_MODEL's accepted values besides "")."""
    return sorted(torch.compiler.list_backends(exclude_tags=()))


def compile_model(model: nn.Module, backend: str, fullgraph: bool = False) -> nn.Module:
    """torch.compile(model) with `backend` for the training step (COMPILE_MODEL): static shapes, PyTorch's default
    mode (no CUDA graphs of its own: the trainer captures its graph around the compiled code, speed/cuda_graph.py).
    The result shares model's parameters and buffers; save and evaluate model itself (its state_dict keys are plain).
    It compiles at its first call per input shape, phase (requires_grad, BatchNorm mode) and autocast state."""
    return torch.compile(model, backend=backend, dynamic=False, fullgraph=fullgraph)
