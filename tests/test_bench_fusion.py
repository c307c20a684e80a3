"""bench/bench_fusion.py's logic: warm configs start from earlier configs' best.pth or refuse; the goals' verdicts."""
import pytest

from bench.bench_fusion import goals, main, missing_starts, parse_args, start_weights


def test_warm_configs_start_from_the_best_pth_of_earlier_configs(tmp_path):
    out = tmp_path / "bench_fusion.json"
    rgb, event = tmp_path / "rgb_best.pth", tmp_path / "event_best.pth"
    rgb.write_bytes(b"x")
    done = {"rgb": {"ok": True, "best_weights": str(rgb)}, "event": {"ok": True, "best_weights": str(event)}}
    assert parse_args(["--configs", "mid_warm,event,rgb"]).configs == ["rgb", "event", "mid_warm"]  # deps first
    assert start_weights("early", {}, out) == {}
    with pytest.raises(ValueError, match=r"early_warm starts from rgb's best.pth, but .*bench_fusion.json holds no "
                                         r"rgb result: run --configs rgb,event,early_warm in one call"):
        start_weights("early_warm", {}, out)
    with pytest.raises(ValueError, match=r"event_best.pth \(recorded in .*\) is not on this machine"):
        start_weights("mid_warm", done, out)
    event.write_bytes(b"x")
    assert start_weights("mid_warm", done, out) == {"FUSION_RGB_WEIGHTS": str(rgb), "FUSION_EVENT_WEIGHTS": str(event)}
    with pytest.raises(ValueError, match="but event failed"):
        start_weights("mid_warm", {**done, "event": {"ok": False, "log": "event.log"}}, out)
    # before training: a dependency that runs earlier in the same call is fine, one that is nowhere is not
    assert missing_starts(["rgb", "event", "early_warm", "mid_warm"], {}, out) == []
    assert missing_starts(["event", "early_warm"], {}, out) == [
        f"early_warm starts from rgb's best.pth, but {out} holds no rgb result: run --configs rgb,event,early_warm "
        "in one call"]
    assert missing_starts(["early_warm"], done, out) == []


def test_main_refuses_a_warm_config_without_its_checkpoints(tmp_path, capsys):
    """Exit 2 before generating or training anything; the message says what to run."""
    out = tmp_path / "r.json"
    status = main(["--quick", "--configs", "mid_warm", "--out", str(out), "--runs_dir", str(tmp_path / "runs"),
                   "--data_root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert status == 2 and "run --configs rgb,event,mid_warm in one call" in err
    assert not (tmp_path / "data").exists() and not out.exists()


def test_goals():
    def entry(m5095, night, hovering, img_per_s=100.0, call=0):
        cond = {"night": {"mAP50": night}, "hovering": {"mAP50": hovering}}
        return {"ok": True, "mAP50_95": m5095, "per_condition": cond, "img_per_s": img_per_s, "gpu": "H100",
                "call": call}
    configs = {"rgb": entry(0.30, 0.10, 0.60), "event": entry(0.40, 0.50, 0.20, img_per_s=200.0),
               "early": entry(0.425, 0.55, 0.65, img_per_s=190.0), "mid": entry(0.41, 0.45, -1.0),
               "mid_warm": {"ok": False}, "early_warm": entry(0.5, 0.9, 0.9, img_per_s=150.0, call=1)}
    lines = goals(configs)
    assert [x.split(": ")[0] for x in lines] == ["early"] * 3 + ["mid"] * 3 + ["early_warm"] * 3 + ["mid_warm"] * 3 \
        + ["early", "early_warm"]
    assert lines[0].endswith(": met") and "0.4250 >= better single 0.4000" in lines[0]
    assert lines[1].endswith(": met") and lines[2].endswith(": met")
    assert lines[3].endswith("NOT met") and lines[4].endswith("NOT met")  # 0.41 < 0.42; night 0.45 < event's 0.50
    assert lines[5].endswith("not measured")  # mid's hovering subset has no boxes (mAP -1)
    assert all(x.endswith("not measured") for x in lines[9:12])
    assert lines[12].endswith(": met") and "0.95x" in lines[12]
    assert lines[13].endswith("not comparable (another call or GPU)")
