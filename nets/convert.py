"""Ultralytics YOLOv8 / YOLOv8-P2 / YOLO11 detection weights -> our layout (nets/yolov8.py), and a CLI to write our checkpoints.

Usage: python -m nets.convert IN OUT
  IN:  an Ultralytics checkpoint (.pt, a pickled model: needs `pip install ultralytics` at conversion time only;
       unpickling runs code, so convert only files you trust) or a saved Ultralytics state dict.
  OUT: our checkpoint {"model": state_dict, "phi": str, "num_classes": int, "in_channels": int, "arch": str},
       loadable with nets.load_weights.
"""
import argparse
import pickle
import sys
from collections.abc import Mapping

import torch

from nets.weights import checkpoint_info, infer_arch, is_ultralytics_state_dict
from nets.model import build_model
from nets.yolov8 import model_name

_BACKBONE = {
    0: "backbone.stem",
    1: "backbone.dark2.0", 2: "backbone.dark2.1",
    3: "backbone.dark3.0", 4: "backbone.dark3.1",
    5: "backbone.dark4.0", 6: "backbone.dark4.1",
    7: "backbone.dark5.0", 8: "backbone.dark5.1", 9: "backbone.dark5.2",
}
# Ultralytics yaml layer index -> our module path, per arch (upsample and concat layers are parameter-free).
_LAYER_TO_MODULE = {
    "yolov8": {  # yolov8.yaml
        **_BACKBONE,
        12: "neck.top_down_p4", 15: "neck.top_down_p3", 16: "neck.down_p3",
        18: "neck.bottom_up_p4", 19: "neck.down_p4", 21: "neck.bottom_up_p5",
        22: "head",
    },
    "yolov8-p2": {  # yolov8-p2.yaml
        **_BACKBONE,
        12: "neck.top_down_p4", 15: "neck.top_down_p3", 18: "neck.top_down_p2", 19: "neck.down_p2",
        21: "neck.bottom_up_p3", 22: "neck.down_p3", 24: "neck.bottom_up_p4", 25: "neck.down_p4",
        27: "neck.bottom_up_p5",
        28: "head",
    },
    "yolo11": {  # yolo11.yaml (nets/yolo11.py: C2PSA is the backbone's last block)
        **_BACKBONE, 10: "backbone.dark5.3",
        13: "neck.top_down_p4", 16: "neck.top_down_p3", 17: "neck.down_p3",
        19: "neck.bottom_up_p4", 20: "neck.down_p4", 22: "neck.bottom_up_p5",
        23: "head",
    },
}
_HEAD_LAYER = {"yolov8": 22, "yolov8-p2": 28, "yolo11": 23}
_HEAD_BRANCH = {"cv2": "box", "cv3": "cls", "dfl": "dfl"}


def ultralytics_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Architecture of an Ultralytics detection state dict: "yolo11" when layer 10 is attention (C2PSA), "yolov8-p2"
    when it has layer 28 (its Detect), else "yolov8"."""
    if any(k.startswith("model.10.") and ".attn." in k for k in state_dict):
        return "yolo11"
    return "yolov8-p2" if any(k.startswith("model.28.") for k in state_dict) else "yolov8"


def _map_key(key: str, arch: str) -> str:
    """One Ultralytics key ('model.22.cv2.0.0.conv.weight') -> ours ('head.box.0.0.conv.weight') for arch."""
    parts = key.split(".")
    layers = _LAYER_TO_MODULE[arch]
    if len(parts) < 3 or parts[0] != "model" or not parts[1].isdigit() or int(parts[1]) not in layers:
        raise ValueError(f"key {key!r} is not part of an Ultralytics {arch} detection model")
    layer, rest = int(parts[1]), parts[2:]
    if layer == _HEAD_LAYER[arch]:
        if rest[0] not in _HEAD_BRANCH:
            raise ValueError(f"key {key!r}: head branch {rest[0]!r} is not in a YOLOv8 / YOLO11 Detect head "
                             "(end-to-end heads, e.g. YOLO26's, are not supported)")
        rest = [_HEAD_BRANCH[rest[0]], *rest[1:]]
    return ".".join([layers[layer], *rest])


def from_ultralytics(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an Ultralytics YOLOv8, YOLOv8-P2 or YOLO11 detection state dict (model.0.conv.weight, ...) to our keys, as
    float32 (the architecture is told by ultralytics_arch)."""
    arch = ultralytics_arch(state_dict)
    return {_map_key(k, arch): v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def _ultralytics_state_dict(obj: object) -> Mapping[str, torch.Tensor]:
    """The state dict inside a loaded Ultralytics checkpoint, model or state dict (EMA weights preferred)."""
    if isinstance(obj, torch.nn.Module):
        return obj.float().state_dict()
    if isinstance(obj, Mapping):
        if is_ultralytics_state_dict(obj):
            return obj
        for key in ("ema", "model", "state_dict"):
            if obj.get(key) is not None:
                return _ultralytics_state_dict(obj[key])
    raise ValueError("no Ultralytics YOLOv8 / YOLO11 weights found (expected a model, a checkpoint dict with 'ema'/'model', "
                     "or a state dict with keys like 'model.0.conv.weight')")


def _load_any(path: str) -> object:
    """torch.load, safely when possible; pickled Ultralytics models need the full unpickler and ultralytics."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a pickled model: needs the full unpickler below
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e:
        raise RuntimeError(f"{path}: needs the module '{e.name}' to unpickle; "
                         "install it (`pip install ultralytics`) for the conversion, then run again") from e


def convert_file(src: str, dst: str) -> dict:
    """Convert an Ultralytics checkpoint or state dict file to our checkpoint at dst; returns its metadata."""
    state = from_ultralytics(_ultralytics_state_dict(_load_any(src)))
    phi, num_classes, in_channels = checkpoint_info(state)
    arch = infer_arch(state)
    model = build_model(phi, num_classes, in_channels, arch)
    model.load_state_dict(state, strict=True)  # proves the mapping is complete for this phi / nc / arch
    meta = {"phi": phi, "num_classes": num_classes, "in_channels": in_channels, "arch": arch}
    torch.save({"model": model.state_dict(), **meta}, dst)
    return {**meta, "tensors": len(state)}


def main(argv: list[str] | None = None) -> None:
    """CLI entry: python -m nets.convert IN OUT."""
    parser = argparse.ArgumentParser(prog="python -m nets.convert", description=__doc__.split("\n")[0])
    parser.add_argument("src", metavar="IN", help="Ultralytics .pt checkpoint or saved Ultralytics state dict")
    parser.add_argument("dst", metavar="OUT", help="our checkpoint to write")
    args = parser.parse_args(argv)
    info = convert_file(args.src, args.dst)
    print(f"{args.src} -> {args.dst}: {model_name(info['phi'], info['arch'])}, num_classes={info['num_classes']}, "
          f"in_channels={info['in_channels']}, {info['tensors']} tensors")


if __name__ == "__main__":
    main(sys.argv[1:])
