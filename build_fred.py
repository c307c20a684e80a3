"""Turn a config (config_fred.py's keys) into what train_fred.py, eval_fred.py and the benches run.

One build path: the config checks, the FRED index, the frame caches, the datasets and loaders, the model with its
weights, the loss, the evaluation settings, and a training phase (frozen or unfrozen: sampler, loader, model
wrapper, loss function, batch size, learning-rate range). The two scripts read the config and call these; the code
below them gets plain values. Only this module chooses the speed machinery (speed/: frame cache, batch ring, CUDA
graph); with every speed key off, what it returns is the plain PyTorch loop's objects.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

from datasets.augment import Augmentation
from datasets.event_frames import EVENT_PALETTE, INPUT_CHANNELS
from datasets.fred_dataset import FredDataset, worker_init
from datasets.fred_index import FredIndex, build_fred_index
from datasets.image_io import read_image
from evaluation.evaluator import autocast_dtype
from nets import build_model, freeze_backbone, load_weights
from nets.fusion import FUSION_KINDS, build_fusion_model, load_fusion_weights
from nets.loss import ASSIGNERS, DetectionLoss
from nets.yolov8 import ARCHS
from speed.batch_ring import build_loader
from speed.compiled import build_batch_transform, compile_backends, compile_model
from speed.cuda_graph import GraphedTrainLoss
from speed.frame_cache import FrameCache, open_frame_cache
from training.engine import StepOptions
from training.optim import scale_lr_for_batch
from utils import dist
from utils.letterbox import rect_shape

GRAD_SYNCS = ("ddp", "allreduce")  # DDP_GRAD_SYNC: how gradients are averaged over torchrun's processes
RECOMMENDED_STEPS = {"sgd": 5e4, "adam": 1.5e4, "adamw": 1.5e4}  # the RTX 3090 tuning note's minimum optimizer steps
MODALITIES = ("rgb", "event", "fusion")
MAX_STRIDE = max(max(strides) for strides in ARCHS.values())  # any ARCH's coarsest stride (32): EVAL_RECT rounds to it
LOGGER = logging.getLogger(__name__)


def input_channels(modality: str) -> int:
    """Network input channels of a modality: 3 (RGB, or event frames in their three colours), 5 for fusion."""
    return INPUT_CHANNELS if modality == "fusion" else 3


# ----------------------------------------------------------------------------------------------- config checks
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
    "FUSION_PAIR_TOLERANCE": _number(0, 1, above_lo=True, below_hi=True, text="seconds, above 0 and below 1"),
    "FUSION": _choice(*FUSION_KINDS), "FUSION_RGB_WEIGHTS": _STR, "FUSION_EVENT_WEIGHTS": _STR,
    "PHI": _choice("n", "s", "m", "l", "x"), "ARCH": _choice(*ARCHS), "ASSIGNER": _choice(*ASSIGNERS),
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
    "CUDA_GRAPH_TARGETS_PER_IMAGE": _whole(1),
    "COMPILE_MODEL": (lambda v: v == "" or v in compile_backends(),
                      "\"\" (off) or a torch.compile backend name, e.g. 'inductor' (all: "
                      "torch.compiler.list_backends(exclude_tags=()))"),
    "MOSAIC": _BOOL, "MOSAIC_PROB": _FRACTION, "MIXUP": _BOOL,
    "MIXUP_PROB": _FRACTION, "FUSION_STREAM_DROPOUT": _FRACTION, "SPECIAL_AUG_RATIO": _FRACTION,
    "HSV_H": _FRACTION, "HSV_S": _FRACTION,
    "HSV_V": _FRACTION, "HSV_ON_GPU": _BOOL, "HSV_COMPILE": _BOOL, "FLIP_LR": _FRACTION,
    "DEGREES": _number(0, 180, text="a number from 0 to 180"), "TRANSLATE": _FRACTION, "SCALE": _BELOW_ONE,
    "MIN_BOX_SIZE": _number(0), "NUM_WORKERS": _whole(0), "EVAL_WORKERS": _whole(0), "BATCH_RING": _BOOL,
    "FRAME_CACHE": _choice("off", "disk"), "FRAME_CACHE_MAX_GB": _number(0), "FRAME_CACHE_DIR": _STR,
    "SYNC_BN": _BOOL, "DDP_GRAD_SYNC": _choice(*GRAD_SYNCS), "LOG_INTERVAL": _whole(1), "NAN_PATIENCE": _whole(1),
    "SAVE_DIR": (_formats_with_modality, "a folder path, where {modality} is the only {} field"),
    "SAVE_PERIOD": _whole(1), "EVAL_PERIOD": _whole(1), "EVAL_MAP": _BOOL, "CONFIDENCE": _FRACTION,
    "NMS_IOU": _FRACTION, "MAX_DET": _whole(1), "EVAL_BATCH_SIZE": _whole(1),
    "EVAL_RECT": _BOOL,
}

# Keys added since checkpoints record their config, with what the versions before them did: a resumed run or an
# evaluated checkpoint whose recorded config lacks one keeps that behaviour, not today's default.
EARLIER_BEHAVIOUR = {"EVAL_RECT": False}


def check_config(cfg: dict, world: int = 1) -> None:
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
    if cfg["MODEL_PATH"] and (cfg["FUSION_RGB_WEIGHTS"] or cfg["FUSION_EVENT_WEIGHTS"]):
        raise ValueError("MODEL_PATH (--weights) and FUSION_RGB_WEIGHTS / FUSION_EVENT_WEIGHTS (--weights_rgb / "
                         "--weights_event) both set: start from a fusion checkpoint or from single-modality ones")
    if cfg["OPTIMIZER_TYPE"] == "sgd" and cfg["MOMENTUM"] == 0:
        raise ValueError("MOMENTUM must be above 0 with OPTIMIZER_TYPE='sgd' (nesterov momentum), got 0")


# ----------------------------------------------------------------------------------------------- data
def capped_workers(workers: int, processes: int = 1) -> int:
    """Loader processes to start for a setting of `workers` in each of `processes` training processes on this
    machine: at most the CPU count divided among them (processes x workers <= CPUs), at least 0."""
    return max(0, min(workers, (os.cpu_count() or 1) // max(1, processes)))


def build_index(cfg: dict, modality: str, val_only: bool = False) -> FredIndex:
    """The FRED index of DATA_ROOT for modality and SPLIT (val_only: scan the val sequences only)."""
    return build_fred_index(cfg["DATA_ROOT"], modality, split=cfg["SPLIT"], frame_stride=cfg["FRAME_STRIDE"],
                            val_frame_stride=cfg["VAL_FRAME_STRIDE"], num_classes=cfg["NUM_CLASSES"],
                            strict_labels=cfg["STRICT_LABELS"], rgb_image_dir=cfg["RGB_IMAGE_DIR"],
                            cache_dir=cfg["INDEX_CACHE_DIR"] or None, val_only=val_only,
                            fusion_pair_tolerance=cfg["FUSION_PAIR_TOLERANCE"])


def build_frame_cache(cfg: dict, frames: list, what: str, progress: bool = True) -> Optional[FrameCache]:
    """The decoded-frame cache of frames for FRAME_CACHE="disk" (built when absent or stale), else None.

    A cache that cannot be written (disk full, no permission) is reported and the files are decoded instead.
    """
    if cfg["FRAME_CACHE"] == "off":
        return None
    return open_frame_cache([f.image for f in frames], max(cfg["INPUT_SHAPE"]), cfg["FRAME_CACHE_DIR"],
                            cfg["DATA_ROOT"], cfg["FRAME_CACHE_MAX_GB"] * 1e9, progress, f"frame cache ({what})")


def build_frame_caches(cfg: dict, frames: list, what: str, progress: bool = True) -> dict:
    """The frame caches of frames as FredDataset's keyword arguments: {"frame_cache": build_frame_cache() of their
    images, "event_cache": None}; for fused frames, when INPUT_SHAPE's long side is the event frames' own (1280 on
    FRED), "event_cache" holds their event images as they are, FRED's three colours packed at 2 bits per pixel and
    read straight into polarity planes; at another size "frame_cache" holds the fused samples themselves (the RGB
    frame and the polarity planes made at the frames' size, both resized: speed/frame_cache.py), read with no work."""
    event_cache = None
    if cfg["FRAME_CACHE"] != "off" and frames and getattr(frames[0], "event_image", ""):
        first, _ = read_image(frames[0].event_image)
        long_side = max(cfg["INPUT_SHAPE"])
        if first is None or max(first.shape[:2]) != long_side:
            return {"frame_cache": open_frame_cache([f.image for f in frames], long_side, cfg["FRAME_CACHE_DIR"],
                                                    cfg["DATA_ROOT"], cfg["FRAME_CACHE_MAX_GB"] * 1e9, progress,
                                                    f"fused frame cache ({what})",
                                                    partners=[f.event_image for f in frames]),
                    "event_cache": None}
        event_cache = open_frame_cache([f.event_image for f in frames], long_side, cfg["FRAME_CACHE_DIR"],
                                       cfg["DATA_ROOT"], cfg["FRAME_CACHE_MAX_GB"] * 1e9, progress,
                                       f"event frame cache ({what})")
    return {"frame_cache": build_frame_cache(cfg, frames, what, progress), "event_cache": event_cache}


def augmentation(cfg: dict, hsv_in_batch: bool = False) -> Augmentation:
    """The training augmentation of cfg; hsv_in_batch leaves the HSV jitter to the batch transform."""
    return Augmentation(mosaic=cfg["MOSAIC"], mosaic_prob=cfg["MOSAIC_PROB"], mixup=cfg["MIXUP"],
                        mixup_prob=cfg["MIXUP_PROB"], hsv=(cfg["HSV_H"], cfg["HSV_S"], cfg["HSV_V"]),
                        flip_lr=cfg["FLIP_LR"], degrees=cfg["DEGREES"], translate=cfg["TRANSLATE"],
                        scale=cfg["SCALE"], min_box_size=cfg["MIN_BOX_SIZE"], hsv_in_batch=hsv_in_batch,
                        stream_dropout=cfg["FUSION_STREAM_DROPOUT"])


def train_dataset(cfg: dict, frames: list, run_dir: str, frame_cache: Optional[FrameCache] = None,
                  hsv_in_batch: bool = False, event_cache: Optional[FrameCache] = None) -> FredDataset:
    """Augmented training samples configured from cfg; hsv_in_batch leaves the HSV jitter to the training loop."""
    return FredDataset(frames, tuple(cfg["INPUT_SHAPE"]), augmentation(cfg, hsv_in_batch), frame_cache=frame_cache,
                       event_cache=event_cache, bad_image_log=os.path.join(run_dir, "bad_images.txt"),
                       seed=cfg["SEED"])


def frame_sizes(frames: list, frame_cache: Optional[FrameCache] = None) -> set[tuple[int, int]]:
    """The (h, w) sizes of frames: every decoded frame's from frame_cache (built for these frames), else those of the
    first readable image of each image folder (a sequence's frames share one size, as FRED's all are 1280x720)."""
    if frame_cache is not None:
        return {frame_cache.orig_shape(i) for i in range(len(frames)) if frame_cache.bad_reason(i) is None}
    sizes, done = set(), set()
    for frame in frames:
        folder = os.path.dirname(str(frame.image))
        if folder in done:
            continue
        img, _ = read_image(str(frame.image))
        if img is not None:
            sizes.add((int(img.shape[0]), int(img.shape[1])))
            done.add(folder)
    return sizes


def val_input_shape(cfg: dict, frames: list, frame_cache: Optional[FrameCache] = None) -> tuple[int, int]:
    """The network input (h, w) of validation and evaluation (val loss and mAP): INPUT_SHAPE; with EVAL_RECT the
    rectangle of the frames' aspect at the scale of a square max(INPUT_SHAPE) input (utils.letterbox.rect_shape:
    1280x720 frames at 640 -> (384, 640)), or INPUT_SHAPE, logged, when no rectangle is smaller (square frames, or
    frames of both orientations). frame_cache: the val frames' cache, whose sizes are read instead of images."""
    square = (int(cfg["INPUT_SHAPE"][0]), int(cfg["INPUT_SHAPE"][1]))
    if not cfg["EVAL_RECT"]:
        return square
    sizes = frame_sizes(frames, frame_cache)
    shape = rect_shape(sizes, max(square), MAX_STRIDE)
    if shape is None:
        LOGGER.info("EVAL_RECT: no rectangle smaller than %dx%d holds the val frames (w x h: %s): evaluating at "
                    "INPUT_SHAPE", max(square), max(square),
                    ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:4]) or "none readable")
        return square
    return shape


