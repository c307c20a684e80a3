"""argparse value types shared by the scripts (light: imported before torch, so that --help and argument errors
answer at once)."""
import argparse
import math
from typing import Callable


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= low (the message says what is accepted)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    return parse


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value
