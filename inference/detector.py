"""Detectors: a trained network behind one call, images in, boxes out, whatever runs it (PyTorch or ONNX).

A Detector takes float images [B, C, H, W] in 0..1 on its device (H and W multiples of 32; C: meta["in_channels"],
RGB order, then the event planes ON, OFF for fusion) and returns per image a tensor [N, 6]: x1, y1, x2, y2 (input
pixels), score, class, by decreasing score, after the one NMS of evaluation/postprocess.py with the conf, iou and
max_det it was built with.
"""
from __future__ import annotations

import logging
import os
from typing import Protocol

import numpy as np
import torch

from evaluation.postprocess import non_max_suppression
from inference.checkpoint import CheckpointError, build_checkpoint_model, read_checkpoint
from speed.cuda_graph import GraphedFrameForward

LOGGER = logging.getLogger(__name__)

ONNX_MISSING = "ONNX support: export_fred.py / inference/onnx_model.py missing"
DEFAULT_INPUT_SHAPE = [640, 640]  # for a bare state dict, which records no input size


class Detector(Protocol):
    """What predict_fred.py runs: meta describes the network (see TorchDetector.meta); detect() finds boxes."""

    meta: dict

    def detect(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per image of float [B, C, H, W] in 0..1: [N, 6] x1, y1, x2, y2 (input pixels), score, class."""
        ...


def frames_to_input(frames: list[np.ndarray], device: torch.device | str) -> torch.Tensor:
    """uint8 letterboxed frames [H, W, C] of one shape -> a Detector's input: float [B, C, H, W] in 0..1 on device."""
    return torch.from_numpy(np.stack(frames)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


class TorchDetector:
    """A train_fred.py checkpoint (or a bare state dict) as a Detector: fused BatchNorm, fp16 and channels_last on
    CUDA; detect_frames() runs the network from a CUDA graph there (speed/cuda_graph.py)."""

    def __init__(self, path: str, device: torch.device | str = "cpu", conf: float = 0.25, iou: float = 0.7,
                 max_det: int = 300, half: bool | None = None, phi: str | None = None, cuda_graph: bool = True):
        """Read and build the checkpoint at path on device (CheckpointError naming the file when it cannot be used);
        half: fp16 weights and inputs (default: on CUDA; never on the CPU); cuda_graph: detect_frames() replays the
        network from a CUDA graph on CUDA (eager where capture fails, with a warning)."""
        ckpt = read_checkpoint(path, phi)
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.half = cuda if half is None else bool(half) and cuda
        self.channels_last = cuda
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        self.model = build_checkpoint_model(path, ckpt, self.device, self.channels_last).eval()
        if self.half:
            self.model.half()
        config, nc = ckpt["config"], int(ckpt["num_classes"])
        names = [str(n) for n in config.get("CLASS_NAMES", [])][:nc]
        self.meta = {"modality": ckpt["modality"], "fusion": ckpt["fusion"],
                     "input_shape": [int(v) for v in config.get("INPUT_SHAPE", DEFAULT_INPUT_SHAPE)],
                     "num_classes": nc, "class_names": names + [f"class{i}" for i in range(len(names), nc)],
                     "in_channels": int(self.model.in_channels), "arch": ckpt["arch"], "phi": ckpt["phi"]}
        self.config = config  # what the checkpoint was trained with (RGB_IMAGE_DIR, FUSION_PAIR_TOLERANCE, ...)
        self._graphed = GraphedFrameForward(self.model, self.device, self.half) if cuda and cuda_graph else None

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Per image of float [B, C, H, W] in 0..1 on self.device: [N, 6] x1, y1, x2, y2 (input pixels), score,
        class (float32)."""
        x = images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        return self._select(self.model(x.half() if self.half else x.float()))

    def _select(self, preds: torch.Tensor) -> list[torch.Tensor]:
        """The network's output [B, 4 + nc, A] -> per image [N, 6] after NMS with this detector's settings."""
        return non_max_suppression(preds.float(), conf_thres=self.conf, iou_thres=self.iou, max_det=self.max_det)

    def warm_up(self, shape: tuple[int, ...], batch: int) -> None:
        """Capture the CUDA graph of detect_frames for frames of shape (H, W, C) in batches of `batch` now (on CUDA;
        nothing elsewhere), so that the first batch does not wait for it; where capture fails, run eagerly."""
        if self._graphed is not None:
            try:
                self._graphed.capture((batch, *shape))
            except RuntimeError as e:  # a layer or driver that capture does not support
                LOGGER.warning("CUDA graph capture failed (%s); predicting without a graph", e)
                self._graphed = None

    def detect_frames(self, frames: list[np.ndarray], batch: int) -> list[torch.Tensor]:
        """detect() of uint8 letterboxed frames [H, W, C] of one shape (RGB order; fused: RGB, ON, OFF); on CUDA
        from a CUDA graph for batches of `batch` (a shorter last batch is padded to it)."""
        batch = max(batch, len(frames))
        self.warm_up(frames[0].shape, batch)
        if self._graphed is None:
            return self.detect(frames_to_input(frames, self.device))
        return self._select(self._graphed(frames, batch)[:len(frames)])


def load_detector(path: str, device: torch.device | str = "cpu", conf: float = 0.25, iou: float = 0.7,
                  max_det: int = 300, half: bool | None = None) -> Detector:
    """The Detector of a weights file: an ONNX model (.onnx, inference/onnx_model.py, onnxruntime) or a PyTorch
    checkpoint (TorchDetector); CheckpointError naming the file when it cannot be used."""
    if path.lower().endswith(".onnx"):
        if not os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "onnx_model.py")):
            raise CheckpointError(f"{path}: {ONNX_MISSING}")
        from inference.onnx_model import OnnxDetector
        return OnnxDetector(path, device, conf, iou, max_det)
    return TorchDetector(path, device, conf, iou, max_det, half)
