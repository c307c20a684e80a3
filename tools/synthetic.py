"""Generated FRED: a FRED-shaped tree of synthetic drone sequences to test, demo and benchmark on.

FRED is about 205 GB and tests cannot download it, so this module writes data with FRED's layout, names,
colours and quirks (as the dataset's README and loader describe them: the Hugging Face dataset
GabrieleMagrini/FRED and the GitHub repository miccunifi/FRED): per sequence `RGB/`, `PADDED_RGB/`,
`Event/Frames/`, `RGB_YOLO/`, `Event_YOLO/`, `Removed_frames/` and `coordinates.txt`, plus
`synthetic_manifest.json` at the root with the ground-truth counts a reader must find.

The scene model: one world image per time step (1/30 s apart) in the event camera's frame, holding a
static background (sky gradient, treeline / buildings / grass, power lines), drifting clouds, a swaying
branch, birds, one or two drones and rain streaks. The event frame ending at step k is made from the
log-intensity change between steps k-1 and k (plus sensor noise); the padded RGB frame at step k is the
world seen through the RGB camera's smaller field of view (a rectangle of the event frame, black around
it) with haze, exposure, blur, noise and JPEG. Static background vanishes from the event frames while the
spinning propellers keep even a hovering drone visible there; in RGB the drone is small, hazy and
low-contrast over clutter, as on real FRED.

Boxes are exact: RGB boxes enclose the drone's pixels after the RGB blur, clipped to the RGB field of view;
event boxes enclose the drone's pixels at both ends of the 33 ms window of the event frame.

`--profile hard` (FRED-hard; the default profile's output is unchanged) draws per sequence, from its own seeded
streams (ranges: the HARD_* constants): drone widths around a median of 10..32 px at 1280 (3.5..60 px, 2 px at
least in any frame size), paths that dip in front of trees, buildings and ground; drone colours blended into what
is behind them (day), a dark body with only its LEDs at night, stronger haze and RGB noise, sunset glare, RGB
motion-blur streaks, auto-exposure swings and jumps, JPEG quality 35..69; more birds of drone size; hover windows
where the drone stands nearly still and its propellers flicker less (fewer events), flickering lamps at night,
denser rain, out-of-focus insects, more hot pixels and event noise; a static foreground (a pole, the scene's
branch) in half the sequences. Domain shift as in FRED's canonical split: train and val ids both get clear,
overcast, night and rain skies (each side's conditions in turn by the id's place in its split file) and insects;
only val ids get sunset and the buildings scene. The calibration (tools.hard_stats): about half the RGB drones and
a tenth of the event drones are invisible. A drone in view is always labelled: occluded drones keep the box of
the whole drone as drawn behind the foreground, and a faint or motion-blurred drone keeps the box of its RGB
coverage above half its peak. The manifest gains "profile": "hard" and, per sequence, "split", "hard" (the draws) and
"frames": {"rgb"|"event": {frame stem: {night, rain, hovering, size, occluded}}}, where size is the bucket
(tiny < 8 <= small < 16 <= medium < 32 <= large, px at 1280, "none" without a drone) of the narrowest drone
in view at that step, hovering means a drone in view moves under 0.3 px per frame at 1280 and occluded that
a quarter or more of a drone's pixels are behind the foreground.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from datasets.event_frames import EVENT_PALETTE
from datasets.splits import NAMED_SPLITS

# FRED event-frame colours, RGB order (cv2 writes BGR: reverse before writing): datasets/event_frames.py

FPS = 30
MANIFEST_NAME = "synthetic_manifest.json"
ALPHA_MASK = 0.3          # a pixel belongs to a drone where its coverage exceeds this
SUPERSAMPLE = 4           # sprites are drawn at 4x and averaged down (sub-pixel motion, soft edges)
REFERENCE_WIDTH = 1280.0  # pixel sizes and speeds below are given for FRED's 1280x720 frames
CONDITIONS = ("clear", "night", "overcast", "rain", "sunset")
BACKGROUNDS = ("treeline", "buildings", "field", "sky")
CLUTTERED_BACKGROUNDS = ("treeline", "buildings", "field")  # textured ground, trees or buildings a drone can pass
SPLIT_DIR = Path(NAMED_SPLITS["canonical"])
PROFILES = ("default", "hard")
# hard profile, domain shift as in FRED's canonical split, scenario-balanced: night and rain on both sides, plus one
# val-only condition (sunset: RGB glare) and one val-only scene (buildings), the kind of shift FRED's challenging
# split gives its test half. A sequence takes the conditions in turn by its place in its canonical split file (and
# the seed). The val order gives the bench's 24 sequences at seed 0 two clear val sequences and one of each other
# condition (a second night one made RGB val 62 % invisible against train's 51 %), and val ids 8, 9, 12 at seed 3
# (the breakdown tests) night and rain.
HARD_TRAIN_CONDITIONS = ("clear", "overcast", "night", "rain")
HARD_VAL_CONDITIONS = ("clear", "overcast", "sunset", "night", "rain")
HARD_TRAIN_BACKGROUNDS = ("treeline", "field", "sky")
HARD_VAL_BACKGROUNDS = ("treeline", "field", "sky", "buildings")
SIZE_BUCKETS = (("tiny", 8.0), ("small", 16.0), ("medium", 32.0), ("large", math.inf))  # box width at 1280 px
HOVER_SPEED = 0.3          # px per frame at 1280 width: slower than this counts as hovering
# hard profile draws per sequence, calibrated with tools.hard_stats (bench/README.md, 2026-12-06) so that about half
# the RGB drones and a tenth of the event drones are invisible (RGB contrast < 1, event z < 3); each comment says
# which way a change from the first, uncalibrated profile moved the measure (24 sequences x 40 frames at 1280)
HARD_CALIBRATION = 2              # revision of the draws below, in a hard tree's manifest (1: the uncalibrated ones)
HARD_WIDTH_MEDIAN = (10.0, 32.0)  # range of a sequence's median drone width, px at 1280 (log-uniform); was 8..26:
#                                   event boxes invisible 17 -> 14 % (train), RGB unchanged (38 %)
HARD_HOVER_P = 0.5                # share of the sequences with hover windows (was 0.6)
HARD_HOVER_SHARE = (0.15, 0.4)    # share of such a sequence's time its drones hover (was 0.2..0.6)
HOVER_PROPELLER = 0.35            # propeller flicker while hovering, times that in flight (was 0: still, no events):
#                                   hovering event boxes invisible 36 -> 21 % (train), 50 -> 28 % (val)
HARD_LOW_CONTRAST = (0.3, 0.8)    # how far a drone's colour blends into what is behind it by day (RGB and events)
HARD_HAZE = (0.4, 0.65)           # RGB haze (was 0.3..0.55): median RGB contrast 2.1 -> 1.8 (train), events untouched
HARD_RAIN_DENSITY = 3.0           # rain streaks per frame, times the default profile's
HARD_RGB_NOISE = 2.0              # RGB sensor noise, times the default profile's (was 1): RGB invisible 38 -> 50 %
HARD_INSECTS_P = 0.4              # share of the sequences (train and val; was val only) with out-of-focus insects
HARD_INSECTS = (2, 9)             # how many insects such a sequence has (upper bound excluded; was 3..11, val only)
OCCLUDED_FRACTION = 0.25   # a drone with this share of its pixels behind the foreground counts as occluded


@dataclass(frozen=True)
class DroneModel:
    """One of FRED's five drone models: silhouette kind, typical width and top speed at 1280 px width."""

    name: str
    shape: str                              # quad | tello | whoop | cross
    width_px: float                         # typical on-screen width, px at 1280 width
    speed_px: float                         # top speed, px per frame at 1280 width
    body: tuple[float, float, float]        # body colour, BGR 0..1


DRONE_MODELS = (
    DroneModel("DJI Mini 2", "quad", 32.0, 7.0, (0.40, 0.40, 0.42)),
    DroneModel("DJI Mini 3", "quad", 36.0, 7.0, (0.68, 0.69, 0.70)),
    DroneModel("DJI Tello EDU", "tello", 26.0, 3.5, (0.78, 0.78, 0.76)),
    DroneModel("Betafpv air75", "whoop", 17.0, 10.0, (0.12, 0.10, 0.14)),
    DroneModel("DarwinFPV cineape20", "cross", 27.0, 9.0, (0.16, 0.17, 0.19)),
)


