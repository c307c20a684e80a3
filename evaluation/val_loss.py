"""The validation loss: the detection loss of a model whose BatchNorm uses its running statistics."""
import contextlib
from typing import Callable, Iterator, Optional

import torch
from torch import nn
from tqdm import tqdm

from nets.loss import LOSS_PARTS, weighted_parts
from utils.device_batches import device_batches


@contextlib.contextmanager
def raw_outputs(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put model in train mode (raw head maps for the loss) with BatchNorm in eval mode."""
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_loss(model: nn.Module, criterion: Callable, loader: torch.utils.data.DataLoader, device: torch.device,
                  amp_dtype: Optional[torch.dtype], channels_last: bool = False, show_progress: bool = False) -> dict:
    """Mean weighted loss parts (box, cls, dfl) and their sum over loader, BatchNorm using running statistics."""
    sums, batches = torch.zeros(3, device=device), 0
    with raw_outputs(model):
        for images, targets in tqdm(device_batches(loader, device, channels_last), desc="val loss",
                                    total=len(loader), disable=not show_progress, dynamic_ncols=True, leave=False):
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                preds = model(images)
                sums += weighted_parts(criterion(preds, targets, tuple(images.shape[2:])), criterion.weight_dict)
            batches += 1
    return loss_means(sums, batches)


def loss_means(sums: torch.Tensor, batches: int) -> dict:
    """Summed weighted loss parts [3] over `batches` batches -> {box, cls, dfl: per-batch mean, loss: their sum}."""
    means = {k: v / max(batches, 1) for k, v in zip(LOSS_PARTS, sums.tolist())}
    return {**means, "loss": sum(means.values())}
