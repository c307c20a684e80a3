"""Prediction speed (issue 19, "Measured"): predict_fred.py against Ultralytics' predict on one video, same weights.

One command writes (or reuses) a 1280x720 test video (--frames frames drawn here: a textured sky with a few small
moving drone-like blobs, cv2.VideoWriter mp4v), then per phi (--phis):
  weights  Ultralytics' YOLO("yolov8<phi>.yaml") from random init (torch seed --seed, 80 classes), saved with
           YOLO.save (which stores fp16 weights) and converted to ours with nets.convert.convert_file, so both run
           the same numbers; sanity check printed and recorded: the two networks' raw outputs (boxes and scores,
           fp32 on the CPU) on the video's first frame letterboxed to --imgsz agree within 1e-4 relative.
  then per batch (--batches), each in its own process, one at a time, input long side --imgsz (720p -> 640x384 on
  both sides: rectangular letterbox), fp16 on CUDA, same --conf / --iou / --max_det:
  ours     python predict_fred.py --weights ours.pth --source video --batch B, once per --outputs entry:
           "video" (--save_video: annotated.mp4) and "none" (--save_json: detections.json, the lightest output
           predict_fred.py has); its last JSON line gives fps (end to end, first frame decoded to last written,
           model warmup included: it has none) and model_fps (device copy, network, NMS).
  ultra    YOLO(pt).predict(source=video, stream=True, imgsz, half, batch=B, save=video|none, conf, iou, max_det,
           verbose=False) in a child process (this file with --ultra_worker): e2e fps = frames / (last result -
           start of its first batch, after its model warmup; so it leaves out Ultralytics' warmup, which ours pays);
           model fps from its own per-frame speed dict: frames / sum(inference + postprocess) (network + NMS +
           Results; preprocessing, which holds its device copy, is left out).
  onnx     export_fred.py --weights ours.pth --imgsz H W --dynamic, then predict_fred.py --weights x.onnx
           --device cpu --batch B --save_json (onnxruntime, CPU); and --device cuda when onnxruntime has the CUDA
           provider (onnxruntime-gpu). A file written but outside export_fred.py's 1e-4 check (exit 1: random
           weights score ~1e-4 everywhere, so the scores' relative difference is large) is still timed; the
           check's max_rel_diff is in the JSON.
Table: phi, batch, ours e2e fps (video out), ours e2e fps (no video), ours model fps, Ultralytics e2e fps (both),
Ultralytics model fps, e2e ratios, ONNX CPU (and CUDA) fps. The issue's target, end to end >= 1.5x Ultralytics on
the GPU, is printed as met / NOT met per row (nothing asserted). JSON at --out, rewritten after each step; the run
folder (--runs_dir, default bench/out/<out stem>_runs/: video, weights, ONNX files, logs) is kept out of --out's
folder; its logs are copied to <out folder>/<out stem>_logs/ at the end.
Random weights find (almost) nothing at conf 0.25, so the drawing and NMS costs are those of an empty sky; both
sides' detection counts are recorded (they should agree).

GPU, one 10-minute device call (expected 5-7 minutes on an H100: video ~10 s, per phi export ~15 s, per phi and
batch ~60-80 s of which ONNX on the CPU is 10-30 s). The wheels to carry: ultralytics 8.4.190, ultralytics-thop,
ultralytics-platform, polars, polars-runtime-32, pycocotools (all in /work/main/.whl), onnx and onnxruntime (NOT
there: add onnx 1.23.2 and onnxruntime 1.32.0, cp312 manylinux x86_64, to .whl; onnx needs protobuf and ml_dtypes,
onnxruntime flatbuffers, protobuf and packaging, if the device image lacks them). Carry .whl; command (one line):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
        YOLO_OFFLINE=1 && python bench/bench_predict.py --timeout 240 --out $OUT/bench_predict.json
Without onnx / onnxruntime add --skip onnx (the rest runs; a failed export alone only leaves the ONNX columns
empty and makes the exit status 1). Defaults: --phis n,s --batches 1,32 --imgsz 640
--frames 600 --outputs video,none.
CPU smoke test (phi n, 64 frames at 320x180, input 320, batch 1 and 4; about 2 minutes on 2 cores):
    YOLO_OFFLINE=1 python bench/bench_predict.py --quick
Exit status: 0, or 1 when a run failed (its log is named in the table's notes and the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ultra_ref import (copy_logs, exit_on_sigterm, final_json_line, log_tail, print_table,  # noqa: E402
                             run_logged, ultra_device, work_dir)

TARGET = 1.5  # issue 19: ours end to end >= 1.5x Ultralytics' on the GPU
OUTPUTS = ("video", "none")
EQUAL_REL = 1e-4  # raw outputs of the two networks: largest relative difference accepted by the sanity check


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line; --quick replaces the sizes by a CPU smoke-test set (options given explicitly are kept)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phis", default="n,s", help="model sizes, comma separated")
    p.add_argument("--batches", default="1,32", help="batch sizes, comma separated")
    p.add_argument("--imgsz", type=int, default=640, help="input long side of both predictors")
    p.add_argument("--frames", type=int, default=600, help="frames of the test video")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--outputs", default="video,none", help="video (annotated video written) and/or none")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--max_det", type=int, default=300)
    p.add_argument("--skip", default="", help="any of ours, ultralytics, onnx (comma separated): leave them out")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:N (default: cuda if available); ONNX runs on the "
                   "CPU whatever this is (and on CUDA too with onnxruntime-gpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=0, help="seconds per child process (0 = none)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "bench_predict.json"))
    p.add_argument("--runs_dir", default="", help="video, weights, logs (default bench/out/<out stem>_runs)")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: phi n, 64 frames at 320x180, input 320, "
                   "batch 1 and 4")
    p.add_argument("--ultra_worker", default="", help=argparse.SUPPRESS)  # JSON parameters: the child process
    a = p.parse_args(argv)
    if a.quick:
        for key, value in dict(phis="n", batches="1,4", imgsz=320, frames=64, width=320, height=180,
                               device="cpu").items():
            if getattr(a, key) == p.get_default(key):
                setattr(a, key, value)
    if not a.device and not a.ultra_worker:
        import torch
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    a.phi_list = [x.strip() for x in a.phis.split(",") if x.strip()]
    a.batch_list = [int(x) for x in a.batches.split(",") if x.strip()]
    a.output_list = [x.strip() for x in a.outputs.split(",") if x.strip()]
    bad = [x for x in a.output_list if x not in OUTPUTS]
    if bad:
        p.error(f"--outputs takes {' and/or '.join(OUTPUTS)}, got {', '.join(bad)}")
    return a


# --------------------------------------------------------------------------------------------- inputs


def write_video(path: Path, frames: int, size: tuple[int, int], seed: int) -> float:
    """Write (or reuse, when its frame count and size match) an mp4 test video of frames at size (h, w): a smooth
    textured sky with a few dark blobs moving across it; returns the seconds spent writing (0 when reused)."""
    import cv2
    import numpy as np

    h, w = size
    cap = cv2.VideoCapture(str(path))
    got = (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
           int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))) if cap.isOpened() else None
    cap.release()
    if got == (frames, h, w):
        return 0.0
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (max(2, h // 40), max(2, w // 40), 3)).astype(np.float32)
    sky = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    base = np.clip(150 + 60 * sky + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    blobs = [(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(-6, 6), rng.uniform(-3, 3),
              max(2, int(rng.uniform(0.01, 0.04) * w))) for _ in range(4)]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"bench_predict.py: OpenCV cannot write {path} (mp4v): check the OpenCV build's video "
                           "support")
    for k in range(frames):
        img = base.copy()
        for x, y, dx, dy, r in blobs:
            cx, cy = int((x + k * dx) % w), int((y + k * dy) % h)
            cv2.ellipse(img, (cx, cy), (r, max(1, r // 3)), 0, 0, 360, (40, 40, 50), -1)
            cv2.line(img, (cx - r, cy - r // 2), (cx + r, cy - r // 2), (30, 30, 30), max(1, r // 8))
        writer.write(img)
    writer.release()
    return time.perf_counter() - t0


def make_weights(phi: str, seed: int, pt: Path, ours: Path) -> dict:
    """Ultralytics' YOLO('yolov8<phi>.yaml') from a seeded random init saved at pt, converted to our checkpoint at
    ours (nets.convert.convert_file); returns the conversion's metadata."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics import YOLO

    from nets.convert import convert_file

    torch.manual_seed(seed)
    YOLO(f"yolov8{phi}.yaml").save(str(pt))
    return convert_file(str(pt), str(ours))


