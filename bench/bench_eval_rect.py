"""Square against rectangular evaluation (EVAL_RECT) of one checkpoint: eval-loop img/s, mAP50 and mAP50:95.

    python bench/bench_eval_rect.py --quick             # CPU: --demo's sample and recipe (phi n at 256, 30 epochs)
    python bench/bench_eval_rect.py --device cuda --input 640 --phi s         # GPU: 1280x720 frames, 30 epochs
    python bench/bench_eval_rect.py --device cuda --input 1280 --phi s
    python bench/bench_eval_rect.py --weights best.pth --data DIR [--input 640]   # a checkpoint of yours

Data: a FRED-shaped sample of tools.synthetic in --data (generated when the folder is absent or empty, used as it is
otherwise), split by sequence with --split (default random:0.5:0). Model: --weights, else a short from-scratch run of
train_fred.py on that sample (square validation, mAP at its last epoch; its best.pth). The checkpoint is then
evaluated the product's way (eval_fred.py's checkpoint loading and config; build_fred's frame cache, val input shape,
dataset and loader; evaluation.evaluator.evaluate) with EVAL_RECT False and True: one warm-up pass each (cuDNN
picks its kernels per shape), then --repeats timed passes, the two interleaved. Per shape: the input (w x h), loop
img/s (wall time of evaluate(): loading, forward, NMS, COCO metrics; median), model img/s (forward + NMS + results
to the host: evaluate()'s ms_per_image; median), mAP50 and mAP50:95 (the same in every pass). JSON in --out.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import build_fred  # noqa: E402
import eval_fred  # noqa: E402
from evaluation.evaluator import evaluate  # noqa: E402
from tools.synthetic import generate_fred  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# train_fred.py --demo's CPU sample and schedule (8 sequences x 30 frames at 640x360, YOLOv8n at 256, 30 epochs:
# mAP50 about 0.7 on 2 held-out sequences); fewer frames or epochs leave mAP at 0 there (drones of 2-11 px at 256)
QUICK = {"size": [360, 640], "sequences": 8, "frames": 30, "split": "random:0.25:0", "input": 256, "phi": "n",
         "epochs": 30, "batch": 8, "repeats": 3, "eval_batch": 16, "workers": 0, "device": "cpu"}


def parse_args() -> argparse.Namespace:
    """Command line; --quick fills in the CPU settings of QUICK for what is not given."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU sizes: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    p.add_argument("--data", help="FRED-shaped root (default data/bench_eval_rect_<w>x<h>)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="generated frame size (default 720 1280)")
    p.add_argument("--sequences", type=int, help="generated sequences (default 8)")
    p.add_argument("--frames", type=int, help="generated frames per sequence (default 60)")
    p.add_argument("--modality", choices=("rgb", "event"), default="event")
    p.add_argument("--split", help="train/val split of the data (default random:0.5:0)")
    p.add_argument("--input", type=int, help="square INPUT_SHAPE side, px (default 640; with --weights: the "
                   "checkpoint's)")
    p.add_argument("--phi", help="model size to train (default s)")
    p.add_argument("--epochs", type=int, help="training epochs from scratch (default 30)")
    p.add_argument("--batch", type=int, help="training batch (default 16)")
    p.add_argument("--weights", help="evaluate this checkpoint instead of training one")
    p.add_argument("--repeats", type=int, help="timed passes per shape (default 5)")
    p.add_argument("--eval_batch", type=int, help="evaluation batch (default 32)")
    p.add_argument("--workers", type=int, help="evaluation loader processes (default 4)")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--out", default="logs/bench_eval_rect", help="folder of the run and the JSON result")
    a = p.parse_args()
    defaults = {"size": [720, 1280], "sequences": 8, "frames": 60, "split": "random:0.5:0",
                "input": None if a.weights else 640, "phi": "s", "epochs": 30, "batch": 16, "repeats": 5,
                "eval_batch": 32, "workers": 4,
                "device": "cuda" if torch.cuda.is_available() else "cpu"}
    for key, value in {**defaults, **(QUICK if a.quick else {})}.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.data = a.data or os.path.join("data", f"bench_eval_rect_{a.size[1]}x{a.size[0]}")
    return a


def ensure_data(a: argparse.Namespace) -> None:
    """Generate the sample in a.data unless it holds something already."""
    if os.path.isdir(a.data) and os.listdir(a.data):
        print(f"data: {a.data} (existing)", flush=True)
        return
    start = time.perf_counter()
    generate_fred(a.data, sequences=a.sequences, frames=a.frames, seed=0, size=tuple(a.size),
                  workers=min(8, os.cpu_count() or 1))
    print(f"data: {a.data}: {a.sequences} sequences x {a.frames} frames at {a.size[1]}x{a.size[0]} generated in "
          f"{time.perf_counter() - start:.0f} s", flush=True)


