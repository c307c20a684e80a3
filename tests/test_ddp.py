"""Multi-process training on CPU (gloo, 2 processes): the "allreduce" gradient sync against DDP, waits for rank 0
that outlast the process-group timeout, caches built in turns, and the choices build_fred makes under torchrun."""
import datetime
import json
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

import build_fred
import config_fred
from utils import dist
from utils.config import config_dict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, tmp_path, *args) -> None:
    """fn(rank, out_dir, *args) in 2 processes whose environment is torchrun's (one machine)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    try:
        mp.spawn(_worker, args=(fn, str(tmp_path), args), nprocs=2, join=True)
    finally:
        for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
            os.environ.pop(key, None)


def _worker(rank: int, fn, out_dir: str, args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    fn(rank, out_dir, *args)


def _proof(rank: int, out_dir: str) -> None:
    from bench import bench_ddp
    dist.setup("cpu")
    try:
        result = bench_ddp.proof(torch.device("cpu"), "n", 64, 2, 3)
        batches = bench_ddp.proof_batches(2, 64, 3, rank)
        torch.manual_seed(0)
        start = build_model_state()
        real = dist.all_reduce_grads
        dist.all_reduce_grads = lambda params: None  # control: no averaging at all
        try:
            unsynced = bench_ddp.trained_state("allreduce", "n", 64, batches, torch.device("cpu"), None)
        finally:
            dist.all_reduce_grads = real
        synced = bench_ddp.trained_state("allreduce", "n", 64, batches, torch.device("cpu"), None)
        apart = max((unsynced[k] - synced[k]).abs().max().item() for k in synced)
        moved = max((synced[k] - start[k]).abs().max().item() for k in synced)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"result": result, "unsynced_apart": apart, "moved": moved}, f)
    finally:
        dist.cleanup()


def build_model_state() -> dict:
    from nets import build_model
    return {k: v.float() for k, v in build_model("n", 1).state_dict().items()}


def test_allreduce_sync_gives_ddps_weights_bit_for_bit(tmp_path):
    """3 SGD steps of the trainer's step from the same weights on each rank's own batches: the bare model with
    all_reduce_grads ends with DDP's parameters on every rank and DDP's BatchNorm statistics on rank 0."""
    _spawn(_proof, tmp_path)
    for rank in (0, 1):
        out = json.load(open(tmp_path / f"rank{rank}.json"))
        run = out["result"]["runs"]["allreduce"]
        assert out["result"]["pass"] and run["param"] == 0.0, out
        assert out["result"]["update"] > 1e-3 and out["moved"] > 1e-3, "the steps must move the weights"
        assert out["unsynced_apart"] > 1e-4, "without the all-reduce the ranks' weights differ from the synced ones"
    assert json.load(open(tmp_path / "rank0.json"))["result"]["runs"]["allreduce"]["buffer"] == 0.0


def _slow_rank_0(rank: int, out_dir: str, wait: str) -> None:
    dist.setup("cpu", timeout=datetime.timedelta(seconds=2))
    outcome = "ok"
    try:
        if rank == 0:
            time.sleep(5)  # an evaluation longer than the process group's timeout
        try:
            box = [rank + 7]
            if wait == "patient":
                box = [dist.wait_for_main(rank + 7)]
            else:
                torch.distributed.broadcast_object_list(box, src=0)
            got = box[0]
            outcome = f"got {got}"
        except Exception as e:  # the control: the process group's own wait times out
            outcome = f"error {type(e).__name__}"
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
            f.write(outcome)
    finally:
        if outcome.startswith("got"):
            dist.cleanup()


@pytest.mark.parametrize("wait", ["patient", "process_group"])
def test_wait_for_main_outlasts_the_process_group_timeout(tmp_path, wait):
    """Rank 0 busy for 5 s with a 2 s process-group timeout: wait_for_main() (the epoch end's) still gets rank 0's
    value; the process group's own broadcast, the control, times out."""
    try:
        _spawn(_slow_rank_0, tmp_path, wait)
    except Exception:  # the control's ranks leave a broken group behind
        assert wait == "process_group"
    got = (tmp_path / "rank1.txt").read_text()
    if wait == "patient":
        assert got == "got 7" and (tmp_path / "rank0.txt").read_text() == "got 7"
    else:
        assert got.startswith("error"), got


def _turns(rank: int, out_dir: str) -> None:
    dist.setup("cpu")
    log = os.path.join(out_dir, "log.txt")

    def build() -> int:
        with open(log, "a") as f:
            f.write(f"start {rank}\n")
        time.sleep(1.0 if rank == 0 else 0.0)
        with open(log, "a") as f:
            f.write(f"end {rank}\n")
        return rank

    try:
        assert dist.in_turns(build) == rank
    finally:
        dist.cleanup()


def test_in_turns_builds_on_rank_0_before_the_others_open(tmp_path):
    _spawn(_turns, tmp_path)
    assert (tmp_path / "log.txt").read_text().split("\n")[:4] == ["start 0", "end 0", "start 1", "end 1"]


def test_workers_are_capped_by_the_processes_sharing_the_cpus(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert build_fred.capped_workers(8) == 8 and build_fred.capped_workers(32) == 16
    assert build_fred.capped_workers(8, processes=4) == 4 and build_fred.capped_workers(8, processes=2) == 8
    assert build_fred.capped_workers(8, processes=32) == 0


def test_coalesced_collective_writes_back_into_every_layout():
    """One flat buffer per dtype through the collective, written back in place: NCHW, channels_last, a strided
    (non-dense) view and an integer tensor, each keeping its storage and layout."""
    g = torch.Generator().manual_seed(0)
    nchw = torch.rand(2, 3, 4, 5, generator=g)
    nhwc = torch.rand(4, 3, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    strided = torch.rand(6, 8, generator=g)[:, ::2]
    counts = torch.arange(5)
    tensors = [nchw, nhwc, strided, counts]
    expected = [t * 2 + 1 for t in tensors]
    pointers = [t.data_ptr() for t in tensors]
    seen = []
    dist._coalesced(tensors, lambda flat: seen.append(flat.dtype) or flat.mul_(2).add_(1))
    assert seen == [torch.float32, torch.int64], "one collective per dtype"
    for t, e, ptr in zip(tensors, expected, pointers):
        assert torch.equal(t, e) and t.data_ptr() == ptr
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not strided.is_contiguous()


def test_capped_workers_are_announced_only_when_processes_share_the_cpus(monkeypatch):
    import train_fred
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert train_fred.workers_note(8, 4) == ("NUM_WORKERS=8: 4 loader processes per training process (4 processes x 4 "
                                             "<= 16 CPUs on this machine)")
    assert train_fred.workers_note(8, 2) == "" and train_fred.workers_note(32, 1) == ""
    assert train_fred.workers_note(0, 8) == ""


def _buffers(rank: int, out_dir: str) -> None:
    dist.setup("cpu")
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
        net(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(rank)))  # each rank's own statistics
        with torch.no_grad():
            net[0].weight.add_(rank)  # a parameter of its own, which the buffer broadcast must leave alone
        own_weight = net[0].weight.flatten().tolist()
        before = [b.tolist() for b in net.buffers()]
        dist.broadcast_state(net, buffers_only=True)
        after = [b.tolist() for b in net.buffers()]
        kept = net[0].weight.flatten().tolist() == own_weight
        dist.broadcast_state(net)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"before": before, "after": after, "kept": kept, "own_weight": own_weight,
                       "final_weight": net[0].weight.flatten().tolist()}, f)
    finally:
        dist.cleanup()


