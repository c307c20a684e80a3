"""FRED train/val splits, always by sequence, never by frame.

A split is named by one string:
  canonical                   the dataset's own 80/20 split (shipped in datasets/splits/canonical/)
  challenging                 the shifted-conditions split (datasets/splits/challenging/)
  random:<val_fraction>:<seed> a seeded random split of the sequences found on disk
  <folder>                    a folder holding one `*train*.txt` and one `*test*.txt` in FRED's format

FRED's split files hold one sequence per line, written `12/`; the last line may lack a newline.
Sequence ids are returned as strings without leading zeros ("12"), sorted numerically.
Errors are ValueError with a message naming the file (and line) and what to do.
"""
import glob
import os
import random
from collections.abc import Iterable

SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")
NAMED_SPLITS = {"canonical": os.path.join(SPLITS_DIR, "canonical"),
                "challenging": os.path.join(SPLITS_DIR, "challenging")}


def sort_ids(ids: Iterable[str]) -> list[str]:
    """Sequence ids sorted as numbers."""
    return sorted(ids, key=int)


def read_split_file(path: str) -> list[str]:
    """Sequence ids listed in one FRED split file (lines like `12/`), in file order."""
    ids = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            name = text.rstrip("/").split("/")[-1]
            if not name.isdigit():
                raise ValueError(f"{path}:{n}: expected a sequence id like '12/', got {text!r}")
            ids.append(str(int(name)))
    return ids


def _find_one(folder: str, pattern: str) -> str:
    """The single file in folder matching pattern, or a ValueError saying what was found."""
    found = sorted(glob.glob(os.path.join(folder, pattern)))
    if len(found) != 1:
        what = "no file" if not found else f"{len(found)} files ({', '.join(os.path.basename(p) for p in found)})"
        raise ValueError(f"split folder {folder} must hold exactly one {pattern} file in FRED's format "
                         f"(lines like '12/'); found {what}")
    return found[0]


def split_from_folder(folder: str) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids) from a folder holding one `*train*.txt` and one `*test*.txt`."""
    train_file = _find_one(folder, "*train*.txt")
    test_file = _find_one(folder, "*test*.txt")
    train, val = read_split_file(train_file), read_split_file(test_file)
    both = set(train) & set(val)
    if both:
        raise ValueError(f"sequences {', '.join(sort_ids(both))} are in both {train_file} and {test_file}: "
                         f"a sequence belongs to one side only")
    if not train or not val:
        empty = train_file if not train else test_file
        raise ValueError(f"split file {empty} lists no sequences")
    return sort_ids(set(train)), sort_ids(set(val))


def random_split(ids: Iterable[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids): a seeded shuffle of whole sequences; round(val_fraction * n), at least one, go to val."""
    ids = sort_ids(set(ids))
    if len(ids) < 2:
        raise ValueError(f"a random split needs at least 2 sequences, found {len(ids)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"random split val_fraction must be between 0 and 1, got {val_fraction}")
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    n_val = min(max(round(val_fraction * len(ids)), 1), len(ids) - 1)
    return sort_ids(shuffled[n_val:]), sort_ids(shuffled[:n_val])


def resolve_split(split: str, disk_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids) for a split name; disk_ids (sequences found on disk) are used by random splits only."""
    if split in NAMED_SPLITS:
        return split_from_folder(NAMED_SPLITS[split])
    if split.startswith("random:"):
        parts = split.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            fraction, seed = float(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(f"bad split {split!r}: write random:<val_fraction>:<seed>, e.g. random:0.2:0") from None
        return random_split(disk_ids, fraction, seed)
    if os.path.isdir(split):
        return split_from_folder(split)
    raise ValueError(f"unknown split {split!r}: use canonical, challenging, random:<val_fraction>:<seed>, "
                     f"or a folder holding a *train*.txt and a *test*.txt (no such folder: {os.path.abspath(split)})")
