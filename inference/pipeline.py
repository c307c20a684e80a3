"""The prediction loop: frames decoded ahead in a background thread and letterboxed by a few more, batched on the
detector's device, boxes mapped back to source pixels, outputs written in frame order by a writer thread (every
queue bounded: constant memory)."""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import cv2
import numpy as np
import torch

from datasets.event_frames import fused_item_image
from inference.detector import Detector, frames_to_input
from inference.sources import Source, SourceFrame
from inference.writers import Outputs
from utils.letterbox import boxes_xyxy_letterbox_to_original, letterbox, rect_input_shape
from utils.streams import Image, image_hw

STRIDE = 32  # the network's largest stride: input sides are multiples of it
QUEUE_MIN = 8  # frames a stage may hold ahead at least (2 batches otherwise): smooths the stages' jitter at batch 1
_END = object()


def prepare(image: Image, shape: tuple[int, int]) -> tuple[np.ndarray, float, tuple[float, float]]:
    """The network input of a BGR frame (or a fused one, datasets/event_frames.py) letterboxed to shape (h, w), as
    validation makes it: uint8 [h, w, C] RGB (fused: RGB, ON, OFF), ratio and pad (utils/letterbox.py)."""
    img, ratio, pad = letterbox(image, shape)
    hwc = fused_item_image(img) if isinstance(img, tuple) else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return hwc, ratio, pad


class _Prepared:
    """A frame with its network input (None when unreadable), letterbox ratio and pad."""
    __slots__ = ("frame", "input", "ratio", "pad")

    def __init__(self, frame: SourceFrame, long_side: int):
        self.frame, self.input, self.ratio, self.pad = frame, None, 1.0, (0.0, 0.0)
        if frame.image is not None:
            self.input, self.ratio, self.pad = prepare(frame.image, rect_input_shape(image_hw(frame.image), long_side,
                                                                               STRIDE))


def _ahead(items: Iterator, depth: int) -> Iterator:
    """items, produced in a background thread at most depth ahead; its exceptions are raised here, in order. The
    thread stops when the consumer stops (closing this generator)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(obj: object) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as e:  # noqa: B902 - handed to the consumer, which raises it
            put((None, e))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        put((_END, None))

    thread = threading.Thread(target=work, name="predict-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _prepared(source: Source, long_side: int, workers: int, depth: int) -> Iterator[_Prepared]:
    """The source's frames letterboxed by `workers` threads (OpenCV releases the GIL), in order, at most depth
    frames in flight."""
    with ThreadPoolExecutor(workers, thread_name_prefix="predict-letterbox") as pool:
        pending: deque = deque()
        for frame in source:
            pending.append(pool.submit(_Prepared, frame, long_side))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _Writer:
    """Outputs.write in a background thread, in order, at most depth frames queued (constant memory); a write that
    fails is raised in the caller at its next put() or at finish()."""

    def __init__(self, outputs: Outputs, depth: int):
        self.outputs, self.error = outputs, None
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._work, name="predict-write", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while True:
            item = self.q.get()
            if item is _END:
                return
            if self.error is None:
                try:
                    self.outputs.write(*item)
                except BaseException as e:  # noqa: B902 - raised in the caller
                    self.error = e

    def put(self, frame: SourceFrame, dets: np.ndarray | None) -> None:
        """Queue one frame's outputs (blocks while depth frames wait)."""
        if self.error is not None:
            raise self.error
        self.q.put((frame, dets))

    def finish(self, raise_error: bool = True) -> None:
        """Wait until every queued frame is written; raise a write's error (unless raise_error is False)."""
        self.q.put(_END)
        self.thread.join()
        if raise_error and self.error is not None:
            raise self.error


