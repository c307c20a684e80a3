"""Reused shared-memory image batches for DataLoader workers: a ring of slots that each worker collates into.

A DataLoader worker normally stacks every batch into a fresh shared-memory segment, which the main process then
maps and copies into pinned memory: for 640x640 batches the page faults of those new mappings cost as much as the
copies themselves (one 39 MB segment per batch of 32, faulted in by the worker and again by the main process).
Here the main process allocates once, before the workers start, a shared buffer [workers, slots, batch, H, W, C]
uint8; each worker stacks its batches into its own slots in turn and sends only the slot's address. The
DataLoader's pin-memory thread (main process) copies the slot into pinned memory (RingBatch.pin_memory) and the
batch goes on as a plain collate_fred dict.

Why a slot is never overwritten while in use: a DataLoader hands out the indices of a map-style dataset to its
workers round-robin and keeps at most prefetch_factor batches per worker in flight (dispatched and not yet returned
by its iterator), and returns a batch only after its pin-memory copy. So when a worker starts its batch j, its batch
j - prefetch_factor - 1 has been copied out of the ring: prefetch_factor + 1 slots per worker suffice.
"""
from __future__ import annotations

import itertools
import logging
import math
import mmap
import multiprocessing
import os
import sys
import tempfile
import weakref

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from datasets.fred_dataset import collate_fred, collate_labels

LOGGER = logging.getLogger(__name__)

PREFETCH_FACTOR = 2  # batches in flight per worker: the DataLoader's prefetch_factor; the ring has one slot more
SHM_DIR = "/dev/shm"  # tmpfs (RAM) where the ring's buffer lives

_RINGS: "weakref.WeakValueDictionary[int, BatchRing]" = weakref.WeakValueDictionary()  # main process: id -> ring
_IDS = itertools.count()


def ring_supported() -> bool:
    """Whether DataLoader workers will share a BatchRing: forked workers (they inherit its mapping) on Linux."""
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    return sys.platform.startswith("linux") and os.path.isdir(SHM_DIR) and method == "fork"


def shm_free_bytes() -> int:
    """Free bytes in SHM_DIR (a tmpfs: RAM the ring's pages would take)."""
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


def shared_uint8(shape: tuple[int, ...]) -> tuple[torch.Tensor, mmap.mmap]:
    """uint8 tensor of shape on a MAP_SHARED mapping of an unlinked file in /dev/shm, and that mapping: forked
    processes share it, and its pages are only allocated when first written (share_memory_() would copy the whole
    buffer once)."""
    fd, path = tempfile.mkstemp(prefix="fred_yolo_batch_ring_", dir=SHM_DIR)
    try:
        os.unlink(path)  # the mapping keeps the memory until the last process unmaps it
        os.ftruncate(fd, math.prod(shape))
        mapping = mmap.mmap(fd, math.prod(shape))
    finally:
        os.close(fd)
    return torch.frombuffer(mapping, dtype=torch.uint8).view(shape), mapping


def reserved_bytes() -> int:
    """Bytes of the BatchRings alive in this process (their pages may not be written, hence allocated, yet)."""
    return sum(ring.buffer.numel() for ring in list(_RINGS.values()))


class BatchRing:
    """Shared uint8 buffer [workers, slots, batch, H, W, C], made in the main process before the DataLoader's
    workers fork (they inherit its mapping).

    persistent: the DataLoader's workers start once; the ring is then sealed (MADV_DONTFORK) when its first batch is
    resolved, so that processes forked later (other loaders' workers) do not inherit it and hold its memory after
    this loader is gone. A loader that starts new workers at each iteration must not be persistent here.
    """

    def __init__(self, workers: int, slots: int, batch_size: int, image_shape: tuple[int, int, int],
                 persistent: bool = False):
        """slots per worker; image_shape (H, W, C) of one item's image in HWC memory order."""
        self.id = next(_IDS)
        self.buffer, self._mapping = shared_uint8((workers, slots, batch_size, *image_shape))
        self.persistent = persistent
        self._sealed = False
        self._used = 0  # batches this process's copy has collated (each worker counts its own)
        _RINGS[self.id] = self

    def seal(self) -> None:
        """Processes forked from now on do not inherit the buffer (persistent rings, main process, once)."""
        if self.persistent and not self._sealed:
            self._mapping.madvise(mmap.MADV_DONTFORK)
            self._sealed = True

    def claim(self, worker: int, n: int) -> tuple[int, torch.Tensor]:
        """In a worker: its next slot, as (slot number, uint8 [n, H, W, C] view), for a batch of n images."""
        slot = self._used % self.buffer.shape[1]
        self._used += 1
        return slot, self.buffer[worker, slot, :n]


