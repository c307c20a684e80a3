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
from typing import Callable, Iterator, Optional

import config_fred
from utils.config import apply_overrides, config_dict

DEMO_ROOT = "data/fred_demo"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", choices=("rgb", "event"), help="which frames to train on (taken from --resume's "
                   "checkpoint when omitted)")
    p.add_argument("--data_root", help="FRED root (config DATA_ROOT)")
    p.add_argument("--split", help="canonical | challenging | random:<val_fraction>:<seed> | folder (config SPLIT)")
    p.add_argument("--phi", choices=("n", "s", "m", "l", "x"), help="YOLOv8 size (config PHI)")
    p.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--save_dir", help="parent folder of the run folder (config SAVE_DIR)")
    p.add_argument("--resume", help="last.pth of a run to continue (its config is the base; --set extends it)")
    p.add_argument("--weights", help="initial weights, ours or converted Ultralytics (config MODEL_PATH)")
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
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, Sampler  # noqa: E402

from datasets.augment import Augmentation  # noqa: E402
from datasets.fred_dataset import FredDataset, worker_init  # noqa: E402
from datasets.fred_index import FredDataError, build_fred_index  # noqa: E402
from datasets.loader import build_loader, capped_workers  # noqa: E402
from evaluation.evaluator import autocast_dtype, evaluate  # noqa: E402
from nets import build_model, freeze_backbone, load_weights  # noqa: E402
from nets.loss import DetectionLoss  # noqa: E402
from speed.compiled import build_batch_transform  # noqa: E402
from speed.cuda_graph import GraphedTrainLoss  # noqa: E402
from speed.frame_cache import FrameCache, open_frame_cache  # noqa: E402
from tools.check_data import SUMMARY_KEYS, check_data, format_summary, usable  # noqa: E402
from training import engine  # noqa: E402
from training.ema import ModelEMA  # noqa: E402
from training.optim import build_optimizer, lr_at, scale_lr_for_batch, set_lr  # noqa: E402
from training.run_log import RunLog  # noqa: E402
from utils import dist  # noqa: E402
from utils.checkpoint import (DiskFullError, atomic_save, load_checkpoint, remove_temporaries,  # noqa: E402
                              restore_training_state, training_state)

EXIT_BAD_CONFIG, EXIT_BAD_DATA, EXIT_OOM, EXIT_NAN, EXIT_DISK_FULL = 2, 2, 3, 4, 5  # the module docstring's list
IN_CHANNELS = 3  # the models trained here take 3-channel frames (RGB, or event frames stored as 3 channels)
RECOMMENDED_STEPS = {"sgd": 5e4, "adam": 1.5e4, "adamw": 1.5e4}  # the RTX 3090 tuning note's minimum optimizer steps
DATA_WAIT_HINT_PCT = 25.0  # an epoch (not a phase's first) waiting for data longer than this share prints advice
RESUME_ONLY = ("model_raw", "optimizer", "scaler", "rng", "ema_updates", "iteration",
               "epoch_sums")  # kept in last.pth only


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
        cfg.update({k: v for k, v in resume_state["config"].items() if k in cfg})
    elif args.demo:
        cfg.update(demo_config(cuda), DATA_ROOT=DEMO_ROOT)
    cfg = apply_overrides(cfg, args.set)
    for flag, key in (("data_root", "DATA_ROOT"), ("split", "SPLIT"), ("phi", "PHI"), ("save_dir", "SAVE_DIR"),
                      ("weights", "MODEL_PATH")):
        if getattr(args, flag) is not None:
            cfg[key] = getattr(args, flag)
    if args.no_eval_map:
        cfg["EVAL_MAP"] = False
    return cfg


def _whole(lo: int) -> tuple[Callable[[object], bool], str]:
    """Rule: an int (not a bool) >= lo."""
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo), f"a whole number >= {lo}"


def _number(lo: float, hi: float = math.inf, above_lo: bool = False, below_hi: bool = False,
            text: str = "") -> tuple[Callable[[object], bool], str]:
    """Rule: a finite int or float in [lo, hi] (open at lo / hi when above_lo / below_hi)."""
    def ok(v: object) -> bool:
        return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and (v > lo if above_lo else v >= lo) and (v < hi if below_hi else v <= hi))
    return ok, text or f"a number {'>' if above_lo else '>='} {lo:g}"


def _choice(*options: str) -> tuple[Callable[[object], bool], str]:
    """Rule: one of options."""
    return (lambda v: isinstance(v, str) and v in options), "one of " + ", ".join(map(repr, options))


def _formats_with_modality(v: object) -> bool:
    """Whether v is a str whose only {} field is {modality}."""
    try:
        return isinstance(v, str) and isinstance(v.format(modality="rgb"), str)
    except (KeyError, IndexError, ValueError):
        return False


