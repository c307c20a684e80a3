"""CUDA graphs of the training forward/backward, and the training step's freedom from host syncs (CUDA only).

These need a GPU: CI (CPU only) skips them; they run on the H200 through the device tool (see README, Measured).
"""
import copy
import csv
import math

import pytest
import torch

from nets import build_model, freeze_backbone
from nets.loss import DetectionLoss
from speed.cuda_graph import GraphedTrainLoss
from training import engine
from training.ema import ModelEMA
from training.optim import build_optimizer
from utils import device_batches

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _batch(n: int, size: int, seed: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float images [n, channels, size, size] (channels_last, CUDA) and targets [M, 6]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, size, size, generator=g).cuda().contiguous(memory_format=torch.channels_last)
    m = 3 * n
    wh = torch.rand(m, 2, generator=g) * 40 + 8
    cxy = torch.rand(m, 2, generator=g) * (size - 60) + 30
    targets = torch.cat([torch.arange(m).remainder(n).float()[:, None], torch.zeros(m, 1), cxy, wh], 1).cuda()
    return images, targets


def _grads(model, loss_fn, criterion, images, targets) -> tuple[dict, torch.Tensor]:
    """Parameter gradients and total loss of one fp16-autocast step; loss_fn(images, targets) -> parts."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.float16):
        parts = loss_fn(images, targets)
        loss = sum(parts[k] * w for k, w in criterion.weight_dict.items())
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, loss.detach()


def _eager(model, criterion):
    """The eager loss_fn: criterion(model(images), targets, shape)."""
    return lambda images, targets: criterion(model(images), targets, tuple(images.shape[2:]))


@pytest.mark.parametrize("frozen", [True, False])
def test_graphed_step_matches_eager_and_leaves_state(frozen):
    torch.manual_seed(0)
    model = build_model("n", 1).cuda().to(memory_format=torch.channels_last)
    freeze_backbone(model, frozen)
    model.train()
    criterion = DetectionLoss(1, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)
    images, targets = _batch(4, 128, 1)
    before = copy.deepcopy(model.state_dict())
    graphed = GraphedTrainLoss(model, criterion, torch.empty_like(images), 64, torch.float16)
    for k, v in model.state_dict().items():  # capture's warm-up steps left no trace (BatchNorm statistics too)
        assert torch.equal(v, before[k]), k
    eager_model = copy.deepcopy(model)
    freeze_backbone(eager_model, frozen)  # a copy runs conv + BatchNorm until folded again, as the graph's model
    g_graph, loss_graph = _grads(model, graphed, criterion, images, targets)
    g_eager, loss_eager = _grads(eager_model, _eager(eager_model, criterion), criterion, images, targets)
    assert set(g_graph) == set(g_eager)
    assert all(not n.startswith("backbone") for n in g_graph) == frozen  # frozen: no backbone gradients
    torch.testing.assert_close(loss_graph, loss_eager, rtol=1e-3, atol=1e-4)
    for n in g_eager:
        torch.testing.assert_close(g_graph[n], g_eager[n], rtol=2e-2, atol=2e-3 * g_eager[n].abs().max().item())
    for k, v in eager_model.state_dict().items():  # same BatchNorm updates in the step
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-3, atol=1e-4)
    # a second batch, with another number of targets, through the same graph (copied into the static inputs)
    images2, targets2 = _batch(4, 128, 2)
    targets2 = targets2[:5]
    g2, loss2 = _grads(model, graphed, criterion, images2, targets2)
    g2e, loss2e = _grads(eager_model, _eager(eager_model, criterion), criterion, images2, targets2)
    torch.testing.assert_close(loss2, loss2e, rtol=1e-3, atol=1e-4)
    for n in g2e:
        torch.testing.assert_close(g2[n], g2e[n], rtol=2e-2, atol=2e-3 * g2e[n].abs().max().item())


def test_graphed_loss_falls_back_for_other_shapes_many_targets_and_no_grad():
    model = build_model("n", 1).cuda().to(memory_format=torch.channels_last).train()
    criterion = DetectionLoss(1, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)
    images, targets = _batch(4, 128, 3)
    graphed = GraphedTrainLoss(model, criterion, images, len(targets) - 1, torch.float16)
    replays = []
    replay = graphed._graphed
    graphed._graphed = lambda *args: replays.append(1) or replay(*args)
    smaller, small_targets = _batch(3, 128, 4)
    # a last, smaller batch; more targets than the graph holds; no autograd (the eager loss, same numbers)
    for x, t, grad in ((smaller, small_targets, True), (images, targets, True), (images, targets[:-1], False)):
        with torch.autocast("cuda", dtype=torch.float16), torch.set_grad_enabled(grad):
            out, ref = graphed(x, t), criterion(model(x), t, tuple(x.shape[2:]))
        for k in ref:
            torch.testing.assert_close(out[k], ref[k])
    assert not replays
    with torch.autocast("cuda", dtype=torch.float16):
        graphed(images, targets[:-1])
    assert len(replays) == 1


def test_graph_of_a_five_channel_model_replays_and_matches_eager():
    """The captured shape is the sample's: a 5-channel model (RGB + event fusion) graphs like a 3-channel one."""
    torch.manual_seed(0)
    model = build_model("n", 1, in_channels=5).cuda().to(memory_format=torch.channels_last).train()
    criterion = DetectionLoss(1, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)
    images, targets = _batch(4, 128, 5, channels=5)
    graphed = GraphedTrainLoss(model, criterion, torch.empty_like(images), 32, torch.float16)
    replays = []
    replay = graphed._graphed
    graphed._graphed = lambda *args: replays.append(1) or replay(*args)
    eager_model = copy.deepcopy(model)
    _, loss_graph = _grads(model, graphed, criterion, images, targets)
    _, loss_eager = _grads(eager_model, _eager(eager_model, criterion), criterion, images, targets)
    assert replays and graphed.shape == (4, 5, 128, 128)
    torch.testing.assert_close(loss_graph, loss_eager, rtol=1e-3, atol=1e-4)


