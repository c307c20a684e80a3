"""Loading checkpoints into a YoloV8 by name and shape, with a report, and telling a checkpoint's size (phi)."""
import logging
import os
from collections import Counter
from collections.abc import Mapping

import torch
from torch import nn

from nets.bubbliiiing import from_bubbliiiing, is_bubbliiiing_state_dict
from nets import yolo11
from nets.yolov8 import SCALES, model_name, scaled_depth, scaled_width
from utils.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
_STEM = "backbone.stem.conv.weight"
_P5 = "backbone.dark5.0.conv.weight"
_CLS_OUT = "head.cls.0.2.weight"


def is_ultralytics_state_dict(state_dict: Mapping) -> bool:
    """True for a state dict in Ultralytics' layout (keys 'model.0.conv.weight', ...)."""
    return "model.0.conv.weight" in state_dict


def _is_state_dict(obj: object) -> bool:
    """True for a non-empty mapping of names to tensors."""
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(src: str | os.PathLike | Mapping) -> dict[str, torch.Tensor]:
    """The weights in src: our checkpoint {"model": ..., "phi": ...}, a dict with "model"/"ema", a plain
    state dict, or a path to any of these. Wrapper prefixes (DDP 'module.', compile '_orig_mod.') are removed, and
    bubbliiiing yolov8-pytorch names (nets/bubbliiiing.py) are renamed to ours."""
    is_path = isinstance(src, (str, os.PathLike))
    obj = load_checkpoint(os.fspath(src)) if is_path else src  # FileNotFoundError / ValueError saying why
    what = f"{os.fspath(src)} is not a checkpoint" if is_path else "not a checkpoint"
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in ("model", "ema", "state_dict") if _is_state_dict(obj.get(k))), None)
        if inner is None:
            raise ValueError(f"{what}: no weights found (keys: {sorted(map(str, obj))[:8]}); expected a state dict "
                             "or a dict with 'model'")
        obj = inner
    if not _is_state_dict(obj):
        raise ValueError(f"{what}: it holds a {type(obj).__name__}, not a state dict")
    state = {}
    for k, v in obj.items():
        for prefix in _WRAPPER_PREFIXES:
            k = k.removeprefix(prefix)
        state[k] = v
    if is_bubbliiiing_state_dict(state):
        logger.info("weights in the bubbliiiing yolov8-pytorch layout: renamed to ours")
        state = from_bubbliiiing(state)
    return state


