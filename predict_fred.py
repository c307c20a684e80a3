"""Run a trained FRED-YOLO detector on new footage: images, folders, globs, videos, FRED sequence folders.

    python predict_fred.py --weights W --source S [--out DIR] [--conf 0.25] [--iou 0.7] [--max_det 300]
        [--batch 16] [--device D] [--imgsz N] [--half | --no_half] [--save_video] [--save_frames] [--save_txt]
        [--save_json] [--show_fps]

W: a train_fred.py checkpoint (best.pth / last.pth; a bare state dict with --phi) or an ONNX model (.onnx, from
export_fred.py; needs onnxruntime). The checkpoint decides the architecture, classes, channels, input size and
modality; --imgsz sets the input's long side (default: the checkpoint's), the short side follows the footage's aspect
ratio (rectangular letterbox, multiples of 32). S: an image, a folder of images (natural order), a glob (quoted), a
video (OpenCV: mp4, avi, mkv, ...), or a FRED sequence folder (PADDED_RGB/ for an rgb checkpoint, Event/Frames/ for
an event one, both paired by time for a fusion one).
Outputs under --out (default logs/predict_<time>/): annotated.mp4 (--save_video; source frame rate, 30 FPS for
frames; one frame out per frame in, grey for an unreadable one), frames/<name>.jpg (--save_frames), labels/<name>.txt
(--save_txt: class cx cy w h score, normalised to the source frame), detections.json (--save_json: COCO style, bbox
x, y, w, h in source pixels), skipped.txt (unreadable frames). With no --save_* flag: the video (the annotated
frame for a single image) and detections.json. The last line printed is one JSON object: frames, detections, fps
(end to end), model_fps (device copy, network and NMS), decode_wait_s and write_wait_s (seconds the detector waited
for decoded frames and for the writer: which stage limits the run), first_batch_s (seconds until the first batch's
detections: start-up such as the CUDA graph's capture included), skipped, out, interrupted.
Exit status: 0 done, 2 a bad argument, source or checkpoint (the message names it), 130 Ctrl-C (outputs closed).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from utils.cli import fraction, int_at_least

LOGGER = logging.getLogger("predict_fred")
SHOW_EVERY_S = 1.0  # --show_fps prints at most this often


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="train_fred.py checkpoint (.pth) or ONNX model (.onnx)")
    p.add_argument("--source", required=True, help="image, folder, glob, video or FRED sequence folder")
    p.add_argument("--out", help="output folder (default logs/predict_<time>/)")
    p.add_argument("--conf", type=fraction, default=0.25, help="score threshold in [0, 1] (default 0.25)")
    p.add_argument("--iou", type=fraction, default=0.7, help="NMS IoU threshold in [0, 1] (default 0.7)")
    p.add_argument("--max_det", type=int_at_least(1), default=300, help="detections kept per frame (default 300)")
    p.add_argument("--batch", type=int_at_least(1), default=16, help="frames per batch (default 16)")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--imgsz", type=int_at_least(32), help="input long side in pixels, rounded up to a multiple of "
                   "32 (default: the checkpoint's input size)")
    p.add_argument("--half", dest="half", action="store_true", default=None, help="fp16 (default on CUDA)")
    p.add_argument("--no_half", dest="half", action="store_false", help="fp32 on CUDA too")
    p.add_argument("--phi", choices=("n", "s", "m", "l", "x"), help="model size of a bare state dict")
    p.add_argument("--save_video", action="store_true", help="write annotated.mp4")
    p.add_argument("--save_frames", action="store_true", help="write frames/<name>.jpg, annotated")
    p.add_argument("--save_txt", action="store_true", help="write labels/<name>.txt (YOLO format with score)")
    p.add_argument("--save_json", action="store_true", help="write detections.json (COCO style, source pixels)")
    p.add_argument("--show_fps", action="store_true", help="print frames and fps to stderr as it runs")
    return p.parse_args(argv)


if __name__ == "__main__":  # --help and argument errors answer before torch and OpenCV load
    parse_args(sys.argv[1:])

import torch  # noqa: E402

from inference.checkpoint import CheckpointError  # noqa: E402
from inference.detector import load_detector  # noqa: E402
from inference.pipeline import run_predictions  # noqa: E402
from inference.sources import FUSION_TOLERANCE_S, SourceError, open_source  # noqa: E402
from inference.writers import Outputs  # noqa: E402


def _summary(stats: dict, out: str, interrupted: bool) -> dict:
    """The final JSON line's object."""
    frames, seconds, model_seconds = stats["frames"], stats["seconds"], stats["model_seconds"]
    good = frames - stats["skipped"]
    return {"frames": frames, "detections": stats["detections"],
            "fps": round(frames / seconds, 2) if seconds > 0 else 0.0,
            "model_fps": round(good / model_seconds, 2) if model_seconds > 0 else 0.0,
            "decode_wait_s": round(stats.get("decode_wait_seconds", 0.0), 3),
            "write_wait_s": round(stats.get("write_wait_seconds", 0.0), 3),
            "first_batch_s": round(stats.get("first_batch_seconds", 0.0), 3),
            "skipped": stats["skipped"], "out": out, "interrupted": interrupted}