def val_dataset(frames: list, input_shape: tuple[int, int], frame_cache: Optional[FrameCache] = None,
                bad_image_log: Optional[str] = None, event_cache: Optional[FrameCache] = None) -> FredDataset:
    """Validation samples letterboxed to input_shape (h, w): val_input_shape()'s."""
    return FredDataset(frames, tuple(input_shape), frame_cache=frame_cache, event_cache=event_cache,
                       bad_image_log=bad_image_log)


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


def val_loader(cfg: dict, dataset: Dataset, device: torch.device, workers: Optional[int] = None,
               batch: Optional[int] = None, persistent: bool = True) -> DataLoader:
    """The evaluation loader of dataset, in order: EVAL_BATCH_SIZE and EVAL_WORKERS unless given."""
    return make_loader(dataset, batch or cfg["EVAL_BATCH_SIZE"], SequentialSampler(dataset),
                       capped_workers(cfg["EVAL_WORKERS"] if workers is None else workers), device, cfg["SEED"],
                       persistent=persistent, ring=cfg["BATCH_RING"])


# ----------------------------------------------------------------------------------------------- model
def amp_dtype(cfg: dict, device: torch.device) -> Optional[torch.dtype]:
    """The training autocast dtype (FP16 and AMP_DTYPE, CUDA only), or None for full precision."""
    return autocast_dtype(cfg["AMP_DTYPE"]) if device.type == "cuda" and cfg["FP16"] else None


