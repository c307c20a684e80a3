"""Multi-GPU bench (issue 22): the CUDA-graphed step under torchrun, proven against DDP, and scaling over GPUs.

Two modes:

  --proof  one torchrun job (any --nproc_per_node; without torchrun, one process in a process group of its own).
           From the same seed-0 weights and the same per-rank batches (random images, 3 boxes each), `--steps`
           optimizer steps of training.engine.train_one_epoch (the trainer's step: loss, scaler, clipping, SGD)
           are taken in turn as
             ddp        the model wrapped in DistributedDataParallel, eager (the reference; on CUDA twice: the
                        second, ddp_again, is the run-to-run floor of cuDNN's non-deterministic kernels)
             allreduce  the bare model, gradients averaged by utils.dist.all_reduce_grads after the backward
                        (DDP_GRAD_SYNC="allreduce"), eager
             graph      (CUDA only) the same with the forward+backward of model and loss replayed from a CUDA graph
                        (speed.cuda_graph.GraphedTrainLoss): what train_fred.py runs under torchrun with CUDA_GRAPH
           and each is compared with ddp: largest absolute difference of the parameters (every rank) and of the
           buffers (BatchNorm statistics, rank 0: the one that evaluates and saves), also relative to the largest
           parameter change of the ddp run. Pass: eager runs within --tol_eager of it (exact on CPU), graph within
           --tol_graph (relative). Rank 0 prints the table and writes --out.
  scaling  (default) for N in --gpus (up to the GPUs present) and global batch 16 x N and 32 x N: ours (the whole
           trainer, `torchrun --standalone --nproc_per_node N train_fred.py`, CUDA_GRAPH on and off) and
           Ultralytics' DDP (bench/ultra_ref.py train --device 0,...,N-1, its batch is global too) on the same
           generated FRED-shaped event frames (1280x720), YOLOv8s at 640, from scratch, no frozen phase,
           --epochs epochs, the first left out. Reported: img/s per GPU (ours: rank 0's train-loop rate in
           results.csv; Ultralytics: train images / epoch seconds of its results.csv `time` column, whose epochs run
           without validation until the last, divided by N) and scaling efficiency (N-GPU img/s per GPU / 1-GPU
           img/s per GPU at the same per-GPU batch). Targets (issue 22): >= 0.9 efficiency at 8 GPUs, >= 2x
           Ultralytics at every N; printed as met / NOT met, nothing asserted.

GPU commands (each a device call under 10 minutes):
    torchrun --standalone --nproc_per_node 1 bench/bench_ddp.py --proof --out $OUT/bench_ddp_proof.json
    torchrun --standalone --nproc_per_node 2 bench/bench_ddp.py --proof --out $OUT/bench_ddp_proof2.json
    python bench/bench_ddp.py --gpus 1,2 --out $OUT/bench_ddp_2.json          # nvidia-h100-x2
    python bench/bench_ddp.py --gpus 1,2,4,8 --out $OUT/bench_ddp_8.json      # nvidia-h100-x8 (split --gpus and
                                                                             # --batches over calls if too long)
CPU (gloo; the scaling mode's --quick runs ours only: Ultralytics' DDP needs CUDA):
    torchrun --standalone --nproc_per_node 2 bench/bench_ddp.py --proof --device cpu
    python bench/bench_ddp.py --quick
Results: tables on stdout, a JSON at --out (default bench/out/bench_ddp.json).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as torch_dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from nets import build_model  # noqa: E402
from nets.loss import DetectionLoss  # noqa: E402
from speed.cuda_graph import GraphedTrainLoss  # noqa: E402
from training import engine  # noqa: E402
from training.optim import build_optimizer  # noqa: E402
from utils import dist  # noqa: E402


# ----------------------------------------------------------------------------------------------- proof
def proof_batches(per_rank: int, size: int, steps: int, rank: int) -> list[dict]:
    """`steps` collated batches of one rank: uint8 images [per_rank, 3, size, size], 3 boxes (input pixels) each."""
    g = torch.Generator().manual_seed(1000 * rank)
    batches = []
    for _ in range(steps):
        images = torch.randint(0, 256, (per_rank, 3, size, size), generator=g, dtype=torch.uint8)
        m = 3 * per_rank
        wh = torch.rand(m, 2, generator=g) * (size / 4) + size / 16
        cxy = torch.rand(m, 2, generator=g) * (size / 2) + size / 4
        targets = torch.cat([torch.arange(m).remainder(per_rank).float()[:, None], torch.zeros(m, 1), cxy, wh], 1)
        batches.append({"images": images, "targets": targets})
    return batches


def trained_state(kind: str, phi: str, size: int, batches: list[dict], device: torch.device,
                  amp_dtype: torch.dtype | None) -> dict:
    """The model's state after one optimizer step per batch from seed-0 weights, trained as kind: "ddp" (wrapped in
    DistributedDataParallel), "allreduce" (bare model, dist.all_reduce_grads) or "graph" (that, from a CUDA graph)."""
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(phi, 1).to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    model.train()
    criterion = DetectionLoss(1, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)
    optimizer = build_optimizer(model, "sgd", 0.01, 0.937, 5e-4)
    fp16 = amp_dtype is torch.float16
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 16 if fp16 else 1.0)
    options = engine.StepOptions(log_interval=len(batches), nan_patience=len(batches) + 1, amp_dtype=amp_dtype,
                                 grad_clip=10.0, channels_last=cuda)
    net, loss_fn, grad_sync = model, None, None
    if kind == "ddp":
        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    else:
        dist.broadcast_state(model)
        grad_sync = dist.all_reduce_grads
    if kind == "graph":
        per_rank = batches[0]["images"].shape[0]
        sample = torch.empty((per_rank, 3, size, size), device=device, memory_format=torch.channels_last)
        loss_fn = GraphedTrainLoss(model, criterion, sample, per_rank * 16, amp_dtype)
    out = engine.train_one_epoch(net, None, criterion, optimizer, scaler, batches, device, lambda i: 0.01, options,
                                 show_progress=False, loss_fn=loss_fn, grad_sync=grad_sync)
    if out["skipped"]:
        raise RuntimeError(f"{kind}: {out['skipped']} steps had a non-finite loss")
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}


def _max_diff(a: dict, b: dict, keys: list[str]) -> float:
    """Largest |a[k] - b[k]| over keys, the largest over all processes."""
    d = torch.tensor(max([(a[k] - b[k]).abs().max().item() for k in keys] or [0.0]), dtype=torch.float64)
    if dist.is_dist():
        d = d.to("cuda" if torch_dist.get_backend() == "nccl" else "cpu")
        torch_dist.all_reduce(d, op=torch_dist.ReduceOp.MAX)
    return float(d.item())


def proof(device: torch.device, phi: str = "n", size: int = 64, per_rank: int = 2, steps: int = 3,
          amp_dtype: torch.dtype | None = None, tol_eager: float = 0.0, tol_graph: float = 1e-3) -> dict:
    """The --proof comparison on this process group (see the module docstring): {"update", "runs": {kind: {
    "param", "buffer", "param_rel"}}, "pass"}."""
    cuda = device.type == "cuda"
    batches = proof_batches(per_rank, size, steps, dist.get_rank())
    torch.manual_seed(0)
    start = {k: v.float() for k, v in build_model(phi, 1).state_dict().items()}
    ref = trained_state("ddp", phi, size, batches, device, amp_dtype)
    params = [n for n, p in build_model(phi, 1).named_parameters()]
    buffers = [k for k in ref if k not in params and ref[k].is_floating_point()]
    update = _max_diff(ref, start, params)
    runs = {}
    for kind in (("ddp_again", "allreduce", "graph") if cuda else ("allreduce",)):
        state = trained_state("ddp" if kind == "ddp_again" else kind, phi, size, batches, device, amp_dtype)
        param = _max_diff(state, ref, params)
        buffer = max((state[k] - ref[k]).abs().max().item() for k in buffers) if dist.is_main() else 0.0
        runs[kind] = {"param": param, "buffer": buffer, "param_rel": param / max(update, 1e-30)}
    ok = all(r["param_rel"] <= tol_graph for r in runs.values()) if cuda else all(
        r["param_rel"] <= tol_eager and r["buffer"] <= tol_eager for r in runs.values())
    return {"device": str(device), "world": dist.get_world_size(), "phi": phi, "size": size, "per_rank": per_rank,
            "steps": steps, "amp": str(amp_dtype), "update": update, "runs": runs, "pass": ok}


def run_proof(a: argparse.Namespace) -> int:
    """--proof: set up the process group (torchrun's, or one of a single process), compare, report on rank 0."""
    cuda = (a.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if "RANK" in os.environ:
        torch_dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    else:
        store = tempfile.NamedTemporaryFile(delete=False).name
        torch_dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{store}", rank=0,
                                      world_size=1)
    try:
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(a.amp) if cuda else None
        result = proof(device, a.phi, a.size, a.per_rank, a.steps, amp, a.tol_eager, a.tol_graph)
    finally:
        torch_dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"proof on {result['device']} x {result['world']} process(es), phi {a.phi}, {a.size}px, "
              f"{a.per_rank}/process, {a.steps} steps, amp {result['amp']}; largest parameter change of the ddp "
              f"run {result['update']:.3g}")
        for kind, r in result["runs"].items():
            print(f"  {kind:10s} vs ddp: params {r['param']:.3g} ({r['param_rel']:.3g} of the change), rank-0 "
                  f"buffers {r['buffer']:.3g}")
        print("PASS" if result["pass"] else "FAIL", flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0 if result["pass"] else 1


# ----------------------------------------------------------------------------------------------- scaling
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--proof", action="store_true", help="compare the allreduce / graphed step with DDP (torchrun)")
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--phi", default=None, help="model size (proof: n, scaling: s)")
    p.add_argument("--size", type=int, default=None, help="input size, px (proof: 64, scaling: 640)")
    p.add_argument("--per_rank", type=int, default=2, help="proof: images per process and step")
    p.add_argument("--steps", type=int, default=3, help="proof: optimizer steps")
    p.add_argument("--amp", default="none", choices=("none", "fp16", "bf16"), help="proof: autocast on CUDA")
    p.add_argument("--tol_eager", type=float, default=0.0, help="proof: CPU eager runs' largest difference, "
                   "relative to the parameter change (0: bit for bit)")
    p.add_argument("--tol_graph", type=float, default=1e-3, help="proof: every run's largest relative difference")
    p.add_argument("--gpus", default="1,2,4,8", help="scaling: process counts, those above the GPUs present skipped")
    p.add_argument("--batches", default="16,32", help="scaling: global batch per GPU (global batch = b x N)")
    p.add_argument("--epochs", type=int, default=4, help="scaling: epochs per run (the first left out; Ultralytics: "
                   "the last too, it validates)")
    p.add_argument("--data_root", default="", help="scaling: generated data (default data/bench_ddp; --quick: "
                   "bench/out/bench_ddp_quick_data)")
    p.add_argument("--sequences", type=int, default=24)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--workers", type=int, default=8, help="scaling: loader processes per GPU (capped)")
    p.add_argument("--skip_ultra", action="store_true")
    p.add_argument("--eager_allreduce", action="store_true", help="scaling on CUDA: also ours without the graph "
                   "with DDP_GRAD_SYNC='allreduce' (the cost of the all-reduce not overlapping the backward)")
    p.add_argument("--timeout", type=float, default=900, help="scaling: seconds per trainer run")
    p.add_argument("--quick", action="store_true", help="scaling on CPU: 2 gloo processes, tiny set, ours only")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "bench_ddp.json"))
    a = p.parse_args(argv)
    a.phi = a.phi or ("n" if a.proof or a.quick else "s")
    a.size = a.size or (64 if a.proof or a.quick else 640)
    if a.quick:
        a.device, a.gpus, a.batches, a.epochs, a.skip_ultra = "cpu", "1,2", "4", 2, True
        a.sequences, a.frames, a.workers = 4, 8, 0
    a.data_root = a.data_root or str(REPO / "bench" / "out" / "bench_ddp_quick_data" if a.quick
                                     else REPO / "data" / "bench_ddp")
    return a