def _eager_step_peak(model, criterion, images, targets) -> int:
    """Bytes one eager fp16 forward + backward of model and loss allocates at its peak, above what was allocated."""
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    _grads(model, _eager(model, criterion), criterion, images, targets)
    torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return torch.cuda.max_memory_allocated() - before


def test_a_phase_graph_holds_one_step_of_memory_not_its_warm_up_nor_the_previous_graph():
    """Issue 21: after a phase's graph is built, the memory reserved for it is about one step's (its memory pool), not
    also the blocks of capture's warm-up steps (cached for a side stream that nothing uses again) nor, after the
    switch to the unfrozen phase, the frozen phase's graph (torch's graphed callables sit in reference cycles: a
    dropped graph lives until the cyclic collector runs, and its pool goes back only through empty_cache)."""
    torch.manual_seed(0)
    model = build_model("s", 1).cuda().to(memory_format=torch.channels_last)
    criterion = DetectionLoss(1, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)
    images, targets = _batch(8, 640, 6)
    graphed, base = None, None
    for frozen in (True, False):  # the trainer's two phases, each with its own graph; the previous one dropped
        freeze_backbone(model, frozen)
        model.train()
        step = _eager_step_peak(model, criterion, images, targets)
        if base is None:
            torch.cuda.empty_cache()
            base = torch.cuda.memory_reserved()
        graphed = None
        graphed = GraphedTrainLoss(model, criterion, torch.empty_like(images), 64, torch.float16)
        grown = torch.cuda.memory_reserved() - base
        assert step > 400e6 and grown < 1.6 * step, (frozen, grown / 1e6, step / 1e6)
    _, loss = _grads(model, graphed, criterion, images, targets)  # the graph still replays
    assert torch.isfinite(loss)


def test_device_batches_hands_out_each_batch_whole_while_the_main_stream_is_busy():
    """The side-stream copy of batch i+1 runs while batch i's work is queued on the main stream; every batch reaches
    the main stream complete and in order (main waits for that batch's copy event)."""
    batches = [{"images": torch.full((2, 3, 64, 64), 10 * i, dtype=torch.uint8).pin_memory(),
                "targets": torch.full((1, 6), float(i)).pin_memory()} for i in range(6)]
    busy = torch.randn(2048, 2048, device="cuda")
    seen = []
    for i, (images, targets) in enumerate(device_batches.device_batches(batches, torch.device("cuda"), True)):
        for _ in range(20):  # a long queue on the main stream before the batch is read there
            busy = busy @ busy
            busy = busy / busy.norm()
        seen.append((images.amin() * 255, images.amax() * 255, targets.sum() / 6))
        assert images.is_contiguous(memory_format=torch.channels_last)
    for i, (lo, hi, t) in enumerate(seen):
        assert round(lo.item()) == round(hi.item()) == 10 * i and t.item() == i


