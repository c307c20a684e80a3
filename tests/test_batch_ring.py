"""Batches through the shared-memory ring (speed/batch_ring.py) and build_loader (its choice of it): the same
batches as collate_fred, whole and in order, with real DataLoader workers racing ahead; the pinned path on CUDA."""
import faulthandler
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from datasets.fred_dataset import collate_fred
from speed import batch_ring
from speed.batch_ring import (PREFETCH_FACTOR, SHM_DIR, BatchRing, RingBatch, RingCollate, build_loader,
                              shared_uint8)


class Items(Dataset):
    """Items shaped like FredDataset's: image i is filled with i % 251 (and its row number), i % 3 boxes."""

    def __init__(self, n: int, shape=(24, 32), slow: float = 0.0, channels: int = 3):
        self.n, self.shape, self.slow, self.channels = n, shape, slow, channels

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if self.slow and i % 5 == 0:
            time.sleep(self.slow)  # uneven workers: the others race ahead
        h, w = self.shape
        img = torch.full((h, w, self.channels), i % 251, dtype=torch.uint8)
        img[:, :, -1] = torch.arange(h, dtype=torch.uint8)[:, None]
        boxes = torch.tensor([[0.0, i, 2.0, 3.0, 4.0]] * (i % 3)).reshape(-1, 5)
        return {"image": img.permute(2, 0, 1), "boxes": boxes, "index": i, "orig_shape": (h * 2, w * 2),
                "ratio": 0.5, "pad": (0.0, float(i)), "hsv": torch.tensor([0.1, 0.2, float(i)])}


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a["images"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("workers", [1, 3])
def test_ring_batches_equal_collate_fred_with_workers_racing_ahead(workers):
    """Every batch resolved from the ring equals collate_fred of the same items, over many laps of each worker's
    slots, shuffled, with the last batch short and two epochs of persistent workers."""
    ds = Items(203, slow=0.002)
    sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(0))
    ring = BatchRing(workers, PREFETCH_FACTOR + 1, 8, (24, 32, 3), persistent=True)  # sealed at the first batch
    loader = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=workers, collate_fn=RingCollate(ring),
                        prefetch_factor=PREFETCH_FACTOR, persistent_workers=True)
    slots = set()
    for _ in range(2):
        sampler.generator.manual_seed(len(slots))  # the order this epoch will see: drawn, then drawn again
        order = list(iter(sampler))
        sampler.generator.manual_seed(len(slots))
        for k, batch in enumerate(loader):
            assert isinstance(batch, RingBatch)
            slots.add((batch.worker, batch.slot))
            got = batch.resolve(pin=False)
            _equal(got, collate_fred([ds[i] for i in order[8 * k:8 * k + 8]]))
        assert k == 25 and len(got["index"]) == 203 - 25 * 8
    assert len(slots) == workers * (PREFETCH_FACTOR + 1)  # every slot was used


@pytest.mark.parametrize("channels", [1, 5])
def test_images_of_any_channel_count_go_through_collate_and_the_ring_unchanged(channels):
    """A sample's image may have other than 3 channels (an event stream, a fused one): collate_fred and the ring's
    slots, shaped by the image shape they are given, pass its bytes through as they are."""
    ds = Items(12, channels=channels)
    items = [ds[i] for i in range(4)]
    batch = collate_fred(items)
    assert batch["images"].shape == (4, channels, 24, 32)
    assert batch["images"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch["images"], torch.stack([it["image"] for it in items]))
    ring = BatchRing(1, PREFETCH_FACTOR + 1, 4, (24, 32, channels))
    loader = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=RingCollate(ring), prefetch_factor=PREFETCH_FACTOR)
    for k, ring_batch in enumerate(loader):
        _equal(ring_batch.resolve(pin=False), collate_fred([ds[i] for i in range(4 * k, 4 * k + 4)]))
    assert k == 2


def test_ring_collate_in_the_main_process_is_collate_fred():
    ds = Items(10)
    batch = RingCollate(BatchRing(2, 3, 4, (24, 32, 3)))([ds[i] for i in range(4)])
    _equal(batch, collate_fred([ds[i] for i in range(4)]))


def test_build_loader_without_pinning_or_workers_is_plain():
    ds = Items(10)
    for workers, pin in ((0, True), (2, False)):
        loader = build_loader(ds, 4, SequentialSampler(ds), workers, pin, (24, 32, 3))
        assert not isinstance(loader.collate_fn, RingCollate)
        _equal(next(iter(loader)), collate_fred([ds[i] for i in range(4)]))


def test_build_loader_takes_the_ring_only_when_asked_and_pinning_on_cuda(monkeypatch):
    """The choice alone (no iteration: without CUDA nothing would resolve the ring batches)."""
    ds = Items(10)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert isinstance(build_loader(ds, 4, SequentialSampler(ds), 2, True, (24, 32, 3)).collate_fn, RingCollate)
    for workers, pin, ring in ((2, True, False), (2, False, True), (0, True, True)):
        loader = build_loader(ds, 4, SequentialSampler(ds), workers, pin, (24, 32, 3), ring=ring)
        assert loader.collate_fn is collate_fred