def run(args: argparse.Namespace) -> tuple[dict, bool]:
    """Predict; returns (the summary, whether Ctrl-C stopped it). Raises CheckpointError / SourceError (exit 2)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    detector = load_detector(args.weights, device, args.conf, args.iou, args.max_det, args.half)
    meta, config = detector.meta, getattr(detector, "config", {})
    source = open_source(args.source, meta["modality"], config.get("RGB_IMAGE_DIR", "PADDED_RGB"),
                         config.get("FUSION_PAIR_TOLERANCE", FUSION_TOLERANCE_S))
    if meta["in_channels"] == 5 and source.kind != "sequence":
        raise SourceError(f"{args.weights} is a fusion network (RGB + event planes): pass a FRED sequence folder "
                          f"(PADDED_RGB/ and Event/Frames/) as --source, not {args.source}")
    long_side = args.imgsz or max(meta["input_shape"])
    saves = (args.save_video, args.save_frames, args.save_txt, args.save_json)
    if not any(saves):  # the default: what a user looks at, and the detections
        saves = (source.kind != "image", source.kind == "image", False, True)
    out = args.out or os.path.join("logs", f"predict_{time.strftime('%Y_%m_%d_%H_%M_%S')}")
    outputs = Outputs(out, meta["class_names"], source.fps, *saves)
    LOGGER.info("%s (%s, %s) on %s %s at long side %d, %s; outputs in %s", args.weights, meta["modality"],
                meta["phi"], source.kind, args.source, long_side, device, out)

    shown = [0.0]

    def show(stats: dict) -> None:  # --show_fps: at most once a second
        if stats["seconds"] - shown[0] >= SHOW_EVERY_S:
            shown[0] = stats["seconds"]
            print(f"{stats['frames']} frames, {stats['frames'] / stats['seconds']:.1f} fps", file=sys.stderr)

    interrupted = False
    try:
        stats = run_predictions(detector, source, long_side, args.batch, outputs, device,
                                show if args.show_fps else None)
    except KeyboardInterrupt as e:
        stats, interrupted = getattr(e, "stats", None) or {"frames": 0, "detections": 0, "skipped": 0,
                                                           "seconds": 0.0, "model_seconds": 0.0}, True
    finally:
        outputs.close()
    if stats["skipped"]:
        LOGGER.warning("%d unreadable frames skipped: listed in %s", stats["skipped"],
                       os.path.join(out, "skipped.txt"))
    return _summary(stats, out, interrupted), interrupted


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 2 for a problem the message explains, 130 on Ctrl-C)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        summary, interrupted = run(args)
    except (CheckpointError, SourceError) as e:
        print(f"predict_fred.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the first frame (loading the model, opening the source)
        print("predict_fred.py: interrupted before any frame was written", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
