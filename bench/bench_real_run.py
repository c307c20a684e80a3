"""How long a full run on real FRED takes, and how much GPU memory it needs: measured epochs, projected run.

Trains train_fred.py with the config's real-run defaults (YOLOv8s, 640, FP16, batch 32 frozen / 16 unfrozen,
Mosaic 0.5, 8 workers, frame cache, CUDA graph) on a generated FRED-shaped set at 1280x720 for a short schedule:
FREEZE_EPOCH=3 of UNFREEZE_EPOCH=6 with EVAL_PERIOD=3, so epochs 2 and 5 are plain epochs (train + val loss) of each
phase after its first, and epochs 3 and 6 add the COCO mAP pass. From results.csv it takes per phase:
  train img/s      the train loop's img/s (results.csv img_per_s)
  val s/frame      (epoch_s - train frames / train img/s) / val frames, of the plain epoch: the per-epoch val-loss pass
  eval s/frame     (epoch_s of the eval epoch - epoch_s of the plain epoch) / val frames: the extra of the mAP pass
  peak GB          torch.cuda.max_memory_reserved of the phase's epochs (results.csv gpu_mem_GB)
and projects the tuning note's run: --train_frames frames (48,335 RGB / 50,119 event in the note), val frames in
the canonical split's proportion (47 test / 184 train sequences), 30 frozen + 120 unfrozen epochs, mAP every 15.
Index and frame-cache build are reported separately (wall time before the first epoch, from the log).

    python bench/bench_real_run.py --modalities rgb,event --out $OUT/bench_real_run.json      # GPU, ~6 minutes
    python bench/bench_real_run.py --quick                                                   # CPU smoke test
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ultra_ref import (add_run_args, apply_quick, copy_logs, ensure_generated, final_json_line,  # noqa: E402
                             log_tail, ours_command, print_table, run_logged, work_dir, write_split)

NOTE_TRAIN_FRAMES = {"rgb": 48335, "event": 50119}  # the tuning note's data set sizes
CANONICAL_VAL_PER_TRAIN = 47 / 184  # canonical split: 47 test sequences for 184 train sequences
NOTE_SCHEDULE = (30, 150, 15)  # frozen epochs, total epochs, EVAL_PERIOD


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line; --quick replaces the sizes by a CPU smoke-test set."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modalities", default="rgb,event")
    p.add_argument("--sequences", type=int, default=60)
    p.add_argument("--frames", type=int, default=100, help="RGB frames per sequence (event: a few more)")
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--phi", default="s")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides (Python literals)")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: 4 sequences x 8 frames at 96x64, phi n")
    add_run_args(p, "bench_real_run", "generated FRED root (default: bench/out/real_run_data)")
    a = p.parse_args(argv)
    apply_quick(a, p, {"sequences": 4, "frames": 8, "height": 64, "width": 96, "phi": "n"})
    return a


def read_rows(run_dir: Path) -> dict[int, dict]:
    """results.csv rows by epoch."""
    with open(run_dir / "results.csv") as f:
        return {int(r["epoch"]): r for r in csv.DictReader(f)}


def phase_figures(rows: dict[int, dict], plain: int, with_eval: int, n_train: int, n_val: int) -> dict:
    """Per-phase figures from a plain epoch and an epoch that also ran the mAP pass (see the module docstring)."""
    batch = int(rows[plain]["batch_size"])
    train_img_s = float(rows[plain]["img_per_s"])
    steps = n_train // batch  # training loaders drop the incomplete last batch
    train_s = steps * batch / train_img_s
    val_s = max(0.0, float(rows[plain]["epoch_s"]) - train_s)
    eval_extra = max(0.0, float(rows[with_eval]["epoch_s"]) - float(rows[plain]["epoch_s"]))
    peak = max(float(rows[e]["gpu_mem_GB"] or 0) for e in (plain, with_eval))
    return {"batch": batch, "train_img_s": train_img_s, "val_s_per_frame": val_s / n_val,
            "eval_extra_s_per_frame": eval_extra / n_val, "peak_GB": peak,
            "epoch_s_measured": float(rows[plain]["epoch_s"])}


def project(frozen: dict, unfrozen: dict, n_train: int) -> dict:
    """The tuning note's run on n_train frames: hours per phase, for the mAP passes and in all."""
    n_val = round(n_train * CANONICAL_VAL_PER_TRAIN)
    n_frozen, total, period = NOTE_SCHEDULE

    def epoch_s(f: dict) -> float:
        return n_train / f["train_img_s"] + n_val * f["val_s_per_frame"]

    evals = total // period
    evals_frozen = n_frozen // period
    eval_s = (evals_frozen * frozen["eval_extra_s_per_frame"] + (evals - evals_frozen) *
              unfrozen["eval_extra_s_per_frame"]) * n_val
    frozen_h = n_frozen * epoch_s(frozen) / 3600
    unfrozen_h = (total - n_frozen) * epoch_s(unfrozen) / 3600
    return {"train_frames": n_train, "val_frames": n_val, "frozen_epoch_min": epoch_s(frozen) / 60,
            "unfrozen_epoch_min": epoch_s(unfrozen) / 60, "frozen_h": frozen_h, "unfrozen_h": unfrozen_h,
            "eval_h": eval_s / 3600, "total_h": frozen_h + unfrozen_h + eval_s / 3600}


