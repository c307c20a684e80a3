"""Accuracy bench (issue 17): ours, Ultralytics, the tiny-drone assignment, P2 and 1280 side by side on FRED-hard.

One generated FRED-hard sample (tools.synthetic --profile hard, reused when it matches; val = the sequences in FRED's
canonical test list: night and rain on both sides, sunset and buildings in val only), both modalities. Every config trains from scratch in
its own process, with the same epochs, batch, augmentation (bench_learning.ours_settings; Ultralytics equalised by
bench/ultra_ref.py) and seed, and its final weights are scored by OUR evaluator on the same val frames:
eval_fred.py --per_sequence (Ultralytics' last.pt converted first with nets.convert), which breaks mAP down by the
per-frame conditions of the generator's manifest (evaluation/breakdown.py). Ultralytics' own mAP is recorded beside.

  ours640        our trainer, INPUT_SHAPE 640
  ultra640       Ultralytics yolov8<phi>.yaml at 640
  ours640_tiny   ours with the tiny-drone assignment (config key ASSIGNER, see TINY_ASSIGNER)
  ours640_p2     ours with ARCH "yolov8-p2" (a fourth level at stride 4)
  ultra640_p2    Ultralytics yolov8<phi>-p2.yaml at 640
  ours1280       ours at INPUT_SHAPE 1280 (twice --imgsz)
  ours1280_p2    ours P2 at 1280
  ours640_yolo11   ours with ARCH "yolo11" (the FRED paper's baseline; issue 20's learning check)
  ultra640_yolo11  Ultralytics yolo11<phi>.yaml at 640
Each config is a trainer, an input scale and a plain dict of config keys (CONFIGS); change them there.

Reported per config (one table per modality): mAP50, mAP50:95, AP_small (COCO small: under 32x32 px in the 1280x720
frame), mAP50 per condition (night, rain, hovering, occluded, clutter: a sequence whose background is not open sky,
size buckets tiny < 8 <= small < 16 <= medium < 32 <= large px wide at 1280; a frame's bucket is that of its
narrowest drone), train-loop img/s (median over the epochs after the first), peak reserved GPU memory, train seconds
and the GPU it ran on (compare speeds of one GPU type only).

Full size (the defaults: 24 sequences x 100 frames at 1280x720, 18 train / 6 val sequences, about 1,850 / 600 frames
per modality; YOLOv8s, batch 16, 20 epochs, 8 workers; the data take about 11 s on 16 cores). Measured on an H100
(bench/README.md): our trainer at 640 trains 20 epochs in about 80 s and 60 in 155-165 s; Ultralytics' 20 epochs at
640 take 117-132 s; add 20-40 s per config for start-up and our evaluator. The P2 and 1280 configs take about 1.7x
and 3x ours at 640 (from bench_train.py's speeds, not yet measured here). One modality's nine configs are too much
for one 10-minute device call: split them with --configs; --out is read back and each call's configs are merged
into it (the settings must match), so copy the previous call's JSON to --out first. --parallel 2 trains two configs
at once on the GPU (an Ultralytics config beside one of ours uses the GPU time Ultralytics leaves idle; two of ours
at one modality and input never overlap), which leaves mAP as it is but makes img/s a shared-GPU figure (marked).
For example, per modality M (event, rgb), --timeout bounding each trainer process:
    python bench/bench_accuracy.py --modality M --configs ours640,ultra640,ours640_tiny,ours640_p2 --parallel 2 \
        --timeout 420 --out $OUT/bench_accuracy_M.json
    python bench/bench_accuracy.py --modality M --configs ultra640_p2,ours1280 --parallel 2 --timeout 480 \
        --out $OUT/bench_accuracy_M.json
    python bench/bench_accuracy.py --modality M --configs ours1280_p2 --timeout 480 --out $OUT/bench_accuracy_M.json
    python bench/bench_accuracy.py --modality M --configs ours640_yolo11,ultra640_yolo11 --parallel 2 --timeout 420 \
        --out $OUT/bench_accuracy_M.json
CPU smoke test (tiny FRED-hard set, phi n, 1 epoch, ours640 / ultra640 / ours640_p2 / ours1280; a few minutes on 2
cores):
    YOLO_OFFLINE=1 python bench/bench_accuracy.py --quick
Results: tables on stdout and a JSON at --out (default bench/out/bench_accuracy.json), written after each config.
Trainer runs (checkpoints, logs) go to --runs_dir (default bench/out/<out stem>_runs/, not under --out's folder);
their text logs are copied to <out folder>/<out stem>_logs/ at the end. Exit status: 0, 1 when a config failed (its
log tail is printed and its entry says ok: false), 2 when --out holds results of other settings.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_learning import ours_settings  # noqa: E402
from bench.ultra_ref import (CsvWatcher, add_run_args, apply_quick, build_ultra_dataset, copy_logs,  # noqa: E402
                             ensure_generated, exit_on_sigterm, final_json_line, log_tail, median, ours_command,
                             print_table, run_logged, stop_all_runs, ultra_device, work_dir, write_split)

TINY_ASSIGNER = "tal-small"  # nets.loss.ASSIGNERS: the small-box assignment (issue 17 part 2)
# name -> trainer ("ours" | "ultralytics"), input as a multiple of --imgsz, config keys (Ultralytics: ARCH only)
CONFIGS: dict[str, dict] = {
    "ours640": {"trainer": "ours", "scale": 1, "sets": {}},
    "ultra640": {"trainer": "ultralytics", "scale": 1, "sets": {}},
    "ours640_tiny": {"trainer": "ours", "scale": 1, "sets": {"ASSIGNER": TINY_ASSIGNER}},
    "ours640_p2": {"trainer": "ours", "scale": 1, "sets": {"ARCH": "yolov8-p2"}},
    "ultra640_p2": {"trainer": "ultralytics", "scale": 1, "sets": {"ARCH": "yolov8-p2"}},
    "ours1280": {"trainer": "ours", "scale": 2, "sets": {}},
    "ours1280_p2": {"trainer": "ours", "scale": 2, "sets": {"ARCH": "yolov8-p2"}},
    "ours640_yolo11": {"trainer": "ours", "scale": 1, "sets": {"ARCH": "yolo11"}},
    "ultra640_yolo11": {"trainer": "ultralytics", "scale": 1, "sets": {"ARCH": "yolo11"}},
}
QUICK_CONFIGS = "ours640,ultra640,ours640_p2,ours1280"
# --quick: a tiny FRED-hard set and model on the CPU
QUICK = dict(sequences=10, frames=6, height=96, width=160, epochs=1, batch=8, imgsz=64, phi="n", workers=0,
             device="cpu")
CONDITION_COLUMNS = ("night", "rain", "hovering", "occluded", "clutter", "size=tiny", "size=small", "size=medium",
                     "size=large")
# settings that must match for results of several calls to share one --out
SETUP_KEYS = ("sequences", "frames", "height", "width", "seed", "epochs", "batch", "imgsz", "phi", "workers",
              "mosaic_prob", "special_aug_ratio")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line; --quick replaces the sizes by a CPU smoke-test set."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modality", default="event", help="event, rgb, or both: event,rgb")
    p.add_argument("--configs", default="all", help=f"comma list of {', '.join(CONFIGS)}, or all")
    add_setup_args(p, "bench_accuracy", "the 640 configs (the 1280 configs: twice this)")
    p.add_argument("--parallel", type=int, default=1, help="configs trained at once on the one GPU (default 1). More "
                   "saves device time when the trainers leave the GPU idle (Ultralytics' does, half the time); mAP is "
                   "unaffected, but img/s then counts a shared GPU and is marked so: take speeds from bench_train.py. "
                   "Pair configs whose peak memory fits the card together (1280 ones take up to ~40 GB each)")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: 10 sequences x 6 frames at 160x96, phi n, "
                   f"input 64 (128), 1 epoch, batch 8, no workers, configs {QUICK_CONFIGS}")
    a = p.parse_args(argv)
    apply_quick(a, p, {**QUICK, "gen_workers": min(a.gen_workers, 2), "configs": QUICK_CONFIGS})
    a.configs = list(CONFIGS) if a.configs == "all" else [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = [c for c in a.configs if c not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)} or all")
    a.modality = [m.strip() for m in a.modality.split(",") if m.strip()]
    if not a.modality or set(a.modality) - {"event", "rgb"}:
        p.error(f"--modality: event, rgb or event,rgb, got {','.join(a.modality)!r}")
    if a.parallel < 1:
        p.error(f"--parallel: at least 1, got {a.parallel}")
    a.data_root = a.data_root or shared_data_root(a.quick)
    return a


def add_setup_args(p: argparse.ArgumentParser, name: str, imgsz_help: str) -> None:
    """The FRED-hard sample and training settings every config of a bench shares (SETUP_KEYS), and run arguments."""
    p.add_argument("--sequences", type=int, default=24)
    p.add_argument("--frames", type=int, default=100, help="RGB frames per sequence (event: a few more)")
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--imgsz", type=int, default=640, help=f"input of {imgsz_help}")
    p.add_argument("--phi", default="s")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--mosaic_prob", type=float, default=0.5)
    p.add_argument("--special_aug_ratio", type=float, default=0.7)
    p.set_defaults(assigner="tal")  # ours_settings' ASSIGNER; a config's own (ours640_tiny) replaces it
    add_run_args(p, name, "generated FRED-hard data (default data/bench_accuracy[_quick], shared by the benches)")


def shared_data_root(quick: bool) -> str:
    """The default folder of the generated FRED-hard sample, the same for the benches that compare on it."""
    return str(REPO / "data" / ("bench_accuracy_quick" if quick else "bench_accuracy"))


def gpu_name(device: str) -> str:
    """The device's name as a timing label: the CUDA card's name, or 'cpu'."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def ours_speed(rows: list[dict]) -> dict:
    """From our results.csv rows: median train-loop img/s and data-wait share after the first epoch, peak GB."""
    steady = rows[1:] or rows
    return {"img_per_s": median([_num(r.get("img_per_s")) for r in steady]),
            "data_wait_pct": median([_num(r.get("data_wait_pct")) for r in steady]),
            "peak_mem_GB": max([_num(r.get("gpu_mem_GB")) or 0.0 for r in rows], default=None)}


