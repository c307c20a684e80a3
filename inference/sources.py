"""Frame sources for predict_fred.py: an image, a folder of images, a glob, a video, a FRED sequence folder, or any
iterable of frames; each yields SourceFrame's in order, read lazily (one frame at a time)."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

import cv2
import numpy as np

from datasets.event_frames import event_planes, fuse_streams
from datasets.fred_index import (EVENT_IMAGE_DIR, FUSION_RGB_DIR, IMAGE_EXTENSIONS, REMOVED_DIR, natural_key,
                                 pair_sequence)
from datasets.image_io import printable, read_image
from utils.streams import Image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".ts")
FOLDER_FPS = 30.0  # frame rate of the annotated video of an image folder, a glob or a FRED sequence (FRED's)
FUSION_TOLERANCE_S = 1 / 60  # config_fred.FUSION_PAIR_TOLERANCE, for a checkpoint that records none


class SourceError(Exception):
    """A source that cannot be read at all (missing, unreadable video, empty folder): the message names it."""


class SourceFrame(NamedTuple):
    """One frame of a source: its position, its name (file_name in detections.json), its BGR image (a fused frame:
    (BGR frame, event planes), datasets/event_frames.py) or None with the reason, and its size (h, w; (0, 0) when
    unreadable). event_name: a fused frame's event partner."""
    index: int
    name: str
    image: Image | None
    reason: str
    size: tuple[int, int]
    event_name: str = ""


@dataclass
class Source:
    """A sequence of frames: kind (image, folder, glob, video, sequence, stream), what it reads (path), the frame
    rate of its annotated video, a frame count when known, and frames() making the iterator."""
    kind: str
    path: str
    fps: float
    count: int | None
    frames: Callable[[], Iterator[SourceFrame]] = field(repr=False)

    def __iter__(self) -> Iterator[SourceFrame]:
        """The frames, in order."""
        return self.frames()


def _image_frame(index: int, path: str, name: str) -> SourceFrame:
    """The SourceFrame of an image file (None and the reason when it cannot be decoded)."""
    img, reason = read_image(path)
    return SourceFrame(index, name, img, reason, (0, 0) if img is None else img.shape[:2])


def _image_files(paths: list[str], names: list[str], kind: str, where: str) -> Source:
    """A Source of image files."""
    if not paths:
        raise SourceError(f"{where}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")

    def frames() -> Iterator[SourceFrame]:
        for i, (path, name) in enumerate(zip(paths, names)):
            yield _image_frame(i, path, name)
    return Source(kind, where, FOLDER_FPS, len(paths), frames)


