"""What happens after each training epoch on rank 0: checks, val loss and mAP, best/last/periodic checkpoints, logs."""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from evaluation import val_loss
from evaluation.evaluator import evaluate
from training.ema import ModelEMA
from training.run_log import RunLog
from utils.checkpoint import atomic_save, weights_only


class NonFiniteError(RuntimeError):
    """The model, its EMA or the val loss holds NaN or inf: the run must stop before it saves anything more."""


def nonfinite_tensor(modules: dict[str, nn.Module]) -> Optional[str]:
    """Name of the first floating-point parameter or buffer of modules ({label: module}) holding NaN or inf, or None.

    One fused max-abs pass over all tensors and one host sync: for the end of an epoch, not for every step.
    """
    named = [(f"{label} {name}", t) for label, module in modules.items()
             for name, t in module.state_dict().items() if t.is_floating_point()]
    finite = torch.stack(torch._foreach_norm([t for _, t in named], math.inf)).isfinite()
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


def val_loss_fitness(val: dict) -> float:
    """Fitness of an epoch by val loss (no mAP): -loss, or -inf when its box part is 0. Then no prediction overlapped
    any object (no anchor got a target score): an untrained or collapsed model, whose loss is small for that
    reason, must not become best.pth ahead of epochs that detect something."""
    return -val["loss"] if val["box"] > 0 else -math.inf


class EpochEnd:
    """Rank 0 after each epoch: refuse a non-finite model, compute the val loss (and the mAP every eval_period
    epochs and at the last; eval_period 0: never), then write last.pth, best.pth when fitness improved, the
    periodic checkpoint every save_period epochs, and the epoch's row of results.csv / TensorBoard.

    Fitness is the mAP's (0.1 mAP50 + 0.9 mAP50:95) on mAP epochs, -val loss when no mAP is computed at all.
    `best` ({"fitness": None} at the start, or a resumed run's) is updated in place.
    """

    def __init__(self, model: nn.Module, ema: ModelEMA, criterion: Callable, val_loader: Iterable,
                 val_frames: Sequence, device: torch.device, eval_settings: dict, amp_dtype: Optional[torch.dtype],
                 run_dir: str, log: RunLog, total_epochs: int, eval_period: int, save_period: int, best: dict):
        self.model, self.ema, self.criterion = model, ema, criterion
        self.val_loader, self.val_frames, self.device = val_loader, val_frames, device
        self.eval_settings, self.amp_dtype = eval_settings, amp_dtype
        self.run_dir, self.log, self.best = run_dir, log, best
        self.total, self.eval_period, self.save_period = total_epochs, eval_period, save_period

    def validate(self, done: int) -> tuple[dict, Optional[dict]]:
        """(val loss parts, mAP metrics or None) of the EMA model after `done` epochs: one pass over the val set."""
        if self.eval_period and (done % self.eval_period == 0 or done == self.total):
            result = evaluate(self.ema.ema, self.val_loader, self.val_frames, self.device, criterion=self.criterion,
                              **self.eval_settings)
            return result.loss, result.metrics
        return val_loss.evaluate_loss(self.ema.ema, self.criterion, self.val_loader, self.device, self.amp_dtype,
                                    self.eval_settings["channels_last"]), None

    def __call__(self, epoch: int, phase: str, batch: int, stats: dict, epoch_start: float,
                 state: Callable[[int], dict]) -> str:
        """End epoch (0-based) of phase, trained at global batch size batch with engine stats; state(done) is the
        training_state() to save. Returns the line to print; raises NonFiniteError (nothing saved) for a
        non-finite model or val loss."""
        done = epoch + 1
        bad = nonfinite_tensor({"model": self.model, "EMA": self.ema.ema})
        if bad:
            raise NonFiniteError(f"after epoch {done} the {bad} holds non-finite values")
        val, metrics = self.validate(done)
        if not math.isfinite(val["loss"]):
            raise NonFiniteError(f"the val loss after epoch {done} is {val['loss']}")
        fitness = metrics["fitness"] if metrics else (None if self.eval_period else val_loss_fitness(val))
        improved = fitness is not None and (self.best.get("fitness") is None or fitness > self.best["fitness"])
        if improved:
            self.best.update(fitness=fitness, epoch=done, val_loss=val["loss"],
                             mAP50=metrics["mAP50"] if metrics else None,
                             mAP50_95=metrics["mAP50_95"] if metrics else None)
        epoch_s = time.perf_counter() - epoch_start  # training, val loss and mAP
        full = state(done)
        self._save("last.pth", full)
        if improved:
            self._save("best.pth", weights_only(full))
        if done % self.save_period == 0 or done == self.total:
            self._save(f"ep{done:03d}-loss{stats['loss']:.3f}-val_loss{val['loss']:.3f}.pth", weights_only(full))
        self.log.log_epoch({"epoch": done, "phase": phase, "batch_size": batch, "lr": stats["lr"],
                            **{f"train_{k}": stats[k] for k in ("loss", "box", "cls", "dfl")},
                            **{f"val_{k}": val[k] for k in ("loss", "box", "cls", "dfl")},
                            "mAP50": metrics["mAP50"] if metrics else None,
                            "mAP50_95": metrics["mAP50_95"] if metrics else None, "fitness": fitness,
                            "img_per_s": stats["img_per_s"], "epoch_s": epoch_s, "gpu_mem_GB": stats["gpu_mem_GB"],
                            "skipped_steps": stats["skipped"], "data_wait_pct": stats["data_wait_pct"]})
        if metrics:
            self.log.log_map(done, metrics)
        return epoch_line(done, self.total, stats, val, epoch_s, metrics, improved)

    def _save(self, name: str, state: dict) -> None:
        atomic_save(state, os.path.join(self.run_dir, name))


def epoch_line(done: int, total: int, stats: dict, val: dict, epoch_s: float, metrics: Optional[dict],
               improved: bool) -> str:
    """The line printed after an epoch: losses, val loss, speed, time, mAP when computed, (best)."""
    line = (f"epoch {done}/{total}: loss {stats['loss']:.4f} (box {stats['box']:.4f} cls {stats['cls']:.4f} "
            f"dfl {stats['dfl']:.4f}), val loss {val['loss']:.4f}, {stats['img_per_s']:.0f} img/s "
            f"({stats['data_wait_pct']:.0f}% waiting for data), {epoch_s:.0f} s")
    if stats["skipped"]:
        line += f", {stats['skipped']} steps skipped (non-finite loss)"
    if metrics:
        line += f"; mAP50 {metrics['mAP50']:.4f} mAP50:95 {metrics['mAP50_95']:.4f}"
    return line + (" (best)" if improved else "")
