"""Optimiser with decay / no-decay parameter groups, the nbs learning-rate rule and the per-iteration schedule."""
import math

import torch
from torch import nn

NBS = 64  # nominal batch size the configured learning rates refer to

# Learning-rate clamps of the nbs rule (upper, lower), per optimiser family (bubbliiiing's yolov8 figures).
_LR_LIMITS = {"sgd": (5e-2, 5e-4), "adam": (1e-3, 3e-4), "adamw": (1e-3, 3e-4)}


def scale_lr_for_batch(init_lr: float, min_lr: float, batch_size: int, optimizer_type: str) -> tuple[float, float]:
    """Scale (init_lr, min_lr) by batch_size / 64 and clamp them to the optimiser's limits."""
    hi, lo = _LR_LIMITS[optimizer_type]
    init_fit = min(max(batch_size / NBS * init_lr, lo), hi)
    min_fit = min(max(batch_size / NBS * min_lr, lo * 1e-2), hi * 1e-2)
    return init_fit, min_fit


def param_groups(model: nn.Module) -> tuple[list, list, list]:
    """Split parameters into (weights with decay, norm-layer weights, biases); the last two get no decay."""
    decay, norm, bias = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "bias":
                bias.append(p)
            elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                norm.append(p)
            else:
                decay.append(p)
    return decay, norm, bias


def build_optimizer(model: nn.Module, optimizer_type: str, lr: float, momentum: float,
                    weight_decay: float, fused: bool = True) -> torch.optim.Optimizer:
    """SGD (nesterov) / Adam / AdamW over all parameters, frozen ones included; groups are named for the schedule.

    Fused kernels let GradScaler pass its inf flag to the step without a host sync.
    """
    decay, norm, bias = param_groups(model)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": norm, "weight_decay": 0.0, "name": "norm"},
              {"params": bias, "weight_decay": 0.0, "name": "bias"}]
    if optimizer_type == "sgd":
        sgd = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, fused=fused)
        # Zero momentum buffers from the start: with dampening 0 the first step is the same as with none, and
        # fused SGD then neither leaves a skipped (non-finite) first step's buffers uninitialised nor fails on
        # a mix of parameters with and without buffers once a frozen backbone is unfrozen.
        for p in decay + norm + bias:
            sgd.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return sgd
    if optimizer_type == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999), fused=fused)
    if optimizer_type == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), fused=fused)
    raise ValueError(f"OPTIMIZER_TYPE must be sgd, adam or adamw, got {optimizer_type!r}")


def lr_at(t: float, total: float, warmup: float, lr: float, min_lr: float, decay_type: str,
          warmup_start: float = 0.0, steps: int = 10) -> float:
    """Learning rate at training time t (in epochs, fractional): linear warmup, then cosine or step decay to min_lr."""
    if t < warmup:
        return warmup_start + (lr - warmup_start) * t / warmup
    p = min(max((t - warmup) / max(total - warmup, 1e-9), 0.0), 1.0)
    if decay_type == "cos":
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * p))
    if decay_type == "step":
        gamma = (min_lr / lr) ** (1.0 / (steps - 1))
        return lr * gamma ** min(int(p * steps), steps - 1)
    raise ValueError(f"LR_DECAY_TYPE must be cos or step, got {decay_type!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float, warmup_frac: float, warmup_bias_lr: float,
           momentum: float, warmup_momentum: float) -> None:
    """Set every group's lr; while warming up (warmup_frac < 1) SGD biases start high and SGD momentum ramps up.

    lr is the already warmed-up rate; for SGD the bias lr is warmup_bias_lr * (1 - f) + lr and the momentum goes
    from warmup_momentum to momentum (Ultralytics' warmup figures). Adam groups get lr only.
    """
    f = min(max(warmup_frac, 0.0), 1.0)
    sgd = isinstance(optimizer, torch.optim.SGD)
    for g in optimizer.param_groups:
        g["lr"] = warmup_bias_lr * (1.0 - f) + lr if sgd and g.get("name") == "bias" else lr
        if sgd:
            g["momentum"] = warmup_momentum + (momentum - warmup_momentum) * f