def _is_image(name: str) -> bool:
    """Whether a file name has an image extension."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_sequence_folder(path: str) -> bool:
    """Whether path is a FRED sequence folder (PADDED_RGB/, RGB/ or Event/Frames/ inside)."""
    return any(os.path.isdir(os.path.join(path, d)) for d in (FUSION_RGB_DIR, "RGB", EVENT_IMAGE_DIR))


def _video(path: str) -> Source:
    """A Source of a video file read with OpenCV (its own frame rate; 30 when it records none)."""
    cap = cv2.VideoCapture(path)
    ok = cap.isOpened() and cap.grab()
    fps, count = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    if not ok:
        raise SourceError(f"{path}: OpenCV cannot read a frame of this video (not a video, damaged, or a codec this "
                          "OpenCV build lacks): convert it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4, or extract frames")
    stem = os.path.splitext(os.path.basename(path))[0]

    def frames() -> Iterator[SourceFrame]:
        cap = cv2.VideoCapture(path)
        try:
            i = 0
            while True:
                ok, img = cap.read()
                if not ok:
                    return
                yield SourceFrame(i, f"{stem}_{i:06d}", img, "", img.shape[:2])
                i += 1
        finally:
            cap.release()
    return Source("video", path, fps if fps > 0 else FOLDER_FPS, count if count > 0 else None, frames)


def _sequence(path: str, modality: str | None, rgb_dir: str, tolerance_s: float) -> Source:
    """A Source of a FRED sequence folder: its rgb_dir frames, its Event/Frames/ frames, or for fusion both paired by
    time as training pairs them (datasets.fred_index.pair_sequence), the event frame as polarity planes."""
    if modality is None:
        raise SourceError(f"{path} is a FRED sequence folder, but the checkpoint records no modality (a bare state "
                          f"dict): pass its {rgb_dir}/ or {EVENT_IMAGE_DIR}/ folder as --source")
    parent = os.path.dirname(os.path.abspath(path))

    def listing(folder: str) -> list[str]:
        try:
            return sorted((n for n in os.listdir(os.path.join(path, folder)) if _is_image(n)), key=natural_key)
        except OSError as e:
            raise SourceError(f"{path}: cannot list {folder}/ for a {modality} checkpoint "
                              f"({e.strerror or e})") from None

    def rel(folder: str, name: str) -> str:
        return os.path.relpath(os.path.join(path, folder, name), parent).replace(os.sep, "/")

    if modality != "fusion":
        folder = rgb_dir if modality == "rgb" else EVENT_IMAGE_DIR
        names = listing(folder)
        return _image_files([os.path.join(path, folder, n) for n in names], [rel(folder, n) for n in names],
                            "sequence", path)
    removed = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(path, REMOVED_DIR))
               if _is_image(n)} if os.path.isdir(os.path.join(path, REMOVED_DIR)) else set()
    pairing = pair_sequence(listing(rgb_dir), removed, listing(EVENT_IMAGE_DIR), rgb_dir, tolerance_s * 1e6)
    pairs = [(pairing.rgb_names[i], pairing.event_names[j]) for i, j, _ in pairing.pairs]
    if not pairs:
        raise SourceError(f"{path}: no {rgb_dir}/ frame has an {EVENT_IMAGE_DIR}/ frame within {tolerance_s * 1e3:g} "
                          "ms (check with python train_fred.py --modality fusion --check_data)")

    def frames() -> Iterator[SourceFrame]:
        for i, (rgb_name, event_name) in enumerate(pairs):
            name, event_rel = rel(rgb_dir, rgb_name), rel(EVENT_IMAGE_DIR, event_name)
            rgb, reason = read_image(os.path.join(path, rgb_dir, rgb_name))
            event, event_reason = (None, "") if rgb is None else read_image(os.path.join(path, EVENT_IMAGE_DIR,
                                                                                        event_name))
            if rgb is not None and event is None:
                reason = f"its event partner {printable(event_rel)} {event_reason}"
            elif rgb is not None and event.shape[:2] != rgb.shape[:2]:
                reason = f"its size {rgb.shape[1]}x{rgb.shape[0]} differs from its event partner's " \
                         f"{event.shape[1]}x{event.shape[0]} ({printable(event_rel)})"
            if reason:
                yield SourceFrame(i, name, None, reason, (0, 0), event_rel)
            else:
                yield SourceFrame(i, name, fuse_streams(rgb, event_planes(event)), "", rgb.shape[:2], event_rel)
    return Source("sequence", path, FOLDER_FPS, len(pairs), frames)


def open_source(source: str, modality: str | None = None, rgb_dir: str = FUSION_RGB_DIR,
                tolerance_s: float = FUSION_TOLERANCE_S) -> Source:
    """The Source that `source` names: an image file, a FRED sequence folder (the modality's frames), a folder of
    images (natural order), a glob pattern, or a video file. SourceError naming it when it cannot be read."""
    if os.path.isdir(source):
        if is_sequence_folder(source):
            return _sequence(source, modality, rgb_dir, tolerance_s)
        names = sorted((n for n in os.listdir(source) if _is_image(n)), key=natural_key)
        return _image_files([os.path.join(source, n) for n in names], names, "folder", source)
    if os.path.isfile(source):
        if _is_image(source):
            return _image_files([source], [os.path.basename(source)], "image", source)
        return _video(source)
    if glob.has_magic(source):
        paths = sorted((p for p in glob.glob(source) if _is_image(p) and os.path.isfile(p)), key=natural_key)
        return _image_files(paths, paths, "glob", source)
    raise SourceError(f"{source} does not exist: pass an image, a folder of images, a glob (quoted: \"dir/*.jpg\"), "
                      "a video file or a FRED sequence folder")


def stream_source(images: Iterable[np.ndarray], fps: float, name: str = "frame") -> Source:
    """A Source of BGR images from any iterable (read once), named name_<index>."""
    def frames() -> Iterator[SourceFrame]:
        for i, img in enumerate(images):
            yield SourceFrame(i, f"{name}_{i:06d}", img, "", img.shape[:2])
    return Source("stream", name, float(fps), None, frames)
