"""Evaluate FRED-YOLO checkpoints on the val split of FRED with pycocotools' COCO metrics.

    python eval_fred.py --weights logs/fred_event/loss_.../best.pth [more.pth ...] [--modality rgb|event]
        [--allow_modality_mismatch] [--data_root DIR] [--split S] [--conf C] [--iou I] [--max_det N] [--batch B]
        [--device D] [--phi P] [--rect | --no_rect] [--save_json DIR] [--plots] [--per_sequence] [--conditions FILE]
        [--workers N]
        [--set KEY=VALUE ...]

--modality defaults to the one the checkpoints were trained on; a checkpoint trained on the other modality is
refused unless --allow_modality_mismatch. What the first checkpoint was trained with that evaluation depends on
(data root, split, input shape, rectangular or square evaluation, classes, AMP, thresholds: FROM_CHECKPOINT) comes
from it; the rest from config_fred.py; --set and the flags override both. The evaluator is
evaluation/evaluator.evaluate(), the same function train_fred.py calls every EVAL_PERIOD epochs, so both print
the same number for the same checkpoint, data and settings. Output: a table with one row per checkpoint, then one
final line of JSON for the last checkpoint: mAP50, mAP50_95, mAP75, AP_small, AP_medium, AP_large, images,
ms_per_image, with --per_sequence per_sequence, and per_condition when the frames' conditions are known (a generated
FRED-hard set's manifest, or --conditions FILE): a table and {name: {mAP50, mAP50_95, AP_small, images, boxes}}
(evaluation/breakdown.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import config_fred
from utils.cli import fraction, int_at_least
from utils.config import apply_overrides, config_dict

LOGGER = logging.getLogger("eval_fred")
JSON_KEYS = ("mAP50", "mAP50_95", "mAP75", "AP_small", "AP_medium", "AP_large", "images", "ms_per_image")
BREAKDOWN_KEYS = ("per_sequence", "per_condition")  # in the JSON line when computed (evaluation/breakdown.py)
# config keys a train_fred.py checkpoint records that decide its evaluation: taken from it unless --set or a flag says
# otherwise, so that eval_fred.py on a run's best.pth prints the number the run printed
FROM_CHECKPOINT = ("DATA_ROOT", "SPLIT", "VAL_FRAME_STRIDE", "RGB_IMAGE_DIR", "NUM_CLASSES", "CLASS_NAMES",
                   "STRICT_LABELS", "INPUT_SHAPE", "EVAL_RECT", "FP16", "AMP_DTYPE", "CONFIDENCE", "NMS_IOU", "MAX_DET")
PLOT_SCORE = 0.25  # detections drawn in samples.png score at least this


class EvalError(Exception):
    """A problem the user can fix (missing file, checkpoint that does not fit, bad setting): printed, exit 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line; unset options fall back to config_fred.py (after --set)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", choices=("rgb", "event", "fusion"), help="which FRED images to evaluate on "
                   "(default: the one the checkpoints were trained on)")
    p.add_argument("--allow_modality_mismatch", action="store_true", help="evaluate checkpoints trained on the other "
                   "modality (refused otherwise)")
    p.add_argument("--weights", required=True, nargs="+", help="checkpoints (train_fred.py's best.pth / last.pth, "
                   "or a state dict); one table row each")
    p.add_argument("--data_root", help="FRED root (default DATA_ROOT)")
    p.add_argument("--split", help="canonical | challenging | random:<val_fraction>:<seed> | folder (default SPLIT)")
    p.add_argument("--conf", type=fraction, help="score threshold in [0, 1] (default CONFIDENCE)")
    p.add_argument("--iou", type=fraction, help="NMS IoU threshold in [0, 1] (default NMS_IOU)")
    p.add_argument("--max_det", type=int_at_least(1), help="detections kept per image, >= 1 (default MAX_DET)")
    p.add_argument("--batch", type=int_at_least(1), help="images per batch, >= 1 (default EVAL_BATCH_SIZE)")
    p.add_argument("--workers", type=int_at_least(0), help="data loader processes, >= 0 (default EVAL_WORKERS, "
                   "capped at the CPUs)")
    p.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--phi", choices=("n", "s", "m", "l", "x"),
                   help="model size for a bare state dict (checkpoints from train_fred.py carry their own)")
    rect = p.add_mutually_exclusive_group()
    rect.add_argument("--rect", dest="rect", action="store_const", const=True, help="evaluate on a letterbox of the "
                      "frames' aspect (EVAL_RECT=True: 640x384 for 1280x720 frames at 640); default: the checkpoint's "
                      "setting, else EVAL_RECT")
    rect.add_argument("--no_rect", dest="rect", action="store_const", const=False, help="evaluate on the square "
                      "INPUT_SHAPE (EVAL_RECT=False)")
    p.add_argument("--save_json", metavar="DIR", help="write DIR/detections.json (COCO results) and "
                   "DIR/ground_truth.json (COCO dataset); with several checkpoints, DIR/<checkpoint name>/...")
    p.add_argument("--plots", action="store_true", help=f"write pr_curve.png and samples.png (detections with "
                   f"score >= {PLOT_SCORE} in green, ground truth in red) into --save_json DIR or "
                   "logs/eval_<modality>_<time>/")
    p.add_argument("--per_sequence", action="store_true", help="print mAP50 and mAP50:95 per sequence, worst first")
    p.add_argument("--conditions", metavar="FILE", help="JSON {frame stem: {condition: value}} to break mAP down by "
                   "condition (default: the per-frame conditions of a generated FRED-hard set's manifest, if any)")
    p.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override a config_fred.py key with a Python literal, e.g. --set \"INPUT_SHAPE=[320,320]\"")
    return p.parse_args(argv)


