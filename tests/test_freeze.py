"""Frozen backbone: its Convs run with the BatchNorm folded in (Conv.fold_bn via freeze_backbone), equal to conv + BN."""
import contextlib
import copy

import pytest
import torch
from torch import nn

from nets import build_model, freeze_backbone
from nets.fusion import build_fusion_model
from nets.yolov8 import Conv
from training.ema import ModelEMA


def randomised(arch: str = "yolov8", seed: int = 0, fusion: str = "") -> nn.Module:
    """A phi n model whose BatchNorm parameters and statistics are random (a fresh BN folds to a plain scale)."""
    torch.manual_seed(seed)
    model = build_fusion_model("n", 2, fusion, arch) if fusion else build_model("n", 2, arch=arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@contextlib.contextmanager
def bn_calls(module: nn.Module):
    """Yields a list that gets one entry per BatchNorm forward inside module."""
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in module.modules()
             if isinstance(m, nn.BatchNorm2d)]
    try:
        yield calls
    finally:
        for h in hooks:
            h.remove()


def unfolded(model: nn.Module) -> nn.Module:
    """A copy of model whose backbone Convs run conv + BatchNorm (the reference)."""
    ref = copy.deepcopy(model)
    for m in ref.backbone.modules():
        if isinstance(m, Conv):
            m.fold_bn(False)
    return ref


def loss_of(out) -> torch.Tensor:
    """A scalar touching every output."""
    return sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in out)


@pytest.mark.parametrize("arch,fusion", [("yolov8", ""), ("yolo11", ""), ("yolov8-p2", ""), ("yolov8", "mid"),
                                         ("yolov8", "early")])
def test_frozen_backbone_runs_folded_with_equal_outputs_and_grads(arch, fusion):
    """float64, since the training forward's neck BatchNorm (batch statistics of a 2-image batch) amplifies float32
    rounding up to ~3e-4 of the output scale; the float32 eval forward is checked to 1e-5."""
    model = randomised(arch, fusion=fusion).double()
    freeze_backbone(model, True)
    model.train()
    ref = unfolded(model)
    x = torch.rand(2, model.in_channels, 64, 64, dtype=torch.float64)
    with bn_calls(model.backbone) as calls:
        out = model(x)
    with bn_calls(ref.backbone) as ref_calls:
        out_ref = ref(x)
    assert calls == [] and ref_calls  # every backbone Conv (C3k2, C2PSA, SPPF, both streams) ran folded
    torch.testing.assert_close(out, out_ref, rtol=1e-9, atol=1e-9)
    loss_of(out).backward()
    loss_of(out_ref).backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}
    ref_grads = {k: p.grad for k, p in ref.named_parameters() if p.requires_grad}
    assert grads.keys() == ref_grads.keys() and not any(k.startswith("backbone.") for k in grads)
    assert all(g is not None for g in grads.values())
    scale = max(g.abs().max().item() for g in ref_grads.values())  # biases before a train-mode BN get ~0 grads
    for k, g in grads.items():
        torch.testing.assert_close(g, ref_grads[k], rtol=1e-8, atol=1e-8 * scale + 1e-12, msg=k)
    torch.testing.assert_close(model.state_dict(), ref.state_dict(), rtol=1e-9, atol=1e-12)  # neck BN moved alike

    model.float().eval()
    freeze_backbone(model, True)
    ref = unfolded(model)
    x = x.float()
    with torch.no_grad(), bn_calls(model.backbone) as calls:
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    assert calls == []


def test_freezing_leaves_state_dict_and_buffers_unchanged():
    model = randomised()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = {k for k, _ in model.named_buffers()}
    freeze_backbone(model, True)
    assert all(m._folded is not None for m in model.backbone.modules() if isinstance(m, Conv))
    after = model.state_dict()
    assert after.keys() == before.keys() and {k for k, _ in model.named_buffers()} == buffers
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_unfreezing_gives_plain_batchnorm_back():
    model = randomised()
    freeze_backbone(model, True)
    model.train()
    model(torch.rand(2, 3, 64, 64))
    freeze_backbone(model, False)
    model.train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.") and "running" in k}
    with bn_calls(model.backbone) as calls:
        model(torch.rand(2, 3, 64, 64))
    assert calls
    assert all(m._folded is None for m in model.backbone.modules() if isinstance(m, Conv))
    after = model.state_dict()
    assert all(not torch.equal(after[k], v) for k, v in stats.items())  # BatchNorm in train mode again


