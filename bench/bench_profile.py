"""Where a training step's GPU time goes (issue 21): our step and Ultralytics' under torch.profiler, kernel by kernel.

Both trainers train on one random uint8 batch kept on the device (2 boxes per image, 1 class), fp16 AMP on CUDA:
  ours         the trainer's own step, training.engine.train_one_epoch, built by bench_train.build_ceiling_step (the
               ceiling part's pieces: our YOLOv8/YOLO11, DetectionLoss, GradScaler, gradient clipping at 10, fused SGD,
               ModelEMA, channels_last), with cudnn.benchmark on as train_fred.py sets it.
  Ultralytics  its DetectionModel (yolov8<phi>.yaml, yolov8<phi>-p2.yaml or yolo11<phi>.yaml), its v8DetectionLoss
               (model.loss), torch.autocast fp16 + GradScaler, SGD with its trainer's parameter groups (its own
               build_optimizer), clip_grad_norm_(10), its ModelEMA, the optimizer step and EMA update once per
               `accumulate` batches as its trainer does (nominal batch 64: every 4th batch at 16, every 2nd at 32);
               frozen = its freeze=10 (yolo11: 11) with those layers' BatchNorm in eval mode; cudnn.benchmark left off,
               as its trainer leaves it.
Per trainer and phase (frozen: backbone frozen, batch 32; unfrozen: batch 16):
  1. warm-up steps, then the eager step's wall time over --steps steps (CUDA events; no profiler);
  2. ours on CUDA: the same with the forward/backward of model + loss replayed from the trainer's CUDA graph
     (CUDA_GRAPH), timed the same way: the step the trainer really runs;
  3. --steps more eager steps under torch.profiler (CPU + CUDA activities), after --profile_warmup steps, each ended
     by a device sync (every kernel then runs inside its own step; the profiled step's wall time is not the figure of
     1.). The profile is EAGER: a CUDA graph replay shows as one launch, its kernels hidden from the profiler, so the
     kernels are those of the eager step; the graph removes launch gaps, not kernels.
Each step is marked with torch.profiler.record_function ranges "step::forward", "step::loss" (assigner + loss),
"step::backward", "step::optimizer" (GradScaler unscale, gradient clipping, SGD step, scaler update, zero_grad) and
"step::ema". Ours: engine.train_one_epoch itself runs, its loss function, GradScaler and EMA wrapped so that their
calls open the ranges (the order is checked; a change in the engine's step order stops the bench with an error).
What is outside the ranges (the uint8 -> float conversion, the engine's loss bookkeeping) is the range "outside".
Every GPU activity (kernel, memcpy, memset) is put in the range its launch call fell in (by time; backward kernels
are launched from autograd's thread), falling back to the GPU-side copy of the ranges, and in a category by its
name, the CPU op that launched it and that range (classify()): conv_fwd / conv_bwd (cuDNN / implicit GEMM / xmma /
cutlass kernels of a convolution, split by range), gemm (matmuls: YOLO11's attention), batchnorm, activation (SiLU,
sigmoid), elementwise, copy_cat_layout (cat, copies, contiguous, NCHW<->NHWC transforms, memcpy), pool_upsample
(SPPF's max-pool, the neck's upsampling), reduction, loss_assigner (everything in the loss range but convolutions: the
loss's forward; its gradients run in the backward range and are counted there by name), optimizer
and ema (everything in their ranges), memset, other.
Reported per trainer and phase: a table of category, GPU ms per step, share of the step's summed kernel time, launches
per step; the step's wall time eager and graphed; GPU busy share = summed kernel time per step / eager step wall time
(over 1 the kernels overlap, well under 1 the GPU waits for launches); per range the CPU time and the GPU time; the
top kernels. Everything goes to --out (JSON, rewritten after every phase); --trace_dir keeps the Chrome traces
(gzipped; open in Perfetto or chrome://tracing).

GPU, one device call (H100/H200; phi s, 640, both phases, ours and Ultralytics). Ultralytics is not in the device
image: carry .whl (ultralytics 8.4.190, ultralytics-thop, ultralytics-platform, as in /work/main/.whl; without them
add --skip_ultra). Command (one line):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
        YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 && python3 bench/bench_profile.py --out $OUT/bench_profile.json
  the other architectures: --arch yolo11 or --arch yolov8-p2 (and another --out)
  Estimate, not measured: 4 trainer-phases x about (10 warm-up + 20 timed + 2 + 20 profiled steps; ours also 10 + 20
  graphed) at 20-90 ms per eager step (more while profiled), plus cuDNN's autotuning in the warm-up, the graph capture
  and the trace export and parsing (roughly 10-30 s per trainer-phase for ~2,000-4,000 kernels per step): about 1.5-3
  minutes with CUDA start and imports, well under 5. The JSON is small; a gzipped trace of 20 steps may be 10 MB or
  more (estimate), near the device's 16 MiB per returned file: for traces, a second call with fewer steps, e.g.
    python bench/bench_profile.py --phases unfrozen --steps 5 --out $OUT/p5.json --trace_dir $OUT/traces
CPU smoke test (phi n, input 64, batch 2, 2 steps, 1 warm-up, no CUDA graph, CPU activities only: the categories
are then given to the CPU ops by their own time, there being no CUDA kernels; Ultralytics steps its optimizer every
batch): python bench/bench_profile.py --quick   (tests/test_bench_profile.py runs it)
"""
from __future__ import annotations

