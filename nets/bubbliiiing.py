"""Weights of the bubbliiiing yolov8-pytorch repository (YoloBody .pth files, or its backbone-only files) -> our keys.

That repository's YOLOv8 has the same layers and shapes as ours; only the neck and head names differ, and its
backbone-only weight files name the backbone's layers without the "backbone." prefix. Its .pth files are plain
state dicts, so nets.weights.load_weights renames them on the fly.
"""
from collections.abc import Mapping

import torch

# Their module path prefix -> ours (the backbone's names are the same).
_PREFIXES = (
    ("conv3_for_upsample1.", "neck.top_down_p4."),
    ("conv3_for_upsample2.", "neck.top_down_p3."),
    ("down_sample1.", "neck.down_p3."),
    ("conv3_for_downsample1.", "neck.bottom_up_p4."),
    ("down_sample2.", "neck.down_p4."),
    ("conv3_for_downsample2.", "neck.bottom_up_p5."),
    ("cv2.", "head.box."),
    ("cv3.", "head.cls."),
    ("dfl.", "head.dfl."),
)
_BACKBONE_LAYERS = ("stem.", "dark2.", "dark3.", "dark4.", "dark5.")


def is_bubbliiiing_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a bubbliiiing YoloBody state dict, or one of its backbone-only weight files."""
    return ("conv3_for_upsample1.cv1.conv.weight" in state_dict
            or ("stem.conv.weight" in state_dict and "dark5.0.conv.weight" in state_dict))


def _map_key(key: str) -> str:
    """One bubbliiiing key ('cv3.0.2.weight', 'dark2.0.conv.weight') -> ours ('head.cls.0.2.weight', ...)."""
    if key.startswith(_BACKBONE_LAYERS):
        return "backbone." + key
    for theirs, ours in _PREFIXES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return key  # 'backbone.*' already matches


def from_bubbliiiing(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a bubbliiiing yolov8-pytorch state dict to our keys (tensors unchanged)."""
    return {_map_key(k): v for k, v in state_dict.items()}