def train(a: argparse.Namespace) -> str:
    """A short from-scratch train_fred.py run on the sample (--demo's recipe: AdamW, no frozen phase); its best.pth."""
    lr = 8e-3 if a.phi == "n" else 4e-3
    sets = [f"INPUT_SHAPE=[{a.input},{a.input}]", "FREEZE_TRAIN=False", f"UNFREEZE_EPOCH={a.epochs}",
            f"UNFREEZE_BATCH_SIZE={a.batch}", "OPTIMIZER_TYPE='adamw'", f"INIT_LR={lr}", f"MIN_LR={lr / 100}",
            "WARMUP_EPOCHS=1", "WARMUP_MIN_ITERS=20", f"EVAL_PERIOD={a.epochs}", f"SAVE_PERIOD={a.epochs}",
            f"NUM_WORKERS={min(8, os.cpu_count() or 1)}", f"EVAL_WORKERS={a.workers}", "EVAL_RECT=False"]
    cmd = [sys.executable, os.path.join(ROOT, "train_fred.py"), "--modality", a.modality, "--data_root", a.data,
           "--split", a.split, "--phi", a.phi, "--device", a.device, "--save_dir", os.path.join(a.out, "runs"),
           "--set", *sets]
    print("training:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"bench_eval_rect.py: training failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"trained in {time.perf_counter() - start:.0f} s: mAP50 {result['best_mAP50']:.4f} (square)", flush=True)
    return os.path.join(result["run_dir"], "best.pth")


def measure(a: argparse.Namespace, weights: str) -> dict:
    """Square and rect evaluation of weights, interleaved: {"square"|"rect": figures}."""
    ckpt = eval_fred.read_checkpoint(weights, None)
    argv = ["--weights", weights, "--data_root", a.data, "--split", a.split, "--batch", str(a.eval_batch),
            "--workers", str(a.workers)] + (["--set", f"INPUT_SHAPE=[{a.input},{a.input}]"] if a.input else [])
    cfg = eval_fred.eval_config(ckpt["config"], eval_fred.parse_args(argv))
    device = torch.device(a.device)
    frames = build_fred.build_index(cfg, ckpt["modality"] or a.modality, val_only=True).val
    cache = build_fred.build_frame_cache(cfg, frames, "val")
    model = eval_fred.build_checkpoint_model(weights, ckpt, cfg["NUM_CLASSES"], device,
                                             build_fred.channels_last(cfg, device))
    runs = {}
    for name, rect in (("square", False), ("rect", True)):
        c = {**cfg, "EVAL_RECT": rect}
        shape = build_fred.val_input_shape(c, frames, cache)
        loader = build_fred.val_loader(c, build_fred.val_dataset(frames, shape, cache), device)
        runs[name] = {"shape": shape, "loader": loader, "settings": build_fred.evaluation_settings(c, device),
                      "wall": [], "model_ms": [], "metrics": None}
    for repeat in range(a.repeats + 1):  # pass 0 warms up
        for run in runs.values():
            start = time.perf_counter()
            metrics = evaluate(model, run["loader"], frames, device, **run["settings"]).metrics
            wall = time.perf_counter() - start
            if repeat:
                run["wall"].append(wall)
                run["model_ms"].append(metrics["ms_per_image"])
            run["metrics"] = metrics
    n = len(frames)
    return {name: {"input_wh": [run["shape"][1], run["shape"][0]], "images": n,
                   "loop_img_s": n / statistics.median(run["wall"]),
                   "model_img_s": 1000.0 / statistics.median(run["model_ms"]),
                   "mAP50": run["metrics"]["mAP50"], "mAP50_95": run["metrics"]["mAP50_95"]}
            for name, run in runs.items()}


def main() -> None:
    """Data, checkpoint, the two evaluations; print the table and write the JSON."""
    a = parse_args()
    os.makedirs(a.out, exist_ok=True)
    ensure_data(a)
    weights = a.weights or train(a)
    figures = measure(a, weights)
    device = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"\n{weights} on {figures['square']['images']} val frames, {device}, torch {torch.__version__}")
    print(f"{'eval':<7} {'input':>10} {'pixels':>7} {'loop img/s':>11} {'model img/s':>12} {'mAP50':>7} "
          f"{'mAP50:95':>9}")
    full = figures["square"]["input_wh"][0] * figures["square"]["input_wh"][1]
    for name, f in figures.items():
        w, h = f["input_wh"]
        print(f"{name:<7} {w:>5}x{h:<4} {w * h / full:7.0%} {f['loop_img_s']:11.1f} {f['model_img_s']:12.1f} "
              f"{f['mAP50']:7.4f} {f['mAP50_95']:9.4f}")
    sq, rc = figures["square"], figures["rect"]
    print(f"rect / square: loop x{rc['loop_img_s'] / sq['loop_img_s']:.2f}, "
          f"model x{rc['model_img_s'] / sq['model_img_s']:.2f}; mAP50 {rc['mAP50'] - sq['mAP50']:+.4f}, "
          f"mAP50:95 {rc['mAP50_95'] - sq['mAP50_95']:+.4f}")
    path = os.path.join(a.out, "bench_eval_rect.json")
    with open(path, "w") as f:
        json.dump({"weights": weights, "device": device, "args": vars(a), **figures}, f, indent=1)
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
