"""COCOeval(bbox) three ways on the same detections: pycocotools, ours (evaluation/coco_arrays.py), faster-coco-eval.

    python bench/bench_coco_eval.py [--images 627 5000 20000] [--models trained untrained] [--repeats 3]
    python bench/bench_coco_eval.py --quick          # 627 images, one repeat

Generated ground truth as evaluate() builds it (coco_ground_truth: 1280x720 frames, 0-3 drone boxes each, one
class) and two detection sets as evaluate() returns them ([N, 7] rows at conf 0.001, at most 300 per image, boxes
rounded to 3 decimals and scores to 5): "trained" (most boxes found, tightly; a few duplicates; ~20 low-score false
positives per image) and "untrained" (300 per image: loose boxes around each drone, the rest anywhere, low scores).
Each path starts from the same ground-truth dict and rows, and its time includes what it needs from them:
  pycocotools  COCO + loadRes(rows) + COCOeval evaluate/accumulate/summarize
  ours         match_results + accumulate + summarize (evaluator.coco_eval's body; its 12 stats and recall too)
  faster       faster_coco_eval COCO + loadRes(rows) + COCOeval_faster evaluate/accumulate/summarize
(loadRes of the [N, 7] array takes as long as building results dicts and loading those, in both libraries.)
"COCOeval alone": the same time less COCO and loadRes (the conversion from our arrays).
All three must give the same 12 stats and the same precision and recall arrays: the largest difference to
pycocotools is printed, and the exit status is 1 where one exceeds 1e-12 (ours: where it is not 0).
Timings: median of --repeats, the three paths interleaved in each repeat (a shared machine's load hits all three).
"""
import argparse
import contextlib
import importlib.util
import io
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The two project modules measured (the only project imports: change here if they move).
from evaluation import coco_arrays, evaluator  # noqa: E402

WIDTH, HEIGHT = 1280, 720
MAX_DET = 300
TOLERANCE = {"pycocotools": 0.0, "ours": 0.0, "faster": 1e-12}  # largest difference to pycocotools accepted


def ground_truth(n_images: int, rng: np.random.Generator) -> tuple[dict, list[np.ndarray]]:
    """(COCO ground truth as evaluate() builds it, per-image [n, 4] pixel boxes x, y, w, h) of n_images frames."""
    frames, pixel_boxes = [], []
    for i in range(n_images):
        n = int(rng.integers(0, 4))
        w = np.clip(rng.lognormal(np.log(40), 0.8, n), 6, 400)  # drones: mostly small and medium, some large
        h = np.clip(w * rng.uniform(0.5, 1.0, n), 4, 300)
        x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
        boxes = np.stack([np.zeros(n), (x + w / 2) / WIDTH, (y + h / 2) / HEIGHT, w / WIDTH, h / HEIGHT], 1)
        frames.append(SimpleNamespace(image=f"{i}.png", boxes=boxes))
        pixel_boxes.append(np.stack([x, y, w, h], 1))
    gt = evaluator.coco_ground_truth(frames, [(HEIGHT, WIDTH)] * n_images, ["drone"])
    return gt, pixel_boxes


def _random_boxes(n: int, rng: np.random.Generator) -> np.ndarray:
    """n drone-sized boxes x, y, w, h anywhere in the frame."""
    w = np.clip(rng.lognormal(np.log(30), 1.0, n), 2, 500)
    h = np.clip(w * rng.uniform(0.4, 1.2, n), 2, 400)
    return np.stack([rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h], 1)


