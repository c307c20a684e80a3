"""--modality fusion end to end: train (early and mid), the checkpoint's record, eval_fred, resume, starts from
single-modality checkpoints."""
import json
import os
import shutil

import cv2
import pytest
import torch

import train_fred
from tests.test_eval_fred import LARGE_BOX_SETS, run_main, train_on_large_boxes


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_fusion_trains_and_eval_fred_rebuilds_it_from_the_checkpoint(fusion, tmp_path, capsys):
    root, trained, _ = train_on_large_boxes(tmp_path, capsys, f"FUSION={fusion!r}", modality="fusion")
    best = os.path.join(trained["run_dir"], "best.pth")
    ckpt = torch.load(best, weights_only=True)
    assert (ckpt["modality"], ckpt["fusion"], ckpt["in_channels"]) == ("fusion", fusion, 5)
    assert any(k.startswith("backbone.rgb.") for k in ckpt["model"]) == (fusion == "mid")

    plots = tmp_path / "eval"
    status, out, err = run_main(["--device", "cpu", "--weights", best, "--plots", "--save_json", str(plots)], capsys)
    assert status == 0, err
    evaluated = json.loads(out.strip().splitlines()[-1])
    assert evaluated["mAP50"] == pytest.approx(trained["best_mAP50"], rel=1e-6, abs=1e-9)
    samples = cv2.imread(str(plots / "samples.png"))  # each tile: the RGB frame above the event frame (225 px each)
    assert samples is not None and (samples.shape[0] - 22) % 450 == 0

    status, _, err = run_main(["--device", "cpu", "--weights", best, "--modality", "event",
                               "--allow_modality_mismatch"], capsys)
    assert status == 2 and "fusion network takes fused frames" in err

    other = "mid" if fusion == "early" else "early"
    resumed = str(tmp_path / "resume")
    shutil.copytree(trained["run_dir"], resumed)
    status = train_fred.main(["--resume", os.path.join(resumed, "last.pth"), "--device", "cpu",
                              "--set", "UNFREEZE_EPOCH=2", f"FUSION={other!r}"])
    assert status == 2 and f"FUSION={fusion!r}" in capsys.readouterr().err


def test_fusion_starts_from_an_rgb_and_an_event_checkpoint(tmp_path, capsys):
    root, event_run, _ = train_on_large_boxes(tmp_path, capsys)
    event_best = os.path.join(event_run["run_dir"], "best.pth")
    _, fused, _ = train_on_large_boxes(tmp_path, capsys, "FUSION='mid'", modality="fusion", root=root,
                                    extra=("--weights_rgb", event_best, "--weights_event", event_best))
    assert fused["best_mAP50"] > 0.01
    status = train_fred.main(["--modality", "fusion", "--data_root", root, "--device", "cpu", "--weights",
                              event_best, "--weights_event", event_best, "--set", *LARGE_BOX_SETS])
    assert status == 2 and "both set" in capsys.readouterr().err