def prep_workers() -> int:
    """Letterbox threads of a prediction run: half the CPUs, 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def run_predictions(detector: Detector, source: Source, long_side: int, batch: int, outputs: Outputs,
                    device: torch.device | str = "cpu", on_batch: Callable[[dict], None] | None = None) -> dict:
    """Run detector over every frame of source, letterboxed to rect_input_shape(frame, long_side), batch frames at a
    time (a change of frame size starts a new batch); write each frame's detections (source pixels) to outputs in order.
    Three stages overlap: decoding and letterboxing in background threads, the detector here, the outputs in a
    writer thread (each bounded: constant memory). A detector with detect_frames (TorchDetector: a CUDA graph) gets
    the uint8 frames, any other detect() of frames_to_input; one with warm_up(frame shape, batch) is warmed up at the
    first frame of each shape, while the background threads prepare the rest of the batch.
    Returns {frames, detections, skipped, seconds, model_seconds, decode_wait_seconds (waiting for letterboxed
    frames), write_wait_seconds (waiting for the writer), first_batch_seconds (from the start until the first batch's
    detections: start-up included)}; on Ctrl-C (KeyboardInterrupt) the frames done so
    far are written and the exception goes on (the caller closes outputs), with stats in its `stats` attribute.
    on_batch(stats so far) is called after each batch."""
    device = torch.device(device)
    stats = {"frames": 0, "detections": 0, "skipped": 0, "seconds": 0.0, "model_seconds": 0.0,
             "decode_wait_seconds": 0.0, "write_wait_seconds": 0.0, "first_batch_seconds": 0.0}
    start = time.perf_counter()
    pending: list[_Prepared] = []
    shape = None  # the input shape of the pending frames
    by_frames = getattr(detector, "detect_frames", None)
    warm_up = getattr(detector, "warm_up", None)  # TorchDetector: the CUDA graph's capture, while the batch fills
    warmed: set = set()
    depth = max(QUEUE_MIN, 2 * batch)  # frames each stage may hold ahead
    writer = _Writer(outputs, depth)

    def detect(inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Detections [N, 6] per input, input pixels, float32 on the host (one device-to-host copy)."""
        found = by_frames(inputs, batch) if by_frames is not None else detector.detect(frames_to_input(inputs,
                                                                                                       device))
        rows = torch.cat(found).cpu().numpy() if found else np.zeros((0, 6), np.float32)
        return np.split(rows, np.cumsum([len(d) for d in found])[:-1])

    def flush() -> None:
        ready = [p for p in pending if p.input is not None]
        dets = []
        if ready:
            t0 = time.perf_counter()
            for d, p in zip(detect([p.input for p in ready]), ready):  # in float64, as the evaluator
                xyxy = boxes_xyxy_letterbox_to_original(d[:, :4].astype(np.float64), p.ratio, p.pad, p.frame.size)
                dets.append(np.concatenate([xyxy, d[:, 4:6].astype(np.float64)], 1))
            stats["model_seconds"] += time.perf_counter() - t0
            if not stats["first_batch_seconds"]:  # start-up included: model warm-up, CUDA graph capture
                stats["first_batch_seconds"] = time.perf_counter() - start
        found = iter(dets)
        t0 = time.perf_counter()
        for p in pending:
            d = next(found) if p.input is not None else None
            writer.put(p.frame, d)
            stats["frames"] += 1
            stats["skipped"] += d is None
            stats["detections"] += 0 if d is None else len(d)
        stats["write_wait_seconds"] += time.perf_counter() - t0
        pending.clear()
        stats["seconds"] = time.perf_counter() - start
        if on_batch is not None:
            on_batch(stats)

    frames = _ahead(_prepared(source, long_side, prep_workers(), depth), depth)
    try:
        waited = time.perf_counter()
        for p in frames:
            stats["decode_wait_seconds"] += time.perf_counter() - waited
            if p.input is not None and shape is not None and p.input.shape != shape:
                flush()
            if p.input is not None:
                shape = p.input.shape
                if warm_up is not None and shape not in warmed:
                    warmed.add(shape)
                    warm_up(shape, batch)
            pending.append(p)
            if len(pending) >= 4 * batch or sum(q.input is not None for q in pending) == batch:
                flush()
                shape = None
            waited = time.perf_counter()
        if pending:
            flush()
    except KeyboardInterrupt as e:
        writer.finish()
        stats["seconds"] = time.perf_counter() - start
        e.stats = stats
        raise
    except BaseException:
        writer.finish(raise_error=False)  # the error that stopped the run is the one to raise
        raise
    finally:
        frames.close()
    t0 = time.perf_counter()
    writer.finish()
    stats["write_wait_seconds"] += time.perf_counter() - t0
    stats["seconds"] = time.perf_counter() - start
    return stats