_BOOL = (lambda v: isinstance(v, bool), "True or False")
_STR = (lambda v: isinstance(v, str), "a string")
_FRACTION = _number(0, 1, text="a number from 0 to 1")
_BELOW_ONE = _number(0, 1, below_hi=True, text="a number from 0 to below 1")
# Every key of config_fred.py: (accepts(value), what it accepts). check_config applies them, then the rules that
# tie keys together.
CONFIG_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "DATA_ROOT": _STR, "SPLIT": _STR, "RGB_IMAGE_DIR": _STR, "NUM_CLASSES": _whole(1),
    "CLASS_NAMES": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(n, str) for n in v),
                    "a list of names, one per class (NUM_CLASSES)"),
    "FRAME_STRIDE": _whole(1), "VAL_FRAME_STRIDE": _whole(1), "STRICT_LABELS": _BOOL, "INDEX_CACHE_DIR": _STR,
    "PHI": _choice("n", "s", "m", "l", "x"),
    "INPUT_SHAPE": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 and x % 32 == 0 for x in v),
        "[height, width], positive multiples of 32"),
    "MODEL_PATH": _STR, "INIT_EPOCH": _whole(0), "FREEZE_EPOCH": _whole(0), "UNFREEZE_EPOCH": _whole(1),
    "FREEZE_TRAIN": _BOOL, "FREEZE_BATCH_SIZE": _whole(1), "UNFREEZE_BATCH_SIZE": _whole(1),
    "INIT_LR": _number(0, above_lo=True), "MIN_LR": _number(0), "OPTIMIZER_TYPE": _choice(*RECOMMENDED_STEPS),
    "MOMENTUM": _BELOW_ONE, "WEIGHT_DECAY": _number(0), "LR_DECAY_TYPE": _choice("cos", "step"),
    "WARMUP_EPOCHS": _whole(0), "WARMUP_MIN_ITERS": _whole(0), "GRAD_CLIP": _number(0), "EMA_DECAY": _BELOW_ONE,
    "WARMUP_BIAS_LR": _number(0), "WARMUP_MOMENTUM": _BELOW_ONE,
    "SEED": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "FP16": _BOOL, "AMP_DTYPE": _choice("fp16", "bf16"), "CHANNELS_LAST": _BOOL, "CUDA_GRAPH": _BOOL,
    "CUDA_GRAPH_TARGETS_PER_IMAGE": _whole(1), "MOSAIC": _BOOL, "MOSAIC_PROB": _FRACTION, "MIXUP": _BOOL,
    "MIXUP_PROB": _FRACTION, "SPECIAL_AUG_RATIO": _FRACTION, "HSV_H": _FRACTION, "HSV_S": _FRACTION,
    "HSV_V": _FRACTION, "HSV_ON_GPU": _BOOL, "HSV_COMPILE": _BOOL, "FLIP_LR": _FRACTION,
    "DEGREES": _number(0, 180, text="a number from 0 to 180"), "TRANSLATE": _FRACTION, "SCALE": _BELOW_ONE,
    "MIN_BOX_SIZE": _number(0), "NUM_WORKERS": _whole(0), "EVAL_WORKERS": _whole(0), "BATCH_RING": _BOOL,
    "FRAME_CACHE": _choice("off", "disk"), "FRAME_CACHE_MAX_GB": _number(0), "FRAME_CACHE_DIR": _STR,
    "SYNC_BN": _BOOL, "LOG_INTERVAL": _whole(1), "NAN_PATIENCE": _whole(1),
    "SAVE_DIR": (_formats_with_modality, "a folder path, where {modality} is the only {} field"),
    "SAVE_PERIOD": _whole(1), "EVAL_PERIOD": _whole(1), "EVAL_MAP": _BOOL, "CONFIDENCE": _FRACTION,
    "NMS_IOU": _FRACTION, "MAX_DET": _whole(1), "EVAL_BATCH_SIZE": _whole(1),
}


