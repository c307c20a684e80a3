"""Checkpoints: atomic writes and the random-number state that makes a resumed run continue exactly."""
import errno
import os
import pickle
import random
import re
import shutil
import tempfile
import warnings
from typing import Optional

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
    """Load a checkpoint (a dict of tensors and plain values) onto the CPU. A missing file raises FileNotFoundError;
    anything else that is not such a checkpoint raises ValueError "<path> is not a checkpoint: <reason>"."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{path} is not a checkpoint: it is a folder; pass a file in it, e.g. best.pth or last.pth")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise ValueError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises KeyError, RuntimeError, UnpicklingError, EOFError... for foreign files
        raise ValueError(f"{path} is not a checkpoint: {_unreadable_reason(path, head, e)}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a checkpoint: it holds a {type(obj).__name__}, not a dict (a checkpoint of "
                         "train_fred.py or a state dict)")
    return obj


_LEGACY_HEAD = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)  # torch.save before torch 1.6


def _unreadable_reason(path: str, head: bytes, error: Exception) -> str:
    """Why torch.load(weights_only=True) refused the file starting with head, in words (not torch's advice)."""
    if not head:
        return "the file is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04") or head.startswith(_LEGACY_HEAD):  # written by torch.save
        found = re.search(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)", str(error))
        if found:
            return (f"it holds pickled Python objects (e.g. {found.group(1)}), not only tensors and plain values; "
                    "loading it would run code from the file. A whole model (an Ultralytics .pt) must be converted "
                    f"first: python -m nets.convert {path} OUT")
        first = re.split(r"(?<=\.)\s", str(error).strip())[0].rstrip(".") or type(error).__name__
        return f"the torch.save file is damaged or truncated ({first}); save or copy it again"
    if head.startswith(b"\x80"):
        return "it is a Python pickle, not a file written by torch.save; save the weights with torch.save"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut at the end of head is still text
        text = head[:e.start].decode("utf-8") if e.start >= len(head) - 3 else ""
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"it is a text file (it starts with {text.splitlines()[0][:40]!r})"
    return f"not a file written by torch.save (it starts with bytes {head[:8].hex(' ')})"


def training_state(model: torch.nn.Module, ema, optimizer: torch.optim.Optimizer, scaler, epoch: int,
                   iteration: int, phase: str, best: dict, config: dict, meta: dict,
                   epoch_sums: Optional[dict] = None) -> dict:
    """Everything a resumed run needs. `model` holds the EMA weights (what evaluation uses), `model_raw` the raw ones.

    epoch: completed epochs; iteration: optimizer steps already done inside epoch `epoch` (0 at an epoch boundary);
    best: best_fitness / best_epoch / best metrics so far; meta: phi, arch, num_classes, in_channels, modality,
    train_seconds; epoch_sums: the loss sums of those iterations (engine.train_one_epoch's), so that the resumed
    epoch's logged loss covers them.
    """
    return {"model": ema.ema.state_dict(), "model_raw": model.state_dict(), "ema_updates": ema.updates,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
            "iteration": iteration, "phase": phase, "best_fitness": best.get("fitness"), "best": dict(best),
            "config": dict(config), "rng": rng_state(), "epoch_sums": epoch_sums, **meta}


RESUME_ONLY = ("model_raw", "optimizer", "scaler", "rng", "ema_updates", "iteration", "epoch_sums")


def weights_only(state: dict) -> dict:
    """training_state() without what only a resume needs (RESUME_ONLY): the EMA weights and the run's description,
    as best.pth and the periodic checkpoints hold them."""
    return {k: v for k, v in state.items() if k not in RESUME_ONLY}


def restore_training_state(state: dict, model: torch.nn.Module, ema, optimizer: torch.optim.Optimizer,
                           scaler) -> None:
    """Load weights, EMA, optimizer, scaler and RNG states from training_state() into the given objects."""
    model.load_state_dict(state["model_raw"])
    ema.load_state_dict({"model": state["model"], "updates": state["ema_updates"]})
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
