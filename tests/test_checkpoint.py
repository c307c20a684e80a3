"""utils/checkpoint.load_checkpoint on files that are not checkpoints: ValueError naming the file and the reason."""
import pytest
import torch

from tests.bad_checkpoints import REASONS, make_bad_checkpoint
from utils.checkpoint import load_checkpoint


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_not_a_checkpoint_says_why(kind, tmp_path):
    path = make_bad_checkpoint(kind, str(tmp_path))
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert path in message and "not a checkpoint" in message and REASONS[kind] in message, message
    assert "weights_only" not in message and "pop from" not in message and "does not exist" not in message


def test_missing_file_and_good_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    state = {"w": torch.arange(3.0)}
    for name, kwargs in (("zip.pth", {}), ("legacy.pth", {"_use_new_zipfile_serialization": False})):
        torch.save({"model": state, "phi": "n"}, tmp_path / name, **kwargs)
        loaded = load_checkpoint(str(tmp_path / name))
        assert loaded["phi"] == "n" and torch.equal(loaded["model"]["w"], state["w"])
