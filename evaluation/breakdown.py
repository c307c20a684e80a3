"""mAP broken down over subsets of the evaluated images: per recorded condition and per sequence.

A subset's numbers are pycocotools' COCOeval(bbox) with params.imgIds set to the subset: the detections are matched
once (evaluation/coco_arrays.py; matching is per image, so it is the same for every subset) and accumulated per
subset. Detections and boxes on images outside a subset do not count for it.

Conditions per frame come from
- the generator's manifest (`<data root>/synthetic_manifest.json` of `python -m tools.synthetic --profile hard`):
  per sequence, "frames" -> modality -> frame stem -> {night, rain, hovering, size, occluded}, plus what holds
  for the whole sequence (sequence_conditions: its "background", and "clutter" for one other than open sky);
- or a JSON file of the user's, {frame stem: {condition: value}} (eval_fred.py --conditions FILE).
Real FRED records none, so it is broken down per sequence only. A condition whose value is true puts a frame in the
subset "<condition>" (night, rain, hovering, occluded); a text value v puts it in "<condition>=<v>" (size=tiny);
other values (false, null, numbers) put it in none. Subsets without scored images are left out; a subset without
ground-truth boxes has mAP -1 (undefined), as in pycocotools.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Hashable, Mapping, Sequence, TypeVar

import numpy as np

from evaluation.coco_arrays import accumulate, match_results, summarize
from tools.synthetic import CLUTTERED_BACKGROUNDS, MANIFEST_NAME, SIZE_BUCKETS

Key = TypeVar("Key", bound=Hashable)
# text values in this order first (the generator's size buckets, then "none": no drone in view); others sorted after
_VALUE_ORDER = [name for name, _ in SIZE_BUCKETS] + ["none"]


def subset_metrics(gt: dict, rows: np.ndarray, subsets: Mapping[Key, Sequence[int]]) -> dict[Key, dict]:
    """{name: {mAP50, mAP50_95, AP_small, images, boxes}} of each subset of gt's image ids; rows: results float64
    [N, 7] image_id, x, y, w, h, score, category_id. Numbers equal COCOeval's with params.imgIds = the subset."""
    matches = match_results(gt, rows)
    categories = [c["id"] for c in gt["categories"]]
    boxes_per_image: dict[int, int] = {}
    for a in gt["annotations"]:
        boxes_per_image[int(a["image_id"])] = boxes_per_image.get(int(a["image_id"]), 0) + 1
    out = {}
    for name, ids in subsets.items():
        stats = summarize(*accumulate(matches, ids, categories))
        out[name] = {"mAP50": float(stats[1]), "mAP50_95": float(stats[0]), "AP_small": float(stats[3]),
                     "images": len(set(ids)), "boxes": sum(boxes_per_image.get(int(i), 0) for i in set(ids))}
    return out


def sequence_subsets(gt: dict, frames: Sequence) -> dict[str, list[int]]:
    """{sequence: image ids} of gt's images (image id = position in frames), sequences in order of appearance."""
    out: dict[str, list[int]] = {}
    for image in gt["images"]:
        out.setdefault(str(frames[image["id"]].sequence), []).append(int(image["id"]))
    return out


def condition_subsets(gt: dict, conditions: Sequence[dict | None]) -> dict[str, list[int]]:
    """{subset name: image ids} of gt's images by their conditions (conditions[image id]; None = unknown): "night"
    for night true, "size=tiny" for size "tiny"; conditions in the order of their keys, text values in bucket order."""
    members: dict[str, dict[object, list[int]]] = {}
    for image in gt["images"]:
        for key, value in (conditions[image["id"]] or {}).items():
            by_value = members.setdefault(key, {})
            if value is True or isinstance(value, str):
                by_value.setdefault(value, []).append(int(image["id"]))
    out = {}
    for key, by_value in members.items():
        for value in sorted(by_value, key=_value_rank):
            out[key if value is True else f"{key}={value}"] = by_value[value]
    return out


