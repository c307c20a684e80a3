"""train_fred.py end to end on tiny generated FRED data (CPU): phases, checkpoints, resume, faults, learning.

Most runs call train_fred.main(argv) in-process; torchrun and a real SIGTERM use subprocesses.
"""
import contextlib
import csv
import errno
import glob
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import build_fred
import config_fred
import train_fred
from datasets.augment import HSV_KEY
from datasets.fred_index import build_fred_index
from nets import build_model, load_weights
from nets.loss import DetectionLoss
from tests.bad_checkpoints import REASONS, make_bad_checkpoint
from tools.synthetic import generate_fred
from evaluation import val_loss
from training import engine
from training.ema import ModelEMA
from training.epoch_end import val_loss_fitness
from training.optim import build_optimizer, lr_at, scale_lr_for_batch
from utils import device_batches
from utils.checkpoint import atomic_save, load_checkpoint
from utils.config import config_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 event+rgb sequences x 8 frames at 180x320 (drones ~8-16 px), canonical ids on both sides of the split."""
    root = tmp_path_factory.mktemp("fred")
    generate_fred(str(root), sequences=4, frames=8, seed=0, size=(180, 320))
    return str(root)


def tiny_args(data, save_dir, *sets, epochs=2):
    """A two-phase run: 1 frozen epoch at batch 8, then batch 4; 64x64 input, phi n, no workers."""
    return ["--modality", "event", "--data_root", data, "--phi", "n", "--device", "cpu", "--save_dir", str(save_dir),
            "--set", "INPUT_SHAPE=[64, 64]", "FREEZE_EPOCH=1", f"UNFREEZE_EPOCH={epochs}", "FREEZE_BATCH_SIZE=8",
            "UNFREEZE_BATCH_SIZE=4", "NUM_WORKERS=0", "EVAL_WORKERS=0", "EVAL_PERIOD=1", "SAVE_PERIOD=1",
            "EVAL_BATCH_SIZE=16", "LOG_INTERVAL=2", "MIN_BOX_SIZE=1.0", "WARMUP_MIN_ITERS=4", *sets]


def only_run_dir(save_dir):
    dirs = glob.glob(os.path.join(str(save_dir), "loss_*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


def final_json(text):
    return json.loads(text.strip().splitlines()[-1])


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


class Recorder:
    """Wraps engine.train_one_epoch: records batch size and backbone trainability; runs hooks before/after a call."""

    def __init__(self, before=None, after=None):
        self.calls, self.before, self.after = [], before or {}, after or {}
        self.original = engine.train_one_epoch

    def __call__(self, model, *args, **kwargs):
        n = len(self.calls)
        loader = args[4]
        net = model.module if hasattr(model, "module") else model
        self.calls.append({"batch_size": loader.batch_size, "net": model,
                           "requires_grad": {p.requires_grad for p in net.backbone.parameters()},
                           "head_requires_grad": {p.requires_grad for p in net.head.cls.parameters()},
                           "bn_training_after_train": None})
        if n in self.before:
            self.before[n]()
        out = self.original(model, *args, **kwargs)
        self.calls[-1]["bn_training_after_train"] = {m.training for m in net.backbone.modules()
                                                     if isinstance(m, torch.nn.BatchNorm2d)}
        if n in self.after:
            self.after[n]()
        return out


@pytest.fixture(scope="module")
def run_a(data, tmp_path_factory):
    """Reference run: 2 epochs crossing freeze -> unfreeze, recorded."""
    save = tmp_path_factory.mktemp("run_a")
    rec = Recorder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "train_one_epoch", rec)
        t0 = time.perf_counter()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = train_fred.main(tiny_args(data, save))
    return {"rc": rc, "rec": rec, "run_dir": only_run_dir(save), "stdout": out.getvalue(),
            "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------- units
def test_lr_schedule_warmup_cosine_step_and_nbs_rule():
    assert lr_at(0.0, 10, 2, 0.01, 0.0001, "cos") == 0.0
    assert lr_at(1.0, 10, 2, 0.01, 0.0001, "cos") == pytest.approx(0.005)
    assert lr_at(2.0, 10, 2, 0.01, 0.0001, "cos") == pytest.approx(0.01)
    assert lr_at(6.0, 10, 2, 0.01, 0.0001, "cos") == pytest.approx((0.01 + 0.0001) / 2)
    assert lr_at(10.0, 10, 2, 0.01, 0.0001, "cos") == pytest.approx(0.0001)
    steps = [lr_at(t, 10, 0, 0.01, 0.0001, "step") for t in np.linspace(0, 10, 101)]
    assert steps[0] == pytest.approx(0.01) and steps[-1] == pytest.approx(0.0001)
    assert len(set(np.round(steps, 12))) == 10 and all(a >= b for a, b in zip(steps, steps[1:]))
    assert scale_lr_for_batch(1e-2, 1e-4, 16, "sgd") == pytest.approx((2.5e-3, 2.5e-5))
    assert scale_lr_for_batch(1e-2, 1e-4, 1024, "sgd") == pytest.approx((5e-2, 5e-4))  # clamped high
    assert scale_lr_for_batch(1e-3, 1e-5, 16, "adam") == pytest.approx((3e-4, 3e-6))  # clamped low


def test_optimizer_groups_decay_only_weights():
    model = build_model("n", 1)
    opt = build_optimizer(model, "sgd", 0.01, 0.937, 5e-4)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["weight_decay"] == 5e-4 and groups["norm"]["weight_decay"] == 0
    assert groups["bias"]["weight_decay"] == 0 and groups["decay"]["nesterov"]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert all(p.ndim > 1 for p in groups["decay"]["params"]) and all(p.ndim == 1 for p in groups["norm"]["params"])
    assert isinstance(build_optimizer(model, "adamw", 1e-3, 0.9, 0.0), torch.optim.AdamW)
    with pytest.raises(ValueError, match="OPTIMIZER_TYPE"):
        build_optimizer(model, "rmsprop", 1e-3, 0.9, 0.0)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_nonfinite_step_is_skipped_and_training_continues_like_the_reference(kind):
    """GradScaler + fused optimizer: a NaN step changes nothing (no uninitialised momentum left behind)."""
    torch.manual_seed(0)
    model, ref = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ref.load_state_dict(model.state_dict())
    opt = build_optimizer(model, kind, 0.1, 0.9, 0.0)
    ref_opt = (torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True) if kind == "sgd"
               else torch.optim.AdamW(ref.parameters(), lr=0.1, betas=(0.9, 0.999), weight_decay=0.0))
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    for k in range(4):
        x = torch.randn(4, 3)
        scaler.scale(model(x).sum() * (float("nan") if k == 0 else 1.0)).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update(1.0)
        opt.zero_grad()
        if k:
            ref(x).sum().backward()
            ref_opt.step()
            ref_opt.zero_grad()
        assert torch.allclose(model.weight, ref.weight, atol=1e-6), k


def test_ema_follows_the_ramped_decay():
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.9, tau=10.0)
    start = ema.ema.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 10))
    assert torch.allclose(ema.ema.weight, d * start + (1 - d) * model.weight)
    assert ema.updates == 1 and not ema.ema.weight.requires_grad


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "last.pth")
    atomic_save({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save({"epoch": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"], "the temporary file must be removed"


def test_step_advice_names_the_epochs_that_reach_the_tuning_note_figure():
    cfg = {"UNFREEZE_EPOCH": 150, "FREEZE_EPOCH": 30, "FREEZE_TRAIN": True, "FREEZE_BATCH_SIZE": 32,
           "UNFREEZE_BATCH_SIZE": 16, "OPTIMIZER_TYPE": "sgd"}
    assert "enough" in train_fred.step_advice(cfg, 48335)  # the RTX 3090 tuning note: 48,335 frames, well above 5e4
    text = train_fred.step_advice(cfg, 1000)  # full batches only: 30 * 31 + 120 * 62 = 8370 steps
    assert "8370 optimizer steps" in text
    # 30 * 31 = 930 frozen steps, then ceil((50000 - 930) / 62) = 792 unfrozen epochs
    assert "UNFREEZE_EPOCH=822" in text


def test_a_frozen_phase_without_weights_is_pointed_out():
    # the tuning note's FREEZE_TRAIN assumes pretrained weights; without any, the frozen phase would train the neck
    # and head on a random backbone's features for FREEZE_EPOCH epochs
    import config_fred
    cfg = config_dict(config_fred)
    note = train_fred.frozen_random_note(cfg, resumed=False)
    assert "random" in note and "FREEZE_TRAIN=False" in note and "30 epochs" in note
    assert train_fred.frozen_random_note({**cfg, "FREEZE_TRAIN": False}, resumed=False) == ""
    assert train_fred.frozen_random_note({**cfg, "MODEL_PATH": "w.pth"}, resumed=False) == ""
    assert train_fred.frozen_random_note({**cfg, "FUSION_RGB_WEIGHTS": "rgb.pth"}, resumed=False) == ""
    assert train_fred.frozen_random_note({**cfg, "INIT_EPOCH": 30}, resumed=False) == ""  # frozen phase already done
    assert train_fred.frozen_random_note(cfg, resumed=True) == ""  # a resumed run has said so when it started


def test_step_advice_without_advice_gives_the_count_only():
    cfg = {"UNFREEZE_EPOCH": 30, "FREEZE_EPOCH": 30, "FREEZE_TRAIN": False, "FREEZE_BATCH_SIZE": 32,
           "UNFREEZE_BATCH_SIZE": 8, "OPTIMIZER_TYPE": "adamw"}
    text = train_fred.step_advice(cfg, 184, advise=False)  # the CPU demo: 30 epochs x 23 steps
    assert "690 optimizer steps" in text and "recommended" not in text and "UNFREEZE_EPOCH" not in text
    assert "UNFREEZE_EPOCH=" in train_fred.step_advice(cfg, 184)


def test_demo_prints_the_step_count_without_the_advice_for_real_runs(data, run_a, tmp_path, monkeypatch, capsys):
    assert "recommended" in run_a["stdout"]  # a run on other data gets the advice
    monkeypatch.setattr(train_fred, "DEMO_ROOT", data)  # the demo sample exists already: nothing is generated
    assert train_fred.main(["--demo", *tiny_args(data, tmp_path, epochs=1)]) == 0
    steps = [line for line in capsys.readouterr().out.splitlines() if line.startswith("steps: ")]
    assert len(steps) == 1 and "optimizer steps" in steps[0]
    assert "recommended" not in steps[0] and "UNFREEZE_EPOCH" not in steps[0], steps[0]


# ----------------------------------------------------------------------------------------------- runs
def test_two_epochs_cross_freeze_to_unfreeze(run_a):
    assert run_a["rc"] == 0, run_a["stdout"][-2000:]
    calls = run_a["rec"].calls
    assert [c["batch_size"] for c in calls] == [8, 4]
    assert calls[0]["requires_grad"] == {False} and calls[1]["requires_grad"] == {True}
    assert calls[0]["head_requires_grad"] == {True}
    assert calls[0]["bn_training_after_train"] == {False}, "frozen BatchNorm must keep its statistics"
    assert calls[1]["bn_training_after_train"] == {True}
    run_dir = run_a["run_dir"]
    names = set(os.listdir(run_dir))
    assert {"last.pth", "best.pth", "config.json", "results.csv", "loss.png", "map.png", "epoch_map.txt"} <= names
    assert any(re.fullmatch(r"ep001-loss\d+\.\d{3}-val_loss\d+\.\d{3}\.pth", n) for n in names), names
    assert any(n.startswith("ep002-") for n in names)
    events = [n for n in names if n.startswith("events.out.tfevents")]
    assert events
    acc = EventAccumulator(run_dir).Reload()
    for tag in ("train/box", "train/cls", "train/dfl", "val/loss", "lr", "metrics/mAP50", "metrics/mAP50_95",
                "speed/img_per_s", "speed/data_wait_pct", "time/epoch_s", "gpu/mem_GB"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    rows = open(os.path.join(run_dir, "results.csv")).read().splitlines()
    assert len(rows) == 3 and rows[1].startswith("1,frozen,8,") and rows[2].startswith("2,unfrozen,4,")
    assert len(open(os.path.join(run_dir, "epoch_map.txt")).read().splitlines()) == 2

    ckpt = load_checkpoint(os.path.join(run_dir, "last.pth"))
    assert ckpt["epoch"] == 2 and ckpt["phase"] == "unfrozen" and ckpt["iteration"] == 0
    assert (ckpt["phi"], ckpt["num_classes"], ckpt["in_channels"], ckpt["modality"]) == ("n", 1, 3, "event")
    assert ckpt["config"]["INPUT_SHAPE"] == [64, 64] and ckpt["ema_updates"] == 27 // 8 + 27 // 4  # incomplete last batches dropped
    model = build_model("n", 1)
    model.load_state_dict(ckpt["model"])  # strict: the EMA weights are a complete model
    assert not torch.equal(ckpt["model"]["head.cls.0.2.weight"], ckpt["model_raw"]["head.cls.0.2.weight"])
    assert load_weights(build_model("n", 1), os.path.join(run_dir, "best.pth"))["missing"] == 0
    best = load_checkpoint(os.path.join(run_dir, "best.pth"))
    assert "optimizer" not in best and best["phi"] == "n" and best["best"]["epoch"] == best["epoch"]
    assert train_fred.main(["--resume", os.path.join(run_dir, "best.pth")]) == 2  # weights only: use last.pth
    summary = final_json(run_a["stdout"])
    assert set(summary) == {"run_dir", "epochs", "best_mAP50", "best_mAP50_95", "best_epoch", "train_seconds"}
    assert summary["run_dir"] == run_dir and summary["epochs"] == 2 and summary["best_epoch"] in (1, 2)
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["modality"] == "event" and config["UNFREEZE_BATCH_SIZE"] == 4


def test_compile_model_trains_the_compiled_network_and_saves_the_plain_one(data, run_a, tmp_path):
    """COMPILE_MODEL (here the aot_eager backend: torch.compile's tracing and autograd, no code generation): both
    phases train through torch.compile's module, whose checkpoints are the plain model's (no _orig_mod. keys) and
    whose weights follow the eager run's (same seed, same data)."""
    rec = Recorder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "train_one_epoch", rec)
        assert train_fred.main(tiny_args(data, tmp_path, "COMPILE_MODEL='aot_eager'")) == 0
    assert [type(c["net"]).__name__ for c in rec.calls] == ["OptimizedModule"] * 2
    assert [type(c["net"]).__name__ for c in run_a["rec"].calls] == ["YoloV8"] * 2
    compiled = load_checkpoint(os.path.join(only_run_dir(tmp_path), "last.pth"))
    eager = load_checkpoint(os.path.join(run_a["run_dir"], "last.pth"))
    assert compiled["config"]["COMPILE_MODEL"] == "aot_eager"
    build_model("n", 1).load_state_dict(compiled["model"])  # strict
    for key, value in eager["model_raw"].items():
        assert torch.allclose(compiled["model_raw"][key].float(), value.float(), rtol=1e-3, atol=1e-4), key