import argparse
import bisect
import gc
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402

from bench.bench_train import add_cuda_graph, build_ceiling_step, engine_steps, random_batch  # noqa: E402
from bench.ultra_ref import BACKBONE_LAYERS, ULTRA_ARCHS, model_yaml, print_table  # noqa: E402

RANGES = ("forward", "loss", "backward", "optimizer", "ema")
PREFIX = "step::"  # profiler range names: step::forward, ...
OUTSIDE = "outside"  # time outside the ranges
CATEGORIES = ("conv_fwd", "conv_bwd", "gemm", "batchnorm", "activation", "elementwise", "copy_cat_layout",
              "pool_upsample", "reduction", "loss_assigner", "optimizer", "ema", "memset", "other")
GRAPH_NOTE = ("profiled steps are eager: a CUDA graph replay is one launch whose kernels the profiler does not see; "
              "graph_step_ms is the graphed step's wall time (the step the trainer runs), timed without the profiler")

# name rules, in order; the first match wins (lower-case kernel or CPU op names)
_RULES = [(category, re.compile(pattern)) for category, pattern in (
    ("other", r"^autograd::"),  # autograd's own bookkeeping (CPU ops)
    ("memset", r"memset"),
    ("copy_cat_layout", r"memcpy|nchwtonhwc|nhwctonchw|transpose_?kernel|permute_?kernel"),
    ("batchnorm", r"batch_?norm|(^|::|_)bn_(fw|bw|fwd|bwd)"),
    ("conv", r"convol|conv2d|conv_|fprop|dgrad|wgrad|implicit_?gemm|winograd|fft2d_|xmma_.*conv"),
    ("gemm", r"gemm|gemv|cutlass|matmul|cublas|nvjet|xmma|fmha|flash_?attn|aten::(mm|bmm|addmm|linear)\b"),
    ("activation", r"silu|sigmoid|swish|relu|gelu|tanh|softplus|mish"),
    ("pool_upsample", r"pool|upsample|interpolat"),
    ("copy_cat_layout", r"catarray|\bcat\b|concat|copy|contiguous|clone|\bstack\b"),
    ("reduction", r"reduce|reduction|cub::|scan|(?<!ten)sort|topk|softmax|argmax|argmin|norm_kernel|lpnorm|triton_red|"
                  r"triton_per"),
    ("elementwise", r"elementwise|pointwise|foreach|multi_tensor|vectorized|unrolled|fill|functor|triton_poi|"
                    r"aten::(add|sub|mul|div|neg|exp|log|pow|sqrt|rsqrt|abs|clamp|where|fill|zero|zeros|ones|lerp|"
                    r"addcmul|addcdiv|maximum|minimum)"),
)]
_CONV_OP = re.compile(r"convol|conv2d|cudnn_conv")
_BACKWARD = re.compile(r"dgrad|wgrad|backward")


