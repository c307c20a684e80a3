"""One training epoch (torchvision references style): what changes per epoch as arguments, how each step is taken
as one StepOptions."""
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import distributed as dist
from torch import nn
from tqdm import tqdm

from nets.loss import LOSS_PARTS, weighted_parts
from training.ema import ModelEMA
from utils.device_batches import BatchTransform, device_batches

SUM_KEYS = ("sums", "finite_steps", "run", "max_run")  # train_one_epoch's running totals, as in its epoch_sums


@dataclass(frozen=True)
class StepOptions:
    """How train_one_epoch takes its steps, the same in every epoch of a run.

    log_interval: iterations between reads of the loss from the device (progress bar, NaN check); nan_patience:
    steps in a row with a non-finite loss that end the epoch; amp_dtype: autocast dtype (None: float32, no
    autocast); grad_clip: max gradient norm (0: no clipping); channels_last: NHWC float images; batch_transform: makes
    each batch's float images on the device (None: its uint8 images converted, images_to_device()).
    """

    log_interval: int
    nan_patience: int
    amp_dtype: Optional[torch.dtype] = None
    grad_clip: float = 0.0
    channels_last: bool = False
    batch_transform: Optional[BatchTransform] = None

    @property
    def fixed_scale(self) -> bool:
        """Whether the GradScaler's scale is held at 1 (it then only finds non-finite gradients): all but fp16."""
        return self.amp_dtype is not torch.float16


def gpu_mem_gb(device: torch.device) -> float:
    """Peak reserved CUDA memory of device in GB since the last reset (0 on CPU)."""
    return torch.cuda.max_memory_reserved(device) / 1e9 if device.type == "cuda" else 0.0


