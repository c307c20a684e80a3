"""Export a FRED-YOLO checkpoint to ONNX, then check the file with onnxruntime against PyTorch.

    python export_fred.py --weights logs/fred_event/loss_.../best.pth [--format onnx] [--out FILE]
        [--imgsz 640 | --imgsz H W] [--dynamic] [--half] [--nms] [--conf 0.25] [--iou 0.7] [--max_det 300]
        [--device cpu] [--opset 17] [--phi P]

The checkpoint decides the network (YOLOv8 or YOLOv8-P2, fusion early or mid), its classes, input channels, modality
and input size (its INPUT_SHAPE; --imgsz overrides it). The file (default: the weights' path with .onnx) holds the
network with BatchNorm folded, input "images" float [B, C, H, W] 0..1, output "output" [B, 4 + nc, A] (cx, cy, w, h
pixels, sigmoid scores); --nms adds NMS to the graph: "detections" [B, max_det, 6] (x1, y1, x2, y2, score, class,
zero rows past "num_detections" [B]) at --conf, --iou, --max_det. --dynamic: any batch size (else 1). --half: fp16
(CUDA only). The checkpoint's modality, classes and settings are in the file's metadata (inference/onnx_export.py).
Then the file is run with onnxruntime on a random batch and compared to PyTorch; the last line printed is one JSON
object: file, size_mb, max_rel_diff, seconds. Exit 0, 1 (the ONNX model does not match), 2 (bad checkpoint or
argument, the message says which).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from utils.cli import fraction, int_at_least

TOLERANCE = {False: 1e-4, True: 1e-2}  # largest relative difference to PyTorch accepted, fp32 / fp16 (--half)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line (argparse exits 2 with its message for a bad one)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint of train_fred.py (best.pth / last.pth) or a state dict")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default onnx)")
    p.add_argument("--out", help="output file (default: the weights' path with .onnx)")
    p.add_argument("--imgsz", nargs="+", type=int_at_least(1), metavar="N", help="input size: one number (square) "
                   "or height width, multiples of 32 (default: the checkpoint's INPUT_SHAPE)")
    p.add_argument("--dynamic", action="store_true", help="any batch size (default: batch 1)")
    p.add_argument("--half", action="store_true", help="fp16 weights and input (needs a CUDA device)")
    p.add_argument("--nms", action="store_true", help="NMS in the graph: outputs detections [B, max_det, 6] and "
                   "num_detections [B]")
    p.add_argument("--conf", type=fraction, default=0.25, help="--nms: score threshold in [0, 1] (default 0.25); "
                   "recorded as the default of a model without NMS")
    p.add_argument("--iou", type=fraction, default=0.7, help="--nms: IoU threshold in [0, 1] (default 0.7)")
    p.add_argument("--max_det", type=int_at_least(1), default=300, help="--nms: detections kept per image "
                   "(default 300)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:1; --half needs cuda")
    p.add_argument("--opset", type=int_at_least(11), help="ONNX opset, >= 11 (default 17)")
    p.add_argument("--phi", choices=("n", "s", "m", "l", "x"), help="model size of a bare state dict that cannot be "
                   "told from its tensors (train_fred.py's checkpoints carry their own)")
    args = p.parse_args(argv)
    if args.imgsz is not None and len(args.imgsz) > 2:
        p.error(f"--imgsz takes one number (square) or two (height width), got {len(args.imgsz)}")
    return args


if __name__ == "__main__":  # --help and argument errors answer before torch loads
    parse_args(sys.argv[1:])

import torch  # noqa: E402

from evaluation.postprocess import non_max_suppression  # noqa: E402
from inference.checkpoint import CheckpointError, build_checkpoint_model, read_checkpoint  # noqa: E402
from inference.onnx_export import DEFAULT_OPSET, export_onnx  # noqa: E402
from inference.onnx_model import OnnxDetector  # noqa: E402
from nets.yolov8 import model_name  # noqa: E402


class ExportError(Exception):
    """A problem the user can fix (checkpoint, argument): printed, exit 2."""


def input_size(args: argparse.Namespace, ckpt: dict) -> tuple[int, int]:
    """(height, width): --imgsz, else the checkpoint's INPUT_SHAPE."""
    if args.imgsz:
        return (args.imgsz[0], args.imgsz[-1])
    shape = ckpt["config"].get("INPUT_SHAPE")
    if shape is None:
        raise ExportError(f"{args.weights} records no input size (a bare state dict or an older checkpoint): pass "
                          "--imgsz, e.g. --imgsz 640")
    return (int(shape[0]), int(shape[1]))


def class_names(ckpt: dict) -> list[str]:
    """The checkpoint's CLASS_NAMES for its classes; class<i> for those without a name."""
    names = [str(n) for n in ckpt["config"].get("CLASS_NAMES", [])][:ckpt["num_classes"]]
    return names + [f"class{i}" for i in range(len(names), ckpt["num_classes"])]


