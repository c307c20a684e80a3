"""The FRED frame index: which images, with which boxes, on which side of the split.

A FRED root holds sequence folders `<id>/`, `train/<id>/` or `test/<id>/` (numeric names). For modality
`rgb` the images are `<seq>/PADDED_RGB/*` (or `RGB/`) with labels `<seq>/RGB_YOLO/<stem>.txt`; for `event`
the images are `<seq>/Event/Frames/*` with labels `<seq>/Event_YOLO/<stem>.txt`. `Removed_frames/` is never
used: an RGB frame whose name is listed there is left out even if a copy sits in the image folder.

For `fusion` a frame is a `<seq>/PADDED_RGB/` frame and the event frame of the same moment (Frame.event_image),
labelled by the event frame's Event_YOLO file (both share the event camera's coordinates). They are paired by
the time in their names, never by position (Removed_frames/ leaves gaps in the RGB list; the event recording
runs on past the RGB one): RGB names carry wall-clock time (`Video_230_17_16_02.213938.jpg`), event names
microseconds (`Video_230_33333.png`, `Video_0_frame_100032333.png`). The two recordings are aligned at their
start, so each clock counts from its sequence's first frame: the first RGB frame (Removed_frames/ included) and
the first event frame are time 0, as in the generator (RGB slot j and event frame j + 1 end the same 1/30 s
step) and in FRED's own loader (RGB i with event i). An RGB frame is paired with the nearest free event frame at
most the pairing tolerance away (seconds; nearest pairs first, one to one); what is left over is counted
per sequence (stats["pairing"]). A paired RGB frame whose event partner has no label file is unannotated.

Which side a sequence is on comes from the split (datasets/splits.py), never from the train/ or test/ folder
it was unzipped into. A frame with an empty label file is a negative and is kept; a frame without a label file
was not annotated and is left out (counted). A label file with a line that does not parse is reported and left
out (an error with strict_labels). A box whose centre or size lies beyond [0, 1] by more than BOX_TOLERANCE
(more than a rounding error: `0 0.5 0.5 1e30 1e30`) is dropped, counted and named in stats["implausible_boxes"];
other boxes are clipped to the image, and a box with no width or height left is dropped (counted). A label file
with more than MAX_PLAUSIBLE_BOXES boxes is kept and named in stats["suspicious_label_files"]. A folder that cannot
be listed (a symlink loop, a dangling symlink) is skipped and named in stats["unreadable_folders"] (a label file
that cannot be read is a bad file); a sequence without images is named in stats["empty_sequences"]. Strides keep
every k-th annotated frame of each sequence.

Parsing 700,000 label files takes minutes, so the parsed labels are cached per sequence, keyed by a fingerprint
of the sequence's folders (image names; label names, sizes and mtimes): a sequence is parsed again only when
its folders change. The cache is one pickle of plain Python values (read back without allowing any class),
written atomically to cache_dir (default `<root>/.fred_index_cache/`, else `~/.cache/fred_yolo/<hash>/`).
"""
import bisect
import hashlib
import logging
import math
import os
import pickle
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

import numpy as np
import torch
from torchvision.ops import box_convert

from datasets.splits import resolve_split, sort_ids

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
EVENT_IMAGE_DIR = os.path.join("Event", "Frames")
LABEL_DIRS = {"rgb": "RGB_YOLO", "event": "Event_YOLO"}
REMOVED_DIR = "Removed_frames"
CACHE_VERSION = 2  # 2: boxes far outside the image are dropped, not clipped
MODALITIES = ("rgb", "event", "fusion")
FUSION_RGB_DIR = "PADDED_RGB"  # the RGB frames of a fused pair: the ones in the event camera's coordinates
DAY_US = 86_400_000_000
BOX_TOLERANCE = 0.01  # a box centre or size this far outside [0, 1] is a rounding error (clipped); further: dropped
MAX_PLAUSIBLE_BOXES = 100  # a frame with more boxes than this is reported as a suspicious label file
SCAN_THREADS = 8  # threads listing and parsing sequence folders (I/O bound; helps most on network storage)
GENERATE_HINT = "generate a sample with: python -m tools.synthetic --out DIR"
GET_FRED_HINT = ('FRED ("FRED: The Florence RGB-Event Drone Dataset", Magrini et al., ACM MM 2025) is the Hugging Face '
                 "dataset GabrieleMagrini/FRED (GitHub: miccunifi/FRED), one zip per sequence, train/<id>.zip and "
                 "test/<id>.zip: unzip the ones you want under one folder")
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)")
_RGB_TIME = re.compile(r"_(\d{1,2})_(\d{1,2})_(\d{1,2})\.(\d{1,6})$")  # ..._HH_MM_SS.ffffff
_EVENT_TIME = re.compile(r"_(\d+)$")  # ..._<microseconds> or ..._frame_<number>


class FredDataError(Exception):
    """Bad or missing data (or data settings); the message names the file or folder and what to do."""