def classify(name: str, range_name: str = "", op: str = "") -> str:
    """Category (one of CATEGORIES) of a CUDA kernel / memcpy / memset, or of a CPU op in CPU mode, from its name, the
    step range its launch fell in (RANGES or "outside") and the CPU op that launched it ("" if unknown)."""
    lower, op_lower = name.lower(), op.lower()
    category = next((cat for cat, rx in _RULES if rx.search(lower)), "other")
    if _CONV_OP.search(op_lower) and category in ("gemm", "elementwise", "reduction", "other"):
        category = "conv"  # cuDNN picked a GEMM (or its own helper kernel) for a convolution
    if range_name in ("optimizer", "ema"):
        return range_name
    if range_name == "loss" and category != "conv":
        return "loss_assigner"
    if category == "conv":
        if range_name in ("forward", "loss"):
            return "conv_fwd"
        if range_name == "backward" or _BACKWARD.search(lower) or _BACKWARD.search(op_lower):
            return "conv_bwd"
        return "conv_fwd"
    return category


# ------------------------------------------------------------------------------------------------ trace analysis


def _args(e: dict) -> dict:
    """A trace event's args ({} if none)."""
    return e.get("args") or {}


class _Intervals:
    """Sorted, non-overlapping named intervals [start, end): which one holds a time."""

    def __init__(self, spans: list[tuple[float, float, str]]):
        spans = sorted(spans)
        self.starts = [s for s, _, _ in spans]
        self.spans = spans

    def find(self, t: float) -> str | None:
        """Name of the interval holding t, or None."""
        i = bisect.bisect_right(self.starts, t) - 1
        if i >= 0 and t < self.spans[i][1]:
            return self.spans[i][2]
        return None


def _self_times(ops: list[dict]) -> list[tuple[dict, float]]:
    """(op, own time in us: its duration less its direct children's) for CPU ops, nested per thread by time."""
    out = []
    by_thread = defaultdict(list)
    for e in ops:
        by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for events in by_thread.values():
        events.sort(key=lambda e: (e["ts"], -e.get("dur", 0.0)))
        stack: list[list] = []  # [event, end, children's time]
        for e in events:
            end = e["ts"] + e.get("dur", 0.0)
            while stack and stack[-1][1] <= e["ts"]:
                done = stack.pop()
                out.append((done[0], done[0].get("dur", 0.0) - done[2]))
            if stack:
                stack[-1][2] += e.get("dur", 0.0)
            stack.append([e, end, 0.0])
        out += [(done[0], done[0].get("dur", 0.0) - done[2]) for done in stack]
    return out


