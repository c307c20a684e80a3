"""Speed bench (issue 6): our trainer and Ultralytics YOLOv8 side by side on the same generated FRED frames.

One command generates (or reuses) a FRED-shaped set with RGB JPEGs and event PNGs at 1280x720, indexes it with
datasets.fred_index, gives Ultralytics a symlinked copy of the same frames (bench/ultra_ref.py), and runs the
chosen parts (--parts, in this order; each trainer in its own process, one at a time):

  speed    per modality (--modalities): ours, one run of FREEZE_EPOCH=k frozen (batch 32) + k unfrozen (batch 16)
           epochs; Ultralytics, one run per phase (freeze=10 at batch 32; nothing frozen at batch 16), k epochs
           each. Same model, input, AMP fp16, workers, mosaic probability 0.5 (on in every epoch), from scratch.
           Per phase, the first epoch left out (worker start, cuDNN warmup): train-loop img/s, epoch seconds,
           peak CUDA memory (max reserved, each trainer's own allocator counter), GPU utilisation and peak used
           memory (pynvml samples every 0.1 s over the train loops of those epochs). The val split is strided
           (--speed_val_stride) to keep the per-epoch val pass short; its time is not in the figures.
  tta      time to accuracy on the event frames: both trainers from scratch (no frozen phase, batch --tta_batch,
           --tta_epochs schedule), mAP50 on the held-out sequences after every epoch (each trainer's own
           evaluator: ours pycocotools, Ultralytics its own); a trainer is stopped once it reaches --tta_target.
           Reported: wall seconds from process launch until the epoch that first reached it.
  data     data-only img/s: our training DataLoader alone (train_fred.py's own dataset, frame cache and loader
           builders, batch 32, mosaic 0.5; with HSV_ON_GPU on CUDA the workers leave the HSV jitter to the
           GPU, untimed here) and Ultralytics' training dataloader alone, per modality. Beside ours: the same
           loader without pinned memory, one sample's time in one process, and the workers' bound (workers x
           that rate): a loader far below its bound is limited by the transfer to the main process.
  ceiling  our model + loss on GPU-resident data: random uint8 batches already on the GPU, fp16 AMP,
           channels_last; "engine" = training.engine.train_one_epoch (the trainer's step: loss, scaler, clip,
           fused SGD, EMA), "engine_graph" = the same with the forward/backward of model and loss from a CUDA graph
           (CUDA_GRAPH, the trainer's default; the reference of the 0.9x target), "bare" = forward +
           DetectionLoss + backward + SGD step only. Frozen at batch 32,
           unfrozen at batch 16.
  eval     evaluation time on the same full val set (event): eval_fred.py's run() in-process (index, model,
           loader, inference, NMS, pycocotools; EVAL_WORKERS loader processes) vs Ultralytics' YOLO(best.pt).val()
           fp16 with --workers and with EVAL_WORKERS processes, the faster of the two compared; --eval_passes
           passes each in one process: the first is the cold one, the median of the others the warm figure
           (single warm passes of either evaluator vary by 0.2-0.4 s on the H200 host). Weights from this run's tta
           part when it ran, else from the speed part.

Full size, H200 (the data are generated in 13-15 s on 16 cores; Ultralytics takes about 30-35 s per phase run, so
the speed part for two modalities is 4-5 minutes plus 1-2 minutes per --ours_variants run; keep each device call
under its 10 minutes, e.g. speed in one call, data/ceiling/eval in another; --timeout bounds each trainer):
    python bench/bench_train.py --parts speed --timeout 240 --out $OUT/bench_train_speed.json \
        --ours_variants 'no_ring:BATCH_RING=False' 'no_graph:CUDA_GRAPH=False'
    python bench/bench_train.py --parts data,ceiling,eval --out $OUT/bench_train_rest.json \
        --data_variants 'no_ring:BATCH_RING=False' 'workers15:NUM_WORKERS=15'
    python bench/bench_train.py --parts tta,eval --out $OUT/bench_train_tta.json
  defaults: 24 sequences x 100 frames at 1280x720 (18 train sequences, ~1,900 train frames per modality),
  YOLOv8s, 640x640, 8 workers, speed k=3 epochs per phase, tta up to 20 epochs at batch 16, target mAP50 0.9.
  The data root is shared with bench_learning.py (same defaults), so either bench reuses the other's data.
CPU smoke test (tiny set, phi n, 64x64, 1 epoch per phase; a few minutes on 2 cores):
    YOLO_OFFLINE=1 python bench/bench_train.py --quick
Results: tables on stdout, a JSON at --out (default bench/out/bench_train.json, rewritten after every step).
Trainer runs (checkpoints, logs) go to --runs_dir (default bench/out/<out stem>_runs/, not under --out's folder);
their text logs are copied to <out folder>/<out stem>_logs/ at the end. Nothing is asserted: the issue's targets
are printed as met / NOT met.
"""
from __future__ import annotations

import argparse
import ast
import itertools
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ultra_ref import (BACKBONE_LAYERS, ULTRA_ARCHS, CsvWatcher, GpuSampler, add_run_args, apply_quick, build_ultra_dataset,  # noqa: E402
                             copy_logs, ensure_generated, exit_on_sigterm, final_json_line, log_tail, median,
                             ours_command, print_table, run_logged, ultra_device, work_dir, write_split)

