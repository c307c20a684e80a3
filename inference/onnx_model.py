"""A detector exported by export_fred.py, run with onnxruntime (an optional dependency, imported only here)."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from evaluation.postprocess import non_max_suppression
from inference.checkpoint import CheckpointError
from inference.onnx_export import INPUT_NAME, METADATA_KEYS, NMS_OUTPUTS, RAW_OUTPUT

LOGGER = logging.getLogger(__name__)


class OnnxDetector:
    """An ONNX model of export_fred.py on onnxruntime: detect(images) -> per image [N, 6] x1, y1, x2, y2 (input
    pixels), score, class, as the PyTorch model with evaluation/postprocess.py gives them.

    conf, iou, max_det: None for the values it was exported with. A model with NMS in its graph selected with its
    export's iou and at its conf and max_det: a higher conf and a lower max_det are applied on its output (exact),
    other values are ignored with a warning. `meta` holds the export's metadata (METADATA_KEYS)."""

    def __init__(self, path: str, device: str | torch.device = "cpu", conf: float | None = None,
                 iou: float | None = None, max_det: int | None = None):
        try:
            import onnxruntime
        except ImportError as e:
            raise CheckpointError(f"{path} is an ONNX model: running it needs onnxruntime (pip install onnxruntime, "
                                  "or onnxruntime-gpu for CUDA)") from e
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} does not exist: pass an ONNX file written by export_fred.py")
        device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            else:
                LOGGER.warning("%s: onnxruntime has no CUDA provider (pip install onnxruntime-gpu); running on the CPU",
                               path)
        try:
            self.session = onnxruntime.InferenceSession(path, providers=providers)
        except Exception as e:  # onnxruntime's own exception types: a damaged or foreign file
            raise CheckpointError(f"{path} is not an ONNX model onnxruntime can load: {e}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in METADATA_KEYS if k not in props]
        if missing:
            raise CheckpointError(f"{path} was not written by export_fred.py (its metadata lacks "
                                  f"{', '.join(missing)}): "
                                  "export the checkpoint with python export_fred.py --weights W --format onnx")
        self.path = path
        self.meta = {k: json.loads(v) for k, v in props.items() if k in METADATA_KEYS}
        graph_input = self.session.get_inputs()[0]
        self.input_dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
        self.batch = graph_input.shape[0] if isinstance(graph_input.shape[0], int) else None  # None: dynamic
        self.nms = bool(self.meta["nms"])
        self.conf = self.meta["conf"] if conf is None else conf
        self.iou = self.meta["iou"] if iou is None else iou
        self.max_det = self.meta["max_det"] if max_det is None else max_det
        if self.nms:
            self._check_nms_settings()

    def _check_nms_settings(self) -> None:
        """Warn about the asked settings the graph's NMS cannot give, and use the graph's instead."""
        exported = {k: self.meta[k] for k in ("conf", "iou", "max_det")}
        for name, asked, ok in (("conf", self.conf, self.conf >= exported["conf"]),
                                ("iou", self.iou, self.iou == exported["iou"]),
                                ("max_det", self.max_det, self.max_det <= exported["max_det"])):
            if not ok:
                LOGGER.warning("%s has NMS in its graph, exported with --%s %s: %s %s cannot be applied (export "
                               "again with it, or without --nms)", self.path, name, exported[name], name, asked)
                setattr(self, name, exported[name])

    def _check(self, images: torch.Tensor) -> None:
        """ValueError naming the file unless images are [B, in_channels, *input_shape]."""
        h, w = self.meta["input_shape"]
        if images.ndim != 4 or images.shape[1] != self.meta["in_channels"]:
            raise ValueError(f"{self.path} takes images [B, {self.meta['in_channels']}, {h}, {w}] "
                             f"({self.meta['in_channels']} channels), got {list(images.shape)}")
        if tuple(images.shape[2:]) != (h, w):
            raise ValueError(f"{self.path} was exported for {h}x{w} input (height x width), got "
                             f"{images.shape[2]}x{images.shape[3]}: resize/letterbox to {h}x{w}, or export again with "
                             f"--imgsz {images.shape[2]} {images.shape[3]}")

    def _run(self, images: torch.Tensor, outputs: list[str]) -> list[np.ndarray]:
        """The graph's outputs for images [B, C, H, W] (run in chunks of its batch size when that is fixed)."""
        self._check(images)
        array = images.detach().to("cpu", torch.float32).numpy().astype(self.input_dtype, copy=False)
        step = self.batch or len(array)
        parts = []
        for first in range(0, len(array), step):
            chunk = array[first:first + step]
            padded = np.concatenate((chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)))
            parts.append([out[:len(chunk)] for out in self.session.run(outputs, {INPUT_NAME: padded})])
        return [np.concatenate(p) for p in zip(*parts)]

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """The model's decoded output [B, 4 + nc, A] (cx, cy, w, h pixels, sigmoid scores), float32 on the CPU."""
        return torch.from_numpy(self._run(images, [RAW_OUTPUT])[0]).float()

    def detect(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images float [B, C, H, W], 0..1 -> B tensors [N, 6] (x1, y1, x2, y2 input pixels, score, class) by
        decreasing score, float32 on the CPU."""
        if not self.nms:
            return non_max_suppression(self.raw(images), self.conf, self.iou, self.max_det)
        detections, counts = self._run(images, list(NMS_OUTPUTS[:2]))
        rows = [torch.from_numpy(d[:n]).float() for d, n in zip(detections, counts)]
        return [r[r[:, 4] > self.conf][:self.max_det] for r in rows]