def relative_difference(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest |got - want| of raw outputs [B, 4 + nc, A], relative to the boxes' largest magnitude for the boxes and
    to 1 for the scores (probabilities: an untrained model's scores are all near 0, and relative to their largest a
    rounding difference would look like a mismatch)."""
    boxes = float((got[:, :4] - want[:, :4]).abs().max() / want[:, :4].abs().max().clamp(min=1e-12))
    return max(boxes, float((got[:, 4:] - want[:, 4:]).abs().max()))


def verify(model: torch.nn.Module, path: str, args: argparse.Namespace, size: tuple[int, int]) -> dict:
    """Run the ONNX file with onnxruntime and the PyTorch model on one random batch (2 images with --dynamic, else
    1): the raw outputs' relative difference, and whether the detections agree (--nms: the graph's; else our NMS on
    onnxruntime's output) in number and class."""
    device = next(model.parameters()).device
    detector = OnnxDetector(path, device, conf=args.conf, iou=args.iou, max_det=args.max_det)
    if args.half and "CUDAExecutionProvider" not in detector.session.get_providers():
        return {"max_rel_diff": None, "note": "not checked: fp16 needs onnxruntime's CUDA provider "
                                              "(pip install onnxruntime-gpu)"}
    images = torch.rand(2 if args.dynamic else 1, model.in_channels, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(images.to(device, torch.float16 if args.half else torch.float32)).float().cpu()
    ours = non_max_suppression(want, args.conf, args.iou, args.max_det)
    theirs = detector.detect(images)
    same = all(len(a) == len(b) and torch.equal(a[:, 5], b[:, 5]) for a, b in zip(ours, theirs))
    return {"max_rel_diff": relative_difference(detector.raw(images), want), "same_detections": same,
            "detections": sum(len(d) for d in ours)}


def run(args: argparse.Namespace) -> dict:
    """Export, verify, print the outcome; return the JSON line's fields and the check."""
    start = time.perf_counter()
    ckpt = read_checkpoint(args.weights, args.phi)
    size = input_size(args, ckpt)
    device = torch.device(args.device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ExportError(f"--device {args.device}: no CUDA device here; export on the CPU (--device cpu)")
    out = args.out or os.path.splitext(args.weights)[0] + ".onnx"
    model = build_checkpoint_model(args.weights, ckpt, device)
    meta = {"modality": ckpt["modality"], "fusion": ckpt["fusion"], "class_names": class_names(ckpt)}
    try:
        export_onnx(model, out, size, model.in_channels, args.dynamic, args.half, args.nms, args.conf, args.iou,
                    args.max_det, meta, args.opset or DEFAULT_OPSET)
    except ValueError as e:
        raise ExportError(str(e)) from None
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}; pass --out FILE in a writable folder") from None
    check = verify(model, out, args, size)
    name = model_name(ckpt["phi"], ckpt["arch"])
    print(f"exported {name} ({ckpt['modality'] or 'modality unknown'}"
          f"{', ' + ckpt['fusion'] + ' fusion' if ckpt['fusion'] else ''}, {ckpt['num_classes']} "
          f"class{'es' if ckpt['num_classes'] != 1 else ''}, "
          f"{model.in_channels} channels, input {size[0]}x{size[1]}, batch {'dynamic' if args.dynamic else 1}"
          f"{', fp16' if args.half else ''}{', NMS in the graph' if args.nms else ''}) to {out}")
    if check["max_rel_diff"] is None:
        print(f"onnxruntime vs PyTorch: {check['note']}")
    else:
        print(f"onnxruntime vs PyTorch on a random batch: max relative difference {check['max_rel_diff']:.2e} "
              f"(accepted <= {TOLERANCE[args.half]:.0e}); detections "
              f"{'the same' if check['same_detections'] else 'DIFFERENT'} ({check['detections']})")
    print(f"TensorRT: trtexec --onnx={out} --saveEngine={os.path.splitext(out)[0]}.engine --fp16")
    return {"file": out, "size_mb": round(os.path.getsize(out) / 1e6, 3), "max_rel_diff": check["max_rel_diff"],
            "seconds": round(time.perf_counter() - start, 2), "ok": check["max_rel_diff"] is None or (
                check["max_rel_diff"] <= TOLERANCE[args.half] and check["same_detections"])}


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 1 the ONNX model does not match PyTorch, 2 bad input)."""
    args = parse_args(argv)
    try:
        result = run(args)
    except (ExportError, CheckpointError) as e:
        print(f"export_fred.py: error: {e}", file=sys.stderr)
        return 2
    ok = result.pop("ok")
    if not ok:
        print(f"export_fred.py: error: {result['file']} does not match the PyTorch model (see above); please report "
              "it with the torch, onnx and onnxruntime versions", file=sys.stderr)
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
