"""COCOeval(bbox) of results held in arrays: pycocotools' evaluate() and accumulate(), vectorized, same numbers.

pycocotools' COCOeval builds a dict per detection and matches detections to ground truth in Python, one image, area
range, IoU threshold, detection and box at a time. Here the same greedy matching runs for all images, area ranges and
thresholds at once (one step per detection rank, over the detections that overlap a box at all), the IoUs come from
pycocotools' own maskUtils.iou, accumulate()'s precision envelope is a reversed running maximum, and summarize() is
pycocotools' own. For COCOeval's default bbox parameters every number equals pycocotools' (tests/test_evaluator.py
compares precision arrays with plain pycocotools).

Kept rather than faster-coco-eval (1.8.0, C++ COCOeval, equal to 1 ulp): from our rows it still builds a dict per
detection (loadRes) and computes IoUs per image in Python. bench/bench_coco_eval.py, 2-core CPU, 5,000 images:
0.39 s here, 1.5 s faster-coco-eval, 5.3 s pycocotools (109k detections); 1.9 / 14 / 30 s (1.5M detections).

Results rows are loadRes' array form: float64 [N, 7] image_id, x, y, w, h, score, category_id (original pixels).
"""
from __future__ import annotations

import contextlib
import io
from typing import NamedTuple, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval, Params


def results_dicts_to_array(detections: Sequence[dict]) -> np.ndarray:
    """COCO results dicts -> float64 [N, 7] image_id, x, y, w, h, score, category_id."""
    rows = np.empty((len(detections), 7), dtype=np.float64)
    for row, d in zip(rows, detections):
        row[0], row[1:5], row[5], row[6] = d["image_id"], d["bbox"], d["score"], d["category_id"]
    return rows


def results_array_to_dicts(rows: np.ndarray) -> list[dict]:
    """float64 [N, 7] image_id, x, y, w, h, score, category_id -> COCO results dicts (ids as int)."""
    ids = rows[:, [0, 6]].astype(np.int64).tolist()
    return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
            for (i, c), b, s in zip(ids, rows[:, 1:5].tolist(), rows[:, 5].tolist())]


class Matches(NamedTuple):
    """What accumulate() needs of COCOeval.evaluate(): per scored detection and per ground-truth box.

    Detections are those COCOeval scores: per (image, category) the maxDets[-1] best (stable score order)."""

    image: np.ndarray  # int64 [N] detection image ids
    category: np.ndarray  # int64 [N] detection category ids
    score: np.ndarray  # float64 [N]
    rank: np.ndarray  # int64 [N] place in its (image, category) by score, 0 = best
    matched: np.ndarray  # bool [A, T, N] matched to a box at area range a, IoU threshold t
    ignored: np.ndarray  # bool [A, T, N] COCOeval's dtIgnore
    gt_image: np.ndarray  # int64 [G] box image ids
    gt_category: np.ndarray  # int64 [G]
    gt_ignored: np.ndarray  # bool [A, G] COCOeval's gtIgnore (crowd or area outside the range)


def bbox_params() -> Params:
    """COCOeval's default bbox parameters (iouThrs, recThrs, maxDets, areaRng)."""
    return COCOeval(iouType="bbox").params