def channels_last(cfg: dict, device: torch.device) -> bool:
    """Whether model and batches use the NHWC layout (CHANNELS_LAST, CUDA only)."""
    return device.type == "cuda" and cfg["CHANNELS_LAST"]


def build_train_model(cfg: dict, device: torch.device, world: int, modality: str, weights: bool = True
                      ) -> tuple[torch.nn.Module, Optional[dict]]:
    """YOLOv8 PHI of architecture ARCH for NUM_CLASSES (fusion: of kind FUSION, nets/fusion.py) on device (NHWC with
    CHANNELS_LAST, SyncBatchNorm with SYNC_BN under torchrun on CUDA), with, when weights, MODEL_PATH's weights or
    (fusion) those of FUSION_RGB_WEIGHTS / FUSION_EVENT_WEIGHTS: (model, the loading report or None).
    A weights file that cannot be read raises OSError / ValueError."""
    if modality == "fusion":
        model = build_fusion_model(cfg["PHI"], cfg["NUM_CLASSES"], cfg["FUSION"], cfg["ARCH"])
    else:
        model = build_model(cfg["PHI"], cfg["NUM_CLASSES"], in_channels=input_channels(modality), arch=cfg["ARCH"])
    info = None
    if weights and cfg["MODEL_PATH"]:
        info = load_weights(model, cfg["MODEL_PATH"])
    elif weights and modality == "fusion" and (cfg["FUSION_RGB_WEIGHTS"] or cfg["FUSION_EVENT_WEIGHTS"]):
        info = load_fusion_weights(model, EVENT_PALETTE, rgb=cfg["FUSION_RGB_WEIGHTS"] or None,
                                   event=cfg["FUSION_EVENT_WEIGHTS"] or None)
    model.to(device, memory_format=torch.channels_last if channels_last(cfg, device) else torch.contiguous_format)
    if cfg["SYNC_BN"] and world > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, info