def test_resume_after_epoch_one_matches_the_uninterrupted_run(data, run_a, tmp_path, monkeypatch, capsys):
    save = tmp_path / "b"
    rec = Recorder(after={0: lambda: os.kill(os.getpid(), signal.SIGTERM)})  # a real SIGTERM after epoch 1
    monkeypatch.setattr(engine, "train_one_epoch", rec)
    assert train_fred.main(tiny_args(data, save)) == 128 + signal.SIGTERM
    run_dir = only_run_dir(save)
    last = os.path.join(run_dir, "last.pth")
    assert load_checkpoint(last)["epoch"] == 1
    monkeypatch.setattr(engine, "train_one_epoch", rec.original)
    capsys.readouterr()
    assert train_fred.main(["--resume", last, "--device", "cpu"]) == 0
    assert final_json(capsys.readouterr().out)["epochs"] == 2

    a = load_checkpoint(os.path.join(run_a["run_dir"], "last.pth"))
    b = load_checkpoint(last)
    assert b["epoch"] == a["epoch"] == 2 and b["ema_updates"] == a["ema_updates"]
    assert [g["lr"] for g in b["optimizer"]["param_groups"]] == [g["lr"] for g in a["optimizer"]["param_groups"]]
    for key in ("model_raw", "model"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    rows = open(os.path.join(run_dir, "results.csv")).read().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]


