"""Our YOLOv8 vs Ultralytics' DetectionModel (fwd+bwd img/s), and our DetectionLoss vs v8DetectionLoss (ms/batch).

    YOLO_OFFLINE=1 python bench/bench_model.py                 # GPU: s, 640, nc=1, batch 16/32, fp16/bf16, NCHW/NHWC
    YOLO_OFFLINE=1 python bench/bench_model.py --quick         # tiny CPU smoke run of the same code paths

Both models get the same weights (ours converted from theirs). A model step is forward + backward of a scalar
made from the raw training outputs under autocast (no optimizer, no loss: the loss is timed separately, on the
same predictions and targets for both). GPU timing uses CUDA events after warmup; peak memory is per config.
Ultralytics is a test/bench-only oracle; without it only our side is timed.
"""
import argparse
import json
import os
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("YOLO_OFFLINE", "1")

from nets import build_model  # noqa: E402
from nets.convert import from_ultralytics  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def timed(fn: Callable[[], None], iters: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of fn, after warmup calls (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def ultralytics_model(phi: str, nc: int):
    """Ultralytics DetectionModel from yaml with loss hyperparameters attached, or None if not installed."""
    try:
        from ultralytics.cfg import get_cfg
        from ultralytics.nn.tasks import DetectionModel
    except ImportError as e:
        print(f"note: ultralytics not importable ({e}); timing our side only")
        return None
    model = DetectionModel(f"yolov8{phi}.yaml", nc=nc, verbose=False)
    model.args = get_cfg()  # default hyperparameters: box 7.5, cls 0.5, dfl 1.5
    return model


def model_step(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype, device: torch.device) -> Callable[[], None]:
    """One forward + backward of the raw training outputs (list of maps for ours, dict for Ultralytics)."""
    def step() -> None:
        """Forward + backward + zero_grad."""
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(x)
            parts = (out["boxes"], out["scores"]) if isinstance(out, dict) else out
            scalar = sum(o.float().mean() for o in parts)
        scalar.backward()
        model.zero_grad(set_to_none=True)
    return step


def bench_models(a: argparse.Namespace, device: torch.device) -> list[dict]:
    """img/s of fwd+bwd for both models over batch sizes, dtypes and memory formats."""
    torch.manual_seed(0)
    theirs = ultralytics_model(a.phi, a.nc)
    ours = build_model(a.phi, a.nc)
    if theirs is not None:
        ours.load_state_dict(from_ultralytics(theirs.state_dict()), strict=True)
    models = {"ours": ours, "ultralytics": theirs}
    rows = []
    for channels_last in a.channels_last:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for name, model in models.items():
            if model is None:
                continue
            model.to(device, memory_format=fmt).train()
            for dtype_name in a.dtypes:
                for batch in a.batch:
                    x = torch.randn(batch, 3, a.imgsz, a.imgsz, device=device).contiguous(memory_format=fmt)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                    sec = timed(model_step(model, x, DTYPES[dtype_name], device), a.iters, a.warmup, device)
                    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
                    rows.append({"model": name, "dtype": dtype_name, "channels_last": channels_last, "batch": batch,
                                 "img_s": batch / sec, "ms": sec * 1000, "peak_gib": mem})
                    print(f"  {name:12s} {dtype_name} {'NHWC' if channels_last else 'NCHW'} b{batch}: "
                          f"{batch / sec:8.1f} img/s", flush=True)
            model.to("cpu", memory_format=torch.contiguous_format)
    return rows


def random_targets(batch: int, imgsz: int, per_image: int, nc: int, device: torch.device) -> torch.Tensor:
    """[M, 6] (batch_idx, cls, cx, cy, w, h) in pixels, 0..per_image boxes per image (some images empty)."""
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, per_image + 1, (batch,), generator=g)
    idx = torch.repeat_interleave(torch.arange(batch), counts).float()
    m = len(idx)
    wh = (torch.rand(m, 2, generator=g) * 0.3 + 0.01) * imgsz
    cxy = wh / 2 + torch.rand(m, 2, generator=g) * (imgsz - wh)
    cls = torch.randint(0, nc, (m,), generator=g).float()
    return torch.cat([idx[:, None], cls[:, None], cxy, wh], 1).to(device)


def bench_loss(a: argparse.Namespace, device: torch.device) -> list[dict]:
    """ms per batch of loss forward + backward (assigner included) on the same predictions and targets."""
    try:
        from nets.loss import DetectionLoss
    except ImportError as e:
        print(f"note: nets/loss.py not importable ({e}); skipping our loss")
        DetectionLoss = None
    theirs_model = ultralytics_model(a.phi, a.nc)
    ours_model = build_model(a.phi, a.nc).to(device).train()
    if theirs_model is not None:
        from ultralytics.utils.loss import v8DetectionLoss
        theirs_model.to(device)
        ultra_loss = v8DetectionLoss(theirs_model)
    rows = []
    for batch in a.batch:
        x = torch.randn(batch, 3, a.imgsz, a.imgsz, device=device)
        with torch.no_grad(), torch.autocast(device.type, dtype=DTYPES[a.dtypes[0]]):
            maps = [m.float() for m in ours_model(x)]
        targets = random_targets(batch, a.imgsz, a.targets_per_image, a.nc, device)
        preds = [m.clone().requires_grad_(True) for m in maps]
        impls = {}
        if DetectionLoss is not None:
            loss = DetectionLoss(a.nc)

            def ours_step() -> torch.Tensor:
                """Our loss parts, weighted total, backward."""
                parts = loss(preds, targets, (a.imgsz, a.imgsz))
                total = sum(loss.weight_dict[k] * parts[k] for k in loss.weight_dict) * batch
                total.backward()
                return total
            impls["ours"] = ours_step
        if theirs_model is not None:
            ultra_batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:] / a.imgsz}

            def ultra_step() -> torch.Tensor:
                """Ultralytics' loss on the same predictions, backward."""
                flat = torch.cat([p.flatten(2) for p in preds], 2)
                parts = ultra_loss({"boxes": flat[:, :64], "scores": flat[:, 64:], "feats": preds}, ultra_batch)[0]
                total = parts.sum()
                total.backward()
                return total
            impls["ultralytics"] = ultra_step
        for name, fn in impls.items():
            value = fn().item()
            sec = timed(fn, a.iters, a.warmup, device)
            rows.append({"loss": name, "batch": batch, "targets": len(targets), "ms": sec * 1000, "value": value})
            print(f"  loss {name:12s} b{batch} ({len(targets)} targets): {sec * 1000:7.2f} ms, total {value:.4f}",
                  flush=True)
    return rows


