"""ONNX export of a FRED-YOLO network (export_fred.py): the fused model, optionally with NMS in the graph.

The graph's input is "images", float [B, C, H, W] with values 0..1 (C: 3, or 5 for fusion: RGB, ON, OFF), B fixed
at 1 or dynamic, H and W fixed. Outputs:
  without NMS  "output" [B, 4 + nc, A]: the model's eval output (cx, cy, w, h in input pixels, sigmoid class
               scores); run evaluation/postprocess.non_max_suppression on it (inference/onnx_model.py does).
  with NMS     "detections" [B, max_det, 6]: x1, y1, x2, y2 (input pixels), score, class, by decreasing score, rows
               past the image's count zero; "num_detections" [B] int64; "output" as above. The NMS is ONNX's
               NonMaxSuppression, set up to select what non_max_suppression selects (each box's best class, the
               max_nms best boxes, score > conf, class-aware IoU > iou suppressed, the max_det best kept).
Exported with PyTorch's TorchScript-based exporter (torch.onnx.export(dynamo=False)): it needs only the onnx package,
exports these static graphs in seconds, and lets the NMS be one ONNX node (NonMaxSuppressionOp.symbolic).
The model file's metadata_props (JSON strings, METADATA_KEYS) tell inference/onnx_model.py how to run it.
"""
from __future__ import annotations

import json
import os
import warnings

import torch
from torch import Tensor, nn

from evaluation.postprocess import MAX_NMS
from utils.boxes import box_cxcywh_to_xyxy

INPUT_NAME = "images"
RAW_OUTPUT = "output"
NMS_OUTPUTS = ("detections", "num_detections", RAW_OUTPUT)
DEFAULT_OPSET = 17  # NonMaxSuppression needs >= 11; 17 is read by onnxruntime >= 1.11 and TensorRT >= 8.6
METADATA_KEYS = ("modality", "fusion", "input_shape", "num_classes", "class_names", "in_channels", "arch", "phi",
                 "stride", "nms", "conf", "iou", "max_det", "dynamic", "half")


class NonMaxSuppressionOp(torch.autograd.Function):
    """ONNX NonMaxSuppression as one node of the exported graph: boxes [B, K, 4] (x1, y1, x2, y2), scores [B, nc, K]
    -> selected [S, 3] int64 (image, class, box), at most max_per_class per image and class, score > conf, IoU > iou
    suppressed. In PyTorch (what the exporter traces through) torchvision's batched_nms selects the same."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, conf: float) -> Tensor:
        """The selection in PyTorch, grouped by image and class, each group by decreasing score."""
        from torchvision.ops import batched_nms
        b, nc, k = scores.shape
        image, cls, box = torch.nonzero(scores > conf, as_tuple=True)
        kept = batched_nms(boxes[image, box], scores[image, cls, box], image * nc + cls, iou)  # by decreasing score
        group = (image * nc + cls)[kept]
        kept = kept[torch.sort(group, stable=True).indices]
        group = (image * nc + cls)[kept]
        first = torch.searchsorted(group, group, right=False)
        kept = kept[torch.arange(len(kept), device=kept.device) - first < max_per_class]
        return torch.stack((image[kept], cls[kept], box[kept]), 1)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou: float, conf: float):
        """The ONNX node (center_point_box 0: corners)."""
        def const(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))
        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.int64), const(iou, torch.float32),
                    const(conf, torch.float32))


class NmsModel(nn.Module):
    """model -> (detections [B, max_det, 6], num_detections [B], raw [B, 4 + nc, A]); see the module docstring."""

    def __init__(self, model: nn.Module, conf: float, iou: float, max_det: int, max_nms: int = MAX_NMS):
        super().__init__()
        self.model, self.conf, self.iou, self.max_det, self.max_nms = model, conf, iou, max_det, max_nms

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Detections of the images x, as evaluation/postprocess.non_max_suppression selects them, zero-padded."""
        raw = self.model(x)
        pred = raw.transpose(1, 2)  # [B, A, 4 + nc]
        nc = pred.shape[2] - 4
        scores, labels = pred[..., 4:].max(-1)  # [B, A]: each box's best class
        k = min(self.max_nms, pred.shape[1])
        scores, order = scores.topk(k, dim=1)  # [B, K]
        boxes = box_cxcywh_to_xyxy(pred[..., :4].gather(1, order.unsqueeze(-1).expand(-1, -1, 4)))
        labels = labels.gather(1, order)
        best = labels.unsqueeze(1) == torch.arange(nc, device=x.device).view(1, nc, 1)  # [B, nc, K]
        class_scores = torch.where(best, scores.unsqueeze(1), torch.full_like(best, -1.0, dtype=scores.dtype))
        selected = NonMaxSuppressionOp.apply(boxes, class_scores, self.max_det, self.iou, self.conf)
        flat = selected[:, 0] * k + selected[:, 2]
        kept = torch.zeros_like(scores).flatten().scatter(0, flat, torch.ones_like(flat, dtype=scores.dtype))
        ranked = torch.where(kept.view_as(scores) > 0, scores, torch.full_like(scores, -1.0))
        top, index = ranked.topk(min(self.max_det, k), dim=1)  # kept boxes first, by decreasing score
        valid = top > -1.0
        rows = torch.cat((boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4)), top.unsqueeze(-1),
                          labels.gather(1, index).unsqueeze(-1).to(top.dtype)), -1)
        rows = torch.where(valid.unsqueeze(-1), rows, torch.zeros_like(rows))
        rows = nn.functional.pad(rows, (0, 0, 0, self.max_det - rows.shape[1]))  # fewer boxes than max_det
        return rows, valid.sum(1), raw