if __name__ == "__main__":  # --help, argument and --set errors answer before torch and OpenCV load (seconds)
    try:
        apply_overrides(config_dict(config_fred), parse_args(sys.argv[1:]).sets)
    except ValueError as early_error:
        print(f"eval_fred.py: error: {early_error}", file=sys.stderr)
        sys.exit(2)

import cv2  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import build_fred  # noqa: E402
from datasets.fred_index import FredDataError  # noqa: E402
from evaluation.breakdown import breakdown, format_breakdown, load_conditions  # noqa: E402
from evaluation.coco_arrays import results_array_to_dicts  # noqa: E402
from evaluation.evaluator import evaluate, per_sequence_metrics  # noqa: E402
from evaluation.plots import plot_pr_curve, plot_samples  # noqa: E402
from inference.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from inference.checkpoint import build_checkpoint_model as shared_build_model  # noqa: E402


def resolve_modality(asked: str | None, paths: list[str], checkpoints: list[dict], allow_mismatch: bool) -> str:
    """The modality to evaluate on: --modality, else the one the checkpoints were trained on (they must agree).
    A checkpoint trained on the other one is refused unless allow_mismatch."""
    trained = {path: ckpt["modality"] for path, ckpt in zip(paths, checkpoints) if ckpt["modality"]}
    if asked is None:
        if len(set(trained.values())) > 1:
            raise EvalError("the checkpoints were trained on different modalities ("
                            + ", ".join(f"{p}: {m}" for p, m in trained.items()) + "): pass --modality rgb|event "
                            "(and --allow_modality_mismatch), or evaluate them separately")
        if not trained:
            raise EvalError(f"--modality rgb|event is required: {', '.join(paths)} carries no modality (a bare state "
                            "dict or an older checkpoint)")
        asked = next(iter(trained.values()))
    for path, modality in trained.items():
        if modality != asked and "fusion" in (modality, asked):
            raise EvalError(f"{path} was trained on {modality}, not {asked}: a fusion network takes fused frames and "
                            f"a single-modality one takes one kind; evaluate with --modality {modality}")
        if modality != asked:
            if not allow_mismatch:
                raise EvalError(f"{path} was trained on {modality}, not {asked}: evaluate with --modality {modality}, "
                                f"or pass --allow_modality_mismatch to evaluate it on {asked} frames anyway")
            LOGGER.warning("%s was trained on %s; evaluating on %s (--allow_modality_mismatch)", path, modality, asked)
    for path, ckpt in zip(paths, checkpoints):
        if ckpt["modality"] is None:
            LOGGER.info("%s carries no modality (a bare state dict or an older checkpoint): evaluating on %s", path,
                        asked)
    return asked


