"""Decoded-frame cache: every image decoded once and stored pre-resized in one uint8 file that all workers map.

Decoding a 1280x720 PNG/JPEG costs ~10 ms of CPU, and a mosaic needs four: with the cache a sample reads already
decoded pixels from a read-only np.memmap (the OS page cache shares them between all DataLoader workers and runs).
Each frame is resized (cv2.INTER_LINEAR, aspect kept) so that its long side is `long_side`, exactly the resize the
letterbox does for a square input of that size (and for EVAL_RECT's rectangle of that long side, which keeps the
square's scale: utils.letterbox.rect_shape), so a validation sample read from the cache is the same image.

Files in cache_dir, per list of frames (a "slot": hash of format version, long side and image paths):
  frames-<slot>.bin   the resized frames as decoded (BGR) back to back, HxWxC uint8 each
  frames-<slot>.json  format version, key, per frame byte offset, cached (h, w), original (h, w), CRC-32 of the
                      cached bytes; bad frames + reason; the .bin's mtime_ns when it was written
The key hashes the slot and every image's mtime_ns, ctime_ns and size: when an image changes the slot is rebuilt. A
build writes temporary files and renames them (the old .json is removed first), so a crash never leaves a cache that
is used: a missing, damaged or stale cache is simply built again. Frames that do not decode are recorded as bad.

What opening a cache checks, and so guarantees (a cache that fails a check is built again, with a warning when the
.bin itself is at fault):
- an image changed since the build is decoded again, even when the rewrite restored its size and mtime (utime can set
  mtime, not ctime; ctime also moves on chmod/chown/rename/hard link, which then cost a rebuild). Not caught: a rewrite
  within the same file-system clock tick (a few ms) as the write before it.
- a .bin written to since the build (its size or mtime_ns differs from the recorded ones) is built again: an in-place
  write, zeroing or truncation through the file system is caught wherever it landed (and a copy of the cache folder
  that did not keep the mtimes is rebuilt).
- up to VERIFY_SAMPLE frames, evenly spread, first and last included, are read and checked against their CRC-32 (about
  45 MB at long side 640; measured on a 2000-frame cache: open 7 ms -> 27-40 ms with warm pages, 60-80 ms from disk).
  Damage that leaves the mtime as it was (disk errors, a writer that restores it) is caught when it touches a sampled
  frame: anywhere in a cache of at most VERIFY_SAMPLE frames, and in a file zeroed whole or torn at its end.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import zlib
from multiprocessing.pool import ThreadPool
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from datasets.fred_index import writable_dir
from datasets.image_io import read_image
from utils.letterbox import letterbox_params

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump when the file layout, the resize or the decoding changes: old caches are then ignored
VERIFY_SAMPLE = 64  # frames whose CRC-32 is checked each time a cache is opened


class FrameCache:
    """Read side of a built cache: get(i) -> the cached uint8 [h, w, C] view of frame i (None when bad)."""

    def __init__(self, bin_path: str, meta: dict, built: bool = False):
        """bin_path: the .bin file; meta: its parsed .json; built: whether this process just built it."""
        self.bin_path = bin_path
        self.long_side = int(meta["long_side"])
        self.paths_digest = str(meta["paths_digest"])
        self.offsets = np.asarray(meta["offsets"], dtype=np.int64)
        self.sizes = _frame_sizes(meta)
        self.shapes = np.asarray(meta["shapes"], dtype=np.int64).reshape(-1, 2)
        self.orig_shapes = np.asarray(meta["orig_shapes"], dtype=np.int64).reshape(-1, 2)
        self.bad = {int(k): str(v) for k, v in meta["bad"].items()}
        self.nbytes = int(meta["nbytes"])
        self.built = built
        st = os.stat(bin_path)
        self._identity = (st.st_dev, st.st_ino)
        self._data = self._open()

    def _open(self) -> np.ndarray:
        """The whole .bin as a read-only uint8 array (memory-mapped); refuses a file replaced since the build."""
        st = os.stat(self.bin_path)
        if (st.st_dev, st.st_ino) != self._identity:
            raise RuntimeError(f"the frame cache {self.bin_path} was rebuilt by another run while this one was using "
                               "it: start this run again (it will reuse the new cache)")
        if self.nbytes == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.memmap(self.bin_path, dtype=np.uint8, mode="r", shape=(self.nbytes,)).view(np.ndarray)

    def __getstate__(self) -> dict:
        """Pickled (spawned DataLoader workers) without the mapping; each process maps the file itself."""
        state = dict(self.__dict__)
        state["_data"] = None
        return state

    def __len__(self) -> int:
        """Number of frames."""
        return len(self.offsets)

    def get(self, i: int) -> np.ndarray | None:
        """Frame i as a read-only uint8 [h, w, C] view into the mapped file (C: the decoded image's channels, BGR
        for colour), or None when it did not decode."""
        if self._data is None:
            self._data = self._open()
        h, w = self.shapes[i]
        if h == 0:
            return None
        start = self.offsets[i]
        return self._data[start:start + self.sizes[i]].reshape(h, w, -1)

    def orig_shape(self, i: int) -> tuple[int, int]:
        """(h, w) of frame i's original image ((0, 0) when it did not decode)."""
        return int(self.orig_shapes[i, 0]), int(self.orig_shapes[i, 1])

    def bad_reason(self, i: int) -> str | None:
        """Why frame i did not decode when the cache was built (None when it did)."""
        return self.bad.get(int(i))

    def matches(self, paths: Sequence[str]) -> bool:
        """True when the cache was built for exactly these image paths, in this order."""
        return len(paths) == len(self) and _paths_digest(paths) == self.paths_digest