def analyse_trace(trace: dict, steps_hint: int, top: int = 25) -> dict:
    """Per-step GPU time by category and by range of a Chrome trace exported by torch.profiler (Kineto's format).

    GPU activities (cat kernel, gpu_memcpy, gpu_memset) are matched to their launch (cuda_runtime / cuda_driver event
    with the same args.correlation) and to the CPU op with the same "External id"; without CUDA activities the CPU
    ops' own times are categorised instead. Steps: the ProfilerStep# ranges in the trace (steps_hint if none)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "ts" in e and "name" in e]

    def cat(e: dict) -> str:
        """The event's category, lower-case."""
        return str(e.get("cat", "")).lower()

    annotations = [e for e in events if cat(e) == "user_annotation"]
    steps_seen = [e for e in annotations if e["name"].startswith("ProfilerStep#")]
    steps = len(steps_seen) or steps_hint
    cpu_ranges = [(e["ts"], e["ts"] + e.get("dur", 0.0), e["name"][len(PREFIX):]) for e in annotations
                  if e["name"].startswith(PREFIX) and e["name"][len(PREFIX):] in RANGES]
    by_cpu = _Intervals(cpu_ranges)
    by_gpu = _Intervals([(e["ts"], e["ts"] + e.get("dur", 0.0), e["name"][len(PREFIX):]) for e in events
                         if cat(e) == "gpu_user_annotation" and e["name"].startswith(PREFIX)])
    gpu = [e for e in events if cat(e) in ("kernel", "gpu_memcpy", "gpu_memset", "memcpy", "memset")]
    linked = {"launch": 0, "gpu_range": 0, "none": 0}
    items = []  # (name, range, op, us)
    if gpu:
        source, note = "cuda kernels", ""
        launch_ts = {_args(e)["correlation"]: e["ts"] for e in events
                     if cat(e) in ("cuda_runtime", "cuda_driver", "runtime") and "correlation" in _args(e)}
        op_name = {_args(e)["External id"]: e["name"] for e in events
                   if cat(e) == "cpu_op" and "External id" in _args(e)}
        for e in gpu:
            a = _args(e)
            t = launch_ts.get(a.get("correlation"))
            where = by_cpu.find(t) if t is not None else None
            if t is not None:
                linked["launch"] += 1
            else:
                where = by_gpu.find(e["ts"])
                linked["gpu_range" if where else "none"] += 1
            items.append((e["name"], where or OUTSIDE, op_name.get(a.get("External id"), ""), e.get("dur", 0.0)))
    else:
        source = "cpu ops"
        note = ("no CUDA kernels in the trace (CPU run, or CUPTI gave none): the CPU ops' own times are categorised "
                "instead, each op counted as one launch")
        for e, own in _self_times([e for e in events if cat(e) == "cpu_op"]):
            items.append((e["name"], by_cpu.find(e["ts"]) or OUTSIDE, e["name"], own))
    per_cat = {c: [0.0, 0] for c in CATEGORIES}
    per_range = {r: {"kernel_us": 0.0, "cats": defaultdict(lambda: [0.0, 0])} for r in (*RANGES, OUTSIDE)}
    per_kernel = defaultdict(lambda: [0.0, 0])
    for name, where, op, us in items:
        c = classify(name, where, op)
        per_cat[c][0] += us
        per_cat[c][1] += 1
        per_range[where]["kernel_us"] += us
        per_range[where]["cats"][c][0] += us
        per_range[where]["cats"][c][1] += 1
        per_kernel[(name, c, where)][0] += us
        per_kernel[(name, c, where)][1] += 1
    total_us = sum(v[0] for v in per_cat.values())
    cpu_us = defaultdict(float)
    for start, end, name in cpu_ranges:
        cpu_us[name] += end - start
    if steps_seen:  # the steps' wall time that no range covers
        cpu_us[OUTSIDE] = sum(e.get("dur", 0.0) for e in steps_seen) - sum(cpu_us.values())

    def ms(us: float) -> float:
        """Microseconds over the profiled steps -> milliseconds per step."""
        return us / 1000.0 / steps

    return {
        "source": source, "note": note, "steps": steps,
        "profiled_step_ms": (sum(e.get("dur", 0.0) for e in steps_seen) / 1000.0 / steps) if steps_seen else None,
        "kernel_ms_per_step": ms(total_us), "launches_per_step": len(items) / steps,
        "categories": {c: {"ms_per_step": ms(us), "share": us / total_us if total_us else 0.0,
                           "launches_per_step": n / steps} for c, (us, n) in per_cat.items()},
        "ranges": {r: {"cpu_ms_per_step": ms(cpu_us.get(r, 0.0)), "kernel_ms_per_step": ms(v["kernel_us"]),
                       "categories": {c: {"ms_per_step": ms(us), "launches_per_step": n / steps}
                                      for c, (us, n) in sorted(v["cats"].items())}}
                   for r, v in per_range.items()},
        "top_kernels": [[name, c, where, ms(us), n / steps] for (name, c, where), (us, n)
                        in sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:top]],
        "linked": linked,
    }


# ------------------------------------------------------------------------------------------------ ranges and timing


class StepRanges:
    """The profiler ranges of one step, opened by name: entering one closes the one open before it. on_step_end
    (the profiler's step()) is called by end_step(); seen lists the ranges entered, in order. Without on_step_end
    (a timed run, no profiler) no range is opened."""

    def __init__(self, on_step_end: Callable[[], None] | None = None):
        self.on_step_end = on_step_end
        self.seen: list[str] = []
        self._open = None

    def enter(self, name: str) -> None:
        """Close the open range and open step::name."""
        self.close()
        self.seen.append(name)
        if self.on_step_end is None:
            return
        self._open = torch.profiler.record_function(PREFIX + name)
        self._open.__enter__()

    def close(self) -> None:
        """Close the open range, if any."""
        if self._open is not None:
            self._open.__exit__(None, None, None)
            self._open = None

    def end_step(self) -> None:
        """Close the open range; tell the profiler a step ended."""
        self.close()
        if self.on_step_end is not None:
            self.on_step_end()