def check_config(cfg: dict, world: int) -> None:
    """Raise ValueError, naming the key and what it accepts, for a value that cannot work (CONFIG_RULES, then the
    batch sizes against the process count, CLASS_NAMES against NUM_CLASSES, SGD's momentum)."""
    for key, (accepts, text) in CONFIG_RULES.items():
        if not accepts(cfg[key]):
            raise ValueError(f"{key} must be {text}, got {cfg[key]!r}")
    for key in ("FREEZE_BATCH_SIZE", "UNFREEZE_BATCH_SIZE"):
        if cfg[key] < world:
            raise ValueError(f"{key}={cfg[key]} is the global batch size: it must be at least the number of "
                             f"processes ({world})")
    if len(cfg["CLASS_NAMES"]) != cfg["NUM_CLASSES"]:
        raise ValueError(f"CLASS_NAMES must be a list of names, one per class (NUM_CLASSES={cfg['NUM_CLASSES']}), "
                         f"got {len(cfg['CLASS_NAMES'])}: {cfg['CLASS_NAMES']!r}")
    if cfg["OPTIMIZER_TYPE"] == "sgd" and cfg["MOMENTUM"] == 0:
        raise ValueError("MOMENTUM must be above 0 with OPTIMIZER_TYPE='sgd' (nesterov momentum), got 0")


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
    return dist.broadcast_object(run_dir)


def resume_conflict(state: dict, cfg: dict, path: str) -> Optional[str]:
    """Why the checkpoint at path cannot continue with cfg (another model size, class count, input channels or
    optimizer than it holds), or None."""
    for key, held, asked, how in (("PHI", state.get("phi"), cfg["PHI"], "--phi / --set PHI"),
                                  ("NUM_CLASSES", state.get("num_classes"), cfg["NUM_CLASSES"], "--set NUM_CLASSES"),
                                  ("OPTIMIZER_TYPE", state["config"].get("OPTIMIZER_TYPE"), cfg["OPTIMIZER_TYPE"],
                                   "--set OPTIMIZER_TYPE")):
        if held is not None and held != asked:
            return (f"{path} was trained with {key}={held!r}, this run asks for {asked!r} ({how}). A resumed run "
                    f"keeps the checkpoint's model, classes and optimizer: drop the override, or start a new run "
                    f"from these weights with --weights {path}")
    if state.get("in_channels", IN_CHANNELS) != IN_CHANNELS:
        return (f"{path} holds a model with {state['in_channels']} input channels; train_fred.py trains models with "
                f"{IN_CHANNELS} input channels (RGB or event frames)")
    return None


