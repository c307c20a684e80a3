"""Decoded-frame cache: every image decoded once and stored pre-resized in one uint8 file that all workers map.

Decoding a 1280x720 PNG/JPEG costs ~10 ms of CPU, and a mosaic needs four: with the cache a sample reads already
decoded pixels from a read-only np.memmap (the OS page cache shares them between all DataLoader workers and runs).
Each frame is resized (cv2.INTER_LINEAR, aspect kept) so that its long side is `long_side`, exactly the resize the
letterbox does for a square input of that size (and for EVAL_RECT's rectangle of that long side, which keeps the
square's scale: utils.letterbox.rect_shape), so a validation sample read from the cache is the same image.

Event frames (FRED's three colours, datasets/event_frames.py) are stored packed, 2 bits per pixel instead of 24: a
frame whose every pixel, at the cached size, is the background, ON (white) or OFF (blue) colour is kept as two bit
planes, np.packbits of its ON mask then of its OFF mask (h x w, row order, each padded to whole bytes), so
2 * ceil(h * w / 8) bytes: 230,400 per 1280x720 frame, 11.1 GB for 48,000 frames (24-bit: 2.76 MB, 133 GB).
The planes are what fusion of the polarities needs (planes(): np.unpackbits of each half); get() turns them back
into the BGR image with one 16-bit lookup (8 pixels per lookup; 0.35-0.8 ms per 1280x720 frame on one CPU core,
where a 24-bit frame is a view and decoding the PNG takes 8-20 ms: bench/bench_frame_cache.py). A frame is packed
only when unpacking gives back its exact pixels, so a read is bit for bit the decoded and resized file either way.
Event frames resized (a long side other than the file's, e.g. 640 for FRED's 1280x720) are in general no longer
three-coloured: the resize blends neighbouring colours; they, and frames of any other colours (RGB frames), are
stored 24-bit. In a cache that packs some frames, those stored 24-bit are reported with a warning (they make it
larger than planned).

A cache of fused frames (built with `partners`: each RGB frame's event partner) stores each pair as the fused
sample of datasets/event_frames.py at the cached size: the RGB frame resized, its partner's polarity planes made at
the frames' size and resized alike, as (R, G, B, ON) h x w x 4 then OFF h x w, 5 bytes per pixel (a 1280x720 pair at
640: 1.15 MB); get() hands out the two streams as views, so a fused training sample needs no work to read its
frames. Used below the event frames' own size, where resizing blends the planes (build_fred.build_frame_caches).

Files in cache_dir, per list of frames (a "slot": hash of format version, long side and image paths):
  frames-<slot>.bin   the resized frames back to back: as decoded (BGR), HxWxC uint8 each, or packed as above
  frames-<slot>.json  format version, key, per frame byte offset, cached (h, w), original (h, w), encoding (0: as
                      decoded, 1: packed event frame, 2: fused frame), CRC-32 of the stored bytes; bad frames +
                      reason; the .bin's mtime_ns when it was written
The slot of a fused cache also hashes the partners' paths. The key hashes the slot and every image's (and
partner's) mtime_ns, ctime_ns and size: when an image changes the slot is rebuilt. A build writes temporary files and
renames them (the old .json is removed first), so a crash never leaves a cache that is used: a missing, damaged or
stale cache is simply built again. Frames that do not decode are recorded as bad.

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
import functools
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
from datasets.event_frames import EVENT_PALETTE, event_planes, fuse_streams
from datasets.image_io import printable, read_image
from utils.letterbox import letterbox_params

logger = logging.getLogger(__name__)

FORMAT_VERSION = 4  # bump when the file layout, the resize or the decoding changes: old caches are then ignored
VERIFY_SAMPLE = 64  # frames whose CRC-32 is checked each time a cache is opened
# per-frame encodings: the decoded pixels; ON and OFF bit planes of an event frame; a fused sample (R, G, B, ON + OFF)
AS_DECODED, EVENT_PLANES, FUSED = 0, 1, 2
# FRED's event frame colours as decoded (BGR): background, ON (positive polarity), OFF (negative); code 3 is unused
EVENT_COLOURS_BGR = np.array([c[::-1] for c in EVENT_PALETTE] + [(0, 0, 0)], dtype=np.uint8)
_BLUE_TO_CODE = np.full(256, 3, dtype=np.uint8)  # the blue channel alone tells the three colours apart
_BLUE_TO_CODE[EVENT_COLOURS_BGR[:3, 0]] = [0, 1, 2]


class FrameCache:
    """Read side of a built cache: get(i) -> the cached uint8 [h, w, C] image of frame i (None when bad)."""

    def __init__(self, bin_path: str, meta: dict, built: bool = False):
        """bin_path: the .bin file; meta: its parsed .json; built: whether this process just built it."""
        self.bin_path = bin_path
        self.long_side = int(meta["long_side"])
        self.paths_digest = str(meta["paths_digest"])
        self.offsets = np.asarray(meta["offsets"], dtype=np.int64)
        self.sizes = _frame_sizes(meta)
        self.shapes = np.asarray(meta["shapes"], dtype=np.int64).reshape(-1, 2)
        self.orig_shapes = np.asarray(meta["orig_shapes"], dtype=np.int64).reshape(-1, 2)
        self.encodings = np.asarray(meta["encodings"], dtype=np.int64)
        self.partners_digest = meta.get("partners_digest")  # of the event partners of a cache of fused frames
        self.fused = self.partners_digest is not None
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

    def get(self, i: int) -> np.ndarray | tuple[np.ndarray, np.ndarray] | None:
        """Frame i as a read-only uint8 [h, w, C] array (C: the decoded image's channels, BGR for colour), or None
        when it did not decode: a view into the mapped file, or for a packed event frame its unpacked pixels; in a
        cache of fused frames the fused sample (R, G, B, ON [h, w, 4], OFF [h, w, 1]), two views."""
        if self._data is None:
            self._data = self._open()
        h, w = self.shapes[i]
        if h == 0:
            return None
        start = self.offsets[i]
        data = self._data[start:start + self.sizes[i]]
        if self.encodings[i] == EVENT_PLANES:
            return unpack_event_frame(data, int(h), int(w))
        if self.encodings[i] == FUSED:
            return data[:h * w * 4].reshape(h, w, 4), data[h * w * 4:].reshape(h, w, 1)
        return data.reshape(h, w, -1)

    def planes(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Frame i's polarity planes as datasets.event_frames.event_planes() gives them (ON, OFF uint8 [h, w, 1]: 255
        where it fired, else 0), straight from its packed bits (np.unpackbits); None when it did not decode or holds
        colours (not packed)."""
        if self.shapes[i][0] == 0 or self.encodings[i] != EVENT_PLANES:
            return None
        if self._data is None:
            self._data = self._open()
        h, w = (int(x) for x in self.shapes[i])
        data = self._data[self.offsets[i]:self.offsets[i] + self.sizes[i]]
        n = len(data) // 2
        planes = []
        for bits in (data[:n], data[n:]):
            plane = np.unpackbits(bits, count=h * w)
            plane *= 255  # 0 or 1 -> 0 or 255
            planes.append(plane.reshape(h, w, 1))
        return planes[0], planes[1]

    def orig_shape(self, i: int) -> tuple[int, int]:
        """(h, w) of frame i's original image ((0, 0) when it did not decode)."""
        return int(self.orig_shapes[i, 0]), int(self.orig_shapes[i, 1])

    def bad_reason(self, i: int) -> str | None:
        """Why frame i did not decode when the cache was built (None when it did)."""
        return self.bad.get(int(i))

    def matches(self, paths: Sequence[str], partners: Sequence[str] | None = None) -> bool:
        """True when the cache was built for exactly these image paths, in this order, and these partners (None: a
        cache of single frames)."""
        return (len(paths) == len(self) and _paths_digest(paths) == self.paths_digest
                and self.partners_digest == (None if partners is None else _paths_digest(partners)))


@functools.lru_cache(maxsize=1)
def _colours_lut() -> np.ndarray:
    """uint8 [65536, 24]: for an ON byte a and an OFF byte b (np.packbits order), entry a | b << 8 holds the BGR
    pixels of those 8 pixels (1.5 MB, built once per process)."""
    bits = (np.arange(256)[:, None] >> np.arange(7, -1, -1)) & 1  # [byte, pixel]: big-endian, as np.packbits
    index = np.arange(65536)
    codes = bits[index & 255] + 2 * bits[index >> 8]  # [65536, 8] codes 0..3
    return np.ascontiguousarray(EVENT_COLOURS_BGR[codes].reshape(65536, 24))


def pack_event_frame(img: np.ndarray) -> np.ndarray | None:
    """The ON and OFF bit planes of a BGR event frame (uint8 [2 * ceil(h * w / 8)]), or None when a pixel is not
    one of EVENT_COLOURS_BGR' three colours (the planes would not give the image back)."""
    if img.ndim != 3 or img.shape[2] != 3:
        return None
    codes = _BLUE_TO_CODE[img[..., 0]]
    if codes.max(initial=0) > 2:
        return None
    packed = np.concatenate([np.packbits(codes == 1), np.packbits(codes == 2)])
    return packed if np.array_equal(unpack_event_frame(packed, *img.shape[:2]), img) else None


def unpack_event_frame(packed: np.ndarray, h: int, w: int) -> np.ndarray:
    """The read-only BGR uint8 [h, w, 3] image of pack_event_frame()'s planes, by one table lookup per 8 pixels."""
    n = len(packed) // 2
    index = packed[:n].astype(np.intp) | (packed[n:].astype(np.intp) << 8)
    img = np.take(_colours_lut(), index, axis=0).reshape(-1)[:h * w * 3].reshape(h, w, 3)
    img.flags.writeable = False
    return img


def default_frame_cache_dir(data_root: str) -> str:
    """`<data_root>/.fred_frame_cache` when it can be written, else `~/.cache/fred_yolo/frames`."""
    return writable_dir(os.path.join(data_root, ".fred_frame_cache"),
                        os.path.join(os.path.expanduser("~"), ".cache", "fred_yolo", "frames"))


def open_frame_cache(paths: Sequence[str], long_side: int, cache_dir: str, data_root: str, max_bytes: float,
                     progress: bool = True, desc: str = "frame cache", partners: Sequence[str] | None = None
                     ) -> FrameCache | None:
    """build_frame_cache() in cache_dir ("" = default_frame_cache_dir(data_root)) with as many decoding threads as
    CPUs, or None, with a warning, when the cache cannot be written (disk full, no permission) or would exceed
    max_bytes: the dataset then decodes the image files."""
    try:
        return build_frame_cache(paths, long_side, cache_dir or default_frame_cache_dir(data_root),
                                 workers=os.cpu_count() or 1, progress=progress, desc=desc, max_bytes=max_bytes,
                                 partners=partners)
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


def _load_stored(path: str, long_side: int, partner: str | None = None
                 ) -> tuple[np.ndarray | None, tuple[int, int], int, tuple[int, int], str]:
    """(bytes to store or None, cached (h, w), their encoding, original (h, w), reason it failed or "") of one
    frame: packed when it is an event frame at the cached size, else its decoded, resized pixels; with its event
    partner, the fused sample of the two (the partner's planes made at its size, then resized)."""
    img, orig, reason = _load_resized(path, long_side)
    if img is None:
        return None, (0, 0), AS_DECODED, orig, reason
    if partner is not None:
        event, reason = read_image(partner)
        if event is None:
            return None, (0, 0), FUSED, orig, f"its event partner {printable(partner)} {reason}"
        if event.shape[:2] != orig:
            return None, (0, 0), FUSED, orig, (f"its size {orig[1]}x{orig[0]} differs from its event partner's "
                                               f"{event.shape[1]}x{event.shape[0]} ({printable(partner)})")
        rgbo, off = fuse_streams(img, event_planes(event))
        return np.concatenate([rgbo.reshape(-1), off.reshape(-1)]), img.shape[:2], FUSED, orig, ""
    packed = pack_event_frame(img)
    if packed is None:
        return img.reshape(-1), img.shape[:2], AS_DECODED, orig, ""
    return packed, img.shape[:2], EVENT_PLANES, orig, ""


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
        if len(meta["encodings"]) != len(sizes):
            return "has inconsistent metadata (one encoding per frame expected)"
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
           max_bytes: float, partners: Sequence[str] | None = None) -> dict:
    """Decode, resize, pack when possible and append every frame to bin_path (a new file); returns the per-frame
    metadata. The size is checked against the free disk space and max_bytes at the first frame (all frames taken
    as large as it) and against max_bytes at every frame."""
    n = len(paths)
    offsets = np.zeros(n, dtype=np.int64)
    shapes = np.zeros((n, 2), dtype=np.int64)
    orig_shapes = np.zeros((n, 2), dtype=np.int64)
    encodings = np.zeros(n, dtype=np.int64)
    crcs = np.zeros(n, dtype=np.int64)
    bad: dict[str, str] = {}
    pos = 0
    free = shutil.disk_usage(os.path.dirname(bin_path)).free
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # bad frames are recorded, not printed
    try:
        with open(bin_path, "wb") as f, ThreadPool(max(1, workers)) as pool:
            pairs = zip(paths, partners) if partners is not None else ((p, None) for p in paths)
            results = pool.imap(lambda pair: _load_stored(pair[0], long_side, pair[1]), pairs, chunksize=4)
            bar = tqdm(results, total=n, desc=desc, unit="img", disable=not progress)
            for i, (data, shape, encoding, orig, reason) in enumerate(bar):
                offsets[i] = pos
                if data is None:
                    bad[str(i)] = reason
                    continue
                how = {EVENT_PLANES: "packed event frames", FUSED: "fused frames, 5 bytes per pixel"}.get(
                    encoding, "24-bit frames")
                if pos == 0 and data.nbytes * n > free:  # fail at once rather than after filling the disk
                    raise OSError(errno.ENOSPC, f"the frame cache needs about {data.nbytes * n / 1e9:.1f} GB "
                                  f"({how}) and {os.path.dirname(bin_path)} has {free / 1e9:.1f} GB free: set "
                                  "FRAME_CACHE_DIR to a larger disk, or FRAME_CACHE='off'")
                if pos == 0 and data.nbytes * n > max_bytes:
                    raise OSError(errno.EFBIG, f"the frame cache would take about {data.nbytes * n / 1e9:.1f} GB "
                                  f"({n} {how} of {data.nbytes / 1e6:.2f} MB), over FRAME_CACHE_MAX_GB="
                                  f"{max_bytes / 1e9:g}: raise it where the disk has the room (a cache larger than "
                                  "the RAM is read from the disk), or raise FRAME_STRIDE")
                if pos + data.nbytes > max_bytes:
                    raise OSError(errno.EFBIG, f"the frame cache grew past FRAME_CACHE_MAX_GB={max_bytes / 1e9:g} "
                                  f"at frame {i} of {n} ({printable(paths[i])}): its frames take more room than the "
                                  "first one (24-bit frames among packed event frames, or larger images); raise "
                                  "FRAME_CACHE_MAX_GB, or check those frames")
                shapes[i] = shape
                orig_shapes[i] = orig
                encodings[i] = encoding
                crcs[i] = zlib.crc32(data.data)
                f.write(data.data)
                pos += data.nbytes
            f.flush()
            os.fsync(f.fileno())
    finally:
        cv2.utils.logging.setLogLevel(level)
    return {"offsets": offsets.tolist(), "shapes": shapes.tolist(), "orig_shapes": orig_shapes.tolist(),
            "encodings": encodings.tolist(), "crc32": crcs.tolist(), "bad": bad, "nbytes": pos,
            "bin_mtime_ns": os.stat(bin_path).st_mtime_ns}