def build_checkpoint_model(path: str, ckpt: dict, num_classes: int, device: torch.device,
                           channels_last: bool = False) -> torch.nn.Module:
    """The checkpoint's network (inference/checkpoint.py), refused when its class count is not NUM_CLASSES."""
    nc = int(ckpt.get("num_classes", num_classes))
    if nc != num_classes:
        raise EvalError(f"{path} has {nc} classes but NUM_CLASSES is {num_classes}: evaluate with "
                        f"--set NUM_CLASSES={nc} (and CLASS_NAMES) or pick a checkpoint trained on these labels")
    return shared_build_model(path, {**ckpt, "num_classes": nc}, device, channels_last)


def output_dirs(args: argparse.Namespace) -> list[str | None]:
    """Folder for each checkpoint's JSON / plots (None: nothing to write)."""
    if not (args.save_json or args.plots):
        return [None] * len(args.weights)
    base = args.save_json or os.path.join("logs", f"eval_{args.modality}_{time.strftime('%Y_%m_%d_%H_%M_%S')}")
    if len(args.weights) == 1:
        return [base]
    stems = [os.path.splitext(os.path.basename(w))[0] for w in args.weights]
    return [os.path.join(base, s if stems.count(s) == 1 else f"{k}_{s}") for k, s in enumerate(stems)]


def write_outputs(folder: str, result, frames: list, args: argparse.Namespace) -> None:
    """--save_json files and --plots pictures of one checkpoint into folder."""
    os.makedirs(folder, exist_ok=True)
    if args.save_json:
        for name, obj in (("detections.json", result.detections), ("ground_truth.json", result.ground_truth)):
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                json.dump(obj, f)
    if args.plots:
        plot_pr_curve(result.precision, os.path.join(folder, "pr_curve.png"), title=f"{args.modality} precision-recall")
        drawn = results_array_to_dicts(result.results[result.results[:, 5] >= PLOT_SCORE])  # only those are drawn
        plot_samples(frames, result.ground_truth, drawn, os.path.join(folder, "samples.png"), score_thres=PLOT_SCORE)


def format_table(rows: list[tuple[str, dict]]) -> str:
    """One line per checkpoint: name, mAP50, mAP50:95, mAP75, AP_small, ms/img."""
    width = max(10, *(len(name) for name, _ in rows))
    lines = [f"{'checkpoint':<{width}}  {'mAP50':>7}  {'mAP50:95':>8}  {'mAP75':>7}  {'AP_small':>8}  {'ms/img':>7}"]
    for name, m in rows:
        lines.append(f"{name:<{width}}  {m['mAP50']:7.4f}  {m['mAP50_95']:8.4f}  {m['mAP75']:7.4f}  "
                     f"{m['AP_small']:8.4f}  {m['ms_per_image']:7.2f}")
    return "\n".join(lines)


# the command line's flags for config keys
FLAG_KEYS = {"data_root": "DATA_ROOT", "split": "SPLIT", "conf": "CONFIDENCE", "iou": "NMS_IOU", "max_det": "MAX_DET",
             "batch": "EVAL_BATCH_SIZE", "workers": "EVAL_WORKERS", "rect": "EVAL_RECT"}


def eval_config(trained: dict, args: argparse.Namespace) -> dict:
    """config_fred.py's defaults, then the values the checkpoint was trained with that evaluation depends on
    (FROM_CHECKPOINT: data, split, input shape, classes, precision, thresholds; a key it predates: what its version
    did, build_fred.EARLIER_BEHAVIOUR), then --set, then the flags; classes without a name are called class<i>;
    checked like train_fred.py's (EvalError naming the key)."""
    cfg = config_dict(config_fred)
    recorded = {**build_fred.EARLIER_BEHAVIOUR, **trained} if trained else {}
    cfg.update({k: v for k, v in recorded.items() if k in FROM_CHECKPOINT and k in cfg})
    try:
        cfg = apply_overrides(cfg, args.sets)
        cfg.update({key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None})
        if not any(item.split("=", 1)[0].strip() == "CLASS_NAMES" for item in args.sets):  # class<i> for the unnamed
            names = list(cfg["CLASS_NAMES"])[:cfg["NUM_CLASSES"]]
            cfg["CLASS_NAMES"] = names + [f"class{i}" for i in range(len(names), cfg["NUM_CLASSES"])]
        build_fred.check_config(cfg)
    except ValueError as e:
        raise EvalError(str(e)) from None
    return cfg