def build_criterion(cfg: dict, model: torch.nn.Module) -> DetectionLoss:
    """The v8 detection loss for the model's classes, strides and DFL bins."""
    return DetectionLoss(cfg["NUM_CLASSES"], strides=tuple(model.stride.tolist()), reg_max=model.reg_max,
                         assigner=cfg["ASSIGNER"])


def step_options(cfg: dict, device: torch.device, train_set: FredDataset) -> StepOptions:
    """How train_one_epoch takes its steps: AMP, gradient clipping, log interval, NaN patience, layout, and the
    batch transform that makes the float images on the device (the GPU part of train_set's augmentation, compiled
    with HSV_COMPILE on CUDA), or None."""
    return StepOptions(log_interval=cfg["LOG_INTERVAL"], nan_patience=cfg["NAN_PATIENCE"],
                       amp_dtype=amp_dtype(cfg, device), grad_clip=cfg["GRAD_CLIP"],
                       channels_last=channels_last(cfg, device),
                       batch_transform=build_batch_transform(train_set.augmentation,
                                                             compiled=cfg["HSV_COMPILE"] and device.type == "cuda"))


def evaluation_settings(cfg: dict, device: torch.device) -> dict:
    """evaluation.evaluator.evaluate()'s keyword arguments from cfg: thresholds, AMP, class names, data root, layout
    (the same for the in-training mAP and eval_fred.py)."""
    return {"conf_thres": cfg["CONFIDENCE"], "iou_thres": cfg["NMS_IOU"], "max_det": cfg["MAX_DET"],
            "amp": cfg["FP16"], "amp_dtype": autocast_dtype(cfg["AMP_DTYPE"]), "class_names": list(cfg["CLASS_NAMES"]),
            "data_root": cfg["DATA_ROOT"], "channels_last": channels_last(cfg, device)}


