"""Reading a train_fred.py checkpoint and building its network: shared by eval_fred.py and predict_fred.py."""
from __future__ import annotations

import logging

import torch

from datasets.fred_index import MODALITIES
from nets import build_model, load_weights
from nets.fusion import FUSION_KINDS, build_fusion_model, fusion_kind
from nets.weights import checkpoint_info, infer_arch, read_state_dict
from nets.yolov8 import ARCHS, model_name
from utils.checkpoint import load_checkpoint

LOGGER = logging.getLogger(__name__)


class CheckpointError(Exception):
    """A checkpoint that cannot be used (missing, not a checkpoint, does not fit): the message names the file."""


def read_checkpoint(path: str, phi: str | None = None) -> dict:
    """Weights, (phi, arch, num_classes, in_channels) and training modality (None if unknown) of a checkpoint file;
    bare state dicts are measured, and a checkpoint without "arch" is told by its tensor names (older ones)."""
    try:
        ckpt = load_checkpoint(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{e}: pass a checkpoint written by train_fred.py (e.g. "
                              "logs/fred_event/loss_<time>/best.pth)") from None
    except ValueError as e:  # "<path> is not a checkpoint: <reason>"
        raise CheckpointError(str(e)) from None
    try:
        state = read_state_dict(ckpt)
    except ValueError as e:  # "not a checkpoint: no weights found ..."
        raise CheckpointError(f"{path} is {e}") from None
    meta = {k: ckpt[k] for k in ("phi", "num_classes", "in_channels") if k in ckpt}
    if len(meta) < 3:  # a bare state dict (or an older checkpoint): measure it, --phi wins for the size
        try:
            measured = dict(zip(("phi", "num_classes", "in_channels"), checkpoint_info(state)))
        except ValueError as e:
            if phi is None:
                raise CheckpointError(f"{path}: cannot tell the model size ({e}); pass --phi") from None
            measured = {}
        meta = {**measured, **({"phi": phi} if phi else {}), **meta}
    elif phi and phi != meta["phi"]:
        LOGGER.warning("%s is a YOLOv8%s checkpoint; --phi %s is ignored", path, meta["phi"], phi)
    meta["arch"] = ckpt.get("arch") or infer_arch(state)
    if meta["arch"] not in ARCHS:
        raise CheckpointError(f"{path} records the architecture {meta['arch']!r}, which this version does not know "
                              f"({', '.join(ARCHS)}): use it with the version that trained it")
    meta["fusion"] = ckpt.get("fusion") or fusion_kind(state)
    if meta["fusion"] is not None and meta["fusion"] not in FUSION_KINDS:
        raise CheckpointError(f"{path} records the fusion kind {meta['fusion']!r}, which this version does not know "
                              f"({', '.join(FUSION_KINDS)}): use it with the version that trained it")
    config, modality = ckpt.get("config"), ckpt.get("modality")
    modality = "fusion" if meta["fusion"] else modality
    return {"state": state, "config": config if isinstance(config, dict) else {},
            "modality": modality if modality in MODALITIES else None, **meta}


def build_checkpoint_model(path: str, ckpt: dict, device: torch.device, channels_last: bool = False
                           ) -> torch.nn.Module:
    """Build the network of read_checkpoint()'s ckpt, load every tensor (anything less is a CheckpointError naming
    the file), fuse; on device, NHWC when channels_last."""
    nc = int(ckpt["num_classes"])
    with device:  # parameters made on the device: no CPU initialisation to overwrite, no copy of the model
        if ckpt.get("fusion"):
            model = build_fusion_model(ckpt["phi"], nc, ckpt["fusion"], ckpt.get("arch", "yolov8"))
        else:
            model = build_model(ckpt["phi"], nc, int(ckpt.get("in_channels", 3)), ckpt.get("arch", "yolov8"))
    try:
        report = load_weights(model, ckpt["state"])
    except ValueError as e:
        raise CheckpointError(f"{path} does not fit: {e}") from None
    if report["skipped"] or report["missing"]:
        example = (report["missing_keys"] or report["skipped_keys"])[0]
        raise CheckpointError(f"{path} does not fit {model_name(ckpt['phi'], model.arch)} ({nc} classes, "
                              f"{model.in_channels} input channels): {report['missing']} model tensors not loaded, "
                              f"{report['skipped']} checkpoint tensors unused (e.g. {example}); check --phi / the "
                              "checkpoint")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.fuse().to(memory_format=fmt)
