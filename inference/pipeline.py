"""The prediction loop: frames decoded and letterboxed ahead in a background thread (a bounded queue: constant
memory), batched on the detector's device, boxes mapped back to source pixels, outputs written in frame order."""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator

import cv2
import numpy as np
import torch

from datasets.event_frames import fused_item_image
from inference.detector import Detector
from inference.sources import Source, SourceFrame
from inference.writers import Outputs
from utils.letterbox import boxes_xyxy_letterbox_to_original, letterbox, rect_input_shape
from utils.streams import Image, image_hw

STRIDE = 32  # the network's largest stride: input sides are multiples of it
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


def run_predictions(detector: Detector, source: Source, long_side: int, batch: int, outputs: Outputs,
                    device: torch.device | str = "cpu", on_batch: Callable[[dict], None] | None = None) -> dict:
    """Run detector over every frame of source, letterboxed to rect_input_shape(frame, long_side), batch frames at a
    time (a change of frame size starts a new batch); write each frame's detections (source pixels) to outputs in order.
    Returns {frames, detections, skipped, seconds, model_seconds}; on Ctrl-C (KeyboardInterrupt) the frames done so
    far are written and the exception goes on (the caller closes outputs), with stats in its `stats` attribute.
    on_batch(stats so far) is called after each batch."""
    device = torch.device(device)
    stats = {"frames": 0, "detections": 0, "skipped": 0, "seconds": 0.0, "model_seconds": 0.0}
    start = time.perf_counter()
    pending: list[_Prepared] = []
    shape = None  # the input shape of the pending frames

    def flush() -> None:
        ready = [p for p in pending if p.input is not None]
        dets = []
        if ready:
            t0 = time.perf_counter()
            images = torch.from_numpy(np.stack([p.input for p in ready])).to(device).permute(0, 3, 1, 2)
            for d, p in zip(detector.detect(images.float().div_(255.0)), ready):  # in float64, as the evaluator
                xyxy = boxes_xyxy_letterbox_to_original(d[:, :4].double(), p.ratio, p.pad, p.frame.size)
                dets.append(torch.cat([xyxy, d[:, 4:6].double()], 1).cpu().numpy())
            stats["model_seconds"] += time.perf_counter() - t0
        found = iter(dets)
        for p in pending:
            d = next(found) if p.input is not None else None
            outputs.write(p.frame, d)
            stats["frames"] += 1
            stats["skipped"] += d is None
            stats["detections"] += 0 if d is None else len(d)
        pending.clear()
        stats["seconds"] = time.perf_counter() - start
        if on_batch is not None:
            on_batch(stats)

    frames = _ahead((_Prepared(f, long_side) for f in source), depth=2 * batch)
    try:
        for p in frames:
            if p.input is not None and shape is not None and p.input.shape != shape:
                flush()
            if p.input is not None:
                shape = p.input.shape
            pending.append(p)
            if len(pending) >= 4 * batch or sum(q.input is not None for q in pending) == batch:
                flush()
                shape = None
        if pending:
            flush()
    except KeyboardInterrupt as e:
        stats["seconds"] = time.perf_counter() - start
        e.stats = stats
        raise
    finally:
        frames.close()
    stats["seconds"] = time.perf_counter() - start
    return stats