def infer_phi(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Size (n/s/m/l/x) of a state dict in our layout, from its stem and P5 widths and P3 block depth, with the scales
    of its architecture (infer_arch)."""
    prefix = _backbone(state_dict)
    stem_key, p5_key = _STEM.replace("backbone.", prefix, 1), _P5.replace("backbone.", prefix, 1)
    if stem_key not in state_dict or p5_key not in state_dict:
        raise ValueError(f"not a YOLOv8 state dict in our layout (no {_STEM!r} / {_P5!r})")
    stem, p5 = state_dict[stem_key].shape[0], state_dict[p5_key].shape[0]
    bottlenecks = f"{prefix}dark3.1.m."
    depth = len({k[len(bottlenecks):].split(".")[0] for k in state_dict if k.startswith(bottlenecks)})
    arch = infer_arch(state_dict)
    scales, repeats = (yolo11.SCALES, 2) if arch == "yolo11" else (SCALES, 6)  # the P3 block's nominal repeats
    for phi in scales:
        if (stem, p5, depth) == (scaled_width(64, phi, scales), scaled_width(1024, phi, scales),
                                 scaled_depth(repeats, phi, scales)):
            return phi
    raise ValueError(f"state dict matches no {arch} size: stem {stem} channels, P5 {p5} channels, "
                     f"{depth} blocks in the P3 C2f / C3k2")


def _backbone(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Key prefix of the (first) backbone: "backbone." or, in a mid-fusion network, "backbone.rgb."."""
    return "backbone.rgb." if "backbone.rgb.stem.conv.weight" in state_dict else "backbone."


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Architecture (nets.yolov8.ARCHS) of a state dict in our layout: "yolo11" when its backbone has attention
    (C2PSA), "yolov8-p2" when its neck has the P2 level, else "yolov8"."""
    if any(k.startswith("backbone.") and ".attn.qkv." in k for k in state_dict):
        return "yolo11"
    return "yolov8-p2" if any(k.startswith("neck.top_down_p2.") for k in state_dict) else "yolov8"


def checkpoint_info(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, int, int]:
    """(phi, num_classes, in_channels) of a state dict in our layout (a mid-fusion network's: both stems')."""
    phi = infer_phi(state_dict)
    if _CLS_OUT not in state_dict:
        raise ValueError(f"not a YOLOv8 state dict in our layout (no {_CLS_OUT!r})")
    stems = [v.shape[1] for k, v in state_dict.items() if k.endswith("stem.conv.weight") and k.startswith("backbone.")]
    return phi, state_dict[_CLS_OUT].shape[0], sum(stems)


def tensors_to_device(tensors: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors on device through one byte buffer and one copy (not one transfer per tensor)."""
    flat = {k: v.detach().contiguous().reshape(-1).view(torch.uint8) for k, v in tensors.items()}
    starts, total = {}, 0
    for k, b in flat.items():
        starts[k] = total
        total += -(-len(b) // 16) * 16  # 16-byte aligned: each part can be viewed as its dtype again
    host = torch.empty(total, dtype=torch.uint8)  # pageable: pinned blocks would stay cached by torch for good
    for k, b in flat.items():
        host[starts[k]:starts[k] + len(b)].copy_(b)
    moved = host.to(device)
    return {k: moved[starts[k]:starts[k] + len(flat[k])].view(v.dtype).view(v.shape) for k, v in tensors.items()}


def _skip_reason(key: str, own: Mapping[str, torch.Tensor]) -> str:
    """Why a checkpoint tensor was not loaded, for the report."""
    if key not in own:
        return "name not in model"
    if key.startswith("head.cls."):
        return "head classes"
    if key == _STEM:
        return "input channels"
    return "other shape mismatch"


def load_weights(model: nn.Module, src: str | os.PathLike | Mapping) -> dict:
    """Load the tensors of src (see read_state_dict) whose names and shapes match model's; the rest keep their values.

    Returns {"loaded", "skipped", "missing", "total"} (counts: loaded model tensors, checkpoint tensors not loaded,
    model tensors not loaded, model tensors) plus "skipped_keys" and "missing_keys".
    Raises ValueError, naming the size the checkpoint looks like, when less than half of the model's tensors load
    (of the model's parts the checkpoint has: a backbone-only file is measured against the backbone).
    """
    state = read_state_dict(src)
    if is_ultralytics_state_dict(state):
        raise ValueError("these are Ultralytics weights (keys 'model.0...'); convert them first: "
                         "python -m nets.convert IN OUT, or nets.convert.from_ultralytics(state_dict)")
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    skipped = [k for k in state if k not in matched]
    missing = [k for k in own if k not in matched]
    parts = {k.split(".")[0] for k in state}
    if len(matched) < 0.5 * sum(k.split(".")[0] in parts for k in own):
        try:
            phi, nc, in_ch = checkpoint_info(state)
            looks = f"it looks like {model_name(phi, infer_arch(state))} (num_classes={nc}, in_channels={in_ch})"
        except ValueError as e:
            looks = f"it does not look like a YOLOv8 checkpoint ({e})"
        name = model_name(getattr(model, "phi", "?"), getattr(model, "arch", "yolov8"))
        what = (f"{name} (num_classes={getattr(model, 'num_classes', '?')}, "
                f"in_channels={getattr(model, 'in_channels', '?')})")
        raise ValueError(f"checkpoint matches only {len(matched)}/{len(own)} tensors of the model, a {what}: {looks}; "
                         "build the model with the checkpoint's phi and arch")
    device = next(iter(own.values())).device
    if device.type == "cuda":
        matched.update(tensors_to_device({k: v for k, v in matched.items() if v.device != device}, device))
    model.load_state_dict(matched, strict=False)
    reasons = Counter(_skip_reason(k, own) for k in skipped)
    detail = f" ({', '.join(f'{r}: {n}' for r, n in reasons.items())})" if reasons else ""
    logger.info("loaded %d/%d tensors; skipped %d%s", len(matched), len(own), len(skipped), detail)
    return {"loaded": len(matched), "skipped": len(skipped), "missing": len(missing), "total": len(own),
            "skipped_keys": skipped, "missing_keys": missing}