def run(args: argparse.Namespace) -> dict:
    """Evaluate every checkpoint; print the table (and per-sequence tables); return the last one's metrics."""
    cv2.setNumThreads(0)  # no OpenCV thread pool: the DataLoader workers fill the cores (see train_fred.main)
    checkpoints = [read_checkpoint(path, args.phi) for path in args.weights]  # fail before the long part
    cfg = eval_config(checkpoints[0]["config"], args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.modality = resolve_modality(args.modality, args.weights, checkpoints, args.allow_modality_mismatch)
    try:
        index = build_fred.build_index(cfg, args.modality, val_only=True)
    except FredDataError as e:
        raise EvalError(str(e)) from None
    frames = index.val
    try:
        conditions = load_conditions(frames, cfg["DATA_ROOT"], args.modality, args.conditions)
    except ValueError as e:
        raise EvalError(str(e)) from None
    LOGGER.info("%s val: %d frames from %d sequences under %s", args.modality, len(frames),
                len(index.val_sequences), cfg["DATA_ROOT"])
    caches = build_fred.build_frame_caches(cfg, frames, "val")  # train_fred.py's val caches (same frames, INPUT_SHAPE)
    shape = build_fred.val_input_shape(cfg, frames, caches["frame_cache"])
    LOGGER.info("val input %dx%d (w x h)%s", shape[1], shape[0],
                " (EVAL_RECT)" if list(shape) != list(cfg["INPUT_SHAPE"]) else "")
    dataset = build_fred.val_dataset(frames, shape, **caches)
    loader = build_fred.val_loader(cfg, dataset, device, persistent=False)
    settings = build_fred.evaluation_settings(cfg, device)
    rows, per_sequence = [], []
    for path, ckpt, folder in zip(args.weights, checkpoints, output_dirs(args)):
        trained_shape = ckpt["config"].get("INPUT_SHAPE")
        if trained_shape is not None and list(trained_shape) != list(cfg["INPUT_SHAPE"]):
            LOGGER.warning("%s was trained at INPUT_SHAPE %s; evaluating at %s", path, list(trained_shape),
                           list(cfg["INPUT_SHAPE"]))
        batches = iter(loader)  # the workers start now and load while the model is built
        model = build_checkpoint_model(path, ckpt, cfg["NUM_CLASSES"], device, settings["channels_last"])
        result = evaluate(model, tqdm(batches, total=len(loader), desc=os.path.basename(path), leave=False), frames,
                          device, **settings)
        parts = breakdown(result.ground_truth, result.results, frames if args.per_sequence else None, conditions)
        rows.append((path, {**result.metrics, **parts}))
        if args.per_sequence:
            per_sequence.append((path, per_sequence_metrics(result.ground_truth, result.results, frames)))
        if folder:
            write_outputs(folder, result, frames, args)
            LOGGER.info("%s: outputs in %s", path, folder)
        del model, result
    print(format_table(rows))
    for path, seq_rows in per_sequence:
        print(f"\nper sequence, worst first ({path}); -1 = no ground truth box in the sequence")
        print(f"{'sequence':>8}  {'mAP50':>7}  {'mAP50:95':>8}  {'images':>6}")
        for sequence, m50, m50_95, n in seq_rows:
            print(f"{sequence:>8}  {m50:7.4f}  {m50_95:8.4f}  {n:6d}")
    for path, metrics in rows if conditions is not None else ():
        print(f"\nper condition ({path}); -1 = no ground truth box in those frames")
        print(format_breakdown("condition", metrics["per_condition"]))
    return rows[-1][1]


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit status (0 ok, 2 for a problem the message explains)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        metrics = run(args)
    except (EvalError, CheckpointError) as e:
        print(f"eval_fred.py: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: metrics[k] for k in JSON_KEYS + BREAKDOWN_KEYS if k in metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