# ----------------------------------------------------------------------------------------------- phases
@dataclass
class Phase:
    """One training phase: frozen backbone (FREEZE_BATCH_SIZE) or the whole network (UNFREEZE_BATCH_SIZE)."""

    name: str  # "frozen" | "unfrozen"
    last_epoch: int  # the phase runs up to this epoch (1-based, inclusive)
    batch: int  # global batch size, images
    per_rank: int  # images per process and step
    sampler: DistributedSampler
    loader: DataLoader
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    loss_fn: Optional[GraphedTrainLoss]  # the CUDA-graphed forward + loss, or None (eager)
    grad_sync: Optional[Callable[[list], None]]  # averages the gradients after backward (allreduce sync), or None
    lr_max: float  # learning rates after the nbs-64 batch rule
    lr_min: float


def phase_name(cfg: dict, epoch: int) -> str:
    """Which phase epoch (0-based) belongs to."""
    return "frozen" if cfg["FREEZE_TRAIN"] and epoch < cfg["FREEZE_EPOCH"] else "unfrozen"


def compile_off_reason(cfg: dict, device: torch.device, world: int) -> Optional[str]:
    """Why the training network is not compiled although COMPILE_MODEL is set (to print), or None."""
    if cfg["COMPILE_MODEL"] and world > 1 and grad_sync_kind(cfg, device, world) == "ddp":
        return ("COMPILE_MODEL: off with DistributedDataParallel (DDP_GRAD_SYNC='ddp' without a CUDA graph); "
                "DDP_GRAD_SYNC='allreduce' keeps it")
    return None


def graph_off_reason(cfg: dict, device: torch.device, world: int) -> Optional[str]:
    """Why the training step runs without a CUDA graph although CUDA_GRAPH is on (to print), or None."""
    if cfg["CUDA_GRAPH"] and device.type == "cuda" and world > 1 and cfg["SYNC_BN"]:
        return ("CUDA_GRAPH: off with SYNC_BN under torchrun (SyncBatchNorm's collectives cannot be captured in the "
                "graph); SYNC_BN=False keeps the graph")
    return None


def uses_graph(cfg: dict, device: torch.device, world: int) -> bool:
    """Whether the training step replays a CUDA graph: CUDA_GRAPH on CUDA, unless SYNC_BN under torchrun."""
    return cfg["CUDA_GRAPH"] and device.type == "cuda" and graph_off_reason(cfg, device, world) is None


def grad_sync_kind(cfg: dict, device: torch.device, world: int) -> str:
    """How a torchrun run averages gradients: "allreduce" with a CUDA graph (DDP's hooks cannot run inside it),
    else DDP_GRAD_SYNC."""
    return "allreduce" if uses_graph(cfg, device, world) else cfg["DDP_GRAD_SYNC"]


def graphed_loss(cfg: dict, model: torch.nn.Module, criterion: DetectionLoss, per_rank: int, per_image: int,
                 device: torch.device, world: int, net: Optional[torch.nn.Module] = None
                 ) -> Optional[GraphedTrainLoss]:
    """The CUDA-graphed training forward + loss of this phase's model and batch (uses_graph()), or None; per_image:
    target rows the graph holds per image (graph_targets_per_image); net: what the step calls instead of model (its
    torch.compile module, COMPILE_MODEL)."""
    if not uses_graph(cfg, device, world):
        return None
    h, w = cfg["INPUT_SHAPE"]
    sample = torch.empty((per_rank, model.in_channels, h, w), device=device,
                         memory_format=torch.channels_last if channels_last(cfg, device) else torch.contiguous_format)
    model.train()
    return GraphedTrainLoss(model if net is None else net, criterion, sample, per_rank * per_image,
                            amp_dtype(cfg, device))