def breakdown(gt: dict, rows: np.ndarray, frames: Sequence | None, conditions: Sequence[dict | None] | None = None
              ) -> dict[str, dict[str, dict]]:
    """{"per_sequence": subset_metrics by sequence (when frames, the evaluated frames, are given), "per_condition":
    by condition (when conditions are)} of one evaluation (gt and rows as evaluator.evaluate returns them)."""
    groups = {}
    if frames is not None:
        groups["per_sequence"] = sequence_subsets(gt, frames)
    if conditions is not None:
        groups["per_condition"] = condition_subsets(gt, conditions)
    if not groups:
        return {}
    flat = subset_metrics(gt, rows, {(group, name): ids for group, subsets in groups.items()
                                     for name, ids in subsets.items()})  # matched once for all subsets
    return {group: {name: flat[(group, name)] for name in subsets} for group, subsets in groups.items()}


def _value_rank(value: object) -> tuple:
    """Sort key of a condition value: true first, then the generator's size buckets, then other text."""
    if value is True:
        return (0, 0, "")
    text = str(value)
    return (1, _VALUE_ORDER.index(text), "") if text in _VALUE_ORDER else (2, 0, text)


def _read_json(path: str, what: str) -> object:
    """JSON of a file; ValueError naming the file and what it should be."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: pass {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} cannot be read as JSON ({e}): it should be {what}") from None


def load_conditions(frames: Sequence, data_root: str, modality: str, path: str | None = None
                    ) -> list[dict | None] | None:
    """Per frame its conditions dict (None where not recorded), from the file at path ({frame stem: {condition:
    value}}; a fused frame is keyed by its event frame) when given, else from data_root's generator manifest; None
    when neither records any."""
    stems = [Path(getattr(f, "event_image", "") or f.image).stem for f in frames]  # fused: the labelled event frame
    modality = "event" if modality == "fusion" else modality
    if path:
        what = "a JSON object {frame stem: {condition: value}}, e.g. {\"Video_3_33333\": {\"night\": true}}"
        table = _read_json(path, what)
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise ValueError(f"{path}: expected {what}")
        found = [table.get(stem) for stem in stems]
        if not any(c is not None for c in found):
            raise ValueError(f"{path}: no frame of the evaluated set is in it (its frame stems look like "
                             f"{next(iter(table), '-')!r}, the frames' like {stems[0] if stems else '-'!r}): key it by "
                             "image file name without extension")
        return found
    manifest_path = os.path.join(data_root, MANIFEST_NAME)
    if not os.path.isfile(manifest_path):
        return None
    manifest = _read_json(manifest_path, "the manifest tools.synthetic writes (generate the set again)")
    sequences = manifest.get("sequences") if isinstance(manifest, dict) else None
    if not isinstance(sequences, dict):
        return None
    found = []
    for f, stem in zip(frames, stems):
        entry = sequences.get(str(f.sequence)) or {}
        frame = (entry.get("frames") or {}).get(modality, {}).get(stem)
        found.append(None if frame is None else {**frame, **sequence_conditions(entry)})
    return found if any(c is not None for c in found) else None


def sequence_conditions(entry: Mapping) -> dict:
    """Conditions of every frame of a generated sequence, from its manifest entry: "background" (its kind) and
    "clutter" (a background of tools.synthetic.CLUTTERED_BACKGROUNDS); {} when the entry records no background."""
    background = entry.get("background")
    if not isinstance(background, str):
        return {}
    return {"clutter": background in CLUTTERED_BACKGROUNDS, "background": background}


def format_breakdown(title: str, metrics: Mapping[str, dict]) -> str:
    """A text table: one row per subset (title names the first column), mAP50, mAP50:95, AP_small, images, boxes."""
    width = max(10, len(title), *(len(name) for name in metrics))
    lines = [f"{title:<{width}}  {'mAP50':>7}  {'mAP50:95':>8}  {'AP_small':>8}  {'images':>6}  {'boxes':>6}"]
    for name, m in metrics.items():
        lines.append(f"{name:<{width}}  {m['mAP50']:7.4f}  {m['mAP50_95']:8.4f}  {m['AP_small']:8.4f}  "
                     f"{m['images']:6d}  {m['boxes']:6d}")
    return "\n".join(lines)