def our_variants(cuda: bool, eager_allreduce: bool) -> list[tuple[str, dict]]:
    """Our runs per (N, batch): (name, config overrides). CUDA: graph (its all-reduce after each replay) and eager
    DDP; CPU: eager DDP and eager allreduce."""
    if not cuda:
        return [("ours_ddp", {"CUDA_GRAPH": False, "DDP_GRAD_SYNC": "ddp"}),
                ("ours_allreduce", {"CUDA_GRAPH": False, "DDP_GRAD_SYNC": "allreduce"})]
    return ([("ours_graph", {"CUDA_GRAPH": True}), ("ours_no_graph", {"CUDA_GRAPH": False, "DDP_GRAD_SYNC": "ddp"})]
            + ([("ours_no_graph_allreduce", {"CUDA_GRAPH": False, "DDP_GRAD_SYNC": "allreduce"})]
               if eager_allreduce else []))


def _torchrun(n: int) -> list[str]:
    """The torchrun command prefix for n processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]


def ours_run(a: argparse.Namespace, n: int, per_gpu: int, variant: dict, split: str, save_dir: Path) -> dict:
    """Our trainer on n processes at global batch per_gpu x n with the variant's config overrides: img/s per GPU of
    the epochs after the first."""
    sets = {"FREEZE_TRAIN": False, "UNFREEZE_EPOCH": a.epochs, "UNFREEZE_BATCH_SIZE": per_gpu * n,
            "INPUT_SHAPE": [a.size, a.size], "NUM_WORKERS": a.workers, "EVAL_PERIOD": 1000,
            "SAVE_PERIOD": 1000, "SPECIAL_AUG_RATIO": 1.0, "MOSAIC_PROB": 0.5, "VAL_FRAME_STRIDE": 10, **variant}
    cmd = (_torchrun(n) if n > 1 else [sys.executable]) + [
        str(REPO / "train_fred.py"), "--modality", "event", "--data_root", a.data_root, "--split", split, "--phi",
        a.phi, "--save_dir", str(save_dir), "--no_eval_map", "--set", *[f"{k}={v!r}" for k, v in sets.items()]]
    if a.device:
        cmd[cmd.index("--phi"):cmd.index("--phi")] = ["--device", a.device]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=a.timeout)
    runs = sorted(save_dir.glob("loss_*"))
    rows = list(csv.DictReader(open(runs[-1] / "results.csv"))) if runs and (runs[-1] / "results.csv").is_file() \
        else []
    rates = [float(r["img_per_s"]) for r in rows[1:] if r.get("img_per_s")]
    return {"ok": proc.returncode == 0, "seconds": round(time.time() - t0, 1),
            "img_per_s_per_gpu": sum(rates) / len(rates) if rates else None,
            "gradients": next((line for line in proc.stdout.splitlines() if line.startswith("gradients:")), ""),
            "log_tail": (proc.stdout + proc.stderr)[-1500:]}


def ultra_run(a: argparse.Namespace, n: int, per_gpu: int, data_yaml: str, train_images: int, save_dir: Path
              ) -> dict:
    """Ultralytics' DDP on n GPUs at global batch per_gpu x n: img/s per GPU of the epochs after the first."""
    out = save_dir / "ultra.json"
    cmd = [sys.executable, str(REPO / "bench" / "ultra_ref.py"), "train", "--data", data_yaml, "--out", str(out),
           "--epochs", str(a.epochs), "--batch", str(per_gpu * n), "--imgsz", str(a.size), "--phi", a.phi,
           "--workers", str(a.workers), "--device", ",".join(map(str, range(n))), "--special_aug_ratio", "1.0",
           "--val_repeats", "0", "--project", str(save_dir), "--name", "ultra"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=a.timeout)
    csv_files = sorted(save_dir.glob("ultra*/results.csv"))
    rows = list(csv.DictReader(open(csv_files[-1]))) if csv_files else []
    times = [float(r["time"]) for r in rows if r.get("time")]
    seconds = [t1 - t0_ for t0_, t1 in zip(times, times[1:])][:-1]  # epochs 2.. without the last one's val
    rate = train_images / (sum(seconds) / len(seconds)) / n if seconds else None
    return {"ok": proc.returncode == 0, "seconds": round(time.time() - t0, 1), "img_per_s_per_gpu": rate,
            "log_tail": (proc.stdout + proc.stderr)[-1500:]}