def test_ema_copy_made_while_frozen_does_not_use_stale_folds():
    model = randomised()
    freeze_backbone(model, True)
    model.train()
    ema = ModelEMA(model, decay=0.5, tau=1.0)  # deep copy of the frozen model, folded tensors included
    x = torch.rand(2, 3, 64, 64)
    freeze_backbone(model, False)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        sum(o.square().mean() for o in model(x)).backward()
        opt.step()
        ema.update(model)
    ref = build_model("n", 2)
    ref.load_state_dict(ema.ema.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ema.ema(x), ref.eval()(x), rtol=1e-5, atol=1e-5)


def test_load_state_dict_while_frozen_then_freezing_again_folds_the_loaded_weights():
    model, other = randomised(seed=0), randomised(seed=1).eval()
    freeze_backbone(model, True)
    model.eval()
    model.load_state_dict(other.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = other(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)  # stale folds unused
        freeze_backbone(model, True)
        with bn_calls(model.backbone) as calls:
            out = model(x)
    assert calls == []
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_moving_after_freezing_falls_back_then_freezing_again_folds_in_the_new_layout():
    model = randomised()
    freeze_backbone(model, True)
    model.eval()
    ref = unfolded(model).double().to(memory_format=torch.channels_last)
    model.double().to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
        freeze_backbone(model, True)
        with bn_calls(model.backbone) as calls:
            out = model(x)
    assert calls == []
    torch.testing.assert_close(out, ref(x))
    weight = model.backbone.stem._folded[1][torch.float64][0]
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_folded_conv_under_autocast_equals_autocasts_own_cast():
    conv = randomised().backbone.stem.eval()
    conv.fold_bn(True)
    weight, bias = conv._folded[1][torch.float32]
    x = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = conv.act(nn.functional.conv2d(x, weight, bias, conv.conv.stride, conv.conv.padding))
        out = conv(x)
        again = conv(x)
    assert out.dtype == torch.bfloat16 and torch.bfloat16 in conv._folded[1]
    assert torch.equal(out, expected) and torch.equal(again, expected)


def test_folds_are_unused_while_the_batchnorm_trains():
    conv = randomised().backbone.stem
    conv.fold_bn(True)
    conv.train()
    stats = conv.bn.running_mean.clone()
    with bn_calls(conv) as calls:
        conv(torch.rand(2, 3, 32, 32))
    assert calls and not torch.equal(conv.bn.running_mean, stats)


def test_a_compiled_frozen_model_traces_whole_and_computes_the_same():
    """COMPILE_MODEL's torch.compile of a model with a folded frozen backbone: one graph (fullgraph: the fold's
    validity check, storage addresses and versions, is not traced: the compiled code runs conv + BatchNorm, which the
    compiler fuses itself), outputs and trainable gradients those of the eager model (aot_eager: no code generation)."""
    from speed.compiled import compile_model

    model = randomised().double().train()  # float64: the neck's batch statistics of 2 images amplify fp32 rounding
    freeze_backbone(model, True)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    compiled = compile_model(model, "aot_eager", fullgraph=True)
    outs = []
    for net in (model, compiled):
        model.zero_grad(set_to_none=True)
        out = net(x)
        sum((o ** 2).mean() for o in out).backward()
        outs.append(([o.detach().clone() for o in out],
                     {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (eager_out, eager_grad), (comp_out, comp_grad) = outs
    assert len(eager_out) == len(comp_out) and eager_grad.keys() == comp_grad.keys()
    assert not any(n.startswith("backbone.") for n in eager_grad)
    for a, b in zip(eager_out, comp_out):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-9)
    for n in eager_grad:
        torch.testing.assert_close(comp_grad[n], eager_grad[n], rtol=1e-7, atol=1e-10)


def test_the_graph_captures_restore_keeps_the_backbone_folded():
    """GraphedTrainLoss puts back the BatchNorm statistics its warm-up moved (speed.cuda_graph.restore_buffers):
    the statistics are restored and the frozen backbone stays folded (restoring the whole state_dict rewrote the
    parameters too, so eager steps after a capture ran conv + BatchNorm)."""
    from speed.cuda_graph import restore_buffers, snapshot_buffers

    model = randomised().train()
    freeze_backbone(model, True)
    saved = snapshot_buffers(model)
    model(torch.rand(2, 3, 64, 64))  # a warm-up step: the neck's and head's BatchNorm statistics move
    assert any(not torch.equal(v, saved[k]) for k, v in model.named_buffers())
    restore_buffers(model, saved)
    assert all(torch.equal(v, saved[k]) for k, v in model.named_buffers())
    with bn_calls(model.backbone) as calls:
        model(torch.rand(2, 3, 64, 64))
    assert not calls  # every backbone Conv ran folded