@dataclass(slots=True)
class Frame:
    """One annotated frame: image and label paths, sequence id, boxes float32 [N, 5] (cls, cx, cy, w, h; 0..1);
    for modality fusion image is the PADDED_RGB frame and event_image its event partner (else "")."""
    image: str
    label: str
    sequence: str
    boxes: np.ndarray
    event_image: str = ""


@dataclass
class FredIndex:
    """The selected frames of one modality, split into train and val by sequence, plus what was left out (stats)."""
    modality: str
    train: list[Frame]
    val: list[Frame]
    train_sequences: list[str]
    val_sequences: list[str]
    stats: dict


def natural_key(name: str) -> tuple:
    """Sort key comparing the numeric parts of a name as numbers (`02.5` after `02.213938`, `9` before `10`)."""
    parts = _NUMBER.split(name)
    for i in range(1, len(parts), 2):
        whole, _, fraction = parts[i].partition(".")
        parts[i] = (int(whole), fraction)
    return tuple(parts), name


def rgb_time_us(stem: str) -> int | None:
    """Wall-clock time of an RGB frame name (`Video_230_17_16_02.213938`), microseconds since midnight; None when
    the name carries none."""
    m = _RGB_TIME.search(stem)
    if m is None:
        return None
    hours, minutes, seconds, fraction = m.groups()
    return ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1_000_000 + int(fraction.ljust(6, "0"))


def event_time_us(stem: str) -> int | None:
    """The number ending an event frame name (`Video_230_33333`: microseconds; `Video_0_frame_100032333`), None
    for a name without one or with an RGB wall-clock time."""
    if _RGB_TIME.search(stem):
        return None
    m = _EVENT_TIME.search(stem)
    return int(m.group(1)) if m else None


