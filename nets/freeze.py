"""Freezing the backbone for the first training phase (transfer learning from pretrained weights)."""
from torch import nn

from nets.yolov8 import Conv


def freeze_backbone(model: nn.Module, frozen: bool) -> None:
    """Freeze (frozen=True) or unfreeze the backbone of a YoloV8 (or a DDP/compile wrapper around one).

    The backbone is the yaml's backbone section: layers 0-9 of yolov8.yaml (through SPPF, Ultralytics' freeze=10),
    layers 0-10 of yolo11.yaml (through C2PSA: Ultralytics' freeze=11; its freeze=10 leaves C2PSA trainable).
    Frozen: backbone parameters get requires_grad=False and its BatchNorm layers stay in eval mode (running
    statistics fixed), also across later model.train() calls. Unfreezing restores both. Other parameters
    are untouched (the fixed DFL projection stays non-trainable).
    While frozen, every backbone Conv runs as one convolution with its BatchNorm folded in (Conv.fold_bn: weights
    and statistics of this call, outside state_dict); a Conv whose parameters are later moved (.to, .half,
    channels_last, a deep copy such as the EMA's) or rewritten in place (load_state_dict, an optimiser step, an EMA
    update) falls back to conv + BatchNorm, so call this again after such a change to fold anew (a write through
    .data, e.g. utils.dist.broadcast_state or DDP's wrapping, needs the call too). Unfreezing drops the folded tensors.
    Note for DDP: change requires_grad before wrapping the model, or re-wrap after the change.
    """
    net = model
    while not hasattr(net, "backbone_frozen"):
        if not hasattr(net, "module") and not hasattr(net, "_orig_mod"):
            raise TypeError(f"{type(model).__name__} is not a YoloV8 (no backbone_frozen attribute)")
        net = net.module if hasattr(net, "module") else net._orig_mod
    net.backbone.requires_grad_(not frozen)
    net.backbone_frozen = frozen
    net.train(net.training)  # re-applies (or lifts) eval mode on the backbone BatchNorm layers
    for m in net.backbone.modules():
        if isinstance(m, Conv):
            m.fold_bn(frozen)