def _cell(row: dict | None) -> str:
    """'img/s (peak GiB)' of one model row, or '-'."""
    return f"{row['img_s']:8.1f} ({row['peak_gib']:4.1f})" if row else "-"


def print_tables(model_rows: list[dict], loss_rows: list[dict]) -> None:
    """Side-by-side img/s table (ours / Ultralytics / ratio) and the loss table."""
    print("\nfwd+bwd img/s (peak GiB)")
    print(f"{'dtype':6s} {'layout':6s} {'batch':>5s} {'ours':>16s} {'ultralytics':>16s} {'ours/ultra':>10s}")
    keys = sorted({(r["dtype"], r["channels_last"], r["batch"]) for r in model_rows})
    for key in keys:
        cell = {r["model"]: r for r in model_rows if (r["dtype"], r["channels_last"], r["batch"]) == key}
        ours, ultra = cell.get("ours"), cell.get("ultralytics")
        ratio = f"{ours['img_s'] / ultra['img_s']:10.2f}" if ours and ultra else f"{'-':>10s}"
        layout = "NHWC" if key[1] else "NCHW"
        print(f"{key[0]:6s} {layout:6s} {key[2]:5d} {_cell(ours):>16s} {_cell(ultra):>16s} {ratio}")
    if loss_rows:
        print("\nloss fwd+bwd ms/batch (assigner included)")
        for batch in sorted({r["batch"] for r in loss_rows}):
            cell = {r["loss"]: r for r in loss_rows if r["batch"] == batch}
            line = "  ".join(f"{n} {r['ms']:.2f} ms (total {r['value']:.4f})" for n, r in cell.items())
            print(f"batch {batch:3d}, {next(iter(cell.values()))['targets']} targets: {line}")


def main() -> None:
    """Parse arguments, run both benches, print the tables, optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phi", default="s")
    p.add_argument("--nc", type=int, default=1)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=list(DTYPES))
    p.add_argument("--channels-last", type=int, nargs="+", default=[0, 1], help="1 = NHWC, 0 = NCHW")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--targets-per-image", type=int, default=8, help="loss bench: 0..N boxes per image")
    p.add_argument("--no-loss", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--quick", action="store_true", help="tiny CPU settings (n, 128 px, batch 2, 2 iters after 2 warmup)")
    a = p.parse_args()
    if a.quick:
        a.phi, a.imgsz, a.batch, a.iters, a.warmup = "n", 128, [2], 2, 2
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, YOLOv8{a.phi}, {a.imgsz}px, nc={a.nc}")
    model_rows = bench_models(a, device)
    loss_rows = [] if a.no_loss else bench_loss(a, device)
    print_tables(model_rows, loss_rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "device": name, "models": model_rows, "loss": loss_rows}, f, indent=1)


if __name__ == "__main__":
    main()