def _report_encodings(paths: list[str], meta: dict, long_side: int) -> None:
    """Warn about the frames stored 24-bit in a cache that packs the others; say why when none was packed."""
    encodings = np.asarray(meta["encodings"], dtype=np.int64)
    good = np.asarray(meta["shapes"], dtype=np.int64).reshape(-1, 2)[:, 0] > 0
    packed = int(np.count_nonzero(encodings[good] == EVENT_PLANES))
    whole = np.flatnonzero(good & (encodings == AS_DECODED))
    if packed and len(whole):
        logger.warning("frame cache: %d of %d frames are not three-coloured event frames at long side %d (other "
                       "colours), e.g. %s: stored at 24 bits per pixel, the other %d packed at 2 bits",
                       len(whole), int(good.sum()), long_side, printable(paths[int(whole[0])]), packed)
    elif not packed and len(whole):
        logger.info("frame cache: frames stored at 24 bits per pixel (none is a three-coloured event frame at long "
                    "side %d: RGB frames, or event frames whose resize blends the colours)", long_side)


def build_frame_cache(paths: Sequence[str], long_side: int, cache_dir: str, workers: int = 4,
                      progress: bool = True, desc: str = "frame cache", max_bytes: float = math.inf,
                      partners: Sequence[str] | None = None) -> FrameCache:
    """Open the cache of these images at long_side, building it first when absent, stale or damaged.

    paths: image files in dataset order (frame i of the dataset is entry i); workers: decoding threads; partners:
    each image's event frame, for a cache of fused frames (see the module docstring), else None.
    Raises OSError when the cache cannot be written (unwritable folder, disk full) or would exceed max_bytes.
    """
    paths = [str(p) for p in paths]
    long_side = int(long_side)
    if long_side <= 0:
        raise ValueError(f"long_side must be positive, got {long_side}")
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    os.makedirs(cache_dir, exist_ok=True)
    partners = None if partners is None else [str(p) for p in partners]
    if partners is not None and len(partners) != len(paths):
        raise ValueError(f"{len(partners)} event partners for {len(paths)} frames: one each")
    paths_digest = _paths_digest(paths)
    partners_digest = None if partners is None else _paths_digest(partners)
    what = f"{FORMAT_VERSION}:{long_side}:{paths_digest}" + ("" if partners is None else f":fused:{partners_digest}")
    slot = hashlib.sha1(what.encode()).hexdigest()[:16]
    stamps = hashlib.sha1(json.dumps([_file_stamp(p) for p in paths + (partners or [])]).encode()).hexdigest()
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
                "partners_digest": partners_digest, **_write(paths, long_side, tmp_bin, workers, progress, desc,
                                                             max_bytes, partners)}
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
    _report_encodings(paths, meta, long_side)
    if meta["bad"]:
        logger.warning("frame cache: %d of %d images did not decode (they are replaced during training), e.g. %s",
                       len(meta["bad"]), len(paths), paths[int(next(iter(meta["bad"])))])
    logger.info("frame cache: %d frames (%d packed event frames), %.2f GB in %s", len(paths),
                sum(e == EVENT_PLANES for e in meta["encodings"]), meta["nbytes"] / 1e9, bin_path)
    return FrameCache(bin_path, meta, built=True)