def test_broadcast_state_copies_rank_0s_buffers_and_then_parameters(tmp_path):
    _spawn(_buffers, tmp_path)
    r0, r1 = (json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1))
    assert r0["before"][0] != r1["before"][0], "each rank's BatchNorm statistics are its own before"
    assert r1["after"] == r0["before"] and r0["after"] == r0["before"]
    assert r1["kept"] and r1["own_weight"] != r0["own_weight"], "buffers_only leaves the parameters alone"
    assert r1["final_weight"] == r0["own_weight"], "the full broadcast copies rank 0's parameters too"


def _folded_sync(rank: int, out_dir: str, sync: str) -> None:
    from nets import freeze_backbone
    from tests.test_freeze import bn_calls, randomised
    dist.setup("cpu")
    try:
        model = randomised(seed=rank)  # each rank its own weights: the sync makes them rank 0's
        freeze_backbone(model, True)
        cfg = {**config_dict(config_fred), "DDP_GRAD_SYNC": sync}
        build_fred.rank_sync(cfg, model, True, torch.device("cpu"), 2)
        with torch.no_grad(), bn_calls(model.backbone) as calls:
            out = model.eval()(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"out": out.flatten()[::50].tolist(), "bn_calls": len(calls)}, f)
    finally:
        dist.cleanup()