def default_frame_cache_dir(data_root: str) -> str:
    """`<data_root>/.fred_frame_cache` when it can be written, else `~/.cache/fred_yolo/frames`."""
    return writable_dir(os.path.join(data_root, ".fred_frame_cache"),
                        os.path.join(os.path.expanduser("~"), ".cache", "fred_yolo", "frames"))


def open_frame_cache(paths: Sequence[str], long_side: int, cache_dir: str, data_root: str, max_bytes: float,
                     progress: bool = True, desc: str = "frame cache") -> FrameCache | None:
    """build_frame_cache() in cache_dir ("" = default_frame_cache_dir(data_root)) with as many decoding threads as
    CPUs, or None, with a warning, when the cache cannot be written (disk full, no permission) or would exceed
    max_bytes: the dataset then decodes the image files."""
    try:
        return build_frame_cache(paths, long_side, cache_dir or default_frame_cache_dir(data_root),
                                 workers=os.cpu_count() or 1, progress=progress, desc=desc, max_bytes=max_bytes)
    except OSError as e:
        logger.warning("%s not used (%s): decoding the image files instead", desc, e)
        return None


def _paths_digest(paths: Sequence[str]) -> str:
    """sha1 of the paths in order."""
    h = hashlib.sha1()
    for p in paths:
        h.update(str(p).encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def _file_stamp(path: str) -> tuple[int, int, int]:
    """(mtime_ns, ctime_ns, size) of path, (-1, -1, -1) when it cannot be stat'ed (ctime: no rewrite can restore it)."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1, -1
    return st.st_mtime_ns, st.st_ctime_ns, st.st_size


def _load_resized(path: str, long_side: int) -> tuple[np.ndarray | None, tuple[int, int], str]:
    """(resized BGR image or None, original (h, w), reason it failed or "")."""
    img, reason = read_image(path)
    if img is None:
        return None, (0, 0), reason
    orig = (int(img.shape[0]), int(img.shape[1]))
    _, (nw, nh), _ = letterbox_params(orig, (long_side, long_side))
    if (nw, nh) != (orig[1], orig[0]):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(img), orig, ""


def _frame_sizes(meta: dict) -> np.ndarray:
    """Bytes of each frame in the .bin: frames lie back to back in order (a bad one takes none), so each runs from
    its offset to the next frame's (the last one's to the end of the file)."""
    offsets = np.asarray(meta["offsets"], dtype=np.int64)
    return np.diff(offsets, append=np.int64(meta["nbytes"]))


def _read_meta(json_path: str, bin_path: str, key: str) -> dict | None:
    """The cache's metadata when .json and .bin exist, belong together and match key; else None."""
    try:
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
        if (meta.get("version") != FORMAT_VERSION or meta.get("key") != key
                or os.path.getsize(bin_path) != meta["nbytes"]):
            return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _damage(bin_path: str, meta: dict) -> str | None:
    """Why the .bin no longer holds what the build wrote (None when it passes): written since (mtime moved), or a
    frame of an evenly spread sample of VERIFY_SAMPLE (first and last included) fails its CRC-32."""
    try:
        if os.stat(bin_path).st_mtime_ns != meta["bin_mtime_ns"]:
            return "was written to after it was built"
        shapes, sizes = np.asarray(meta["shapes"], dtype=np.int64).reshape(-1, 2), _frame_sizes(meta)
        good = np.flatnonzero(shapes[:, 0] > 0)
        picks = good[np.unique(np.linspace(0, len(good) - 1, min(VERIFY_SAMPLE, len(good))).round().astype(int))]
        with open(bin_path, "rb") as f:
            for i in picks.tolist():
                f.seek(meta["offsets"][i])
                if zlib.crc32(f.read(int(sizes[i]))) != meta["crc32"][i]:
                    return f"is damaged: frame {i} does not match its checksum"
    except OSError as e:
        return f"cannot be read ({e})"
    except (KeyError, IndexError, TypeError, ValueError) as e:  # a .json edited or written by something else
        return f"has inconsistent metadata ({type(e).__name__}: {e})"
    return None


