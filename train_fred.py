"""Train YOLOv8 on FRED (RGB or event frames): frozen-backbone phase, then the whole network.

    python train_fred.py --modality event --demo                 # generated sample, short schedule
    python train_fred.py --modality rgb --data_root /data/FRED   # the full run of config_fred.py
    python train_fred.py --modality rgb --resume logs/fred_rgb/loss_.../last.pth
    torchrun --nproc_per_node 4 train_fred.py --modality rgb     # DistributedDataParallel, global batch sizes

Defaults live in config_fred.py; `--set KEY=VALUE` overrides any of them. Output goes to
SAVE_DIR/loss_YYYY_MM_DD_HH_MM_SS/; the last line printed is a JSON summary.

Exit codes: 0 done; 1 --check_data found the data unusable, or an unexpected error (a traceback); 2 bad
configuration, data or --resume (nothing written); 3 CUDA out of memory; 4 non-finite loss, model or val loss;
5 disk full while saving a checkpoint; 128 + N stopped by signal N (SIGINT, SIGTERM: last.pth saved).
"""
import argparse
import datetime
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional

import config_fred
from utils.config import apply_overrides, config_dict

DEMO_ROOT = "data/fred_demo"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", choices=("rgb", "event", "fusion"), help="which frames to train on (taken from "
                   "--resume's checkpoint when omitted); fusion: PADDED_RGB and event frames paired by time, one "
                   "network on both (config FUSION)")
    p.add_argument("--data_root", help="FRED root (config DATA_ROOT)")
    p.add_argument("--split", help="canonical | challenging | random:<val_fraction>:<seed> | folder (config SPLIT)")
    p.add_argument("--phi", choices=("n", "s", "m", "l", "x"), help="YOLOv8 size (config PHI)")
    p.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--save_dir", help="parent folder of the run folder (config SAVE_DIR)")
    p.add_argument("--resume", help="last.pth of a run to continue (its config is the base; --set extends it)")
    p.add_argument("--weights", help="initial weights, ours or converted Ultralytics (config MODEL_PATH)")
    p.add_argument("--weights_rgb", help="--modality fusion: start from this RGB checkpoint (config "
                   "FUSION_RGB_WEIGHTS)")
    p.add_argument("--weights_event", help="--modality fusion: start from this event checkpoint (config "
                   "FUSION_EVENT_WEIGHTS); with --weights_rgb both are used")
    p.add_argument("--no_eval_map", action="store_true", help="skip COCO mAP; best.pth follows the val loss")
    p.add_argument("--demo", action="store_true", help=f"generate a FRED sample in {DEMO_ROOT} if absent and train "
                   "a short schedule sized to this machine")
    p.add_argument("--check_data", action="store_true", help="decode every selected image, parse every label, "
                   "print a summary and a JSON line, and exit")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", action="extend",
                   help='override a config key with a Python literal, e.g. --set "INPUT_SHAPE=[320,320]"')
    return p.parse_args(argv)


if __name__ == "__main__":  # --help, argument and --set errors answer before torch and OpenCV load (seconds)
    try:
        apply_overrides(config_dict(config_fred), parse_args(sys.argv[1:]).set)
    except ValueError as early_error:
        print(f"config error: {early_error}", file=sys.stderr)
        sys.exit(2)

import cv2  # noqa: E402
import torch  # noqa: E402

import build_fred  # noqa: E402
from datasets.fred_dataset import FredDataset  # noqa: E402
from datasets.fred_index import FredDataError, FredIndex  # noqa: E402
from nets.loss import DetectionLoss  # noqa: E402
from tools.check_data import check_data, format_summary, summary_keys, usable  # noqa: E402
from training import engine  # noqa: E402
from training.ema import ModelEMA  # noqa: E402
from training.epoch_end import EpochEnd, NonFiniteError, nonfinite_tensor  # noqa: E402
from training.optim import build_optimizer, lr_at, set_lr  # noqa: E402
from training.run_log import RunLog  # noqa: E402
from utils import dist  # noqa: E402
from utils.checkpoint import (DiskFullError, atomic_save, load_checkpoint, remove_temporaries,  # noqa: E402
                              restore_training_state, training_state)

EXIT_BAD_CONFIG, EXIT_BAD_DATA, EXIT_OOM, EXIT_NAN, EXIT_DISK_FULL = 2, 2, 3, 4, 5  # the module docstring's list
DATA_WAIT_HINT_PCT = 25.0  # an epoch (not a phase's first) waiting for data longer than this share prints advice