class _RangedScaler:
    """A GradScaler whose scale() opens "backward" (engine: scaler.scale(loss).backward()) and unscale_() opens
    "optimizer" (then clipping, step, update, zero_grad)."""

    def __init__(self, scaler: Any, ranges: StepRanges):
        self._scaler, self._ranges = scaler, ranges

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """Open "backward"; the scaled loss."""
        self._ranges.enter("backward")
        return self._scaler.scale(loss)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Open "optimizer"; unscale the gradients."""
        self._ranges.enter("optimizer")
        self._scaler.unscale_(optimizer)

    def __getattr__(self, name: str) -> Any:
        """Everything else: the GradScaler's own."""
        return getattr(self._scaler, name)


class _RangedEMA:
    """A ModelEMA whose update() is the range "ema" and ends the step."""

    def __init__(self, ema: Any, ranges: StepRanges):
        self._ema, self._ranges = ema, ranges

    def update(self, model: torch.nn.Module) -> None:
        """The EMA update in the range "ema"; then the step's end."""
        self._ranges.enter("ema")
        self._ema.update(model)
        self._ranges.end_step()


def wall_ms(run: Callable[[int], Any], n: int, device: torch.device) -> float:
    """Wall milliseconds per step of run(n) (CUDA events on CUDA, perf_counter on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(n)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n
    t0 = time.perf_counter()
    run(n)
    return (time.perf_counter() - t0) * 1000.0 / n


def profile_steps(run: Callable[[int, StepRanges], Any], steps: int, warmup: int, cuda: bool, trace: Path) -> dict:
    """run(warmup + steps, ranges) under torch.profiler (CPU, and CUDA activities on CUDA), recording the last steps,
    each ended by a device sync; the Chrome trace is written to trace and analysed: {"profile": analyse_trace()}, or
    {"profile_error": why} if that failed (the phase's timings are kept)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        with profile(activities=activities, schedule=schedule(wait=0, warmup=warmup, active=steps, repeat=1),
                     on_trace_ready=lambda p: p.export_chrome_trace(str(trace))) as prof:
            def step_end() -> None:
                """Wait for the step's kernels (so that each runs inside its own step's window, launch included),
                then tell the profiler the step ended."""
                if cuda:
                    torch.cuda.synchronize()
                prof.step()
            run(warmup + steps, StepRanges(step_end))
        with open(trace) as f:
            return {"profile": analyse_trace(json.load(f), steps)}
    except Exception as e:
        import traceback
        traceback.print_exc()
        return {"profile_error": f"{type(e).__name__}: {e}"}


# ------------------------------------------------------------------------------------------------ the two trainers


def ours_phase(a: argparse.Namespace, frozen: bool, batch: int, trace: Path) -> dict:
    """Our trainer's step (bench_train.build_ceiling_step + engine.train_one_epoch): eager and graphed wall time,
    then the profiled eager steps."""
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # as train_fred.py
    s = build_ceiling_step(a.phi, a.imgsz, batch, frozen, a.device, graph=False, arch=a.arch,
                           compile_backend=a.compile)
    engine_steps(s, a.warmup)
    out = {"batch": batch, "cudnn_benchmark": cuda, "eager_step_ms": wall_ms(lambda n: engine_steps(s, n), a.steps,
                                                                               device)}
    out["graph_step_ms"] = None
    if cuda and not a.no_graph:
        add_cuda_graph(s)
        engine_steps(s, a.warmup)
        out["graph_step_ms"] = wall_ms(lambda n: engine_steps(s, n), a.steps, device)

    def run(n: int, ranges: StepRanges) -> None:
        def loss_fn(images: torch.Tensor, targets: torch.Tensor) -> dict:
            """The engine's eager loss function (criterion(model(images), ...)), in the forward and loss ranges."""
            ranges.enter("forward")
            preds = s.model(images)
            ranges.enter("loss")
            parts = s.criterion(preds, targets, tuple(images.shape[2:]))
            ranges.close()
            return parts
        engine_steps(s, n, loss_fn=loss_fn, ema=_RangedEMA(s.ema, ranges), scaler=_RangedScaler(s.scaler, ranges))
        if ranges.seen != list(RANGES) * n:
            raise RuntimeError(f"training.engine's step no longer calls loss_fn, scaler.scale, scaler.unscale_ and "
                               f"ema.update in this order (saw {ranges.seen[:6]}...): fix bench_profile's ranges")

    out.update(profile_steps(run, a.steps, a.profile_warmup, cuda, trace))
    out["peak_mem_GB"] = round(torch.cuda.max_memory_reserved(device) / 1e9, 2) if cuda else 0.0
    return out