@dataclass
class DroneMask:
    """Pixels of one drone: boolean patch `mask` [h, w] whose top-left pixel sits at (x0, y0) in the frame."""

    x0: int
    y0: int
    mask: np.ndarray

    def bbox(self) -> tuple[int, int, int, int] | None:
        """Tight box x1, y1, x2, y2 (pixel edges, x2/y2 exclusive) of the mask's pixels, None if it has none."""
        ys, xs = np.nonzero(self.mask)
        if xs.size == 0:
            return None
        x0, y0 = self.x0, self.y0
        return x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask pasted into a frame of shape (h, w), bool [h, w]."""
        out = np.zeros(shape, bool)
        h, w = self.mask.shape
        ax0, ay0 = max(0, -self.x0), max(0, -self.y0)
        ax1, ay1 = min(w, shape[1] - self.x0), min(h, shape[0] - self.y0)
        if ax1 > ax0 and ay1 > ay0:
            out[self.y0 + ay0:self.y0 + ay1, self.x0 + ax0:self.x0 + ax1] = self.mask[ay0:ay1, ax0:ax1]
        return out


@dataclass(frozen=True)
class HardScene:
    """Per-sequence draws of the hard profile (what makes real FRED hard); sizes and speeds at 1280 px width."""

    val: bool                 # a canonical test (val) sequence: holds the val-only conditions
    width_median: float       # median drone width, px
    hover: float              # share of the time the drones hover (few events)
    low_contrast: float       # 0..1: how far the drones' colours blend into what is behind them (day)
    haze: float               # RGB haze 0..1
    motion_blur: float        # longest RGB motion-blur streak, px
    exposure: float           # amplitude of the RGB auto-exposure swings (log gain)
    jpeg_quality: int
    rain: bool
    insects: int              # out-of-focus insects near the camera (RGB and events)
    lamps: int                # flickering lights (events from flicker)
    hot_pixels: float         # hot pixels per megapixel, on top of the sensor's few
    noise_scale: float        # event background-noise rate, times the default's
    occluder: bool            # a foreground branch the drones pass behind
    birds: int


@dataclass
class SequencePlan:
    """Everything decided about one sequence before rendering (names, counts, scenario, random streams)."""

    seq_id: int
    index: int                                  # position among the generated sequences
    seed: int
    size: tuple[int, int]                       # (height, width) of every frame
    rgb_slots: int                              # RGB time slots, removed ones included; slot j is at step j + 1
    event_frames: int                           # event frame k = 1..event_frames ends at step k
    removed: set[int]                           # RGB slots moved to Removed_frames/
    unlabeled_rgb: set[int]                     # kept RGB slots without a label file
    unlabeled_event: set[int]                   # event frames without a label file
    frame_naming: str                           # "microseconds" (Video_<id>_<us>.png) | "frame" (..._frame_<n>.png)
    start_us: int                               # wall-clock time of step 0, microseconds since midnight
    content: tuple[int, int, int, int]          # x0, y0, w, h of the RGB field of view inside the padded frame
    condition: str
    background: str
    models: list[DroneModel] = field(default_factory=list)
    hard: HardScene | None = None               # the hard profile's draws, None for the default profile

    def rgb_name(self, slot: int) -> str:
        """File name of RGB slot `slot`, wall-clock time like Video_230_17_16_02.213938.jpg."""
        t = self.start_us + ((slot + 1) * 1_000_000) // FPS
        sec, us = divmod(t, 1_000_000)
        return f"Video_{self.seq_id}_{sec // 3600:02d}_{sec // 60 % 60:02d}_{sec % 60:02d}.{us:06d}.jpg"

    def event_name(self, k: int) -> str:
        """File name of event frame k (1-based): microseconds since the start, or the frame-number variant."""
        us = k * 1_000_000 // FPS
        if self.frame_naming == "frame":
            return f"Video_{self.seq_id}_frame_{100_000_000 + us}.png"
        return f"Video_{self.seq_id}_{us}.png"


@dataclass
class RenderedStep:
    """One time step of a sequence: images as written (BGR uint8) and the drones' pixels and boxes."""

    step: int                                   # time step; the step's time is step / 30 s
    rgb: np.ndarray | None                      # padded RGB frame [H, W, 3] BGR uint8 for RGB slot step-1, else None
    rgb_raw: np.ndarray | None                  # raw RGB camera frame [H, W, 3] BGR uint8 (field of view resized)
    event: np.ndarray | None                    # event frame k = step [H, W, 3] BGR uint8 (None at step 0)
    drone_masks: list[DroneMask]                # sharp drone pixels at this step (event camera), one per drone
    rgb_masks: list[DroneMask]                  # drone pixels in the padded RGB frame (after blur, inside the view)
    coord_boxes: list[tuple[int, tuple[int, int, int, int]]]   # (track id, x1 y1 x2 y2) of drones in view at this step
    rgb_boxes: list[tuple[int, int, int, int]]  # x1, y1, x2, y2 pixel boxes for the RGB label
    event_boxes: list[tuple[int, int, int, int]]  # x1, y1, x2, y2 boxes for the event label (steps k-1 and k)
    conditions: dict | None = None              # hard profile: night, rain, hovering, size bucket, occluded


# ----------------------------------------------------------------------------------------------- ids and plans
def _read_split(name: str) -> list[int]:
    """Sequence ids of a canonical split file shipped in datasets/splits/canonical/ (lines like `12/`)."""
    text = (SPLIT_DIR / name).read_text()
    return [int(tok.strip().strip("/")) for tok in text.split() if tok.strip().strip("/")]


def default_ids(sequences: int) -> list[int]:
    """Ids for `sequences` sequences: about a quarter from the canonical test split, the rest from train."""
    if sequences < 1:
        raise ValueError(f"sequences must be at least 1, got {sequences}")
    train, test = _read_split("train_split.txt"), _read_split("test_split.txt")
    n_val = 0 if sequences == 1 else min(len(test), max(1, round(sequences / 4)))
    n_train = sequences - n_val
    if n_train > len(train):
        raise ValueError(f"at most {len(train) + len(test)} sequences exist in FRED, asked for {sequences}")

    def spread(pool: list[int], n: int) -> list[int]:
        return [pool[int(i * len(pool) / n)] for i in range(n)] if n else []

    return sorted(spread(train, n_train) + spread(test, n_val))


def plan_sequence(seq_id: int, index: int, frames: int, seed: int, size: tuple[int, int],
                  profile: str = "default") -> SequencePlan:
    """Decide names, counts and scenario of one sequence with `frames` kept RGB frames (deterministic)."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    rng = np.random.default_rng([seed, seq_id, 1])
    h, w = size
    n_removed = max(1, round(0.03 * frames))
    slots = frames + n_removed
    extra = max(1, round(slots * rng.uniform(0.02, 0.05)))
    events = slots + extra
    removed = set(int(i) for i in rng.choice(np.arange(1, slots - 1), n_removed, replace=False))
    kept = [j for j in range(slots) if j not in removed]
    unl_rgb = set(int(i) for i in rng.choice(kept, max(1, round(0.015 * frames)), replace=False))
    unl_event = set(int(i) for i in rng.choice(np.arange(1, events + 1), max(1, round(0.015 * events)), replace=False))
    condition = CONDITIONS[(index + seed) % len(CONDITIONS)]
    hour = {"night": rng.uniform(20.5, 23.0), "sunset": rng.uniform(18.0, 20.0)}.get(condition, rng.uniform(7.0, 17.5))
    duration_us = (events + 2) * 1_000_000 // FPS
    start_us = min(int(hour * 3600e6) + int(rng.integers(0, 1_000_000)), 86_400_000_000 - duration_us - 1)
    scale = rng.uniform(0.84, 0.94)
    cw, ch = round(w * scale), round(h * scale)
    cx0, cy0 = round(rng.uniform(0.3, 0.7) * (w - cw)), round(rng.uniform(0.3, 0.7) * (h - ch))
    first = DRONE_MODELS[(3 * index + seed) % len(DRONE_MODELS)]
    models = [first]
    if index % 3 == 1:
        others = [m for m in DRONE_MODELS if m is not first]
        models.append(others[int(rng.integers(len(others)))])
    background = BACKGROUNDS[(2 * index + seed // len(CONDITIONS) + int(rng.integers(0, 2))) % len(BACKGROUNDS)]
    plan = SequencePlan(
        seq_id=seq_id, index=index, seed=seed, size=(h, w), rgb_slots=slots, event_frames=events,
        removed=removed, unlabeled_rgb=unl_rgb, unlabeled_event=unl_event,
        frame_naming="frame" if index % 4 == 2 else "microseconds", start_us=start_us,
        content=(cx0, cy0, cw, ch), condition=condition, background=background, models=models)
    return _harden(plan) if profile == "hard" else plan


def _harden(plan: SequencePlan) -> SequencePlan:
    """The hard profile's per-sequence draws on top of a default plan (its own random stream; val-only conditions)."""
    rng = np.random.default_rng([plan.seed, plan.seq_id, 6])
    test = _read_split("test_split.txt")
    val = plan.seq_id in test
    conditions, backgrounds = (HARD_VAL_CONDITIONS, HARD_VAL_BACKGROUNDS) if val else \
        (HARD_TRAIN_CONDITIONS, HARD_TRAIN_BACKGROUNDS)
    place = (test if val else _read_split("train_split.txt")).index(plan.seq_id)
    plan.condition = conditions[(place + plan.seed) % len(conditions)]
    plan.background = backgrounds[int(rng.integers(len(backgrounds)))]
    hour = {"night": rng.uniform(20.5, 23.0), "sunset": rng.uniform(18.0, 20.0)}.get(plan.condition,
                                                                                    rng.uniform(7.0, 17.5))
    duration_us = (plan.event_frames + 2) * 1_000_000 // FPS
    plan.start_us = min(int(hour * 3600e6) + int(rng.integers(0, 1_000_000)), 86_400_000_000 - duration_us - 1)
    night = plan.condition == "night"
    plan.hard = HardScene(
        val=val, width_median=float(np.exp(rng.uniform(*np.log(HARD_WIDTH_MEDIAN)))),
        hover=float(rng.choice([0.0, rng.uniform(*HARD_HOVER_SHARE)], p=[1 - HARD_HOVER_P, HARD_HOVER_P])),
        low_contrast=float(rng.uniform(*HARD_LOW_CONTRAST)), haze=float(rng.uniform(*HARD_HAZE)),
        motion_blur=float(rng.uniform(2.0, 10.0) if rng.random() < 0.6 else 0.0),
        exposure=float(rng.uniform(0.1, 0.35)), jpeg_quality=int(rng.integers(35, 70)),
        rain=plan.condition == "rain" or (night and rng.random() < 0.35),
        insects=int(rng.integers(*HARD_INSECTS)) if rng.random() < HARD_INSECTS_P else 0,
        lamps=int(rng.integers(2, 7)) if night else 0,
        hot_pixels=float(rng.uniform(50.0, 200.0)), noise_scale=float(rng.uniform(2.0, 4.0)),
        occluder=bool(rng.random() < 0.5), birds=int(rng.integers(2, 7)))
    return plan


