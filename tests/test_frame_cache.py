"""Decoded-frame cache: contents, reuse and invalidation, crash safety, bad frames, FredDataset with and without the
cache (validation exact, training across workers), train_fred.py with FRAME_CACHE="disk"."""
import contextlib
import glob
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import train_fred
from datasets.augment import Augmentation
from datasets.fred_dataset import FredDataset, collate_fred
from speed import frame_cache as fc
from speed.frame_cache import build_frame_cache
from datasets.event_frames import event_planes, fuse_streams
from tools.synthetic import generate_fred
from utils.letterbox import letterbox_params

shutil_usage = type(shutil.disk_usage("/"))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(48, 64), (64, 48), (30, 90), (40, 40)]  # landscape, portrait, wide, square


@dataclass
class FakeFrame:
    """The two attributes of datasets.fred_index.Frame that the dataset reads."""
    image: str
    boxes: np.ndarray


def _make_frames(folder, n: int, seed: int = 0) -> list[FakeFrame]:
    """n textured PNG frames of the SHAPES in turn, each with one or two boxes."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        h, w = SHAPES[i % len(SHAPES)]
        small = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img[h // 4:h // 2, w // 4:w // 2] = (0, 255, 0)
        path = str(folder / f"f{i:03d}.png")
        cv2.imwrite(path, img)
        boxes = [[0, 0.375, 0.375, 0.25, 0.25]] + ([[0, 0.7, 0.7, 0.2, 0.3]] if i % 2 else [])
        frames.append(FakeFrame(path, np.array(boxes, np.float32)))
    return frames


def _paths(frames):
    return [f.image for f in frames]


def _expected(img, long_side):
    """What the cache should hold for img: cv2.resize to the letterbox size of a long_side square."""
    _, (nw, nh), _ = letterbox_params(img.shape[:2], (long_side, long_side))
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)


def _cache_files(cache_dir):
    return sorted(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else []


@pytest.fixture
def frames(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    return _make_frames(folder, 8)


# ----------------------------------------------------------------------------------------------- the cache
@pytest.mark.parametrize("long_side", [32, 96])  # down- and upscaled
def test_cache_holds_the_letterbox_resize_of_each_frame(frames, tmp_path, long_side):
    cache = build_frame_cache(_paths(frames), long_side, str(tmp_path / "c"), workers=3, progress=False)
    assert cache.built and len(cache) == len(frames) and not cache.bad
    for i, f in enumerate(frames):
        orig = cv2.imread(f.image)
        got = cache.get(i)
        assert max(got.shape[:2]) == long_side
        np.testing.assert_array_equal(got, _expected(orig, long_side))
        assert got.dtype == np.uint8 and not got.flags.writeable
        assert cache.orig_shape(i) == orig.shape[:2]
    again = pickle.loads(pickle.dumps(cache))  # what a spawned DataLoader worker gets: maps the file itself
    assert again._data is None
    np.testing.assert_array_equal(again.get(5), cache.get(5))


@pytest.mark.parametrize("channels", [1, 5])
def test_frames_of_any_channel_count_are_cached_and_checked_whole(tmp_path, monkeypatch, caplog, channels):
    """The cache stores what the decoder gives, whatever its channel count: read back unchanged, and its checksums
    pass when the cache is opened again."""
    rng = np.random.default_rng(channels)
    images = {str(tmp_path / f"f{i}.raw"): rng.integers(0, 256, (*shape, channels), dtype=np.uint8)
              for i, shape in enumerate([(60, 90), (90, 45), (30, 90), (90, 90)])}
    for path in images:
        open(path, "wb").close()
    monkeypatch.setattr(fc, "read_image", lambda path: (images[path], ""))
    cache = build_frame_cache(list(images), 90, str(tmp_path / "c"), progress=False)  # 90: the long side, no resize
    assert cache.built and not cache.bad
    for i, img in enumerate(images.values()):
        np.testing.assert_array_equal(cache.get(i), img)
    again = build_frame_cache(list(images), 90, str(tmp_path / "c"), progress=False)
    assert not again.built and "building it again" not in caplog.text
    np.testing.assert_array_equal(again.get(2), images[str(tmp_path / "f2.raw")])


def test_reused_when_nothing_changed_rebuilt_when_a_file_changes(frames, tmp_path, monkeypatch):
    cache_dir = str(tmp_path / "c")
    decoded = []
    original = fc._load_resized
    monkeypatch.setattr(fc, "_load_resized", lambda p, s, *more: (decoded.append(p), original(p, s, *more))[1])
    assert build_frame_cache(_paths(frames), 32, cache_dir, progress=False).built
    assert len(decoded) == len(frames)
    reused = build_frame_cache(_paths(frames), 32, cache_dir, progress=False)
    assert not reused.built and len(decoded) == len(frames)  # nothing decoded again
    np.testing.assert_array_equal(reused.get(2), _expected(cv2.imread(frames[2].image), 32))

    img = cv2.imread(frames[2].image)  # same size, new pixels and a new mtime
    cv2.imwrite(frames[2].image, 255 - img)
    st = os.stat(frames[2].image)
    os.utime(frames[2].image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rebuilt = build_frame_cache(_paths(frames), 32, cache_dir, progress=False)
    assert rebuilt.built and len(decoded) == 2 * len(frames)
    np.testing.assert_array_equal(rebuilt.get(2), _expected(255 - img, 32))
    assert len(_cache_files(cache_dir)) == 2, "rebuilt in place: one .bin and one .json"

    assert build_frame_cache(_paths(frames), 48, cache_dir, progress=False).built  # another size: another cache
    assert build_frame_cache(_paths(frames)[:5], 32, cache_dir, progress=False).built  # other frames too
    assert len(_cache_files(cache_dir)) == 6
    assert not build_frame_cache(_paths(frames), 32, cache_dir, progress=False).built  # the first is still there


def test_image_rewritten_with_the_same_size_and_mtime_is_decoded_again(frames, tmp_path):
    """(mtime, size) can be put back with utime; the inode change time cannot: the cache is rebuilt."""
    path = frames[2].image
    img = cv2.imread(path)
    cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, 0])  # uncompressed: the size depends only on the shape
    cache_dir = str(tmp_path / "c")
    assert build_frame_cache(_paths(frames), 32, cache_dir, progress=False).built
    before = os.stat(path)
    time.sleep(0.02)  # past the file system's clock tick, as any real rewrite after a build is
    cv2.imwrite(path, 255 - img, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns
    cache = build_frame_cache(_paths(frames), 32, cache_dir, progress=False)
    assert cache.built
    np.testing.assert_array_equal(cache.get(2), _expected(255 - img, 32))


@pytest.mark.parametrize("damage", ["zeroed", "torn_end", "one_frame_zeroed_mtime_kept", "zeroed_mtime_kept"])
def test_damaged_cache_of_the_same_size_is_rebuilt(damage, frames, tmp_path, caplog):
    """A .bin written after the build (its mtime moved) or whose bytes no longer match the frame checksums (a sample,
    always holding the last frame) is built again, with a warning."""
    cache_dir = str(tmp_path / "c")
    cache = build_frame_cache(_paths(frames), 48, cache_dir, progress=False)
    st = os.stat(cache.bin_path)
    last = len(frames) - 1
    start, end = {"zeroed": (0, st.st_size), "zeroed_mtime_kept": (0, st.st_size),
                  "torn_end": (st.st_size - 100, st.st_size),
                  "one_frame_zeroed_mtime_kept": (cache.offsets[3], cache.offsets[4])}[damage]
    with open(cache.bin_path, "r+b") as f:
        f.seek(start)
        f.write(bytes(end - start))
    if damage.endswith("mtime_kept"):
        os.utime(cache.bin_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.path.getsize(cache.bin_path) == st.st_size
    again = build_frame_cache(_paths(frames), 48, cache_dir, progress=False)
    assert again.built and "building it again" in caplog.text
    for i in (0, 3, last):
        np.testing.assert_array_equal(again.get(i), _expected(cv2.imread(frames[i].image), 48))
    caplog.clear()
    assert not build_frame_cache(_paths(frames), 48, cache_dir, progress=False).built  # sound again: reused quietly
    assert "building it again" not in caplog.text


def test_crash_during_build_leaves_no_usable_cache_and_next_build_is_complete(frames, tmp_path, monkeypatch):
    cache_dir = str(tmp_path / "c")
    original = fc._load_resized

    def dies_at_frame_5(path, size, *more):
        if path == frames[5].image:
            raise RuntimeError("decoder crashed")
        return original(path, size, *more)

    monkeypatch.setattr(fc, "_load_resized", dies_at_frame_5)
    with pytest.raises(RuntimeError, match="decoder crashed"):
        build_frame_cache(_paths(frames), 32, cache_dir, progress=False)
    assert _cache_files(cache_dir) == [], "temporary files are removed, nothing is left to be mistaken for a cache"

    monkeypatch.setattr(fc, "_load_resized", original)
    replace = os.replace
    calls = []

    def crash_between_renames(src, dst):
        calls.append(dst)
        if dst.endswith(".json"):
            raise OSError("simulated crash after the .bin was renamed")
        return replace(src, dst)

    build_frame_cache(_paths(frames), 32, cache_dir, progress=False)
    monkeypatch.setattr(fc.os, "replace", crash_between_renames)
    for f in frames:  # make the cache stale so that it is rebuilt
        st = os.stat(f.image)
        os.utime(f.image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(OSError, match="simulated"):
        build_frame_cache(_paths(frames), 32, cache_dir, progress=False)
    monkeypatch.setattr(fc.os, "replace", replace)
    assert not any(n.endswith(".json") for n in _cache_files(cache_dir)), "the old metadata went before the rename"
    cache = build_frame_cache(_paths(frames), 32, cache_dir, progress=False)
    assert cache.built
    np.testing.assert_array_equal(cache.get(7), _expected(cv2.imread(frames[7].image), 32))

    with open(cache.bin_path, "r+b") as f:  # a damaged (truncated) file is rebuilt too
        f.truncate(100)
    assert build_frame_cache(_paths(frames), 32, cache_dir, progress=False).built


def test_killed_build_leaves_an_orphan_that_the_next_build_removes(frames, tmp_path):
    cache_dir = str(tmp_path / "c")
    script = ("import os, sys; from speed import frame_cache as fc; orig = fc._load_resized\n"
              "def load(p, s, *more):\n"
              "    if p.endswith('f005.png'): os._exit(9)\n"
              "    return orig(p, s, *more)\n"
              "fc._load_resized = load\n"
              "fc.build_frame_cache(sys.argv[1:], 32, %r, workers=1, progress=False)\n" % cache_dir)
    proc = subprocess.run([sys.executable, "-c", script, *_paths(frames)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 9, proc.stderr
    left = _cache_files(cache_dir)
    assert left and all(".tmp-" in n for n in left), left
    cache = build_frame_cache(_paths(frames), 32, cache_dir, progress=False)
    assert cache.built and all(".tmp-" not in n for n in _cache_files(cache_dir))


def test_too_little_disk_space_fails_at_once_naming_the_need(frames, tmp_path, monkeypatch):
    monkeypatch.setattr(fc.shutil, "disk_usage", lambda path: shutil_usage(total=10**6, used=10**6 - 5000, free=5000))
    with pytest.raises(OSError, match=r"needs about .* GB .* FRAME_CACHE_DIR"):
        build_frame_cache(_paths(frames), 64, str(tmp_path / "c"), progress=False)
    assert _cache_files(str(tmp_path / "c")) == []


def test_cache_over_the_size_limit_is_not_built(frames, tmp_path):
    with pytest.raises(OSError, match=r"FRAME_CACHE_MAX_GB"):
        build_frame_cache(_paths(frames), 64, str(tmp_path / "c"), progress=False, max_bytes=1000)
    assert _cache_files(str(tmp_path / "c")) == []
    assert build_frame_cache(_paths(frames), 64, str(tmp_path / "c"), progress=False, max_bytes=1e9).built


# ----------------------------------------------------------------------------------------------- event frames
EVENT_BGR = ((52, 37, 30), (255, 255, 255), (200, 126, 64))  # FORMAT.md's background, ON, OFF colours, as BGR


def _event_frames(folder, shapes, block: int, seed: int = 0) -> list[FakeFrame]:
    """PNG event frames of these (h, w): background with sparse ON and OFF pixels, in aligned block x block squares
    (a resize by 1 / block keeps such a frame three-coloured)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i, (h, w) in enumerate(shapes):
        draw = rng.random((h // block, w // block))
        codes = (draw < 0.1).astype(np.uint8) + 2 * (draw > 0.93)
        codes = np.repeat(np.repeat(codes, block, axis=0), block, axis=1)
        path = str(folder / f"e{i:03d}.png")
        cv2.imwrite(path, np.array(EVENT_BGR, np.uint8)[codes])
        frames.append(FakeFrame(path, np.array([[0, 0.5, 0.5, 0.2, 0.2]], np.float32)))
    return frames


def _packed_bytes(h: int, w: int) -> int:
    """Bytes of one packed event frame: an ON and an OFF bit plane, each padded to whole bytes."""
    return 2 * -(-h * w // 8)


@pytest.mark.parametrize("scale", ["native", "halved"])
def test_event_frames_are_packed_and_read_back_as_the_decoded_png(tmp_path, scale):
    """Three-colour frames are stored as two bit planes (2 bits per pixel, 12x smaller than BGR): what the cache
    gives is, bit for bit, the decoded PNG resized as the cache resizes (at the native size, and at half size where
    the frame stays three-coloured); so are the validation items and training mosaics made from it. Pixel counts not
    a multiple of 8 too."""
    shapes, long_side, block = {"native": ([(45, 27), (27, 45), (45, 45), (9, 45)], 45, 1),
                                "halved": ([(36, 64), (64, 36), (64, 64)], 32, 2)}[scale]
    folder = tmp_path / "ev"
    folder.mkdir()
    frames = _event_frames(folder, shapes, block)
    cache = build_frame_cache(_paths(frames), long_side, str(tmp_path / "c"), workers=2, progress=False)
    stored = []
    for i, f in enumerate(frames):
        want = _expected(cv2.imread(f.image), long_side)
        assert set(map(tuple, want.reshape(-1, 3).tolist())) <= set(EVENT_BGR)
        got = cache.get(i)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.uint8 and not got.flags.writeable
        assert cache.orig_shape(i) == tuple(shapes[i])
        stored.append(want.shape[:2])
    assert os.path.getsize(cache.bin_path) == sum(_packed_bytes(h, w) for h, w in stored)
    assert os.path.getsize(cache.bin_path) * 11.5 < sum(h * w * 3 for h, w in stored)
    again = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(again.get(2), cache.get(2))
    plain = FredDataset(frames, (long_side, long_side))
    cached = FredDataset(frames, (long_side, long_side), frame_cache=cache)
    for i in range(len(frames)):
        assert torch.equal(plain[i]["image"], cached[i]["image"])
    aug = Augmentation(mosaic_prob=1.0)
    for seed in range(2):  # training mosaics too: the very ones made from the files
        a = FredDataset(frames, (long_side, long_side), aug, seed=seed)[seed]
        b = FredDataset(frames, (long_side, long_side), aug, seed=seed, frame_cache=cache)[seed]
        assert torch.equal(a["image"], b["image"])


def test_packed_event_frame_holds_the_on_and_off_planes_one_unpackbits_away(tmp_path):
    """The layout fusion reads (issue 18): frame i's bytes are the ON plane (white) then the OFF plane (blue), each
    np.packbits of the h x w mask in row order."""
    folder = tmp_path / "ev"
    folder.mkdir()
    frames = _event_frames(folder, [(27, 45), (45, 27)], 1, seed=3)
    cache = build_frame_cache(_paths(frames), 45, str(tmp_path / "c"), progress=False)
    data = np.fromfile(cache.bin_path, dtype=np.uint8)
    for i, f in enumerate(frames):
        img = cv2.imread(f.image)
        h, w = img.shape[:2]
        n = _packed_bytes(h, w) // 2
        frame = data[cache.offsets[i]:cache.offsets[i] + 2 * n]
        on = np.unpackbits(frame[:n], count=h * w).reshape(h, w)
        off = np.unpackbits(frame[n:], count=h * w).reshape(h, w)
        np.testing.assert_array_equal(on, (img == EVENT_BGR[1]).all(-1))
        np.testing.assert_array_equal(off, (img == EVENT_BGR[2]).all(-1))
        assert on.any() and off.any()


def test_a_cache_of_fused_frames_holds_each_pair_as_its_fused_sample(tmp_path, frames, monkeypatch):
    """With partners (each frame's event frame) a frame is stored as the fused sample of datasets/event_frames.py at
    the cached size, 5 bytes per pixel: (R, G, B, ON) then OFF, the planes made at the frames' size and resized,
    handed out as two read-only views; a partner of another size or unreadable makes the frame bad; the cache
    matches its frames with their partners only; a changed partner rebuilds it."""
    folder = tmp_path / "ev"
    folder.mkdir()
    events = [f.image for f in _event_frames(folder, SHAPES * 2, 1)]  # each frame's size
    (tmp_path / "odd").mkdir()
    events[3] = _event_frames(tmp_path / "odd", [(8, 8)], 1, seed=1)[0].image  # another size
    cache_dir = str(tmp_path / "c")
    cache = build_frame_cache(_paths(frames), 32, cache_dir, progress=False, partners=events)
    assert cache.fused and cache.matches(_paths(frames), events)
    assert not cache.matches(_paths(frames)) and not cache.matches(_paths(frames), events[::-1])
    sizes = []
    for i, f in enumerate(frames):
        if i == 3:
            assert cache.get(i) is None and "differs from its event partner's" in cache.bad_reason(i)
            continue
        planes = [_expected(p, 32)[..., None] for p in event_planes(cv2.imread(events[i]))]  # made, then resized
        want = fuse_streams(_expected(cv2.imread(f.image), 32), planes)
        got = cache.get(i)
        assert isinstance(got, tuple) and len(got) == 2
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
            assert not g.flags.writeable
        sizes.append(want[1].size)
    assert os.path.getsize(cache.bin_path) == 5 * sum(sizes)
    assert not build_frame_cache(_paths(frames), 32, cache_dir, progress=False, partners=events).built
    assert build_frame_cache(_paths(frames), 32, cache_dir, progress=False).fused is False  # another slot
    time.sleep(0.01)
    shutil.copy(events[0], events[1])  # a partner changes: built again
    assert build_frame_cache(_paths(frames), 32, cache_dir, progress=False, partners=events).built


def test_frame_that_is_not_three_coloured_is_stored_whole_with_a_warning(tmp_path, caplog):
    """One frame with another colour (and resized event frames, whose colours mix) keeps its 24-bit pixels: read
    back unchanged, the others stay packed, and a warning names the frame."""
    folder = tmp_path / "ev"
    folder.mkdir()
    frames = _event_frames(folder, [(36, 64)] * 4, 1)
    odd = cv2.imread(frames[2].image)
    odd[5, 7] = (0, 0, 0)
    cv2.imwrite(frames[2].image, odd)
    cache = build_frame_cache(_paths(frames), 64, str(tmp_path / "c"), progress=False)
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(cache.get(i), cv2.imread(f.image))
    assert os.path.getsize(cache.bin_path) == 3 * _packed_bytes(36, 64) + 36 * 64 * 3
    assert "1 of 4" in caplog.text and frames[2].image in caplog.text
    assert not build_frame_cache(_paths(frames), 64, str(tmp_path / "c"), progress=False).built

    resized = build_frame_cache(_paths(frames), 48, str(tmp_path / "c"), progress=False)  # 64 -> 48: colours mix
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(resized.get(i), _expected(cv2.imread(f.image), 48))
    assert os.path.getsize(resized.bin_path) == 4 * 27 * 48 * 3


def test_damaged_packed_frame_is_found_by_its_checksum_and_rebuilt(tmp_path, caplog):
    folder = tmp_path / "ev"
    folder.mkdir()
    frames = _event_frames(folder, [(36, 64)] * 3, 1)
    cache = build_frame_cache(_paths(frames), 64, str(tmp_path / "c"), progress=False)
    st = os.stat(cache.bin_path)
    with open(cache.bin_path, "r+b") as f:  # one ON bit flipped in frame 1, the mtime put back
        f.seek(int(cache.offsets[1]) + 10)
        byte = f.read(1)[0]
        f.seek(int(cache.offsets[1]) + 10)
        f.write(bytes([byte ^ 0x01]))
    os.utime(cache.bin_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = build_frame_cache(_paths(frames), 64, str(tmp_path / "c"), progress=False)
    assert again.built and "frame 1 does not match its checksum" in caplog.text
    np.testing.assert_array_equal(again.get(1), cv2.imread(frames[1].image))


def test_size_limit_counts_packed_event_frames_at_their_packed_size(tmp_path, frames):
    """A limit between the packed and the 24-bit size: the event cache is built, 24-bit frames of that size are not."""
    folder = tmp_path / "ev"
    folder.mkdir()
    events = _event_frames(folder, [(40, 40)] * len(frames), 1)
    limit = len(frames) * 40 * 40 * 3 / 4
    assert build_frame_cache(_paths(events), 40, str(tmp_path / "c"), progress=False, max_bytes=limit).built
    square = [f for f in frames if f.image.endswith(("3.png", "7.png"))]  # the 40x40 ones
    with pytest.raises(OSError, match="FRAME_CACHE_MAX_GB"):
        build_frame_cache(_paths(square * 4), 40, str(tmp_path / "c"), progress=False, max_bytes=limit)


def test_cache_that_outgrows_the_limit_after_packed_frames_stops_naming_the_frame(tmp_path):
    """The first frame is packed, so the estimate fits; 24-bit frames after it push the cache past the limit: the
    build stops there, naming the frame, and leaves nothing behind."""
    folder = tmp_path / "ev"
    folder.mkdir()
    frames = _event_frames(folder, [(36, 64)] * 6, 1)
    for f in frames[3:]:
        img = cv2.imread(f.image)
        img[0, 0] = (1, 2, 3)
        cv2.imwrite(f.image, img)
    limit = 3 * _packed_bytes(36, 64) + 36 * 64 * 3 + 10  # room for one 24-bit frame, not for two
    with pytest.raises(OSError, match=r"grew past FRAME_CACHE_MAX_GB.* frame 4 of 6 .*e004\.png"):
        build_frame_cache(_paths(frames), 64, str(tmp_path / "c"), workers=1, progress=False, max_bytes=limit)
    assert _cache_files(str(tmp_path / "c")) == []


def test_a_cache_of_the_previous_format_is_built_again(frames, tmp_path, monkeypatch):
    """FORMAT_VERSION 4 (packed event frames) leaves version 3 caches unused."""
    version = fc.FORMAT_VERSION
    monkeypatch.setattr(fc, "FORMAT_VERSION", 3)
    assert build_frame_cache(_paths(frames), 32, str(tmp_path / "c"), progress=False).built
    monkeypatch.setattr(fc, "FORMAT_VERSION", version)
    assert build_frame_cache(_paths(frames), 32, str(tmp_path / "c"), progress=False).built


# ----------------------------------------------------------------------------------------------- FredDataset
def test_bad_image_is_recorded_and_replaced_in_the_dataset(frames, tmp_path, caplog):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png at all")
    bad = [FakeFrame(str(tmp_path / "missing.png"), np.zeros((0, 5), np.float32)),
           FakeFrame(str(corrupt), np.array([[0, 0.5, 0.5, 0.2, 0.2]], np.float32))]
    mixed = [frames[0]] + bad + frames[1:4]
    cache = build_frame_cache(_paths(mixed), 64, str(tmp_path / "c"), progress=False)
    assert sorted(cache.bad) == [1, 2] and cache.get(1) is None and cache.get(2) is None
    meta = json.load(open(cache.bin_path[:-4] + ".json"))
    assert sorted(meta["bad"]) == ["1", "2"] and "No such file" in meta["bad"]["1"]

    log = tmp_path / "bad_images.txt"
    val = FredDataset(mixed, (64, 64), bad_image_log=str(log), frame_cache=cache)
    item = val[1]
    assert item["index"] == 3  # both bad frames skipped, the next readable one returned
    assert torch.equal(item["image"], val[3]["image"])
    lines = log.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [bad[0].image, bad[1].image]
    assert "frame cache" in lines[0] and "missing.png" in caplog.text

    train = FredDataset(mixed, (64, 64), Augmentation(mosaic_prob=1.0, mixup=True, mixup_prob=1.0), frame_cache=cache)
    for seed in range(10):
        train.seed = seed
        assert train[seed % len(mixed)]["image"].shape == (3, 64, 64)


def test_dataset_refuses_a_cache_of_other_frames(frames, tmp_path):
    cache = build_frame_cache(_paths(frames[:4]), 64, str(tmp_path / "c"), progress=False)
    with pytest.raises(ValueError, match="other frames"):
        FredDataset(frames, (64, 64), frame_cache=cache)
    with pytest.raises(ValueError, match="other frames"):
        FredDataset(frames[:4][::-1], (64, 64), frame_cache=cache)


@pytest.mark.parametrize("input_shape", [(64, 64), (64, 96), (32, 32)])
def test_validation_items_from_the_cache_match_the_uncached_ones(frames, tmp_path, input_shape):
    """Same boxes, ratio, pad and orig_shape; the same pixels when the cache's long side is the input's (square
    input); otherwise a resize of the resize, close to the direct one."""
    cache = build_frame_cache(_paths(frames), max(input_shape), str(tmp_path / "c"), progress=False)
    plain = FredDataset(frames, input_shape)
    cached = FredDataset(frames, input_shape, frame_cache=cache)
    batch_a = collate_fred([plain[i] for i in range(len(frames))])
    batch_b = collate_fred([cached[i] for i in range(len(frames))])
    for key in ("targets", "index", "orig_shapes", "ratios", "pads"):
        assert torch.equal(batch_a[key], batch_b[key]), key
    assert batch_b["orig_shapes"].tolist() == [list(s) for s in (SHAPES * 2)]
    diff = (batch_a["images"].float() - batch_b["images"].float()).abs()
    if input_shape[0] == input_shape[1]:
        assert torch.equal(batch_a["images"], batch_b["images"])
    else:
        assert 0 < diff.mean() < 3.0 and diff.max() < 80, diff.mean()


def test_training_items_use_the_original_geometry(frames, tmp_path):
    """Without augmentation a cached training item has the uncached one's boxes and letterbox values (pixels close:
    one warp from the cached image instead of from the original); a mosaic at a square input is the very mosaic the
    uncached dataset makes (the cache holds what mosaic4 would resize to)."""
    cache = build_frame_cache(_paths(frames), 64, str(tmp_path / "c"), progress=False)
    still = dict(mosaic=False, hsv=(0.0, 0.0, 0.0), flip_lr=0.0, translate=0.0, scale=0.0)
    plain = FredDataset(frames, (64, 64), Augmentation(**still))
    cached = FredDataset(frames, (64, 64), Augmentation(**still), frame_cache=cache)
    for i in range(len(frames)):
        a, b = plain[i], cached[i]
        assert (a["index"], a["orig_shape"], a["ratio"], a["pad"]) == (b["index"], b["orig_shape"], b["ratio"],
                                                                       b["pad"])
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-4, rtol=0)
        assert (a["image"].float() - b["image"].float()).abs().mean() < 2.0
    for seed in range(4):
        aug = Augmentation(mosaic_prob=1.0, degrees=5.0)
        plain = FredDataset(frames, (64, 64), aug, seed=seed)[seed]
        cached = FredDataset(frames, (64, 64), aug, seed=seed, frame_cache=cache)[seed]
        assert torch.equal(plain["image"], cached["image"])
        torch.testing.assert_close(plain["boxes"], cached["boxes"], atol=1e-4, rtol=0)
        assert (plain["orig_shape"], plain["ratio"], plain["pad"]) == (cached["orig_shape"], cached["ratio"],
                                                                      cached["pad"])


def test_training_with_the_cache_across_dataloader_workers(frames, tmp_path):
    cache = build_frame_cache(_paths(frames), 64, str(tmp_path / "c"), progress=False)
    batches = {}
    for name, c in (("plain", None), ("cached", cache)):
        ds = FredDataset(frames, (64, 64), Augmentation(mosaic_prob=1.0), seed=1, frame_cache=c)
        loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_fred, persistent_workers=True,
                            generator=torch.Generator().manual_seed(0), shuffle=True)
        batches[name] = []
        for epoch in range(2):
            ds.set_epoch(epoch, special_aug=True)
            batches[name] += list(loader)
    assert len(batches["cached"]) == 4
    for a, b in zip(batches["plain"], batches["cached"]):  # same worker seeds: the same mosaics, read from the cache
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["images"], b["images"])
        torch.testing.assert_close(a["targets"], b["targets"], atol=1e-4, rtol=0)
    assert any(len(b["targets"]) for b in batches["cached"])


# ----------------------------------------------------------------------------------------------- train_fred.py
def test_train_fred_builds_the_caches_once_and_reuses_them(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="speed.frame_cache")
    root = str(tmp_path / "fred")
    generate_fred(root, sequences=4, frames=4, seed=0, size=(90, 160))
    cache_dir = os.path.join(root, ".fred_frame_cache")

    def run(save, *sets):
        args = ["--modality", "event", "--data_root", root, "--phi", "n", "--device", "cpu", "--save_dir",
                str(tmp_path / save), "--set", "INPUT_SHAPE=[64, 64]", "FREEZE_TRAIN=False", "UNFREEZE_EPOCH=1",
                "UNFREEZE_BATCH_SIZE=4", "NUM_WORKERS=2", "EVAL_BATCH_SIZE=8", "LOG_INTERVAL=2",
                "WARMUP_MIN_ITERS=2", *sets]
        with contextlib.redirect_stdout(io.StringIO()) as out:
            rc = train_fred.main(args)
        assert rc == 0, out.getvalue()[-2000:]
        return json.loads(out.getvalue().strip().splitlines()[-1])

    run("off", "FRAME_CACHE='off'")
    assert _cache_files(cache_dir) == [], "FRAME_CACHE off writes no cache"
    caplog.clear()
    first = run("a", "FRAME_CACHE='disk'")
    assert first["best_mAP50"] is not None
    bins = glob.glob(os.path.join(cache_dir, "frames-*.bin"))
    assert len(bins) == 2 and caplog.text.count("frame cache: decoding") == 2  # train and val
    stamps = {b: os.stat(b).st_mtime_ns for b in bins}
    caplog.clear()
    run("b", "FRAME_CACHE='disk'")
    assert caplog.text.count("frame cache: reusing") == 2 and "decoding" not in caplog.text
    assert {b: os.stat(b).st_mtime_ns for b in bins} == stamps
    elsewhere = tmp_path / "elsewhere"
    run("c", f"FRAME_CACHE_DIR='{elsewhere}'")
    assert len(glob.glob(str(elsewhere / "frames-*.bin"))) == 2
    assert train_fred.main(["--modality", "event", "--data_root", root, "--set", "FRAME_CACHE='ram'"]) == 2
