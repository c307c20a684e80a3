"""bench/bench_memory.py: the saved-for-backward counter and the live-bytes peak, and our step against Ultralytics'."""
import torch

from bench.bench_memory import LiveBytes, SavedTensors, main


def test_saved_tensors_counts_each_storage_once_and_leaves_out_the_excluded():
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(32, 64)
    with SavedTensors(exclude=(w,)) as saved:
        h = x @ w  # saves x (w excluded)
        y = (h * h).sum() + h.sin().sum()  # saves h (twice: one storage)
    y.backward()
    assert saved.total == x.numel() * 4 + h.numel() * 4


def test_live_bytes_peak_counts_what_is_made_inside_and_alive_at_once():
    x = torch.randn(1000)  # made before: not counted
    with LiveBytes() as live:
        a = x * 2
        b = a + 1
        del a
        c = b * 3
    assert live.peak == 2 * 4000 and c.shape == x.shape


def test_our_step_saves_what_ultralytics_saves_but_in_the_loss():
    results = main(["--phi", "n", "--arch", "yolov8-p2", "--imgsz", "128", "--batch", "2", "--no_live", "--top", "1"])
    ours, theirs = results["ours"]["by_part"], results["ultralytics"]["by_part"]
    model_parts = [p for p in theirs if p.split()[0] in ("backbone", "neck", "head") and theirs[p] > 0]
    assert len(model_parts) >= 10
    assert all(ours.get(p) == theirs[p] for p in model_parts), (ours, theirs)
    assert 0 < ours["loss"] < theirs["loss"]