def graph_targets_per_image(cfg: dict, train_set: FredDataset) -> int:
    """Target rows per image of the graphed loss: CUDA_GRAPH_TARGETS_PER_IMAGE, or fewer when no training sample can
    hold that many (every padding row costs the assigner work over all anchors); at least 1."""
    return max(1, min(cfg["CUDA_GRAPH_TARGETS_PER_IMAGE"], train_set.max_boxes_per_sample()))


def rank_sync(cfg: dict, model: torch.nn.Module, frozen: bool, device: torch.device, world: int
              ) -> tuple[torch.nn.Module, Optional[Callable[[list], None]]]:
    """(model wrapper, gradient sync) of a phase whose backbone freeze_backbone(model, frozen) has just set: under
    torchrun (world > 1) rank 0's parameters and buffers are copied into every process, by DDP's wrapping or
    (grad_sync_kind() "allreduce") utils.dist.broadcast_state, then the frozen backbone is folded again from them
    (those copies bypass the check that makes a folded Conv fall back); one process: (model, None)."""
    if world == 1:
        return model, None
    net, grad_sync = model, None
    if grad_sync_kind(cfg, device, world) == "allreduce":
        dist.broadcast_state(model)
        grad_sync = dist.all_reduce_grads
    else:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    freeze_backbone(model, frozen)
    return net, grad_sync


def build_phase(cfg: dict, name: str, model: torch.nn.Module, criterion: DetectionLoss, train_set: FredDataset,
                device: torch.device, rank: int, world: int, previous: Optional[Phase] = None) -> Phase:
    """Freeze or unfreeze the backbone and make the phase's sampler, loader, model wrapper and loss function.

    Under torchrun (world > 1) the gradients are averaged by DistributedDataParallel, or, with the "allreduce" sync
    (grad_sync_kind()), by utils.dist.all_reduce_grads after each backward on the bare model, whose parameters and
    buffers are first made rank 0's as DDP's wrapping makes them.
    previous: the phase before, whose CUDA graph is released first (it holds GPU memory)."""
    if previous is not None:
        previous.loss_fn = None
    batch = cfg["FREEZE_BATCH_SIZE"] if name == "frozen" else cfg["UNFREEZE_BATCH_SIZE"]
    per_rank = batch // world
    freeze_backbone(model, name == "frozen")
    lr_max, lr_min = scale_lr_for_batch(cfg["INIT_LR"], cfg["MIN_LR"], batch, cfg["OPTIMIZER_TYPE"])
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg["SEED"])
    loader = train_loader(cfg, train_set, per_rank, sampler, device, rank)
    net, grad_sync = rank_sync(cfg, model, name == "frozen", device, world)
    if cfg["COMPILE_MODEL"] and compile_off_reason(cfg, device, world) is None:
        net = compile_model(model, cfg["COMPILE_MODEL"])
    last_epoch = cfg["FREEZE_EPOCH"] if name == "frozen" else cfg["UNFREEZE_EPOCH"]
    loss_fn = graphed_loss(cfg, model, criterion, per_rank, graph_targets_per_image(cfg, train_set), device, world, net)
    return Phase(name, last_epoch, batch, per_rank, sampler, loader, net, loss_fn, grad_sync, lr_max, lr_min)


def train_loader(cfg: dict, train_set: FredDataset, per_rank: int, sampler: Sampler, device: torch.device,
                 rank: int, persistent: bool = True) -> DataLoader:
    """The training loader of one process: NUM_WORKERS (capped: the machine's processes share its CPUs), seeded per
    rank."""
    workers = capped_workers(cfg["NUM_WORKERS"], dist.local_world_size())
    return make_loader(train_set, per_rank, sampler, workers, device, cfg["SEED"] + 1000 * rank,
                       persistent=persistent, ring=cfg["BATCH_RING"])


def resumed_loader(cfg: dict, phase: Phase, train_set: FredDataset, start_iter: int, device: torch.device,
                   rank: int) -> DataLoader:
    """The rest of an interrupted epoch: phase's loader without its first start_iter batches (a one-epoch loader)."""
    return train_loader(cfg, train_set, phase.per_rank, SkipSampler(phase.sampler, start_iter * phase.per_rank),
                        device, rank, persistent=False)