@pytest.mark.parametrize("sync", ["allreduce", "ddp"])
def test_rank_sync_folds_the_frozen_backbone_from_rank_0s_weights(tmp_path, sync):
    _spawn(_folded_sync, tmp_path, sync)
    r0, r1 = (json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1))
    assert r0["bn_calls"] == r1["bn_calls"] == 0, "the frozen backbone runs folded after the sync"
    assert r1["out"] == pytest.approx(r0["out"], rel=1e-6, abs=1e-6), "rank 1 folded rank 0's weights"


def test_graph_under_torchrun_uses_the_allreduce_sync_unless_sync_bn():
    cfg = {**config_dict(config_fred), "CUDA_GRAPH": True, "SYNC_BN": False, "DDP_GRAD_SYNC": "ddp"}
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert build_fred.uses_graph(cfg, cuda, 2) and build_fred.grad_sync_kind(cfg, cuda, 2) == "allreduce"
    assert build_fred.graph_off_reason(cfg, cuda, 2) is None
    assert not build_fred.uses_graph(cfg, cpu, 2) and build_fred.grad_sync_kind(cfg, cpu, 2) == "ddp"
    assert build_fred.grad_sync_kind({**cfg, "DDP_GRAD_SYNC": "allreduce"}, cpu, 2) == "allreduce"
    sync_bn = {**cfg, "SYNC_BN": True}
    assert not build_fred.uses_graph(sync_bn, cuda, 2) and build_fred.grad_sync_kind(sync_bn, cuda, 2) == "ddp"
    assert "SYNC_BN" in build_fred.graph_off_reason(sync_bn, cuda, 2)
    assert build_fred.uses_graph(sync_bn, cuda, 1), "SyncBatchNorm is not used in one process: the graph stays"


@pytest.mark.parametrize("value", ["DDP", "nccl", "", 1])
def test_unknown_grad_sync_is_rejected(value):
    cfg = {**config_dict(config_fred), "DDP_GRAD_SYNC": value}
    with pytest.raises(ValueError, match=r"DDP_GRAD_SYNC must be one of 'ddp', 'allreduce'"):
        build_fred.check_config(cfg)


def test_bench_ddp_quick_runs_ours_on_1_and_2_gloo_processes(tmp_path):
    """bench_ddp.py --quick (CPU): eager DDP and eager allreduce on 1 and 2 processes, img/s per process and the
    scaling efficiency against 1 process in the table and the JSON."""
    from bench import bench_ddp
    out = tmp_path / "bench_ddp.json"
    assert bench_ddp.main(["--quick", "--data_root", str(tmp_path / "data"), "--out", str(out)]) == 0
    runs = json.load(open(out))["runs"]
    assert sorted((r["trainer"], r["n"]) for r in runs) == [("ours_allreduce", 1), ("ours_allreduce", 2),
                                                             ("ours_ddp", 1), ("ours_ddp", 2)]
    for r in runs:
        assert r["ok"] and r["img_per_s_per_gpu"] > 0 and r["efficiency"] > 0, r
        assert r["efficiency"] == 1.0 if r["n"] == 1 else r["efficiency"] != 1.0
    two = {r["trainer"]: r["gradients"] for r in runs if r["n"] == 2}
    assert "all-reduced after each backward" in two["ours_allreduce"]
    assert "DistributedDataParallel" in two["ours_ddp"]