def ultra_phase(a: argparse.Namespace, frozen: bool, batch: int, trace: Path) -> dict:
    """Ultralytics' step as its trainer takes it (see the module docstring) on the same batch and targets."""
    from types import SimpleNamespace

    from ultralytics.cfg import get_cfg
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import ModelEMA

    device = torch.device(a.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = False  # its trainer leaves it off
    accumulate = a.ultra_accumulate or max(round(64 / batch), 1)  # its trainer: nbs 64

    def whole(n: int) -> int:
        """n rounded up to whole optimizer steps."""
        return -(-n // accumulate) * accumulate

    images, targets = random_batch(batch, a.imgsz, device)  # the same batch as ours
    torch.manual_seed(0)
    model = DetectionModel(model_yaml(a.phi, a.arch), nc=1, verbose=False).to(device)
    model.args = get_cfg()  # its loss gains (box 7.5, cls 0.5, dfl 1.5)
    frozen_names = [f"model.{x}." for x in range(BACKBONE_LAYERS[a.arch] if frozen else 0)] + [".dfl"]
    for k, v in model.named_parameters():
        v.requires_grad = not any(x in k for x in frozen_names)
    optimizer = BaseTrainer.build_optimizer(SimpleNamespace(args=None, data={}), model, name="SGD", lr=0.01,
                                            momentum=0.937, decay=5e-4 * batch * accumulate / 64)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    ema = ModelEMA(model)
    model.train()
    for n, m in model.named_modules():
        if any(x in n for x in frozen_names) and isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    targets = targets[targets[:, 0].argsort(stable=True)]  # its collate sorts the boxes by image; its loss needs it
    data = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:6] / a.imgsz}
    count = [0]

    def run(n: int, ranges: StepRanges | None = None) -> None:
        ranges = ranges or StepRanges()
        for _ in range(n):
            img = images.float() / 255  # its preprocess_batch
            with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
                ranges.enter("forward")
                preds = model(img)
                ranges.enter("loss")
                loss = model.loss({"img": img, **data}, preds)[0].sum()
            ranges.enter("backward")
            scaler.scale(loss).backward()
            count[0] += 1
            if count[0] % accumulate == 0:
                ranges.enter("optimizer")
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
                ranges.enter("ema")
                ema.update(model)
            ranges.end_step()
        if cuda:
            torch.cuda.synchronize(device)

    run(whole(a.warmup))
    steps = whole(a.steps)
    out = {"batch": batch, "accumulate": accumulate, "cudnn_benchmark": False,
           "eager_step_ms": wall_ms(run, steps, device), "graph_step_ms": None}
    out.update(profile_steps(run, steps, whole(a.profile_warmup), cuda, trace))
    out["peak_mem_GB"] = round(torch.cuda.max_memory_reserved(device) / 1e9, 2) if cuda else 0.0
    return out


# ------------------------------------------------------------------------------------------------ report and CLI


def finish(entry: dict, cuda: bool) -> dict:
    """Add img/s and the GPU busy shares (summed kernel time / step wall time, eager and graphed) to a phase's entry."""
    profile = entry.get("profile")
    kernels = cuda and profile is not None and profile["source"] == "cuda kernels"
    for kind in ("eager", "graph"):
        ms = entry[f"{kind}_step_ms"]
        entry[f"img_per_s_{kind}"] = round(entry["batch"] * 1000.0 / ms, 1) if ms else None
        entry["gpu_busy_share" + ("" if kind == "eager" else "_graph")] = (
            profile["kernel_ms_per_step"] / ms if kernels and ms else None)
    return entry