def _num(v: object) -> float | None:
    """A results.csv cell as a float (None when empty or not a number)."""
    try:
        return float(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def config_sets(a: argparse.Namespace, size: int, sets: dict) -> dict:
    """Our trainer's config keys for a config at input size: the bench's settings, then the config's own keys."""
    return {**ours_settings(a), "INPUT_SHAPE": [size, size], "EVAL_WORKERS": min(a.workers, 4), **sets}


def train_ours(a: argparse.Namespace, name: str, modality: str, split: str, logs: Path, size: int, sets: dict
               ) -> dict:
    """Our trainer in a subprocess with config keys sets (config_sets'); its final weights (last.pth), best.pth,
    speed and own mAP."""
    save_dir = logs / f"{name}_{modality}"
    shutil.rmtree(save_dir, ignore_errors=True)  # an earlier call's results.csv would be read as this run's
    cmd = ours_command(modality, a.data_root, split, a.phi, a.device, str(save_dir), sets)
    watcher = CsvWatcher(str(save_dir / "loss_*" / "results.csv"))
    log = logs / f"{name}_{modality}.log"
    print(f"[{modality}] {name}: training {a.epochs} epochs at {size} ... (log {log})", flush=True)
    run = run_logged(cmd, str(log), watchers=[watcher], timeout=a.timeout or None)
    summary = final_json_line(str(log))
    if run["rc"] != 0 or summary is None:
        return {"ok": False, "rc": run["rc"], "wall_s": run["wall_s"], "log": str(log), "sets": sets}
    return {"ok": True, "weights": str(Path(summary["run_dir"]) / "last.pth"),
            "best_weights": str(Path(summary["run_dir"]) / "best.pth"), "train_s": summary.get("train_seconds"),
            "wall_s": run["wall_s"], "trainer_mAP50": summary.get("best_mAP50"),
            "trainer_mAP50_95": summary.get("best_mAP50_95"), **ours_speed(watcher.rows), "log": str(log),
            "sets": sets}


def train_ultra(a: argparse.Namespace, name: str, modality: str, data_yaml: str, logs: Path) -> dict:
    """Ultralytics (bench/ultra_ref.py) in a subprocess, then its last.pt converted to our checkpoint (nets.convert);
    its speed and own mAP."""
    conf = CONFIGS[name]
    size = a.imgsz * conf["scale"]
    extra = set(conf["sets"]) - {"ARCH"}
    if extra:
        raise ValueError(f"bench/bench_accuracy.py CONFIGS[{name!r}]: Ultralytics takes ARCH only, not {sorted(extra)}")
    out_json, log = logs / f"{name}_{modality}.json", logs / f"{name}_{modality}.log"
    cmd = [sys.executable, str(REPO / "bench" / "ultra_ref.py"), "train", "--data", data_yaml, "--out", str(out_json),
           "--phi", a.phi, "--arch", conf["sets"].get("ARCH", "yolov8"), "--epochs", str(a.epochs), "--batch",
           str(a.batch), "--val_batch", "32", "--imgsz", str(size), "--workers", str(a.workers), "--device",
           ultra_device(a.device), "--mosaic", str(a.mosaic_prob), "--special_aug_ratio", str(a.special_aug_ratio),
           "--val_repeats", "0", "--project", str(logs / "ultra_runs"), "--name", f"{name}_{modality}", "--seed",
           str(a.seed)]
    print(f"[{modality}] {name}: training {a.epochs} epochs at {size} ... (log {log})", flush=True)
    out_json.unlink(missing_ok=True)
    run = run_logged(cmd, str(log), env={"YOLO_OFFLINE": "1"}, timeout=a.timeout or None)
    if run["rc"] != 0 or not out_json.is_file():
        return {"ok": False, "rc": run["rc"], "wall_s": run["wall_s"], "log": str(log)}
    res = json.loads(out_json.read_text())
    weights = logs / f"{name}_{modality}.pth"
    convert_log = logs / f"{name}_{modality}_convert.log"
    conv = run_logged([sys.executable, "-m", "nets.convert", res["last"], str(weights)], str(convert_log),
                      env={"YOLO_OFFLINE": "1"})
    if conv["rc"] != 0:
        return {"ok": False, "rc": conv["rc"], "wall_s": run["wall_s"], "log": str(convert_log)}
    epochs = res.get("epochs") or []
    steady = epochs[1:] or epochs
    own = res.get("final") or {}
    return {"ok": True, "weights": str(weights), "train_s": res.get("train_wall_s"), "wall_s": run["wall_s"],
            "own_mAP50": own.get("mAP50"), "own_mAP50_95": own.get("mAP50_95"),
            "img_per_s": median([e.get("img_per_s") for e in steady]),
            "peak_mem_GB": max([e.get("peak_reserved_GB") or 0.0 for e in epochs], default=None),
            "amp": res.get("amp"), "log": str(log), "result_json": str(out_json)}


def evaluate_weights(a: argparse.Namespace, name: str, modality: str, split: str, weights: str, logs: Path,
                     size: int) -> dict:
    """eval_fred.py on weights at input size: its JSON line (metrics, per_condition, per_sequence)."""
    log = logs / f"{name}_{modality}_eval.log"
    cmd = [sys.executable, str(REPO / "eval_fred.py"), "--weights", weights, "--modality", modality, "--data_root",
           a.data_root, "--split", split, "--device", a.device, "--workers", str(min(a.workers, 4)),
           "--per_sequence", "--set", f"INPUT_SHAPE=[{size},{size}]", "CONFIDENCE=0.001", "NMS_IOU=0.7",
           "MAX_DET=300", "EVAL_BATCH_SIZE=32", "FP16=True", "VAL_FRAME_STRIDE=1"]
    run = run_logged(cmd, str(log), timeout=a.timeout or None)
    metrics = final_json_line(str(log))
    if run["rc"] != 0 or metrics is None:
        return {"ok": False, "rc": run["rc"], "log": str(log)}
    return {"ok": True, **metrics, "eval_wall_s": run["wall_s"], "eval_log": str(log)}


def run_config(a: argparse.Namespace, name: str, modality: str, split: str, data_yaml: str, logs: Path) -> dict:
    """Train one config, then score its final weights with our evaluator; the entry of the JSON."""
    conf = CONFIGS[name]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    size = a.imgsz * conf["scale"]
    if conf["trainer"] == "ours":
        entry = train_ours(a, name, modality, split, logs, size, config_sets(a, size, conf["sets"]))
    else:
        entry = train_ultra(a, name, modality, data_yaml, logs)
    entry.update(trainer=conf["trainer"], config_sets=conf["sets"], started=started)
    return score_entry(a, entry, name, modality, split, logs, size)


def score_entry(a: argparse.Namespace, entry: dict, name: str, modality: str, split: str, logs: Path, size: int
                ) -> dict:
    """A trained config's entry with our evaluator's numbers on its final weights (when it trained), its input size
    and GPU; a failure's log tail is printed."""
    entry.update(imgsz=size, gpu=gpu_name(a.device))
    if entry["ok"]:
        scored = evaluate_weights(a, name, modality, split, entry["weights"], logs, size)
        entry["ok"] = scored.pop("ok")
        entry.update(scored)
    if not entry["ok"]:
        print(f"[{modality}] {name} FAILED (rc {entry.get('rc')}):\n{log_tail(entry['log'])}", flush=True)
    return entry


def prepare_hard_data(a: argparse.Namespace, result: dict) -> str:
    """Generate (or reuse) the FRED-hard sample of a's sizes and write its split folder; records both in result
    (its "data", and the current call's "generate_s"); returns the split folder."""
    print(f"data: FRED-hard, {a.sequences} sequences x {a.frames} frames at {a.width}x{a.height} in {a.data_root} ...",
          flush=True)
    manifest, gen_s = ensure_generated(a.data_root, a.sequences, a.frames, (a.height, a.width), a.seed,
                                       a.gen_workers, profile="hard")
    split = write_split(a.data_root, manifest["ids"])
    result["data"] = {"root": a.data_root, "split": split, "ids": manifest["ids"], "totals": manifest["totals"]}
    result["calls"][-1]["generate_s"] = gen_s
    print(f"  {'generated in %.0f s' % gen_s if gen_s else 'reused'}; split {split}", flush=True)
    return split


def finish_call(result: dict, out: Path, logs: Path, failed: list[str]) -> int:
    """Stamp the current call's end, write the JSON at out, copy the trainer logs beside it, say where everything
    is; the exit status: 1 when a config failed, else 0."""
    result["calls"][-1]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.write_text(json.dumps(result, indent=1, default=str))
    copied = copy_logs(logs, str(out))
    print(f"results: {out}; runs: {logs}" + (f"; logs copied to {copied}" if copied else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def load_previous(out: Path, setup: dict, bench: str = "accuracy") -> dict | None:
    """The JSON at out when it holds results of the same setup (to merge into); None when there is none.

    ValueError saying why when it cannot be merged into (unreadable, another bench's, other settings)."""
    if not out.is_file():
        return None
    try:
        previous = json.loads(out.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{out} cannot be read as JSON ({e}); remove it or pass another --out") from None
    if not isinstance(previous, dict) or previous.get("bench") != bench:
        raise ValueError(f"{out} is not a bench_{bench}.py result; pass another --out")
    theirs = previous.get("setup") or {}
    differ = [k for k in setup if theirs.get(k) != setup[k]]
    if differ:
        raise ValueError(f"{out} holds results of other settings ("
                         + ", ".join(f"{k}: {theirs.get(k)!r} there, {setup[k]!r} now" for k in differ)
                         + "); pass the same settings to add configs to it, or another --out")
    return previous


def open_result(a: argparse.Namespace, bench: str, fresh: dict) -> tuple[Path, dict | None]:
    """--out (its folder made) and the result this call adds to: the JSON there when it holds bench_<bench>.py's
    results of the same setup, else a new one (fresh's keys, no calls yet); None, the error printed, when --out
    cannot be merged into."""
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    setup = {"profile": "hard", **{k: getattr(a, k) for k in SETUP_KEYS}}
    try:
        previous = load_previous(out, setup, bench)
    except ValueError as e:
        print(f"bench_{bench}.py: error: {e}", file=sys.stderr)
        return out, None
    return out, previous or {"bench": bench, "setup": setup, **fresh, "calls": []}


def report(result: dict, a: argparse.Namespace) -> None:
    """One table per modality, every config in the JSON (this call's and earlier calls')."""
    for modality, m in result["modalities"].items():
        rows = []
        for name in [c for c in CONFIGS if c in m.get("configs", {})]:
            e = m["configs"][name]
            cond = e.get("per_condition") or {}
            rows.append([name, e["imgsz"], e.get("mAP50") if e.get("ok") else "FAILED", e.get("mAP50_95"),
                         e.get("AP_small"), e.get("own_mAP50"),
                         *[(cond.get(c) or {}).get("mAP50") for c in CONDITION_COLUMNS],
                         shared_speed(e), e.get("peak_mem_GB"), e.get("train_s"), e.get("gpu")])
        print_table(f"{modality}: FRED-hard, {m.get('train_frames')} train / {m.get('val_frames')} val frames, "
                    f"YOLOv8{a.phi}, {a.epochs} epochs, batch {a.batch}, from scratch; our evaluator on the same "
                    "val frames", ["config", "input", "mAP50", "mAP50:95", "AP_small", "own mAP50",
                                   *CONDITION_COLUMNS, "img/s", "peak GB", "train s", "gpu"], rows)
        counts = next((e["per_condition"] for e in m.get("configs", {}).values() if e.get("per_condition")), {})
        if counts:
            print("val frames (boxes) per condition: " + ", ".join(
                f"{c} {counts[c]['images']} ({counts[c]['boxes']})" for c in CONDITION_COLUMNS if c in counts))
    print("(mAP by our evaluator, eval_fred.py, on each config's final weights; condition columns: mAP50 on the val "
          "frames with that condition, - = none there; own mAP50 = Ultralytics' own val of the same weights; img/s = "
          "median train-loop speed after the first epoch, '(shared by N)' when N configs trained on the GPU at once "
          "(--parallel: not a speed figure); peak GB = max reserved CUDA memory; compare speeds of one gpu only)")


def shared_speed(entry: dict) -> object:
    """A config's img/s for the table, marked when it shared the GPU with other configs (--parallel)."""
    speed, parallel = entry.get("img_per_s"), entry.get("parallel", 1)
    return f"{speed:.0f} (shared by {parallel})" if speed is not None and parallel > 1 else speed


def run_jobs(jobs: list[tuple[str, str]], parallel: int, run: Callable[[str, str], dict], result: dict,
             save: Callable[[], None]) -> list[str]:
    """run(modality, config) for each job, up to `parallel` at a time, in the list's order as far as allowed; each
    entry goes into result (with "parallel": how many configs shared the GPU) and save() is called after each;
    returns the failed jobs. Two of our trainers at the same modality and input never run at once (both would build
    the same frame cache, and the second's rename would stop the first: speed/frame_cache.py): such a job waits,
    without holding a place, while a later one that can run starts."""
    def cache(job: tuple[str, str]) -> tuple | None:
        conf = CONFIGS[job[1]]
        return (job[0], conf["scale"]) if conf["trainer"] == "ours" else None

    pending, running, busy, failed = list(jobs), {}, set(), []
    with ThreadPoolExecutor(parallel) as pool:
        try:
            while pending or running:
                for job in list(pending):
                    if len(running) < parallel and (cache(job) is None or cache(job) not in busy):
                        pending.remove(job)
                        busy.add(cache(job))
                        running[pool.submit(run, *job)] = job
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    (modality, name), entry = running.pop(future), future.result()
                    busy.discard(cache((modality, name)))
                    entry["parallel"] = parallel
                    result["modalities"][modality]["configs"][name] = entry
                    if not entry["ok"]:
                        failed.append(f"{modality}/{name}")
                    save()
        except BaseException:  # SIGTERM (exit_on_sigterm) or Ctrl-C: the jobs' threads would otherwise run on
            stop_all_runs()
            raise
    return failed


def main(argv: list[str] | None = None) -> int:
    """Run the chosen configs per modality, merge them into --out, print the tables."""
    a = parse_args(argv)
    exit_on_sigterm()
    from datasets.fred_index import build_fred_index

    out, result = open_result(a, "accuracy", {"modalities": {}})
    if result is None:
        return 2
    result["calls"].append({"args": vars(a), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    logs = work_dir(a.out, a.runs_dir)

    def save() -> None:
        out.write_text(json.dumps(result, indent=1, default=str))

    split = prepare_hard_data(a, result)
    save()
    data_yamls = {}
    for modality in a.modality:
        index = build_fred_index(a.data_root, modality, split=split)
        data_yamls[modality] = ""
        if any(CONFIGS[c]["trainer"] == "ultralytics" for c in a.configs):
            data_yamls[modality] = build_ultra_dataset(index.train, index.val, f"{a.data_root}_ultra_{modality}")
        entry = result["modalities"].setdefault(modality, {"configs": {}})
        entry.update(train_frames=len(index.train), val_frames=len(index.val), val_sequences=index.val_sequences)
        print(f"[{modality}] {len(index.train)} train frames ({len(index.train_sequences)} sequences), "
              f"{len(index.val)} val frames ({len(index.val_sequences)} sequences)", flush=True)
    failed = run_jobs([(m, name) for m in a.modality for name in a.configs], a.parallel,
                      lambda m, name: run_config(a, name, m, split, data_yamls[m], logs), result, save)
    report(result, a)
    return finish_call(result, out, logs, failed)


if __name__ == "__main__":
    sys.exit(main())
