"""Distributed training helpers for torchrun: process group setup, rank queries, the gradient all-reduce of the
"allreduce" sync (DDP_GRAD_SYNC, and always with a CUDA graph) and waits for rank 0 that cannot time out early."""
import datetime
import os
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

PG_TIMEOUT = datetime.timedelta(minutes=60)  # the process group's collectives: training steps, short exchanges
# Waits for rank 0 (frame-cache builds, evaluation, checkpoints) run in a gloo side group with this timeout, so a
# long evaluation never trips PG_TIMEOUT on the waiting processes (and with NCCL, nothing is left queued on the GPU).
WAIT_TIMEOUT = datetime.timedelta(hours=24)
_WAIT_GROUP = None  # the gloo side group of wait_for_main(), made by setup()
T = TypeVar("T")


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


def is_local_main() -> bool:
    """True on the first process of this machine (LOCAL_RANK 0), which builds the machine's caches."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 if is_dist() else True


def local_world_size() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 when not distributed)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if is_dist() else 1


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set RANK and WORLD_SIZE with more than one process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str, timeout: datetime.timedelta = PG_TIMEOUT) -> torch.device:
    """Initialise the process group under torchrun (nccl for CUDA, gloo otherwise; collectives time out after
    timeout) and the gloo side group of wait_for_main(); return this rank's device.

    device: "" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N" (ignored for the index under torchrun:
    each process takes cuda:LOCAL_RANK).
    """
    global _WAIT_GROUP
    if not device:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not launched_by_torchrun():
        return torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout,
                            device_id=torch.device("cuda", local_rank) if cuda else None)
    _WAIT_GROUP = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return torch.device("cuda", local_rank) if cuda else torch.device("cpu")


def cleanup() -> None:
    """Destroy the process group if one is active."""
    global _WAIT_GROUP
    if is_dist():
        dist.destroy_process_group()
    _WAIT_GROUP = None


def wait_for_main(obj: T) -> T:
    """Return rank 0's obj on every process; the others wait for it up to WAIT_TIMEOUT, not PG_TIMEOUT (rank 0 may
    be building caches or evaluating), in setup()'s gloo side group (the process group where there is none)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_WAIT_GROUP)
    return box[0]


def in_turns(build: Callable[[], T]) -> T:
    """build() on every process in three turns, each waiting (wait_for_main) for the one before: rank 0, then the
    other machines' LOCAL_RANK 0, then the other processes. Caches that build() writes are then made once per
    machine (once in all in a folder the machines share) and only opened by the processes after."""
    if not is_dist():
        return build()
    result = build() if is_main() else None
    wait_for_main(None)
    if is_local_main() and not is_main():
        result = build()
    wait_for_main(None)
    return build() if not is_local_main() else result


def _dense(t: torch.Tensor) -> bool:
    """Whether t's elements fill one block of memory: contiguous, also in the channels_last layout."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _coalesced(tensors: list[torch.Tensor], collective: Callable[[torch.Tensor], None]) -> None:
    """collective(flat) in place on one flat copy of tensors per (device, dtype), then copied back into them: one
    collective per dtype instead of one per tensor (every process must hold the same shapes and layouts). A dense
    tensor goes in memory order through a 1-D view (no per-tensor copy kernels for channels_last weights)."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        dense = [_dense(t) for t in group]
        flats = [t.as_strided((t.numel(),), (1,)) if d else t.reshape(-1) for t, d in zip(group, dense)]
        flat = torch.cat(flats)
        collective(flat)
        chunks = flat.split([t.numel() for t in group])
        views = [(f, c) for f, c, d in zip(flats, chunks, dense) if d]
        if views:
            torch._foreach_copy_([f for f, _ in views], [c for _, c in views])
        for t, c, d in zip(group, chunks, dense):
            if not d:
                t.copy_(c.view_as(t))


def all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Average the gradients of params over all processes as DDP does (times 1/world, then summed), in one
    all-reduce per dtype; a parameter without a gradient gets zeros first (every process sends the same layout)."""
    if not is_dist():
        return
    scale = 1.0 / get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)

    def average(flat: torch.Tensor) -> None:
        flat.mul_(scale)
        dist.all_reduce(flat)
    _coalesced([p.grad for p in params], average)


def broadcast_state(module: torch.nn.Module, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters and buffers (buffers_only: its buffers, BatchNorm statistics) into module on every
    process, one broadcast per dtype: what DistributedDataParallel does when it wraps a model (and, for the
    buffers, before every forward)."""
    if not is_dist():
        return
    tensors = [b for b in module.buffers()] + ([] if buffers_only else [p.data for p in module.parameters()])
    _coalesced(tensors, lambda flat: dist.broadcast(flat, src=0))