def raw_outputs_agree(pt: Path, ours: Path, video: Path, long_side: int) -> dict:
    """Sanity check: Ultralytics' network (from pt) and ours (from ours) on the video's first frame, letterboxed as
    predict_fred.py does, fp32 on the CPU; the largest relative difference of boxes and of scores."""
    import cv2
    import torch
    from ultralytics import YOLO

    from inference.checkpoint import build_checkpoint_model, read_checkpoint
    from inference.pipeline import STRIDE, prepare
    from utils.letterbox import rect_input_shape

    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise RuntimeError(f"bench_predict.py: cannot read a frame of {video}")
    hwc, _, _ = prepare(frame, rect_input_shape(frame.shape[:2], long_side, STRIDE))
    x = torch.from_numpy(hwc).permute(2, 0, 1)[None].float() / 255.0
    theirs_model = YOLO(str(pt)).model.float().eval()
    ours_model = build_checkpoint_model(str(ours), read_checkpoint(str(ours)), torch.device("cpu")).eval()
    with torch.no_grad():
        want, got = theirs_model(x)[0], ours_model(x)
    rel = [float((got[:, s] - want[:, s]).abs().max() / want[:, s].abs().max().clamp(min=1e-12))
           for s in (slice(0, 4), slice(4, None))]
    return {"input_hw": list(x.shape[2:]), "shape": list(got.shape), "max_rel_boxes": rel[0],
            "max_rel_scores": rel[1], "equal": max(rel) <= EQUAL_REL}