# ----------------------------------------------------------------------------------------------- configuration
def demo_config(cuda: bool) -> dict:
    """Short schedule for --demo, from scratch: phi s at 640 on a GPU; phi n at 256 on a CPU (measured on a 2-core
    machine: 4 min 27 s from launch, data generation included; mAP50 0.742 / mAP50:95 0.326 on the 2 held-out
    sequences)."""
    common = {"FREEZE_TRAIN": False, "OPTIMIZER_TYPE": "adamw", "INIT_LR": 8e-3, "MIN_LR": 8e-5, "WEIGHT_DECAY": 5e-4,
              "WARMUP_EPOCHS": 1, "WARMUP_MIN_ITERS": 20, "SPECIAL_AUG_RATIO": 0.7}
    if cuda:
        return {**common, "PHI": "s", "INPUT_SHAPE": [640, 640], "UNFREEZE_EPOCH": 40, "UNFREEZE_BATCH_SIZE": 16,
                "INIT_LR": 4e-3, "MIN_LR": 4e-5, "EVAL_PERIOD": 10, "SAVE_PERIOD": 10, "LOG_INTERVAL": 10}
    return {**common, "PHI": "n", "INPUT_SHAPE": [256, 256], "UNFREEZE_EPOCH": 30, "UNFREEZE_BATCH_SIZE": 8,
            "EVAL_PERIOD": 5, "SAVE_PERIOD": 10, "NUM_WORKERS": 2, "EVAL_BATCH_SIZE": 16, "LOG_INTERVAL": 5}


def demo_data(root: str, cuda: bool) -> None:
    """Generate the demo FRED sample at root when root is absent or empty (existing data is used as it is)."""
    if os.path.isdir(root) and os.listdir(root):
        return
    from tools.synthetic import generate_fred
    size = (720, 1280) if cuda else (360, 640)
    sequences, frames = (8, 40) if cuda else (8, 30)
    print(f"generating a FRED-shaped sample in {root}: {sequences} sequences x {frames} frames at "
          f"{size[1]}x{size[0]} ...", flush=True)
    start = time.perf_counter()
    generate_fred(root, sequences=sequences, frames=frames, seed=0, size=size)
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)


def resolve_config(args: argparse.Namespace, resume_state: Optional[dict], cuda: bool) -> dict:
    """config_fred defaults (or the resumed run's config), then --demo sizing, then --set, then the CLI flags."""
    cfg = config_dict(config_fred)
    if resume_state is not None:
        recorded = {**build_fred.EARLIER_BEHAVIOUR, **resume_state["config"]}
        cfg.update({k: v for k, v in recorded.items() if k in cfg})
    elif args.demo:
        cfg.update(demo_config(cuda), DATA_ROOT=DEMO_ROOT)
    cfg = apply_overrides(cfg, args.set)
    for flag, key in (("data_root", "DATA_ROOT"), ("split", "SPLIT"), ("phi", "PHI"), ("save_dir", "SAVE_DIR"),
                      ("weights", "MODEL_PATH"), ("weights_rgb", "FUSION_RGB_WEIGHTS"),
                      ("weights_event", "FUSION_EVENT_WEIGHTS")):
        if getattr(args, flag) is not None:
            cfg[key] = getattr(args, flag)
    if args.no_eval_map:
        cfg["EVAL_MAP"] = False
    return cfg


def new_run_dir(save_dir: str) -> str:
    """SAVE_DIR/loss_YYYY_MM_DD_HH_MM_SS (with _2, _3 ... if that exists already)."""
    base = os.path.join(save_dir, datetime.datetime.now().strftime("loss_%Y_%m_%d_%H_%M_%S"))
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}_{n}"
    os.makedirs(path)
    return path


def open_run_dir(cfg: dict, modality: str, resume: Optional[str]) -> str:
    """The run folder, on every process: rank 0 makes a new one under SAVE_DIR, or takes --resume's and removes the
    temporary files of checkpoint writes that were killed there, then writes config.json."""
    run_dir = None
    if dist.is_main():
        if resume:
            run_dir = os.path.dirname(os.path.abspath(resume))
            stale = remove_temporaries(run_dir)
            if stale:
                print(f"removed {len(stale)} temporary files of interrupted checkpoint writes from {run_dir}: "
                      f"{', '.join(stale)}", flush=True)
        else:
            run_dir = new_run_dir(cfg["SAVE_DIR"])
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump({"modality": modality, **cfg}, f, indent=1)
    return dist.wait_for_main(run_dir)


