"""RGB+Event fusion bench (issue 18, "Measured"): RGB-only, event-only, early and mid fusion on FRED-hard.

The FRED-hard sample of bench_accuracy.py (tools.synthetic --profile hard, the same folder and defaults, reused when
it matches; val = the sequences in FRED's canonical test list), both modalities of the same sequences. Every config
trains our trainer in its own process with bench_accuracy's settings (bench_learning.ours_settings: one unfrozen
phase, same epochs, batch, augmentation and seed) at --imgsz, and its final weights are scored by OUR evaluator
(eval_fred.py --per_sequence) on its modality's val frames of the same sequences (a fused frame takes the
conditions of its event frame):

  rgb         --modality rgb
  event       --modality event
  early       --modality fusion, FUSION "early" (one network, 5-channel stem), from scratch
  mid         --modality fusion, FUSION "mid" (two backbones fused per level), from scratch
  early_warm  early, started from the best.pth of rgb and event (FUSION_RGB_WEIGHTS / FUSION_EVENT_WEIGHTS)
  mid_warm    mid, started from the same two checkpoints
  early_drop  early from scratch with FUSION_STREAM_DROPOUT 0.25 (a training sample loses its RGB frame or its
              events an eighth of the time each), so that it learns to use either sensor alone
  mid_drop    mid, the same
A warm config takes rgb's and event's best.pth from --out's merged JSON (or from this call, when they run in it
first); it refuses, before anything trains, when either is missing, failed, or its file is not on this machine.

Reported: mAP50, mAP50:95, AP_small, mAP50 per condition (night, rain, hovering, occluded, clutter, size buckets;
see bench_accuracy.py; clutter = a sequence whose background is not open sky; the JSON has per-background
subsets), train-loop
img/s, peak reserved GPU memory, and the issue's goals as met / NOT met (asserting nothing): each fusion config
above the better single modality by >= 2 points of mAP50:95; above both on night (RGB blind) and hovering (event
blind), mAP50; early fusion's img/s >= 0.9x event-only's on the same GPU in the same call.

GPU commands (defaults: 24 sequences x 100 frames at 1280x720, ~1,800-1,900 train / ~600 val frames per modality,
YOLOv8s at 640, batch 16, 20 epochs, 8 workers). Measured on an H100 (bench/README.md, 2026-12-06 late): training
loop 67 s for rgb or event, 71 s early, 97 s mid; with trainer start, exit and eval_fred.py, early + mid took 233 s
in one call and rgb + event 187 s; data generation 16 s on a fresh machine. The machine is given back 30 s after a
call and rgb's / event's best.pth (~45 MB each) are too big to carry, so the warm configs run in the same call as
rgb and event. Three calls (timeout_s 600 each), each carrying the JSON so far:
  call 1 (~4 min): early, mid from scratch
    python bench/bench_fusion.py --configs early,mid --timeout 210 --out $OUT/bench_fusion.json
  copy the returned bench_fusion.json to bench/out/bench_fusion.json here (ignored), then
  call 2 (~8 min; carry ["bench/out/bench_fusion.json"]): rgb, event, early_warm, mid_warm
    cp bench/out/bench_fusion.json $OUT/ && python bench/bench_fusion.py --configs rgb,event,early_warm,mid_warm \\
        --timeout 200 --out $OUT/bench_fusion.json
  call 3 (~4 min, the same way): early_drop, mid_drop
The JSON is written after each config, so a call stopped at its limit keeps what finished.
CPU smoke test (tiny FRED-hard set, phi n, input 64, 1 epoch, all eight configs; about 5 min on 2 shared cores):
    YOLO_OFFLINE=1 python bench/bench_fusion.py --quick
Results: the table and goals on stdout, a JSON at --out (default bench/out/bench_fusion.json); trainer runs in
--runs_dir (default bench/out/<out stem>_runs/), their logs copied to <out folder>/<out stem>_logs/. Exit status:
0, 1 when a config failed or was refused (its entry says ok: false, with "refused" saying why), 2 when --out holds
results of other settings or a warm config's checkpoints are missing.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_accuracy import (CONDITION_COLUMNS, QUICK, add_setup_args, config_sets, finish_call,  # noqa: E402
                                  open_result, prepare_hard_data, score_entry, shared_data_root, train_ours)
from bench.ultra_ref import apply_quick, exit_on_sigterm, fmt, print_table, work_dir  # noqa: E402

WARM_START = {"FUSION_RGB_WEIGHTS": "rgb", "FUSION_EVENT_WEIGHTS": "event"}  # config key -> config whose best.pth
# name -> modality, our config keys, and (warm starts) config key -> the config whose best.pth it takes
CONFIGS: dict[str, dict] = {
    "rgb": {"modality": "rgb", "sets": {}},
    "event": {"modality": "event", "sets": {}},
    "early": {"modality": "fusion", "sets": {"FUSION": "early"}},
    "mid": {"modality": "fusion", "sets": {"FUSION": "mid"}},
    "early_warm": {"modality": "fusion", "sets": {"FUSION": "early"}, "start": WARM_START},
    "mid_warm": {"modality": "fusion", "sets": {"FUSION": "mid"}, "start": WARM_START},
    "early_drop": {"modality": "fusion", "sets": {"FUSION": "early", "FUSION_STREAM_DROPOUT": 0.25}},
    "mid_drop": {"modality": "fusion", "sets": {"FUSION": "mid", "FUSION_STREAM_DROPOUT": 0.25}},
}
SINGLE = ("rgb", "event")
GOAL_MARGIN = 0.02        # fusion's mAP50:95 above the better single modality's by at least 2 points
BLIND = {"night": "rgb", "hovering": "event"}  # condition -> the sensor that is blind there
SPEED_RATIO = 0.9         # early fusion's train img/s against event-only's


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line; --quick replaces the sizes by a CPU smoke-test set; configs in CONFIGS' order."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="all", help=f"comma list of {', '.join(CONFIGS)}, or all")
    add_setup_args(p, "bench_fusion", "every config")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: 10 sequences x 6 frames at 160x96, phi n, "
                   "input 64, 1 epoch, batch 8, no workers, all configs")
    a = p.parse_args(argv)
    apply_quick(a, p, {**QUICK, "gen_workers": min(a.gen_workers, 2)})
    chosen = list(CONFIGS) if a.configs == "all" else [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)} or all")
    a.configs = [c for c in CONFIGS if c in chosen]  # a config runs after those it starts from
    a.data_root = a.data_root or shared_data_root(a.quick)
    return a


def start_weights(name: str, done: dict, out: Path) -> dict[str, str]:
    """Config keys that start config `name` from the best.pth of the configs it starts from, found in done (the
    merged JSON's entries); {} for a config from scratch. ValueError saying what to run when one is missing."""
    return {key: dep_weights(name, dep, done, out) for key, dep in CONFIGS[name].get("start", {}).items()}


def dep_weights(name: str, dep: str, done: dict, out: Path) -> str:
    """The best.pth of config dep (its entry in done) that config name starts from; ValueError when it has none
    on this machine, saying what to run."""
    again = f"run --configs {','.join(CONFIGS[name]['start'].values())},{name} in one call"
    entry = done.get(dep)
    if entry is None:
        raise ValueError(f"{name} starts from {dep}'s best.pth, but {out} holds no {dep} result: {again}")
    if not entry.get("ok"):
        raise ValueError(f"{name} starts from {dep}'s best.pth, but {dep} failed "
                         f"({entry.get('refused') or 'see ' + str(entry.get('log'))}): {again}")
    path = entry.get("best_weights")
    if not path or not Path(path).is_file():
        raise ValueError(f"{name} starts from {dep}'s best.pth, but {path or 'none'} (recorded in {out}) is not on "
                         f"this machine (trained in an earlier call?): {again}")
    return path


def missing_starts(configs: list[str], done: dict, out: Path) -> list[str]:
    """Why configs (in run order) cannot start: a config a warm one starts from that does not run before it in
    this call and has no best.pth on this machine in done."""
    errors = []
    for i, name in enumerate(configs):
        for dep in CONFIGS[name].get("start", {}).values():
            if dep in configs[:i]:
                continue
            try:
                dep_weights(name, dep, done, out)
            except ValueError as e:
                errors.append(str(e))
    return errors


def run_config(a: argparse.Namespace, name: str, split: str, logs: Path, done: dict, out: Path) -> dict:
    """Train one config (a warm one from its checkpoints in done), then score it with our evaluator; its entry."""
    conf = CONFIGS[name]
    modality, started = conf["modality"], time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        sets = {**conf["sets"], **start_weights(name, done, out)}
    except ValueError as e:
        print(f"[{modality}] {name} REFUSED: {e}", flush=True)
        return {"ok": False, "refused": str(e), "modality": modality, "started": started}
    entry = train_ours(a, name, modality, split, logs, a.imgsz, config_sets(a, a.imgsz, sets))
    entry.update(modality=modality, config_sets=sets, started=started)
    return score_entry(a, entry, name, modality, split, logs, a.imgsz)


def _metric(entry: dict | None, key: str, condition: str | None = None) -> float | None:
    """A scored entry's metric (a condition's mAP50 when condition is given); None when not measured or undefined."""
    if not entry or not entry.get("ok"):
        return None
    value = ((entry.get("per_condition") or {}).get(condition) or {}).get("mAP50") if condition else entry.get(key)
    return None if value is None or value < 0 else float(value)


def goals(configs: dict) -> list[str]:
    """The issue's goals for each fusion config in configs (name -> entry): 'met', 'NOT met' or 'not measured'."""
    lines = []
    singles = {s: configs.get(s) for s in SINGLE}
    for name in [c for c in CONFIGS if CONFIGS[c]["modality"] == "fusion" and c in configs]:
        fused = configs[name]
        best = [v for v in (_metric(e, "mAP50_95") for e in singles.values()) if v is not None]
        own = _metric(fused, "mAP50_95")
        if own is None or len(best) < 2:
            lines.append(f"{name}: mAP50:95 >= better single + {GOAL_MARGIN:.2f}: not measured")
        else:
            verdict = "met" if own >= max(best) + GOAL_MARGIN else "NOT met"
            lines.append(f"{name}: mAP50:95 {own:.4f} >= better single {max(best):.4f} + {GOAL_MARGIN:.2f}: {verdict}")
        for condition, blind in BLIND.items():
            theirs = {s: _metric(e, "", condition) for s, e in singles.items()}
            own = _metric(fused, "", condition)
            if own is None or None in theirs.values():
                lines.append(f"{name}: {condition} ({blind} blind) mAP50 above rgb and event: not measured")
                continue
            verdict = "met" if own > max(theirs.values()) else "NOT met"
            lines.append(f"{name}: {condition} ({blind} blind) mAP50 {own:.4f} above rgb {theirs['rgb']:.4f} and "
                         f"event {theirs['event']:.4f}: {verdict}")
    event = configs.get("event") or {}
    for name in [c for c in CONFIGS if CONFIGS[c]["sets"].get("FUSION") == "early" and c in configs]:
        fused = configs[name]
        if not (fused.get("img_per_s") and event.get("img_per_s")):
            lines.append(f"{name}: img/s >= {SPEED_RATIO}x event-only's: not measured")
        elif (fused.get("gpu"), fused.get("call")) != (event.get("gpu"), event.get("call")):
            lines.append(f"{name}: img/s >= {SPEED_RATIO}x event-only's: not comparable (another call or GPU)")
        else:
            ratio = fused["img_per_s"] / event["img_per_s"]
            lines.append(f"{name}: img/s {fmt(fused['img_per_s'])} = {ratio:.2f}x event-only's "
                         f"{fmt(event['img_per_s'])} (>= {SPEED_RATIO}x, {fused.get('gpu')}): "
                         + ("met" if ratio >= SPEED_RATIO else "NOT met"))
    return lines


def report(result: dict, a: argparse.Namespace) -> None:
    """The table of every config in the JSON (this call's and earlier calls'), then the goals."""
    configs = result["configs"]
    rows = []
    for name in [c for c in CONFIGS if c in configs]:
        e = configs[name]
        cond = e.get("per_condition") or {}
        status = "REFUSED" if e.get("refused") else "FAILED"
        rows.append([name, e.get("modality"), e.get("mAP50") if e.get("ok") else status, e.get("mAP50_95"),
                     e.get("AP_small"), *[(cond.get(c) or {}).get("mAP50") for c in CONDITION_COLUMNS],
                     e.get("img_per_s"), e.get("peak_mem_GB"), e.get("train_s"), e.get("gpu")])
    frames = ", ".join(f"{m} {f['train']} / {f['val']}" for m, f in result.get("frames", {}).items())
    print_table(f"FRED-hard, train / val frames: {frames}; YOLOv8{a.phi} at {a.imgsz}, {a.epochs} epochs, batch "
                f"{a.batch}; our evaluator on each modality's val frames of the same sequences",
                ["config", "modality", "mAP50", "mAP50:95", "AP_small", *CONDITION_COLUMNS, "img/s", "peak GB",
                 "train s", "gpu"], rows)
    print("(condition columns: mAP50 on the val frames with that condition, - = none there; fused frames take their "
          "event frame's conditions; img/s = median train-loop speed after the first epoch; peak GB = max reserved "
          "CUDA memory; compare speeds of one gpu only)")
    print("goals (issue 18):")
    for line in goals(configs):
        print("  " + line)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen configs, merge them into --out, print the table and the goals."""
    a = parse_args(argv)
    exit_on_sigterm()
    from datasets.fred_index import build_fred_index

    out, result = open_result(a, "fusion", {"configs": {}, "frames": {}})
    if result is None:
        return 2
    missing = missing_starts(a.configs, result["configs"], out)
    if missing:
        print("bench_fusion.py: error: " + "\n  ".join(missing), file=sys.stderr)
        return 2
    result["calls"].append({"args": vars(a), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    call = len(result["calls"]) - 1
    logs = work_dir(a.out, a.runs_dir)

    def save() -> None:
        out.write_text(json.dumps(result, indent=1, default=str))

    split = prepare_hard_data(a, result)
    for modality in dict.fromkeys(CONFIGS[c]["modality"] for c in a.configs):
        index = build_fred_index(a.data_root, modality, split=split)
        result["frames"][modality] = {"train": len(index.train), "val": len(index.val)}
        print(f"[{modality}] {len(index.train)} train frames, {len(index.val)} val frames "
              f"({len(index.val_sequences)} val sequences)", flush=True)
    save()
    failed = []
    for name in a.configs:
        result["configs"][name] = {**run_config(a, name, split, logs, result["configs"], out), "call": call}
        failed += [] if result["configs"][name]["ok"] else [name]
        save()
    report(result, a)
    return finish_call(result, out, logs, failed)


if __name__ == "__main__":
    sys.exit(main())
