"""bench/bench_accuracy.py's pieces that decide what is compared: configs, Ultralytics' model, data reuse, merging."""
import json
from pathlib import Path

import pytest

from bench.bench_accuracy import CONFIGS, SETUP_KEYS, config_sets, load_previous, parse_args
from bench.ultra_ref import BACKBONE_LAYERS, ULTRA_ARCHS, ensure_generated, model_yaml
from nets import build_model
from tools.synthetic import HARD_CALIBRATION, MANIFEST_NAME


@pytest.mark.parametrize("arch", ULTRA_ARCHS)
def test_ultralytics_model_yaml_is_our_arch(arch):
    """The yaml bench/ultra_ref.py trains for an ARCH builds the network of that ARCH (same parameter count), and the
    Ultralytics freeze=N the speed bench uses for its frozen phase freezes what nets.freeze_backbone freezes."""
    pytest.importorskip("ultralytics", reason="ultralytics is the bench's reference trainer")
    from ultralytics.nn.tasks import DetectionModel

    theirs = DetectionModel(model_yaml("n", arch), nc=1, verbose=False)
    ours = build_model("n", 1, 3, arch)
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    frozen = theirs.model[:BACKBONE_LAYERS[arch]]
    assert sum(p.numel() for p in frozen.parameters()) == sum(p.numel() for p in ours.backbone.parameters())
    with pytest.raises(ValueError, match="yolov8-p6"):
        model_yaml("n", "yolov8-p6")


def test_configs():
    """Ultralytics configs set ARCH only (an ARCH it can train); each ARCH Ultralytics trains is compared with ours
    (YOLO11 too: issue 20's learning check); the quick and default selections parse."""
    for name, conf in CONFIGS.items():
        assert conf["trainer"] in ("ours", "ultralytics") and conf["scale"] in (1, 2), name
        if conf["trainer"] == "ultralytics":
            assert set(conf["sets"]) <= {"ARCH"} and conf["sets"].get("ARCH", "yolov8") in ULTRA_ARCHS, name
    compared = {(conf["trainer"], conf["sets"].get("ARCH", "yolov8")) for conf in CONFIGS.values()
                if conf["scale"] == 1}
    assert {(trainer, arch) for trainer in ("ours", "ultralytics") for arch in ULTRA_ARCHS} <= compared
    assert parse_args([]).configs == list(CONFIGS)
    assert set(parse_args(["--quick"]).configs) < set(CONFIGS)
    with pytest.raises(SystemExit):
        parse_args(["--configs", "ours640,ours320"])


def test_generated_data_is_reused_only_for_the_same_profile(tmp_path):
    root = str(tmp_path / "data")
    manifest, _ = ensure_generated(root, 4, 4, (64, 96), seed=1)
    assert "profile" not in manifest
    manifest, seconds = ensure_generated(root, 4, 4, (64, 96), seed=1, profile="hard")
    assert manifest["profile"] == "hard" and seconds > 0
    again, seconds = ensure_generated(root, 4, 4, (64, 96), seed=1, profile="hard")
    assert seconds == 0.0 and again == json.loads(json.dumps(manifest))
    path = Path(root) / MANIFEST_NAME   # a tree of an older calibration of the hard profile is made again
    path.write_text(json.dumps({**again, "calibration": again["calibration"] - 1}))
    again, seconds = ensure_generated(root, 4, 4, (64, 96), seed=1, profile="hard")
    assert seconds > 0 and again["calibration"] == HARD_CALIBRATION


def test_results_of_one_setup_are_merged_and_others_refused(tmp_path):
    out = tmp_path / "r.json"
    setup = {"profile": "hard", **{k: 1 for k in SETUP_KEYS}}
    assert load_previous(out, setup) is None
    out.write_text(json.dumps({"bench": "accuracy", "setup": setup, "modalities": {"rgb": {"configs": {"x": {}}}}}))
    assert load_previous(out, setup)["modalities"]["rgb"]["configs"] == {"x": {}}
    with pytest.raises(ValueError, match=r"epochs: 1 there, 30 now.*another --out"):
        load_previous(out, {**setup, "epochs": 30})
    out.write_text(json.dumps({"bench": "learning"}))
    with pytest.raises(ValueError, match="not a bench_accuracy.py result"):
        load_previous(out, setup)
    out.write_text("{")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        load_previous(out, setup)


