"""Checkpoints: atomic writes and the random-number state that makes a resumed run continue exactly."""
import os
import random
import tempfile
from typing import Optional

import numpy as np
import torch


def atomic_save(obj: object, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename over path: a crash keeps the old file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain types (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned (CUDA states only when the device count matches)."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint onto the CPU (tensors and plain types only); a missing or unreadable file raises
    FileNotFoundError / ValueError naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e


def training_state(model: torch.nn.Module, ema, optimizer: torch.optim.Optimizer, scaler, epoch: int,
                   iteration: int, phase: str, best: dict, config: dict, meta: dict,
                   epoch_sums: Optional[dict] = None) -> dict:
    """Everything a resumed run needs. `model` holds the EMA weights (what evaluation uses), `model_raw` the raw ones.

    epoch: completed epochs; iteration: optimizer steps already done inside epoch `epoch` (0 at an epoch boundary);
    best: best_fitness / best_epoch / best metrics so far; meta: phi, num_classes, in_channels; epoch_sums: the loss
    sums of those iterations (engine.train_one_epoch's), so that the resumed epoch's logged loss covers them.
    """
    return {"model": ema.ema.state_dict(), "model_raw": model.state_dict(), "ema_updates": ema.updates,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
            "iteration": iteration, "phase": phase, "best_fitness": best.get("fitness"), "best": dict(best),
            "config": dict(config), "rng": rng_state(), "epoch_sums": epoch_sums, **meta}


def restore_training_state(state: dict, model: torch.nn.Module, ema, optimizer: torch.optim.Optimizer,
                           scaler) -> None:
    """Load weights, EMA, optimizer, scaler and RNG states from training_state() into the given objects."""
    model.load_state_dict(state["model_raw"])
    ema.load_state_dict({"model": state["model"], "updates": state["ema_updates"]})
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