def test_build_loader_without_room_in_dev_shm_warns_and_takes_no_ring(monkeypatch, caplog):
    ds = Items(40)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ring_bytes = 2 * 3 * 4 * 24 * 32 * 3  # 2 workers x 3 slots x batch 4 x image
    before = batch_ring.reserved_bytes()
    monkeypatch.setattr("speed.batch_ring.shm_free_bytes", lambda: before + 2 * ring_bytes)
    first = build_loader(ds, 4, SequentialSampler(ds), 2, True, (24, 32, 3))
    assert isinstance(first.collate_fn, RingCollate)
    assert batch_ring.reserved_bytes() == before + ring_bytes  # counted, though none of its pages is written yet
    monkeypatch.setattr("speed.batch_ring.shm_free_bytes", lambda: before + 3 * ring_bytes - 1)  # 2x beside first's: no
    with caplog.at_level("WARNING"):
        assert build_loader(ds, 4, SequentialSampler(ds), 2, True, (24, 32, 3)).collate_fn is collate_fred
    assert "too little for a" in caplog.text and "--shm-size" in caplog.text


def test_ring_collate_refuses_images_of_another_shape():
    """stack(out=) would resize the slot's view and leave stale pixels: the worker raises instead."""
    ring = BatchRing(1, 2, 4, (20, 32, 3))
    loader = DataLoader(Items(8), batch_size=4, num_workers=1, collate_fn=RingCollate(ring))
    with pytest.raises(ValueError, match="does not fit the batch ring"):
        next(iter(loader))


def _fill_quietly(buffer: torch.Tensor) -> None:
    """In a forked child: write the buffer; a segfault ends the child without pytest's faulthandler dump."""
    faulthandler.disable()
    buffer.fill_(7)


@pytest.mark.parametrize("persistent", [True, False])
def test_persistent_ring_is_sealed_from_later_forks_at_its_first_batch(persistent):
    """A process forked after a persistent ring's first batch does not inherit its memory (it faults on touching
    it); a non-persistent ring stays inheritable, for the workers of its loader's next iteration."""
    ring = BatchRing(1, 2, 4, (24, 32, 3), persistent=persistent)
    batch = RingCollate(ring)
    loader = DataLoader(Items(8), batch_size=4, num_workers=1, collate_fn=batch)
    _equal(next(iter(loader)).resolve(pin=False), collate_fred([Items(8)[i] for i in range(4)]))
    child = multiprocessing.get_context("fork").Process(target=_fill_quietly, args=(ring.buffer,))
    child.start()
    child.join()
    assert child.exitcode == (-signal.SIGSEGV if persistent else 0)


@pytest.mark.parametrize("method, expected", [("fork", True), ("spawn", False), ("forkserver", False)])
def test_ring_only_with_forked_workers(monkeypatch, method, expected):
    """Spawned workers would get a pickled copy of the buffer, not its mapping: no ring then."""
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: method)
    assert batch_ring.ring_supported() is expected


def test_ring_batch_outside_its_process_is_an_error():
    batch = RingBatch(ring_id=10 ** 9, worker=0, slot=0, n=1, labels={})
    with pytest.raises(RuntimeError, match="pin_memory=True"):
        batch.resolve(pin=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ring_loader_on_cuda_gives_pinned_collate_fred_batches():
    """The pin-memory thread resolves the ring: pinned dicts equal collate_fred's, in order, over two epochs."""
    ds = Items(150, shape=(64, 96), slow=0.002)
    loader = build_loader(ds, 16, SequentialSampler(ds), 4, True, (64, 96, 3), persistent_workers=True)
    assert isinstance(loader.collate_fn, RingCollate)
    for _ in range(2):
        seen = []
        for k, batch in enumerate(loader):
            assert batch["images"].is_pinned() and batch["targets"].is_pinned()
            _equal(batch, collate_fred([ds[i] for i in range(16 * k, min(16 * k + 16, 150))]))
            seen.extend(batch["index"].tolist())
        assert seen == list(range(150))
    assert np.prod(loader.collate_fn.ring.buffer.shape[:2]) == 4 * (PREFETCH_FACTOR + 1)


def test_shared_uint8_is_shared_with_forked_processes_and_leaves_no_file():
    before = set(os.listdir(SHM_DIR))
    buf, _ = shared_uint8((3, 5))
    assert set(os.listdir(SHM_DIR)) - before == set()  # unlinked at once: nothing left behind after a crash
    child = multiprocessing.get_context("fork").Process(target=buf.fill_, args=(7,))
    child.start()
    child.join()
    assert child.exitcode == 0 and (buf == 7).all()