def export_onnx(model: nn.Module, path: str, imgsz: tuple[int, int], in_channels: int, dynamic: bool, half: bool,
                nms: bool, conf: float, iou: float, max_det: int, meta: dict, opset: int = DEFAULT_OPSET) -> str:
    """Write model (a YoloV8, fused here, on its device) as ONNX to path for input [1 or B, in_channels, *imgsz];
    meta gives "modality", "fusion" and "class_names" (the rest of METADATA_KEYS comes from the model and the
    arguments). half: fp16 weights and input (CUDA only). ValueError for a size, device or value it cannot take."""
    try:
        import onnx
    except ImportError as e:
        raise ValueError("exporting to ONNX needs the onnx package: pip install onnx") from e
    h, w = (int(v) for v in imgsz)
    step = int(max(model.stride))
    if h <= 0 or w <= 0 or h % step or w % step:
        raise ValueError(f"the input size must be multiples of {step} (the model's largest stride), got {h}x{w}: "
                         f"pass e.g. --imgsz {max(step, round(h / step) * step)} {max(step, round(w / step) * step)}")
    if in_channels != model.in_channels:
        raise ValueError(f"the model takes {model.in_channels} input channels, not {in_channels}")
    if not (0 <= conf <= 1 and 0 <= iou <= 1) or max_det < 1:
        raise ValueError(f"conf and iou must lie in [0, 1] and max_det be >= 1, got {conf}, {iou}, {max_det}")
    device = next(model.parameters()).device
    if half and device.type != "cuda":
        raise ValueError(f"--half (fp16) export needs a CUDA device (the model is on {device}); export fp32 on the "
                         "CPU, or pass --device cuda on a machine with a GPU")
    model = model.fuse().eval()
    dtype = torch.float16 if half else torch.float32
    graph = NmsModel(model.to(dtype), conf, iou, max_det).eval() if nms else model.to(dtype)  # the exporter restores
    # the wrapper's mode on exit, model's included
    outputs = list(NMS_OUTPUTS) if nms else [RAW_OUTPUT]
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]} if dynamic else None
    images = torch.zeros(1, in_channels, h, w, dtype=dtype, device=device)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # the anchors: constants of the fixed size
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        # raised inside torchvision's batched_nms
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated.*")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # slices it leaves as they are
        torch.onnx.export(graph, (images,), path, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    proto = onnx.load(path)
    values = {"modality": meta.get("modality"), "fusion": meta.get("fusion"), "input_shape": [h, w],
              "num_classes": model.num_classes, "class_names": list(meta.get("class_names") or []),
              "in_channels": in_channels, "arch": model.arch, "phi": model.phi,
              "stride": [int(s) for s in model.stride], "nms": nms, "conf": conf, "iou": iou, "max_det": max_det,
              "dynamic": dynamic, "half": half}
    onnx.helper.set_model_props(proto, {k: json.dumps(values[k]) for k in METADATA_KEYS})
    proto.producer_name = "FRED-YOLO export_fred.py"
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path