# --------------------------------------------------------------------------------------------- the runs


def ultra_worker(p: dict) -> dict:
    """Child process: Ultralytics' predict over the video, streamed; end-to-end and model-only frames per second."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    model = YOLO(p["pt"])
    batch_starts: list[float] = []
    model.add_callback("on_predict_batch_start", lambda predictor: batch_starts.append(time.perf_counter()))
    speed = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
    frames = detections = 0
    last = 0.0
    for r in model.predict(source=p["video"], stream=True, imgsz=p["imgsz"], half=p["half"], batch=p["batch"],
                           save=p["save"], conf=p["conf"], iou=p["iou"], max_det=p["max_det"], device=p["device"],
                           verbose=False, project=p["project"], name=p["name"], exist_ok=True):
        frames += 1
        detections += len(r.boxes)
        for k in speed:
            speed[k] += r.speed.get(k) or 0.0
        last = time.perf_counter()
    seconds = last - batch_starts[0] if batch_starts else 0.0
    model_s = (speed["inference"] + speed["postprocess"]) / 1000.0
    return {"frames": frames, "detections": detections, "fps": round(frames / seconds, 2) if seconds else 0.0,
            "model_fps": round(frames / model_s, 2) if model_s else 0.0, "speed_ms_total": speed}


def run_child(cmd: list[str], log: Path, a: argparse.Namespace) -> dict:
    """Run one child process; its final JSON line (if any) plus rc and wall seconds; ok false, with the log's tail,
    unless it exited 0 with a JSON line."""
    r = run_logged(cmd, str(log), env={"YOLO_OFFLINE": "1"}, timeout=a.timeout or None)
    summary = final_json_line(str(log))
    entry = {"ok": r["rc"] == 0 and summary is not None, "rc": r["rc"], "wall_s": r["wall_s"], "log": str(log),
             "timed_out": r["timed_out"], **(summary or {})}
    if not entry["ok"]:
        entry["tail"] = log_tail(str(log), 15)
        print(f"  FAILED (rc {r['rc']}): see {log}\n{entry['tail']}", flush=True)
    return entry


def ours_run(a: argparse.Namespace, weights: Path, video: Path, batch: int, output: str, device: str, runs: Path,
             tag: str) -> dict:
    """predict_fred.py end to end in its own process."""
    save = ["--save_video"] if output == "video" else ["--save_json"]
    cmd = [sys.executable, str(REPO / "predict_fred.py"), "--weights", str(weights), "--source", str(video),
           "--out", str(runs / tag), "--batch", str(batch), "--device", device, "--imgsz", str(a.imgsz),
           "--conf", str(a.conf), "--iou", str(a.iou), "--max_det", str(a.max_det), *save]
    return run_child(cmd, runs / f"{tag}.log", a)


def ultra_run(a: argparse.Namespace, pt: Path, video: Path, batch: int, output: str, runs: Path, tag: str) -> dict:
    """Ultralytics' predict end to end in its own process (this file with --ultra_worker)."""
    params = {"pt": str(pt), "video": str(video), "imgsz": a.imgsz, "half": a.device.startswith("cuda"),
              "batch": batch, "save": output == "video", "conf": a.conf, "iou": a.iou, "max_det": a.max_det,
              "device": ultra_device(a.device), "project": str(runs), "name": tag}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ultra_worker", json.dumps(params)]
    return run_child(cmd, runs / f"{tag}.log", a)