PARTS = ("speed", "tta", "data", "ceiling", "eval")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line; --quick replaces the sizes by a CPU smoke-test set."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="speed,data,ceiling,eval", help=f"comma list of {', '.join(PARTS)} or all")
    p.add_argument("--modalities", default="event,rgb", help="modalities of the speed and data parts (speed: also "
                   "fusion, ours only)")
    p.add_argument("--sequences", type=int, default=24)
    p.add_argument("--frames", type=int, default=100, help="RGB frames per sequence (event: a few more)")
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--phi", default="s")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--arch", default="yolov8", choices=ULTRA_ARCHS, help="both trainers' architecture "
                   "(ours: ARCH; Ultralytics: yolov8<phi>-p2.yaml for yolov8-p2, yolo11<phi>.yaml for yolo11)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--frozen_batch", type=int, default=32)
    p.add_argument("--unfrozen_batch", type=int, default=16)
    p.add_argument("--speed_epochs", type=int, default=3, help="epochs per phase in the speed part")
    p.add_argument("--ours_variants", nargs="*", default=[], metavar="NAME:KEY=VALUE;...",
                   help="speed part: extra runs of ours on the first modality with these config overrides (Python "
                        "literals), to measure what one speed option gives, e.g. 'no_graph:CUDA_GRAPH=False'")
    p.add_argument("--ref_repo", default="", metavar="DIR",
                   help="speed part: also run the trainer of another checkout of this repository (e.g. an older "
                        "commit: git archive COMMIT | tar -x -C DIR), alternating with this tree's, --repeats times "
                        "each, on the same data; the table shows both and their ratio")
    p.add_argument("--repeats", type=int, default=1, help="speed part: runs of our trainer per modality (alternating "
                   "with --ref_repo's); the figures are the medians over runs")
    p.add_argument("--skip_ultra", action="store_true", help="speed part: leave Ultralytics out (e.g. old vs new)")
    p.add_argument("--data_variants", nargs="*", default=[], metavar="NAME:KEY=VALUE;...",
                   help="data part: extra timings of our loader on the first modality with these config overrides, "
                        "to see where the workers' time goes, e.g. 'no_hsv:HSV_H=0;HSV_S=0;HSV_V=0' "
                        "'workers16:NUM_WORKERS=16'")
    p.add_argument("--speed_val_stride", type=int, default=20, help="keep every k-th val frame in the speed part")
    p.add_argument("--mosaic_prob", type=float, default=0.5)
    p.add_argument("--tta_epochs", type=int, default=20, help="schedule length of the time-to-accuracy runs")
    p.add_argument("--tta_batch", type=int, default=16)
    p.add_argument("--tta_target", type=float, default=0.9, help="mAP50 to reach")
    p.add_argument("--eval_passes", type=int, default=4, help="eval part: passes per evaluator, at least 2 (1 cold, "
                   "the rest warm; their median is the warm figure)")
    p.add_argument("--data_batches", type=int, default=48, help="batches timed in the data part")
    p.add_argument("--ceiling_iters", type=int, default=40, help="timed steps in the ceiling part")
    add_run_args(p, "bench_train", "generated data (default data/bench_learning[_quick], shared)")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: 4 sequences x 8 frames at 96x64, phi n, "
                   "input 64, batches 8/4, 1 epoch per phase, no workers")
    a = p.parse_args(argv)
    apply_quick(a, p, dict(sequences=4, frames=8, height=64, width=96, phi="n", imgsz=64, workers=0, frozen_batch=8,
                           unfrozen_batch=4, speed_epochs=1, speed_val_stride=2, tta_epochs=2, tta_batch=8,
                           data_batches=3, ceiling_iters=2, device="cpu", gen_workers=min(a.gen_workers, 2),
                           parts="all"))
    a.parts = list(PARTS) if a.parts == "all" else [x.strip() for x in a.parts.split(",") if x.strip()]
    unknown = set(a.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    a.modalities = [m.strip() for m in a.modalities.split(",") if m.strip()]
    for name in ("ours_variants", "data_variants"):
        try:
            setattr(a, name, [_parse_variant(v) for v in getattr(a, name)])
        except (IndexError, ValueError, SyntaxError) as e:
            p.error(f"--{name}: NAME:KEY=VALUE;KEY=VALUE with Python literals ({e})")
    a.data_root = a.data_root or str(REPO / "data" / ("bench_learning_quick" if a.quick else "bench_learning"))
    return a


def _parse_variant(text: str) -> tuple[str, dict]:
    """'NAME:KEY=VALUE;KEY=VALUE' (Python literals) -> (NAME, {KEY: value})."""
    name, sets = text.split(":", 1)
    return name, {k.strip(): ast.literal_eval(x.strip()) for k, x in (kv.split("=", 1) for kv in sets.split(";") if kv)}


class Bench:
    """State shared by the parts: data, indexes, logs, the GPU sampler and the JSON result."""

    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.out = Path(a.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.logs = work_dir(a.out, a.runs_dir)
        self.result: dict = {"bench": "train", "args": vars(a), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.sampler = GpuSampler(int(a.device.split(":")[1]) if ":" in a.device else 0)
        if a.device.startswith("cuda"):
            self.sampler.start()
        self.result["gpu_sampler"] = self.sampler.source
        self.split = ""
        self.indexes: dict = {}
        self.weights: dict = {}  # trainer -> (weights path, where from)

    def save(self) -> None:
        """Write the JSON result as it stands."""
        self.out.write_text(json.dumps(self.result, indent=1, default=str))

    def prepare_data(self) -> None:
        """Generate (or reuse) the set and write the split folder."""
        a = self.a
        print(f"data: {a.sequences} sequences x {a.frames} frames at {a.width}x{a.height} in {a.data_root} ...",
              flush=True)
        manifest, gen_s = ensure_generated(a.data_root, a.sequences, a.frames, (a.height, a.width), a.seed,
                                           a.gen_workers)
        self.split = write_split(a.data_root, manifest["ids"])
        self.result["data"] = {"root": a.data_root, "split": self.split, "generate_s": gen_s, "ids": manifest["ids"],
                               "totals": manifest["totals"]}
        print(f"  {'generated in %.0f s' % gen_s if gen_s else 'reused'}; split {self.split}", flush=True)
        self.save()

    def index(self, modality: str, val_stride: int = 1):
        """Our frame index of modality (cached per val stride)."""
        from datasets.fred_index import build_fred_index
        key = (modality, val_stride)
        if key not in self.indexes:
            self.indexes[key] = build_fred_index(self.a.data_root, modality, split=self.split,
                                                 val_frame_stride=val_stride)
        return self.indexes[key]

    def ultra_data(self, modality: str, val_stride: int = 1) -> str:
        """data.yaml of the Ultralytics copy of the same frames."""
        idx = self.index(modality, val_stride)
        suffix = "" if val_stride == 1 else f"_vs{val_stride}"
        return build_ultra_dataset(idx.train, idx.val, f"{self.a.data_root}_ultra_{modality}{suffix}")

    def ours_sets(self, **extra) -> dict:
        """Config overrides common to our runs."""
        a = self.a
        return {"INPUT_SHAPE": [a.imgsz, a.imgsz], "ARCH": a.arch, "NUM_WORKERS": a.workers,
                "EVAL_WORKERS": self.eval_workers(), "MOSAIC": a.mosaic_prob > 0,
                "MOSAIC_PROB": a.mosaic_prob, "MIXUP": False, "FP16": True, "SEED": a.seed, **extra}

    def eval_workers(self) -> int:
        """EVAL_WORKERS of our runs: the default, but no more than --workers."""
        import config_fred

        return min(self.a.workers, config_fred.EVAL_WORKERS)

    def run_ours(self, tag: str, modality: str, sets: dict, no_eval_map: bool = False,
                 stop_at_map50: float = 0.0, repo: Path = REPO) -> dict:
        """Our trainer (the one in `repo`) in a subprocess, results.csv rows stamped as they appear."""
        save_dir = self.logs / f"ours_{tag}"
        shutil.rmtree(save_dir, ignore_errors=True)  # an earlier run's results.csv would be read as this one's
        cmd = ours_command(modality, self.a.data_root, self.split, self.a.phi, self.a.device, str(save_dir), sets,
                           no_eval_map=no_eval_map, repo=repo)
        watcher = CsvWatcher(str(save_dir / "loss_*" / "results.csv"))

        def reached() -> bool:
            return any(_num(r.get("mAP50")) is not None and _num(r.get("mAP50")) >= stop_at_map50
                       for r in watcher.rows)

        log = self.logs / f"ours_{tag}.log"
        print(f"  ours {tag} ... (log {log})", flush=True)
        run = run_logged(cmd, str(log), watchers=[watcher], timeout=self.a.timeout or None,
                         stop_when=reached if stop_at_map50 else None)
        summary = final_json_line(str(log))
        ok = (run["rc"] == 0 and summary is not None) or (run["stopped"] and watcher.rows)
        if not ok:
            print(f"  ours {tag} FAILED (rc {run['rc']}):\n{log_tail(str(log))}", flush=True)
        rows = [{**r, "stamp": s} for r, s in zip(watcher.rows, watcher.stamps)]
        run_dirs = sorted(save_dir.glob("loss_*"))
        return {"ok": bool(ok), **run, "summary": summary, "rows": rows,
                "run_dir": str(run_dirs[-1]) if run_dirs else None}

    def run_ultra(self, tag: str, mode: str, data_yaml: str, extra: list[str]) -> dict:
        """bench/ultra_ref.py in a subprocess; its JSON result."""
        out_json = self.logs / f"ultra_{tag}.json"
        cmd = [sys.executable, str(REPO / "bench" / "ultra_ref.py"), mode, "--data", data_yaml, "--out",
               str(out_json), "--phi", self.a.phi, "--imgsz", str(self.a.imgsz), "--workers", str(self.a.workers),
               "--device", ultra_device(self.a.device), "--mosaic", str(self.a.mosaic_prob), "--arch", self.a.arch,
               "--project", str(self.logs / "ultra_runs"), "--name", tag, "--seed", str(self.a.seed), *extra]
        log = self.logs / f"ultra_{tag}.log"
        print(f"  Ultralytics {tag} ... (log {log})", flush=True)
        if out_json.exists():
            out_json.unlink()
        run = run_logged(cmd, str(log), env={"YOLO_OFFLINE": "1"}, timeout=self.a.timeout or None)
        if run["rc"] != 0 or not out_json.is_file():
            print(f"  Ultralytics {tag} FAILED (rc {run['rc']}):\n{log_tail(str(log))}", flush=True)
            return {"ok": False, **run}
        return {"ok": True, **run, "result": json.loads(out_json.read_text())}


def _num(v: object) -> float | None:
    """A results.csv cell as a float (None when empty)."""
    try:
        return float(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------------ speed


def part_speed(b: Bench) -> dict:
    """Per modality: ours frozen + unfrozen in one run, Ultralytics one run per phase."""
    a, k = b.a, b.a.speed_epochs
    out: dict = {}
    for modality in a.modalities:
        print(f"[speed] {modality}", flush=True)
        ultra = not a.skip_ultra and modality != "fusion"  # Ultralytics trains on one modality
        data_yaml = b.ultra_data(modality, a.speed_val_stride) if ultra else ""
        idx = b.index(modality, a.speed_val_stride)
        entry: dict = {"train_frames": len(idx.train), "val_frames": len(idx.val)}
        sets = b.ours_sets(FREEZE_TRAIN=True, FREEZE_EPOCH=k, UNFREEZE_EPOCH=2 * k, FREEZE_BATCH_SIZE=a.frozen_batch,
                           UNFREEZE_BATCH_SIZE=a.unfrozen_batch, SPECIAL_AUG_RATIO=1.0, EVAL_PERIOD=2 * k,
                           SAVE_PERIOD=2 * k, VAL_FRAME_STRIDE=a.speed_val_stride)
        runs: dict = {"ours": [], "ref": []}
        for rep in range(a.repeats):
            for who, repo in (("ours", REPO), ("ref", a.ref_repo)) if a.ref_repo else (("ours", REPO),):
                tag = f"speed_{modality}" + ("_ref" if who == "ref" else "") + (f"_{rep}" if a.repeats > 1 else "")
                run = b.run_ours(tag, modality, sets, no_eval_map=True, repo=repo)
                runs[who].append({"run": _strip(run), "phases": _ours_phases(run, b.sampler)})
                entry[who] = _median_runs(runs[who])
                b.result.setdefault("speed", {})[modality] = entry
                b.save()
        ours = runs["ours"][0]["run"]
        for name, extra in a.ours_variants if modality == a.modalities[0] else ():
            v = b.run_ours(f"speed_{modality}_{name}", modality, {**sets, **extra}, no_eval_map=True)
            entry.setdefault("variants", {})[name] = {"sets": extra, "run": _strip(v),
                                                      "phases": _ours_phases(v, b.sampler)}
            b.save()
        if ours.get("run_dir") and modality == "event":
            b.weights.setdefault("ours", (str(Path(ours["run_dir"]) / "last.pth"), "speed run (barely trained)"))
        entry["ultralytics"] = {"phases": {}}
        for phase, batch, freeze in () if not ultra else (("frozen", a.frozen_batch, BACKBONE_LAYERS[a.arch]),
                                                              ("unfrozen", a.unfrozen_batch, 0)):
            u = b.run_ultra(f"speed_{modality}_{phase}", "train", data_yaml,
                            ["--epochs", str(k), "--batch", str(batch), "--freeze", str(freeze),
                             "--special_aug_ratio", "1.0", "--val_repeats", "0"])
            entry["ultralytics"]["phases"][phase] = _ultra_phase(u, b.sampler)
            if u["ok"] and phase == "unfrozen" and modality == "event":
                b.weights.setdefault("ultralytics", (u["result"]["best"], "speed run (barely trained)"))
            b.save()
        out[modality] = entry
    return out


def _median_runs(runs: list[dict]) -> dict:
    """Several runs of one trainer as one entry: per phase the median of each figure, the runs kept beside."""
    phases: dict = {}
    for phase in runs[0]["phases"]:
        per = [r["phases"].get(phase, {}) for r in runs]
        phases[phase] = {k: (median([p.get(k) for p in per]) if isinstance(v, (int, float)) else v)
                         for k, v in per[0].items()}
        phases[phase]["img_per_s_runs"] = [p.get("img_per_s") for p in per]
    return {"run": runs[0]["run"], "phases": phases, "runs": runs}


def _strip(run: dict) -> dict:
    """A run record without the bulky rows."""
    return {k: v for k, v in run.items() if k != "rows"}


def _ours_phases(run: dict, sampler: GpuSampler) -> dict:
    """Per phase, from our results.csv rows: median img/s and epoch s (first epoch of a phase left out), peak memory,
    GPU utilisation over [previous row's stamp, + this epoch's train seconds]."""
    phases: dict = {}
    rows = run.get("rows") or []
    for i, r in enumerate(rows):
        phases.setdefault(r.get("phase", "?"), []).append((i, r))
    out = {}
    for phase, items in phases.items():
        steady = items[1:] if len(items) > 1 else items
        windows = []
        for i, r in steady:
            if i > 0 and _num(r.get("epoch_s")):
                start = rows[i - 1]["stamp"]
                windows.append(sampler.window(start, start + _num(r["epoch_s"]) - 0.2))
        out[phase] = {"batch": int(_num(items[0][1].get("batch_size")) or 0), "epochs": len(items),
                      "img_per_s": median([_num(r.get("img_per_s")) for _, r in steady]),
                      "epoch_s": median([_num(r.get("epoch_s")) for _, r in steady]),
                      "peak_mem_GB": max((_num(r.get("gpu_mem_GB")) or 0.0) for _, r in items),
                      "data_wait_pct": median([_num(r.get("data_wait_pct")) for _, r in steady]),
                      **_merge_windows(windows),
                      "per_epoch_img_per_s": [_num(r.get("img_per_s")) for _, r in items]}
    return out


def _ultra_phase(u: dict, sampler: GpuSampler) -> dict:
    """One Ultralytics phase run: median img/s and train-loop seconds over epochs after the first, peak memory,
    GPU utilisation over those epochs' train loops."""
    if not u.get("ok"):
        return {"ok": False, "log": u.get("log")}
    res = u["result"]
    eps = res.get("epochs") or []
    steady = eps[1:] if len(eps) > 1 else eps
    windows = [sampler.window(e["start"], e["end"]) for e in steady]
    return {"ok": True, "batch": eps[0]["batch"] if eps else None, "epochs": len(eps),
            "img_per_s": median([e["img_per_s"] for e in steady]), "epoch_s": median([e["train_s"] for e in steady]),
            "peak_mem_GB": max((e.get("peak_reserved_GB") or 0.0) for e in eps) if eps else None,
            "peak_alloc_GB": max((e.get("peak_alloc_GB") or 0.0) for e in eps) if eps else None,
            **_merge_windows(windows), "per_epoch_img_per_s": [e["img_per_s"] for e in eps],
            "amp": res.get("amp"), "wall_s": u.get("wall_s"), "log": u.get("log")}


def _merge_windows(windows: list[dict]) -> dict:
    """Sample-weighted mean utilisation and max used memory of several sampler windows."""
    ws = [w for w in windows if w.get("samples")]
    if not ws:
        return {"gpu_util_pct": None, "gpu_used_peak_GB": None}
    n = sum(w["samples"] for w in ws)
    return {"gpu_util_pct": round(sum(w["gpu_util_pct"] * w["samples"] for w in ws) / n, 1),
            "gpu_used_peak_GB": max(w["gpu_used_peak_GB"] for w in ws)}


# ------------------------------------------------------------------------------------------------------ tta


def part_tta(b: Bench) -> dict:
    """Event frames, from scratch, mAP50 every epoch; wall time from launch until mAP50 >= target."""
    a, modality = b.a, "event"
    print(f"[tta] {modality}: up to {a.tta_epochs} epochs, batch {a.tta_batch}, target mAP50 {a.tta_target}",
          flush=True)
    data_yaml = b.ultra_data(modality)
    sets = b.ours_sets(FREEZE_TRAIN=False, UNFREEZE_EPOCH=a.tta_epochs, UNFREEZE_BATCH_SIZE=a.tta_batch,
                       SPECIAL_AUG_RATIO=0.7, EVAL_PERIOD=1, SAVE_PERIOD=a.tta_epochs, OPTIMIZER_TYPE="sgd",
                       INIT_LR=0.01, MIN_LR=0.0001, LR_DECAY_TYPE="cos")
    ours = b.run_ours("tta_event", modality, sets, stop_at_map50=a.tta_target)
    out = {"ours": _ours_tta(ours, a.tta_target)}
    if ours.get("run_dir"):
        best = Path(ours["run_dir"]) / "best.pth"
        b.weights["ours"] = (str(best if best.is_file() else Path(ours["run_dir"]) / "last.pth"), "tta run")
    b.result["tta"] = out
    b.save()
    u = b.run_ultra("tta_event", "train", data_yaml,
                    ["--epochs", str(a.tta_epochs), "--batch", str(a.tta_batch), "--special_aug_ratio", "0.7",
                     "--val_every_epoch", "1", "--stop_at_map50", str(a.tta_target), "--val_repeats", "0"])
    out["ultralytics"] = _ultra_tta(u, a.tta_target)
    if u.get("ok"):
        b.weights["ultralytics"] = (u["result"]["best"], "tta run")
    b.save()
    return out


def _ours_tta(run: dict, target: float) -> dict:
    """First epoch of ours with mAP50 >= target and its wall time from launch."""
    rows = run.get("rows") or []
    maps = [(int(_num(r["epoch"])), _num(r.get("mAP50")), r["stamp"]) for r in rows]
    hit = next(((e, m, s) for e, m, s in maps if m is not None and m >= target), None)
    return {"ok": run.get("ok"), "reached": hit is not None, "epoch": hit[0] if hit else None,
            "wall_s": round(hit[2] - run["start"], 1) if hit else None,
            "train_loop_s": round(sum(_num(r.get("epoch_s")) or 0.0 for r in rows[:hit[0]]), 1) if hit else None,
            "best_mAP50": max((m for _, m, _ in maps if m is not None), default=None), "epochs_run": len(rows),
            "mAP50_per_epoch": [m for _, m, _ in maps], "process_wall_s": run.get("wall_s"), "log": run.get("log")}


def _ultra_tta(u: dict, target: float) -> dict:
    """First epoch of Ultralytics with mAP50 >= target and its wall time from launch."""
    if not u.get("ok"):
        return {"ok": False, "log": u.get("log")}
    eps = u["result"].get("epochs") or []
    hit = next((e for e in eps if e.get("mAP50") is not None and e["mAP50"] >= target), None)
    return {"ok": True, "reached": hit is not None, "epoch": hit["epoch"] if hit else None,
            "wall_s": round(hit["wall"] - u["start"], 1) if hit else None,
            "train_loop_s": round(sum(e["train_s"] for e in eps[:hit["epoch"]]), 1) if hit else None,
            "best_mAP50": max((e["mAP50"] for e in eps if e.get("mAP50") is not None), default=None),
            "epochs_run": len(eps), "mAP50_per_epoch": [e.get("mAP50") for e in eps],
            "process_wall_s": u.get("wall_s"), "log": u.get("log")}


# ------------------------------------------------------------------------------------------------------ data


def part_data(b: Bench) -> dict:
    """Data-only img/s: our training loader alone (frame cache as configured) vs Ultralytics' dataloader alone."""
    import cv2
    import torch

    import config_fred
    from utils.config import config_dict

    a = b.a
    out: dict = {}
    device = torch.device(a.device)
    cv2.setNumThreads(0)  # as train_fred.main does
    for modality in a.modalities:
        print(f"[data] {modality}", flush=True)
        idx = b.index(modality, a.speed_val_stride)
        cfg = {**config_dict(config_fred), **b.ours_sets(), "DATA_ROOT": a.data_root}
        ours = _time_our_loader(cfg, idx.train, b, device)
        variants = {}
        for name, extra in a.data_variants if modality == a.modalities[0] else ():
            print(f"[data] {modality} [{name}]", flush=True)
            variants[name] = {**_time_our_loader({**cfg, **extra}, idx.train, b, device), "sets": extra}
        u = b.run_ultra(f"loader_{modality}", "loader", b.ultra_data(modality, a.speed_val_stride),
                        ["--batch", str(a.frozen_batch), "--batches", str(a.data_batches)])
        out[modality] = {"ours": ours, "variants": variants,
                         "ultralytics": u["result"] if u.get("ok") else {"ok": False, "log": u.get("log")}}
        b.result.setdefault("data_only", {})[modality] = out[modality]
        b.save()
    return out


def _time_our_loader(cfg: dict, frames: list, b: Bench, device) -> dict:
    """img/s of train_fred.py's training loader and frame cache built from cfg (batch --frozen_batch, special
    augmentation on)."""
    import torch

    import build_fred
    from build_fred import capped_workers

    a = b.a
    cache = build_fred.build_frame_cache(cfg, frames, "train", progress=False)
    dataset = build_fred.train_dataset(cfg, frames, str(b.logs), cache,
                                       hsv_in_batch=cfg["HSV_ON_GPU"] and device.type == "cuda")
    dataset.set_epoch(0, special_aug=True)
    sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(a.seed))
    workers = capped_workers(cfg["NUM_WORKERS"])
    loader = build_fred.make_loader(dataset, a.frozen_batch, sampler, workers, device, a.seed, ring=cfg["BATCH_RING"])
    timed = _time_loader(loader, a.data_batches)
    del loader
    unpinned = _time_loader(build_fred.make_loader(dataset, a.frozen_batch, sampler, workers, torch.device("cpu"),
                                                   a.seed), a.data_batches)
    n = 2 * a.frozen_batch
    for i in range(a.frozen_batch):  # warm: page cache, frame cache mapping
        dataset[i % len(dataset)]
    t0 = time.perf_counter()
    for i in range(n):
        dataset[i % len(dataset)]
    sample_ms = 1000 * (time.perf_counter() - t0) / n
    return {**timed, "batch": a.frozen_batch, "workers": workers, "frame_cache": cache is not None,
            "img_per_s_unpinned": unpinned["img_per_s"], "sample_ms_one_process": round(sample_ms, 3),
            "workers_bound_img_per_s": round(max(workers, 1) * 1000 / sample_ms, 1)}


def _time_loader(loader, batches: int, warmup: int = 5) -> dict:
    """img/s of a loader over `batches` batches after `warmup` (epochs chained; worker start-up excluded)."""
    stream = itertools.chain.from_iterable(iter(loader) for _ in itertools.count())
    for _ in range(warmup):
        next(stream)
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += next(stream)["images"].shape[0]
    seconds = time.perf_counter() - t0
    return {"images": n, "seconds": round(seconds, 3), "img_per_s": round(n / seconds, 1)}


# ------------------------------------------------------------------------------------------------------ ceiling


def part_ceiling(b: Bench) -> dict:
    """Our model + loss + step on GPU-resident random uint8 batches: frozen (batch 32) and unfrozen (batch 16)."""
    a = b.a
    out = {}
    for phase, batch in (("frozen", a.frozen_batch), ("unfrozen", a.unfrozen_batch)):
        print(f"[ceiling] {phase} batch {batch}", flush=True)
        out[phase] = {"batch": batch}
        for name, engine_step, graph in (("engine", True, False), ("engine_graph", True, True),
                                         ("bare", False, False)):
            if graph and not a.device.startswith("cuda"):
                continue
            out[phase][name] = measure_ceiling(a.phi, a.imgsz, batch, phase == "frozen", a.ceiling_iters,
                                               a.device, engine_step=engine_step, graph=graph, arch=a.arch)
        b.result["ceiling"] = out
        b.save()
    return out


@dataclass
class CeilingStep:
    """The trainer's step on one random uint8 batch kept on the device: what training.engine.train_one_epoch takes."""

    model: Any
    criterion: Any
    optimizer: Any
    scaler: Any
    ema: Any
    options: Any  # engine.StepOptions
    images: Any  # uint8 [B, 3, imgsz, imgsz] on the device
    targets: Any  # [2B, 6] (batch_idx, cls, cx, cy, w, h) in pixels, on the device
    device: Any
    loss_fn: Optional[Callable] = None  # a GraphedTrainLoss (add_cuda_graph), or None: the eager model + loss


def random_batch(batch: int, imgsz: int, device: Any) -> tuple[Any, Any]:
    """The ceiling's batch, the same on every call (its own seeded generator): uint8 images [B, 3, imgsz, imgsz] and
    2 boxes per image, 10-60 px, as targets [2B, 6] (batch_idx, cls 0, cx, cy, w, h in pixels), on device."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, imgsz, imgsz), dtype=torch.uint8, generator=g).to(device)
    n_boxes = 2 * batch
    wh = torch.rand(n_boxes, 2, generator=g) * 50 + 10
    cxy = torch.rand(n_boxes, 2, generator=g) * (imgsz - 80) + 40
    targets = torch.cat([torch.arange(n_boxes).remainder(batch).float()[:, None], torch.zeros(n_boxes, 1),
                         cxy, wh], 1).to(device)
    return images, targets


def build_ceiling_step(phi: str, imgsz: int, batch: int, frozen: bool, device_name: str, graph: bool = False,
                       arch: str = "yolov8", compile_backend: str = "") -> CeilingStep:
    """The trainer's step pieces for a YOLOv8 phi of architecture arch, 1 class, frozen or not: fused SGD, GradScaler,
    EMA, fp16 AMP and channels_last on CUDA, random_batch(); graph: with add_cuda_graph(); compile_backend: the step
    calls the model through speed.compiled.compile_model with that torch.compile backend (COMPILE_MODEL)."""
    import torch

    from nets import build_model, freeze_backbone
    from nets.loss import DetectionLoss
    from training import engine
    from training.ema import ModelEMA
    from training.optim import build_optimizer

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(phi, 1, arch=arch).to(device, memory_format=torch.channels_last if cuda
                                                else torch.contiguous_format)
    optimizer = build_optimizer(model, "sgd", 0.01, 0.937, 5e-4, fused=cuda)
    freeze_backbone(model, frozen)
    model.train()
    criterion = DetectionLoss(1, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)
    amp_dtype = torch.float16 if cuda else None
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 16 if cuda else 1.0, enabled=True)
    ema = ModelEMA(model)
    images, targets = random_batch(batch, imgsz, device)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    options = engine.StepOptions(log_interval=50, nan_patience=100, amp_dtype=amp_dtype, grad_clip=10.0,
                                 channels_last=cuda)
    if compile_backend:
        from speed.compiled import compile_model
        model = compile_model(model, compile_backend)
    step = CeilingStep(model, criterion, optimizer, scaler, ema, options, images, targets, device)
    if graph:
        add_cuda_graph(step)
    return step


def add_cuda_graph(step: CeilingStep) -> None:
    """Give step the trainer's CUDA-graphed forward/backward of model + loss (CUDA_GRAPH), for its batch shape."""
    import torch

    import config_fred
    from speed.cuda_graph import GraphedTrainLoss

    sample = torch.empty(step.images.shape, device=step.device, memory_format=torch.channels_last)
    # rows as the trainer sizes them (build_fred.graph_targets_per_image) for Mosaic samples of frames with at most
    # 2 drones, random_batch's count per image
    per_image = min(config_fred.CUDA_GRAPH_TARGETS_PER_IMAGE, 4 * 2)
    step.loss_fn = GraphedTrainLoss(step.model, step.criterion, sample, sample.shape[0] * per_image,
                                    step.options.amp_dtype)


def engine_steps(step: CeilingStep, n: int, loss_fn: Optional[Callable] = None, ema: Any = None,
                 scaler: Any = None) -> dict:
    """n steps of training.engine.train_one_epoch on step's batch (learning rate 0.01); loss_fn, ema and scaler, when
    given, replace step's (e.g. wrappers that mark profiler ranges). Returns train_one_epoch's statistics."""
    from training import engine

    return engine.train_one_epoch(step.model, ema or step.ema, step.criterion, step.optimizer, scaler or step.scaler,
                                  [{"images": step.images, "targets": step.targets}] * n, step.device,
                                  lambda i: 0.01, step.options, show_progress=False, loss_fn=loss_fn or step.loss_fn)


def measure_ceiling(phi: str, imgsz: int, batch: int, frozen: bool, iters: int, device_name: str,
                    engine_step: bool, graph: bool = False, warmup: int = 10, arch: str = "yolov8") -> dict:
    """img/s and peak memory of training steps on one random batch kept on the device (fp16 AMP on CUDA) of a
    YOLOv8 phi of architecture arch; graph: the engine step with the model's and loss's forward/backward replayed
    from a CUDA graph (CUDA_GRAPH)."""
    import torch

    from nets.loss import total_loss

    s = build_ceiling_step(phi, imgsz, batch, frozen, device_name, graph=graph, arch=arch)
    device, cuda = s.device, s.device.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    amp_dtype = s.options.amp_dtype
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def run_engine(n: int) -> float:
        return engine_steps(s, n)["img_per_s"]

    def run_bare(n: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            x = s.images.contiguous(memory_format=fmt).float().div_(255.0)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                parts = s.criterion(s.model(x), s.targets, (imgsz, imgsz))
            s.scaler.scale(total_loss(parts, s.criterion.weight_dict, batch)).backward()
            s.scaler.step(s.optimizer)
            s.scaler.update()
            s.optimizer.zero_grad(set_to_none=True)
        sync()
        return n * batch / (time.perf_counter() - t0)

    step = run_engine if engine_step else run_bare
    step(warmup)
    img_per_s = step(iters)
    peak = torch.cuda.max_memory_reserved(device) / 1e9 if cuda else 0.0
    return {"img_per_s": round(img_per_s, 1), "peak_mem_GB": round(peak, 2), "iters": iters, "amp": cuda,
            "channels_last": cuda}


# ------------------------------------------------------------------------------------------------------ eval


def part_eval(b: Bench) -> dict:
    """Evaluation time on the same full event val set: eval_fred.py's run() vs Ultralytics val, cold and warm."""
    import contextlib
    import io

    import eval_fred
    from build_fred import capped_workers

    a = b.a
    out: dict = {}
    if "ours" not in b.weights or "ultralytics" not in b.weights:
        found = _weights_from_logs(b)
        for k, v in found.items():
            b.weights.setdefault(k, v)
    idx = b.index("event")
    out["val_frames"] = len(idx.val)
    eval_workers = capped_workers(b.eval_workers())  # what our runs start
    if "ours" in b.weights:
        path, origin = b.weights["ours"]
        print(f"[eval] ours: {path} ({origin})", flush=True)
        runs = []
        for _ in range(max(2, a.eval_passes)):
            args = eval_fred.parse_args(["--modality", "event", "--weights", path, "--data_root", a.data_root,
                                         "--split", b.split, "--device", a.device, "--batch", "32", "--workers",
                                         str(eval_workers), "--set", f"INPUT_SHAPE={[a.imgsz, a.imgsz]}"])
            captured = io.StringIO()
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                    metrics = eval_fred.run(args)
            finally:
                with open(b.logs / "ours_eval_event.log", "a") as f:
                    f.write(captured.getvalue())
            seconds = time.perf_counter() - t0
            runs.append({"wall_s": round(seconds, 3), "img_per_s": round(metrics["images"] / seconds, 1),
                         "ms_per_image": round(metrics["ms_per_image"], 3), "mAP50": metrics["mAP50"],
                         "mAP50_95": metrics["mAP50_95"], "images": metrics["images"]})
        out["ours"] = {"weights": path, "from": origin, "workers": eval_workers, "runs": runs,
                       "profile": _profile_eval(args, b)}
    else:
        out["ours"] = {"ok": False, "why": "no weights: run the speed or tta part first"}
    b.result["eval"] = out
    b.save()
    if "ultralytics" in b.weights:
        path, origin = b.weights["ultralytics"]
        print(f"[eval] Ultralytics: {path} ({origin})", flush=True)
        by_workers = {}
        for workers in sorted({a.workers, eval_workers}):  # ours runs with EVAL_WORKERS
            u = b.run_ultra(f"val_event_w{workers}", "val", b.ultra_data("event"),
                            ["--weights", path, "--val_repeats", str(max(2, a.eval_passes)), "--val_batch", "32",
                             "--workers", str(workers)])
            by_workers[workers] = ({"weights": path, "from": origin, "workers": workers, **u["result"]}
                                   if u.get("ok") else {"ok": False, "log": u.get("log")})
        done = [v for v in by_workers.values() if v.get("runs")]
        out["ultralytics"] = (min(done, key=lambda v: warm_seconds(v["runs"])) if done  # its faster setting
                              else next(iter(by_workers.values())))
        out["ultralytics_by_workers"] = by_workers
    else:
        out["ultralytics"] = {"ok": False, "why": "no weights: run the speed or tta part first"}
    b.save()
    return out


def warm_seconds(runs: list[dict]) -> float:
    """Median wall seconds of an evaluator's warm passes (all but the first; the only one if there is one)."""
    return median([r["wall_s"] for r in runs[1:] or runs])


def _profile_eval(args, b: Bench, top: int = 25) -> list[list]:
    """One more, profiled pass of eval_fred.run(args): [function, calls, own s, cumulative s] of the main process's
    top entries by cumulative time (where the warm pass's time goes beside the model)."""
    import contextlib
    import cProfile
    import io
    import pstats

    import eval_fred

    profiler = cProfile.Profile()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        profiler.runcall(eval_fred.run, args)
    stats = pstats.Stats(profiler).stats
    rows = sorted(((f"{Path(f).name}:{line}({name})", calls, tt, ct) for (f, line, name), (_, calls, tt, ct, _)
                   in stats.items()), key=lambda r: -r[3])[:top]
    with open(b.logs / "ours_eval_profile.txt", "w") as f:
        f.writelines(f"{ct:8.3f} {tt:8.3f} {calls:8d} {fn}\n" for fn, calls, tt, ct in rows)
    return [[fn, calls, round(tt, 4), round(ct, 4)] for fn, calls, tt, ct in rows]


def _weights_from_logs(b: Bench) -> dict:
    """Weights left by an earlier bench_train run with the same --out (tta first, then speed)."""
    found = {}
    for tag, origin in (("tta_event", "earlier tta run"), ("speed_event", "earlier speed run (barely trained)")):
        runs = sorted((b.logs / f"ours_{tag}").glob("loss_*"))
        for r in reversed(runs):
            for name in ("best.pth", "last.pth"):
                if (r / name).is_file() and "ours" not in found:
                    found["ours"] = (str(r / name), origin)
    for tag, origin in (("tta_event", "earlier tta run"),
                        ("speed_event_unfrozen", "earlier speed run (barely trained)")):
        for name in ("best.pt", "last.pt"):
            p = b.logs / "ultra_runs" / tag / "weights" / name
            if p.is_file() and "ultralytics" not in found:
                found["ultralytics"] = (str(p), origin)
    return found


# ------------------------------------------------------------------------------------------------------ report


def report(b: Bench) -> None:
    """Print the tables and the issue's targets (met / NOT met)."""
    r, a = b.result, b.a
    targets = []
    speed = r.get("speed", {})
    ceiling = r.get("ceiling", {})
    if speed:
        rows = []
        for modality, e in speed.items():
            for phase in ("frozen", "unfrozen"):
                o = e["ours"]["phases"].get(phase, {})
                u = e["ultralytics"]["phases"].get(phase, {})
                ratio = (o["img_per_s"] / u["img_per_s"]) if o.get("img_per_s") and u.get("img_per_s") else None
                rows.append([modality, phase, o.get("batch"), o.get("img_per_s"), u.get("img_per_s"), ratio,
                             o.get("epoch_s"), u.get("epoch_s"), o.get("peak_mem_GB"), u.get("peak_mem_GB"),
                             o.get("gpu_util_pct"), u.get("gpu_util_pct"), o.get("data_wait_pct")])
                if phase == "unfrozen" and ratio is not None:
                    targets.append((f"{modality} unfrozen img/s >= 1.8x Ultralytics", ratio >= 1.8, f"{ratio:.2f}x"))
                c = ceiling.get(phase, {})
                ceil = c.get("engine_graph", c.get("engine", {})).get("img_per_s")  # the trainer's own settings
                if phase == "unfrozen" and ceil and o.get("img_per_s"):
                    frac = o["img_per_s"] / ceil
                    targets.append((f"{modality} unfrozen img/s >= 0.9x our model+loss ceiling", frac >= 0.9,
                                    f"{frac:.2f}x"))
            for phase in ("frozen", "unfrozen") if "ref" in e else ():
                o, f = e["ours"]["phases"].get(phase, {}), e["ref"]["phases"].get(phase, {})
                if o.get("img_per_s") and f.get("img_per_s"):
                    rel = o["img_per_s"] / f["img_per_s"]
                    targets.append((f"{modality} {phase} img/s, this tree / --ref_repo (median of "
                                    f"{o.get('img_per_s_runs')} / {f.get('img_per_s_runs')}) >= 0.98",
                                    rel >= 0.98, f"{rel:.3f}x"))
            named = [(f"{modality} [{name}]", v) for name, v in e.get("variants", {}).items()]
            named += [(f"{modality} [ref_repo]", e["ref"])] if "ref" in e else []
            for label, v in named:
                for phase in ("frozen", "unfrozen"):
                    o = v["phases"].get(phase, {})
                    u = e["ultralytics"]["phases"].get(phase, {})
                    ratio = (o["img_per_s"] / u["img_per_s"]) if o.get("img_per_s") and u.get("img_per_s") else None
                    rows.append([label, phase, o.get("batch"), o.get("img_per_s"), u.get("img_per_s"),
                                 ratio, o.get("epoch_s"), u.get("epoch_s"), o.get("peak_mem_GB"), u.get("peak_mem_GB"),
                                 o.get("gpu_util_pct"), u.get("gpu_util_pct"), o.get("data_wait_pct")])
        print_table(f"Training speed (YOLOv8{a.phi}, {a.imgsz}, AMP fp16, {a.workers} workers, steady epochs)",
                    ["modality", "phase", "batch", "ours img/s", "Ultra img/s", "ours/Ultra", "ours epoch s",
                     "Ultra epoch s", "ours peak GB", "Ultra peak GB", "ours GPU %", "Ultra GPU %",
                     "ours data wait %"], rows)
        ev, rg = (speed.get("event", {}).get("ours", {}).get("phases", {}).get("unfrozen", {}),
                  speed.get("rgb", {}).get("ours", {}).get("phases", {}).get("unfrozen", {}))
        if ev.get("img_per_s") and rg.get("img_per_s"):
            frac = ev["img_per_s"] / rg["img_per_s"]
            targets.append(("event (PNG) as fast as RGB (JPEG), unfrozen, within 5%", frac >= 0.95, f"{frac:.2f}x"))
        fu = speed.get("fusion", {}).get("ours", {}).get("phases", {})
        for phase in ("frozen", "unfrozen") if ev.get("img_per_s") else ():
            evp = speed["event"]["ours"]["phases"].get(phase, {})
            if fu.get(phase, {}).get("img_per_s") and evp.get("img_per_s"):
                frac = fu[phase]["img_per_s"] / evp["img_per_s"]
                targets.append((f"fusion {phase} img/s >= 0.9x event (issue 18, early fusion)", frac >= 0.9,
                                f"{frac:.2f}x"))
    if ceiling:
        print_table(f"Our model+loss ceiling on GPU-resident data ({a.arch}, fp16 AMP, channels_last)",
                    ["phase", "batch", "engine step img/s", "engine + CUDA graph img/s", "bare step img/s",
                     "peak GB (engine)", "peak GB (graph)"],
                    [[p, c["batch"], c["engine"]["img_per_s"], c.get("engine_graph", {}).get("img_per_s"),
                      c["bare"]["img_per_s"], c["engine"]["peak_mem_GB"], c.get("engine_graph", {}).get("peak_mem_GB")]
                     for p, c in ceiling.items()])
    data = r.get("data_only", {})
    if data:
        cols = ("img_per_s", "img_per_s_unpinned", "sample_ms_one_process", "workers_bound_img_per_s")
        rows = [[m, *(e["ours"].get(c) for c in cols), e["ultralytics"].get("img_per_s")] for m, e in data.items()]
        rows += [[f"{m} [{name}]", *(v.get(c) for c in cols), "-"] for m, e in data.items()
                 for name, v in e.get("variants", {}).items()]
        print_table(f"Data only (training loader alone, batch {a.frozen_batch}, mosaic {a.mosaic_prob}; workers "
                    "bound = workers x one process's sample rate: far above img/s, the transfer to the main "
                    "process is the limit)", ["modality", "ours img/s", "ours unpinned img/s", "ours sample ms",
                                              "ours workers bound img/s", "Ultralytics img/s"], rows)
    ev = r.get("eval", {})
    if ev:
        rows = []
        entries = [("ours (eval_fred.py run)", ev.get("ours", {}))]
        entries += [("Ultralytics val fp16", e) for e in (ev.get("ultralytics_by_workers") or
                                                          {0: ev.get("ultralytics", {})}).values()]
        for name, e in entries:
            runs = e.get("runs") or []
            name = f"{name}, {e['workers']} workers" if e.get("workers") is not None else name
            if runs:
                warm = runs[1:] or runs
                ms = [r.get("ms_per_image") or sum(v for k, v in (r.get("speed_ms_per_image") or {}).items()
                                                   if k != "loss") or None for r in warm]
                seconds = warm_seconds(runs)
                rows.append([name, runs[-1].get("images"), runs[0]["wall_s"], seconds,
                             f"{min(r['wall_s'] for r in warm)}-{max(r['wall_s'] for r in warm)}",
                             round(runs[-1]["images"] / seconds, 1), median(ms), runs[-1].get("mAP50"),
                             e.get("from")])
            else:
                rows.append([name, "-", "FAILED/none", "-", "-", "-", "-", "-", e.get("why")])
        print_table(f"Evaluation of the same {ev.get('val_frames')} event val frames (first pass cold; warm: "
                    "median of the other passes, and their range)",
                    ["evaluator", "images", "cold s", "warm s", "warm range s", "warm img/s", "ms/img (model+NMS)",
                     "mAP50", "weights"], rows)
        o, u = ev.get("ours", {}).get("runs"), ev.get("ultralytics", {}).get("runs")
        if o and u:
            frac = warm_seconds(u) / warm_seconds(o)
            targets.append(("evaluation >= 2x faster than Ultralytics val (warm)", frac >= 2.0, f"{frac:.2f}x"))
    tta = r.get("tta", {})
    if tta:
        rows = [[name, t.get("reached"), t.get("epoch"), t.get("wall_s"), t.get("train_loop_s"), t.get("best_mAP50"),
                 t.get("epochs_run")] for name, t in (("ours", tta.get("ours", {})),
                                                      ("Ultralytics", tta.get("ultralytics", {})))]
        print_table(f"Time to mAP50 >= {a.tta_target} on held-out event sequences (batch {a.tta_batch}, "
                    f"{a.tta_epochs}-epoch schedule)",
                    ["trainer", "reached", "epoch", "wall s from launch", "train-loop s", "best mAP50",
                     "epochs run"], rows)
        o, u = tta.get("ours", {}), tta.get("ultralytics", {})
        if o.get("wall_s") and u.get("wall_s"):
            targets.append(("time to accuracy: ours faster than Ultralytics", o["wall_s"] < u["wall_s"],
                            f"{u['wall_s'] / o['wall_s']:.2f}x"))
    if targets:
        print_table("Issue 6 targets", ["target", "met", "value"],
                    [[t, "met" if ok else "NOT met", v] for t, ok, v in targets])
    r["targets"] = [{"target": t, "met": ok, "value": v} for t, ok, v in targets]


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts in order; print the tables; write the JSON."""
    a = parse_args(argv)
    exit_on_sigterm()
    b = Bench(a)
    steps = {"speed": part_speed, "tta": part_tta, "data": part_data, "ceiling": part_ceiling, "eval": part_eval}
    failures = []
    try:
        b.prepare_data()
        for part in PARTS:  # fixed order: GPU work of this process (data, ceiling, eval) after the trainers'
            if part in a.parts:
                t0 = time.perf_counter()
                try:
                    steps[part](b)
                except Exception as e:  # a failed part is reported, the others still run
                    import traceback
                    traceback.print_exc()
                    failures.append(part)
                    b.result.setdefault("errors", {})[part] = f"{type(e).__name__}: {e}"
                b.result.setdefault("part_seconds", {})[part] = round(time.perf_counter() - t0, 1)
                b.save()
    finally:
        b.sampler.stop()
        report(b)
        b.result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        b.save()
        copied = copy_logs(b.logs, a.out)
        print(f"parts: {b.result.get('part_seconds')}; results: {b.out}; runs: {b.logs}"
              + (f"; logs copied to {copied}" if copied else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