def relative_rgb_times(times_us: list[int]) -> list[int]:
    """Wall-clock times (microseconds since midnight) as microseconds since the earliest; a recording that runs
    past midnight (times more than 12 h apart) has its after-midnight times moved to the next day."""
    if times_us and max(times_us) - min(times_us) > DAY_US // 2:
        times_us = [t + DAY_US if t < DAY_US // 2 else t for t in times_us]
    start = min(times_us, default=0)
    return [t - start for t in times_us]


def pair_by_time(rgb_us: list[int], event_us: list[int], tolerance_us: float) -> list[tuple[int, int, int]]:
    """Pairs (RGB index, event index, event time - RGB time) of frames at most tolerance_us apart, one to one,
    nearest pairs first (ties: the earlier frames), sorted by RGB index."""
    order = sorted(range(len(event_us)), key=event_us.__getitem__)
    times = [event_us[j] for j in order]
    candidates = []
    for i, t in enumerate(rgb_us):
        lo, hi = bisect.bisect_left(times, t - tolerance_us), bisect.bisect_right(times, t + tolerance_us)
        candidates += [(abs(times[k] - t), i, order[k]) for k in range(lo, hi)]
    candidates.sort()
    rgb_used, event_used, pairs = set(), set(), []
    for _, i, j in candidates:
        if i not in rgb_used and j not in event_used:
            rgb_used.add(i)
            event_used.add(j)
            pairs.append((i, j, event_us[j] - rgb_us[i]))
    return sorted(pairs)


def clip_boxes_cxcywh(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clip normalised [N, 5] (cls, cx, cy, w, h) boxes to [0, 1]; returns (clipped [N, 5], keep [N]: area left)."""
    xyxy = box_convert(torch.from_numpy(boxes[:, 1:5]), "cxcywh", "xyxy").clamp_(0.0, 1.0)
    clipped = boxes.copy()
    clipped[:, 1:5] = box_convert(xyxy, "xyxy", "cxcywh").numpy()
    keep = (clipped[:, 3] > 0) & (clipped[:, 4] > 0)
    return clipped, keep


def far_outside(boxes: np.ndarray, tolerance: float = BOX_TOLERANCE) -> np.ndarray:
    """[N] True where a normalised [N, 5] (cls, cx, cy, w, h) box's centre or size is beyond [0, 1] by > tolerance."""
    values = boxes[:, 1:5]
    return ((values < -tolerance) | (values > 1 + tolerance)).any(axis=1)


def parse_label_file(path: str) -> tuple[list[list[float]], list[int], tuple[int, str] | None]:
    """Rows (cls, cx, cy, w, h) and line numbers of a YOLO label file, or an error (line, reason; 0 = whole file)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return [], [], (0, f"cannot read the label file ({e.strerror})")
    if not data.strip():
        return [], [], None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], [], (0, "not a text file (bytes that are not UTF-8)")
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            return [], [], (n, f"expected 5 fields 'class cx cy w h', found {len(fields)}: {line.strip()!r}")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            return [], [], (n, f"not a number in {line.strip()!r}")
        if not all(math.isfinite(v) for v in values):
            return [], [], (n, f"NaN or infinite value in {line.strip()!r}")
        rows.append(values)
        lines.append(n)
    return rows, lines, None


def _numeric_folders(base: str, unreadable: list[str]) -> list[os.DirEntry]:
    """Folders with numeric names in base, by number; what cannot be read (symlink loops, dangling symlinks, base
    itself) goes to unreadable as 'path: reason'."""
    folders = []
    try:
        with os.scandir(base) as it:
            for e in it:
                if not (e.name.isascii() and e.name.isdigit()):
                    continue
                try:
                    if e.is_dir():
                        folders.append(e)
                    elif e.is_symlink():
                        unreadable.append(f"{e.path}: symbolic link to a missing target")
                except OSError as err:
                    unreadable.append(f"{e.path}: {err.strerror or err}")
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as err:
        unreadable.append(f"{base}: {err.strerror or err}")
    return sorted(folders, key=lambda e: int(e.name))


def find_sequences(root: str, *image_dirs: str) -> tuple[dict[str, str], list[str], list[str], list[str]]:
    """({id: folder}, numeric folders without one of image_dirs, duplicate folders, unreadable 'path: reason') under
    root, root/train and root/test."""
    found, incomplete, duplicates, unreadable = {}, [], [], []
    for base in (root, os.path.join(root, "train"), os.path.join(root, "test")):
        for e in _numeric_folders(base, unreadable):
            if not all(os.path.isdir(os.path.join(e.path, d)) for d in image_dirs):
                incomplete.append(e.path)
            elif str(int(e.name)) in found:
                duplicates.append(e.path)
            else:
                found[str(int(e.name))] = e.path
    return found, incomplete, duplicates, unreadable


def writable_dir(preferred: str, fallback: str) -> str:
    """preferred (created if needed) when it can be written, else fallback (a cache folder choice)."""
    try:
        os.makedirs(preferred, exist_ok=True)
    except OSError:
        pass
    return preferred if os.path.isdir(preferred) and os.access(preferred, os.W_OK) else fallback


def default_cache_dir(root: str) -> str:
    """`<root>/.fred_index_cache` when it can be written, else `~/.cache/fred_yolo/<hash of root>`."""
    digest = hashlib.sha1(root.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return writable_dir(os.path.join(root, ".fred_index_cache"),
                        os.path.join(os.path.expanduser("~"), ".cache", "fred_yolo", digest))


def _list_names(folder: str, suffixes: tuple[str, ...]) -> list[os.DirEntry]:
    """Entries of folder whose lower-cased name ends with one of suffixes ([] when the folder is absent)."""
    try:
        with os.scandir(folder) as it:
            return [e for e in it if e.name.lower().endswith(suffixes)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _stamp(entry: os.DirEntry) -> tuple[int, int]:
    """(mtime_ns, size) of a directory entry; (-1, -1) when it cannot be stat'ed (a dangling or looping symlink,
    whose read then fails and is reported)."""
    try:
        st = entry.stat()
    except OSError:
        return -1, -1
    return st.st_mtime_ns, st.st_size


def _scan_sequence(seq_dir: str, image_dir: str, label_dir: str, use_removed: bool) -> dict:
    """One sequence's listing (image names, label names, removed stems) and its fingerprint."""
    images = sorted(e.name for e in _list_names(os.path.join(seq_dir, image_dir), IMAGE_EXTENSIONS))
    label_path = os.path.join(seq_dir, label_dir)
    label_stats = sorted((e.name, *_stamp(e)) for e in _list_names(label_path, (".txt",)))
    removed_entries = _list_names(os.path.join(seq_dir, REMOVED_DIR), IMAGE_EXTENSIONS) if use_removed else []
    removed = sorted(os.path.splitext(e.name)[0] for e in removed_entries)
    h = hashlib.blake2b(digest_size=16)
    for part in ("\n".join(images), "\n".join(f"{n}\t{m}\t{s}" for n, m, s in label_stats),
                 "\n".join(removed), str(os.path.isdir(label_path))):
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return {"images": images, "labels": {n for n, _, _ in label_stats}, "removed": set(removed),
            "has_labels": os.path.isdir(label_path), "fingerprint": h.digest()}


def _parse_sequence(seq_dir: str, label_dir: str, listing: dict) -> dict:
    """Cache entry of one sequence: annotated image names in natural order, their parsed, clipped boxes, bad files."""
    annotated, unlabeled, removed = [], 0, 0
    for name in sorted(listing["images"], key=natural_key):
        stem = os.path.splitext(name)[0]
        if stem in listing["removed"]:
            removed += 1
        elif stem + ".txt" in listing["labels"]:
            annotated.append(name)
        else:
            unlabeled += 1
    rows, lines, counts, bad = [], [], [], {}
    for i, name in enumerate(annotated):
        r, ln, error = parse_label_file(os.path.join(seq_dir, label_dir, os.path.splitext(name)[0] + ".txt"))
        if error is not None:
            bad[i] = error
        rows.extend(r)
        lines.extend(ln)
        counts.append(len(r))
    raw = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    far = far_outside(raw)
    boxes, keep = clip_boxes_cxcywh(raw)
    keep &= ~far
    offsets = np.zeros(len(annotated) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return {"fingerprint": listing["fingerprint"], "images": annotated, "unlabeled": unlabeled, "removed": removed,
            "has_labels": listing["has_labels"], "bad": bad, "offsets": offsets.tobytes(),
            "boxes": boxes.astype(np.float32).tobytes(), "keep": keep.tobytes(),
            "lines": np.asarray(lines, dtype=np.int32).tobytes(),
            "far": {int(j): " ".join(f"{v:g}" for v in raw[j]) for j in np.flatnonzero(far)}}


def _scan_fused(seq_dir: str, rgb_dir: str) -> dict:
    """One sequence's listings for modality fusion (RGB with Removed_frames/, event) and their joint fingerprint."""
    rgb = _scan_sequence(seq_dir, rgb_dir, LABEL_DIRS["rgb"], True)
    event = _scan_sequence(seq_dir, EVENT_IMAGE_DIR, LABEL_DIRS["event"], False)
    return {"rgb": rgb, "event": event, "fingerprint": hashlib.blake2b(rgb["fingerprint"] + event["fingerprint"],
                                                                       digest_size=16).digest()}


def _timed(names: list[str], clock: Callable[[str], int | None], folder: str,
           untimed: list[str]) -> tuple[list[str], list[int]]:
    """(names, times) of the names whose stem clock() can read; the others go to untimed as folder/name."""
    kept, times = [], []
    for name in names:
        t = clock(os.path.splitext(name)[0])
        if t is None:
            untimed.append(os.path.join(folder, name))
        else:
            kept.append(name)
            times.append(t)
    return kept, times


class SequencePairs(NamedTuple):
    """A sequence's RGB and event frames paired by time (pair_sequence())."""
    rgb_names: list[str]  # the timed RGB frames not removed, in natural order
    event_names: list[str]  # the timed event frames, in natural order
    pairs: list[tuple[int, int, int]]  # (RGB index, event index, event time - RGB time in microseconds), by RGB index
    untimed: list[str]  # folder/name of the frames whose name carries no time


def pair_sequence(rgb_names: Iterable[str], removed: set[str], event_names: Iterable[str], rgb_dir: str,
                  tolerance_us: float) -> SequencePairs:
    """Pair one sequence's RGB frames (file names in rgb_dir; stems in `removed`, Removed_frames/, are left out but
    count for the start of the RGB clock) with its event frames (names in Event/Frames/) by time: each clock
    relative to its first frame, pairs at most tolerance_us apart (pair_by_time). Training and predict_fred.py
    pair through this."""
    untimed = []
    rgb_names = sorted((n for n in rgb_names if os.path.splitext(n)[0] not in removed), key=natural_key)
    rgb_names, rgb_times = _timed(rgb_names, rgb_time_us, rgb_dir, untimed)
    removed_times = [t for t in map(rgb_time_us, removed) if t is not None]
    rgb_times = relative_rgb_times(rgb_times + removed_times)[:len(rgb_names)]  # removed frames count for the start
    event_names, event_times = _timed(sorted(event_names, key=natural_key), event_time_us, EVENT_IMAGE_DIR, untimed)
    event_start = min(event_times, default=0)
    pairs = pair_by_time(rgb_times, [t - event_start for t in event_times], tolerance_us)
    return SequencePairs(rgb_names, event_names, pairs, untimed)


def _parse_fused(seq_dir: str, rgb_dir: str, listing: dict, tolerance_us: float) -> dict:
    """Cache entry of one sequence for modality fusion: _parse_sequence's entry of the paired event frames (their
    Event_YOLO labels), with each one's RGB partner ("partners"), the pair and leftover counts and the offsets."""
    rgb, event = listing["rgb"], listing["event"]
    rgb_names, event_names, pairs, untimed = pair_sequence(rgb["images"], rgb["removed"], event["images"], rgb_dir,
                                                           tolerance_us)
    partner = {event_names[j]: rgb_names[i] for i, j, _ in pairs}
    entry = _parse_sequence(seq_dir, LABEL_DIRS["event"],
                            {"images": list(partner), "labels": event["labels"], "removed": set(),
                             "has_labels": event["has_labels"], "fingerprint": listing["fingerprint"]})
    entry.update(partners=[partner[n] for n in entry["images"]],
                 removed=sum(os.path.splitext(n)[0] in rgb["removed"] for n in rgb["images"]),
                 pairs=len(pairs), unpaired_rgb=len(rgb_names) - len(pairs),
                 unpaired_event=len(event_names) - len(pairs), untimed=untimed,
                 pair_offsets=np.asarray([dt for _, _, dt in pairs], dtype=np.int64).tobytes())
    return entry


class _PlainUnpickler(pickle.Unpickler):
    """Unpickler that refuses every class: the cache holds only dicts, lists, sets, str, bytes and numbers."""

    def find_class(self, module: str, name: str):
        """Refuse: no class may be loaded from the cache."""
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the index cache")


def _load_cache(path: str, header: dict) -> dict:
    """{sequence folder: entry} from the cache file, {} when absent, unreadable or written for other settings."""
    try:
        with open(path, "rb") as f:
            data = _PlainUnpickler(f).load()
    except FileNotFoundError:
        return {}
    except Exception as e:  # a damaged cache is rebuilt, never fatal
        logger.warning("ignoring the unreadable index cache %s (%s): rebuilding it", path, e)
        return {}
    if not isinstance(data, dict) or data.get("header") != header or not isinstance(data.get("sequences"), dict):
        return {}
    return data["sequences"]


def _save_cache(path: str, header: dict, sequences: dict) -> None:
    """Write the cache atomically (temporary file, then os.replace); a failure is a warning."""
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump({"header": header, "sequences": sequences}, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError as e:
        logger.warning("could not write the index cache %s (%s): the next run will index again", path, e)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _index_sequences(seq_dirs: dict[str, str], scan: Callable[[str], dict], parse: Callable[[str, dict], dict],
                     cache_path: str, header: dict) -> tuple[dict[str, dict], int, list[str]]:
    """({id: cache entry}, number of sequences parsed again, unreadable 'folder: reason') for the given sequence
    folders, updating the cache; scan(folder) lists one (with its "fingerprint"), parse(folder, listing) makes its
    entry. A sequence whose folders cannot be listed (a symlink loop) has no entry."""
    cached = _load_cache(cache_path, header)

    def current(seq_dir: str) -> tuple[dict | None, bool, str]:
        """(entry, parsed again?, "") of one sequence folder, or (None, False, why it cannot be read)."""
        try:
            listing = scan(seq_dir)
        except OSError as e:
            where = f"{e.filename}: " if e.filename and e.filename != seq_dir else ""
            return None, False, f"{seq_dir}: {where}{e.strerror or e}"
        entry = cached.get(seq_dir)
        if entry is not None and entry["fingerprint"] == listing["fingerprint"]:
            return entry, False, ""
        return parse(seq_dir, listing), True, ""

    with ThreadPoolExecutor(min(SCAN_THREADS, len(seq_dirs))) as pool:  # folder listing and file reads overlap
        results = dict(zip(seq_dirs, pool.map(current, seq_dirs.values())))
    entries, parsed, unreadable = {}, 0, []
    for sid, (entry, fresh, error) in results.items():
        if entry is None:
            unreadable.append(error)
            continue
        entries[sid] = entry
        cached[seq_dirs[sid]] = entry
        parsed += fresh
    gone = [d for d in cached if not os.path.isdir(d)]
    for d in gone:
        del cached[d]
    if parsed or gone:
        _save_cache(cache_path, header, cached)
    return entries, parsed, unreadable


def _bad_message(path: str, error: tuple[int, str]) -> str:
    """'path:line: reason' (or 'path: reason' for a whole-file problem)."""
    line, reason = error
    return f"{path}:{line}: {reason}" if line else f"{path}: {reason}"


def _select(seq_ids: list[str], seq_dirs: dict[str, str], entries: dict[str, dict], image_dir: str,
            label_dir: str, stride: int, num_classes: int, strict: bool, side: dict,
            partner_dir: str = "") -> list[Frame]:
    """Frames of the given sequences, every stride-th annotated one, checked; counts go into side. partner_dir
    (fusion): image_dir holds the event frames and each frame's image is its partner in partner_dir."""
    frames = []
    for sid in seq_ids:
        e, seq_dir = entries[sid], seq_dirs[sid]
        image_root, label_root = os.path.join(seq_dir, image_dir), os.path.join(seq_dir, label_dir)
        names = e["images"]
        partners = e.get("partners")
        side["bad_files"] += [f"{os.path.join(seq_dir, path)}: no time in the name (RGB frames: "
                              f"Video_<id>_HH_MM_SS.ffffff.jpg, event frames: Video_<id>_<microseconds>.png): "
                              f"not paired; rename it or remove it" for path in e.get("untimed", ())]
        offsets = np.frombuffer(e["offsets"], dtype=np.int64)
        boxes = np.frombuffer(e["boxes"], dtype=np.float32).reshape(-1, 5)
        keep = np.frombuffer(e["keep"], dtype=bool)
        lines = np.frombuffer(e["lines"], dtype=np.int32)
        side["unlabeled_frames"] += e["unlabeled"]
        side["removed_frames"] += e["removed"]
        if not e["has_labels"]:
            side["no_label_folder"].append(seq_dir)
        unpaired = e.get("unpaired_rgb", 0) + e.get("unpaired_event", 0) + len(e.get("untimed", ()))
        if not names and not e["unlabeled"] and not e["removed"] and not unpaired:
            side["empty_sequences"].append(seq_dir)
        selected = np.zeros(len(names), dtype=bool)
        selected[::stride] = True
        counts = np.diff(offsets)
        box_selected = np.repeat(selected, counts)

        def label_of(i: int) -> str:
            """Label file of frame i."""
            return os.path.join(label_root, os.path.splitext(names[i])[0] + ".txt")

        def box_at(j: int) -> str:
            """'label file:line' of box j."""
            return f"{label_of(int(np.searchsorted(offsets, j, side='right')) - 1)}:{lines[j]}"

        cls = boxes[:, 0]
        wrong = box_selected & ((cls < 0) | (cls >= num_classes) | (cls != np.floor(cls)))
        if wrong.any():
            j = int(np.argmax(wrong))
            raise FredDataError(f"{box_at(j)}: class id {cls[j]:g} is not in 0..{num_classes - 1}: set NUM_CLASSES "
                                f"to the number of classes in your labels (now {num_classes}; FRED has 1)")
        side["implausible_boxes"] += [f"{box_at(j)}: box '{text}' lies far outside the image (centre or size beyond "
                                      f"[0, 1]): dropped" for j, text in e["far"].items() if box_selected[j]]
        side["suspicious_label_files"] += [f"{label_of(i)}: {counts[i]} boxes in one frame (more than "
                                           f"{MAX_PLAUSIBLE_BOXES}): check the file"
                                           for i in np.flatnonzero(selected & (counts > MAX_PLAUSIBLE_BOXES))]
        kept = boxes[keep]
        kept_offsets = np.concatenate([[0], np.cumsum(keep)])[offsets].tolist()
        side["dropped_boxes"] += int((box_selected & ~keep).sum())
        image_prefix, label_prefix = image_root + os.sep, label_root + os.sep
        partner_prefix = os.path.join(seq_dir, partner_dir) + os.sep
        for i in range(0, len(names), stride):
            name = names[i]
            label = f"{label_prefix}{name[:name.rfind('.')]}.txt"
            if i in e["bad"]:
                message = _bad_message(label, e["bad"][i])
                if strict:
                    raise FredDataError(f"{message} (STRICT_LABELS is on: fix the file, or set "
                                        f"STRICT_LABELS = False to leave it out)")
                side["bad_files"].append(message)
                continue
            boxes_i = kept[kept_offsets[i]:kept_offsets[i + 1]]
            frames.append(Frame(image_prefix + name, label, sid, boxes_i) if partners is None else
                          Frame(partner_prefix + partners[i], label, sid, boxes_i, event_image=image_prefix + name))
    return frames


def _check_settings(modality: str, frame_stride: int, val_frame_stride: int, num_classes: int,
                    rgb_image_dir: str, fusion_pair_tolerance: float) -> None:
    """Raise FredDataError for settings the index cannot work with."""
    if modality not in MODALITIES:
        raise FredDataError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    for name, value in (("FRAME_STRIDE", frame_stride), ("VAL_FRAME_STRIDE", val_frame_stride),
                        ("NUM_CLASSES", num_classes)):
        if not isinstance(value, int) or value < 1:
            raise FredDataError(f"{name} must be a whole number >= 1, got {value!r}")
    if modality == "rgb" and (not rgb_image_dir or os.path.normpath(rgb_image_dir) == REMOVED_DIR):
        raise FredDataError(f"RGB_IMAGE_DIR must name the RGB image folder of a sequence (PADDED_RGB or RGB), "
                            f"got {rgb_image_dir!r}")
    if modality == "fusion" and os.path.normpath(rgb_image_dir or ".") != FUSION_RGB_DIR:
        raise FredDataError(f"modality fusion pairs {FUSION_RGB_DIR}/ frames with event frames (the raw RGB/ frames "
                            f"are not in the event camera's coordinates): set RGB_IMAGE_DIR = '{FUSION_RGB_DIR}', "
                            f"got {rgb_image_dir!r}")
    if modality == "fusion" and not (isinstance(fusion_pair_tolerance, (int, float))
                                     and not isinstance(fusion_pair_tolerance, bool)
                                     and 0 < fusion_pair_tolerance < 1):
        raise FredDataError(f"FUSION_PAIR_TOLERANCE must be in seconds, above 0 and below 1 (default 1/60: half a "
                            f"frame at 30 FPS; milliseconds / 1000), got {fusion_pair_tolerance!r}")


def _no_sequences_message(root: str, image_dir: str, incomplete: list[str]) -> str:
    """Error text for a root without sequence folders: where it looked, what it found, what to do."""
    message = (f"no FRED sequences found under {root}: expected folders like {os.path.join(root, '12', image_dir)} "
               f"or {os.path.join(root, 'train', '12', image_dir)}")
    if incomplete:
        message += (f"; {len(incomplete)} numeric folders (e.g. {incomplete[0]}) have no {image_dir}/"
                    + (" (set RGB_IMAGE_DIR = 'RGB' if your copy has only RGB/)" if image_dir.endswith("RGB") else ""))
    elif os.path.isdir(os.path.join(root, image_dir)):
        message += f"; {root} itself looks like one sequence folder: point the data root at its parent"
    return f"{message}; {GENERATE_HINT}"


def _empty_side_message(side_name: str, seq_ids: list[str], root: str, image_dir: str, label_dir: str,
                        side: dict) -> str:
    """Error text for a split side left without frames."""
    message = (f"no usable {side_name} frames in {len(seq_ids)} {side_name} sequences under {root} "
               f"(ids {', '.join(seq_ids[:20])}{' ...' if len(seq_ids) > 20 else ''}): looked for images in "
               f"<seq>/{image_dir}/ with labels in <seq>/{label_dir}/; {side['unlabeled_frames']} images have no "
               f"label file, {len(side['bad_files'])} label files are bad")
    if side["bad_files"]:
        message += f" (first: {side['bad_files'][0]})"
    return message


def id_ranges(ids: list[str]) -> str:
    """Compact text of sequence ids, consecutive numbers as ranges: ['1','2','3','7'] -> '1-3 7'."""
    parts, run = [], []
    for i in ids:
        if run and i.isdigit() and run[-1].isdigit() and int(i) == int(run[-1]) + 1:
            run.append(i)
            continue
        if run:
            parts.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        parts.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return " ".join(parts)


def build_fred_index(root: str, modality: str, split: str = "canonical", frame_stride: int = 1,
                     val_frame_stride: int = 1, num_classes: int = 1, strict_labels: bool = False,
                     rgb_image_dir: str = "PADDED_RGB", cache_dir: str | None = None,
                     val_only: bool = False, fusion_pair_tolerance: float = 1 / 60) -> FredIndex:
    """Index the annotated frames of a FRED root for one modality and split (cached per sequence; see module doc).

    val_only: scan and select the val sequences only (what evaluation needs; a copy of FRED without the train
    sequences will do); train stays empty, the val side is checked as usual. fusion_pair_tolerance: seconds an RGB
    frame and its event partner may lie apart (modality fusion)."""
    start = time.perf_counter()
    _check_settings(modality, frame_stride, val_frame_stride, num_classes, rgb_image_dir, fusion_pair_tolerance)
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FredDataError(f"FRED root {root} is not a folder: set the data root (--data_root / DATA_ROOT) to the "
                            f"folder holding the sequence folders. {GET_FRED_HINT}; or {GENERATE_HINT}")
    fusion = modality == "fusion"
    image_dir = EVENT_IMAGE_DIR if modality != "rgb" else os.path.normpath(rgb_image_dir)
    label_dir = LABEL_DIRS["event" if fusion else modality]
    needed = (FUSION_RGB_DIR, EVENT_IMAGE_DIR) if fusion else (image_dir,)
    found, incomplete, duplicates, unreadable = find_sequences(root, *needed)
    if not found:
        raise FredDataError(_no_sequences_message(root, " and ".join(needed), incomplete))
    if duplicates:
        logger.warning("%d sequence folders appear twice under %s; using the first, ignoring %s",
                       len(duplicates), root, ", ".join(duplicates))
    try:
        train_ids, val_ids = resolve_split(split, found)
    except (ValueError, OSError) as e:
        raise FredDataError(f"split {split!r}: {e}") from None
    missing = sort_ids(i for i in train_ids + val_ids if i not in found)
    if missing:
        logger.warning("%d sequences of split %r are not under %s (%d of %d train, %d of %d val); ids: %s",
                       len(missing), split, root, sum(i not in found for i in train_ids), len(train_ids),
                       sum(i not in found for i in val_ids), len(val_ids), id_ranges(missing))
    train_seqs = [i for i in train_ids if i in found]
    val_seqs = [i for i in val_ids if i in found]
    required = ("val",) if val_only else ("train", "val")  # sides that must hold sequences and frames
    for side_name, ids, wanted in (("train", train_seqs, train_ids), ("val", val_seqs, val_ids)):
        if not ids and side_name in required:
            raise FredDataError(
                f"split {split!r} leaves no {side_name} sequences under {root}: it wants {len(wanted)} ids "
                f"({' '.join(wanted[:20])}{' ...' if len(wanted) > 20 else ''}); found on disk: "
                f"{' '.join(sort_ids(found)[:20])}{' ...' if len(found) > 20 else ''}. Use a split that matches "
                f"your sequences (e.g. random:0.2:0, or a folder with *train*.txt and *test*.txt)")

    tolerance_us = fusion_pair_tolerance * 1e6
    tag = (f"fusion-{FUSION_RGB_DIR}-tol{tolerance_us:.0f}us" if fusion
           else f"{modality}-{image_dir.replace(os.sep, '_')}")
    cache_root = cache_dir or default_cache_dir(root)
    root_hash = hashlib.sha1(root.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    cache_path = os.path.join(os.path.abspath(os.path.expanduser(cache_root)), f"index-{tag}-{root_hash}.pkl")
    header = {"version": CACHE_VERSION, "root": root, "image_dir": image_dir, "label_dir": label_dir}
    if fusion:
        header.update(modality=modality, rgb_dir=FUSION_RGB_DIR, tolerance_us=tolerance_us)
    seq_dirs = {sid: found[sid] for sid in ([] if val_only else train_seqs) + val_seqs}
    if fusion:
        entries, parsed, unlisted = _index_sequences(
            seq_dirs, lambda d: _scan_fused(d, FUSION_RGB_DIR),
            lambda d, listing: _parse_fused(d, FUSION_RGB_DIR, listing, tolerance_us), cache_path, header)
    else:
        entries, parsed, unlisted = _index_sequences(
            seq_dirs, lambda d: _scan_sequence(d, image_dir, label_dir, modality == "rgb"),
            lambda d, listing: _parse_sequence(d, label_dir, listing), cache_path, header)
    unreadable += unlisted
    if unreadable:
        logger.warning("%d folders cannot be read and were skipped: %s", len(unreadable), "; ".join(unreadable))
    skipped = set(seq_dirs) - set(entries)
    train_seqs = [i for i in train_seqs if i not in skipped]
    val_seqs = [i for i in val_seqs if i not in skipped]

    sides = {name: {"unlabeled_frames": 0, "removed_frames": 0, "dropped_boxes": 0, "bad_files": [],
                    "no_label_folder": [], "empty_sequences": [], "implausible_boxes": [],
                    "suspicious_label_files": []} for name in ("train", "val")}
    partner_dir = FUSION_RGB_DIR if fusion else ""
    train = [] if val_only else _select(train_seqs, seq_dirs, entries, image_dir, label_dir, frame_stride,
                                        num_classes, strict_labels, sides["train"], partner_dir)
    val = _select(val_seqs, seq_dirs, entries, image_dir, label_dir, val_frame_stride, num_classes,
                  strict_labels, sides["val"], partner_dir)
    pairing = _pairing_stats(entries, seq_dirs, fusion_pair_tolerance) if fusion else {}
    for side_name, frames, ids in (("train", train, train_seqs), ("val", val, val_seqs)):
        if not frames and side_name in required:
            raise FredDataError(_empty_side_message(side_name, ids, root, image_dir, label_dir, sides[side_name]))
    stats = {key: sides["train"][key] + sides["val"][key] for key in sides["train"]}
    if stats["no_label_folder"]:
        logger.warning("%d sequence folders have no %s/ (their frames are unannotated): %s",
                       len(stats["no_label_folder"]), label_dir, ", ".join(stats["no_label_folder"]))
    if stats["bad_files"]:
        logger.warning("%d %s and were left out, e.g. %s", len(stats["bad_files"]),
                       "label files do not parse, or frame names carry no time," if fusion else
                       "label files do not parse", stats["bad_files"][0])
    if stats["implausible_boxes"]:
        logger.warning("%d boxes lie far outside the image and were dropped, e.g. %s",
                       len(stats["implausible_boxes"]), stats["implausible_boxes"][0])
    if stats["suspicious_label_files"]:
        logger.warning("%d label files hold more than %d boxes in one frame (kept; check them), e.g. %s",
                       len(stats["suspicious_label_files"]), MAX_PLAUSIBLE_BOXES, stats["suspicious_label_files"][0])
    if stats["empty_sequences"]:
        logger.warning("%d sequence folders have no images in %s/: %s", len(stats["empty_sequences"]), image_dir,
                       ", ".join(stats["empty_sequences"]))
    stats.update(root=root, image_dir=image_dir, label_dir=label_dir, split=split, missing_sequences=missing,
                 unused_sequences=sort_ids(set(found) - set(train_ids) - set(val_ids)),
                 incomplete_folders=incomplete, duplicate_folders=duplicates, unreadable_folders=unreadable,
                 cache_file=cache_path, parsed_sequences=parsed, cached_sequences=len(entries) - parsed,
                 seconds=round(time.perf_counter() - start, 3))
    stats.update(pairing)
    return FredIndex(modality, train, val, train_seqs, val_seqs, stats)


def _offset_ms(offsets_us: np.ndarray) -> tuple[float, float]:
    """(median, max) of the absolute time offsets of pairs, milliseconds (0, 0 without pairs)."""
    if not offsets_us.size:
        return 0.0, 0.0
    magnitude = np.abs(offsets_us) / 1000.0
    return round(float(np.median(magnitude)), 3), round(float(magnitude.max()), 3)


def _pairing_stats(entries: dict[str, dict], seq_dirs: dict[str, str], tolerance: float) -> dict:
    """Index stats of modality fusion for the indexed sequences (entries): "pairing" {id: pairs, unpaired_rgb,
    unpaired_event, offset_median_ms, offset_max_ms}, the totals and the tolerance (s)."""
    pairing, offsets = {}, []
    for sid, e in entries.items():
        off = np.frombuffer(e["pair_offsets"], dtype=np.int64)
        offsets.append(off)
        median, worst = _offset_ms(off)
        pairing[sid] = {"pairs": e["pairs"], "unpaired_rgb": e["unpaired_rgb"], "unpaired_event": e["unpaired_event"],
                        "offset_median_ms": median, "offset_max_ms": worst}
    lost = [sid for sid, p in pairing.items() if not p["pairs"] and p["unpaired_rgb"]]
    if lost:
        logger.warning("%d sequences have RGB frames but not one within %g s of an event frame (are the names "
                       "times? see FUSION_PAIR_TOLERANCE): %s", len(lost), tolerance,
                       ", ".join(seq_dirs[sid] for sid in lost))
    median, worst = _offset_ms(np.concatenate(offsets) if offsets else np.zeros(0, np.int64))
    return {"pairing": pairing, "pair_tolerance_s": tolerance,
            "pairs": sum(p["pairs"] for p in pairing.values()),
            "unpaired_rgb": sum(p["unpaired_rgb"] for p in pairing.values()),
            "unpaired_event": sum(p["unpaired_event"] for p in pairing.values()),
            "offset_median_ms": median, "offset_max_ms": worst}