def _jittered(boxes: np.ndarray, copies: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """copies of each box x, y, w, h moved and resized by sigma of its size (normal)."""
    b = np.repeat(boxes, copies, axis=0)
    j = rng.normal(0, sigma, b.shape)
    wh = b[:, 2:] * np.exp(j[:, 2:])
    return np.concatenate([b[:, :2] + j[:, :2] * b[:, 2:], wh], 1)


def detections(pixel_boxes: list[np.ndarray], model: str, rng: np.random.Generator) -> np.ndarray:
    """evaluate()'s results rows [N, 7] image_id, x, y, w, h, score, category_id of a 'trained' or 'untrained' model."""
    per_image = []
    for i, gt_boxes in enumerate(pixel_boxes):
        if model == "trained":
            found = gt_boxes[rng.random(len(gt_boxes)) < 0.95]
            dup = found[rng.random(len(found)) < 0.3]
            boxes = [_jittered(found, 1, 0.04, rng), _jittered(dup, 1, 0.15, rng),
                     _random_boxes(min(int(rng.poisson(20)), MAX_DET), rng)]
            scores = [rng.beta(8, 2, len(found)), rng.beta(2, 8, len(dup)),
                      0.001 + rng.exponential(0.03, len(boxes[2]))]
        else:
            near = _jittered(gt_boxes, 30, 0.3, rng)
            boxes = [near, _random_boxes(MAX_DET - len(near), rng)]
            scores = [rng.beta(2, 12, len(near)), rng.beta(1, 40, len(boxes[1]))]
        b, s = np.concatenate(boxes)[:MAX_DET], np.concatenate(scores)[:MAX_DET]
        per_image.append(np.column_stack([np.full(len(b), i), b, np.clip(s, 0.001, 1.0), np.ones(len(b))]))
    rows = np.concatenate(per_image)
    rows[:, 1:5] = np.round(rows[:, 1:5], 3)  # as evaluator._batch_results rounds them
    rows[:, 5] = np.round(rows[:, 5], 5)
    return rows


def _gt_copy(gt: dict) -> dict:
    """gt with its annotation dicts copied: both COCOevals write an "ignore" key into the ground truth's dicts."""
    return {**gt, "annotations": [dict(a) for a in gt["annotations"]]}


def run_pycocotools(gt: dict, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(stats [12], precision, recall, seconds of COCOeval alone) of plain pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = _gt_copy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(rows)
        start = time.perf_counter()
        e = COCOeval(coco_gt, coco_dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats), e.eval["precision"], e.eval["recall"], time.perf_counter() - start


def run_ours(gt: dict, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(stats [12], precision, recall, seconds) of evaluation/coco_arrays.py, as evaluator.coco_eval runs it."""
    start = time.perf_counter()
    matches = coco_arrays.match_results(gt, rows)
    precision, recall = coco_arrays.accumulate(matches, [im["id"] for im in gt["images"]],
                                               [c["id"] for c in gt["categories"]])
    return coco_arrays.summarize(precision, recall), precision, recall, time.perf_counter() - start


def run_faster(gt: dict, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(stats [12], precision, recall, seconds of COCOeval alone) of faster-coco-eval's COCOeval (C++ matching)."""
    from faster_coco_eval import COCO, COCOeval_faster

    def silent(*_):
        """Swallow faster-coco-eval's progress lines."""

    coco_gt = COCO(_gt_copy(gt), print_function=silent)
    coco_dt = coco_gt.loadRes(rows)
    start = time.perf_counter()
    e = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=silent)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return np.asarray(e.stats), e.eval["precision"], e.eval["recall"], time.perf_counter() - start


PATHS = {"pycocotools": run_pycocotools, "ours": run_ours, "faster": run_faster}


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    """0.0 when equal bit for bit, else the largest absolute difference (inf for another shape)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return 0.0 if np.array_equal(a, b) else float(np.abs(a - b).max())


def bench_case(n_images: int, model: str, repeats: int, seed: int, max_detections: int) -> dict:
    """Times and differences to pycocotools of the three paths on one generated case (no times: too many detections)."""
    rng = np.random.default_rng(seed)
    gt, pixel_boxes = ground_truth(n_images, rng)
    rows = detections(pixel_boxes, model, rng)
    if len(rows) > max_detections:
        return {"images": n_images, "model": model, "dets": len(rows), "gt": len(gt["annotations"])}
    times = {name: [] for name in PATHS}
    core = {name: [] for name in PATHS}
    results = {}
    for _ in range(repeats):
        for name, path in PATHS.items():
            start = time.perf_counter()
            *results[name], core_seconds = path(gt, rows)
            times[name].append(time.perf_counter() - start)
            core[name].append(core_seconds)
    ref = results["pycocotools"]
    diffs = {name: max(_difference(x, y) for x, y in zip(results[name], ref)) for name in PATHS}
    assert np.array_equal(evaluator.coco_eval(gt, rows)[1], results["ours"][1])  # coco_eval is run_ours
    return {"images": n_images, "model": model, "dets": len(rows), "gt": len(gt["annotations"]),
            "mAP50_95": float(ref[0][0]), "seconds": {k: statistics.median(v) for k, v in times.items()},
            "core": {k: statistics.median(v) for k, v in core.items()}, "diffs": diffs}


def main() -> None:
    """Run the cases, print one table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[627, 5000, 20000])
    parser.add_argument("--models", nargs="+", default=["trained", "untrained"], choices=["trained", "untrained"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-detections", type=int, default=2_000_000,
                        help="skip larger cases: pycocotools and faster-coco-eval hold ~1.8 kB per detection")
    parser.add_argument("--quick", action="store_true", help="627 images, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = [627], 1
    if importlib.util.find_spec("faster_coco_eval") is None:
        sys.exit("bench_coco_eval.py: needs faster-coco-eval, which the project does not depend on: "
                 "pip install faster-coco-eval")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs; pycocotools {version('pycocotools')}, "
          f"faster-coco-eval {version('faster-coco-eval')}, "
          f"numpy {np.__version__}; median of {args.repeats}")
    print("| images | model | GT boxes | detections | mAP50:95 | pycocotools s (COCOeval alone) | ours s "
          "| faster s (COCOeval alone) | pycocotools/ours | faster/ours | max diff to pycocotools: ours, faster |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    unequal = []
    for n_images in args.images:
        for model in args.models:
            r = bench_case(n_images, model, args.repeats, args.seed, args.max_detections)
            if "seconds" not in r:
                print(f"| {n_images:,} | {model} | {r['gt']:,} | {r['dets']:,} | skipped: over --max-detections "
                      f"{args.max_detections:,} |", flush=True)
                continue
            s, c, d = r["seconds"], r["core"], r["diffs"]
            print(f"| {n_images:,} | {model} | {r['gt']:,} | {r['dets']:,} | {r['mAP50_95']:.4f} "
                  f"| {s['pycocotools']:.3f} ({c['pycocotools']:.3f}) | {s['ours']:.3f} "
                  f"| {s['faster']:.3f} ({c['faster']:.3f}) "
                  f"| {s['pycocotools'] / s['ours']:.1f}x | {s['faster'] / s['ours']:.2f}x "
                  f"| {d['ours']:.3g}, {d['faster']:.3g} |", flush=True)
            unequal += [f"{name} on {n_images} images, {model}: {d[name]:.3g}"
                        for name in PATHS if d[name] > TOLERANCE[name]]
    if unequal:
        sys.exit("bench_coco_eval.py: not equal to pycocotools: " + "; ".join(unequal))


if __name__ == "__main__":
    main()
