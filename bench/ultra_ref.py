"""Shared bench harness: Ultralytics YOLOv8 as the reference trainer, plus the plumbing both benches use.

Test-only code: the product never imports Ultralytics. Two halves:

1. Library (imported by bench_learning.py / bench_train.py, no Ultralytics import):
   - build_ultra_dataset(): an Ultralytics-format copy of OUR frame index (same frames on both sides):
     images/{train,val}/<seq>_<stem>.<ext> are symlinks to our images, labels/{train,val}/<seq>_<stem>.txt hold
     our parsed boxes (class 0, normalised cx cy w h), data.yaml points at them. Rebuilt only when the frames change.
   - ultra_train_args(): Ultralytics train settings equalised with our trainer's config.
   - score_ultra_predictions(): pycocotools mAP of Ultralytics' predictions.json with OUR COCO code
     (evaluation.evaluator), so both trainers are scored by the same computation.
   - ensure_generated() / write_split() (generated FRED set, reused when it matches; split folder with FRED's
     canonical test ids as val), ours_command() (train_fred.py command line), run_logged() (subprocess with a
     log file, a results.csv watcher and an optional stop condition), GpuSampler (pynvml / nvidia-smi),
     final_json_line(), print_table(), work_dir() / copy_logs() (runs outside --out's folder, text logs copied).

2. CLI, run as a subprocess so each trainer has its own process and CUDA context:
     python bench/ultra_ref.py train --data DIR/data.yaml --out R.json --epochs 10 --batch 32 --imgsz 640 ...
         [--arch yolov8|yolov8-p2|yolo11]
         [--freeze 10] [--val_every_epoch 1] [--stop_at_map50 0.9] [--val_repeats N] [--save_json 1]
     python bench/ultra_ref.py val --weights best.pt --data DIR/data.yaml --out R.json [--val_repeats 2]
     python bench/ultra_ref.py loader --data DIR/data.yaml --out R.json --batch 32 --batches 60
   `train` records per epoch the train-loop seconds, img/s and peak CUDA memory (callbacks), the val metrics
   with wall-clock stamps; then optionally times val-only passes of best.pt and writes its predictions (COCO json).

Offline / environment patches (harness only):
   - polars is not installed on the GPU host: BaseTrainer.read_results_csv (the one trainer call that needs it;
     it only fills checkpoint metadata) is replaced by `lambda self: {}`; plots=False keeps the plotting code
     (which also imports polars) out.
   - AMP: Ultralytics' check_amp() downloads yolo26n.pt to compare fp32 and AMP outputs; offline that download is
     retried (curl, with connect timeouts) before it gives up and enables AMP anyway. It is replaced by "AMP on
     CUDA, off on CPU": AMP really runs on the GPU, as our FP16=True does, without the wait.
   - YOLO_OFFLINE=1 is set before import (no network checks, no telemetry).
Settings equalised (see ultra_train_args): model yolov8<phi>.yaml (--arch yolov8-p2: yolov8<phi>-p2.yaml, yolo11: yolo11<phi>.yaml) from
scratch (pretrained=False), epochs, batch, imgsz, workers, SGD (not 'auto', which picks AdamW for short runs), lr0
0.01, lrf 0.01, cosine schedule, momentum 0.937, weight decay 5e-4, warmup 3 epochs, mosaic probability 0.5, mosaic
off for the last 30% of the epochs (close_mosaic), mixup 0, HSV 0.015/0.7/0.4, flip 0.5, translate 0.1, scale 0.5,
conf 0.001, IoU 0.7, max_det 300, cache off, deterministic off (speed). Differences that cannot be equalised:
   - Ultralytics accumulates gradients to a nominal batch of 64 (batch 16 -> one optimizer step per 4 batches,
     weight decay scaled by batch*accumulate/64); ours steps every batch with the LR scaled by batch/64.
   - Ultralytics' mosaic is followed by its own random_perspective and its letterbox-then-affine for single images;
     the affine details, HSV implementation and box filtering differ from datasets/augment.py.
   - Ultralytics validates with rectangular batches (640x384 for 16:9 frames), ours with 640x640 letterboxes.
   - Warmup: 3 epochs in both (momentum 0.8 -> 0.937, bias LR from 0.1), but ours lasts at least
     WARMUP_MIN_ITERS=100 iterations and Ultralytics 8.4 at most epochs-1 epochs: they differ on tiny runs only.
     EMA (0.9999, ramp tau 2000) is alike.
   - Ultralytics cannot switch batch size between a frozen and an unfrozen phase in one run: the bench runs one
     Ultralytics run per phase (freeze=10 = the backbone incl. SPPF, as nets.freeze_backbone; yolo11: freeze=11, C2PSA
     included; BACKBONE_LAYERS).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# --------------------------------------------------------------------------------------------- dataset conversion


def frame_name(frame) -> str:
    """Unique file stem of a frame in the Ultralytics copy: '<sequence>_<image stem>'."""
    return f"{frame.sequence}_{Path(frame.image).stem}"


def _fingerprint(train_frames: Sequence, val_frames: Sequence) -> str:
    """sha1 over every frame's image path and boxes: the copy is rebuilt when this changes."""
    h = hashlib.sha1()
    for side, frames in (("train", train_frames), ("val", val_frames)):
        h.update(side.encode())
        for f in frames:
            h.update(os.path.abspath(f.image).encode("utf-8", "surrogateescape"))
            h.update(f.boxes.astype("float32").tobytes())
    return h.hexdigest()