# ----------------------------------------------------------------------------------------------- scene pieces
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field in 0..1, float32 [h, w], with features about `cell` pixels wide."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    return cv2.resize(rng.random((gh, gw), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


_SKIES = {  # (zenith, horizon) colours, BGR 0..1
    "clear": ((0.80, 0.52, 0.28), (0.93, 0.86, 0.78)),
    "overcast": ((0.66, 0.62, 0.60), (0.82, 0.80, 0.79)),
    "rain": ((0.47, 0.44, 0.42), (0.62, 0.61, 0.60)),
    "sunset": ((0.55, 0.33, 0.25), (0.40, 0.65, 0.97)),
    "night": ((0.060, 0.030, 0.020), (0.090, 0.110, 0.140)),
}


def _background(rng: np.random.Generator, plan: SequencePlan) -> tuple[np.ndarray, float]:
    """Static world [H, W, 3] float32 BGR 0..1 (sky, ground, silhouettes, wires) and the horizon row fraction."""
    h, w = plan.size
    k = w / REFERENCE_WIDTH
    night = plan.condition == "night"
    dim = 0.12 if night else 1.0
    zenith, horizon_col = (np.array(c, np.float32) for c in _SKIES[plan.condition])
    horizon = 1.25 if plan.background == "sky" else rng.uniform(0.7, 0.9)
    yy = np.arange(h, dtype=np.float32)[:, None]
    t = np.clip(yy / (horizon * h), 0, 1) ** 0.8
    img = (zenith * (1 - t[..., None]) + horizon_col * t[..., None]) * np.ones((1, w, 1), np.float32)
    img *= (0.96 + 0.08 * _smooth_noise(rng, h, w, 220 * k))[..., None]
    xx = np.arange(w, dtype=np.float32)
    hor = horizon * h
    if plan.background != "sky":   # grass / field below the horizon, textured
        grass = np.array([0.20, 0.42, 0.30] if rng.random() < 0.7 else [0.25, 0.45, 0.50], np.float32) * dim
        tex = 0.75 + 0.5 * _smooth_noise(rng, h, w, 3 * k) * _smooth_noise(rng, h, w, 40 * k)
        shade = 0.8 + 0.4 * np.clip((yy - hor) / max(1.0, h - hor), 0, 1)
        ground = yy >= hor
        img = np.where(ground[..., None], grass * (tex * shade)[..., None], img)
    if plan.background == "treeline":
        prof = np.zeros(w, np.float32)                # tree crowns: overlapping half-ellipses of varied size
        for _ in range(int(rng.integers(45, 80))):
            c, r = rng.uniform(-0.03, 1.03) * w, rng.uniform(10, 45) * k
            top = rng.uniform(15, 90) * k + r * rng.uniform(0.3, 1.0)
            crown = top - r + r * np.sqrt(np.clip(1 - ((xx - c) / r) ** 2, 0, 1))
            prof = np.maximum(prof, np.where(np.abs(xx - c) < r, crown, 0))
        prof += 5 * k * (_smooth_noise(rng, 1, w, 3 * k)[0] - 0.5)
        tree = (yy >= hor - prof[None, :]) & (yy < hor + 2)
        leaf = np.array([0.12, 0.22, 0.14], np.float32) * dim
        tex = 0.55 + 0.9 * _smooth_noise(rng, h, w, 2.5 * k) * _smooth_noise(rng, h, w, 25 * k)
        img = np.where(tree[..., None], leaf * tex[..., None], img)
    elif plan.background == "buildings":
        x = 0.0
        while x < w:
            bw, bh = rng.uniform(0.03, 0.12) * w, rng.uniform(0.05, 0.3) * h
            col = np.float32(rng.uniform(0.25, 0.55)) * np.array([1.0, 0.97, rng.uniform(0.9, 1.1)], np.float32) * dim
            x0, x1, y0 = int(x), int(min(w, x + bw)), int(max(0, hor - bh))
            img[y0:int(hor) + 2, x0:x1] = col
            wy, wx = max(2, int(8 * k)), max(2, int(6 * k))
            lit = np.array([0.35, 0.75, 0.95], np.float32) if night else col * 0.6
            for yw in range(y0 + wy, int(hor) - wy, 2 * wy):
                for xw in range(x0 + wx, x1 - wx, 2 * wx):
                    if rng.random() < (0.35 if night else 0.8):
                        img[yw:yw + wy, xw:xw + max(1, wx // 1)] = lit
            x += bw
    if plan.background in ("treeline", "field") and rng.random() < 0.6:   # power lines: static clutter
        for _ in range(int(rng.integers(1, 4))):
            ya, yb, sag = rng.uniform(0.15, 0.6) * h, rng.uniform(0.15, 0.6) * h, rng.uniform(0.02, 0.1) * h
            u = np.linspace(0, 1, 64)
            pts = np.stack([u * w, ya + (yb - ya) * u + sag * 4 * u * (1 - u)], 1)
            cv2.polylines(img, [np.round(pts * 4).astype(np.int32)], False, (0.1 * dim,) * 3,
                          max(1, round(1.5 * k)), cv2.LINE_AA, shift=2)
    return np.ascontiguousarray(img, np.float32), min(horizon, 1.0)


def _cloud_layer(rng: np.random.Generator, plan: SequencePlan, drift: int) -> tuple[np.ndarray, np.ndarray]:
    """Cloud coverage [Hc, W + drift] float32 0..1 over the top of the sky, and the cloud colour BGR."""
    h, w = plan.size
    k = w / REFERENCE_WIDTH
    hc = max(4, int(0.65 * h))
    cover = {"overcast": 0.35, "rain": 0.3, "clear": 0.62, "sunset": 0.55, "night": 0.5}[plan.condition]
    n = _smooth_noise(rng, hc, w + drift, 160 * k) * 0.7 + _smooth_noise(rng, hc, w + drift, 45 * k) * 0.3
    alpha = np.clip((n - cover) / 0.18, 0, 1) * 0.75
    alpha *= np.clip(1.2 - np.arange(hc, dtype=np.float32)[:, None] / hc, 0, 1)
    colour = {"overcast": (0.86, 0.86, 0.86), "rain": (0.55, 0.55, 0.56), "clear": (0.98, 0.98, 0.98),
              "sunset": (0.65, 0.70, 0.95), "night": (0.07, 0.07, 0.08)}[plan.condition]
    return alpha.astype(np.float32), np.array(colour, np.float32)


def _branch_sprite(rng: np.random.Generator, plan: SequencePlan) -> tuple[np.ndarray, int, int, tuple[float, float]]:
    """Alpha [bh, bw] of a leafy branch hanging in from a top corner, its frame offset and pivot (local px)."""
    h, w = plan.size
    k = w / REFERENCE_WIDTH
    bw, bh = int(0.35 * w), int(0.45 * h)
    alpha = np.zeros((bh, bw), np.float32)
    left = rng.random() < 0.5
    pivot = (0.0 if left else bw - 1.0, rng.uniform(0.05, 0.4) * bh)
    direction = rng.uniform(-0.25, 0.45)
    stack = [(pivot, (1 if left else -1) * math.cos(direction), math.sin(direction), 0.75 * bw, 9 * k, 0)]
    while stack:
        (x, y), dx, dy, length, thick, depth = stack.pop()
        pts = [(x, y)]
        for _ in range(8):
            x, y = x + dx * length / 8, y + dy * length / 8
            dy += rng.uniform(-0.08, 0.1)
            pts.append((x, y))
        cv2.polylines(alpha, [np.round(np.array(pts) * 4).astype(np.int32)], False, 1.0,
                      max(1, round(thick)), cv2.LINE_AA, shift=2)
        for px, py in pts[2::2]:   # leaf clusters
            for _ in range(3):
                cx, cy = px + rng.normal(0, 6 * k), py + rng.normal(4 * k, 6 * k)
                ax = max(1, round(rng.uniform(3, 8) * k))
                cv2.ellipse(alpha, (round(cx * 4), round(cy * 4)), (ax * 4, max(4, ax * 2)),
                            rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA, shift=2)
            if depth < 2 and rng.random() < 0.45:
                ang = rng.uniform(0.3, 0.9) * (1 if rng.random() < 0.5 else -1)
                ndx, ndy = dx * math.cos(ang) - dy * math.sin(ang), dx * math.sin(ang) + dy * math.cos(ang)
                stack.append(((px, py), ndx, ndy, length * 0.45, thick * 0.55, depth + 1))
    x0 = 0 if left else w - bw
    return np.clip(alpha, 0, 1), x0, 0, pivot


def _stamp(img: np.ndarray, x0: int, y0: int, alpha: np.ndarray, premul: np.ndarray) -> None:
    """Composite a sprite (coverage [h, w], premultiplied colour [h, w, 3]) onto img at (x0, y0), clipped."""
    h, w = alpha.shape
    ax0, ay0 = max(0, -x0), max(0, -y0)
    ax1, ay1 = min(w, img.shape[1] - x0), min(h, img.shape[0] - y0)
    if ax1 <= ax0 or ay1 <= ay0:
        return
    roi = img[y0 + ay0:y0 + ay1, x0 + ax0:x0 + ax1]
    roi *= 1 - alpha[ay0:ay1, ax0:ax1, None]
    roi += premul[ay0:ay1, ax0:ax1]


def draw_drone(model: DroneModel, cx: float, cy: float, width: float, tilt: float, squash: float,
               blades: np.ndarray, discs: np.ndarray, lights: int, shade: float = 1.0
               ) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Sprite of one drone centred at (cx, cy) px, `width` px wide: (x0, y0, coverage [n, n], premul BGR [n, n, 3]).

    tilt: roll in radians; squash: vertical foreshortening of the top view (0..1); blades: 4 propeller
    angles (radians) and discs: 4 opacities of the blurred propeller discs for this instant (the propellers
    alias against the frame rate, so they flicker and keep a hovering drone visible to the event camera);
    lights: 0 none, 1 front LEDs, 2 front and rear LEDs (night);
    shade scales the lit colours (night), LEDs excepted.
    """
    s = SUPERSAMPLE
    half = 0.62 * width + 2
    x0, y0 = math.floor(cx - half), math.floor(cy - half)
    n = math.ceil(2 * half) + 2
    col = np.zeros((n * s, n * s, 3), np.float32)
    cov = np.zeros((n * s, n * s), np.float32)
    ox, oy = (cx - x0) * s, (cy - y0) * s
    ct, st = math.cos(tilt), math.sin(tilt)
    unit = width * s

    def pt(u: float, v: float) -> tuple[int, int]:
        u, v = u * unit, v * unit * squash
        return round(ox + ct * u - st * v), round(oy + st * u + ct * v)

    def thick(t: float) -> int:
        return max(1, round(t * unit))

    def opaque_line(u0: float, v0: float, u1: float, v1: float, t: float, c: tuple) -> None:
        cv2.line(col, pt(u0, v0), pt(u1, v1), c, thick(t))
        cv2.line(cov, pt(u0, v0), pt(u1, v1), 1.0, thick(t))

    def ellipse(img: np.ndarray, u: float, v: float, r: float, c, line: int = -1, ry: float | None = None) -> None:
        height = r * squash if ry is None else ry
        axes = (max(1, round(r * unit)), max(1, round(height * unit)))
        cv2.ellipse(img, pt(u, v), axes, math.degrees(tilt), 0, 360, c, line)

    body = tuple(float(c) * shade for c in model.body)
    dark = tuple(c * shade for c in (0.06, 0.06, 0.07))
    arm_u, arm_v, rotor_r, duct, arm_t, body_r = {
        "quad": (0.36, 0.30, 0.14, 0.0, 0.07, 0.16),
        "tello": (0.30, 0.27, 0.15, 0.035, 0.08, 0.20),
        "whoop": (0.25, 0.25, 0.19, 0.06, 0.05, 0.12),
        "cross": (0.31, 0.31, 0.16, 0.05, 0.14, 0.19),
    }[model.shape]
    rotors = [(su * arm_u, sv * arm_v) for su, sv in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    for u, v in rotors:                                   # arms
        opaque_line(0, 0, u, v, arm_t, body)
    if model.shape == "tello":                            # boxy body
        corners = np.array([pt(-0.2, -0.15), pt(0.2, -0.15), pt(0.2, 0.15), pt(-0.2, 0.15)], np.int32)
        cv2.fillConvexPoly(col, corners, body)
        cv2.fillConvexPoly(cov, corners, 1.0)
    else:
        ellipse(col, 0, 0, body_r, body, ry=body_r * max(squash, 0.55))
        ellipse(cov, 0, 0, body_r, 1.0, ry=body_r * max(squash, 0.55))
    disc = np.zeros_like(cov)                              # motion-blurred propeller discs, partly transparent
    for (u, v), opacity in zip(rotors, discs):
        ellipse(disc, u, v, rotor_r, float(opacity))
    a = disc
    cov += a * (1 - cov)
    col *= 1 - a[..., None]
    col += a[..., None] * np.array(dark, np.float32)
    for i, (u, v) in enumerate(rotors):                  # ducts / guards and the blades at this instant
        if duct:
            ellipse(col, u, v, rotor_r + duct / 2, dark if model.shape != "tello" else body, thick(duct))
            ellipse(cov, u, v, rotor_r + duct / 2, 1.0, thick(duct))
        bu, bv = rotor_r * 0.95 * math.cos(blades[i]), rotor_r * 0.95 * math.sin(blades[i])
        opaque_line(u - bu, v - bv, u + bu, v + bv, 0.045, dark)
    if lights:
        leds = [((-arm_u, -arm_v), (0.2, 0.2, 1.0)), ((arm_u, -arm_v), (0.2, 0.2, 1.0))]
        if lights > 1:
            leds += [((-arm_u, arm_v), (0.3, 1.0, 0.3)), ((arm_u, arm_v), (0.3, 1.0, 0.3))]
        for (u, v), c in leds:
            cv2.circle(col, pt(u, v), thick(0.05), c, -1)
            cv2.circle(cov, pt(u, v), thick(0.05), 1.0, -1)
    cov = cv2.resize(cov, (n, n), interpolation=cv2.INTER_AREA)
    col = cv2.resize(col, (n, n), interpolation=cv2.INTER_AREA)
    return x0, y0, cov, col


def _bird_sprite(cx: float, cy: float, size: float, flap: float) -> tuple[int, int, np.ndarray]:
    """Coverage of a flapping bird (a V of two wings) centred at (cx, cy): (x0, y0, coverage [n, n])."""
    s = SUPERSAMPLE
    half = 0.6 * size + 2
    x0, y0 = math.floor(cx - half), math.floor(cy - half)
    n = math.ceil(2 * half) + 2
    cov = np.zeros((n * s, n * s), np.float32)
    ox, oy, unit = (cx - x0) * s, (cy - y0) * s, size * s
    tip, mid = 0.05 - 0.35 * flap, -0.12 * flap
    pts = [(-0.5, tip), (-0.22, mid), (0, 0.08), (0.22, mid), (0.5, tip)]
    poly = np.array([(round(ox + u * unit), round(oy + v * unit)) for u, v in pts], np.int32)
    cv2.polylines(cov, [poly], False, 1.0, max(1, round(0.12 * unit)))
    cv2.circle(cov, (round(ox), round(oy + 0.08 * unit)), max(1, round(0.08 * unit)), 1.0, -1)
    return x0, y0, cv2.resize(cov, (n, n), interpolation=cv2.INTER_AREA)


def _clip_mask(x0: int, y0: int, mask: np.ndarray, rect: tuple[int, int, int, int]) -> DroneMask:
    """The part of a mask patch at (x0, y0) inside rect (x, y, w, h), cropped to its pixels (empty if none)."""
    rx, ry, rw, rh = rect
    ax0, ay0 = max(0, rx - x0), max(0, ry - y0)
    ax1, ay1 = min(mask.shape[1], rx + rw - x0), min(mask.shape[0], ry + rh - y0)
    part = mask[ay0:max(ay0, ay1), ax0:max(ax0, ax1)]
    ys, xs = np.nonzero(part)
    if xs.size == 0:
        return DroneMask(0, 0, np.zeros((0, 0), bool))
    return DroneMask(x0 + ax0 + int(xs.min()), y0 + ay0 + int(ys.min()),
                     part[ys.min():ys.max() + 1, xs.min():xs.max() + 1])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """Hermite ramp 0..1 for x in 0..1, clipped outside."""
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _hover_windows(rng: np.random.Generator, steps: int, share: float) -> np.ndarray:
    """0..1 per step [steps]: 1 inside hover windows covering about `share` of the steps, smooth 8-step ramps."""
    m = np.zeros(steps)
    if share <= 0:
        return m
    n = max(1, round(steps / 150))
    length = max(2, round(share * steps / n))
    tau = np.arange(steps, dtype=np.float64)
    for _ in range(n):
        start = int(rng.integers(0, max(1, steps - length)))
        m = np.maximum(m, _smoothstep((tau - start + 8) / 8) * (1 - _smoothstep((tau - start - length) / 8)))
    return m


def _drone_tracks(rng: np.random.Generator, plan: SequencePlan, horizon: float) -> list[dict]:
    """Per drone arrays over steps 0..event_frames: centre x, y, width (px), tilt (rad), blade angles [T, 4].

    Paths are sums of three sinusoids, time-scaled to the model's top speed; in one window per ~300 steps
    every drone flies out through its nearest edge at up to 3x top speed (faster in short sequences) and back.
    Hard profile: widths around the sequence's median (3.5..60 px at 1280), paths that may dip in front of the
    ground, and hover windows where the path's clock nearly stops and the propellers flicker less (HOVER_PROPELLER).
    """
    h, w = plan.size
    k = w / REFERENCE_WIDTH
    steps = plan.event_frames + 1
    tau = np.arange(steps, dtype=np.float64)
    squash = rng.uniform(0.6, 0.85)
    tracks = []
    for model in plan.models:
        v_max = model.speed_px * k * rng.uniform(0.35, 1.0)
        y_lo, y_hi = 0.08, max(0.3, horizon - 0.04) if plan.hard is None else min(0.92, horizon + 0.05)
        cxn, cyn = rng.uniform(0.35, 0.65), rng.uniform(y_lo + 0.15, y_hi - 0.1)
        ax = rng.dirichlet(np.ones(3)) * rng.uniform(0.15, 0.32) * w * rng.choice([-1, 1], 3)
        ay = rng.dirichlet(np.ones(3)) * rng.uniform(0.08, 0.25) * h * rng.choice([-1, 1], 3)
        wx, wy = rng.uniform(0.5, 1.5, 3), rng.uniform(0.5, 1.5, 3)
        px, py = rng.uniform(0, 2 * np.pi, 3), rng.uniform(0, 2 * np.pi, 3)
        rate = v_max / math.hypot(float(np.abs(ax) @ wx), float(np.abs(ay) @ wy))
        hover = np.zeros(steps) if plan.hard is None else _hover_windows(rng, steps, plan.hard.hover)
        clock = np.cumsum(1 - 0.98 * hover) - (1 - 0.98 * hover[0])   # the path's time: nearly stops in a hover
        x = cxn * w + (ax[:, None] * np.sin(rate * wx[:, None] * clock + px[:, None])).sum(0)
        y = cyn * h + (ay[:, None] * np.sin(rate * wy[:, None] * clock + py[:, None])).sum(0)
        y = np.clip(y, y_lo * h, y_hi * h)
        dist = rng.uniform(0.6, 1.35) * np.exp(0.35 * np.sin(rng.uniform(0.005, 0.02) * tau + rng.uniform(0, 6.3)))
        if plan.hard is None:
            width = np.maximum(np.clip(model.width_px * dist, 10, 54) * k, 6.0)
        else:
            width = np.maximum(np.clip(plan.hard.width_median * model.width_px / 27.0 * dist, 3.5, 60) * k, 2.0)
        tracks.append({"model": model, "x": x, "y": y, "width": width, "squash": squash, "v_max": v_max,
                       "blades": rng.uniform(0, np.pi, (steps, 4)), "wobble": rng.uniform(0.2, 0.5),
                       "discs": 0.2 + 0.55 * (0.65 * (tau % 2)[:, None] + rng.uniform(0, 0.35, (steps, 4)))})
        still = hover > 0.5
        if still.any():                               # a hovering drone's propellers flicker less: fewer events
            blades, discs = tracks[-1]["blades"], tracks[-1]["discs"]
            blades[still] = blades[0] + HOVER_PROPELLER * (blades[still] - blades[0])
            discs[still] = 0.45 + HOVER_PROPELLER * (discs[still] - 0.45)
    n_win = max(1, steps // 300)
    seg = steps / n_win
    for i in range(n_win):                            # windows where every drone is out of view
        length = max(2, round(rng.uniform(0.04, 0.08) * seg))
        cand = np.arange(int(i * seg), max(int(i * seg), int((i + 1) * seg) - length) + 1)
        cand = cand[cand < steps]
        edge = np.max([np.min([t["x"][cand], w - t["x"][cand], t["y"][cand], h - t["y"][cand]], 0) for t in tracks], 0)
        near = cand[edge <= np.quantile(edge, 0.3)]   # start where the drones are close to an edge
        start = int(near[rng.integers(near.size)])
        end = min(steps - 1, start + length - 1)
        for t in tracks:
            x, y, wd = t["x"], t["y"], t["width"]
            gaps = [x[start], w - x[start], y[start], h - y[start]]
            side = int(np.argmin(gaps))
            ramp = int(np.clip(math.ceil((gaps[side] + wd[start]) / (3 * t["v_max"])), 1, max(1, seg // 3)))
            m = _smoothstep((tau - (start - ramp)) / ramp) * (1 - _smoothstep((tau - end) / ramp))
            out = -(0.7 * wd + 3)                     # just past the edge: no drone pixel left in view
            if side == 0:
                t["x"] = (1 - m) * x + m * out
            elif side == 1:
                t["x"] = (1 - m) * x + m * (w - out)
            elif side == 2:
                t["y"] = (1 - m) * y + m * out
            else:
                t["y"] = (1 - m) * y + m * (h - out)
    for t in tracks:
        vx = np.gradient(t["x"])
        t["tilt"] = np.clip(vx / max(t["v_max"], 1e-6), -1, 1) * 0.3 + 0.04 * np.sin(tau * t["wobble"])
    return tracks


@dataclass
class HardEffects:
    """The hard profile's per-step effects of one sequence, drawn up front (arrays over steps)."""

    exposure: np.ndarray          # RGB gain factor per step [T]
    blur_len: np.ndarray          # RGB motion-blur streak length per step, px [T]
    blur_angle: np.ndarray        # its direction, radians [T]
    insects: np.ndarray           # insect centres per step [T, n, 2] px
    insect_size: np.ndarray       # insect radii px [n]
    lamps: np.ndarray             # lamp centres [m, 2] px
    lamp_level: np.ndarray        # lamp brightness per step [T, m] (flicker)
    hot: np.ndarray               # extra hot pixels, flat indices [q]
    hot_pol: np.ndarray           # their polarity 0/1 [q]
    hot_fire: np.ndarray          # whether each fires in each step [T, q]
    glare: np.ndarray | None      # sunset glare added to the RGB view [ch, cw, 3], None without
    birds: list[dict]             # extra birds, drone-sized look-alikes


def _hard_effects(plan: SequencePlan, horizon: float) -> HardEffects:
    """Draw the hard profile's per-step effects of a plan (its own random stream)."""
    hard = plan.hard
    assert hard is not None
    rng = np.random.default_rng([plan.seed, plan.seq_id, 7])
    h, w = plan.size
    k = w / REFERENCE_WIDTH
    steps = plan.event_frames + 1
    tau = np.arange(steps, dtype=np.float64)
    jumps = np.cumsum(np.where(rng.random(steps) < 1 / 60, rng.normal(0, hard.exposure, steps), 0.0))
    log_gain = hard.exposure * np.sin(rng.uniform(0.01, 0.05) * tau + rng.uniform(0, 6.3)) + jumps
    blur_len = hard.motion_blur * k * np.clip(np.sin(rng.uniform(0.02, 0.08) * tau + rng.uniform(0, 6.3)), 0, 1) ** 2
    blur_angle = rng.uniform(0, np.pi) + 0.3 * np.sin(rng.uniform(0.01, 0.04) * tau)
    n = hard.insects
    start = rng.random((n, 2)) * (w, h)
    vel = np.cumsum(rng.normal(0, 1.5 * k, (steps, n, 2)), 0)
    vel = np.clip(vel, -12 * k, 12 * k)
    insects = np.mod(start[None] + np.cumsum(vel, 0), (w, h))
    m = hard.lamps
    lamps = np.stack([rng.random(m) * w, (horizon - rng.uniform(0.0, 0.12, m)) * h], 1)
    lamp_level = 0.3 + 0.7 * rng.random((steps, m))
    q = max(1, round(hard.hot_pixels * h * w / 1e6))
    glare = None
    if plan.condition == "sunset":
        _, _, cw, ch = plan.content
        sx, sy, sigma = rng.uniform(0.1, 0.9) * cw, rng.uniform(-0.2, 0.2) * ch, rng.uniform(0.2, 0.4) * cw
        yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
        r2 = ((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * sigma ** 2)
        glare = (rng.uniform(0.3, 0.7) * np.exp(-r2))[..., None] * np.array([0.55, 0.8, 1.0], np.float32)
        glare = glare.astype(np.float32)
    birds = [dict(x0=rng.uniform(0, w), y=rng.uniform(0.1, 0.7) * h * max(horizon, 0.6),
                  vx=rng.uniform(1.0, 5.0) * k * rng.choice([-1, 1]), size=max(2.0, rng.uniform(4, 16) * k),
                  period=rng.uniform(5, 10), phase=rng.uniform(0, 6.3), bob=rng.uniform(2, 10) * k)
             for _ in range(hard.birds)]
    return HardEffects(exposure=np.exp(np.clip(log_gain, -1.0, 1.0)), blur_len=blur_len, blur_angle=blur_angle,
                       insects=insects, insect_size=rng.uniform(1.5, 5.0, n) * k, lamps=lamps,
                       lamp_level=lamp_level, hot=rng.integers(0, h * w, q),
                       hot_pol=(rng.random(q) < 0.5).astype(np.uint8), hot_fire=rng.random((steps, q)) < 0.7,
                       glare=glare, birds=birds)


def _foreground(plan: SequencePlan, branch: tuple | None) -> tuple[np.ndarray, int, int]:
    """Static foreground the drones pass behind: alpha [fh, fw] of a pole (and the scene's branch) and its offset."""
    h, w = plan.size
    k = w / REFERENCE_WIDTH
    rng = np.random.default_rng([plan.seed, plan.seq_id, 8])
    alpha = np.zeros((h, w), np.float32)
    x, half = rng.uniform(0.25, 0.75) * w, max(1.0, rng.uniform(4, 12) * k)
    cv2.rectangle(alpha, (round((x - half) * 4), round(rng.uniform(0.0, 0.3) * h * 4)),
                  (round((x + half) * 4), h * 4), 1.0, -1, cv2.LINE_AA, shift=2)
    if branch is not None:
        b, bx0, by0, _ = branch
        alpha[by0:by0 + b.shape[0], bx0:bx0 + b.shape[1]] = np.maximum(alpha[by0:by0 + b.shape[0],
                                                                             bx0:bx0 + b.shape[1]], b)
    ys, xs = np.nonzero(alpha)
    return alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1], int(xs.min()), int(ys.min())


def _motion_kernel(length: float, angle: float) -> np.ndarray | None:
    """Normalised line kernel of a motion-blur streak `length` px long at `angle`, None below 1 px."""
    if length < 1:
        return None
    n = 2 * math.ceil(length / 2) + 1
    c = n // 2
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    ker = np.zeros((n, n), np.float32)
    cv2.line(ker, (round((c - dx) * 4), round((c - dy) * 4)), (round((c + dx) * 4), round((c + dy) * 4)),
             1.0, 1, cv2.LINE_AA, shift=2)
    return ker / ker.sum()


def _hidden_share(m: DroneMask, alpha: np.ndarray, ax0: int, ay0: int) -> float:
    """Share of a drone mask's pixels behind a foreground alpha patch at (ax0, ay0) (alpha > 0.5)."""
    total = int(m.mask.sum())
    if not total:
        return 0.0
    oy, ox = m.y0 - ay0, m.x0 - ax0
    y0, x0 = max(0, oy), max(0, ox)
    y1, x1 = min(alpha.shape[0], oy + m.mask.shape[0]), min(alpha.shape[1], ox + m.mask.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0.0
    part = m.mask[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return float((alpha[y0:y1, x0:x1][part] > 0.5).sum()) / total


def _size_bucket(width_1280: float) -> str:
    """Size bucket name of a box width given in px at 1280 width."""
    return next(name for name, upper in SIZE_BUCKETS if width_1280 < upper)


# ----------------------------------------------------------------------------------------------- rendering
def render_sequence(plan: SequencePlan) -> Iterator[RenderedStep]:
    """Render a planned sequence step by step (steps 0..event_frames); deterministic for the plan."""
    h, w = plan.size
    k = w / REFERENCE_WIDTH
    scene_rng = np.random.default_rng([plan.seed, plan.seq_id, 2])
    track_rng = np.random.default_rng([plan.seed, plan.seq_id, 3])
    frame_rng = np.random.default_rng([plan.seed, plan.seq_id, 4])
    night, rain = plan.condition == "night", plan.condition == "rain"
    hard = plan.hard
    if hard is not None:
        rain = hard.rain
    steps = plan.event_frames + 1

    base, horizon = _background(scene_rng, plan)
    cloud_speed = min(scene_rng.uniform(0.1, 0.5) * k, 2.0 * w / steps)
    drift = int(math.ceil(cloud_speed * steps)) + 1
    clouds, cloud_col = _cloud_layer(scene_rng, plan, drift)
    cloud_img = np.empty((clouds.shape[0], w, 3), np.float32)
    cloud_img[:] = cloud_col
    branch = _branch_sprite(scene_rng, plan) if scene_rng.random() < 0.45 else None
    sway_amp, sway_w = scene_rng.uniform(0.4, 1.6), scene_rng.uniform(0.08, 0.25)
    birds = []
    for _ in range(int(scene_rng.integers(0, 4))):
        birds.append(dict(x0=scene_rng.uniform(0, w), y=scene_rng.uniform(0.1, 0.6) * h * max(horizon, 0.6),
                          vx=scene_rng.uniform(1.5, 6.0) * k * scene_rng.choice([-1, 1]),
                          size=max(3.0, scene_rng.uniform(5, 12) * k), period=scene_rng.uniform(5, 10),
                          phase=scene_rng.uniform(0, 6.3), bob=scene_rng.uniform(2, 10) * k))
    bird_col = np.array([0.02, 0.02, 0.025] if night else [0.12, 0.11, 0.10], np.float32)
    branch_col = np.array([0.01, 0.012, 0.012] if night else [0.07, 0.11, 0.09], np.float32)
    tracks = _drone_tracks(track_rng, plan, horizon)
    fx = _hard_effects(plan, horizon) if hard is not None else None
    foreground = None                                  # hard: a pole and a branch in front of the drones
    if fx is not None:
        birds += fx.birds
        if hard.occluder:
            foreground, branch = _foreground(plan, branch), None
        speeds = [np.hypot(np.gradient(t["x"]), np.gradient(t["y"])) for t in tracks]

    # RGB camera: exposure, haze, blur, noise; event camera: contrast threshold with per-pixel mismatch, noise
    cx0, cy0, cw, ch = plan.content
    light = (0.1 if hard is None else 0.03) if night else 1.0   # illumination of the drones' bodies
    gain = scene_rng.uniform(1.6, 2.6) if night else scene_rng.uniform(0.95, 1.15)
    haze = scene_rng.uniform(0.25, 0.45) if plan.condition in ("overcast", "rain") else scene_rng.uniform(0.1, 0.3)
    if hard is not None:
        haze = hard.haze
    airlight = tuple(float(c) * haze * (0.12 if night else 1.0) for c in _SKIES[plan.condition][1]) + (0.0,)
    blur = scene_rng.uniform(0.6, 1.2) * max(k, 0.5)
    noise_sigma = scene_rng.uniform(0.03, 0.05) if night else scene_rng.uniform(0.008, 0.02)
    noise_bank = scene_rng.standard_normal((2, ch + 16, cw + 16, 3), dtype=np.float32)
    mismatch = scene_rng.standard_normal((h, w), dtype=np.float32)
    thresh = np.float32(scene_rng.uniform(0.14, 0.22)) * (1 + 0.08 * mismatch)
    eps = np.float32(0.01 if night else 0.02)
    noise_rate = scene_rng.uniform(6e-4, 1.2e-3) if night else scene_rng.uniform(1e-4, 3e-4)
    hot = scene_rng.integers(0, h * w, max(2, round(2e-5 * h * w)))
    hot_pol = (scene_rng.random(hot.size) < 0.5).astype(np.uint8)
    neg_thresh = -thresh
    event_lut = np.zeros((256, 1, 3), np.uint8)       # event code 0/1/2 -> background / positive / negative, BGR
    event_lut[:3, 0] = [c[::-1] for c in EVENT_PALETTE]
    rain_n = round(scene_rng.uniform(150, 300) * h * w / (720 * REFERENCE_WIDTH))
    if hard is not None:
        noise_rate *= hard.noise_scale
        rain_n = round(rain_n * HARD_RAIN_DENSITY)
        noise_sigma *= HARD_RGB_NOISE
    rain_slant = scene_rng.uniform(-0.35, 0.35)
    ksize = 2 * math.ceil(3 * blur) + 1

    prev_log = None
    prev_event_boxes: list[tuple[int, int, int, int] | None] = [None] * len(tracks)
    for step in range(steps):
        # per-step random numbers are always drawn, in the same order, whatever the scene holds
        r_noise = frame_rng.integers(0, 2), frame_rng.integers(0, 16, 2)
        r_events = frame_rng.poisson(noise_rate * h * w)
        r_ev_pos = frame_rng.integers(0, h * w, r_events)
        r_ev_pol = (frame_rng.random(r_events) < 0.5).astype(np.uint8)
        r_hot = frame_rng.random(hot.size) < 0.6
        r_rain = frame_rng.random((rain_n, 3))

        ker = None if fx is None else _motion_kernel(float(fx.blur_len[step]), float(fx.blur_angle[step]))
        world = base.copy()
        off = int(cloud_speed * step)
        hc = clouds.shape[0]
        ca = clouds[:, off:off + w]
        world[:hc] = cv2.blendLinear(world[:hc], cloud_img, 1 - ca, ca)
        if branch is not None:
            alpha, bx0, by0, pivot = branch
            rot = cv2.getRotationMatrix2D(pivot, sway_amp * math.sin(sway_w * step), 1.0)
            a = cv2.warpAffine(alpha, rot, (alpha.shape[1], alpha.shape[0]))[..., None]
            roi = world[by0:by0 + a.shape[0], bx0:bx0 + a.shape[1]]
            roi *= 1 - a
            roi += a * branch_col
        for b in birds:
            span = w + 40 * k
            bx = (b["x0"] + b["vx"] * step) % span - 20 * k
            by = b["y"] + b["bob"] * math.sin(0.05 * step + b["phase"])
            flap = math.sin(2 * math.pi * step / b["period"] + b["phase"])
            x0, y0, cov = _bird_sprite(bx, by, b["size"], flap)
            _stamp(world, x0, y0, cov, cov[..., None] * bird_col)
        if fx is not None:
            for (lx, ly), level in zip(fx.lamps, fx.lamp_level[step]):   # flickering lights
                cv2.circle(world, (round(lx * 4), round(ly * 4)), max(4, round(12 * k)),
                           (0.55 * level, 0.85 * level, 1.0 * level), -1, cv2.LINE_AA, shift=2)
        drone_masks, rgb_masks, coord, rgb_boxes, event_boxes = [], [], [], [], []
        for tid, tr in enumerate(tracks):
            lights = 0 if not night else (2 if (step // 15) % 2 == 0 else 1)
            x0, y0, cov, col = draw_drone(tr["model"], tr["x"][step], tr["y"][step], tr["width"][step],
                                          tr["tilt"][step], tr["squash"], tr["blades"][step], tr["discs"][step],
                                          lights, light)
            if hard is not None and not night:        # low contrast: the drone takes on the colour behind it
                behind = world[max(0, y0):max(0, y0 + cov.shape[0]), max(0, x0):max(0, x0 + cov.shape[1])]
                if behind.size:
                    col = col * (1 - hard.low_contrast) + hard.low_contrast * cov[..., None] * behind.mean((0, 1))
            _stamp(world, x0, y0, cov, col)
            sharp = _clip_mask(x0, y0, cov > ALPHA_MASK, (0, 0, w, h))
            pad = ksize // 2
            if hard is None:
                blurred = cv2.GaussianBlur(np.pad(cov, pad), (ksize, ksize), blur) > ALPHA_MASK
            else:                                     # the RGB blur and motion streak; a faint drone keeps its label
                pad += 0 if ker is None else ker.shape[0] // 2
                soft = cv2.GaussianBlur(np.pad(cov, pad), (ksize, ksize), blur)
                soft = soft if ker is None else cv2.filter2D(soft, -1, ker, borderType=cv2.BORDER_CONSTANT)
                blurred = soft > min(ALPHA_MASK, 0.5 * float(soft.max()))
            vis = _clip_mask(x0 - pad, y0 - pad, blurred, plan.content)
            drone_masks.append(sharp)
            rgb_masks.append(vis)
            now = sharp.bbox()
            if now is not None:
                coord.append((tid + 1, now))
            before = prev_event_boxes[tid]
            if now is not None or before is not None:
                pair = [b for b in (before, now) if b is not None]
                event_boxes.append((min(b[0] for b in pair), min(b[1] for b in pair),
                                    max(b[2] for b in pair), max(b[3] for b in pair)))
            box = vis.bbox()
            if box is not None:
                rgb_boxes.append(box)
            prev_event_boxes[tid] = now
        conditions = None
        if fx is not None:
            hidden = 0.0
            if foreground is not None:
                a, bx0, by0 = foreground
                hidden = max([_hidden_share(m, a, bx0, by0) for m in drone_masks], default=0.0)
                roi = world[by0:by0 + a.shape[0], bx0:bx0 + a.shape[1]]
                roi *= 1 - a[..., None]
                roi += a[..., None] * branch_col
            for (ix, iy), r in zip(fx.insects[step], fx.insect_size):   # out-of-focus insects near the camera
                cv2.circle(world, (round(ix * 4), round(iy * 4)), max(2, round(r * 4)),
                           (0.5, 0.55, 0.6) if night else (0.05, 0.05, 0.05), -1, cv2.LINE_AA, shift=2)
            in_view = [tid for tid, _ in coord]
            widths = [(b[2] - b[0]) / k for _, b in coord]
            conditions = {"night": night, "rain": rain,
                          "hovering": any(speeds[tid - 1][step] < HOVER_SPEED * k for tid in in_view),
                          "size": _size_bucket(min(widths)) if widths else "none",
                          "occluded": hidden >= OCCLUDED_FRACTION}
        if rain:
            length = (10 + 25 * r_rain[:, 2]) * k
            p0 = np.stack([r_rain[:, 0] * w, r_rain[:, 1] * h], 1)
            p1 = p0 + np.stack([rain_slant * length, length], 1)
            layer = np.zeros((h, w), np.float32)
            segs = np.round(np.stack([p0, p1], 1) * 4).astype(np.int32)
            cv2.polylines(layer, list(segs), False, 1.0, 1, cv2.LINE_AA, shift=2)
            world *= 1 + 0.5 * layer[..., None]       # drops scatter light: brighter streaks

        gray = cv2.cvtColor(world, cv2.COLOR_BGR2GRAY)
        log = cv2.log(gray + eps)
        event = None
        if prev_log is not None:
            diff = cv2.subtract(log, prev_log)
            code = cv2.bitwise_or(cv2.bitwise_and(cv2.compare(diff, thresh, cv2.CMP_GT), 1),
                                  cv2.bitwise_and(cv2.compare(diff, neg_thresh, cv2.CMP_LT), 2))
            flat = code.reshape(-1)
            flat[r_ev_pos] = 1 + r_ev_pol
            flat[hot[r_hot]] = 1 + hot_pol[r_hot]
            if fx is not None:
                fire = fx.hot_fire[step]
                flat[fx.hot[fire]] = 1 + fx.hot_pol[fire]
            event = cv2.LUT(cv2.merge([code, code, code]), event_lut)
        prev_log = log

        rgb = raw = None
        if 1 <= step <= plan.rgb_slots:
            g = gain if fx is None else gain * float(fx.exposure[step])
            view = cv2.add(cv2.multiply(world[cy0:cy0 + ch, cx0:cx0 + cw], (g * (1 - haze),) * 3 + (0,)), airlight)
            if fx is not None and fx.glare is not None:
                view = cv2.add(view, fx.glare)
            view = cv2.GaussianBlur(view, (ksize, ksize), blur)
            if ker is not None:
                view = cv2.filter2D(view, -1, ker)
            bank, (nx, ny) = r_noise
            view = cv2.scaleAdd(noise_bank[bank, ny:ny + ch, nx:nx + cw], noise_sigma, view)
            content = cv2.convertScaleAbs(cv2.max(view, 0.0), alpha=255.0, beta=0.5)
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[cy0:cy0 + ch, cx0:cx0 + cw] = content
            raw = cv2.resize(content, (w, h), interpolation=cv2.INTER_LINEAR)
        yield RenderedStep(step=step, rgb=rgb, rgb_raw=raw, event=event, drone_masks=drone_masks, rgb_masks=rgb_masks,
                           coord_boxes=coord, rgb_boxes=rgb_boxes if rgb is not None else [],
                           event_boxes=event_boxes if event is not None else [], conditions=conditions)


# ----------------------------------------------------------------------------------------------- writing
def yolo_line(box: tuple[int, int, int, int], size: tuple[int, int], cls: int = 0) -> str:
    """YOLO label line `cls cx cy w h` (normalised to the frame) for a pixel box x1, y1, x2, y2."""
    h, w = size
    x1, y1, x2, y2 = box
    return f"{cls} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}"


def _counts() -> dict:
    return {"images": 0, "annotated": 0, "empty": 0, "boxes": 0, "unlabeled": 0}


def _write_sequence(plan: SequencePlan, root: str) -> dict:
    """Render and write one sequence folder under root; returns its manifest entry."""
    seq = Path(root) / str(plan.seq_id)
    folders = ("RGB", "PADDED_RGB", "RGB_YOLO", "Event/Frames", "Event_YOLO", "Removed_frames")
    dirs = {name: seq / name for name in folders}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    quality = int(np.random.default_rng([plan.seed, plan.seq_id, 5]).integers(72, 93))
    if plan.hard is not None:
        quality = plan.hard.jpeg_quality
    frame_conditions: dict[str, dict[str, dict]] = {"rgb": {}, "event": {}}
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, quality]
    stats = {"rgb": _counts(), "event": _counts()}
    coords: list[str] = []

    def label(folder: Path, stem: str, boxes: list, modality: str, skip: bool) -> None:
        stats[modality]["images"] += 1
        if skip:
            stats[modality]["unlabeled"] += 1
            return
        lines = [yolo_line(b, plan.size) + "\n" for b in boxes]
        (folder / f"{stem}.txt").write_text("".join(lines))
        stats[modality]["annotated"] += 1
        stats[modality]["boxes"] += len(lines)
        stats[modality]["empty"] += not lines

    for r in render_sequence(plan):
        if r.event is not None:
            name = plan.event_name(r.step)
            cv2.imwrite(str(dirs["Event/Frames"] / name), r.event)
            label(dirs["Event_YOLO"], Path(name).stem, r.event_boxes, "event", r.step in plan.unlabeled_event)
            if r.conditions is not None:
                frame_conditions["event"][Path(name).stem] = r.conditions
            t = round(r.step * 0.033333, 6)
            coords += [f"{t}: {float(b[0])}, {float(b[1])}, {float(b[2])}, {float(b[3])}, {tid}, "
                       f"{plan.models[tid - 1].name}\n" for tid, b in r.coord_boxes]
        if r.rgb is not None:
            slot = r.step - 1
            name = plan.rgb_name(slot)
            if slot in plan.removed:
                cv2.imwrite(str(dirs["Removed_frames"] / name), r.rgb_raw, jpeg)
                continue
            cv2.imwrite(str(dirs["RGB"] / name), r.rgb_raw, jpeg)
            cv2.imwrite(str(dirs["PADDED_RGB"] / name), r.rgb, jpeg)
            label(dirs["RGB_YOLO"], Path(name).stem, r.rgb_boxes, "rgb", slot in plan.unlabeled_rgb)
            if r.conditions is not None:
                frame_conditions["rgb"][Path(name).stem] = r.conditions
    (seq / "coordinates.txt").write_text("".join(coords))
    entry = {**stats, "removed": len(plan.removed), "condition": plan.condition, "background": plan.background,
             "drones": [m.name for m in plan.models], "event_naming": plan.frame_naming}
    if plan.hard is not None:
        entry.update(split="val" if plan.hard.val else "train", hard=asdict(plan.hard), frames=frame_conditions)
    return entry


def _prepare_out(out: Path, ids: list[int]) -> None:
    """Clear sequence folders of a previous generated tree; refuse to write over folders we did not make."""
    manifest = out / MANIFEST_NAME
    ours: set[str] = set()
    if manifest.is_file():
        try:
            ours = {str(i) for i in json.loads(manifest.read_text())["ids"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise FileExistsError(f"{manifest} is not a manifest of tools.synthetic ({exc}); "
                                  "remove it or choose another --out") from exc
    clash = [str(i) for i in ids if (out / str(i)).exists() and str(i) not in ours]
    if clash:
        raise FileExistsError(f"{out} already holds sequence folders {', '.join(clash)} that tools.synthetic did "
                              "not write; choose an empty --out")
    for name in sorted(ours):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    if manifest.is_file():
        manifest.unlink()


def generate_fred(out: str, sequences: int, frames: int, seed: int = 0, size: tuple[int, int] = (720, 1280),
                  ids: list[int] | None = None, workers: int = 1, profile: str = "default") -> dict:
    """Write a FRED-shaped tree; returns the ground truth manifest (also written to out/synthetic_manifest.json).

    size is (height, width); `frames` RGB frames are kept per sequence (a few more go to Removed_frames/, and
    the event camera has a few more frames); workers > 1 renders sequences in that many processes;
    profile "hard" draws FRED-hard scenes and records each frame's conditions in the manifest.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if frames < 4:
        raise ValueError(f"frames must be at least 4, got {frames}")
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise ValueError(f"size must be at least 32x32 (height, width), got {size}")
    if ids is None:
        ids = default_ids(sequences)
    elif len(ids) != sequences or len(set(ids)) != len(ids):
        raise ValueError(f"ids must hold {sequences} distinct sequence ids, got {ids}")
    ids = sorted(int(i) for i in ids)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    _prepare_out(root, ids)
    # claim the folders first, so that a run cut short can be cleared by the next one
    (root / MANIFEST_NAME).write_text(json.dumps({"generator": "tools.synthetic", "complete": False, "ids": ids}))
    plans = [plan_sequence(sid, i, frames, seed, (h, w), profile) for i, sid in enumerate(ids)]
    if workers > 1 and len(plans) > 1:
        with ProcessPoolExecutor(min(workers, len(plans))) as pool:
            entries = list(pool.map(_write_sequence, plans, [str(root)] * len(plans)))
    else:
        entries = [_write_sequence(p, str(root)) for p in plans]
    totals = {m: {key: sum(e[m][key] for e in entries) for key in _counts()} for m in ("rgb", "event")}
    manifest = {"generator": "tools.synthetic", "complete": True, "seed": seed, "size": [h, w], "frames": frames,
                "ids": ids, "sequences": {str(p.seq_id): e for p, e in zip(plans, entries)}, "totals": totals}
    if profile != "default":   # the default manifest stays as it was; readers take a missing profile as default
        manifest.update(profile=profile, calibration=HARD_CALIBRATION)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line: write a generated FRED tree and print a one-line summary."""
    ap = argparse.ArgumentParser(prog="python -m tools.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output root; sequence folders <id>/ are written inside")
    ap.add_argument("--sequences", type=int, help="number of sequences (default: the number of --ids)")
    ap.add_argument("--frames", type=int, required=True, help="RGB frames kept per sequence (event frames: a few more)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--ids", help="comma-separated sequence ids (default: a mix of canonical train and test ids)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default: up to 2)")
    ap.add_argument("--profile", choices=PROFILES, default="default",
                    help="hard: FRED-hard scenes (tiny drones, clutter, night/rain in val only, per-frame conditions)")
    args = ap.parse_args(argv)
    ids = [int(t) for t in args.ids.split(",") if t.strip()] if args.ids else None
    sequences = args.sequences if args.sequences is not None else (len(ids) if ids else None)
    if sequences is None:
        ap.error("give --sequences or --ids")
    t0 = time.perf_counter()
    try:
        m = generate_fred(args.out, sequences, args.frames, args.seed, (args.height, args.width), ids, args.workers,
                          args.profile)
    except (ValueError, FileExistsError) as exc:
        ap.error(str(exc))
    r, e = m["totals"]["rgb"], m["totals"]["event"]
    print(f"wrote {len(m['ids'])} sequences (ids {','.join(map(str, m['ids']))}) to {args.out} in "
          f"{time.perf_counter() - t0:.1f}s: rgb {r['images']} images, {r['boxes']} boxes, {r['empty']} empty, "
          f"{r['unlabeled']} unlabeled; event {e['images']} images, {e['boxes']} boxes, {e['empty']} empty, "
          f"{e['unlabeled']} unlabeled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
