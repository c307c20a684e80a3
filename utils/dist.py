"""Distributed training helpers for torchrun: process group setup and rank queries."""
import datetime
import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank (0 when not distributed)."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on the process that logs, evaluates and saves."""
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set RANK and WORLD_SIZE with more than one process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> torch.device:
    """Initialise the process group under torchrun (nccl for CUDA, gloo otherwise); return this rank's device.

    device: "" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N" (ignored for the index under torchrun:
    each process takes cuda:LOCAL_RANK).
    """
    if not device:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not launched_by_torchrun():
        return torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=60),
                            device_id=torch.device("cuda", local_rank) if cuda else None)
    return torch.device("cuda", local_rank) if cuda else torch.device("cpu")


def cleanup() -> None:
    """Destroy the process group if one is active."""
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for all processes (no-op when not distributed)."""
    if is_dist():
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Return rank 0's obj on every process."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