def resume_conflict(state: dict, cfg: dict, path: str) -> Optional[str]:
    """Why the checkpoint at path cannot continue with cfg (another model size, architecture, class count, input
    channels or optimizer than it holds), or None. A checkpoint without "arch" (older ones) holds a "yolov8"."""
    for key, held, asked, how in (("PHI", state.get("phi"), cfg["PHI"], "--phi / --set PHI"),
                                  ("ARCH", state.get("arch", "yolov8"), cfg["ARCH"], "--set ARCH"),
                                  ("NUM_CLASSES", state.get("num_classes"), cfg["NUM_CLASSES"], "--set NUM_CLASSES"),
                                  ("OPTIMIZER_TYPE", state["config"].get("OPTIMIZER_TYPE"), cfg["OPTIMIZER_TYPE"],
                                   "--set OPTIMIZER_TYPE")):
        if held is not None and held != asked:
            return (f"{path} was trained with {key}={held!r}, this run asks for {asked!r} ({how}). A resumed run "
                    f"keeps the checkpoint's model, classes and optimizer: drop the override, or start a new run "
                    f"from these weights with --weights {path}")
    channels = build_fred.input_channels(state.get("modality", "rgb"))
    if state.get("in_channels", channels) != channels:
        return (f"{path} holds a model with {state['in_channels']} input channels; train_fred.py trains models with "
                f"{channels} input channels on {state.get('modality', 'rgb')} frames")
    if state.get("modality") == "fusion" and state["config"].get("FUSION") != cfg["FUSION"]:
        return (f"{path} was trained with FUSION={state['config'].get('FUSION')!r}, this run asks for "
                f"{cfg['FUSION']!r}: a resumed run keeps the checkpoint's network; drop the override")
    return None