def run_scaling(a: argparse.Namespace) -> int:
    """The scaling mode: generated data, then every (N, batch, trainer) run; tables and JSON."""
    from bench.ultra_ref import build_ultra_dataset, ensure_generated, print_table, write_split
    from datasets.fred_index import build_fred_index
    cuda = (a.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    present = torch.cuda.device_count() if cuda else 2
    counts = [n for n in map(int, a.gpus.split(",")) if n <= present]
    size = (720, 1280) if not a.quick else (180, 320)
    manifest, _ = ensure_generated(a.data_root, a.sequences, a.frames, size, workers=os.cpu_count() or 1)
    split = write_split(a.data_root, manifest["ids"])
    index = build_fred_index(a.data_root, "event", split=split)
    runs_dir = Path(a.out).with_suffix("").parent / (Path(a.out).stem + "_runs")
    data_yaml = "" if a.skip_ultra else build_ultra_dataset(index.train, index.val[::10], str(runs_dir / "ultra_data"))
    result: dict = {"args": vars(a), "train_frames": len(index.train), "runs": []}
    for per_gpu in map(int, a.batches.split(",")):
        for n in counts:
            trainers = our_variants(cuda, a.eager_allreduce) + ([] if a.skip_ultra else [("ultralytics", None)])
            for name, variant in trainers:
                save = runs_dir / f"{name}_n{n}_b{per_gpu}"
                print(f"[ddp] {name}: {n} process(es), global batch {per_gpu * n}", flush=True)
                r = (ultra_run(a, n, per_gpu, data_yaml, len(index.train), save) if variant is None
                     else ours_run(a, n, per_gpu, variant, split, save))
                result["runs"].append({"trainer": name, "n": n, "per_gpu": per_gpu, **r})
                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                Path(a.out).write_text(json.dumps(result, indent=1))
    one = {(r["trainer"], r["per_gpu"]): r["img_per_s_per_gpu"] for r in result["runs"] if r["n"] == 1}
    rows = []
    for r in result["runs"]:
        base = one.get((r["trainer"], r["per_gpu"]))
        r["efficiency"] = (r["img_per_s_per_gpu"] / base if base and r["img_per_s_per_gpu"] else None)
        ultra = next((u["img_per_s_per_gpu"] for u in result["runs"] if u["trainer"] == "ultralytics"
                      and u["n"] == r["n"] and u["per_gpu"] == r["per_gpu"]), None)
        r["vs_ultralytics"] = (r["img_per_s_per_gpu"] / ultra if ultra and r["img_per_s_per_gpu"] else None)
        rows.append([r["trainer"], r["n"], r["per_gpu"] * r["n"], r["img_per_s_per_gpu"], r["efficiency"],
                     r["vs_ultralytics"], "ok" if r["ok"] else "FAILED"])
    print_table("DDP scaling (img/s per GPU; efficiency = N-GPU / 1-GPU per-GPU rate)",
                ["trainer", "GPUs", "global batch", "img/s per GPU", "efficiency", "x Ultralytics", "run"], rows)
    top = [r for r in result["runs"] if r["trainer"] == "ours_graph" and r["n"] == 8 and r["efficiency"]]
    if top:
        print(f"target >= 0.9 efficiency at 8 GPUs: {'met' if min(r['efficiency'] for r in top) >= 0.9 else 'NOT met'}")
    Path(a.out).write_text(json.dumps(result, indent=1))
    return 0 if all(r["ok"] for r in result["runs"]) else 1


def main(argv: list[str] | None = None) -> int:
    """--proof or the scaling mode."""
    a = parse_args(argv)
    return run_proof(a) if a.proof else run_scaling(a)


if __name__ == "__main__":
    sys.exit(main())