def report(result: dict) -> None:
    """One table per trainer and phase (categories, ranges, top kernels), ours beside Ultralytics per phase, and a
    summary."""
    summary = []
    for trainer, label in (("ours", "ours"), ("ultralytics", "Ultralytics")):
        for phase, e in result.get(trainer, {}).items():
            if "profile" not in e:
                print(f"\n{label}, {phase}: no profile: {e.get('profile_error') or e.get('error')}")
                if "eager_step_ms" in e:
                    summary.append([label, phase, e["batch"], e["eager_step_ms"], e["graph_step_ms"],
                                    e["img_per_s_eager"], e["img_per_s_graph"], None, None, None, None, None,
                                    e["peak_mem_GB"]])
                continue
            p = e["profile"]
            rows = [[c, v["ms_per_step"], f"{100 * v['share']:.1f} %", f"{v['launches_per_step']:g}"]
                    for c, v in sorted(p["categories"].items(), key=lambda kv: -kv[1]["ms_per_step"])
                    if v["launches_per_step"]]
            rows.append(["total", p["kernel_ms_per_step"], "100 %", f"{p['launches_per_step']:g}"])
            extra = f", accumulate {e['accumulate']}" if "accumulate" in e else ""
            print_table(f"{label}, {phase} (batch {e['batch']}{extra}): {p['source']}, per step; eager step "
                        f"{e['eager_step_ms']:.2f} ms, graphed "
                        + (f"{e['graph_step_ms']:.2f} ms" if e["graph_step_ms"] else "-")
                        + (f"; kernels {100 * e['gpu_busy_share']:.0f} % of the eager step"
                           if e.get("gpu_busy_share") is not None else "")
                        + (f", {100 * e['gpu_busy_share_graph']:.0f} % of the graphed one"
                           if e.get("gpu_busy_share_graph") is not None else ""),
                        ["category", "ms/step", "share", "launches/step"], rows)
            print_table(f"{label}, {phase}: ranges, ms per profiled step (CPU: the range's wall time on the main "
                        "thread; kernels: their summed time, or the CPU ops' own time without CUDA kernels)",
                        ["range", "CPU ms", "kernel ms"], [[r, v["cpu_ms_per_step"], v["kernel_ms_per_step"]]
                                                           for r, v in p["ranges"].items()])
            print_table(f"{label}, {phase}: top kernels", ["kernel", "category", "range", "ms/step", "launches/step"],
                        [[name[:100], c, where, ms, f"{n:g}"] for name, c, where, ms, n in p["top_kernels"][:10]])
            unplaced = p["linked"]["gpu_range"] + p["linked"]["none"]
            if unplaced:
                print(f"note: {unplaced} GPU activities had no launch record in the trace: {p['linked']['gpu_range']} "
                      f"placed by the GPU-side ranges, {p['linked']['none']} counted as 'outside'")
            summary.append([label, phase, e["batch"], e["eager_step_ms"], e["graph_step_ms"], e["img_per_s_eager"],
                            e["img_per_s_graph"], p["kernel_ms_per_step"], e.get("gpu_busy_share"),
                            e.get("gpu_busy_share_graph"), p["launches_per_step"], p["profiled_step_ms"],
                            e["peak_mem_GB"]])
    for phase in ("frozen", "unfrozen"):
        o, u = (result.get(t, {}).get(phase, {}).get("profile") for t in ("ours", "ultralytics"))
        if not (o and u):
            continue
        rows = []
        for c, oc, uc in [(c, o["categories"][c], u["categories"][c]) for c in CATEGORIES] + [("total", o, u)]:
            oms, ums = oc.get("ms_per_step", oc.get("kernel_ms_per_step")), uc.get("ms_per_step",
                                                                                  uc.get("kernel_ms_per_step"))
            on, un = oc["launches_per_step"], uc["launches_per_step"]
            if on or un:
                rows.append([c, oms, ums, oms / ums if ums else None, f"{on:g}", f"{un:g}"])
        print_table(f"{phase}: ours beside Ultralytics, per step (Ultralytics' optimizer and EMA spread over its "
                    "accumulated batches)", ["category", "ours ms", "Ultralytics ms", "ours / Ultralytics",
                                             "ours launches", "Ultralytics launches"], rows)
    if summary:
        print_table("Summary (eager and graphed: timed without the profiler)",
                    ["trainer", "phase", "batch", "eager ms", "graph ms", "eager img/s", "graph img/s",
                     "kernel ms", "busy eager", "busy graph", "launches", "profiled step ms", "peak GB"], summary)
    print(f"note: {result['note']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line; --quick: the CPU smoke-test sizes."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phi", default="s")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--arch", default="yolov8", choices=ULTRA_ARCHS)
    p.add_argument("--phases", default="frozen,unfrozen", help="comma list of frozen, unfrozen")
    p.add_argument("--frozen_batch", type=int, default=32)
    p.add_argument("--unfrozen_batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed steps, and profiled steps")
    p.add_argument("--warmup", type=int, default=10, help="steps before each timing")
    p.add_argument("--profile_warmup", type=int, default=2, help="profiler warm-up steps (not recorded)")
    p.add_argument("--ultra_accumulate", type=int, default=0, help="Ultralytics' batches per optimizer step (0: as its "
                   "trainer, round(64 / batch))")
    p.add_argument("--no_graph", action="store_true", help="skip our CUDA-graphed timing")
    p.add_argument("--compile", default="", metavar="BACKEND",
                   help="our model through torch.compile with this backend, as COMPILE_MODEL (e.g. inductor; the "
                        "profile then shows its fused kernels)")
    p.add_argument("--skip_ultra", action="store_true", help="profile ours only")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads while profiling (0: torch's default)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "bench_profile.json"))
    p.add_argument("--trace_dir", default="", help="keep the Chrome traces here (<trainer>_<phase>.json.gz)")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: phi n, input 64, batch 2, 2 steps, 1 warm-up, "
                   "Ultralytics stepping every batch, 1 CPU thread")
    a = p.parse_args(argv)
    if a.quick:
        quick = dict(phi="n", imgsz=64, frozen_batch=2, unfrozen_batch=2, steps=2, warmup=1, profile_warmup=1,
                     ultra_accumulate=1, device="cpu", threads=1)
        for key, value in quick.items():
            if getattr(a, key) == p.get_default(key):
                setattr(a, key, value)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.phases = [x.strip() for x in a.phases.split(",") if x.strip()]
    if set(a.phases) - {"frozen", "unfrozen"}:
        p.error(f"--phases: frozen and/or unfrozen, got {a.phases}")
    return a


