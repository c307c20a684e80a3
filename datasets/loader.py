"""The DataLoader of collate_fred batches for training and evaluation, and how many loader processes to start.

With BATCH_RING on CUDA its batches come through the shared-memory ring of speed/batch_ring.py.
"""
import logging
import math
import os

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datasets.fred_dataset import collate_fred
from speed.batch_ring import (PREFETCH_FACTOR, SHM_DIR, BatchRing, RingCollate, reserved_bytes, ring_supported,
                              shm_free_bytes)

LOGGER = logging.getLogger(__name__)


def capped_workers(workers: int) -> int:
    """Loader processes to start for a setting of `workers`: at most the CPU count, at least 0."""
    return max(0, min(workers, os.cpu_count() or 1))


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