@pytest.mark.parametrize("use_graph", [False, True])
def test_train_one_epoch_has_no_host_sync_between_log_steps(monkeypatch, use_graph):
    """Steps 2.. of an epoch run with sync_debug_mode='error' (any host sync raises), pinned host batches."""
    torch.manual_seed(0)
    model = build_model("n", 1).cuda().to(memory_format=torch.channels_last).train()
    criterion = DetectionLoss(1, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)
    optimizer = build_optimizer(model, "sgd", 0.01, 0.937, 5e-4, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    ema = ModelEMA(model)
    images, targets = _batch(4, 128, 5)
    batches = [{"images": (images * 255).to(torch.uint8).cpu().pin_memory(), "targets": targets.cpu().pin_memory()}
               for _ in range(8)]
    loss_fn = GraphedTrainLoss(model, criterion, images, 64, torch.float16) if use_graph else None
    read = engine._read_stats

    def read_without_debug(*args, **kwargs):
        torch.cuda.set_sync_debug_mode(0)  # the log step's one read is the allowed sync
        return read(*args, **kwargs)

    monkeypatch.setattr(engine, "_read_stats", read_without_debug)

    def stop(i: int) -> bool:
        if i == 2:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        return False

    try:
        options = engine.StepOptions(log_interval=100, nan_patience=100, amp_dtype=torch.float16, grad_clip=10.0,
                                     channels_last=True)
        stats = engine.train_one_epoch(model, ema, criterion, optimizer, scaler, batches, torch.device("cuda"),
                                       lambda i: 0.01, options, stop=stop, show_progress=False, loss_fn=loss_fn)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert stats["iteration"] == 8 and stats["skipped"] <= 1 and torch.isfinite(torch.tensor(stats["loss"]))



def _compiled_vs_eager(frozen: bool, amp_dtype):
    """Gradients and loss of one step through GraphedTrainLoss over the Inductor-compiled model, and of the eager
    model (autocast to amp_dtype, or float32 when None): ((graph grads, loss), (eager grads, loss))."""
    from speed.compiled import compile_model

    torch.manual_seed(0)
    model = build_model("n", 1).cuda().to(memory_format=torch.channels_last)
    freeze_backbone(model, frozen)
    model.train()
    eager_model = copy.deepcopy(model)
    freeze_backbone(eager_model, frozen)
    criterion = DetectionLoss(1, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)
    images, targets = _batch(4, 128, 3)
    graphed = GraphedTrainLoss(compile_model(model, "inductor"), criterion, torch.empty_like(images), 64, amp_dtype)
    out = []
    for m, fn in ((model, graphed), (eager_model, _eager(eager_model, criterion))):
        m.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            parts = fn(images, targets)
            loss = sum(parts[k] * w for k, w in criterion.weight_dict.items())
        loss.backward()
        out.append(({n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None},
                    loss.detach()))
    return out


@pytest.mark.parametrize("frozen", [True, False])
def test_graphed_step_through_an_inductor_compiled_model_matches_eager_in_float32(frozen):
    """COMPILE_MODEL="inductor" without autocast: the compiled network captured in the training graph gives the eager
    model's loss and gradients (fused kernels only reorder float32 arithmetic), frozen (folded backbone) and not."""
    (g_graph, loss_graph), (g_eager, loss_eager) = _compiled_vs_eager(frozen, None)
    assert set(g_graph) == set(g_eager) and g_graph
    torch.testing.assert_close(loss_graph, loss_eager, rtol=1e-4, atol=1e-5)
    for n in g_eager:
        torch.testing.assert_close(g_graph[n], g_eager[n], rtol=1e-3, atol=1e-4 * g_eager[n].abs().max().item())


@pytest.mark.xfail(reason="H100, 2026-12-06: the loss matched to 1e-3 but gradients differed beyond the eager graph's "
                          "fp16 tolerance (rtol 2e-2) in both phases; not yet known whether fp16 rounding of fused "
                          "kernels or a fault (see the float32 test)", strict=False)
@pytest.mark.parametrize("frozen", [True, False])
def test_graphed_step_through_an_inductor_compiled_model_matches_eager_in_fp16(frozen):
    """The same under fp16 autocast, at the tolerance the eager CUDA graph meets."""
    (g_graph, loss_graph), (g_eager, loss_eager) = _compiled_vs_eager(frozen, torch.float16)
    assert set(g_graph) == set(g_eager) and g_graph
    torch.testing.assert_close(loss_graph, loss_eager, rtol=1e-3, atol=1e-4)
    for n in g_eager:
        torch.testing.assert_close(g_graph[n], g_eager[n], rtol=2e-2, atol=2e-3 * g_eager[n].abs().max().item())


@pytest.fixture(scope="module")
def tiny_fred(tmp_path_factory):
    """4 event+rgb sequences x 8 frames at 180x320."""
    from tools.synthetic import generate_fred
    root = tmp_path_factory.mktemp("fred_cuda")
    generate_fred(str(root), sequences=4, frames=8, seed=0, size=(180, 320))
    return str(root)


@pytest.mark.parametrize("graph", [True, False])
def test_trainer_on_cuda_with_workers_through_both_phases(tiny_fred, tmp_path, graph):
    """train_fred.py on the GPU with 2 forked loader workers, frame cache, HSV on the GPU and (graph) CUDA graphs
    recaptured at the phase switch: a hang fails here (timeout) instead of stalling a long run."""
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(repo, "train_fred.py"), "--modality", "event", "--data_root", tiny_fred,
           "--phi", "n", "--device", "cuda", "--save_dir", str(tmp_path), "--set", "INPUT_SHAPE=[160, 160]",
           "FREEZE_EPOCH=1", "UNFREEZE_EPOCH=3", "FREEZE_BATCH_SIZE=4", "UNFREEZE_BATCH_SIZE=2", "NUM_WORKERS=2",
           "EVAL_PERIOD=3", "MIN_BOX_SIZE=1.0", "WARMUP_MIN_ITERS=2", "HSV_ON_GPU=True", f"CUDA_GRAPH={graph}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [os.path.join(str(tmp_path), d) for d in os.listdir(str(tmp_path)) if d.startswith("loss_")]
    with open(os.path.join(run_dir, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["frozen", "unfrozen", "unfrozen"]
    assert all(math.isfinite(float(r["val_loss"])) and math.isfinite(float(r["train_loss"])) for r in rows)
    assert rows[-1]["mAP50"] != ""  # evaluated at the end (channels_last evaluation on the GPU)