def step_advice(cfg: dict, n_train: int, advise: bool = True) -> str:
    """The RTX 3090 tuning note's check: total optimizer steps against 5e4 (SGD) / 1.5e4 (Adam), with the epochs
    to reach it; advise=False (the demo sample) gives the count only."""
    total = cfg["UNFREEZE_EPOCH"]
    frozen = min(cfg["FREEZE_EPOCH"], total) if cfg["FREEZE_TRAIN"] else 0
    per_frozen = max(1, n_train // cfg["FREEZE_BATCH_SIZE"])  # training loaders drop the incomplete last batch
    per_unfrozen = max(1, n_train // cfg["UNFREEZE_BATCH_SIZE"])
    steps = frozen * per_frozen + (total - frozen) * per_unfrozen
    wanted = build_fred.RECOMMENDED_STEPS[cfg["OPTIMIZER_TYPE"]]
    head = (f"{n_train} training frames: {frozen} frozen epochs x {per_frozen} + {total - frozen} unfrozen epochs x "
            f"{per_unfrozen} = {steps} optimizer steps")
    if not advise:
        return head
    if steps >= wanted:
        return f"{head} (>= the {wanted:.0f} recommended for {cfg['OPTIMIZER_TYPE']}: enough)"
    epochs = frozen + math.ceil((wanted - frozen * per_frozen) / per_unfrozen)
    return (f"{head}, below the {wanted:.0f} recommended for {cfg['OPTIMIZER_TYPE']}: consider "
            f"UNFREEZE_EPOCH={epochs} (--set UNFREEZE_EPOCH={epochs}) to reach it")


# ----------------------------------------------------------------------------------------------- data
def data_wait_hint(cfg: dict, wait_pct: float, workers: int, cuda: bool) -> str:
    """Advice printed once when the training loop waited for its loader wait_pct % of an epoch's time."""
    cpus = os.cpu_count() or 1
    tips = []
    if workers < cpus - 1:
        tips.append(f"more loader processes (NUM_WORKERS={workers}, this machine has {cpus} CPUs)")
    if cfg["FRAME_CACHE"] == "off":
        tips.append("FRAME_CACHE='disk' (decode each frame once)")
    if cuda and not cfg["HSV_ON_GPU"] and any((cfg["HSV_H"], cfg["HSV_S"], cfg["HSV_V"])):
        tips.append("HSV_ON_GPU=True (colour jitter on the GPU)")
    advice = "; try " + ", ".join(tips) if tips else "; the CPUs are the limit here"
    return f"note: the training loop waited for data {wait_pct:.0f}% of the last epoch{advice} (--set KEY=VALUE)"


def frozen_random_note(cfg: dict, resumed: bool) -> str:
    """The line to print when the frozen phase would freeze a randomly initialised backbone (FREEZE_TRAIN with no
    weights to start from: the tuning note's setting assumes pretrained ones); else "" (also for a resumed run)."""
    frozen = min(cfg["FREEZE_EPOCH"], cfg["UNFREEZE_EPOCH"]) - cfg["INIT_EPOCH"]
    weights = cfg["MODEL_PATH"] or cfg["FUSION_RGB_WEIGHTS"] or cfg["FUSION_EVENT_WEIGHTS"]
    if resumed or weights or not cfg["FREEZE_TRAIN"] or frozen <= 0:
        return ""
    return (f"note: no weights to start from, so the backbone is random, and FREEZE_TRAIN freezes it for the first "
            f"{frozen} epochs: only the neck and head learn then, on random features. From scratch, train everything "
            "from the start (--set FREEZE_TRAIN=False); freeze a pretrained backbone only (--weights).")


def workers_note(num_workers: int, processes: int) -> str:
    """The line to print when `processes` training processes on this machine share its CPUs, so that each starts
    fewer than num_workers (NUM_WORKERS) loader processes; else ""."""
    workers = build_fred.capped_workers(num_workers, processes)
    if workers >= build_fred.capped_workers(num_workers):
        return ""
    return (f"NUM_WORKERS={num_workers}: {workers} loader processes per training process ({processes} processes x "
            f"{workers} <= {os.cpu_count()} CPUs on this machine)")


def run_check_data(cfg: dict, modality: str) -> int:
    """--check_data: index, decode every image, print the summary and the JSON line; 0 when usable."""
    try:
        index = build_fred.build_index(cfg, modality)
    except FredDataError as e:
        print(f"data check failed: {e}{missing_root_hint(cfg, modality)}", file=sys.stderr)
        return EXIT_BAD_DATA
    summary = check_data(index, workers=min(cfg["NUM_WORKERS"], os.cpu_count() or 1), progress=True)
    print(format_summary(summary), flush=True)
    print(json.dumps({k: summary[k] for k in summary_keys(modality)}), flush=True)
    if usable(summary):
        return 0
    print(f"not usable: no {'train' if not summary['train_frames'] else 'val'} frames with readable images under "
          f"{summary['root']} (modality {modality}, split {summary['split']})", file=sys.stderr)
    return 1


def missing_root_hint(cfg: dict, modality: str) -> str:
    """For a data root that does not exist, a line on trying the trainer without FRED (--demo); else ""."""
    if os.path.isdir(os.path.expanduser(cfg["DATA_ROOT"])):
        return ""
    return ("\nno FRED at hand? try the trainer on a generated sample: "
            f"python train_fred.py --modality {modality} --demo")


# ----------------------------------------------------------------------------------------------- signals
class StopFlag:
    """SIGINT/SIGTERM set a flag the training loop checks between iterations (a second Ctrl-C aborts at once)."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def install(self) -> None:
        """Install the handlers (main thread only)."""
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping at the next iteration and saving last.pth "
              "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def requested(self, iteration: int, log_interval: int) -> bool:
        """Whether to stop now; under torchrun all ranks agree, checked every log_interval iterations."""
        if not dist.is_dist():
            return bool(self.signum)
        if iteration % log_interval:
            return False
        flag = torch.tensor([self.signum], dtype=torch.int64,
                            device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.signum = int(flag.item())
        return bool(self.signum)


# ----------------------------------------------------------------------------------------------- training
class RunStop(Exception):
    """Ends the run early with an exit code and the message to print (stderr; empty: nothing more to say)."""

    def __init__(self, code: int, message: str = ""):
        super().__init__(message)
        self.code, self.message = code, message


def oom_message(phase: str, cfg: dict, world: int, during: str, run_dir: Optional[str],
                resume: Optional[str] = None) -> str:
    """The RTX 3090 tuning note's advice for CUDA out of memory: which batch size to lower (or CUDA_GRAPH to turn off
    when a training graph is in use), and how to go on. during: "setup", "train", "CUDA graph capture" (the start
    of phase) or "evaluation"."""
    if during == "setup":
        again = f"continue with --resume {resume}" if resume else "start again"
        return ("CUDA out of memory while setting up the run (model, weights, caches), before any training: free the "
                f"GPU (nvidia-smi lists what else runs on it) or pick a smaller PHI, then {again}")
    key = ("EVAL_BATCH_SIZE" if during == "evaluation" else
           "FREEZE_BATCH_SIZE" if phase == "frozen" else "UNFREEZE_BATCH_SIZE")
    world = 1 if during == "evaluation" else world  # rank 0 evaluates alone
    batch = cfg[key]
    lower = max(world, (batch * 3 // 4) // world * world)
    graph = cfg["CUDA_GRAPH"] and not (world > 1 and cfg["SYNC_BN"]) and during != "evaluation"
    other = (" or --set CUDA_GRAPH=False (the graph holds memory of its own)" if graph else "") + (
        "" if cfg["FP16"] else "; FP16 = True also saves memory")
    last = os.path.join(run_dir, "last.pth") if run_dir else ""
    how = f"continue with --resume {last} --set {key}={lower}" if last and os.path.isfile(last) else "start again"
    return (f"CUDA out of memory during {during} in the {phase} phase at batch size {batch} ({batch // world} per "
            f"GPU): lower {key}, e.g. --set {key}={lower}{other}. Nothing was saved for this epoch; {how}")


def exit_code(failure: Optional[BaseException]) -> int:
    """The exit code of a failure at the end of an epoch on rank 0 (0: none), for every process to stop with."""
    if failure is None:
        return 0
    return {NonFiniteError: EXIT_NAN, torch.cuda.OutOfMemoryError: EXIT_OOM, DiskFullError: EXIT_DISK_FULL}.get(
        type(failure), 1)


def nonfinite_message(what: str, run_dir: str) -> str:
    """Why the run stops on a non-finite model or val loss, what was kept and what to try."""
    last = os.path.join(run_dir, "last.pth")
    kept = (f"; {last} is left as it was (continue from it with --resume {last} and a change below)"
            if os.path.isfile(last) else "")
    return (f"stopping: {what}; nothing was saved for this epoch{kept}. Lower INIT_LR (with SGD also WARMUP_BIAS_LR), "
            "check the data, or try FP16=False / AMP_DTYPE='bf16'.")


@dataclass
class Run:
    """The objects of one training run: what setup_run() builds and the epoch loop uses."""

    cfg: dict
    modality: str
    device: torch.device
    run_dir: str
    model: torch.nn.Module
    ema: ModelEMA
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: DetectionLoss
    start_epoch: int
    start_iter: int  # optimizer steps already done in start_epoch (a mid-epoch resume)
    epoch_sums: Optional[dict]  # and their loss sums
    best: dict
    train_seconds: float
    train_set: Optional[FredDataset] = None  # setup_data() makes these
    step: Optional[engine.StepOptions] = None  # how train_one_epoch takes its steps
    warmup: float = 0.0  # warmup length, epochs
    log: Optional[RunLog] = None  # rank 0
    epoch_end: Optional[EpochEnd] = None  # rank 0
    t_start: float = 0.0

    def elapsed(self) -> float:
        """Training seconds of the run so far, earlier sessions of a resumed run included."""
        return time.perf_counter() - self.t_start

    def state(self, epoch: int, iteration: int, phase: str, epoch_sums: Optional[dict] = None) -> dict:
        """training_state() of the run after `iteration` steps of epoch `epoch` (0 steps: after epoch - 1)."""
        meta = {"phi": self.model.phi, "arch": self.model.arch, "num_classes": self.model.num_classes,
                "in_channels": self.model.in_channels, "modality": self.modality,
                "fusion": self.cfg["FUSION"] if self.modality == "fusion" else None, "train_seconds": self.elapsed()}
        return training_state(self.model, self.ema, self.optimizer, self.scaler, epoch, iteration, phase, self.best,
                              self.cfg, meta, epoch_sums)


def weights_named(cfg: dict) -> str:
    """The weights a run starts from, as the user set them (for messages)."""
    if cfg["MODEL_PATH"] or not (cfg["FUSION_RGB_WEIGHTS"] or cfg["FUSION_EVENT_WEIGHTS"]):
        return f"MODEL_PATH / --weights {cfg['MODEL_PATH']}"
    return " and ".join(f"{key} {cfg[key]}" for key in ("FUSION_RGB_WEIGHTS", "FUSION_EVENT_WEIGHTS") if cfg[key])


def setup_run(cfg: dict, modality: str, device: torch.device, resume: Optional[str],
              resume_state: Optional[dict]) -> tuple[Run, FredIndex]:
    """Index, model (weights or resumed state), optimizer, loss and the run folder: (run, index)."""
    world, main_proc = dist.get_world_size(), dist.is_main()
    index = dist.in_turns(lambda: build_fred.build_index(cfg, modality))  # the index cache: once per machine
    if main_proc:
        print(f"{modality}: {len(index.train)} train frames ({len(index.train_sequences)} sequences), "
              f"{len(index.val)} val frames ({len(index.val_sequences)} sequences) from {index.stats['root']}")
        on_demo_sample = os.path.abspath(cfg["DATA_ROOT"]) == os.path.abspath(DEMO_ROOT)  # --demo or its resume
        print("steps: " + step_advice(cfg, len(index.train), advise=not on_demo_sample), flush=True)
    try:
        model, info = build_fred.build_train_model(cfg, device, world, modality, weights=resume_state is None)
    except (OSError, ValueError) as e:
        raise RunStop(EXIT_BAD_CONFIG, f"{weights_named(cfg)}: {e}") from None
    if main_proc and info:
        print(f"{weights_named(cfg)}: loaded {info['loaded']}/{info['total']} tensors, skipped "
              f"{info['skipped']} of the file's ({', '.join(info['skipped_keys'][:4])}"
              f"{' ...' if info['skipped'] > 4 else ''}), {info['missing']} model tensors kept their init")
    note = frozen_random_note(cfg, resumed=resume_state is not None)
    if main_proc and note:
        print(note, flush=True)
    if main_proc and cfg["SYNC_BN"] and world > 1 and device.type != "cuda":
        print("SYNC_BN needs CUDA: BatchNorm statistics stay per process")
    ema = ModelEMA(model, cfg["EMA_DECAY"])
    optimizer = build_optimizer(model, cfg["OPTIMIZER_TYPE"], cfg["INIT_LR"], cfg["MOMENTUM"], cfg["WEIGHT_DECAY"])
    amp_dtype = build_fred.amp_dtype(cfg, device)
    fixed_scale = amp_dtype is not torch.float16  # the scaler then only detects non-finite gradients
    scaler = torch.amp.GradScaler(device.type, init_scale=1.0 if fixed_scale else 2.0 ** 16)
    start_epoch, start_iter, epoch_sums, best, seconds = cfg["INIT_EPOCH"], 0, None, {"fitness": None}, 0.0
    if resume_state is not None:
        restore_training_state(resume_state, model, ema, optimizer, scaler)
        start_epoch, start_iter = resume_state["epoch"], resume_state["iteration"]
        epoch_sums, best = resume_state.get("epoch_sums"), dict(resume_state["best"])
        seconds = resume_state.get("train_seconds", 0.0)
    return Run(cfg, modality, device, open_run_dir(cfg, modality, resume), model, ema, optimizer, scaler,
               build_fred.build_criterion(cfg, model), start_epoch, start_iter, epoch_sums, best, seconds), index


def setup_data(run: Run, index: FredIndex) -> None:
    """The frame caches (built in turns: rank 0 train and val, each other machine's first process train, then the
    other processes open it), the training set, its step options (with the batch half of the augmentation), the
    warmup length and, on rank 0, the val loader, the run log and the end-of-epoch unit."""
    cfg, device, world = run.cfg, run.device, dist.get_world_size()
    caches = dist.in_turns(lambda: {what: build_fred.build_frame_caches(cfg, frames, what, progress=dist.is_main())
                                    for what, frames in (("train", index.train), ("val", index.val))
                                    if what == "train" or dist.is_main()})
    note = workers_note(cfg["NUM_WORKERS"], dist.local_world_size())
    if dist.is_main() and note:
        print(note, flush=True)
    run.train_set = build_fred.train_dataset(cfg, index.train, run.run_dir,
                                             hsv_in_batch=cfg["HSV_ON_GPU"] and device.type == "cuda",
                                             **caches["train"])
    run.step = build_fred.step_options(cfg, device, run.train_set)
    first = build_fred.phase_name(cfg, 0)  # the warmup follows the run's first phase, a resumed run's too
    per_rank = (cfg["FREEZE_BATCH_SIZE"] if first == "frozen" else cfg["UNFREEZE_BATCH_SIZE"]) // world
    run.warmup = max(cfg["WARMUP_EPOCHS"], cfg["WARMUP_MIN_ITERS"] / max(1, math.ceil(len(index.train) / world)
                                                                          // per_rank))
    if dist.is_main():
        val_shape = build_fred.val_input_shape(cfg, index.val, caches["val"]["frame_cache"])
        rect = " (EVAL_RECT)" if list(val_shape) != list(cfg["INPUT_SHAPE"]) else ""
        print(f"val input {val_shape[1]}x{val_shape[0]} (w x h){rect}", flush=True)
        val_set = build_fred.val_dataset(index.val, val_shape,
                                         bad_image_log=os.path.join(run.run_dir, "bad_images.txt"), **caches["val"])
        run.log = RunLog(run.run_dir, run.start_epoch)
        run.epoch_end = EpochEnd(run.model, run.ema, run.criterion, build_fred.val_loader(cfg, val_set, device),
                                 index.val, device, build_fred.evaluation_settings(cfg, device),
                                 run.step.amp_dtype, run.run_dir, run.log, cfg["UNFREEZE_EPOCH"],
                                 cfg["EVAL_PERIOD"] if cfg["EVAL_MAP"] else 0, cfg["SAVE_PERIOD"], run.best)


def start_phase(run: Run, epoch: int, previous: Optional[build_fred.Phase]) -> build_fred.Phase:
    """Build the phase that epoch starts and say so (rank 0)."""
    cfg, world = run.cfg, dist.get_world_size()
    phase = build_fred.build_phase(cfg, build_fred.phase_name(cfg, epoch), run.model, run.criterion, run.train_set,
                                   run.device, dist.get_rank(), world, previous)
    if dist.is_main():
        for off in (build_fred.graph_off_reason(cfg, run.device, world),
                    build_fred.compile_off_reason(cfg, run.device, world)):
            if off:
                print(off, flush=True)
        if world > 1 and phase.grad_sync is not None:
            graph = ", after each CUDA graph replay" if phase.loss_fn is not None else ""
            print(f"gradients: all-reduced after each backward (DDP_GRAD_SYNC='allreduce'{graph})", flush=True)
        elif world > 1:
            print("gradients: averaged by DistributedDataParallel (DDP_GRAD_SYNC='ddp')", flush=True)
        print(f"phase {phase.name}: epochs {epoch + 1}-{phase.last_epoch}, batch {phase.batch} ({phase.per_rank} per "
              f"process x {world}), lr {phase.lr_max:.3g} -> {phase.lr_min:.3g} ({cfg['OPTIMIZER_TYPE']}, nbs 64 "
              f"rule), backbone {phase.name}", flush=True)
    return phase


def train_epoch(run: Run, phase: build_fred.Phase, epoch: int, stop: StopFlag) -> dict:
    """engine.train_one_epoch over epoch (from run.start_iter on a mid-epoch resume); a stop by NaN or signal raises
    RunStop (a signal after saving last.pth at the iteration reached)."""
    cfg, total = run.cfg, run.cfg["UNFREEZE_EPOCH"]
    run.train_set.set_epoch(epoch, special_aug=epoch < round(cfg["SPECIAL_AUG_RATIO"] * total))
    phase.sampler.set_epoch(epoch)
    n_iter, start = len(phase.loader), run.start_iter
    loader = phase.loader if start == 0 else build_fred.resumed_loader(cfg, phase, run.train_set, start, run.device,
                                                                       dist.get_rank())

    def lr_for(i: int) -> float:
        t = epoch + i / n_iter
        lr = lr_at(t, total, run.warmup, phase.lr_max, phase.lr_min, cfg["LR_DECAY_TYPE"])
        set_lr(run.optimizer, lr, t / run.warmup if run.warmup else 1.0, cfg["WARMUP_BIAS_LR"], cfg["MOMENTUM"],
               cfg["WARMUP_MOMENTUM"])
        return lr

    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    stats = engine.train_one_epoch(
        phase.net, run.ema if dist.is_main() else None, run.criterion, run.optimizer, run.scaler, loader, run.device,
        lr_for, run.step, start, stop=lambda i: stop.requested(i, cfg["LOG_INTERVAL"]),
        desc=f"epoch {epoch + 1}/{total} {phase.name}", show_progress=dist.is_main(), loss_fn=phase.loss_fn,
        epoch_sums=run.epoch_sums if start else None, grad_sync=phase.grad_sync)
    if phase.grad_sync is not None:  # every process holds rank 0's BatchNorm statistics, as under DDP
        dist.broadcast_state(run.model, buffers_only=True)
    run.start_iter, run.epoch_sums = 0, None
    if stats["stopped"] == "nan":
        raise RunStop(EXIT_NAN, f"stopping: {cfg['NAN_PATIENCE']} optimizer steps in a row had a non-finite loss "
                      f"(each was skipped) in epoch {epoch + 1}, {stats['skipped']} skipped this epoch. last.pth "
                      f"keeps the state after epoch {epoch}. Lower INIT_LR, check the data, or try FP16=False / "
                      "AMP_DTYPE='bf16'.")
    if stats["stopped"] == "signal":
        if dist.is_main():
            bad = nonfinite_tensor({"model": run.model, "EMA": run.ema.ema})
            if bad:
                raise RunStop(EXIT_NAN, nonfinite_message(f"the {bad} holds non-finite values", run.run_dir))
            atomic_save(run.state(epoch, stats["iteration"], phase.name, stats["epoch_sums"]),
                        os.path.join(run.run_dir, "last.pth"))
            print(f"saved {os.path.join(run.run_dir, 'last.pth')} at epoch {epoch + 1}, iteration "
                  f"{stats['iteration']}/{n_iter}; continue with --resume", file=sys.stderr, flush=True)
        raise RunStop(128 + stop.signum)
    return stats


def train(cfg: dict, modality: str, device: torch.device, resume: Optional[str], resume_state: Optional[dict],
          stop: StopFlag) -> int:
    """The training run (resume: --resume's path, resume_state: its checkpoint); returns the process exit code.

    Setup (the run folder is made, or config.json rewritten, once data, model and weights are ready), then the epoch
    loop: a new phase when the backbone is unfrozen, one epoch of training, then on rank 0 the epoch's end.
    """
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input shape: let cuDNN pick the fastest kernels
    torch.manual_seed(cfg["SEED"])
    run, phase, during, total, world = None, None, "setup", cfg["UNFREEZE_EPOCH"], dist.get_world_size()
    name = build_fred.phase_name(cfg, 0)  # the phase of the epoch under way
    try:
        run, index = setup_run(cfg, modality, device, resume, resume_state)
        if run.start_epoch < total:
            setup_data(run, index)
        elif dist.is_main():
            print(f"nothing to do: {run.start_epoch} epochs done, UNFREEZE_EPOCH={total} (raise it with --set "
                  "UNFREEZE_EPOCH=N to train longer)")
        run.t_start, hinted = time.perf_counter() - run.train_seconds, False
        for epoch in range(run.start_epoch, total):
            name = build_fred.phase_name(cfg, epoch)
            if phase is None or phase.name != name:
                during, phase_start = "CUDA graph capture", epoch
                phase = start_phase(run, epoch, phase)
            during, t0 = "train", time.perf_counter()
            stats = train_epoch(run, phase, epoch, stop)
            during, failure = "evaluation", None
            if dist.is_main():
                try:
                    print(run.epoch_end(epoch, name, phase.per_rank * world, stats, t0,
                                        lambda done: run.state(done, 0, name)), flush=True)
                except (NonFiniteError, torch.cuda.OutOfMemoryError, DiskFullError) as e:
                    failure = e  # raised below, once every process knows the run ends
                if not hinted and epoch != phase_start and stats["data_wait_pct"] > DATA_WAIT_HINT_PCT:
                    workers = build_fred.capped_workers(cfg["NUM_WORKERS"], dist.local_world_size())
                    print(data_wait_hint(cfg, stats["data_wait_pct"], workers, device.type == "cuda"), flush=True)
                    hinted = True
            code = dist.wait_for_main(exit_code(failure))  # also the epoch's barrier: rank 0 may stop the run
            if failure is not None:
                raise failure
            if code:
                raise RunStop(code)
            if stop.requested(0, 1):  # every process agrees on a signal
                raise RunStop(128 + stop.signum, f"stopped after epoch {epoch + 1}: last.pth saved; continue with "
                                                 "--resume" if dist.is_main() else "")
    except RunStop as e:
        if e.message:
            print(e.message, file=sys.stderr, flush=True)
        return e.code
    except NonFiniteError as e:
        print(nonfinite_message(str(e), run.run_dir), file=sys.stderr, flush=True)
        return EXIT_NAN
    except torch.cuda.OutOfMemoryError:
        print(oom_message(name, cfg, world, during, run.run_dir if run else None, resume), file=sys.stderr, flush=True)
        return EXIT_OOM
    finally:
        if run is not None and run.log is not None:
            run.log.close()
    return finish(run.run_dir, max(total, run.start_epoch), run.best, run.elapsed(), dist.is_main())


def finish(run_dir: str, epochs: int, best: dict, train_seconds: float, main_proc: bool) -> int:
    """Print where the results are and the final JSON line; exit code 0."""
    if main_proc:
        print(f"logs: {run_dir} (tensorboard --logdir {os.path.dirname(run_dir)}); weights: "
              f"{os.path.join(run_dir, 'best.pth')}, {os.path.join(run_dir, 'last.pth')}")
        print(json.dumps({"run_dir": run_dir, "epochs": epochs, "best_mAP50": best.get("mAP50"),
                          "best_mAP50_95": best.get("mAP50_95"), "best_epoch": best.get("epoch"),
                          "train_seconds": round(train_seconds, 1)}), flush=True)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point; returns the exit code (tests call it in-process)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # OpenCV without its own thread pool, in this process and the forked DataLoader workers: the workers already
    # fill the cores, and a pool inherited through fork is unsafe to use or reconfigure.
    cv2.setNumThreads(0)
    try:
        resume_state = load_checkpoint(args.resume) if args.resume else None
    except (FileNotFoundError, ValueError) as e:
        print(f"--resume: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if resume_state is not None and "optimizer" not in resume_state:
        print(f"--resume: {args.resume} holds weights only (best.pth and ep*.pth do); resume from the run's "
              "last.pth, or start a new run from these weights with --weights", file=sys.stderr)
        return EXIT_BAD_CONFIG
    modality = args.modality or (resume_state or {}).get("modality")
    if modality is None:
        print("--modality rgb|event|fusion is required", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if resume_state is not None and resume_state.get("modality", modality) != modality:
        print(f"--resume: the checkpoint was trained on {resume_state['modality']}, not {modality}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    try:
        cfg = resolve_config(args, resume_state, cuda)
    except ValueError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    conflict = resume_conflict(resume_state, cfg, args.resume) if resume_state is not None else None
    if conflict:
        print(f"--resume: {conflict}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.demo and not dist.launched_by_torchrun():
        demo_data(cfg["DATA_ROOT"], cuda)
    if args.check_data:
        return run_check_data(cfg, modality)

    device = dist.setup(args.device)
    stop = StopFlag()
    stop.install()
    try:
        try:
            build_fred.check_config(cfg, dist.get_world_size())
        except ValueError as e:
            print(f"config error: {e}", file=sys.stderr)
            return EXIT_BAD_CONFIG
        cfg["SAVE_DIR"] = cfg["SAVE_DIR"].format(modality=modality)
        return train(cfg, modality, device, args.resume, resume_state, stop)
    except FredDataError as e:
        print(f"data error: {e}{missing_root_hint(cfg, modality)}", file=sys.stderr)
        return EXIT_BAD_DATA
    except DiskFullError as e:
        last = os.path.join(e.folder, "last.pth")
        how = f"continue with --resume {last}" if os.path.isfile(last) else "start again"
        print(f"disk full: {e}. Free that much space there, then {how}", file=sys.stderr)
        return EXIT_DISK_FULL
    finally:
        stop.restore()
        dist.cleanup()


if __name__ == "__main__":
    sys.exit(main())
