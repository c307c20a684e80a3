"""Files that are not checkpoints, each with the reason load_checkpoint must give (shared by several tests)."""
import os
import pickle

import torch

# kind -> a phrase the error message must contain, besides "not a checkpoint"
REASONS = {
    "empty": "the file is empty",
    "random_bytes": "not a file written by torch.save",
    "text": "a text file",
    "folder": "a folder",
    "plain_pickle": "a Python pickle",
    "list": "holds a list",
    "pickled_model": "python -m nets.convert",
    "truncated": "damaged or truncated",
}


def make_bad_checkpoint(kind: str, folder: str) -> str:
    """Write a non-checkpoint of this kind (a key of REASONS) into folder; returns its path."""
    path = os.path.join(folder, f"{kind}.pth")
    if kind == "empty":
        open(path, "wb").close()
    elif kind == "random_bytes":
        with open(path, "wb") as f:
            f.write(bytes(range(7, 256)) * 16)
    elif kind == "text":
        with open(path, "w") as f:
            f.write("epoch 3: loss 1.25\nthis is a log, not weights\n")
    elif kind == "folder":
        os.makedirs(path)
        torch.save({"w": torch.zeros(1)}, os.path.join(path, "best.pth"))
    elif kind == "plain_pickle":
        with open(path, "wb") as f:
            pickle.dump({"model": {}, "epoch": 3}, f)
    elif kind == "list":
        torch.save([torch.zeros(2), torch.ones(2)], path)
    elif kind == "pickled_model":  # what an Ultralytics .pt is: a whole pickled nn.Module
        torch.save(torch.nn.Conv2d(3, 4, 3), path)
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    else:
        raise ValueError(kind)
    return path
