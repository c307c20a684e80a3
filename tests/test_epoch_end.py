"""training/epoch_end.py on its own: when the mAP runs, what fitness is, which checkpoints are written, what is logged,
and that a non-finite model or val loss saves nothing. The validation passes are replaced by scripted numbers."""
import csv
import math
import os
import time

import pytest
import torch

from evaluation import val_loss
from evaluation.evaluator import EvalResult
from nets import build_model
from training import epoch_end
from training.ema import ModelEMA
from training.epoch_end import EpochEnd, NonFiniteError
from training.run_log import RunLog
from utils.checkpoint import load_checkpoint

STATS = {"loss": 3.0, "box": 1.0, "cls": 1.5, "dfl": 0.5, "lr": 0.01, "img_per_s": 10.0, "gpu_mem_GB": 0.0,
         "skipped": 0, "data_wait_pct": 1.0}


class Scripted:
    """Stands in for the two validation passes: val loss parts per call, mAP fitness per mAP call."""

    def __init__(self, losses, fitnesses):
        self.losses, self.fitnesses, self.calls = list(losses), list(fitnesses), []

    def loss(self, *args, **kwargs):
        self.calls.append("loss")
        value, box = self.losses.pop(0)
        return {"loss": value, "box": box, "cls": 1.0, "dfl": 1.0}

    def evaluate(self, *args, **kwargs):
        self.calls.append("map")
        fitness = self.fitnesses.pop(0)
        metrics = {"mAP50": fitness, "mAP50_95": fitness / 2, "fitness": fitness}
        return EvalResult(metrics, None, {}, None, loss=self.loss())


@pytest.fixture
def unit(tmp_path, monkeypatch):
    """An EpochEnd of a phi-n model over 3 epochs, mAP every 2 (and at the last), periodic saves every 2."""
    def make(losses, fitnesses, eval_period=2):
        scripted = Scripted(losses, fitnesses)
        monkeypatch.setattr(val_loss, "evaluate_loss", scripted.loss)
        monkeypatch.setattr(epoch_end, "evaluate", scripted.evaluate)
        torch.manual_seed(0)
        model = build_model("n", 1)
        ema = ModelEMA(model)
        best = {"fitness": None}
        log = RunLog(str(tmp_path))
        end = EpochEnd(model, ema, None, [], [], torch.device("cpu"), {"channels_last": False}, None, str(tmp_path),
                       log, total_epochs=3, eval_period=eval_period, save_period=2, best=best)
        return end, scripted, best, log
    return make


def state(done):
    """A training_state() stand-in: what EpochEnd saves after `done` epochs."""
    return {"epoch": done, "model": {"w": torch.ones(1) * done}, "model_raw": {}, "optimizer": {}}


def run_epochs(end, n):
    return [end(e, "unfrozen", 4, STATS, time.perf_counter(), state) for e in range(n)]


def test_map_every_eval_period_and_at_the_last_epoch_best_follows_fitness(unit, tmp_path):
    end, scripted, best, log = unit([(5.0, 1.0)] * 3, [0.5, 0.4])
    lines = run_epochs(end, 3)
    log.close()
    assert scripted.calls == ["loss", "map", "loss", "map", "loss"], "mAP on epoch 2 and the last, one pass each"
    assert best == {"fitness": 0.5, "epoch": 2, "val_loss": 5.0, "mAP50": 0.5, "mAP50_95": 0.25}
    assert "(best)" not in lines[0] and lines[1].endswith("(best)") and "mAP50 0.4000" in lines[2]
    assert not lines[2].endswith("(best)")
    files = set(os.listdir(tmp_path))
    assert {"last.pth", "best.pth", "ep002-loss3.000-val_loss5.000.pth", "ep003-loss3.000-val_loss5.000.pth"} <= files
    assert load_checkpoint(str(tmp_path / "last.pth"))["epoch"] == 3
    assert load_checkpoint(str(tmp_path / "best.pth")) == {"epoch": 2, "model": {"w": torch.ones(1) * 2}}
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and rows[0]["mAP50"] == "" and float(rows[1]["mAP50"]) == 0.5


def test_without_map_best_follows_the_val_loss_and_a_loss_without_box_part_never_wins(unit, tmp_path):
    end, scripted, best, log = unit([(0.1, 0.0), (5.0, 1.0), (4.0, 1.0)], [], eval_period=0)
    run_epochs(end, 3)
    log.close()
    assert scripted.calls == ["loss"] * 3
    assert best["epoch"] == 3 and best["fitness"] == -4.0 and best["mAP50"] is None
    assert epoch_end.val_loss_fitness({"loss": 0.1, "box": 0.0}) == -math.inf


@pytest.mark.parametrize("poison", ["buffer", "val_loss"])
def test_a_non_finite_model_or_val_loss_raises_and_saves_nothing(unit, tmp_path, poison):
    losses = [(5.0, 1.0), (math.nan if poison == "val_loss" else 5.0, 1.0)]
    end, _, best, log = unit(losses, [0.5], eval_period=0)
    run_epochs(end, 1)
    before = {n: open(tmp_path / n, "rb").read() for n in os.listdir(tmp_path) if n.endswith(".pth")}
    if poison == "buffer":
        next(m for m in end.model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean[0] = math.inf
    with pytest.raises(NonFiniteError, match="running_mean" if poison == "buffer" else "val loss after epoch 2"):
        end(1, "unfrozen", 4, STATS, time.perf_counter(), state)
    log.close()
    after = {n: open(tmp_path / n, "rb").read() for n in os.listdir(tmp_path) if n.endswith(".pth")}
    assert after == before and best["epoch"] == 1