def run_modality(a: argparse.Namespace, modality: str, data_root: str, split: str, runs: Path) -> dict:
    """One short run of our trainer; its figures and projection."""
    save_dir = runs / modality
    sets = {"FREEZE_EPOCH": 3, "UNFREEZE_EPOCH": 6, "EVAL_PERIOD": 3, "SAVE_PERIOD": 3, "SEED": a.seed}
    for item in a.set:
        key, value = item.split("=", 1)
        sets[key] = eval(value, {})  # noqa: S307 -- a bench's own command line
    if a.quick:
        sets.update({"INPUT_SHAPE": [64, 64], "NUM_WORKERS": 0, "EVAL_WORKERS": 0, "FREEZE_BATCH_SIZE": 4,
                     "UNFREEZE_BATCH_SIZE": 2})
    cmd = ours_command(modality, data_root, split, a.phi, a.device, str(save_dir), sets)
    log = runs / f"{modality}.log"
    started = time.time()
    res = run_logged(cmd, str(log), timeout=a.timeout or None)
    if res["rc"] != 0:
        raise RuntimeError(f"{modality} run failed (rc {res['rc']}):\n{log_tail(str(log))}")
    summary = final_json_line(str(log))
    run_dir = Path(summary["run_dir"])
    rows = read_rows(run_dir)
    text = log.read_text()
    n_train = int(text.split(f"{modality}: ", 1)[1].split(" train frames", 1)[0])
    n_val = int(text.split("train frames (", 1)[1].split("), ", 1)[1].split(" val frames", 1)[0])
    frozen = phase_figures(rows, 2, 3, n_train, n_val)
    unfrozen = phase_figures(rows, 5, 6, n_train, n_val)
    first_epoch_s = float(rows[1]["epoch_s"])
    setup_s = (res["wall_s"] - sum(float(r["epoch_s"]) for r in rows.values()))
    return {"modality": modality, "train_frames": n_train, "val_frames": n_val, "wall_s": res["wall_s"],
            "setup_and_exit_s": setup_s, "first_epoch_s": first_epoch_s, "frozen": frozen, "unfrozen": unfrozen,
            "projection": project(frozen, unfrozen, NOTE_TRAIN_FRAMES[modality]), "started": started}


def main(argv: list[str] | None = None) -> None:
    """Generate (or reuse) the set, run each modality, print the tables, write --out."""
    a = parse_args(argv)
    runs = work_dir(a.out, a.runs_dir)
    data_root = a.data_root or str(REPO / "bench" / "out" / ("real_run_quick" if a.quick else "real_run_data"))
    manifest, gen_s = ensure_generated(data_root, a.sequences, a.frames, (a.height, a.width), a.seed, a.gen_workers)
    split = write_split(data_root, manifest["ids"])
    out = {"args": vars(a), "generate_s": gen_s, "runs": []}
    try:
        import torch
        out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        out["device"] = "?"
    for modality in a.modalities.split(","):
        out["runs"].append(run_modality(a, modality, data_root, split, runs))
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
    rows = []
    for r in out["runs"]:
        for phase in ("frozen", "unfrozen"):
            f = r[phase]
            rows.append([r["modality"], phase, f["batch"], r["train_frames"], r["val_frames"],
                         f"{f['train_img_s']:.0f}", f"{f['val_s_per_frame'] * 1e3:.2f}",
                         f"{f['eval_extra_s_per_frame'] * 1e3:.2f}", f"{f['peak_GB']:.1f}"])
    print_table(f"measured on {out['device']} (generated {a.width}x{a.height}, YOLOv8{a.phi})",
                      ["modality", "phase", "batch", "train frames", "val frames", "train img/s", "val ms/frame",
                       "mAP pass ms/frame", "peak GB"], rows)
    rows = [[r["modality"], p["train_frames"], p["val_frames"], f"{p['frozen_epoch_min']:.1f}",
             f"{p['unfrozen_epoch_min']:.1f}", f"{p['frozen_h']:.2f}", f"{p['unfrozen_h']:.2f}", f"{p['eval_h']:.2f}",
             f"{p['total_h']:.2f}"] for r in out["runs"] for p in [r["projection"]]]
    print_table("projected: the tuning note's run (30 frozen + 120 unfrozen epochs, mAP every 15)",
                      ["modality", "train frames", "val frames", "frozen epoch min", "unfrozen epoch min",
                       "frozen h", "unfrozen h", "mAP passes h", "total h"], rows)
    copy_logs(runs, a.out)


if __name__ == "__main__":
    main()
