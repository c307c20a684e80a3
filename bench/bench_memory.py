"""Where a training step's memory goes, on the CPU: the bytes autograd saves for backward and the live-memory peak of
our model + loss against Ultralytics' (the test-only oracle) at the same weights, input and targets.

    python bench/bench_memory.py --arch yolov8-p2 --batch 2 --imgsz 640 --amp --channels_last [--frozen] [--per_image 8]

SavedTensors counts each storage autograd keeps for backward once (a tensor saved by several ops, or a view of a
larger tensor, holds one storage), by part: the model's backbone, neck and head at the stride of the saved map, the
loss by source line. LiveBytes follows every storage the step creates (a TorchDispatchMode) and reports the peak of
those alive at once, forward and backward. Targets: one box per image, padded to per_image rows per image as the
CUDA-graphed trainer pads them (pad_targets); Ultralytics pads to the largest count of any image. --amp runs both
under CPU autocast to bfloat16, as many bytes as fp16 AMP on the GPU (CPU autocast's op lists are close to CUDA's for
these networks); without it everything is float32. Everything scales with the batch: batch 2 times 16 is batch 32.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from typing import Callable, Optional

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MB = 1e6


def _code_site() -> str:
    """'file:line function' of the innermost caller in this project or in ultralytics (not torch, not this file)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if (name.startswith(ROOT) or "ultralytics" in name) and name != __file__ and "/torch/" not in name:
            short = name.split("ultralytics/", 1)[-1] if "ultralytics" in name else os.path.relpath(name, ROOT)
            return f"{short}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


class _ModuleStack:
    """Qualified name of the innermost module running now, for every module of the given roots."""

    def __init__(self, roots: dict[str, nn.Module]):
        self.stack: list[str] = []
        self.handles = []
        for prefix, root in roots.items():
            for name, module in root.named_modules():
                full = f"{prefix}.{name}" if name else prefix
                self.handles.append(module.register_forward_pre_hook(
                    lambda m, a, full=full: self.stack.append(full)))
                self.handles.append(module.register_forward_hook(lambda m, a, o: self._pop(), always_call=True))

    def _pop(self) -> None:
        self.stack.pop()

    def top(self) -> str:
        """Innermost running module, '' outside every module."""
        return self.stack[-1] if self.stack else ""

    def layer(self) -> str:
        """Outermost running module below the root's children ('ours.neck.top_down_p3', 'ultra.model.15'): a module
        shared by several layers (Ultralytics' one SiLU) is named once, so the innermost does not tell the layer."""
        return next((name for name in self.stack if name.count(".") == 2), self.top())

    def remove(self) -> None:
        """Drop the hooks."""
        for h in self.handles:
            h.remove()