def export_onnx(a: argparse.Namespace, weights: Path, onnx: Path, input_hw: list[int], runs: Path) -> dict:
    """export_fred.py: our checkpoint to ONNX at input_hw, any batch size, checked against PyTorch."""
    cmd = [sys.executable, str(REPO / "export_fred.py"), "--weights", str(weights), "--out", str(onnx),
           "--imgsz", str(input_hw[0]), str(input_hw[1]), "--dynamic"]
    return run_child(cmd, runs / f"{onnx.stem}_export.log", a)


def onnx_cuda_available() -> bool:
    """Whether onnxruntime (if installed) has its CUDA provider (onnxruntime-gpu)."""
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


# --------------------------------------------------------------------------------------------- main


def ratio(ours: dict | None, theirs: dict | None, key: str = "fps") -> float | None:
    """Ours' fps (or another key's) over Ultralytics' fps (None unless both ran)."""
    if not ours or not theirs or not ours.get("ok") or not theirs.get("ok") or not theirs.get("fps") \
            or not ours.get(key):
        return None
    return round(ours[key] / theirs["fps"], 2)


def add_warm_fps(run: dict, batch: int) -> None:
    """Add "warm_fps" to a run of predict_fred.py: its frames after the first batch over its time after the first
    batch's detections (first_batch_s: start-up, the CUDA graph's capture included), comparable with Ultralytics'
    e2e figure, which also starts after its warm-up (it keeps its first batch: ours leaves one batch out)."""
    if not run.get("ok") or not run.get("fps") or run.get("first_batch_s") is None:
        return
    seconds, frames = run["frames"] / run["fps"] - run["first_batch_s"], run["frames"] - batch
    run["warm_fps"] = round(frames / seconds, 2) if seconds > 0 and frames > 0 else None


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0, or 1 when a run failed."""
    a = parse_args(argv)
    if a.ultra_worker:
        print(json.dumps(ultra_worker(json.loads(a.ultra_worker))), flush=True)
        return 0
    exit_on_sigterm()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = work_dir(a.out, a.runs_dir)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    result: dict = {"bench": "predict", "args": {k: v for k, v in vars(a).items() if k != "ultra_worker"},
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "phis": {}}

    def save() -> None:
        out.write_text(json.dumps(result, indent=1, default=str))

    video = runs / f"video_{a.width}x{a.height}_{a.frames}_s{a.seed}.mp4"
    print(f"video: {a.frames} frames at {a.width}x{a.height} in {video} ...", flush=True)
    gen_s = write_video(video, a.frames, (a.height, a.width), a.seed)
    print(f"  {'written in %.1f s' % gen_s if gen_s else 'reused'}", flush=True)
    result["video"] = {"path": str(video), "frames": a.frames, "size": [a.height, a.width], "write_s": round(gen_s, 2)}
    onnx_devices = ["cpu"] + (["cuda"] if a.device.startswith("cuda") and onnx_cuda_available() else [])
    result["onnx_devices"] = onnx_devices
    save()
    rows, failed = [], []
    for phi in a.phi_list:
        pt, weights = runs / f"yolov8{phi}_ultra.pt", runs / f"yolov8{phi}_ours.pth"
        entry: dict = {"convert": make_weights(phi, a.seed, pt, weights), "batches": {}}
        entry["raw_check"] = check = raw_outputs_agree(pt, weights, video, a.imgsz)
        result["phis"][phi] = entry
        print(f"[yolov8{phi}] same weights: raw outputs on frame 0 at {check['input_hw']}: max relative difference "
              f"boxes {check['max_rel_boxes']:.2e}, scores {check['max_rel_scores']:.2e} "
              f"({'equal' if check['equal'] else 'NOT equal'}, within {EQUAL_REL:g})", flush=True)
        save()
        onnx = runs / f"yolov8{phi}_ours.onnx"
        if "onnx" not in skip:
            onnx.unlink(missing_ok=True)
            entry["onnx_export"] = e = export_onnx(a, weights, onnx, check["input_hw"], runs)
            if not onnx.exists():
                failed.append(f"{phi} onnx export")
            elif not e["ok"]:  # written, but outside export_fred.py's tolerance: still timed, the verdict recorded
                print(f"  (the file is still timed: export_fred.py's check, max_rel_diff {e.get('max_rel_diff')}, "
                      "is recorded in the JSON)", flush=True)
            save()
        for batch in a.batch_list:
            b: dict = {"ours": {}, "ultralytics": {}, "onnx": {}}
            entry["batches"][str(batch)] = b
            for output in a.output_list:
                if "ours" not in skip:
                    print(f"[yolov8{phi} batch {batch}] ours, outputs {output} ...", flush=True)
                    b["ours"][output] = r = ours_run(a, weights, video, batch, output, a.device, runs,
                                                     f"ours_{phi}_b{batch}_{output}")
                    add_warm_fps(r, batch)
                    failed += [] if r["ok"] else [f"{phi} b{batch} ours {output}"]
                    save()
                if "ultralytics" not in skip:
                    print(f"[yolov8{phi} batch {batch}] Ultralytics, outputs {output} ...", flush=True)
                    b["ultralytics"][output] = r = ultra_run(a, pt, video, batch, output, runs,
                                                             f"ultra_{phi}_b{batch}_{output}")
                    failed += [] if r["ok"] else [f"{phi} b{batch} ultralytics {output}"]
                    save()
            if "onnx" not in skip and onnx.exists():
                for dev in onnx_devices:
                    print(f"[yolov8{phi} batch {batch}] ONNX on {dev} ...", flush=True)
                    b["onnx"][dev] = r = ours_run(a, onnx, video, batch, "none", dev, runs,
                                                  f"onnx_{phi}_b{batch}_{dev}")
                    failed += [] if r["ok"] else [f"{phi} b{batch} onnx {dev}"]
                    save()
            ours, theirs = b["ours"], b["ultralytics"]
            b["ratio_e2e"] = {o: ratio(ours.get(o), theirs.get(o)) for o in a.output_list}
            b["ratio_e2e_warm"] = {o: ratio(ours.get(o), theirs.get(o), "warm_fps") for o in a.output_list}
            pick = lambda d, o, k: d.get(o, {}).get(k) if d.get(o, {}).get("ok") else None  # noqa: E731
            model_src = a.output_list[-1]
            rows.append([phi, batch, pick(ours, "video", "fps"), pick(ours, "none", "fps"),
                         pick(ours, model_src, "model_fps"), pick(theirs, "video", "fps"),
                         pick(theirs, "none", "fps"), pick(theirs, model_src, "model_fps"),
                         b["ratio_e2e"].get("video"), b["ratio_e2e"].get("none"),
                         b["ratio_e2e_warm"].get("video"), b["ratio_e2e_warm"].get("none"),
                         pick(b["onnx"], "cpu", "fps"), pick(b["onnx"], "cuda", "fps")])
            save()
    header = ["phi", "batch", "ours e2e (video)", "ours e2e (none)", "ours model", "Ultra e2e (video)",
              "Ultra e2e (none)", "Ultra model", "ratio e2e (video)", "ratio e2e (none)", "ratio warm (video)",
              "ratio warm (none)", "ONNX CPU", "ONNX CUDA"]
    result["table"] = print_table(f"Prediction, frames per second: {a.frames} frames at {a.width}x{a.height}, input "
                                  f"long side {a.imgsz}, device {a.device}"
                                  f"{' fp16' if a.device.startswith('cuda') else ''}", header, rows)
    print("(e2e: decode to last frame written; (video): annotated video written, (none): ours detections.json only, "
          "Ultralytics nothing; model: ours device copy + network + NMS, Ultralytics its inference + postprocess "
          "times; ratio warm: ours after its start-up (first batch and CUDA graph capture left out) over Ultralytics' "
          "e2e, which starts after its warm-up too; ONNX: predict_fred.py with onnxruntime, no video)")
    for phi, entry in result["phis"].items():
        for batch, b in entry["batches"].items():
            for o, r in b["ratio_e2e"].items():
                warm = b.get("ratio_e2e_warm", {}).get(o)
                if r is not None:
                    verdict = "met" if r >= TARGET else "NOT met"
                    where = "" if a.device.startswith("cuda") else " (target is for the GPU; this is the CPU)"
                    print(f"[yolov8{phi} batch {batch} outputs {o}] ours / Ultralytics end to end = {r:.2f}x "
                          f"(target >= {TARGET}x): {verdict}{where}"
                          + (f"; both after their start-up: {warm:.2f}x" if warm is not None else ""))
            dets = {f"{k} {o}": r.get("detections") for k in ("ours", "ultralytics") for o, r in b[k].items()}
            print(f"[yolov8{phi} batch {batch}] detections: {dets}")
    result["failed"] = failed
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    copied = copy_logs(runs, a.out)
    print(f"results: {out}; runs: {runs}" + (f"; logs copied to {copied}" if copied else ""))
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