def step_advice(cfg: dict, n_train: int, advise: bool = True) -> str:
    """The RTX 3090 tuning note's check: total optimizer steps against 5e4 (SGD) / 1.5e4 (Adam), with the epochs
    to reach it; advise=False (the demo sample) gives the count only."""
    total = cfg["UNFREEZE_EPOCH"]
    frozen = min(cfg["FREEZE_EPOCH"], total) if cfg["FREEZE_TRAIN"] else 0
    per_frozen = max(1, n_train // cfg["FREEZE_BATCH_SIZE"])  # training loaders drop the incomplete last batch
    per_unfrozen = max(1, n_train // cfg["UNFREEZE_BATCH_SIZE"])
    steps = frozen * per_frozen + (total - frozen) * per_unfrozen
    wanted = RECOMMENDED_STEPS[cfg["OPTIMIZER_TYPE"]]
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
class SkipSampler(Sampler):
    """The indices of `sampler` after the first `skip`: continue an epoch that was interrupted."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it)
        return it

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)


def make_loader(dataset: FredDataset, batch_size: int, sampler: Sampler, workers: int, device: torch.device,
                seed: int, persistent: bool = True, ring: bool = True) -> DataLoader:
    """DataLoader of collated uint8 batches: pinned memory on CUDA (with ring and workers, through a shared-memory
    ring of batches: speed/batch_ring.py), persistent workers, seeded worker RNG.

    Training loaders drop the last incomplete batch, when there is a complete one (every step has one shape: no
    cuDNN re-tuning, CUDA graphs apply).
    """
    return build_loader(dataset, batch_size, sampler, workers, device.type == "cuda", dataset.image_shape,
                        ring=ring, persistent_workers=persistent and workers > 0, worker_init_fn=worker_init,
                        generator=torch.Generator().manual_seed(seed),
                        drop_last=dataset.train and len(sampler) >= batch_size)


def augmentation(cfg: dict, hsv_in_batch: bool = False) -> Augmentation:
    """The training augmentation of cfg; hsv_in_batch leaves the HSV jitter to the batch transform."""
    return Augmentation(mosaic=cfg["MOSAIC"], mosaic_prob=cfg["MOSAIC_PROB"], mixup=cfg["MIXUP"],
                        mixup_prob=cfg["MIXUP_PROB"], hsv=(cfg["HSV_H"], cfg["HSV_S"], cfg["HSV_V"]),
                        flip_lr=cfg["FLIP_LR"], degrees=cfg["DEGREES"], translate=cfg["TRANSLATE"],
                        scale=cfg["SCALE"], min_box_size=cfg["MIN_BOX_SIZE"], hsv_in_batch=hsv_in_batch)


def train_dataset(cfg: dict, frames: list, run_dir: str, frame_cache: Optional[FrameCache] = None,
                  hsv_in_batch: bool = False) -> FredDataset:
    """Augmented training samples configured from cfg; hsv_in_batch leaves the HSV jitter to the training loop."""
    return FredDataset(frames, tuple(cfg["INPUT_SHAPE"]), augmentation(cfg, hsv_in_batch), frame_cache=frame_cache,
                       bad_image_log=os.path.join(run_dir, "bad_images.txt"), seed=cfg["SEED"])


def configured_frame_cache(cfg: dict, frames: list, what: str, progress: bool) -> Optional[FrameCache]:
    """The decoded-frame cache of frames for FRAME_CACHE="disk" (built when absent or stale), else None.

    A cache that cannot be written (disk full, no permission) is reported and training decodes the files instead.
    """
    if cfg["FRAME_CACHE"] == "off":
        return None
    return open_frame_cache([f.image for f in frames], max(cfg["INPUT_SHAPE"]), cfg["FRAME_CACHE_DIR"],
                            cfg["DATA_ROOT"], cfg["FRAME_CACHE_MAX_GB"] * 1e9, progress, f"frame cache ({what})")


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


def graphed_loss(cfg: dict, model: torch.nn.Module, criterion: DetectionLoss, per_rank: int, device: torch.device,
                 amp_dtype: Optional[torch.dtype], channels_last: bool, world: int) -> Optional[GraphedTrainLoss]:
    """The CUDA-graphed training forward + loss of this phase's model and batch (CUDA_GRAPH), or None (eager)."""
    if not cfg["CUDA_GRAPH"] or device.type != "cuda":
        return None
    if world > 1:
        if dist.is_main():
            print("CUDA_GRAPH: multi-GPU runs train without CUDA graphs", flush=True)
        return None
    h, w = cfg["INPUT_SHAPE"]
    sample = torch.empty((per_rank, model.in_channels, h, w), device=device,
                         memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    model.train()
    return GraphedTrainLoss(model, criterion, sample, per_rank * cfg["CUDA_GRAPH_TARGETS_PER_IMAGE"], amp_dtype)


def run_check_data(cfg: dict, modality: str) -> int:
    """--check_data: index, decode every image, print the summary and the JSON line; 0 when usable."""
    try:
        index = build_index(cfg, modality)
    except FredDataError as e:
        print(f"data check failed: {e}{missing_root_hint(cfg, modality)}", file=sys.stderr)
        return EXIT_BAD_DATA
    summary = check_data(index, workers=min(cfg["NUM_WORKERS"], os.cpu_count() or 1), progress=True)
    print(format_summary(summary), flush=True)
    print(json.dumps({k: summary[k] for k in SUMMARY_KEYS}), flush=True)
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


def build_index(cfg: dict, modality: str):
    """The FRED index for cfg and modality."""
    return build_fred_index(cfg["DATA_ROOT"], modality, split=cfg["SPLIT"], frame_stride=cfg["FRAME_STRIDE"],
                            val_frame_stride=cfg["VAL_FRAME_STRIDE"], num_classes=cfg["NUM_CLASSES"],
                            strict_labels=cfg["STRICT_LABELS"], rgb_image_dir=cfg["RGB_IMAGE_DIR"],
                            cache_dir=cfg["INDEX_CACHE_DIR"] or None)


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
def oom_message(phase: str, cfg: dict, per_rank: int, world: int, during: str, run_dir: str) -> str:
    """The RTX 3090 tuning note's advice for CUDA out of memory: which batch size to lower (or CUDA_GRAPH to turn off
    when a training graph is in use), and how to go on. during: "train", "CUDA graph capture" or "evaluation"."""
    if during == "evaluation":
        key = "EVAL_BATCH_SIZE"
    else:
        key = "FREEZE_BATCH_SIZE" if phase == "frozen" else "UNFREEZE_BATCH_SIZE"
    batch = cfg[key]
    lower = max(world, (batch * 3 // 4) // world * world)
    graph = cfg["CUDA_GRAPH"] and world == 1 and during != "evaluation"
    other = (" or --set CUDA_GRAPH=False (the graph holds memory of its own)" if graph else "") + (
        "" if cfg["FP16"] else "; FP16 = True also saves memory")
    last = os.path.join(run_dir, "last.pth")
    how = f"continue with --resume {last} --set {key}={lower}" if os.path.isfile(last) else "start again"
    return (f"CUDA out of memory during {during} in the {phase} phase at batch size {batch} ({per_rank} per GPU): "
            f"lower {key}, e.g. --set {key}={lower}{other}. Nothing was saved for this epoch; {how}")


def train(cfg: dict, modality: str, device: torch.device, resume: Optional[str], resume_state: Optional[dict],
          stop: StopFlag) -> int:
    """The training run (resume: --resume's path, resume_state: its checkpoint); returns the process exit code.

    The run folder is made (or, resuming, config.json rewritten) once the data, model and weights are ready.
    """
    rank, world, main_proc = dist.get_rank(), dist.get_world_size(), dist.is_main()
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # fixed input shape: let cuDNN pick the fastest kernels
    torch.manual_seed(cfg["SEED"])
    index = build_index(cfg, modality)
    if main_proc:
        print(f"{modality}: {len(index.train)} train frames ({len(index.train_sequences)} sequences), "
              f"{len(index.val)} val frames ({len(index.val_sequences)} sequences) from {index.stats['root']}")
        on_demo_sample = os.path.abspath(cfg["DATA_ROOT"]) == os.path.abspath(DEMO_ROOT)  # --demo or its resume
        print("steps: " + step_advice(cfg, len(index.train), advise=not on_demo_sample), flush=True)

    model = build_model(cfg["PHI"], cfg["NUM_CLASSES"], in_channels=IN_CHANNELS)
    if cfg["MODEL_PATH"] and resume_state is None:
        try:
            info = load_weights(model, cfg["MODEL_PATH"])
        except (OSError, ValueError) as e:
            print(f"MODEL_PATH / --weights {cfg['MODEL_PATH']}: {e}", file=sys.stderr)
            return EXIT_BAD_CONFIG
        if main_proc:
            print(f"weights {cfg['MODEL_PATH']}: loaded {info['loaded']}/{info['total']} tensors, skipped "
                  f"{info['skipped']} of the file's ({', '.join(info['skipped_keys'][:4])}"
                  f"{' ...' if info['skipped'] > 4 else ''}), {info['missing']} model tensors kept their init")
    channels_last = cuda and cfg["CHANNELS_LAST"]
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if cfg["SYNC_BN"] and world > 1:
        if cuda:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif main_proc:
            print("SYNC_BN needs CUDA: BatchNorm statistics stay per process")
    ema = ModelEMA(model, cfg["EMA_DECAY"])
    optimizer = build_optimizer(model, cfg["OPTIMIZER_TYPE"], cfg["INIT_LR"], cfg["MOMENTUM"], cfg["WEIGHT_DECAY"])
    amp_dtype = autocast_dtype(cfg["AMP_DTYPE"]) if cuda and cfg["FP16"] else None
    fixed_scale = amp_dtype is not torch.float16  # the scaler then only detects non-finite gradients
    scaler = torch.amp.GradScaler(device.type, init_scale=1.0 if fixed_scale else 2.0 ** 16)
    criterion = DetectionLoss(cfg["NUM_CLASSES"], strides=tuple(model.stride.tolist()), reg_max=model.reg_max)

    start_epoch, start_iter, best, train_seconds = cfg["INIT_EPOCH"], 0, {"fitness": None}, 0.0
    epoch_sums = None  # loss sums of the first start_iter iterations of an interrupted epoch
    if resume_state is not None:
        restore_training_state(resume_state, model, ema, optimizer, scaler)
        start_epoch, start_iter = resume_state["epoch"], resume_state["iteration"]
        epoch_sums = resume_state.get("epoch_sums")
        best, train_seconds = dict(resume_state["best"]), resume_state.get("train_seconds", 0.0)
    run_dir = open_run_dir(cfg, modality, resume)
    total = cfg["UNFREEZE_EPOCH"]
    if start_epoch >= total:
        if main_proc:
            print(f"nothing to do: {start_epoch} epochs done, UNFREEZE_EPOCH={total} "
                  f"(raise it with --set UNFREEZE_EPOCH=N to train longer)")
        return finish(run_dir, start_epoch, best, train_seconds, main_proc)
    frozen_epochs = cfg["FREEZE_EPOCH"] if cfg["FREEZE_TRAIN"] else 0
    workers = capped_workers(cfg["NUM_WORKERS"])
    train_cache = val_cache = None
    if main_proc:  # rank 0 builds the caches, the other processes then open the train one
        train_cache = configured_frame_cache(cfg, index.train, "train", progress=True)
        val_cache = configured_frame_cache(cfg, index.val, "val", progress=True)
    dist.barrier()
    if not main_proc:
        train_cache = configured_frame_cache(cfg, index.train, "train", progress=False)
    train_set = train_dataset(cfg, index.train, run_dir, train_cache, hsv_in_batch=cfg["HSV_ON_GPU"] and cuda)
    batch_transform = build_batch_transform(train_set.augmentation, compiled=cfg["HSV_COMPILE"] and cuda)
    step_options = engine.StepOptions(log_interval=cfg["LOG_INTERVAL"], nan_patience=cfg["NAN_PATIENCE"],
                                      amp_dtype=amp_dtype, grad_clip=cfg["GRAD_CLIP"], channels_last=channels_last,
                                      batch_transform=batch_transform)
    val_loader = None
    if main_proc:
        val_set = FredDataset(index.val, tuple(cfg["INPUT_SHAPE"]), frame_cache=val_cache,
                              bad_image_log=os.path.join(run_dir, "bad_images.txt"))
        val_loader = make_loader(val_set, cfg["EVAL_BATCH_SIZE"], torch.utils.data.SequentialSampler(val_set),
                                 capped_workers(cfg["EVAL_WORKERS"]), device, cfg["SEED"],
                                 ring=cfg["BATCH_RING"])
    log = RunLog(run_dir, start_epoch) if main_proc else None
    first_batch = cfg["FREEZE_BATCH_SIZE"] if frozen_epochs > 0 else cfg["UNFREEZE_BATCH_SIZE"]
    warmup = max(cfg["WARMUP_EPOCHS"], cfg["WARMUP_MIN_ITERS"] /
                 max(1, math.ceil(len(index.train) / world) // (first_batch // world)))

    phase, net, loader, sampler, per_rank, lr_fit, min_fit = None, model, None, None, 0, 0.0, 0.0
    loss_fn, phase_start, data_hinted = None, start_epoch, False
    epoch = start_epoch
    t_start = time.perf_counter() - train_seconds
    try:
        for epoch in range(start_epoch, total):
            if phase != ("frozen" if epoch < frozen_epochs else "unfrozen"):
                phase, phase_start = ("frozen" if epoch < frozen_epochs else "unfrozen"), epoch
                batch = cfg["FREEZE_BATCH_SIZE"] if phase == "frozen" else cfg["UNFREEZE_BATCH_SIZE"]
                per_rank = batch // world
                freeze_backbone(model, phase == "frozen")
                lr_fit, min_fit = scale_lr_for_batch(cfg["INIT_LR"], cfg["MIN_LR"], batch, cfg["OPTIMIZER_TYPE"])
                sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg["SEED"])
                loader = make_loader(train_set, per_rank, sampler, workers, device, cfg["SEED"] + 1000 * rank,
                                     ring=cfg["BATCH_RING"])
                net = (DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
                       if world > 1 else model)
                loss_fn = None  # the previous phase's graph holds memory: drop it first
                try:
                    loss_fn = graphed_loss(cfg, model, criterion, per_rank, device, amp_dtype, channels_last, world)
                except torch.cuda.OutOfMemoryError:
                    print(oom_message(phase, cfg, per_rank, world, "CUDA graph capture", run_dir), file=sys.stderr,
                          flush=True)
                    return EXIT_OOM
                if main_proc:
                    print(f"phase {phase}: epochs {epoch + 1}-{frozen_epochs if phase == 'frozen' else total}, batch "
                          f"{batch} ({per_rank} per process x {world}), lr {lr_fit:.3g} -> {min_fit:.3g} "
                          f"({cfg['OPTIMIZER_TYPE']}, nbs 64 rule), backbone {phase}", flush=True)
            train_set.set_epoch(epoch, special_aug=epoch < round(cfg["SPECIAL_AUG_RATIO"] * total))
            sampler.set_epoch(epoch)
            n_iter = len(loader)
            epoch_loader = loader if start_iter == 0 else make_loader(
                train_set, per_rank, SkipSampler(sampler, start_iter * per_rank), workers, device,
                cfg["SEED"] + 1000 * rank, persistent=False, ring=cfg["BATCH_RING"])

            def lr_for(i: int, e: int = epoch, n: int = n_iter) -> float:
                t = e + i / n
                lr = lr_at(t, total, warmup, lr_fit, min_fit, cfg["LR_DECAY_TYPE"])
                set_lr(optimizer, lr, t / warmup if warmup else 1.0, cfg["WARMUP_BIAS_LR"], cfg["MOMENTUM"],
                       cfg["WARMUP_MOMENTUM"])
                return lr

            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            try:
                stats = engine.train_one_epoch(
                    net, ema if main_proc else None, criterion, optimizer, scaler, epoch_loader, device, lr_for,
                    step_options, start_iter, stop=lambda i: stop.requested(i, cfg["LOG_INTERVAL"]),
                    desc=f"epoch {epoch + 1}/{total} {phase}", show_progress=main_proc, loss_fn=loss_fn,
                    epoch_sums=epoch_sums if start_iter else None)
            except torch.cuda.OutOfMemoryError:
                print(oom_message(phase, cfg, per_rank, world, "train", run_dir), file=sys.stderr, flush=True)
                return EXIT_OOM
            train_seconds = time.perf_counter() - t_start
            if stats["stopped"] == "nan":
                print(f"stopping: {cfg['NAN_PATIENCE']} optimizer steps in a row had a non-finite loss (each was "
                      f"skipped) in epoch {epoch + 1}, {stats['skipped']} skipped this epoch. last.pth keeps the "
                      f"state after epoch {epoch}. Lower INIT_LR, check the data, or try FP16=False / "
                      "AMP_DTYPE='bf16'.",
                      file=sys.stderr, flush=True)
                return EXIT_NAN
            if stats["stopped"] == "signal":
                if main_proc:
                    bad = nonfinite_tensor({"model": model, "EMA": ema.ema})
                    if bad:
                        print(nonfinite_message(f"the {bad} holds non-finite values", run_dir), file=sys.stderr)
                        return EXIT_NAN
                    save(run_dir, "last.pth", training_state(
                        model, ema, optimizer, scaler, epoch, stats["iteration"], phase, best, cfg,
                        meta(model, modality, train_seconds), stats["epoch_sums"]))
                    print(f"saved {os.path.join(run_dir, 'last.pth')} at epoch {epoch + 1}, iteration "
                          f"{stats['iteration']}/{n_iter}; continue with --resume", file=sys.stderr, flush=True)
                return 128 + stop.signum
            start_iter = 0
            if main_proc:
                code = end_of_epoch(cfg, modality, run_dir, epoch, phase, stats, t0, model, ema,
                                    optimizer, scaler, criterion, val_loader, index.val, device, amp_dtype,
                                    channels_last, best, lambda: time.perf_counter() - t_start, per_rank * world, log)
                if code:
                    return code
                if not data_hinted and epoch != phase_start and stats["data_wait_pct"] > DATA_WAIT_HINT_PCT:
                    print(data_wait_hint(cfg, stats["data_wait_pct"], workers, cuda), flush=True)
                    data_hinted = True
            train_seconds = time.perf_counter() - t_start
            dist.barrier()
            if stop.signum:
                if main_proc:
                    print(f"stopped after epoch {epoch + 1}: last.pth saved; continue with --resume", file=sys.stderr)
                return 128 + stop.signum
    finally:
        if log is not None:
            log.close()
    return finish(run_dir, total, best, train_seconds, main_proc)


def meta(model: torch.nn.Module, modality: str, train_seconds: float) -> dict:
    """Checkpoint fields that describe the model (what eval_fred.py needs) and the run."""
    return {"phi": model.phi, "num_classes": model.num_classes, "in_channels": model.in_channels,
            "modality": modality, "train_seconds": train_seconds}


def save(run_dir: str, name: str, state: dict) -> None:
    """Atomically write state to run_dir/name."""
    atomic_save(state, os.path.join(run_dir, name))


def nonfinite_tensor(modules: dict[str, torch.nn.Module]) -> Optional[str]:
    """Name of the first floating-point parameter or buffer of modules ({label: module}) holding NaN or inf, or None.

    One fused max-abs pass over all tensors and one host sync: for the end of an epoch, not for every step.
    """
    named = [(f"{label} {name}", t) for label, module in modules.items()
             for name, t in module.state_dict().items() if t.is_floating_point()]
    finite = torch.stack(torch._foreach_norm([t for _, t in named], math.inf)).isfinite()
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


def nonfinite_message(what: str, run_dir: str) -> str:
    """Why the run stops on a non-finite model or val loss, what was kept and what to try."""
    last = os.path.join(run_dir, "last.pth")
    kept = (f"; {last} is left as it was (continue from it with --resume {last} and a change below)"
            if os.path.isfile(last) else "")
    return (f"stopping: {what}; nothing was saved for this epoch{kept}. Lower INIT_LR (with SGD also WARMUP_BIAS_LR), "
            "check the data, or try FP16=False / AMP_DTYPE='bf16'.")


def val_loss_fitness(val: dict) -> float:
    """Fitness of an epoch by val loss (no mAP): -loss, or -inf when its box part is 0. Then no prediction overlapped
    any object (no anchor got a target score): an untrained or collapsed model, whose loss is small for that
    reason, must not become best.pth ahead of epochs that detect something."""
    return -val["loss"] if val["box"] > 0 else -math.inf


def end_of_epoch(cfg: dict, modality: str, run_dir: str, epoch: int, phase: str, stats: dict, epoch_start: float,
                 model: torch.nn.Module, ema: ModelEMA, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, criterion: DetectionLoss, val_loader: DataLoader, val_frames: list,
                 device: torch.device, amp_dtype: Optional[torch.dtype], channels_last: bool, best: dict,
                 elapsed: Callable[[], float], batch: int, log: RunLog) -> int:
    """Rank 0 after an epoch: val loss, mAP when due, best/last/periodic checkpoints, logs. Returns an exit code.

    A model, EMA or val loss with a non-finite value stops the run (EXIT_NAN) before anything is saved.
    """
    done, total = epoch + 1, cfg["UNFREEZE_EPOCH"]
    bad = nonfinite_tensor({"model": model, "EMA": ema.ema})
    if bad:
        print(nonfinite_message(f"after epoch {done} the {bad} holds non-finite values", run_dir), file=sys.stderr,
              flush=True)
        return EXIT_NAN
    try:
        metrics = None
        if cfg["EVAL_MAP"] and (done % cfg["EVAL_PERIOD"] == 0 or done == total):  # mAP and val loss in one pass
            result = evaluate(ema.ema, val_loader, val_frames, device, cfg["CONFIDENCE"], cfg["NMS_IOU"],
                              cfg["MAX_DET"], amp=amp_dtype is not None, amp_dtype=autocast_dtype(cfg["AMP_DTYPE"]),
                              class_names=cfg["CLASS_NAMES"], data_root=cfg["DATA_ROOT"],
                              channels_last=channels_last, criterion=criterion)
            metrics, val = result.metrics, result.loss
        else:
            val = engine.evaluate_loss(ema.ema, criterion, val_loader, device, amp_dtype, channels_last)
    except torch.cuda.OutOfMemoryError:
        print(oom_message(phase, cfg, cfg["EVAL_BATCH_SIZE"], 1, "evaluation", run_dir), file=sys.stderr,
              flush=True)
        return EXIT_OOM
    if not math.isfinite(val["loss"]):
        print(nonfinite_message(f"the val loss after epoch {done} is {val['loss']}", run_dir), file=sys.stderr,
              flush=True)
        return EXIT_NAN
    fitness = metrics["fitness"] if metrics else (None if cfg["EVAL_MAP"] else val_loss_fitness(val))
    improved = fitness is not None and (best.get("fitness") is None or fitness > best["fitness"])
    if improved:
        best.update(fitness=fitness, epoch=done, val_loss=val["loss"],
                    mAP50=metrics["mAP50"] if metrics else None, mAP50_95=metrics["mAP50_95"] if metrics else None)
    epoch_s = time.perf_counter() - epoch_start  # training, val loss and mAP
    state = training_state(model, ema, optimizer, scaler, done, 0, phase, best, cfg,
                           meta(model, modality, elapsed()))
    save(run_dir, "last.pth", state)
    weights = {k: v for k, v in state.items() if k not in RESUME_ONLY}  # best and periodic: EMA weights + meta
    if improved:
        save(run_dir, "best.pth", weights)
    if done % cfg["SAVE_PERIOD"] == 0 or done == total:
        save(run_dir, f"ep{done:03d}-loss{stats['loss']:.3f}-val_loss{val['loss']:.3f}.pth", weights)
    log.log_epoch({"epoch": done, "phase": phase, "batch_size": batch, "lr": stats["lr"],
                   "train_loss": stats["loss"], "train_box": stats["box"], "train_cls": stats["cls"],
                   "train_dfl": stats["dfl"], "val_loss": val["loss"], "val_box": val["box"], "val_cls": val["cls"],
                   "val_dfl": val["dfl"], "mAP50": metrics["mAP50"] if metrics else None,
                   "mAP50_95": metrics["mAP50_95"] if metrics else None, "fitness": fitness,
                   "img_per_s": stats["img_per_s"], "epoch_s": epoch_s, "gpu_mem_GB": stats["gpu_mem_GB"],
                   "skipped_steps": stats["skipped"], "data_wait_pct": stats["data_wait_pct"]})
    line = (f"epoch {done}/{total}: loss {stats['loss']:.4f} (box {stats['box']:.4f} cls {stats['cls']:.4f} "
            f"dfl {stats['dfl']:.4f}), val loss {val['loss']:.4f}, {stats['img_per_s']:.0f} img/s "
            f"({stats['data_wait_pct']:.0f}% waiting for data), {epoch_s:.0f} s")
    if stats["skipped"]:
        line += f", {stats['skipped']} steps skipped (non-finite loss)"
    if metrics:
        log.log_map(done, metrics)
        line += f"; mAP50 {metrics['mAP50']:.4f} mAP50:95 {metrics['mAP50_95']:.4f}"
    print(line + (" (best)" if improved else ""), flush=True)
    return 0


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
        print("--modality rgb|event is required", file=sys.stderr)
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
            check_config(cfg, dist.get_world_size())
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