def build_ultra_dataset(train_frames: Sequence, val_frames: Sequence, out_dir: str,
                        class_names: Sequence[str] = ("drone",)) -> str:
    """Write an Ultralytics dataset of exactly these frames under out_dir; returns the path of its data.yaml.

    Also writes val_names.json: {'<seq>_<stem>': position in val_frames} to score Ultralytics' predictions.
    """
    out = Path(out_dir).resolve()
    stamp = out / "fingerprint.txt"
    yaml_path = out / "data.yaml"
    fp = _fingerprint(train_frames, val_frames)
    if stamp.is_file() and stamp.read_text().strip() == fp and yaml_path.is_file():
        return str(yaml_path)
    for sub in ("images", "labels"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for side, frames in (("train", train_frames), ("val", val_frames)):
        (out / "images" / side).mkdir(parents=True)
        (out / "labels" / side).mkdir(parents=True)
        seen = set()
        for f in frames:
            name = frame_name(f)
            if name in seen:
                raise ValueError(f"two frames map to the same name {name!r} ({f.image}): sequence ids must be unique")
            seen.add(name)
            os.symlink(os.path.abspath(f.image), out / "images" / side / (name + Path(f.image).suffix.lower()))
            lines = "".join(f"{int(b[0])} {b[1]:.6f} {b[2]:.6f} {b[3]:.6f} {b[4]:.6f}\n" for b in f.boxes.tolist())
            (out / "labels" / side / (name + ".txt")).write_text(lines)
    names = {i: n for i, n in enumerate(class_names)}
    yaml_text = (f"path: {out}\ntrain: images/train\nval: images/val\nchannels: 3\n"
                 f"names:\n" + "".join(f"  {i}: {n}\n" for i, n in names.items()))
    yaml_path.write_text(yaml_text)
    (out / "val_names.json").write_text(json.dumps({frame_name(f): i for i, f in enumerate(val_frames)}))
    stamp.write_text(fp + "\n")
    return str(yaml_path)


def close_mosaic_epochs(epochs: int, special_aug_ratio: float) -> int:
    """Ultralytics close_mosaic equal to ours: train_fred.py allows mosaic while epoch < round(ratio * epochs)."""
    return int(epochs - round(special_aug_ratio * epochs))


def ultra_train_args(epochs: int, batch: int, imgsz: int, workers: int, device: str, mosaic_prob: float = 0.5,
                     special_aug_ratio: float = 0.7, freeze: int | None = None, val_every_epoch: bool = False,
                     seed: int = 0, amp: bool = True, lr0: float = 0.01, lrf: float = 0.01,
                     warmup_epochs: float = 3.0) -> dict:
    """Keyword arguments for YOLO.train() matching our config (see the module docstring for what differs)."""
    return dict(epochs=epochs, batch=batch, imgsz=imgsz, workers=workers, device=device, amp=amp,
                pretrained=False, optimizer="SGD", lr0=lr0, lrf=lrf, cos_lr=True, momentum=0.937,
                weight_decay=5e-4, warmup_epochs=warmup_epochs, mosaic=mosaic_prob,
                close_mosaic=close_mosaic_epochs(epochs, special_aug_ratio) if mosaic_prob > 0 else 0,
                mixup=0.0, cutmix=0.0, copy_paste=0.0, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, fliplr=0.5, flipud=0.0,
                degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0, cache=False,
                deterministic=False, seed=seed, freeze=freeze, val=val_every_epoch, plots=False, save_json=False,
                conf=0.001, iou=0.7, max_det=300, patience=10 ** 6, save_period=-1, exist_ok=True,
                verbose=False)


def score_ultra_predictions(predictions_json: str, data_dir: str, val_frames: Sequence,
                            class_names: Sequence[str] = ("drone",)) -> dict:
    """pycocotools metrics (evaluation.evaluator.coco_metrics) of Ultralytics' predictions.json on val_frames."""
    from evaluation.evaluator import coco_ground_truth, coco_metrics

    positions = json.loads((Path(data_dir) / "val_names.json").read_text())
    shapes = [_image_shape(f.image) for f in val_frames]
    gt = coco_ground_truth(val_frames, shapes, class_names)
    dets = []
    for d in json.loads(Path(predictions_json).read_text()):
        stem = str(d["image_id"])
        if stem not in positions:
            raise ValueError(f"{predictions_json}: image_id {stem!r} is not a val frame of {data_dir}")
        dets.append({"image_id": positions[stem], "category_id": int(d["category_id"]),
                     "bbox": [float(v) for v in d["bbox"]], "score": float(d["score"])})
    return coco_metrics(gt, dets)


def _image_shape(path: str) -> tuple[int, int]:
    """(h, w) of an image from its header (PIL), falling back to a full decode (OpenCV)."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except ImportError:
        import cv2
        return tuple(cv2.imread(path).shape[:2])


# --------------------------------------------------------------------------------------------- generated data


def ensure_generated(root: str, sequences: int, frames: int, size: tuple[int, int], seed: int = 0,
                     workers: int = 1, profile: str = "default") -> tuple[dict, float]:
    """A generated FRED tree at root (tools.synthetic, `profile` default or hard), reused when its manifest matches
    (a hard tree: of the current HARD_CALIBRATION too); (manifest, seconds)."""
    from tools.synthetic import HARD_CALIBRATION, MANIFEST_NAME, generate_fred

    path = Path(root) / MANIFEST_NAME
    if path.is_file():
        m = json.loads(path.read_text())
        calibration = HARD_CALIBRATION if profile == "hard" else None
        if (len(m.get("ids", [])), m.get("frames"), list(m.get("size", [])), m.get("seed"), m.get("profile", "default"),
                m.get("calibration")) == (sequences, frames, [int(size[0]), int(size[1])], seed, profile, calibration):
            return m, 0.0
    start = time.perf_counter()
    manifest = generate_fred(root, sequences, frames, seed=seed, size=size, workers=workers, profile=profile)
    return manifest, round(time.perf_counter() - start, 1)


def write_split(root: str, ids: Sequence[int]) -> str:
    """A split folder beside root: ids of FRED's canonical test list go to val, the rest to train."""
    from datasets.splits import NAMED_SPLITS, read_split_file

    test = set(read_split_file(str(Path(NAMED_SPLITS["canonical"]) / "test_split.txt")))
    val = [str(i) for i in ids if str(i) in test]
    train = [str(i) for i in ids if str(i) not in test]
    if not val or not train:
        raise ValueError(f"generated ids {list(ids)} give an empty train or val side; generate more sequences")
    folder = Path(str(Path(root).resolve()) + "_split")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train_split.txt").write_text("".join(f"{i}/\n" for i in train))
    (folder / "test_split.txt").write_text("".join(f"{i}/\n" for i in val))
    return str(folder)


def ours_command(modality: str, data_root: str, split: str, phi: str, device: str, save_dir: str,
                 sets: dict, no_eval_map: bool = False, repo: Path = REPO) -> list[str]:
    """Command line of our trainer (the one in `repo`); sets = config overrides, passed as --set KEY=<literal>."""
    cmd = [sys.executable, str(Path(repo) / "train_fred.py"), "--modality", modality, "--data_root", data_root,
           "--split", split, "--phi", phi, "--save_dir", save_dir]
    if device:
        cmd += ["--device", device]
    if no_eval_map:
        cmd.append("--no_eval_map")
    if sets:
        cmd += ["--set", *[f"{k}={v!r}" for k, v in sets.items()]]
    return cmd


def ultra_device(device: str) -> str:
    """Our device string (cpu, cuda, cuda:N) as Ultralytics wants it (cpu, 0, N)."""
    if device.startswith("cuda"):
        return device.split(":", 1)[1] if ":" in device else "0"
    return device


# --------------------------------------------------------------------------------------------- process plumbing


class GpuSampler(threading.Thread):
    """Samples GPU utilisation (%) and used memory (GB) of one GPU every `interval` s (pynvml, else nvidia-smi).

    Disabled (no samples) when neither works, e.g. on a CPU machine.
    """

    def __init__(self, gpu_index: int = 0, interval: float = 0.1):
        super().__init__(daemon=True)
        self.gpu_index, self.interval = gpu_index, interval
        self.samples: list[tuple[float, float, float]] = []  # (time.time(), util %, used GB)
        self._stop_event = threading.Event()
        self._read: Callable[[], tuple[float, float]] | None = self._open()
        self.source = "none" if self._read is None else self.source

    def _open(self) -> Callable[[], tuple[float, float]] | None:
        try:
            import pynvml
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.gpu_index)
            self.source = "pynvml"

            def read() -> tuple[float, float]:
                return (float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                        pynvml.nvmlDeviceGetMemoryInfo(handle).used / 1e9)
            read()
            return read
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            def read_smi() -> tuple[float, float]:
                out = subprocess.run(["nvidia-smi", f"--id={self.gpu_index}",
                                      "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.strip().split(",")
                return float(out[0]), float(out[1]) / 1e3
            try:
                read_smi()
                self.source = "nvidia-smi"
                return read_smi
            except Exception:
                return None
        return None

    def run(self) -> None:
        """Sample until stop()."""
        while self._read is not None and not self._stop_event.is_set():
            try:
                u, m = self._read()
                self.samples.append((time.time(), u, m))
            except Exception:
                pass
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        """End sampling."""
        self._stop_event.set()

    def window(self, t0: float, t1: float) -> dict:
        """Mean utilisation and peak used memory over [t0, t1] (time.time() stamps); None values without samples."""
        s = [x for x in list(self.samples) if t0 <= x[0] <= t1]
        if not s:
            return {"gpu_util_pct": None, "gpu_used_peak_GB": None, "samples": 0}
        return {"gpu_util_pct": round(sum(x[1] for x in s) / len(s), 1),
                "gpu_used_peak_GB": round(max(x[2] for x in s), 2), "samples": len(s)}


class CsvWatcher:
    """Remembers when each data row of a results.csv (path or glob) first appears: rows + time.time() stamps."""

    def __init__(self, pattern: str):
        self.pattern = pattern
        self.rows: list[dict] = []
        self.stamps: list[float] = []

    def poll(self) -> None:
        """Read the file once; new complete rows get the current time."""
        paths = sorted(glob.glob(self.pattern))
        if not paths:
            return
        try:
            with open(paths[-1], newline="") as f:
                text = f.read()
        except OSError:
            return
        text = text[:text.rfind("\n") + 1]  # complete lines only: the writer may be half-way through one
        rows = list(csv.DictReader(text.splitlines()))
        now = time.time()
        for row in rows[len(self.rows):]:
            if None in row.values() or None in row:  # a line with too few / too many cells
                break
            self.rows.append({k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()})
            self.stamps.append(now)


_LIVE: set = set()  # the processes of run_logged() now running, in any thread
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set by stop_all_runs(): run_logged() starts nothing more


def stop_all_runs() -> None:
    """Stop every process run_logged() is running (in any thread) with its child processes, and refuse new ones: a
    bench stopped in its main thread (SIGTERM, Ctrl-C) leaves nothing running, also with configs in parallel."""
    _STOPPING.set()
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        _signal_tree(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            _signal_tree(proc.pid, signal.SIGKILL)


def run_logged(cmd: Sequence[str], log_path: str, env: dict | None = None, watchers: Iterable[CsvWatcher] = (),
               timeout: float | None = None, cwd: str | None = None,
               stop_when: Callable[[], bool] | None = None) -> dict:
    """Run cmd with stdout+stderr into log_path, polling watchers every 0.2 s; returns rc, start/end stamps, wall.

    stop_when() true (checked after each poll) sends SIGTERM (our trainer then saves last.pth and exits). Past
    timeout the run is taken as stalled: SIGABRT to it and its child processes (DataLoader workers) makes Python's
    faulthandler (PYTHONFAULTHANDLER=1) write every thread's stack into the log, then it is killed."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    watchers = list(watchers)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **(env or {})}
    start, stopped, timed_out = time.time(), False, False
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        with _LIVE_LOCK:
            if _STOPPING.is_set():
                raise RuntimeError(f"the bench is stopping: {cmd[0]} not started")
            proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                    cwd=cwd or str(REPO))
            _LIVE.add(proc)
        try:
            while proc.poll() is None:
                for w in watchers:
                    w.poll()
                if stop_when is not None and not stopped and stop_when():
                    stopped = True
                    proc.terminate()
                if timeout is not None and time.time() - start > timeout:
                    timed_out = True
                    _signal_tree(proc.pid, signal.SIGABRT)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                    break
                time.sleep(0.2)
        except BaseException:  # Ctrl-C, or SystemExit from exit_on_sigterm(): do not leave the trainer running
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
    for w in watchers:
        w.poll()
    end = time.time()
    return {"rc": proc.wait(), "start": start, "end": end, "wall_s": round(end - start, 2), "log": log_path,
            "stopped": stopped, "timed_out": timed_out}


def _signal_tree(pid: int, sig: int) -> None:
    """Send sig to process pid's descendants, then to pid (processes already gone are skipped)."""
    for p in _descendants(pid) + [pid]:
        with contextlib.suppress(OSError):
            os.kill(p, sig)


def _descendants(pid: int) -> list[int]:
    """Process ids of pid's children, grandchildren, ... (Linux /proc; empty elsewhere)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        for k in kids:
            out += [k] + _descendants(k)
    return out


def add_run_args(p: argparse.ArgumentParser, name: str, data_help: str) -> None:
    """Arguments the benches share: device, generated data, seed, per-trainer timeout, output and runs folders."""
    p.add_argument("--device", default="", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--data_root", default="", help=data_help)
    p.add_argument("--gen_workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=0, help="seconds per trainer process (0 = none)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / f"{name}.json"))
    p.add_argument("--runs_dir", default="", help="trainer runs and logs (default bench/out/<out stem>_runs)")


def apply_quick(a: argparse.Namespace, p: argparse.ArgumentParser, quick: dict) -> None:
    """With --quick, take the smoke-test sizes for every option not given on the command line; pick the device."""
    if a.quick:
        for key, value in quick.items():
            if getattr(a, key) == p.get_default(key):
                setattr(a, key, value)
    if not a.device:
        import torch
        a.device = "cuda" if torch.cuda.is_available() else "cpu"


def work_dir(out_json: str, given: str = "") -> Path:
    """Folder for a bench's runs (checkpoints, Ultralytics runs, logs): `given`, else bench/out/<out stem>_runs.

    Kept out of --out's folder on purpose: the device tool returns every file under $OUT, and checkpoints are big.
    """
    path = Path(given) if given else REPO / "bench" / "out" / f"{Path(out_json).stem}_runs"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def copy_logs(runs: Path, out_json: str) -> Path | None:
    """Copy the text logs (*.log) and small JSON results of runs into <out folder>/<out stem>_logs/."""
    dest = Path(out_json).resolve().parent / f"{Path(out_json).stem}_logs"
    if dest == runs:
        return None
    dest.mkdir(parents=True, exist_ok=True)
    for f in list(runs.glob("*.log")) + list(runs.glob("*.json")):
        if f.stat().st_size < 5_000_000:
            shutil.copyfile(f, dest / f.name)
    return dest


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so run_logged() stops its subprocess and the JSON so far is kept."""
    import signal
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def log_tail(path: str, n: int = 40) -> str:
    """Last n lines of a log (tqdm carriage returns folded)."""
    try:
        text = Path(path).read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return ""
    lines = [x for x in text.splitlines() if x.strip()]
    return "\n".join(lines[-n:])


def final_json_line(log_path: str) -> dict | None:
    """The last line of a log that parses as a JSON object (our trainer's final summary), else None."""
    try:
        text = Path(log_path).read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def fmt(v: object, digits: int = 3) -> str:
    """Table cell: floats rounded, None as '-'."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Print (and return) a Markdown table."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(header)]
    lines = [f"\n### {title}", "| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def median(xs: Sequence[float]) -> float | None:
    """Median of the finite values, None when there are none."""
    xs = sorted(x for x in xs if x is not None and math.isfinite(x))
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


# --------------------------------------------------------------------------------------------- Ultralytics side


def _patch_ultralytics() -> None:
    """Offline / no-polars patches (see the module docstring)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    import ultralytics.engine.trainer as trainer_mod
    trainer_mod.BaseTrainer.read_results_csv = lambda self: {}
    trainer_mod.check_amp = lambda model: next(model.parameters()).device.type == "cuda"
    del torch


# our ARCH names; Ultralytics' yaml: yolov8<phi>.yaml, yolov8<phi>-p2.yaml, yolo11<phi>.yaml
ULTRA_ARCHS = ("yolov8", "yolov8-p2", "yolo11")
# ARCH -> Ultralytics' freeze=N that freezes what nets.freeze_backbone freezes (the yaml's backbone section)
BACKBONE_LAYERS = {"yolov8": 10, "yolov8-p2": 10, "yolo11": 11}


def model_yaml(phi: str, arch: str = "yolov8") -> str:
    """Ultralytics model yaml of our (phi, ARCH): 'yolov8s.yaml', 'yolov8s-p2.yaml', 'yolo11s.yaml' (the scale is read
    from the name)."""
    if arch not in ULTRA_ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ULTRA_ARCHS)}, got {arch!r}")
    if arch == "yolo11":
        return f"yolo11{phi}.yaml"
    return f"yolov8{phi}{arch.removeprefix('yolov8')}.yaml"


def _sync() -> None:
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _cuda_peak() -> dict:
    import torch
    if not torch.cuda.is_available():
        return {"peak_alloc_GB": 0.0, "peak_reserved_GB": 0.0}
    return {"peak_alloc_GB": round(torch.cuda.max_memory_allocated() / 1e9, 3),
            "peak_reserved_GB": round(torch.cuda.max_memory_reserved() / 1e9, 3)}


def _metric(metrics: dict, key: str) -> float | None:
    for k, v in (metrics or {}).items():
        if k.startswith(f"metrics/{key}("):
            return float(v)
    return None


def ultra_train(a: argparse.Namespace) -> dict:
    """Train Ultralytics YOLOv8 / YOLO11 (a.arch: yolov8, yolov8-p2 or yolo11) from scratch on a.data; per-epoch timings and metrics,
    then a timed val of best.pt."""
    _patch_ultralytics()
    import torch
    from ultralytics import YOLO

    t_process = time.time()
    model = YOLO(model_yaml(a.phi, a.arch))
    epochs: list[dict] = []
    state: dict = {}

    def on_train_start(trainer) -> None:
        state["train_start"] = time.time()
        state["train_images"] = len(trainer.train_loader.dataset)

    def on_epoch_start(trainer) -> None:
        _sync()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        state["t0"], state["w0"] = time.perf_counter(), time.time()

    def on_epoch_end(trainer) -> None:
        _sync()
        seconds = time.perf_counter() - state["t0"]
        n = len(trainer.train_loader.dataset)
        epochs.append({"epoch": trainer.epoch + 1, "train_s": round(seconds, 3), "images": n,
                       "img_per_s": round(n / seconds, 1), "batch": trainer.batch_size, "start": state["w0"],
                       "end": time.time(), **_cuda_peak()})
        state["epoch_open"] = True

    def on_val_start(validator) -> None:
        state["v0"] = time.perf_counter()

    def on_val_end(validator) -> None:
        state["val_s"] = round(time.perf_counter() - state["v0"], 3)

    def on_fit_epoch_end(trainer) -> None:
        final = not state.pop("epoch_open", False)  # the final val of best.pt, after the training loop
        row = {"mAP50": _metric(trainer.metrics, "mAP50"), "mAP50_95": _metric(trainer.metrics, "mAP50-95"),
               "val_s": state.pop("val_s", None), "wall": time.time()}
        if final:
            state["final_metrics"] = row
            return
        if row["val_s"] is None:  # no validation this epoch (val=False until the last one)
            row["mAP50"] = row["mAP50_95"] = None
        epochs[-1].update(row)
        if a.stop_at_map50 and row["mAP50"] is not None and row["mAP50"] >= a.stop_at_map50:
            trainer.stop = True  # checked right after this callback: ends training, then the final val runs

    for name, fn in (("on_train_start", on_train_start), ("on_train_epoch_start", on_epoch_start),
                     ("on_train_epoch_end", on_epoch_end), ("on_val_start", on_val_start),
                     ("on_val_end", on_val_end), ("on_fit_epoch_end", on_fit_epoch_end)):
        model.add_callback(name, fn)
    args = ultra_train_args(a.epochs, a.batch, a.imgsz, a.workers, a.device, a.mosaic, a.special_aug_ratio,
                            a.freeze or None, bool(a.val_every_epoch), a.seed, bool(a.amp))
    t_train = time.time()
    model.train(data=a.data, project=a.project, name=a.name, **args)
    train_wall = time.time() - t_train
    trainer = model.trainer
    run_dir = Path(trainer.save_dir)
    best = trainer.best if Path(trainer.best).is_file() else trainer.last
    out = {"settings": {**args, "phi": a.phi, "arch": a.arch, "data": a.data}, "run_dir": str(run_dir),
           "best": str(best), "last": str(trainer.last),
           "process_start": t_process, "train_start": state.get("train_start"), "train_wall_s": round(train_wall, 2),
           "train_images": state.get("train_images"), "epochs": epochs, "final": state.get("final_metrics"),
           "amp": bool(trainer.amp), "device": str(trainer.device)}
    if a.val_repeats > 0 or a.save_json:
        out["val"] = ultra_val_runs(str(best), a, repeats=a.val_repeats, save_json=bool(a.save_json))
    return out


def ultra_val_runs(weights: str, a: argparse.Namespace, repeats: int, save_json: bool) -> dict:
    """Time `repeats` val-only passes of weights (fp16 on CUDA); with save_json one more pass writes predictions.json.

    Each pass is YOLO(weights).val(...) as a user runs it: the timer covers val() (model fuse, dataloader,
    inference, NMS, metrics), not reading the weights file.
    """
    _patch_ultralytics()
    import torch
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect.val import DetectionValidator

    # Custom-dataset save_json makes Ultralytics try faster-coco-eval (not installed, offline): we score the
    # predictions ourselves with pycocotools, so its own COCO step is skipped.
    DetectionValidator.coco_evaluate = lambda self, stats, *args, **kwargs: stats
    cuda = torch.cuda.is_available() and a.device != "cpu"
    seen: dict = {}

    def one_pass(json_out: bool) -> dict:
        model = YOLO(weights)
        model.add_callback("on_val_end", lambda v: seen.update(images=len(v.dataloader.dataset)))
        _sync()
        t0 = time.perf_counter()
        metrics = model.val(data=a.data, split="val", imgsz=a.imgsz, batch=a.val_batch, device=a.device,
                            workers=a.workers, quantize=16 if cuda else None, conf=0.001, iou=0.7, max_det=300,
                            plots=False, save_json=json_out, project=a.project, name=f"{a.name}_val",
                            exist_ok=True, verbose=False)
        _sync()
        seconds = time.perf_counter() - t0
        images = seen.get("images") or _count_val_images(a.data)
        return {"wall_s": round(seconds, 3), "images": images, "img_per_s": round(images / seconds, 1),
                "speed_ms_per_image": {k: round(v, 3) for k, v in (getattr(metrics, "speed", {}) or {}).items()},
                "mAP50": float(metrics.box.map50), "mAP50_95": float(metrics.box.map),
                "save_dir": str(getattr(metrics, "save_dir", "") or "")}

    runs = [one_pass(False) for _ in range(repeats)]
    out = {"runs": runs, "predictions": None, "fp16": cuda, "batch": a.val_batch}
    if save_json:
        run = one_pass(True)
        pred = Path(run["save_dir"]) / "predictions.json"
        out.update(json_run=run, predictions=str(pred) if run["save_dir"] and pred.is_file() else None)
    return out


def _count_val_images(data_yaml: str) -> int:
    return len(os.listdir(Path(data_yaml).parent / "images" / "val"))


def ultra_loader(a: argparse.Namespace) -> dict:
    """Ultralytics' training dataloader alone (mosaic prob a.mosaic): img/s over a.batches batches after warmup."""
    _patch_ultralytics()
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    cfg = get_cfg(overrides={k: v for k, v in ultra_train_args(1, a.batch, a.imgsz, a.workers, a.device,
                                                                a.mosaic).items()
                             if k not in ("epochs", "verbose")})
    data = check_det_dataset(a.data)
    dataset = build_yolo_dataset(cfg, data["train"], a.batch, data, mode="train", stride=32)
    loader = build_dataloader(dataset, a.batch, a.workers, shuffle=True, rank=-1)
    it = iter(loader)
    for _ in range(min(a.warmup_batches, len(loader) - 1)):
        next(it)
    t0, n, batches = time.perf_counter(), 0, 0
    while batches < a.batches:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += batch["img"].shape[0]
        batches += 1
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": round(seconds, 3), "img_per_s": round(n / seconds, 1), "batch": a.batch,
            "workers": a.workers, "mosaic": a.mosaic}


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: train | val | loader; writes a JSON to --out."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["train", "val", "loader"])
    p.add_argument("--data", required=True, help="data.yaml written by build_ultra_dataset")
    p.add_argument("--out", required=True, help="JSON result file")
    p.add_argument("--phi", default="s")
    p.add_argument("--arch", choices=ULTRA_ARCHS, default="yolov8", help="train mode: the model (our ARCH names)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--val_batch", type=int, default=32)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--device", default="0")
    p.add_argument("--amp", type=int, default=1)
    p.add_argument("--mosaic", type=float, default=0.5, help="mosaic probability (ours: MOSAIC_PROB)")
    p.add_argument("--special_aug_ratio", type=float, default=0.7, help="ours: SPECIAL_AUG_RATIO -> close_mosaic")
    p.add_argument("--freeze", type=int, default=0, help="freeze the first N layers (10 = backbone)")
    p.add_argument("--val_every_epoch", type=int, default=0)
    p.add_argument("--val_repeats", type=int, default=1, help="timed val-only passes (after training in train mode)")
    p.add_argument("--save_json", type=int, default=0, help="one more val pass writing predictions.json (COCO)")
    p.add_argument("--stop_at_map50", type=float, default=0.0, help="end training once val mAP50 reaches this")
    p.add_argument("--weights", default="", help="val mode: the .pt to validate")
    p.add_argument("--batches", type=int, default=60, help="loader mode: batches to time")
    p.add_argument("--warmup_batches", type=int, default=10, help="loader mode: batches before timing")
    p.add_argument("--project", default=str(REPO / "bench" / "out" / "ultra_runs"))
    p.add_argument("--name", default="run")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.project = str(Path(a.project).resolve())
    if a.mode == "train":
        result = ultra_train(a)
    elif a.mode == "val":
        result = ultra_val_runs(a.weights, a, repeats=a.val_repeats, save_json=bool(a.save_json))
    else:
        result = ultra_loader(a)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({"ultra_ref": a.mode, "out": a.out}), flush=True)


if __name__ == "__main__":
    main()