def _ground_truth_arrays(gt: dict, cat_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """(image, category, xywh [G, 4], area, crowd) of gt's annotations on its images and categories, list order."""
    image_ids = {int(im["id"]) for im in gt["images"]}
    anns = [a for a in gt["annotations"] if int(a["image_id"]) in image_ids and int(a["category_id"]) in cat_ids]
    image = np.array([int(a["image_id"]) for a in anns], dtype=np.int64)
    category = np.array([int(a["category_id"]) for a in anns], dtype=np.int64)
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    area = np.array([a["area"] for a in anns], dtype=np.float64)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    return image, category, boxes, area, crowd


def _out_of_range(area: np.ndarray, area_ranges: np.ndarray) -> np.ndarray:
    """bool [A, N]: area outside each [lo, hi] range (COCOeval's test)."""
    return (area[None] < area_ranges[:, :1]) | (area[None] > area_ranges[:, 1:])


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Start of each run of equal rows in sorted int64 keys [N, 2]."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, (np.diff(keys, axis=0) != 0).any(1)])


def match_results(gt: dict, rows: np.ndarray, params: Params | None = None) -> Matches:
    """COCOeval.evaluate(bbox) of results rows [N, 7] against COCO dataset dict gt, as Matches.

    Raises ValueError for results on images gt does not hold (pycocotools' loadRes refuses them)."""
    p = params or bbox_params()
    cat_ids = np.unique([int(c["id"]) for c in gt["categories"]])
    image_ids = np.unique([int(im["id"]) for im in gt["images"]])
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    if not np.isin(rows[:, 0], image_ids).all():
        raise ValueError("results hold image ids that the ground truth does not: they do not belong to this set")
    rows = rows[np.isin(rows[:, 6], cat_ids)]
    img, cat, score = rows[:, 0].astype(np.int64), rows[:, 6].astype(np.int64), rows[:, 5]
    # per (image, category) by score, stable (pycocotools' mergesort), the maxDets[-1] best
    order = np.lexsort((np.arange(len(rows)), -score, cat, img))
    starts = _group_starts(np.stack([img[order], cat[order]], 1))
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = rank < max(p.maxDets)
    order, rank = order[keep], rank[keep]
    img, cat, score, boxes = img[order], cat[order], score[order], rows[order, 1:5]
    area_ranges = np.asarray(p.areaRng, dtype=np.float64)
    thresholds = np.minimum(np.asarray(p.iouThrs, dtype=np.float64), 1 - 1e-10)
    n_areas, n_thr = len(area_ranges), len(thresholds)

    gt_img, gt_cat, gt_boxes, gt_area, gt_crowd = _ground_truth_arrays(gt, cat_ids)
    gt_order = np.lexsort((np.arange(len(gt_img)), gt_cat, gt_img))  # by group, list order inside
    gt_img, gt_cat, gt_boxes, gt_area, gt_crowd = (a[gt_order] for a in (gt_img, gt_cat, gt_boxes, gt_area, gt_crowd))
    gt_ignored = gt_crowd[None] | _out_of_range(gt_area, area_ranges)  # [A, G]

    # IoU of each group's detections with its boxes; groups with a detection overlapping a box at all take part
    det_key, gt_key = np.stack([img, cat], 1), np.stack([gt_img, gt_cat], 1)
    det_starts, gt_starts = _group_starts(det_key), _group_starts(gt_key)
    det_ends, gt_ends = np.r_[det_starts[1:], len(img)], np.r_[gt_starts[1:], len(gt_img)]
    gt_group = {tuple(gt_key[s]): (s, e) for s, e in zip(gt_starts.tolist(), gt_ends.tolist())}
    groups = []  # (candidate detection positions, ious [C, g], first box position, boxes)
    for s, e in zip(det_starts.tolist(), det_ends.tolist()):
        span = gt_group.get(tuple(det_key[s]))
        if span is None:
            continue
        ious = np.asarray(mask_utils.iou(boxes[s:e], gt_boxes[span[0]:span[1]],
                                         gt_crowd[span[0]:span[1]].astype(np.uint8).tolist()))
        candidates = np.flatnonzero(ious.max(1) >= thresholds.min())
        if len(candidates):
            groups.append((s + candidates, ious[candidates], span[0], span[1] - span[0]))

    matched = np.zeros((n_areas, n_thr, len(img)), dtype=bool)
    match_ignored = np.zeros((n_areas, n_thr, len(img)), dtype=bool)
    if groups:
        n_c, n_g = max(len(g[0]) for g in groups), max(g[3] for g in groups)
        ious = np.full((len(groups), n_c, n_g), -1.0)
        det_pos = np.full((len(groups), n_c), -1, dtype=np.int64)
        box_pos = np.zeros((len(groups), n_g), dtype=np.int64)
        valid_box = np.zeros((len(groups), n_g), dtype=bool)
        for q, (pos, iou, first, count) in enumerate(groups):
            ious[q, :len(pos), :count], det_pos[q, :len(pos)] = iou, pos
            box_pos[q, :count], valid_box[q, :count] = first + np.arange(count), True
        box_ignored = gt_ignored[:, box_pos].transpose(1, 0, 2)  # [Q, A, g]
        box_crowd = gt_crowd[box_pos] & valid_box  # [Q, g]
        taken = np.zeros((len(groups), n_areas, n_thr, n_g), dtype=bool)
        for c in range(n_c):  # COCOeval's greedy matching, detection by detection in score order
            v = ious[:, c][:, None, None, :]  # [Q, 1, 1, g]
            eligible = (v >= thresholds[None, :, None]) & (~taken | box_crowd[:, None, None, :])
            best = np.full(taken.shape[:3], -1, dtype=np.int64)
            for want_ignored in (True, False):  # a regular box wins over an ignored one; then the best IoU, last
                pool = eligible & (box_ignored[:, :, None, :] == want_ignored)
                last_max = n_g - 1 - np.argmax(np.where(pool, v, -1.0)[..., ::-1], axis=-1)
                best = np.where(pool.any(-1), last_max, best)
            q, a, t = np.nonzero(best >= 0)
            b = best[q, a, t]
            taken[q, a, t, b] = True
            pos = det_pos[q, c]
            matched[a, t, pos] = True
            match_ignored[a, t, pos] = box_ignored[q, a, b]
    det_out = _out_of_range(boxes[:, 2] * boxes[:, 3], area_ranges)  # loadRes' area: w * h
    ignored = match_ignored | (~matched & det_out[:, None, :])
    return Matches(img, cat, score, rank, matched, ignored, gt_img, gt_cat, gt_ignored)


def accumulate(matches: Matches, image_ids: Sequence[int], cat_ids: Sequence[int], params: Params | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate() over image_ids: (precision [T, R, K, A, M], recall [T, K, A, M]); -1 = undefined."""
    p = params or bbox_params()
    rec_thrs = np.asarray(p.recThrs, dtype=np.float64)
    max_dets = sorted(p.maxDets)
    cat_ids = sorted(int(c) for c in cat_ids)
    n_thr, n_rec, n_areas = len(p.iouThrs), len(rec_thrs), len(p.areaRng)
    precision = -np.ones((n_thr, n_rec, len(cat_ids), n_areas, len(max_dets)))
    recall = -np.ones((n_thr, len(cat_ids), n_areas, len(max_dets)))
    image_ids = np.unique(np.asarray(list(image_ids), dtype=np.int64))
    in_set, gt_in_set = np.isin(matches.image, image_ids), np.isin(matches.gt_image, image_ids)
    for k, cat in enumerate(cat_ids):
        dets = np.flatnonzero(in_set & (matches.category == cat))
        dets = dets[np.lexsort((matches.rank[dets], matches.image[dets]))]  # COCOeval's image order, then rank
        gts = gt_in_set & (matches.gt_category == cat)
        for m, max_det in enumerate(max_dets):
            sel = dets[matches.rank[dets] < max_det]
            sel = sel[np.argsort(-matches.score[sel], kind="mergesort")]
            for a in range(n_areas):
                npig = np.count_nonzero(~matches.gt_ignored[a, gts])
                if npig == 0:
                    continue
                dtm, dt_ig = matches.matched[a][:, sel], matches.ignored[a][:, sel]  # [T, D]
                tp_sum = np.cumsum(dtm & ~dt_ig, axis=1).astype(dtype=float)
                fp_sum = np.cumsum(~dtm & ~dt_ig, axis=1).astype(dtype=float)
                rc = tp_sum / npig
                pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # the precision envelope
                recall[:, k, a, m] = rc[:, -1] if len(sel) else 0
                if len(sel) == 0:
                    precision[:, :, k, a, m] = 0.0
                    continue
                for t in range(n_thr):  # precision at each recall threshold, 0 beyond the last recall reached
                    inds = np.searchsorted(rc[t], rec_thrs, side="left")
                    precision[t, :, k, a, m] = np.where(inds < len(sel), pr[t][np.minimum(inds, len(sel) - 1)], 0.0)
    return precision, recall


def summarize(precision: np.ndarray, recall: np.ndarray, params: Params | None = None) -> np.ndarray:
    """COCOeval.summarize()'s 12 stats of accumulate()'s arrays (pycocotools' own code, prints silenced)."""
    cocoeval = COCOeval(iouType="bbox")
    if params is not None:
        cocoeval.params = params
    cocoeval.eval = {"params": cocoeval.params, "precision": precision, "recall": recall}
    with contextlib.redirect_stdout(io.StringIO()):
        cocoeval.summarize()
    return cocoeval.stats
