"""Exponential moving average of model weights, with the decay ramped up over the first updates."""
import copy
import math

import torch
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """Return the plain module inside DistributedDataParallel / DataParallel and torch.compile (or the model)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        inner = getattr(model, "module", None) if inner is None else inner
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class ModelEMA:
    """EMA copy of a model: ema = d * ema + (1 - d) * model with d = decay * (1 - exp(-updates / tau)).

    Floating-point parameters and buffers (BatchNorm statistics included) are averaged; integer buffers (BatchNorm
    batch counters, unused with a fixed momentum) keep their initial values.
    The EMA model is kept in eval mode and never requires gradients.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(unwrap(model)).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates
        self._pairs = None  # (model, EMA tensors, model tensors) paired by name, built on the first update

    def current_decay(self) -> float:
        """Decay used by the next update."""
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the model's current weights into the EMA (device-side only, no host sync)."""
        d = self.current_decay()
        self.updates += 1
        net = unwrap(model)
        if self._pairs is None or self._pairs[0] is not net:
            src, ema = net.state_dict(), self.ema.state_dict()
            floats = [k for k, v in ema.items() if v.dtype.is_floating_point]
            self._pairs = (net, [ema[k] for k in floats], [src[k].detach() for k in floats])
        _, ema_f, src_f = self._pairs
        torch._foreach_lerp_(ema_f, src_f, 1.0 - d)

    def state_dict(self) -> dict:
        """Weights and update count, for checkpoints."""
        return {"model": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict()."""
        self.ema.load_state_dict(state["model"])  # copies into the existing tensors: cached pairs stay valid
        self.updates = int(state["updates"])
