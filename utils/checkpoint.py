"""Checkpoints: atomic writes and the random-number state that makes a resumed run continue exactly."""
import errno
import os
import random
import shutil
import tempfile

import numpy as np
import torch

TMP_PREFIX = ".tmp_"  # atomic_save's temporary files: TMP_PREFIX + file name + random suffix


class DiskFullError(OSError):
    """A checkpoint did not fit on its disk: folder, bytes needed (about) and bytes free."""

    def __init__(self, folder: str, name: str, needed: int, free: int):
        super().__init__(errno.ENOSPC, f"no space left in {folder} for {name}: it needs about {needed / 1e6:.1f} MB, "
                                       f"{free / 1e6:.1f} MB free (the previous {name}, if any, is intact)")
        self.folder, self.needed, self.free = folder, needed, free

    def __str__(self) -> str:
        return self.strerror


def state_nbytes(obj: object) -> int:
    """Bytes of the tensor storages in obj (nested dicts, lists, tuples): about the size torch.save writes."""
    storages = {}

    def walk(o: object) -> None:
        if isinstance(o, torch.Tensor):
            storage = o.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return sum(storages.values())


def _no_space(error: BaseException, folder: str, needed: int) -> bool:
    """Whether a failed write of `needed` bytes to folder ran out of disk: ENOSPC / EDQUOT anywhere in the error's
    chain, or a torch writer error (torch turns a failed write into a RuntimeError) with less than that free."""
    e = error
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return isinstance(error, (OSError, RuntimeError)) and shutil.disk_usage(folder).free < needed


def atomic_save(obj: object, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename over path: a crash keeps the old file.

    A full disk raises DiskFullError (the temporary file removed, the old file intact).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, Exception):
            needed = state_nbytes(obj)
            if _no_space(e, folder, needed):
                raise DiskFullError(folder, os.path.basename(path), needed, shutil.disk_usage(folder).free) from e
        raise


def remove_temporaries(folder: str) -> list[str]:
    """Delete the temporary files atomic_save left in folder when its process was killed; returns their names."""
    names = sorted(n for n in os.listdir(folder)
                   if n.startswith(TMP_PREFIX) and os.path.isfile(os.path.join(folder, n)))
    for name in names:
        os.remove(os.path.join(folder, name))
    return names


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
                   iteration: int, phase: str, best: dict, config: dict, meta: dict) -> dict:
    """Everything a resumed run needs. `model` holds the EMA weights (what evaluation uses), `model_raw` the raw ones.

    epoch: completed epochs; iteration: optimizer steps already done inside epoch `epoch` (0 at an epoch boundary);
    best: best_fitness / best_epoch / best metrics so far; meta: phi, num_classes, in_channels.
    """
    return {"model": ema.ema.state_dict(), "model_raw": model.state_dict(), "ema_updates": ema.updates,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
            "iteration": iteration, "phase": phase, "best_fitness": best.get("fitness"), "best": dict(best),
            "config": dict(config), "rng": rng_state(), **meta}


def restore_training_state(state: dict, model: torch.nn.Module, ema, optimizer: torch.optim.Optimizer,
                           scaler) -> None:
    """Load weights, EMA, optimizer, scaler and RNG states from training_state() into the given objects."""
    model.load_state_dict(state["model_raw"])
    ema.load_state_dict({"model": state["model"], "updates": state["ema_updates"]})
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