class SavedTensors:
    """Context manager: every distinct storage autograd saves for backward inside it, once, with the module and the
    source line that saved it; storages in `exclude` (parameters, the input batch) are left out."""

    def __init__(self, roots: Optional[dict[str, nn.Module]] = None, exclude: tuple[torch.Tensor, ...] = ()):
        self.roots = roots or {}
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.items: dict[int, dict] = {}  # storage address -> {bytes, module, site, shape, dtype}

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if storage.nbytes() and key not in self.excluded and key not in self.items:
            self.items[key] = {"bytes": storage.nbytes(), "module": self.modules.top(),
                               "layer": self.modules.layer(), "site": _code_site(),
                               "shape": tuple(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
        return t

    def __enter__(self) -> "SavedTensors":
        self.modules = _ModuleStack(self.roots)
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)
        self.modules.remove()

    @property
    def total(self) -> int:
        """Bytes of all distinct saved storages."""
        return sum(item["bytes"] for item in self.items.values())


class LiveBytes(TorchDispatchMode):
    """Dispatch mode: peak bytes of the storages created inside it that are alive at once, and what they were at the
    peak (by source line)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int, str]] = {}
        self.older: dict[int, StorageWeakRef] = {}  # storages an op received that were not made inside
        self.now = self.peak = 0
        self.at_peak: dict[str, int] = {}
        self.peak_site = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs)):  # storages from before (inputs, parameters) are not counted
            if isinstance(t, torch.Tensor):
                ref = StorageWeakRef(t.untyped_storage())
                if ref.cdata not in self.live and (ref.cdata not in self.older or self.older[ref.cdata].expired()):
                    self.older[ref.cdata] = ref
        out = func(*args, **(kwargs or {}))
        site = None
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes():
                ref = StorageWeakRef(t.untyped_storage())
                older = self.older.get(ref.cdata)
                if ref.cdata not in self.live and (older is None or older.expired()):
                    site = site or f"{_code_site()} [{func.__name__}]"
                    self.live[ref.cdata] = (ref, t.untyped_storage().nbytes(), site)
                    self.now += t.untyped_storage().nbytes()
        for key in [k for k, (ref, _, _) in self.live.items() if ref.expired()]:
            self.now -= self.live.pop(key)[1]
        if self.now > self.peak:
            self.peak, self.peak_site = self.now, site or func.__name__
            by_site: dict[str, int] = defaultdict(int)
            for _, nbytes, s in self.live.values():
                by_site[s] += nbytes
            self.at_peak = dict(by_site)
        return out


def part_of(layer: str, site: str, shape: tuple, imgsz: int, batch: int, arch_layers: dict[str, str]) -> str:
    """Coarse part of a saved tensor: 'backbone', 'neck', 'head' with the stride of its map ('head s4'), 'loss', or
    'weights' (autocast's low-precision copies of conv weights)."""
    if not layer:
        return "loss" if ("loss" in site or "tal" in site or "assigner" in site or "boxes" in site) else "other"
    if len(shape) == 4 and shape[0] != batch:
        return "weights"
    kind = layer.split(".")[1] if layer.startswith("ours.") else arch_layers.get(layer, "?")
    stride = f" s{imgsz // shape[-1]}" if len(shape) == 4 and shape[-1] else ""
    return f"{kind}{stride}"


def ultralytics_parts(um: nn.Module) -> dict[str, str]:
    """'ultra.model.<i>' -> backbone / neck / head, from the yaml's backbone length."""
    n_backbone = len(um.yaml["backbone"])
    return {f"ultra.model.{i}": "backbone" if i < n_backbone else ("head" if i == len(um.model) - 1 else "neck")
            for i in range(len(um.model))}


def make_targets(batch: int, imgsz: int, seed: int = 0) -> torch.Tensor:
    """[B, 6] targets (batch_idx, cls 0, cx, cy, w, h in pixels): one 10-60 px box per image."""
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(batch, 2, generator=g) * 50 + 10
    cxy = torch.rand(batch, 2, generator=g) * (imgsz - 80) + 40
    return torch.cat([torch.arange(batch).float()[:, None], torch.zeros(batch, 1), cxy, wh], 1)


def build_pair(phi: str, arch: str, nc: int = 1, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(ours, Ultralytics' DetectionModel) with the same weights, in training mode."""
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import IterableSimpleNamespace

    from nets import build_model
    from nets.convert import from_ultralytics

    torch.manual_seed(seed)
    variant = "-p2" if arch == "yolov8-p2" else ""
    um = DetectionModel(f"yolov8{phi}{variant}.yaml", nc=nc, verbose=False)
    um.args = IterableSimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
    ours = build_model(phi, nc, arch=arch)
    ours.load_state_dict(from_ultralytics(um.state_dict()), strict=True)
    return ours.train(), um.train()


def freeze_ultralytics(um: nn.Module, layers: int = 10) -> None:
    """Ultralytics' freeze=10: the backbone layers' parameters stop requiring grad (BatchNorm stays in train mode as in
    Ultralytics' trainer)."""
    for i in range(layers):
        um.model[i].requires_grad_(False)


def ours_step(model: nn.Module, imgsz: int, per_image: int, amp: Optional[torch.dtype] = None
              ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Forward (under autocast to amp, if given) + loss of our trainer (padding the targets to per_image rows per
    image, as the CUDA graph does) -> total loss."""
    from nets.loss import DetectionLoss, pad_targets, total_loss

    criterion = DetectionLoss(model.num_classes, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)

    def step(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        batch = images.shape[0]
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            preds = model(images)
        parts = criterion(preds, pad_targets(targets, per_image * batch, batch), (imgsz, imgsz))
        return total_loss(parts, criterion.weight_dict, batch)
    return step


def ultralytics_step(um: nn.Module, imgsz: int, amp: Optional[torch.dtype] = None
                     ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Forward + v8DetectionLoss of Ultralytics, both under autocast to amp if given (as its trainer) -> total loss."""
    from ultralytics.utils.loss import v8DetectionLoss

    criterion = v8DetectionLoss(um)

    def step(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:6] / imgsz}
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = criterion(um(images), batch)
        return loss.sum()
    return step


def measure(step: Callable, model: nn.Module, prefix: str, images: torch.Tensor, targets: torch.Tensor,
            imgsz: int, arch_layers: dict[str, str], live: bool = True) -> dict:
    """Saved-for-backward bytes by part and by item, and (live) the peak of live bytes over forward and backward."""
    params = tuple(model.parameters()) + tuple(model.buffers())
    with SavedTensors({prefix: model}, exclude=params + (images,)) as saved:
        loss = step(images, targets)
    by_part: dict[str, int] = defaultdict(int)
    for item in saved.items.values():
        item["part"] = part_of(item["layer"], item["site"], item["shape"], imgsz, images.shape[0], arch_layers)
        by_part[item["part"]] += item["bytes"]
    loss.backward()
    del loss
    out = {"saved": saved.total, "by_part": dict(by_part), "items": list(saved.items.values())}
    if live:
        model.zero_grad(set_to_none=True)
        tracker = LiveBytes()
        with tracker:
            step(images, targets).backward()
        out.update(peak=tracker.peak, peak_site=tracker.peak_site, at_peak=tracker.at_peak)
    model.zero_grad(set_to_none=True)
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    """Print ours against Ultralytics; returns both measurements."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--phi", default="s")
    p.add_argument("--arch", default="yolov8", choices=("yolov8", "yolov8-p2"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--per_image", type=int, default=8, help="target rows per image of our graphed loss (trainer: 8)")
    p.add_argument("--frozen", action="store_true", help="freeze the backbone (ours: freeze_backbone)")
    p.add_argument("--amp", action="store_true",
                   help="CPU autocast to bfloat16 (2 bytes, as fp16 on the GPU; CPU autocast's op lists)")
    p.add_argument("--channels_last", action="store_true", help="NHWC model and images (the trainer's CUDA layout)")
    p.add_argument("--no_live", action="store_true", help="skip the live-bytes peak (slower)")
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args(argv)
    from nets import freeze_backbone

    ours, um = build_pair(a.phi, a.arch)
    if a.frozen:
        freeze_backbone(ours, True)
        freeze_ultralytics(um)
    images = torch.rand(a.batch, 3, a.imgsz, a.imgsz)
    amp = torch.bfloat16 if a.amp else None
    if a.channels_last:
        ours.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    targets = make_targets(a.batch, a.imgsz)
    results = {}
    for name, step, model, prefix in (("ours", ours_step(ours, a.imgsz, a.per_image, amp), ours, "ours"),
                                      ("ultralytics", ultralytics_step(um, a.imgsz, amp), um, "ultra")):
        results[name] = measure(step, model, prefix, images, targets, a.imgsz, ultralytics_parts(um),
                                live=not a.no_live)
    parts = sorted(set(results["ours"]["by_part"]) | set(results["ultralytics"]["by_part"]))
    print(f"\n{a.arch} {a.phi}, {a.imgsz} px, batch {a.batch}, {'frozen' if a.frozen else 'unfrozen'}, "
          f"{'bf16 autocast' if a.amp else 'float32'}{', ours channels_last' if a.channels_last else ''}, CPU; "
          f"saved for backward, MB")
    print(f"{'part':<16} {'ours':>9} {'ultralytics':>12}")
    for part in parts:
        if not (results["ours"]["by_part"].get(part) or results["ultralytics"]["by_part"].get(part)):
            continue
        print(f"{part:<16} {results['ours']['by_part'].get(part, 0) / MB:9.1f} "
              f"{results['ultralytics']['by_part'].get(part, 0) / MB:12.1f}")
    print(f"{'total':<16} {results['ours']['saved'] / MB:9.1f} {results['ultralytics']['saved'] / MB:12.1f}")
    if not a.no_live:
        print(f"{'live peak':<16} {results['ours']['peak'] / MB:9.1f} {results['ultralytics']['peak'] / MB:12.1f}")
    for name, r in results.items():
        print(f"\n{name}: largest saved storages")
        for item in sorted(r["items"], key=lambda i: -i["bytes"])[:a.top]:
            print(f"  {item['bytes'] / MB:8.1f} MB {item['dtype']:>8} {str(item['shape']):<22} {item['part']:<12} "
                  f"{item['module']:<40} {item['site']}")
        by_site: dict[str, int] = defaultdict(int)
        for item in r["items"]:
            if item["part"] in ("loss", "other"):
                by_site[item["site"]] += item["bytes"]
        print(f"{name}: loss saved by line")
        for site, nbytes in sorted(by_site.items(), key=lambda kv: -kv[1]):
            print(f"  {nbytes / MB:8.1f} MB {site}")
        if not a.no_live:
            print(f"{name}: live at the peak ({r['peak'] / MB:.1f} MB, reached at {r['peak_site']})")
            for site, nbytes in sorted(r["at_peak"].items(), key=lambda kv: -kv[1])[:a.top]:
                print(f"  {nbytes / MB:8.1f} MB {site}")
    return results


if __name__ == "__main__":
    main()