def run_phase(a: argparse.Namespace, trainer: str, fn: Callable, phase: str, tmp: Path) -> dict:
    """One trainer's phase (fn: ours_phase or ultra_phase) with finish()'s figures; a failure is returned as
    {"ok": False, "error"} (the other phases still run); the trace is kept gzipped under --trace_dir if asked."""
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    batch = a.frozen_batch if phase == "frozen" else a.unfrozen_batch
    print(f"[profile] {trainer} {phase} batch {batch}", flush=True)
    trace = tmp / f"{trainer}_{phase}.json"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        entry = finish(fn(a, phase == "frozen", batch, trace), cuda)
    except Exception as e:
        import traceback
        traceback.print_exc()
        entry = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    if a.trace_dir and trace.is_file():
        Path(a.trace_dir).mkdir(parents=True, exist_ok=True)
        with open(trace, "rb") as src, gzip.open(Path(a.trace_dir) / f"{trace.name}.gz", "wb", compresslevel=3) as dst:
            shutil.copyfileobj(src, dst)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return entry


def main(argv: list[str] | None = None) -> int:
    """Profile the chosen trainers and phases; print the tables; write the JSON."""
    a = parse_args(argv)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"bench": "profile", "args": vars(a), "note": GRAPH_NOTE, "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                    "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    trainers = [("ours", ours_phase)] + ([] if a.skip_ultra else [("ultralytics", ultra_phase)])
    if not a.skip_ultra:
        import ultralytics
        result["ultralytics_version"] = ultralytics.__version__
    failed, threads = False, torch.get_num_threads()
    torch.set_num_threads(a.threads or threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for trainer, fn in trainers:
                for phase in a.phases:
                    entry = run_phase(a, trainer, fn, phase, Path(tmp))
                    failed |= entry.get("ok") is False or "profile_error" in entry
                    result.setdefault(trainer, {})[phase] = entry
                    out.write_text(json.dumps(result, indent=1, default=str))
    finally:
        torch.set_num_threads(threads)
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.write_text(json.dumps(result, indent=1, default=str))
    report(result)
    print(f"results: {out}" + (f"; traces: {a.trace_dir}" if a.trace_dir else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