def _remove_orphans(cache_dir: str, stem: str) -> None:
    """Delete temporary files of this slot left by builds whose process no longer exists (a crash)."""
    for name in os.listdir(cache_dir):
        if not name.startswith(stem + ".") or ".tmp-" not in name:
            continue
        try:
            pid = int(name.rsplit(".tmp-", 1)[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.remove(os.path.join(cache_dir, name))
            except OSError:
                pass
        except (ValueError, OSError):
            continue


def _write(paths: list[str], long_side: int, bin_path: str, workers: int, progress: bool, desc: str,
           max_bytes: float) -> dict:
    """Decode, resize and append every frame to bin_path (a new file); returns the per-frame metadata."""
    n = len(paths)
    offsets = np.zeros(n, dtype=np.int64)
    shapes = np.zeros((n, 2), dtype=np.int64)
    orig_shapes = np.zeros((n, 2), dtype=np.int64)
    crcs = np.zeros(n, dtype=np.int64)
    bad: dict[str, str] = {}
    pos = 0
    free = shutil.disk_usage(os.path.dirname(bin_path)).free
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # bad frames are recorded, not printed
    try:
        with open(bin_path, "wb") as f, ThreadPool(max(1, workers)) as pool:
            results = pool.imap(lambda p: _load_resized(p, long_side), paths, chunksize=4)
            bar = tqdm(results, total=n, desc=desc, unit="img", disable=not progress)
            for i, (img, orig, reason) in enumerate(bar):
                offsets[i] = pos
                if img is None:
                    bad[str(i)] = reason
                    continue
                if pos == 0 and img.nbytes * n > free:  # fail at once rather than after filling the disk
                    raise OSError(errno.ENOSPC, f"the frame cache needs about {img.nbytes * n / 1e9:.1f} GB and "
                                  f"{os.path.dirname(bin_path)} has {free / 1e9:.1f} GB free: set FRAME_CACHE_DIR "
                                  "to a larger disk, or FRAME_CACHE='off'")
                if pos == 0 and img.nbytes * n > max_bytes:
                    raise OSError(errno.EFBIG, f"the frame cache would take about {img.nbytes * n / 1e9:.1f} GB, "
                                  f"over FRAME_CACHE_MAX_GB={max_bytes / 1e9:g}: raise it, or raise FRAME_STRIDE")
                shapes[i] = img.shape[:2]
                orig_shapes[i] = orig
                crcs[i] = zlib.crc32(img.data)
                f.write(img.data)
                pos += img.nbytes
            f.flush()
            os.fsync(f.fileno())
    finally:
        cv2.utils.logging.setLogLevel(level)
    return {"offsets": offsets.tolist(), "shapes": shapes.tolist(), "orig_shapes": orig_shapes.tolist(),
            "crc32": crcs.tolist(), "bad": bad, "nbytes": pos, "bin_mtime_ns": os.stat(bin_path).st_mtime_ns}


def build_frame_cache(paths: Sequence[str], long_side: int, cache_dir: str, workers: int = 4,
                      progress: bool = True, desc: str = "frame cache", max_bytes: float = math.inf) -> FrameCache:
    """Open the cache of these images at long_side, building it first when absent, stale or damaged.

    paths: image files in dataset order (frame i of the dataset is entry i); workers: decoding threads.
    Raises OSError when the cache cannot be written (unwritable folder, disk full) or would exceed max_bytes.
    """
    paths = [str(p) for p in paths]
    long_side = int(long_side)
    if long_side <= 0:
        raise ValueError(f"long_side must be positive, got {long_side}")
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    os.makedirs(cache_dir, exist_ok=True)
    paths_digest = _paths_digest(paths)
    slot = hashlib.sha1(f"{FORMAT_VERSION}:{long_side}:{paths_digest}".encode()).hexdigest()[:16]
    stamps = hashlib.sha1(json.dumps([_file_stamp(p) for p in paths]).encode()).hexdigest()
    key = hashlib.sha1(f"{slot}:{stamps}".encode()).hexdigest()
    stem = f"frames-{slot}"
    bin_path, json_path = os.path.join(cache_dir, stem + ".bin"), os.path.join(cache_dir, stem + ".json")
    meta = _read_meta(json_path, bin_path, key)
    damage = _damage(bin_path, meta) if meta is not None else None
    if damage:
        logger.warning("frame cache %s %s: building it again", bin_path, damage)
    elif meta is not None:
        logger.info("frame cache: reusing %s (%d frames, long side %d, %.2f GB)", bin_path, len(paths), long_side,
                    meta["nbytes"] / 1e9)
        return FrameCache(bin_path, meta)

    _remove_orphans(cache_dir, stem)
    logger.info("frame cache: decoding %d frames to long side %d into %s", len(paths), long_side, bin_path)
    tmp_bin, tmp_json = f"{bin_path}.tmp-{os.getpid()}", f"{json_path}.tmp-{os.getpid()}"
    try:
        meta = {"version": FORMAT_VERSION, "key": key, "long_side": long_side, "paths_digest": paths_digest,
                **_write(paths, long_side, tmp_bin, workers, progress, desc, max_bytes)}
        with open(tmp_json, "w", encoding="utf-8") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(json_path):  # no moment where an old .json describes the new .bin
            os.remove(json_path)
        os.replace(tmp_bin, bin_path)
        os.replace(tmp_json, json_path)
    finally:
        for tmp in (tmp_bin, tmp_json):
            if os.path.exists(tmp):
                os.remove(tmp)
    if meta["bad"]:
        logger.warning("frame cache: %d of %d images did not decode (they are replaced during training), e.g. %s",
                       len(meta["bad"]), len(paths), paths[int(next(iter(meta["bad"])))])
    logger.info("frame cache: %d frames, %.2f GB in %s", len(paths), meta["nbytes"] / 1e9, bin_path)
    return FrameCache(bin_path, meta, built=True)