def train_one_epoch(model: nn.Module, ema: Optional[ModelEMA], criterion: Callable, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, loader: torch.utils.data.DataLoader, device: torch.device,
                    set_lr: Callable[[int], float], options: StepOptions, start_iter: int = 0,
                    stop: Callable[[int], bool] = lambda i: False, desc: str = "", show_progress: bool = True,
                    loss_fn: Optional[Callable] = None, epoch_sums: Optional[dict] = None,
                    grad_sync: Optional[Callable[[list[torch.Tensor]], None]] = None) -> dict:
    """Train over loader from iteration start_iter, each step as options say (StepOptions); loss parts stay on the
    device and are read every options.log_interval.

    set_lr(i) sets the learning rate of iteration i and returns it; ema (None on ranks that keep none) is updated
    after every step. A step whose loss is not finite is skipped (GradScaler finds the non-finite gradients);
    options.nan_patience such steps in a row end the epoch with stopped="nan" (noticed at the next log step);
    stop(i) true ends it before iteration i with stopped="signal".
    The loss back-propagated is sum(weight * part) times the global batch size (Ultralytics' scale).
    Returns the mean weighted loss parts of the finite steps (box, cls, dfl, loss), lr, skipped, img_per_s,
    gpu_mem_GB, data_wait_pct (share of the loop's time spent waiting for the loader's next batch: well above 0,
    the data pipeline is the limit), iteration (steps done in this epoch, counting from 0) and stopped (None,
    "nan" or "signal"). loss_fn(images, targets) -> unweighted loss parts replaces criterion(model(images), targets,
    input shape) when given (a GraphedTrainLoss: the same computation replayed from a CUDA graph). The result's
    "epoch_sums" (CPU tensors) holds the loss sums and non-finite step counts so far; passed back as epoch_sums with
    start_iter, the epoch's loss means and skipped count cover its first start_iter iterations too (a resume in
    mid-epoch). grad_sync(trainable parameters), when given, averages the gradients over the processes after each
    backward, before the scaler and the clipping look at them (utils.dist.all_reduce_grads: a model not wrapped in
    DistributedDataParallel, e.g. one trained from a CUDA graph).
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    sums, finite_steps = torch.zeros(3, device=device), torch.zeros((), device=device)
    run, max_run = torch.zeros((), device=device), torch.zeros((), device=device)
    counted_from = start_iter  # the first iteration in sums
    if epoch_sums is not None:
        sums, finite_steps, run, max_run = (epoch_sums[k].to(device, torch.float32, copy=True) for k in SUM_KEYS)
        counted_from = 0
    images_seen, i, stopped, lr = 0, start_iter - 1, None, 0.0
    t0, n_total = time.perf_counter(), start_iter + len(loader)
    clock = {"t0": t0, "waited": 0.0, "ready": t0}  # host seconds spent waiting for batches
    loss_fn = loss_fn or (lambda images, targets: criterion(model(images), targets, tuple(images.shape[2:])))
    amp_dtype = options.amp_dtype
    batches = device_batches(loader, device, options.channels_last, options.batch_transform)
    bar = tqdm(batches, desc=desc, total=len(loader), disable=not show_progress, dynamic_ncols=True, leave=True)
    for i, (images, targets) in enumerate(bar, start_iter):
        clock["waited"] += time.perf_counter() - clock["ready"]
        if stop(i):
            stopped = "signal"
            break
        lr = set_lr(i)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            parts = weighted_parts(loss_fn(images, targets), criterion.weight_dict)
        loss = parts.sum() * (images.shape[0] * world)  # DDP averages gradients: undo it, as for one big batch
        finite = torch.isfinite(loss)
        scaler.scale(loss).backward()
        if grad_sync is not None:
            grad_sync(params)
        scaler.unscale_(optimizer)
        if options.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, options.grad_clip, foreach=True)
        scaler.step(optimizer)
        scaler.update(1.0 if options.fixed_scale else None)
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        sums += torch.where(finite, parts.detach(), 0.0)
        finite_steps += finite
        run = (run + 1) * (~finite)
        max_run = torch.maximum(max_run, run)
        images_seen += images.shape[0]
        if (i + 1) % options.log_interval == 0 or i + 1 == n_total:
            out = _read_stats(sums, finite_steps, i + 1 - counted_from, images_seen, clock, lr, device)
            bar.set_postfix_str(" ".join(f"{k}={v:.4g}" for k, v in out.items() if k in LOSS_PARTS + ("lr",))
                                + f" img/s={out['img_per_s']:.0f} wait={out['data_wait_pct']:.0f}%"
                                + f" mem={out['gpu_mem_GB']:.1f}G")
            if _any_rank(max_run >= options.nan_patience):
                stopped = "nan"
                break
        clock["ready"] = time.perf_counter()
    bar.close()
    done = i + 1 if stopped != "signal" else i
    out = _read_stats(sums, finite_steps, done - counted_from, images_seen, clock, lr, device)
    sums_now = {k: t.cpu() for k, t in zip(SUM_KEYS, (sums, finite_steps, run, max_run))}
    return {**out, "iteration": done, "stopped": stopped, "epoch_sums": sums_now}


def _any_rank(flag: torch.Tensor) -> bool:
    """True if flag (0-d bool tensor) is true on any process (one collective when distributed)."""
    if dist.is_available() and dist.is_initialized():
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _read_stats(sums: torch.Tensor, finite_steps: torch.Tensor, steps: int, images: int, clock: dict, lr: float,
                device: torch.device) -> dict:
    """Host copy of the running loss means (one sync) plus speed, data wait and memory; clock: {"t0", "waited"}."""
    s, n = sums.tolist(), float(finite_steps.item())
    means = {k: (v / n if n else math.nan) for k, v in zip(LOSS_PARTS, s)}
    elapsed = max(time.perf_counter() - clock["t0"], 1e-9)
    return {**means, "loss": sum(means.values()), "lr": lr, "skipped": steps - int(n), "img_per_s": images / elapsed,
            "data_wait_pct": 100.0 * clock["waited"] / elapsed, "gpu_mem_GB": gpu_mem_gb(device)}