class RingBatch:
    """What a worker sends for a batch: where its images are in the ring, and collate_labels()' entries."""

    def __init__(self, ring_id: int, worker: int, slot: int, n: int, labels: dict):
        self.ring_id, self.worker, self.slot, self.n, self.labels = ring_id, worker, slot, n, labels

    def resolve(self, pin: bool) -> dict:
        """In the process that made the ring: the collate_fred dict, its images uint8 [n, C, H, W] (NHWC memory)
        copied out of the slot (into pinned memory when pin, with the labels), which frees the slot."""
        ring = _RINGS.get(self.ring_id)
        if ring is None:
            raise RuntimeError("a RingBatch must be resolved in the process that made its BatchRing (the "
                               "DataLoader's pin-memory thread does it): use ring loaders with pin_memory=True")
        ring.seal()  # all of the loader's workers have started
        view = ring.buffer[self.worker, self.slot, :self.n]
        images = view.pin_memory() if pin else view.clone()
        labels = {k: v.pin_memory() for k, v in self.labels.items()} if pin else self.labels
        return {"images": images.permute(0, 3, 1, 2), **labels}

    def pin_memory(self) -> dict:
        """The DataLoader's pin-memory thread calls this: resolve(pin=True)."""
        return self.resolve(pin=True)


class RingCollate:
    """collate_fred that, in a DataLoader worker, stacks the images into the worker's next slot of a BatchRing and
    returns a RingBatch; in the main process (no workers) plain collate_fred."""

    def __init__(self, ring: BatchRing):
        self.ring = ring

    def __call__(self, batch: list[dict]) -> dict | RingBatch:
        """Collate a list of FredDataset items."""
        info = get_worker_info()
        if info is None:
            return collate_fred(batch)
        slot, out = self.ring.claim(info.id, len(batch))
        images = [item["image"].permute(1, 2, 0) for item in batch]
        if any(image.shape != out.shape[1:] for image in images):  # stack(out=) would resize the slot's view
            raise ValueError(f"an image of shape {tuple(images[0].shape)} (HWC) does not fit the batch ring's "
                             f"{tuple(out.shape[1:])}: build the loader with the dataset's image shape")
        torch.stack(images, out=out)
        return RingBatch(self.ring.id, info.id, slot, len(batch), collate_labels(batch))


def build_loader(dataset: Dataset, batch_size: int, sampler: Sampler, workers: int, pin_memory: bool,
                 image_shape: tuple[int, int, int], ring: bool = True, **kwargs) -> DataLoader:
    """DataLoader of collate_fred batches. With ring, forked workers and pin_memory on CUDA (the pin-memory thread
    resolves ring batches) they come through a BatchRing of image_shape (H, W, C) images, PREFETCH_FACTOR + 1 slots
    per worker (fewer when the sampler gives fewer batches), when /dev/shm has twice its size free beside the rings
    already made (else a warning and no ring). One iterator at a time per loader: two live iterators of one
    non-persistent loader would share its slots. kwargs go to DataLoader (persistent_workers, worker_init_fn,
    generator, drop_last)."""
    use_ring = ring and workers > 0 and pin_memory and torch.cuda.is_available() and ring_supported()
    slots = max(1, min(PREFETCH_FACTOR + 1, math.ceil(math.ceil(len(sampler) / batch_size) / max(workers, 1))))
    nbytes = workers * slots * batch_size * math.prod(image_shape)
    free = shm_free_bytes() - reserved_bytes() if use_ring else 0  # other rings' pages may not be written yet
    if use_ring and free < 2 * nbytes:  # room for it and other loaders' batches: a worker writing to a full tmpfs dies
        LOGGER.warning("%s has %.1f GB free beside the batch rings already made, too little for a %.1f GB batch "
                       "ring: batches go through DataLoader's own shared memory (grow /dev/shm, e.g. docker run "
                       "--shm-size=8g, or lower NUM_WORKERS)", SHM_DIR, free / 1e9, nbytes / 1e9)
        use_ring = False
    if not use_ring:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          collate_fn=collate_fred, pin_memory=pin_memory, **kwargs)
    ring = BatchRing(workers, slots, batch_size, image_shape, persistent=bool(kwargs.get("persistent_workers")))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=RingCollate(ring), pin_memory=True, prefetch_factor=PREFETCH_FACTOR, **kwargs)