def test_config_sets_of_our_configs():
    """Each of our configs trains with the bench's settings at its input, the default assignment unless it sets its
    own (bench_learning.ours_settings reads --assigner, which this bench does not have)."""
    a = parse_args([])
    for name, conf in CONFIGS.items():
        if conf["trainer"] == "ours":
            size = a.imgsz * conf["scale"]
            sets = config_sets(a, size, conf["sets"])
            assert sets["INPUT_SHAPE"] == [size, size] and sets["UNFREEZE_EPOCH"] == a.epochs, name
            assert sets["ASSIGNER"] == conf["sets"].get("ASSIGNER", "tal"), name



def test_parallel_jobs_overlap_but_never_two_of_our_trainers_on_one_cache():
    """--parallel 2: configs train two at a time, every entry lands in the result marked as shared, a failure is
    listed, two of our trainers at one modality and input (one frame cache) never overlap, and one that has to wait
    does not keep a later job from starting."""
    import threading
    import time

    from bench.bench_accuracy import run_jobs

    running, starts, lock = set(), [], threading.Lock()

    def run(modality, name):
        with lock:
            starts.append(((modality, name), set(running)))
            running.add((modality, name))
        time.sleep(0.2)
        with lock:
            running.discard((modality, name))
        return {"ok": name != "ultra640_p2"}

    jobs = [(m, n) for m in ("event", "rgb") for n in ("ours640", "ours640_tiny")] + [("event", "ultra640_p2")]
    result = {"modalities": {"event": {"configs": {}}, "rgb": {"configs": {}}}}
    saves = []
    failed = run_jobs(jobs, 2, run, result, lambda: saves.append(1))
    assert failed == ["event/ultra640_p2"] and len(saves) == 5
    assert [e["parallel"] for m in ("event", "rgb") for e in result["modalities"][m]["configs"].values()] == [2] * 5
    # a job that must wait for its frame cache leaves its place to the next one: event and rgb pair up
    assert starts[:2] == [(("event", "ours640"), set()), (("rgb", "ours640"), {("event", "ours640")})], starts
    assert not any(job[1] != "ultra640_p2" and {o for o in others if o[0] == job[0] and o[1] != "ultra640_p2"}
                   for job, others in starts), starts


def test_sigterm_stops_the_running_trainers_and_starts_no_more(tmp_path):
    """`timeout` on the bench (SIGTERM) while two configs train in parallel: their processes stop with the bench,
    and no config (nor a config's evaluation) starts after it (they used to run on, orphaned, into the next call)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "jobs.py"
    script.write_text(f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from bench.bench_accuracy import run_jobs
from bench.ultra_ref import exit_on_sigterm, run_logged
exit_on_sigterm()
out = {str(tmp_path)!r}
def run(modality, name):
    child = "import os, time; open(os.path.join(%r, %r + '.pid'), 'w').write(str(os.getpid())); time.sleep(60)"
    run_logged([sys.executable, "-c", child % (out, modality + name)], out + "/" + modality + name + ".log")
    run_logged([sys.executable, "-c", child % (out, modality + name + "_eval")], out + "/x.log")
    return {{"ok": True}}
jobs = [("event", "ours640"), ("rgb", "ours640"), ("event", "ultra640")]
run_jobs(jobs, 2, run, {{"modalities": {{"event": {{"configs": {{}}}}, "rgb": {{"configs": {{}}}}}}}}, lambda: None)
""")
    bench = subprocess.Popen([sys.executable, str(script)])
    pid_files = [tmp_path / "eventours640.pid", tmp_path / "rgbours640.pid"]
    deadline = time.time() + 60
    while not all(p.exists() and p.read_text() for p in pid_files) and time.time() < deadline:
        time.sleep(0.1)
    assert all(p.exists() for p in pid_files), "the two trainers never started"
    bench.send_signal(signal.SIGTERM)
    assert bench.wait(45) != 0
    time.sleep(1.0)
    started = sorted(p.name for p in tmp_path.glob("*.pid"))
    assert started == ["eventours640.pid", "rgbours640.pid"], started  # nothing started after the SIGTERM
    alive = []
    for p in pid_files:
        try:
            os.kill(int(p.read_text()), 0)
            alive.append(p.name)
        except ProcessLookupError:
            pass
    assert not alive, f"still running after the bench stopped: {alive}"