def _tensors(tree, prefix=""):
    """{path: tensor} of every tensor in nested dicts and lists (a state dict, an optimizer state)."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return {k: v for key, sub in items for k, v in _tensors(sub, f"{prefix}/{key}").items()}


def test_mid_epoch_resume_with_augmentation_matches_the_uninterrupted_run(data, tmp_path, monkeypatch):
    """Stopped after iteration 1 of 3 of epoch 1 with Mosaic, HSV, flip, scale and translate on, then resumed: the
    same weights, EMA and optimizer state bit for bit as one uninterrupted run, although other workers made the
    batches (uninterrupted: 2; stopped: 0; resumed: 2, which hands batches 2 and 3 to the other worker), and epoch 1's
    logged train loss covers all its 3 iterations."""
    aug = ("FREEZE_TRAIN=False", "UNFREEZE_BATCH_SIZE=8", "EVAL_MAP=False", "MOSAIC=True", "MOSAIC_PROB=0.5",
           "SPECIAL_AUG_RATIO=1.0", "HSV_H=0.015", "HSV_S=0.7", "HSV_V=0.4", "FLIP_LR=0.5", "SCALE=0.5",
           "TRANSLATE=0.2")
    assert train_fred.main(tiny_args(data, tmp_path / "ref", *aug, "NUM_WORKERS=2")) == 0
    ref_dir = only_run_dir(tmp_path / "ref")

    def stop_at_iteration_1(self, iteration, log_interval):
        if iteration == 1:
            self.signum = signal.SIGTERM
        return bool(self.signum)

    monkeypatch.setattr(train_fred.StopFlag, "requested", stop_at_iteration_1)
    assert train_fred.main(tiny_args(data, tmp_path / "run", *aug)) == 128 + signal.SIGTERM
    monkeypatch.undo()
    run_dir = only_run_dir(tmp_path / "run")
    last = os.path.join(run_dir, "last.pth")
    assert (load_checkpoint(last)["epoch"], load_checkpoint(last)["iteration"]) == (0, 1)
    assert train_fred.main(["--resume", last, "--device", "cpu", "--set", "NUM_WORKERS=2"]) == 0

    a, b = load_checkpoint(os.path.join(ref_dir, "last.pth")), load_checkpoint(last)
    assert b["epoch"] == a["epoch"] == 2 and b["ema_updates"] == a["ema_updates"] == 6
    for key in ("model_raw", "model", "optimizer"):
        ta, tb = _tensors(a[key]), _tensors(b[key])
        assert ta.keys() == tb.keys() and ta
        differ = [name for name in ta if not torch.equal(ta[name], tb[name])]
        assert not differ, f"{len(differ)} of {len(ta)} {key} tensors differ after the resume: {differ[:5]}"
    rows = [list(csv.DictReader(open(os.path.join(d, "results.csv")))) for d in (ref_dir, run_dir)]
    assert [r["epoch"] for r in rows[1]] == ["1", "2"]
    for col in ("train_loss", "train_box", "train_cls", "train_dfl", "skipped_steps"):
        assert float(rows[1][0][col]) == pytest.approx(float(rows[0][0][col]), rel=1e-5), col
    tb = [EventAccumulator(d).Reload().Scalars("train/loss") for d in (ref_dir, run_dir)]
    assert [e.step for e in tb[1]] == [1, 2] and tb[1][0].value == pytest.approx(tb[0][0].value, rel=1e-6)


def test_larger_unfreeze_epoch_extends_a_finished_run(run_a, tmp_path, capsys):
    run_dir = str(tmp_path / "copy")
    shutil.copytree(run_a["run_dir"], run_dir)
    assert train_fred.main(["--resume", os.path.join(run_dir, "last.pth")]) == 0  # finished: nothing to do
    assert "nothing to do: 2 epochs done" in capsys.readouterr().out
    assert train_fred.main(["--resume", os.path.join(run_dir, "last.pth"), "--device", "cpu",
                            "--set", "UNFREEZE_EPOCH=3"]) == 0
    assert final_json(capsys.readouterr().out)["epochs"] == 3
    assert load_checkpoint(os.path.join(run_dir, "last.pth"))["epoch"] == 3
    rows = open(os.path.join(run_dir, "results.csv")).read().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["1", "frozen"], ["2", "unfrozen"], ["3", "unfrozen"]]
    assert [e.step for e in EventAccumulator(run_dir).Reload().Scalars("val/loss")] == [1, 2, 3]


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_resume_and_weights_refuse_what_is_not_a_checkpoint(kind, data, tmp_path, capsys):
    """Exit 2 with 'not a checkpoint' and the reason (not torch's weights_only advice, not 'does not exist')."""
    path = make_bad_checkpoint(kind, str(tmp_path))
    for argv in (["--resume", path], tiny_args(data, tmp_path / "runs", epochs=1) + ["--weights", path]):
        assert train_fred.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{path} is not a checkpoint" in err and REASONS[kind] in err, err
        assert "Traceback" not in err and "weights_only" not in err and "does not exist" not in err, err
    assert not glob.glob(str(tmp_path / "runs" / "*" / "*.pth"))


def test_weights_are_loaded_and_reported_and_no_eval_map_keeps_best_by_val_loss(data, run_a, tmp_path, capsys):
    best = os.path.join(run_a["run_dir"], "best.pth")
    args = tiny_args(data, tmp_path, "FREEZE_TRAIN=False", epochs=1)
    assert train_fred.main(args + ["--weights", best, "--no_eval_map"]) == 0
    out = capsys.readouterr().out
    n = len(build_model("n", 1).state_dict())
    assert f"weights {best}: loaded {n}/{n} tensors, skipped 0" in out
    summary = final_json(out)
    assert summary["best_mAP50"] is None and summary["best_epoch"] == 1
    run_dir = only_run_dir(tmp_path)
    assert os.path.isfile(os.path.join(run_dir, "best.pth"))
    assert not os.path.exists(os.path.join(run_dir, "epoch_map.txt"))
    ckpt = load_checkpoint(os.path.join(run_dir, "best.pth"))
    row = next(csv.DictReader(open(os.path.join(run_dir, "results.csv"))))
    val = {"loss": ckpt["best"]["val_loss"], "box": float(row["val_box"])}
    assert ckpt["best_fitness"] == val_loss_fitness(val)

    assert train_fred.main(tiny_args(data, tmp_path / "s", epochs=1) + ["--phi", "s", "--weights", best]) == 2
    err = capsys.readouterr().err
    assert "YOLOv8n" in err and "Traceback" not in err


def test_oom_advice_names_the_phase_batch_and_the_graph():
    cfg = {"FREEZE_BATCH_SIZE": 32, "UNFREEZE_BATCH_SIZE": 16, "EVAL_BATCH_SIZE": 32, "FP16": True,
           "CUDA_GRAPH": True, "SYNC_BN": False}
    capture = train_fred.oom_message("unfrozen", cfg, 1, "CUDA graph capture", "/nonexistent")
    assert "--set UNFREEZE_BATCH_SIZE=12" in capture and "CUDA_GRAPH=False" in capture
    assert "CUDA_GRAPH" not in train_fred.oom_message("frozen", cfg, 1, "evaluation", "/nonexistent")
    assert "CUDA_GRAPH" not in train_fred.oom_message("frozen", {**cfg, "CUDA_GRAPH": False}, 1, "train", "/x")
    two = train_fred.oom_message("frozen", cfg, 2, "train", "/x")
    assert "CUDA_GRAPH=False" in two and "(16 per GPU)" in two  # the graph is used on 2 GPUs too
    assert "CUDA_GRAPH" not in train_fred.oom_message("frozen", {**cfg, "SYNC_BN": True}, 2, "train", "/x")
    setup = train_fred.oom_message("frozen", cfg, 1, "setup", None, "runs/last.pth")
    assert "setting up" in setup and "--resume runs/last.pth" in setup and "BATCH_SIZE" not in setup


def test_oom_while_the_unfrozen_phase_starts_names_the_unfrozen_batch(data, tmp_path, monkeypatch, capsys):
    """Out of memory while the next phase is built (CUDA graph capture at the unfreeze): the advice is that phase's."""
    real = build_fred.graphed_loss

    def capture(cfg, model, criterion, per_rank, *args):
        if per_rank == 4:  # the unfrozen phase of tiny_args
            _raise_oom()
        return real(cfg, model, criterion, per_rank, *args)

    monkeypatch.setattr(build_fred, "graphed_loss", capture)
    assert train_fred.main(tiny_args(data, tmp_path)) == 3
    err = capsys.readouterr().err
    assert "during CUDA graph capture in the unfrozen phase at batch size 4" in err, err[-1500:]
    assert "--set UNFREEZE_BATCH_SIZE=3" in err and "Traceback" not in err


def test_val_loss_fitness_puts_epochs_without_box_loss_last():
    degenerate = val_loss_fitness({"loss": 0.008, "box": 0.0})  # nothing overlapped any object
    trained = val_loss_fitness({"loss": 4.0, "box": 1.2})
    assert trained == -4.0 and degenerate < trained and degenerate == val_loss_fitness({"loss": 9.0,
                                                                                                    "box": 0.0})


def test_set_errors_are_reported_without_traceback(data, tmp_path, capsys):
    assert train_fred.main(["--modality", "event", "--set", "UNFREEZE_BATCH=8"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'UNFREEZE_BATCH'" in err and "UNFREEZE_BATCH_SIZE" in err and "Traceback" not in err
    assert train_fred.main(["--modality", "event", "--set", "UNFREEZE_EPOCH=[1]"]) == 2
    assert "UNFREEZE_EPOCH must be int" in capsys.readouterr().err
    args = tiny_args(data, tmp_path, "INPUT_SHAPE=[100, 64]")
    assert train_fred.main(args) == 2
    assert "multiples of 32" in capsys.readouterr().err


def _raise_oom(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_cuda_oom_names_phase_batch_and_key_and_saves_nothing_new(data, tmp_path, monkeypatch, capsys):
    real_call = DetectionLoss.__call__
    state = {"oom": False}

    def loss(self, *args, **kwargs):
        if state["oom"]:
            _raise_oom()
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(DetectionLoss, "__call__", loss)
    seen = {}

    def before_second():
        state["oom"] = True
        seen["hash"] = sha(os.path.join(only_run_dir(tmp_path), "last.pth"))

    monkeypatch.setattr(engine, "train_one_epoch", Recorder(before={1: before_second}))
    assert train_fred.main(tiny_args(data, tmp_path)) == 3
    err = capsys.readouterr().err
    assert "CUDA out of memory" in err and "unfrozen phase" in err and "batch size 4" in err
    assert "UNFREEZE_BATCH_SIZE" in err and "--set UNFREEZE_BATCH_SIZE=" in err and "Traceback" not in err
    run_dir = only_run_dir(tmp_path)
    assert sha(os.path.join(run_dir, "last.pth")) == seen["hash"], "nothing new may be saved after OOM"
    assert not any(n.startswith("ep002") for n in os.listdir(run_dir))

    state["oom"] = True  # OOM in the very first step: frozen phase, nothing saved at all
    monkeypatch.setattr(engine, "train_one_epoch", Recorder())
    assert train_fred.main(tiny_args(data, tmp_path / "first")) == 3
    err = capsys.readouterr().err
    assert "frozen phase at batch size 8" in err and "FREEZE_BATCH_SIZE" in err
    assert not os.path.exists(os.path.join(only_run_dir(tmp_path / "first"), "last.pth"))


def test_nonfinite_loss_is_skipped_then_stops_after_patience(data, tmp_path, monkeypatch, capsys):
    real_call = DetectionLoss.__call__
    state = {"nan_calls": 2, "nan_all": False}  # epoch 1: the first two steps are NaN; epoch 2: all of them

    def loss(self, *args, **kwargs):
        parts = real_call(self, *args, **kwargs)
        if torch.is_grad_enabled() and (state["nan_all"] or state["nan_calls"] > 0):
            state["nan_calls"] -= 1
            parts = {k: v * float("nan") for k, v in parts.items()}
        return parts

    monkeypatch.setattr(DetectionLoss, "__call__", loss)
    seen = {}

    def before_second():
        state["nan_all"] = True
        seen["hash"] = sha(os.path.join(only_run_dir(tmp_path), "last.pth"))

    monkeypatch.setattr(engine, "train_one_epoch", Recorder(before={1: before_second}))
    rc = train_fred.main(tiny_args(data, tmp_path, "NAN_PATIENCE=3", "LOG_INTERVAL=1"))
    err = capsys.readouterr().err
    assert rc == 4, err[-2000:]
    assert "3 optimizer steps in a row had a non-finite loss" in err and "last.pth keeps the state after epoch 1" in err
    run_dir = only_run_dir(tmp_path)
    last = os.path.join(run_dir, "last.pth")
    assert sha(last) == seen["hash"]
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model_raw"].values() if t.is_floating_point())
    rows = open(os.path.join(run_dir, "results.csv")).read().splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    assert row[header.index("skipped_steps")] == "2" and math.isfinite(float(row[header.index("train_loss")]))


# ----------------------------------------------------------------------------------------------- faults at the edges
def _all_finite(path):
    ckpt = load_checkpoint(path)
    return all(torch.isfinite(t).all() for key in ("model", "model_raw") for t in ckpt.get(key, {}).values()
               if t.is_floating_point())


def test_nonfinite_model_stops_the_run_and_is_never_saved(data, tmp_path, capsys):
    """A bias lr of 1e30 leaves BatchNorm statistics non-finite while the training loss stays finite."""
    rc = train_fred.main(tiny_args(data, tmp_path, "WARMUP_BIAS_LR=1e30", "NAN_PATIENCE=2"))
    err = capsys.readouterr().err
    assert rc == 4, err[-2000:]
    assert "non-finite" in err and "WARMUP_BIAS_LR" in err and "Traceback" not in err
    run_dir = only_run_dir(tmp_path)
    for path in glob.glob(os.path.join(run_dir, "*.pth")):
        assert _all_finite(path), f"{path} holds non-finite weights or buffers"
    assert not os.path.exists(os.path.join(run_dir, "best.pth"))


@pytest.mark.parametrize("kind", ["buffer", "val_loss"])
def test_nonfinite_model_or_val_loss_after_a_finite_epoch_keeps_last_and_best(data, tmp_path, monkeypatch, capsys,
                                                                              kind):
    seen, calls = {}, []
    train_one_epoch, evaluate_loss = engine.train_one_epoch, val_loss.evaluate_loss

    def poisoned_epoch(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            run_dir = only_run_dir(tmp_path)
            seen.update({name: sha(os.path.join(run_dir, name)) for name in ("last.pth", "best.pth")})
        out = train_one_epoch(model, *args, **kwargs)
        if len(calls) == 2 and kind == "buffer":
            next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var[0] = float("inf")
        return out

    def poisoned_val(*args, **kwargs):
        val = evaluate_loss(*args, **kwargs)
        return {**val, "loss": math.nan} if len(calls) == 2 and kind == "val_loss" else val

    monkeypatch.setattr(engine, "train_one_epoch", poisoned_epoch)
    monkeypatch.setattr(val_loss, "evaluate_loss", poisoned_val)
    rc = train_fred.main(tiny_args(data, tmp_path) + ["--no_eval_map"])
    err = capsys.readouterr().err
    assert rc == 4, err[-2000:]
    assert ("val loss" if kind == "val_loss" else "running_var") in err and "Traceback" not in err
    run_dir = only_run_dir(tmp_path)
    assert {name: sha(os.path.join(run_dir, name)) for name in seen} == seen, "epoch 2 must not be saved"
    assert not any(n.startswith("ep002") for n in os.listdir(run_dir))
    assert load_checkpoint(os.path.join(run_dir, "last.pth"))["epoch"] == 1


def test_atomic_save_reports_a_full_disk_with_the_folder_and_the_space_needed(tmp_path, monkeypatch):
    from utils import checkpoint
    path = str(tmp_path / "last.pth")
    atomic_save({"epoch": 1}, path)
    real_save = torch.save

    def enospc(obj, f, *args, **kwargs):
        f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(checkpoint.DiskFullError) as e:
        atomic_save({"epoch": 2, "w": torch.zeros(3_000_000)}, path)  # 12 MB of tensors
    assert str(tmp_path) in str(e.value) and "last.pth" in str(e.value) and "12.0 MB" in str(e.value)
    assert e.value.folder == str(tmp_path) and e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == ["last.pth"] and load_checkpoint(path)["epoch"] == 1

    def torch_full_disk(obj, f, *args, **kwargs):  # what torch.save raises on a full tmpfs
        f.write(b"\0" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torch_full_disk)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 500, 500))
    with pytest.raises(checkpoint.DiskFullError, match="0.0 MB free"):
        atomic_save({"epoch": 2, "w": torch.zeros(3_000_000)}, path)
    assert os.listdir(tmp_path) == ["last.pth"] and load_checkpoint(path)["epoch"] == 1
    monkeypatch.setattr(torch, "save", real_save)


def test_disk_full_while_saving_exits_5_naming_the_folder_and_keeps_last(data, tmp_path, monkeypatch, capsys):
    real_save = torch.save
    seen = {}

    def full_disk(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:  # last.pth after epoch 2
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    def before_second():
        seen["hash"] = sha(os.path.join(only_run_dir(tmp_path), "last.pth"))

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(engine, "train_one_epoch", Recorder(before={1: before_second}))
    rc = train_fred.main(tiny_args(data, tmp_path))
    err = capsys.readouterr().err
    assert rc == train_fred.EXIT_DISK_FULL == 5, err[-2000:]
    run_dir = only_run_dir(tmp_path)
    last = os.path.join(run_dir, "last.pth")
    assert run_dir in err and f"--resume {last}" in err and "Traceback" not in err
    needed = float(re.search(r"about ([\d.]+) MB", err).group(1)) * 1e6
    assert 0.5 < needed / os.path.getsize(last) < 2.0, (needed, os.path.getsize(last))
    assert sha(last) == seen["hash"]
    assert not [n for n in os.listdir(run_dir) if n.startswith(".tmp_")]


_BAD_VALUES = [
    ("EVAL_BATCH_SIZE=0", ">= 1"), ("PHI='z'", "'n', 's', 'm', 'l', 'x'"), ("INPUT_SHAPE=[64]", "[height, width]"),
    ("INPUT_SHAPE=[64, 64, 64]", "[height, width]"), ("INPUT_SHAPE=[0, 64]", "multiples of 32"),
    ("MOSAIC_PROB=1.5", "0 to 1"), ("MIXUP_PROB=-0.5", "0 to 1"), ("FLIP_LR=2.0", "0 to 1"),
    ("FUSION_STREAM_DROPOUT=1.5", "0 to 1"),
    ("SPECIAL_AUG_RATIO=1.5", "0 to 1"), ("CONFIDENCE=1.5", "0 to 1"), ("NMS_IOU=-0.1", "0 to 1"),
    ("HSV_S=-0.1", "0 to 1"), ("TRANSLATE=1.5", "0 to 1"), ("SCALE=1.0", "below 1"), ("DEGREES=-5.0", "0 to 180"),
    ("NUM_CLASSES=0", ">= 1"), ("CLASS_NAMES=['drone', 'bird']", "one per class"), ("FRAME_STRIDE=0", ">= 1"),
    ("MOMENTUM=1.0", "below 1"), ("MOMENTUM=0.0", "nesterov"), ("WARMUP_MOMENTUM=-0.1", "below 1"),
    ("EMA_DECAY=1.0", "below 1"), ("WEIGHT_DECAY=-0.1", ">= 0"), ("INIT_LR=0.0", "> 0"), ("INIT_LR=1e999", "> 0"),
    ("MIN_LR=-1.0", ">= 0"), ("GRAD_CLIP=-1.0", ">= 0"), ("WARMUP_BIAS_LR=-1.0", ">= 0"),
    ("MIN_BOX_SIZE=-1.0", ">= 0"), ("WARMUP_EPOCHS=-1", ">= 0"), ("INIT_EPOCH=-1", ">= 0"),
    ("FREEZE_EPOCH=-1", ">= 0"), ("NUM_WORKERS=-1", ">= 0"), ("EVAL_WORKERS=-1", ">= 0"), ("NAN_PATIENCE=0", ">= 1"),
    ("MAX_DET=0", ">= 1"), ("FRAME_CACHE_MAX_GB=-1.0", ">= 0"), ("UNFREEZE_BATCH_SIZE=0", ">= 1"),
    ("COMPILE_MODEL='nope'", "torch.compile backend"), ("LR_DECAY_TYPE='linear'", "'cos', 'step'"), ("ASSIGNER='atss'", "'tal', 'tal-small'"), ("SAVE_DIR='<tmp>/{run}'", "{modality}"),
]


@pytest.mark.parametrize("setting, accepts", _BAD_VALUES, ids=[s for s, _ in _BAD_VALUES])
def test_bad_config_values_exit_2_naming_the_key_and_what_it_accepts(data, tmp_path, capsys, setting, accepts):
    key = setting.split("=")[0]
    args = tiny_args(data, tmp_path / "runs", setting.replace("<tmp>", str(tmp_path / "runs")), epochs=1)
    for flag, config_key in (("--phi", "PHI"), ("--save_dir", "SAVE_DIR")):
        if key == config_key:  # the flag would override the --set value
            del args[args.index(flag):args.index(flag) + 2]
    assert train_fred.main(args) == 2
    err = capsys.readouterr().err
    assert f"config error: {key}" in err and accepts in err and "Traceback" not in err, err[-2000:]
    assert not glob.glob(str(tmp_path / "runs" / "*"))


def test_every_config_key_is_checked():
    assert set(build_fred.CONFIG_RULES) == set(config_dict(config_fred))


def test_a_run_without_warmup_trains(data, tmp_path, capsys):
    assert train_fred.main(tiny_args(data, tmp_path, "WARMUP_EPOCHS=0", "WARMUP_MIN_ITERS=0", epochs=1)) == 0
    assert final_json(capsys.readouterr().out)["epochs"] == 1


def test_resume_refuses_overrides_that_conflict_with_the_checkpoint(run_a, tmp_path, capsys):
    run_dir = str(tmp_path / "copy")
    shutil.copytree(run_a["run_dir"], run_dir)
    last = os.path.join(run_dir, "last.pth")
    other_channels = load_checkpoint(last)
    other_channels["in_channels"] = 1
    torch.save(other_channels, os.path.join(run_dir, "gray.pth"))
    before = {n: sha(os.path.join(run_dir, n)) for n in os.listdir(run_dir)}
    for override, named in ((["--phi", "s"], "PHI"),
                            (["--set", "NUM_CLASSES=2", "CLASS_NAMES=['drone', 'bird']"], "NUM_CLASSES"),
                            (["--set", "OPTIMIZER_TYPE='adamw'"], "OPTIMIZER_TYPE"),
                            (["--modality", "rgb"], "event"),
                            (["--resume", os.path.join(run_dir, "gray.pth")], "input channels")):
        assert train_fred.main(["--resume", last, "--set", "UNFREEZE_EPOCH=3", *override]) == 2, override
        err = capsys.readouterr().err
        assert err.startswith("--resume: ") and named in err and "Traceback" not in err, err[-2000:]
    assert {n: sha(os.path.join(run_dir, n)) for n in os.listdir(run_dir)} == before, "nothing may be written"


def test_a_failed_start_leaves_no_run_folder(data, tmp_path, capsys):
    assert train_fred.main(tiny_args(str(tmp_path / "nowhere"), tmp_path / "a")) == 2
    assert "nowhere" in capsys.readouterr().err
    assert train_fred.main(tiny_args(data, tmp_path / "b") + ["--weights", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert not glob.glob(str(tmp_path / "a" / "*")) and not glob.glob(str(tmp_path / "b" / "*"))


def test_start_and_resume_remove_stale_temporary_checkpoints(run_a, tmp_path, capsys):
    run_dir = str(tmp_path / "copy")
    shutil.copytree(run_a["run_dir"], run_dir)
    names = set(os.listdir(run_dir))
    for stale in (".tmp_last.pthk3j2a9x1", ".tmp_best.pth0q1w2e3r"):  # a SIGKILL during atomic_save leaves these
        with open(os.path.join(run_dir, stale), "wb") as f:
            f.write(b"\0" * 1000)
    assert train_fred.main(["--resume", os.path.join(run_dir, "last.pth")]) == 0
    assert "removed 2 temporary files" in capsys.readouterr().out
    assert set(os.listdir(run_dir)) == names


def test_check_data_prints_summary_and_json_line(data, tmp_path, capsys):
    assert train_fred.main(["--modality", "event", "--data_root", data, "--check_data"]) == 0
    out = capsys.readouterr().out
    summary = final_json(out)
    assert list(summary) == ["modality", "train_sequences", "val_sequences", "train_frames", "val_frames", "boxes",
                             "empty_frames", "unlabeled_frames", "bad_files", "dropped_boxes"]
    truth = json.load(open(os.path.join(data, "synthetic_manifest.json")))["totals"]["event"]
    assert summary["train_frames"] + summary["val_frames"] == truth["annotated"]
    assert (summary["boxes"], summary["empty_frames"], summary["unlabeled_frames"]) == (
        truth["boxes"], truth["empty"], truth["unlabeled"])
    assert summary["bad_files"] == 0 and "FRED data check" in out

    assert train_fred.main(["--modality", "event", "--data_root", str(tmp_path / "nowhere"), "--check_data"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err

    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    val_ids = build_fred_index(str(broken), "event").val_sequences
    for path in glob.glob(str(broken / "*" / "Event" / "Frames" / "*.png")):
        if path.split(os.sep)[-4] in val_ids:
            open(path, "wb").write(b"not a png")
    assert train_fred.main(["--modality", "event", "--data_root", str(broken), "--check_data"]) == 1
    captured = capsys.readouterr()
    assert final_json(captured.out)["val_frames"] == 0 and final_json(captured.out)["bad_files"] > 0
    assert "no val frames" in captured.err and str(broken) in captured.err


def test_default_data_root_is_real_fred_and_only_demo_uses_the_sample():
    args = train_fred.parse_args(["--modality", "event"])
    assert train_fred.resolve_config(args, None, cuda=False)["DATA_ROOT"] != train_fred.DEMO_ROOT
    demo = train_fred.parse_args(["--modality", "event", "--demo"])
    assert train_fred.resolve_config(demo, None, cuda=False)["DATA_ROOT"] == train_fred.DEMO_ROOT


def test_missing_data_root_says_how_to_get_fred_and_mentions_demo(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    os.makedirs("data")
    os.symlink(data, train_fred.DEMO_ROOT)  # a demo sample lies in the checkout: without --data_root it is not used
    assert train_fred.main(["--modality", "event", "--check_data"]) == 2
    err = capsys.readouterr().err
    for text in ("FRED: The Florence RGB-Event Drone Dataset", "GabrieleMagrini/FRED", "train/<id>.zip", "--data_root",
                 "python train_fred.py --modality event --demo"):
        assert text in err, (text, err)
    assert train_fred.main(["--modality", "rgb", "--device", "cpu"]) == 2  # a training run says the same
    err = capsys.readouterr().err
    assert "GabrieleMagrini/FRED" in err and "python train_fred.py --modality rgb --demo" in err, err


# ----------------------------------------------------------------------------------------------- subprocesses
def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def torchrun_runs(data, tmp_path_factory):
    """The tiny two-phase run on 2 gloo processes, once per DDP_GRAD_SYNC: {sync: (process, save_dir)}."""
    runs = {}
    for sync in build_fred.GRAD_SYNCS:
        save = tmp_path_factory.mktemp(f"torchrun_{sync}")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(REPO, "train_fred.py"), *tiny_args(data, save, f"DDP_GRAD_SYNC={sync!r}")]
        runs[sync] = (subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300), save)
    return runs


@pytest.mark.parametrize("sync", build_fred.GRAD_SYNCS)
def test_torchrun_two_processes_gloo_cross_freeze_to_unfreeze(torchrun_runs, sync):
    """On CPU: global batch sizes split over 2 processes, DDP re-wrapped (or the bare model re-synced) when the
    backbone is unfrozen."""
    proc, tmp_path = torchrun_runs[sync]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "batch 8 (4 per process x 2)" in proc.stdout and "batch 4 (2 per process x 2)" in proc.stdout
    said = "all-reduced after each backward" if sync == "allreduce" else "averaged by DistributedDataParallel"
    assert proc.stdout.count(f"gradients: {said}") == 2, proc.stdout[-3000:]
    json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1, "only rank 0 prints the summary"
    run_dir = only_run_dir(tmp_path)
    rows = open(os.path.join(run_dir, "results.csv")).read().splitlines()
    assert len(rows) == 3 and rows[1].startswith("1,frozen,8,") and rows[2].startswith("2,unfrozen,4,")
    ckpt = load_checkpoint(os.path.join(run_dir, "last.pth"))
    assert ckpt["ema_updates"] == 14 // 4 + 14 // 2, ("each process takes 14 of the 27 frames: 3 full batches of 4, "
                                                       "then 7 of 2 (incomplete last batches dropped)")
    assert not any(k.startswith("module.") for k in ckpt["model_raw"])


def test_torchrun_allreduce_sync_trains_as_ddp_bit_for_bit(torchrun_runs):
    """DDP_GRAD_SYNC='allreduce' (the CUDA graph's sync, here eager on gloo) ends the run with DDP's raw weights,
    BatchNorm statistics, EMA and optimizer state: the same gradients on every rank, rank 0's buffers as DDP's."""
    ckpts = {}
    for sync, (proc, save) in torchrun_runs.items():
        assert proc.returncode == 0, proc.stderr[-3000:]
        ckpts[sync] = load_checkpoint(os.path.join(only_run_dir(save), "last.pth"))
    ddp, allreduce = ckpts["ddp"], ckpts["allreduce"]
    for part in ("model_raw", "model"):
        assert ddp[part].keys() == allreduce[part].keys()
        for k, v in ddp[part].items():
            assert torch.equal(v, allreduce[part][k]), (part, k)
    moments = [s["momentum_buffer"] for s in ddp["optimizer"]["state"].values()]
    assert moments and all(torch.equal(m, allreduce["optimizer"]["state"][i]["momentum_buffer"])
                           for i, m in zip(ddp["optimizer"]["state"], moments))


def test_torchrun_rank_0_stopping_at_an_epoch_end_stops_every_process(data, tmp_path):
    """A non-finite model found by rank 0 after an epoch ends all processes with its exit code: the other rank is told
    (it used to wait in the epoch's barrier until the process group broke, with a traceback; with NCCL, a hang)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(REPO, "train_fred.py"), *tiny_args(data, tmp_path, "WARMUP_BIAS_LR=1e30", "NAN_PATIENCE=1000")]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "holds non-finite values" in proc.stderr, proc.stderr[-3000:]
    # torchrun reports each failed worker: rank 0's exit code, the other's too (or torchrun's SIGTERM when rank 0
    # ended first), never a crash of the other process in the process group
    assert re.search(r"exitcode\s*:\s*4\b", proc.stderr) and not re.search(r"exitcode\s*:\s*1\b", proc.stderr)
    assert "Connection closed" not in proc.stderr and "gloo" not in proc.stderr.lower(), proc.stderr[-3000:]


def test_sigterm_mid_epoch_saves_last_and_resume_finishes(data, tmp_path):
    args = tiny_args(data, tmp_path, "FREEZE_TRAIN=False", "UNFREEZE_BATCH_SIZE=1", "NUM_WORKERS=1",
                     "LOG_INTERVAL=1", "INPUT_SHAPE=[128, 128]", epochs=2)  # 27 steps: time to land mid-epoch
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train_fred.py"), *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = bytearray()
    reader = threading.Thread(target=lambda: [err.extend(c) for c in iter(lambda: proc.stderr.read1(4096), b"")],
                              daemon=True)
    reader.start()
    deadline = time.time() + 240
    while not re.search(rb"epoch 1/2 unfrozen:.*\| *[2-9]/27", bytes(err)) and time.time() < deadline:
        assert proc.poll() is None, bytes(err)[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read().decode()
    rc = proc.wait(timeout=120)
    reader.join(timeout=10)
    text = bytes(err).decode(errors="replace")
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert "SIGTERM: stopping at the next iteration" in text and "saved" in text
    ckpt = load_checkpoint(os.path.join(only_run_dir(tmp_path), "last.pth"))
    assert ckpt["epoch"] == 0 and 2 <= ckpt["iteration"] < 27
    assert not out.strip().splitlines()[-1].startswith("{")

    resumed = subprocess.run([sys.executable, os.path.join(REPO, "train_fred.py"), "--resume",
                              os.path.join(only_run_dir(tmp_path), "last.pth")], cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert final_json(resumed.stdout)["epochs"] == 2
    done = load_checkpoint(os.path.join(only_run_dir(tmp_path), "last.pth"))
    assert done["epoch"] == 2 and done["ema_updates"] == 54, "the interrupted epoch continues where it stopped"


# ----------------------------------------------------------------------------------------------- learning
def crop_around_drones(src: str, out: str, crop: int, copies: int, frames: int, skip: int = 2) -> None:
    """Write `copies` + 1 identical event sequences (ids 0..copies) of `frames` crop x crop windows cut around the
    drone of sequence 0 in src (random offset; the first `skip` frames, where the drone enters, are left out)."""
    rng = np.random.default_rng(0)
    images = sorted(glob.glob(os.path.join(src, "0", "Event", "Frames", "*.png")))[skip:skip + frames]
    for k in range(copies + 1):
        os.makedirs(os.path.join(out, str(k), "Event", "Frames"))
        os.makedirs(os.path.join(out, str(k), "Event_YOLO"))
    for path in images:
        stem = os.path.splitext(os.path.basename(path))[0]
        image = cv2.imread(path)
        h, w = image.shape[:2]
        boxes = np.loadtxt(os.path.join(src, "0", "Event_YOLO", stem + ".txt"), ndmin=2).reshape(-1, 5)
        xyxy = np.stack([(boxes[:, 1] - boxes[:, 3] / 2) * w, (boxes[:, 2] - boxes[:, 4] / 2) * h,
                         (boxes[:, 1] + boxes[:, 3] / 2) * w, (boxes[:, 2] + boxes[:, 4] / 2) * h], 1)
        centre = xyxy[0].reshape(2, 2).mean(0) if len(xyxy) else rng.uniform((0, 0), (w, h))
        x0, y0 = np.clip(centre - crop / 2 + rng.uniform(-crop / 4, crop / 4, 2), 0, (w - crop, h - crop)).astype(int)
        xyxy = np.clip(xyxy - (x0, y0, x0, y0), 0, crop)
        keep = (xyxy[:, 2] - xyxy[:, 0] > 2) & (xyxy[:, 3] - xyxy[:, 1] > 2)
        lines = "".join(f"0 {(a + c) / 2 / crop} {(b + d) / 2 / crop} {(c - a) / crop} {(d - b) / crop}\n"
                        for a, b, c, d in xyxy[keep])
        for k in range(copies + 1):
            cv2.imwrite(os.path.join(out, str(k), "Event", "Frames", stem + ".png"), image[y0:y0 + crop, x0:x0 + crop])
            with open(os.path.join(out, str(k), "Event_YOLO", stem + ".txt"), "w") as f:
                f.write(lines)


def test_overfits_a_handful_of_frames(tmp_path, capsys):
    """Train = val = the same 8 event frames, no augmentation: loss, assigner, decode and evaluator fit together.

    The frames are 96 x 96 windows around the drone of a generated 360 x 640 sequence, so a tiny, fast input still
    shows drones of FRED's size (about 15-30 px); six copies of the sequence train, a seventh validates.
    """
    generate_fred(str(tmp_path / "gen"), sequences=1, frames=12, seed=3, size=(360, 640), ids=[0])
    root = str(tmp_path / "fred")
    crop_around_drones(str(tmp_path / "gen"), root, crop=96, copies=6, frames=8)
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.txt").write_text("".join(f"{i}/\n" for i in range(6)))
    (split / "test.txt").write_text("6/\n")
    args = ["--modality", "event", "--data_root", root, "--split", str(split), "--phi", "n", "--device", "cpu",
            "--save_dir", str(tmp_path / "runs"), "--set", "INPUT_SHAPE=[96, 96]", "FREEZE_TRAIN=False",
            "UNFREEZE_EPOCH=40", "UNFREEZE_BATCH_SIZE=8", "OPTIMIZER_TYPE='adamw'", "INIT_LR=8e-3", "MIN_LR=8e-4",
            "WEIGHT_DECAY=0.0", "WARMUP_EPOCHS=1", "WARMUP_MIN_ITERS=10", "MOSAIC=False", "HSV_H=0.0",
            "HSV_S=0.0", "HSV_V=0.0", "FLIP_LR=0.0", "TRANSLATE=0.0", "SCALE=0.0", "NUM_WORKERS=0", "EVAL_WORKERS=0",
            "EVAL_PERIOD=10", "SAVE_PERIOD=1000", "LOG_INTERVAL=6", "MIN_BOX_SIZE=1.0"]
    assert train_fred.main(args) == 0
    out = capsys.readouterr().out
    summary = final_json(out)
    assert summary["best_mAP50"] >= 0.8, out[-3000:]
    assert summary["epochs"] == 40 and summary["best_epoch"] >= 20, summary


_POOL_THEN_FORK = r"""
import sys, types
from multiprocessing.pool import ThreadPool
import cv2, numpy as np, torch
sys.path.insert(0, sys.argv[1])
import build_fred
from datasets.augment import Augmentation
from datasets.fred_dataset import FredDataset
paths = []
for k in range(8):
    paths.append(f"{sys.argv[2]}/{k}.png")
    cv2.imwrite(paths[-1], np.full((72, 128, 3), 20 * k, np.uint8))
big = np.zeros((720, 1280, 3), np.uint8)
with ThreadPool(4) as pool:  # OpenCV's own thread pool now has threads in this (the parent) process
    pool.map(lambda _: cv2.resize(big, (640, 360)), range(16))
frames = [types.SimpleNamespace(image=p, boxes=np.array([[0, 0.5, 0.5, 0.2, 0.2]], np.float32)) for p in paths]
ds = FredDataset(frames, (64, 64), Augmentation())
loader = build_fred.make_loader(ds, 4, torch.utils.data.RandomSampler(ds), 2, torch.device("cpu"), 0)
print("batches", sum(1 for _ in loader), flush=True)
"""


def test_loader_workers_start_after_the_parent_used_opencv_threads(tmp_path):
    """Regression: a worker init that reconfigured OpenCV's thread pool hung every forked worker (seen on the H200)."""
    script = tmp_path / "pool_then_fork.py"
    script.write_text(_POOL_THEN_FORK)
    proc = subprocess.run([sys.executable, str(script), REPO, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "batches 2" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


class _SlowLoader:
    """A list of batches handed out with a delay each, like a DataLoader that cannot keep up."""

    def __init__(self, batches: list, delay: float):
        self.batches, self.delay = batches, delay

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            time.sleep(self.delay)
            yield b


def _tiny_step() -> tuple:
    """(model, criterion, optimizer, scaler, batch) for a few CPU steps of phi n at 64x64, batch 2."""
    torch.manual_seed(0)
    model = build_model("n", 1)
    criterion = DetectionLoss(1, strides=tuple(model.stride.tolist()), reg_max=model.reg_max)
    optimizer = build_optimizer(model, "sgd", 0.01, 0.937, 5e-4, fused=False)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = {"images": torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8),
             "targets": torch.tensor([[0, 0, 32.0, 32.0, 12.0, 10.0]])}
    return model, criterion, optimizer, scaler, batch


def test_train_one_epoch_reports_the_time_spent_waiting_for_data():
    model, criterion, optimizer, scaler, batch = _tiny_step()
    options = engine.StepOptions(log_interval=2, nan_patience=100, grad_clip=10.0)

    def wait_pct(delay: float) -> dict:
        return engine.train_one_epoch(model, None, criterion, optimizer, scaler, _SlowLoader([batch] * 4, delay),
                                      torch.device("cpu"), lambda i: 0.01, options, show_progress=False)

    fast = wait_pct(0.0)
    step_s = 2 / fast["img_per_s"]  # a step's time on this machine, however loaded
    slow = wait_pct(3 * step_s + 0.05)  # the loader takes 3 steps' time per batch: about 75 % waiting
    assert 0.0 <= fast["data_wait_pct"] < 30.0 < 50.0 < slow["data_wait_pct"] <= 100.0, (fast, slow)


def test_train_one_epoch_takes_each_batchs_images_from_the_step_options_batch_transform():
    """StepOptions.batch_transform makes every batch's float images (the whole host batch reaches it); the scaler's
    scale is held at 1 for all but fp16; the options cannot change under a running loop (frozen)."""
    model, criterion, optimizer, scaler, batch = _tiny_step()
    seen = []

    def transform(host_batch: dict, device: torch.device, channels_last: bool) -> torch.Tensor:
        seen.append((host_batch["mark"], device.type, channels_last))
        return device_batches.images_to_device(host_batch["images"], device, channels_last)

    options = engine.StepOptions(log_interval=2, nan_patience=100, channels_last=True, batch_transform=transform)
    stats = engine.train_one_epoch(model, None, criterion, optimizer, scaler, [{**batch, "mark": k} for k in range(3)],
                                   torch.device("cpu"), lambda i: 0.01, options, show_progress=False)
    assert seen == [(0, "cpu", True), (1, "cpu", True), (2, "cpu", True)] and stats["iteration"] == 3
    assert options.fixed_scale and engine.StepOptions(1, 1, amp_dtype=torch.bfloat16).fixed_scale
    assert not engine.StepOptions(1, 1, amp_dtype=torch.float16).fixed_scale
    with pytest.raises(AttributeError):
        options.grad_clip = 1.0


def test_run_with_the_speed_options_on(data, tmp_path):
    """HSV_ON_GPU, HSV_COMPILE and CUDA_GRAPH (the defaults) in a real run on the CPU: it trains, all are ignored,
    and the workers keep the HSV jitter (the GPU path is tests/test_cuda_graph.py's)."""
    seen = []
    to_device = device_batches.to_device

    def spy(batch, device, channels_last, transform=None):
        seen.append((HSV_KEY in batch, transform))
        return to_device(batch, device, channels_last, transform)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(device_batches, "to_device", spy)
        with contextlib.redirect_stdout(io.StringIO()):
            rc = train_fred.main(tiny_args(data, tmp_path, "HSV_ON_GPU=True", "CUDA_GRAPH=True", "EVAL_PERIOD=5",
                                           epochs=2))
    assert rc == 0
    rows = open(os.path.join(only_run_dir(tmp_path), "results.csv")).read().splitlines()
    assert len(rows) == 3 and rows[0].endswith("data_wait_pct")
    assert seen and seen == [(False, None)] * len(seen)  # no jitter left in the batches, no batch transform


def test_data_wait_hint_names_the_keys_that_help():
    cfg = {"FRAME_CACHE": "off", "HSV_ON_GPU": False, "HSV_H": 0.015, "HSV_S": 0.7, "HSV_V": 0.4}
    text = train_fred.data_wait_hint(cfg, 62.4, 1, cuda=True)
    assert "62%" in text and "FRAME_CACHE='disk'" in text and "HSV_ON_GPU=True" in text
    assert ("NUM_WORKERS=1" in text) == ((os.cpu_count() or 1) > 2)
    done = train_fred.data_wait_hint({**cfg, "FRAME_CACHE": "disk", "HSV_ON_GPU": True}, 40.0, os.cpu_count(), True)
    assert "CPUs are the limit" in done


@pytest.mark.parametrize("script", ["train_fred.py", "eval_fred.py"])
@pytest.mark.parametrize("argv, code", [(["--help"], 0), (["--phi", "z"], 2), (["--set", "NOT_A_KEY=1"], 2)])
def test_help_and_argument_errors_answer_before_torch_loads(script, argv, code):
    """--help, argparse errors and --set errors exit before torch, OpenCV or NumPy are imported (no seconds of
    loading on a busy machine)."""
    if script == "eval_fred.py" and argv[0] != "--help":
        argv = [*argv, "--weights", "missing.pth"]
    proc = subprocess.run([sys.executable, "-X", "importtime", os.path.join(REPO, script), *argv], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "cv2", "numpy"}, sorted(imported & {"torch", "cv2", "numpy"})
    if argv[0] == "--set":
        assert "NOT_A_KEY" in proc.stderr


def test_a_resumed_run_that_predates_eval_rect_keeps_validating_on_the_square():
    """A checkpoint's config without EVAL_RECT (an older version: square validation) resumes with EVAL_RECT=False,
    whatever config_fred.py's default; one that records it keeps its value."""
    args = train_fred.parse_args(["--resume", "last.pth"])
    older = {k: v for k, v in config_dict(config_fred).items() if k != "EVAL_RECT"}
    assert train_fred.resolve_config(args, {"config": older}, cuda=False)["EVAL_RECT"] is False
    assert train_fred.resolve_config(args, {"config": {**older, "EVAL_RECT": True}}, cuda=False)["EVAL_RECT"] is True


@pytest.mark.parametrize("bound, rows", [(3, 3), (40, 16), (0, 1)])
def test_the_graph_holds_as_many_targets_as_a_sample_can_have(data, tmp_path, monkeypatch, bound, rows):
    """CUDA_GRAPH_TARGETS_PER_IMAGE is a cap: the graphed loss is sized by what a training sample can hold
    (FredDataset.max_boxes_per_sample: padding rows cost assigner work over every anchor), at least one row."""
    from datasets.fred_dataset import FredDataset

    seen = []
    real = build_fred.graphed_loss

    def capture(cfg, model, criterion, per_rank, per_image, *args):
        seen.append(per_image)
        return real(cfg, model, criterion, per_rank, per_image, *args)

    monkeypatch.setattr(FredDataset, "max_boxes_per_sample", lambda self: bound)
    monkeypatch.setattr(build_fred, "graphed_loss", capture)
    assert train_fred.main(tiny_args(data, tmp_path, "EVAL_PERIOD=2", "SAVE_PERIOD=2")) == 0
    assert seen == [rows, rows]  # frozen, unfrozen
